"""Upgrading an app's Debian packages, undone by itself when the app's checks fail after it.

``upgrade``: the versions installed now are recorded and a copy of each package that is about
to change is kept (``apt-get download``, or ``dpkg-repack`` when no repository has that version
any more), so that the way back never depends on the archive; then a safety backup, the upgrade
(``apt-get install --only-upgrade``), and the app's ``check_health`` and ``test``. When they fail,
the kept packages are installed again and the safety backup is restored, and the report says
so. ``downgrade`` goes back to the versions before the last upgrade on purpose, the same way.

An app's packages are those of its appliance (``PACKAGES``) and the ones cluster.json lists
under ``apps.<name>.packages`` (an extension, a plugin); upgrade each host of an app in turn,
standbys first.
"""

import json
import os
import subprocess
import time

from minicl import paths
from minicl.appliances import ApplianceError, Report
from minicl.files import read_json, write_file

HISTORY = "upgrades.json"
SETTLE_SECONDS = 30
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l"}
APT_OPTIONS = ["-y", "-q", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef"]
# A repository that does not answer fails the update within a minute, not after apt's retries.
APT_UPDATE = ["apt-get", "update", "-q", "-o", "Acquire::Retries=0", "-o", "Acquire::http::Timeout=20",
              "-o", "Acquire::https::Timeout=20"]  # fmt: skip


def packages(module, app):
    return sorted(set(module.PACKAGES) | set(app.get("packages") or []))


def folder(app):
    return os.path.join(paths.APPS_DIR, app["name"])


def _run(argv, cwd=None):
    result = subprocess.run(
        argv, capture_output=True, text=True, cwd=cwd, env={**os.environ, **APT_ENV}, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise ApplianceError(f"{' '.join(argv[:3])}: {' '.join(lines[-3:])}")
    return result.stdout


def installed(names):
    """{package: version} of those installed."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n", *names],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = {}
    for line in result.stdout.splitlines():
        name, version, status = line.split(" ", 2)
        if status == "installed":
            found[name] = version
    return found


def candidates(names):
    """{package: version apt would install} of those with a candidate."""
    found = {}
    for name in names:
        for line in _run(["apt-cache", "policy", name]).splitlines():
            line = line.strip()
            if line.startswith("Candidate:") and line.split()[1] != "(none)":
                found[name] = line.split()[1]
    return found


def history(app):
    """The upgrades that stayed, oldest first."""
    return read_json(os.path.join(folder(app), HISTORY)) or []


def _record(app, entry):
    write_file(os.path.join(folder(app), HISTORY), json.dumps([*history(app), entry], indent=2) + "\n", 0o644)


def keep_copies(versions):
    """Keep a .deb of each {package: version}; returns their paths."""
    kept_dir = paths.KEPT_PACKAGES_DIR
    os.makedirs(kept_dir, mode=0o755, exist_ok=True)
    debs = []
    for name, version in sorted(versions.items()):
        pattern = f"{name}_{version.replace(':', '%3a')}_"
        existing = [f for f in os.listdir(kept_dir) if f.startswith(pattern) and f.endswith(".deb")]
        if not existing:
            got = subprocess.run(["apt-get", "download", "-q", f"{name}={version}"], cwd=kept_dir,
                                 capture_output=True, text=True, check=False)  # fmt: skip
            if got.returncode != 0:
                _run(["dpkg-repack", name], cwd=kept_dir)
            existing = [f for f in os.listdir(kept_dir) if f.startswith(f"{name}_") and f.endswith(".deb")]
            existing = [f for f in existing if version.split(":")[-1] in f]
        if not existing:
            raise ApplianceError(f"could not keep a copy of {name} {version}: the way back would be lost")
        debs.append(os.path.join(kept_dir, sorted(existing)[-1]))
    return debs


def install_debs(debs):
    _run(["apt-get", "install", "--allow-downgrades", *APT_OPTIONS, *debs])


def _healthy(module, app, settle=SETTLE_SECONDS):
    """Whether the app passes check_health within ``settle`` seconds (a restarted service
    starts, its replicas reconnect); returns that check's last report."""
    deadline = time.monotonic() + settle
    while True:
        try:
            found = module.check_health(app)
        except ApplianceError as exc:
            found = Report(app["name"], "check_health", ok=False, lines=[f"FAIL {exc}"])
        if found.ok or time.monotonic() >= deadline:
            return found
        time.sleep(1)


def _checks(module, app, report, settle=SETTLE_SECONDS):
    """The app's check_health (given ``settle`` seconds) and test, each a line of ``report``;
    True if both passed."""
    health = _healthy(module, app, settle)
    try:
        tested = module.test(app) if health.ok else None
    except ApplianceError as exc:
        tested = Report(app["name"], "test", ok=False, lines=[f"FAIL {exc}"])
    for verb, found in (("check_health", health), ("test", tested)):
        if found is None:
            continue
        bad = [line[5:] for line in found.lines if line.startswith("FAIL")]
        report.check(found.ok, f"{verb} after the change" + (f": {'; '.join(bad)}" if bad else ""))
    return health.ok and tested is not None and tested.ok


def upgrade(module, app):
    report = Report(app["name"], "upgrade")
    names = packages(module, app)
    _run(APT_UPDATE)
    before = installed(names)
    newer = {n: v for n, v in candidates(names).items() if n in before and v != before[n]}
    report.data["before"] = before
    if not newer:
        report.check(True, f"{', '.join(names)}: up to date")
        return report
    changing = {n: before[n] for n in newer}
    debs = keep_copies(changing)
    report.check(True, "kept a copy of " + ", ".join(f"{n} {v}" for n, v in changing.items()))
    safety = module.backup(app) if hasattr(module, "backup") else None  # a stateless app has no data
    if safety is not None and not report.check(safety.ok, f"safety backup {safety.data.get('backup', '')}"):
        return report
    _run(["apt-get", "install", "--only-upgrade", *APT_OPTIONS, *sorted(newer)])
    after = installed(names)
    report.check(True, "upgraded " + ", ".join(f"{n} {before[n]} -> {after.get(n)}" for n in sorted(newer)))
    report.data["after"] = after
    if _checks(module, app, report):
        _record(app, {"at": int(time.time()), "before": changing, "after": {n: after.get(n) for n in newer},
                      "debs": debs, "backup": safety and safety.data.get("backup")})  # fmt: skip
        return report
    report.lines.append("info the upgrade failed its checks: undoing it")
    install_debs(debs)
    report.lines.append("info back to " + ", ".join(f"{n} {v}" for n, v in changing.items()))
    _healthy(module, app)  # the service answers again before its data is restored
    if safety is not None:
        restored = module.restore(app, backup=safety.data["backup"])
        report.lines.append(f"info restoring the safety backup {safety.data['backup']}:")
        report.lines += [f"     {line}" for line in restored.lines]
    report.ok = False
    back = Report(app["name"], "check")
    report.data["undone"] = True
    report.data["healthy_after_undo"] = _checks(module, app, back)
    report.lines += [f"     {line}" for line in back.lines]
    return report


def downgrade(module, app):
    """Back to the versions before the last upgrade (kept copies)."""
    report = Report(app["name"], "downgrade")
    done = history(app)
    if not done:
        report.check(False, "no upgrade of this app recorded on this host: nothing to go back to")
        return report
    last = done[-1]
    installed_now = installed(sorted(last["before"]))
    back = {n: v for n, v in last["before"].items() if installed_now.get(n) != v}
    if not back:
        report.check(True, "already at " + ", ".join(f"{n} {v}" for n, v in last["before"].items()))
        return report
    install_debs([d for d in last["debs"] if os.path.exists(d)])
    now = installed(sorted(back))
    report.check(now == back, "back to " + ", ".join(f"{n} {v}" for n, v in back.items()))
    _checks(module, app, report)
    return report
