"""Package integrity with injected inputs: dpkg --verify's output, dpkg's database in a folder,
apt sources in both formats, apt-config dump; and the two checks made of them."""

import json
import os
import stat
from types import SimpleNamespace

import pytest

from minicl import checks, integrity
from minicl.integrity import Changed

# --- dpkg --verify ------------------------------------------------------------------------------


def test_parse_verify_keeps_changed_and_missing_files_and_leaves_out_conffiles():
    output = (
        "??5??????   /usr/bin/tac\n"
        "??5?????? c /etc/ssh/ssh_config\n"
        "missing     /usr/sbin/cron\n"
        "missing   c /etc/cron.d/e2scrub_all\n"
        "missing     /usr/lib/x/secret (Permission denied)\n"
        "??5??????   /usr/share/doc/a b (1)/README\n"
    )
    assert integrity.parse_verify(output) == [
        ("/usr/bin/tac", False),
        ("/usr/sbin/cron", True),
        ("/usr/lib/x/secret", True),
        ("/usr/share/doc/a b (1)/README", False),
    ]
    assert integrity.parse_verify("") == []


def test_parse_verify_refuses_what_it_does_not_understand():
    with pytest.raises(integrity.IntegrityError, match="unexpected line from dpkg --verify"):
        integrity.parse_verify("/usr/bin/tac: checksum mismatch\n")


def fake_run(returncode=0, stdout="", stderr=""):
    calls = []

    def run(cmd, **_):
        calls.append(cmd)
        return SimpleNamespace(returncode=returncode, stdout=stdout, stderr=stderr)

    run.calls = calls
    return run


def test_dpkg_verify_names_packages_or_none_and_never_verifies_all_for_an_empty_list():
    run = fake_run(stdout="??5??????   /usr/bin/tac\n")
    assert integrity.dpkg_verify(["coreutils"], run) == [("/usr/bin/tac", False)]
    assert integrity.dpkg_verify(None, run) == [("/usr/bin/tac", False)]
    assert integrity.dpkg_verify([], run) == []
    assert run.calls == [
        ["nice", "-n", "10", "dpkg", "--verify", "coreutils"],
        ["nice", "-n", "10", "dpkg", "--verify"],
    ]


def test_dpkg_verify_fails_with_dpkg_s_error():
    run = fake_run(returncode=1, stderr="dpkg: error: package 'nosuch' is not installed\n")
    with pytest.raises(integrity.IntegrityError, match="package 'nosuch' is not installed"):
        integrity.dpkg_verify(["nosuch"], run)


# --- dpkg's database in a folder -------------------------------------------------------------


class FakeDpkg:
    """dpkg's info folder for packages whose files live under ``root``, and a ``run`` that
    answers ``dpkg --verify`` for them: a file differs when its content is not "shipped\\n"."""

    def __init__(self, root, packages):
        self.root, self.info = root, root / "info"
        self.info.mkdir()
        self.packages, self.conffiles, self.calls = {}, set(), []
        for package, (files, conffiles) in packages.items():
            self.install(package, files, conffiles)

    def path(self, name):
        return f"{self.root}{name}"

    def install(self, package, files, conffiles=()):
        self.packages[package] = [self.path(f) for f in files] + [self.path(c) for c in conffiles]
        for path in self.packages[package]:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("shipped\n")
        (self.info / f"{package}.md5sums").write_text(
            "".join(f"0123456789abcdef0123456789abcdef  {p[1:]}\n" for p in self.packages[package])
        )
        (self.info / f"{package}.list").write_text("".join(f"{p}\n" for p in self.packages[package]))
        (self.info / f"{package}.conffiles").write_text("".join(f"{self.path(c)}\n" for c in conffiles))
        self.conffiles |= {self.path(c) for c in conffiles}

    def remove(self, package):
        for suffix in ("md5sums", "list", "conffiles"):
            (self.info / f"{package}.{suffix}").unlink()
        del self.packages[package]

    def run(self, cmd, **_):
        assert cmd[:4] == ["nice", "-n", "10", "dpkg"] and cmd[4] == "--verify"
        names = cmd[5:] or sorted(self.packages)
        self.calls.append(cmd[5:] or None)
        lines = []
        for package in names:
            for path in self.packages[package]:
                attr = "c" if path in self.conffiles else " "
                if not os.path.exists(path):
                    lines.append(f"missing   {attr} {path}")
                elif open(path).read() != "shipped\n":
                    lines.append(f"??5?????? {attr} {path}")
        return SimpleNamespace(returncode=0, stdout="".join(f"{line}\n" for line in lines), stderr="")

    def verify(self, record, now):
        return integrity.verify_installed(str(record), now, str(self.info), diversions={}, run=self.run)


