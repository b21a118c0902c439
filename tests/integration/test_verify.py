"""Package integrity on a real host (minicl.integrity through minicl.checks): a program changed
inside the host fails `packages verified`, naming it, and passes again once it is put back; an
apt source that skips signatures fails `apt sources signed`, naming its file. One host, no
bootstrap: the checks run with the host's view of this machine's packages (its overlay)."""

import json
import sys

import pytest

HOST = ["198.51.100.231/24", "2001:db8:100::231/64"]
PROGRAM = "/usr/bin/tac"  # small, packaged (coreutils), and nothing here runs it
RECORD = "/var/lib/minicl/packages-verified.json"
EXTRA_SOURCE = "/etc/apt/sources.list.d/minicl-test.list"

CHECKS = """
import json, time
from minicl import checks
started = time.monotonic()
found = {c.name: {"ok": c.ok, "reason": c.reason, "value": c.value} for c in checks.run_all(22)}
print(json.dumps({"checks": found, "seconds": time.monotonic() - started}))
"""


@pytest.fixture(scope="module")
def host(lab):
    return lab.add_host("verify", HOST)


def run_checks(host):
    """({name: {"ok", "reason", "value"}}, seconds) of minicl's host checks run in ``host``."""
    found = json.loads(host.run([sys.executable, "-c", CHECKS], timeout=600).stdout)
    return found["checks"], found["seconds"]


def test_a_changed_program_fails_packages_verified_until_it_is_put_back(host):
    package = host.run(["dpkg-query", "-S", PROGRAM]).stdout.split(":")[0]
    # Positive control: dpkg finds the program's package as it shipped.
    intact = host.run(
        [sys.executable, "-c", f"from minicl import integrity; print(integrity.dpkg_verify([{package!r}]))"]
    )
    assert intact.stdout.strip() == "[]"

    before, full_seconds = run_checks(host)
    # A clean Debian host has none; a test host has what this machine has (its overlay's lower layer).
    baseline = before["packages verified"]
    assert baseline["ok"] == (baseline["value"] == 0), baseline
    assert PROGRAM not in baseline["reason"]
    assert host.run(["stat", "-c", "%a", RECORD]).stdout.strip() == "644"

    host.run(["cp", "-a", PROGRAM, "/root/program.orig"])
    host.run(["sh", "-c", f"printf x >> {PROGRAM}"])
    after, seconds = run_checks(host)
    changed = after["packages verified"]
    assert not changed["ok"] and changed["value"] == baseline["value"] + 1, changed
    # Programs are named first: this one, whatever else differs on this machine.
    assert changed["reason"].startswith(
        f"{baseline['value'] + 1} installed file(s) differ from their package: {PROGRAM} ({package})"
    ), changed
    # Only the package whose files changed was verified again, not every package.
    assert seconds < full_seconds, (seconds, full_seconds)

    host.run(["cp", "-a", "/root/program.orig", PROGRAM])
    again, _ = run_checks(host)
    assert again["packages verified"] == baseline


def test_an_unsigned_apt_source_fails_apt_sources_signed(host):
    checks, _ = run_checks(host)
    assert checks["apt sources signed"] == {"ok": True, "reason": "every source is signed", "value": 0}

    host.write(
        EXTRA_SOURCE, "deb http://198.51.100.231/signed ./\ndeb [trusted=yes] http://198.51.100.231/repo ./\n"
    )
    checks, _ = run_checks(host)
    assert checks["apt sources signed"] == {
        "ok": False,
        "reason": f"unsigned: {EXTRA_SOURCE} line 2: trusted=yes",
        "value": 1,
    }

    host.write(EXTRA_SOURCE, "deb http://198.51.100.231/signed ./\n")
    host.write("/etc/apt/apt.conf.d/99minicl-test", 'Acquire::AllowInsecureRepositories "true";\n')
    checks, _ = run_checks(host)
    assert (
        checks["apt sources signed"]["reason"]
        == "unsigned: apt config Acquire::AllowInsecureRepositories=true"
    )

    host.run(["rm", "/etc/apt/apt.conf.d/99minicl-test"])
    checks, _ = run_checks(host)
    assert checks["apt sources signed"]["ok"]