@pytest.fixture
def dpkg(tmp_path):
    return FakeDpkg(
        tmp_path,
        {
            "coreutils": (["/usr/bin/tac", "/usr/share/doc/coreutils/README"], []),
            "cron": (["/usr/sbin/cron"], ["/etc/cron.d/e2scrub_all"]),
            "libc6:amd64": (["/usr/lib/x86_64-linux-gnu/libc.so.6"], []),
        },
    )


def test_package_files_leave_out_conffiles_and_follow_diversions(dpkg):
    (dpkg.info / "cron.conffiles").write_text(f"remove-on-upgrade {dpkg.path('/usr/sbin/cron')}\n")
    tac = dpkg.path("/usr/bin/tac")
    found = integrity.package_files(str(dpkg.info), {tac: (f"{tac}.distrib", "other")})
    assert found == {
        "coreutils": [f"{tac}.distrib", dpkg.path("/usr/share/doc/coreutils/README")],
        "cron": [dpkg.path("/etc/cron.d/e2scrub_all")],
        "libc6:amd64": [dpkg.path("/usr/lib/x86_64-linux-gnu/libc.so.6")],
    }
    # A package's own diversion leaves its file where it is.
    assert (
        integrity.package_files(str(dpkg.info), {tac: (f"{tac}.distrib", "coreutils")})["coreutils"][0] == tac
    )


def test_diversions_are_read_three_lines_at_a_time(tmp_path):
    diversions = tmp_path / "diversions"
    diversions.write_text("/usr/bin/tac\n/usr/bin/tac.distrib\nother\n/etc/x\n/etc/x.orig\n:\n")
    assert integrity.read_diversions(str(diversions)) == {
        "/usr/bin/tac": ("/usr/bin/tac.distrib", "other"),
        "/etc/x": ("/etc/x.orig", ":"),
    }
    assert integrity.read_diversions(str(tmp_path / "none")) == {}


def test_programs_are_named_first_then_libraries():
    changed = [
        Changed(p, "p") for p in ("/usr/share/a", "/usr/lib/x/liba.so", "/usr/sbin/b", "/opt/c", "/bin/d")
    ]
    assert [c.path for c in integrity.named_first(changed)] == [
        "/bin/d",
        "/usr/sbin/b",
        "/usr/lib/x/liba.so",
        "/opt/c",
        "/usr/share/a",
    ]


def test_a_changed_conffile_is_expected_and_verification_starts_in_full(dpkg, tmp_path):
    record = tmp_path / "state" / "packages-verified.json"
    with open(dpkg.path("/etc/cron.d/e2scrub_all"), "a") as f:
        f.write("# edited by the admin\n")
    assert dpkg.verify(record, now=1000) == ([], 3)
    assert dpkg.calls == [None]  # every package, in one dpkg --verify
    assert stat.S_IMODE(record.stat().st_mode) == 0o644
    assert stat.S_IMODE(record.parent.stat().st_mode) == 0o700
    assert json.loads(record.read_text())["full_at"] == 1000


def test_only_packages_whose_files_changed_are_verified_again(dpkg, tmp_path):
    record = tmp_path / "packages-verified.json"
    with open(dpkg.path("/usr/share/doc/coreutils/README"), "a") as f:
        f.write("changed before the first verification\n")
    assert dpkg.verify(record, 1000)[0] == [
        Changed(dpkg.path("/usr/share/doc/coreutils/README"), "coreutils")
    ]
    written = record.stat().st_mtime_ns

    # Nothing changed: no dpkg --verify at all, the record's result, the record as it was.
    assert dpkg.verify(record, 1300)[0] == [
        Changed(dpkg.path("/usr/share/doc/coreutils/README"), "coreutils")
    ]
    assert dpkg.calls == [None] and record.stat().st_mtime_ns == written

    # A program and a library change: their packages only are verified again; programs first.
    with open(dpkg.path("/usr/bin/tac"), "a") as f:
        f.write("x")
    os.unlink(dpkg.path("/usr/lib/x86_64-linux-gnu/libc.so.6"))
    changed, packages = dpkg.verify(record, 1600)
    assert dpkg.calls[-1] == ["coreutils", "libc6:amd64"]
    assert packages == 3
    assert changed == [
        Changed(dpkg.path("/usr/bin/tac"), "coreutils"),
        Changed(dpkg.path("/usr/lib/x86_64-linux-gnu/libc.so.6"), "libc6:amd64", missing=True),
        Changed(dpkg.path("/usr/share/doc/coreutils/README"), "coreutils"),
    ]

    # Reinstalled: the files are back, and so is the verdict.
    dpkg.install("coreutils", ["/usr/bin/tac", "/usr/share/doc/coreutils/README"])
    dpkg.install("libc6:amd64", ["/usr/lib/x86_64-linux-gnu/libc.so.6"])
    assert dpkg.verify(record, 1900) == ([], 3)
    assert dpkg.calls[-1] == ["coreutils", "libc6:amd64"]


def test_a_removed_package_takes_its_changed_files_along(dpkg, tmp_path):
    record = tmp_path / "packages-verified.json"
    with open(dpkg.path("/usr/sbin/cron"), "a") as f:
        f.write("x")
    assert [c.package for c in dpkg.verify(record, 1000)[0]] == ["cron"]
    dpkg.remove("cron")
    assert dpkg.verify(record, 1300) == ([], 2)
    assert dpkg.calls == [None]  # nothing else changed: nothing verified again


def test_every_package_again_once_a_day_and_without_a_usable_record(dpkg, tmp_path):
    record = tmp_path / "packages-verified.json"
    dpkg.verify(record, 1000)
    dpkg.verify(record, 1000 + integrity.FULL_EVERY - 1)
    assert dpkg.calls == [None]
    dpkg.verify(record, 1000 + integrity.FULL_EVERY)
    assert dpkg.calls == [None, None]
    record.write_text('{"version": 0}')
    dpkg.verify(record, 1000 + integrity.FULL_EVERY + 1)
    assert dpkg.calls == [None, None, None]
    dpkg.verify(record, 500)  # the clock went back
    assert dpkg.calls == [None, None, None, None]


def test_packages_verified_check_names_five_files_then_counts():
    changed = [Changed(f"/usr/bin/p{i}", "pkg") for i in range(7)]
    check = checks.packages_verified_check("record", verify=lambda _: (changed, 400))
    assert not check.ok and check.value == 7
    assert check.reason == (
        "7 installed file(s) differ from their package: /usr/bin/p0 (pkg), /usr/bin/p1 (pkg), "
        "/usr/bin/p2 (pkg), /usr/bin/p3 (pkg), /usr/bin/p4 (pkg) and 2 more"
    )
    assert str(checks.packages_verified_check("r", verify=lambda _: ([], 400))) == (
        "packages verified: OK the files of 400 packages match them"
    )
    missing = checks.packages_verified_check(
        "r", verify=lambda _: ([Changed("/usr/sbin/cron", "cron", True)], 1)
    )
    assert missing.reason.endswith("/usr/sbin/cron (cron, missing)")

    def broken(_):
        raise integrity.IntegrityError("dpkg --verify failed (exit 2): dpkg: error: ...")

    check = checks.packages_verified_check("r", verify=broken)
    assert not check.ok and check.value is None
    assert (
        check.reason == "cannot verify the installed files: dpkg --verify failed (exit 2): dpkg: error: ..."
    )


# --- apt sources ----------------------------------------------------------------------------


def test_one_line_sources_options_that_skip_signatures():
    text = (
        "deb http://deb.debian.org/debian bookworm main\n"
        "deb [trusted=yes] http://repo.example.org/ ./\n"
        "deb [ arch=amd64 signed-by=/usr/share/keyrings/x.gpg allow-insecure=yes ] http://x.example.org/ b main\n"
        "deb [trusted=no] http://y.example.org/ b main\n"
        "# deb [trusted=yes] http://commented.example.org/ b main\n"
        "deb-src [allow-downgrade-to-insecure=true] http://z.example.org/ b main  # a comment\n"
        "deb http://w.example.org/ b main # [trusted=yes]\n"
    )
    assert integrity.one_line_unsigned("/etc/apt/sources.list", text) == [
        "/etc/apt/sources.list line 2: trusted=yes",
        "/etc/apt/sources.list line 3: allow-insecure=yes",
        "/etc/apt/sources.list line 6: allow-downgrade-to-insecure=true",
    ]


def test_deb822_sources_fields_that_skip_signatures():
    text = (
        "# Debian\n"
        "Types: deb\n"
        "URIs: http://deb.debian.org/debian\n"
        "Suites: bookworm\n"
        "Components: main\n"
        "Signed-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        " Trusted: yes\n"
        " -----END PGP PUBLIC KEY BLOCK-----\n"
        "\n"
        "Types: deb\n"
        "URIs: http://repo.example.org/\n"
        "Suites: ./\n"
        "trusted: Yes\n"
        "\n"
        "\n"
        "Enabled: no\n"
        "Types: deb\n"
        "URIs: http://old.example.org/\n"
        "Trusted: yes\n"
        "\n"
        "Types: deb-src\n"
        "URIs: http://x.example.org/\n"
        "Allow-Insecure: yes\n"
        "Trusted: no\n"
    )
    assert integrity.deb822_unsigned("/etc/apt/sources.list.d/x.sources", text) == [
        "/etc/apt/sources.list.d/x.sources stanza 2 (line 11): trusted: Yes",
        "/etc/apt/sources.list.d/x.sources stanza 4 (line 22): Allow-Insecure: yes",
    ]


def test_apt_config_settings_that_let_unsigned_packages_in():
    dump = (
        'APT "";\n'
        'APT::Architecture "amd64";\n'
        'APT::Get::AllowUnauthenticated "0";\n'
        'Acquire::AllowInsecureRepositories "true";\n'
        'Acquire::AllowDowngradeToInsecureRepositories "false";\n'
        'acquire::allowinsecurerepositories "1";\n'
        'DPkg::Pre-Install-Pkgs:: "/usr/sbin/dpkg-preconfigure --apt || true";\n'
    )
    assert integrity.config_unsigned(dump) == [
        "apt config Acquire::AllowInsecureRepositories=true",
        "apt config acquire::allowinsecurerepositories=1",
    ]
    assert integrity.config_unsigned('Acquire::AllowInsecureRepositories "no";\n') == []


def test_unsigned_sources_reads_the_files_apt_reads(tmp_path):
    sources_list = tmp_path / "sources.list"
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    sources_list.write_text("deb http://deb.debian.org/debian bookworm main\n")
    (parts / "good.sources").write_text(
        "Types: deb\nURIs: http://a.example.org/\nSuites: b\nComponents: main\n"
    )
    (parts / "bad.list").write_text("deb [trusted=yes] http://b.example.org/ ./\n")
    (parts / "bad.list.disabled").write_text("deb [trusted=yes] http://c.example.org/ ./\n")  # apt ignores it
    (parts / "bad.list.dpkg-old").write_text("deb [trusted=yes] http://d.example.org/ ./\n")
    found = integrity.unsigned_sources(str(sources_list), str(parts), config_dump='APT "";\n')
    assert found == [f"{parts}/bad.list line 1: trusted=yes"]
    (parts / "bad.list").unlink()
    assert integrity.unsigned_sources(str(tmp_path / "none"), str(parts), config_dump="") == []


def test_apt_sources_check():
    assert str(checks.apt_sources_check(lambda: [])) == "apt sources signed: OK every source is signed"
    check = checks.apt_sources_check(lambda: ["/etc/apt/sources.list line 2: trusted=yes"])
    assert not check.ok and check.value == 1
    assert check.reason == "unsigned: /etc/apt/sources.list line 2: trusted=yes"


def test_after_a_run_the_check_reports_the_last_verification_without_looking(dpkg, tmp_path):
    record = tmp_path / "packages-verified.json"

    def verify(path):
        return dpkg.verify(path, 1000)

    # No record yet (a host just bootstrapped): not verified yet, nothing looked at.
    unknown = checks.packages_verified_check(record, verify=verify, fresh=False)
    assert unknown.ok and unknown.value is None and dpkg.calls == []
    assert unknown.reason == "not verified yet: the scheduled checks verify them"
    first = checks.packages_verified_check(record, verify=verify)
    assert first.ok and dpkg.calls == [None]
    with open(dpkg.path("/usr/bin/tac"), "a") as f:
        f.write("x")
    # The record's result, no file looked at: the change is for the next scheduled check.
    assert checks.packages_verified_check(record, verify=verify, fresh=False) == first
    assert dpkg.calls == [None]
    found = checks.packages_verified_check(record, verify=lambda path: dpkg.verify(path, 1300))
    assert not found.ok and dpkg.calls == [None, ["coreutils"]]
    assert checks.packages_verified_check(record, verify=verify, fresh=False) == found
    assert integrity.last_verified(tmp_path / "none.json") is None
