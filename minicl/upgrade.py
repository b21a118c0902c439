"""Upgrading a host's packages from the cluster's repository, one snapshot at a time, undone by
itself when the host or its apps fail their checks after it.

``plan``: what moving to a snapshot would change (apt's simulation against a private copy of
the minicl source, see ``minicl.aptsource.PrivateApt``), each package flagged with the services
that run its files now (they need a restart) and whether it needs a reboot (a kernel or
microcode: a rehearsal cannot try those).

``apply``: a copy of each version about to change is kept (the way back never depends on the
repository), every local app takes its safety backup, the source moves to the snapshot, apt
upgrades, then minicl's host checks and each local app's check_health and test run. A check that
passed before and fails after undoes it all: the kept versions go back, the source goes back,
and an app that failed restores its safety backup. ``rollback``: the same way back on purpose,
to the snapshot before the last upgrade that stayed (an app restores its backup only where its
data format changed); the rollout then holds that snapshot back everywhere, as if it had failed.

The record (``RECORD``): the snapshot this host is at and the upgrades that stayed.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

from minicl import aptsource, checks, hostcopy, netinfo, paths
from minicl.appliances import ApplianceError, Report
from minicl.appliances import module as appliance_module
from minicl.appliances import upgrades as app_upgrades
from minicl.errors import MiniclError
from minicl.files import read_file, read_json, write_file

RECORD = f"{paths.STATE_DIR}/packages.json"
REHEARSALS = f"{paths.STATE_DIR}/rehearsals.json"  # {snapshot: the last rehearsal of moving to it}
INSTALL_OPTIONS = ["-y", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Options::=--force-confdef"]
# Packages a running system cannot take without a reboot, whatever a rehearsal shows.
REBOOT_PACKAGES = re.compile(r"^(linux-image-|linux-modules-|intel-microcode$|amd64-microcode$)")
LOAD_CHECKS = {"load", "memory"}
_INST = re.compile(r"^Inst (\S+) (?:\[(\S+)\] )?\((\S+) ([^)]*)\)")


class UpgradeError(MiniclError):
    """An upgrade that could not start or complete; the message says what to do."""


def record():
    return read_json(RECORD) or {"snapshot": None, "history": []}


def current_snapshot(found=None):
    """The snapshot this host is at: the record's, else the one its minicl source names (a
    host no upgrade has moved yet)."""
    return (found if found is not None else record()).get("snapshot") or aptsource.configured_snapshot()


def save(found):
    write_file(RECORD, json.dumps(found, indent=1) + "\n", 0o644)


def parse_simulation(text):
    """[{package, from, to}] of apt-get -s output (``from`` None for a new package)."""
    return [
        {"package": m.group(1), "from": m.group(2), "to": m.group(3)}
        for m in map(_INST.match, text.splitlines())
        if m
    ]


def moves(changes, installed_now=None):
    """ "a 1.0 -> 1.1, b (new) -> 2.0": ``changes`` as planned, or as ``installed_now`` has them."""
    now = installed_now or {}
    return ", ".join(
        f"{c['package']} {c['from'] or '(new)'} -> {now.get(c['package'], c['to'])}" for c in changes
    )


def installed(names=None):
    """{package: version} of the installed packages (of ``names``)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Status}\\n", *(names or [])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = {}
    for line in result.stdout.splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[2] == "installed":
            found[parts[0]] = parts[1]
    return found


def upgrade_args(mode, listed):
    """apt-get arguments that upgrade what the host takes from the repository."""
    if mode == "all":
        return ["upgrade"]
    present = sorted(installed(listed))
    return ["install", "--only-upgrade", *present] if present else None


def running_files(proc="/proc"):
    """{file: {units}}: the files each service's processes run or map now (their programs and
    libraries), to foresee which services an upgrade leaves on old code (what needrestart finds
    after it)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            with open(f"{proc}/{pid}/cgroup", encoding="utf-8") as f:
                cgroup = f.read().strip().split("::", 1)[-1]
            unit = next((part for part in reversed(cgroup.split("/")) if part.endswith(".service")), None)
            if unit is None:
                continue
            with open(f"{proc}/{pid}/maps", encoding="utf-8", errors="replace") as f:
                mapped = {
                    fields[5].strip() for fields in (line.split(None, 5) for line in f) if len(fields) == 6
                }
            mapped.add(os.readlink(f"{proc}/{pid}/exe"))
        except OSError:
            continue
        for path in mapped:
            found.setdefault(path, set()).add(unit)
    return found


def units_running_files(package, running):
    """The units (of ``running_files()``) that run or map a file of ``package``."""
    listed = subprocess.run(["dpkg-query", "-L", package], capture_output=True, text=True, check=False)
    return sorted({unit for path in listed.stdout.splitlines() for unit in running.get(path, ())})


def needrestart():
    """Debian's needrestart in batch mode (lists only): {"reboot": bool, "services": [...]}."""
    result = subprocess.run(
        ["needrestart", "-b", "-r", "l"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"},
        check=False,
    )  # fmt: skip
    found = {"reboot": False, "services": []}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        if key == "NEEDRESTART-KSTA" and value.strip() in ("2", "3"):
            found["reboot"] = True
        elif key == "NEEDRESTART-SVC":
            found["services"].append(value.strip())
    return found


def plan(url, snapshot, mode, listed):
    """{snapshot, changes: [{package, from, to, restart: [units], reboot}], reboot} of moving
    this host to ``snapshot``."""
    args = upgrade_args(mode, listed)
    changes = []
    if args:
        with aptsource.PrivateApt(url, snapshot) as apt:
            apt.run(["update"])
            changes = parse_simulation(apt.run(args, simulate=True))
    running = running_files() if changes else {}
    for change in changes:
        change["restart"] = units_running_files(change["package"], running) if change["from"] else []
        change["reboot"] = bool(REBOOT_PACKAGES.match(change["package"]))
    return {"snapshot": snapshot, "changes": changes, "reboot": any(c["reboot"] for c in changes)}


def host_checks():
    """{check: ok} of minicl's host checks, and the failed units (by name) as "unit <name>".
    Not load and memory: they measure what the whole machine carries at that moment (in a
    rehearsal's copy too, which shares the host's kernel), so a busy minute would undo a good
    upgrade; a real regression shows in the units and the apps' checks."""
    found = {}
    for check in checks.run_all():
        if check.name in LOAD_CHECKS:
            continue
        if check.name == "systemd units":
            failed = check.reason[len("failed: ") :].split(", ") if not check.ok else []
            found.update({f"unit {unit}": False for unit in failed})
        else:
            found[check.name] = check.ok
    return found


def new_failures(before, after):
    """Checks that passed (or did not exist) before and fail after."""
    return sorted(name for name, ok in after.items() if not ok and before.get(name, True))


def _app_checks(apps):
    """{app name: (ok, [failure lines])} after their check_health (given time to settle) and test."""
    found = {}
    for app in apps:
        report = Report(app["name"], "check")
        ok = app_upgrades._checks(appliance_module(app["type"]), app, report)  # pylint: disable=protected-access
        found[app["name"]] = (ok, [line for line in report.lines if line.startswith("FAIL")])
    return found


def point_source(files):
    """Write the minicl source's files and update its lists; when apt refuses the repository
    (a bad signature, no answer), the files go back to what they were and the error is raised."""
    before = {path: read_file(path) for path in files}
    for path, text in files.items():
        write_file(path, text, 0o644)
    try:
        aptsource.update_minicl_source()
    except aptsource.SourceError:
        for path, text in before.items():
            if text:
                write_file(path, text, 0o644)
            elif os.path.exists(path):
                os.unlink(path)
        raise


def apply(url, snapshot, mode, listed, public_key, apps, rehearsal=True):
    """Move this host to ``snapshot``; returns {ok, lines, changes, undone}. ``apps``: the apps
    of this host as the pillar has them. ``rehearsal``: only after a green rehearsal of it on
    this host as it is (one runs first when there is none)."""
    if rehearsal and not green_rehearsal(snapshot):
        try:
            rehearsed = rehearse(url, snapshot, mode, listed, apps)
        except MiniclError as exc:  # no copy booted, no plan: the rehearsal failed, not the upgrade
            failure = f"the rehearsal could not run: {exc}"
            rehearsed = {"ok": False, "lines": [f"FAIL {failure}"], "changes": [], "failures": [failure]}
        if not rehearsed["ok"]:
            line = f"not upgraded: the rehearsal of snapshot {snapshot} failed"
            return {"ok": False, "lines": [*rehearsed["lines"], line], "changes": rehearsed["changes"],
                    "undone": False, "rehearsal": rehearsed}  # fmt: skip
    found = record()
    previous = current_snapshot(found)
    lines = []
    say = lines.append

    planned = plan(url, snapshot, mode, listed)
    changing = {c["package"]: c["from"] for c in planned["changes"] if c["from"]}
    debs = app_upgrades.keep_copies(changing) if changing else []
    if changing:
        say("kept a copy of " + ", ".join(f"{n} {v}" for n, v in sorted(changing.items())))
    backups = {}
    for app in apps:
        report = appliance_module(app["type"]).backup(app)
        if not report.ok:
            raise UpgradeError(
                f"the safety backup of app {app['name']} failed: {'; '.join(report.lines[-2:])}"
            )
        backups[app["name"]] = report.data.get("backup")
        say(f"safety backup of {app['name']}: {backups[app['name']]}")
    formats = {app["name"]: data_format(app) for app in apps}
    checked_before = host_checks()
    files = aptsource.render(url, snapshot, mode, listed, public_key)
    old_files = aptsource.render(url, previous, mode, listed, public_key) if previous else None
    point_source(files)
    args = upgrade_args(mode, listed)
    try:
        if args:
            aptsource.apt_get([*args, *INSTALL_OPTIONS])
    except aptsource.SourceError as exc:
        say(f"FAIL apt-get: {exc}")
        say("the upgrade failed: undoing it")
        _undo(changing, debs, old_files, [], backups, say)
        return {"ok": False, "lines": lines, "changes": planned["changes"], "undone": True, "error": str(exc)}
    after = installed(sorted({c["package"] for c in planned["changes"]}))
    say(f"snapshot {previous} -> {snapshot}: {moves(planned['changes'], after) or 'nothing to upgrade'}")
    failed = new_failures(checked_before, host_checks())
    apps_checked = _app_checks(apps)
    for name in failed:
        say(f"FAIL host check {name} after the upgrade")
    for name, (ok, bad) in apps_checked.items():
        say(
            f"{'ok  ' if ok else 'FAIL'} app {name} after the upgrade"
            + (f": {'; '.join(bad)}" if bad else "")
        )
    if not failed and all(ok for ok, _ in apps_checked.values()):
        entry = {"at": int(time.time()), "from": previous, "to": snapshot, "before": changing,
                 "after": {n: after.get(n) for n in changing}, "debs": debs, "backups": backups,
                 "formats": formats}  # fmt: skip
        found.update(snapshot=snapshot, history=[*found.get("history", []), entry])
        found.pop("failed", None)
        save(found)
        return {"ok": True, "lines": lines, "changes": planned["changes"], "undone": False}
    say("the upgrade failed its checks: undoing it")
    _undo(changing, debs, old_files, [a for a in apps if not apps_checked[a["name"]][0]], backups, say)
    return {"ok": False, "lines": lines, "changes": planned["changes"], "undone": True}


def _undo(versions, debs, old_files, apps_to_restore, backups, say):
    if debs:
        app_upgrades.install_debs(debs)
        say("back to " + ", ".join(f"{n} {v}" for n, v in sorted(versions.items())))
    if old_files:
        point_source(old_files)
    for app in apps_to_restore:
        module = appliance_module(app["type"])
        app_upgrades._healthy(module, app)  # pylint: disable=protected-access
        restored = module.restore(app, backup=backups[app["name"]])
        say(f"{'restored' if restored.ok else 'FAIL restoring'} the safety backup of {app['name']}")


def rollback(url, mode, listed, public_key, apps):
    """Back to the snapshot before the last upgrade that stayed: its package versions (kept
    copies) and its source; an app whose data format changed restores its safety backup."""
    found = record()
    history = found.get("history") or []
    if not history:
        raise UpgradeError("no upgrade recorded on this host: nothing to roll back to")
    last = history[-1]
    lines = []
    say = lines.append

    changed = [a for a in apps if last.get("formats", {}).get(a["name"]) not in (None, data_format(a))]
    old_files = aptsource.render(url, last["from"], mode, listed, public_key) if last["from"] else None
    _undo(last["before"], [d for d in last["debs"] if os.path.exists(d)], old_files, changed,
          last.get("backups", {}), say)  # fmt: skip
    now = installed(sorted(last["before"]))
    ok = all(now.get(n) == v for n, v in last["before"].items())
    # Held: the rollout does not take this snapshot again (on any host: it stops there, and the
    # admins hear of it), a newer one it does.
    found.update(snapshot=last["from"], history=history[:-1])
    found["failed"] = {
        "snapshot": last["to"], "at": int(time.time()), "stage": "rollback",
        "packages": ", ".join(sorted(last["before"])) or "-", "error": "rolled back by hand",
    }  # fmt: skip
    save(found)
    say(f"{'ok  ' if ok else 'FAIL'} snapshot {last['to']} -> {last['from']}")
    return {"ok": ok, "lines": lines}


def data_format(app):
    """What the app's appliance says its data format is (changes only with an upgrade that
    needs the data converted), or None."""
    try:
        describe = getattr(appliance_module(app["type"]), "data_format", None)
        return describe(app) if describe else None
    except ApplianceError:
        return None


def checks_now(apps):
    """{"host": {check: ok}, "apps": {name: [ok, [failure lines]]}}: what a rehearsal compares
    before and after the upgrade inside the copy."""
    return {"host": host_checks(), "apps": {n: [ok, bad] for n, (ok, bad) in _app_checks(apps).items()}}


def rehearsals():
    return read_json(REHEARSALS) or {}


def green_rehearsal(snapshot):
    """The last rehearsal of moving this host to ``snapshot`` if it passed with the packages
    installed now, else None."""
    found = rehearsals().get(snapshot)
    return found if found and found["ok"] and found.get("installed") == _fingerprint() else None


def _fingerprint():
    """Of the packages installed now: a rehearsal holds for the host as it was rehearsed."""
    listed = "\n".join(f"{name}={version}" for name, version in sorted(installed().items()))
    return hashlib.sha256(listed.encode()).hexdigest()


def rehearse(url, snapshot, mode, listed, apps):
    """Upgrade a throwaway copy of this host (minicl.hostcopy) to ``snapshot`` and run minicl's
    host checks and each local app's check_health and test there, before and after; the real
    host is untouched. Returns {ok, snapshot, changes, failures, restart, reboot, lines, seconds
    (of each phase)}; the result is kept for the rollout (``green_rehearsal``)."""
    lines = []
    say = lines.append
    seconds, started = {}, [time.monotonic()]

    def lap(phase):
        now = time.monotonic()
        seconds[phase] = round(now - started[0], 1)
        started[0] = now

    planned = plan(url, snapshot, mode, listed)
    args = upgrade_args(mode, listed)
    lap("plan")
    result = {"snapshot": snapshot, "changes": planned["changes"], "failures": [], "restart": [],
              "reboot": planned["reboot"], "lines": lines, "seconds": seconds}  # fmt: skip
    if not planned["changes"]:
        say(f"nothing to upgrade for snapshot {snapshot}")
        return _kept(dict(result, ok=True))
    if planned["reboot"]:
        say("NOTE a kernel or microcode upgrade: the copy shares this host's running kernel, so the "
            "new one is installed but cannot be booted in a rehearsal")  # fmt: skip
    check_program = [sys.executable, "-c", "import json, sys; from minicl import upgrade; "
                     "print(json.dumps(upgrade.checks_now(json.load(sys.stdin))))"]  # fmt: skip
    with aptsource.PrivateApt(url, snapshot) as apt:
        apt.run(["update"])
        apt.run([*args, "-d", "-y"])  # the packages, fetched here: the copy has no network
        lap("download")
        found = netinfo.global_addresses()
        own = netinfo.all_global(found, "ipv4") + netinfo.all_global(found, "ipv6")
        with hostcopy.HostCopy("rehearsal", binds=[(apt.dir, apt.dir, True)], addresses=own) as copy:
            state = copy.boot()
            lap("boot")
            say(f"booted a copy of this host ({state})")
            before = json.loads(copy.run(check_program, input=json.dumps(apps)).stdout)
            lap("checks before")
            upgraded = copy.run(
                ["apt-get", "-q", *apt.options, "--no-download", *args, *INSTALL_OPTIONS],
                check=False, env=aptsource.APT_ENV, timeout=1800,
            )  # fmt: skip
            if upgraded.returncode != 0:
                bad = [
                    line for line in (upgraded.stdout + upgraded.stderr).splitlines() if line.startswith("E:")
                ]
                result["failures"].append(
                    f"apt-get in the copy: {' | '.join(bad[-3:]) or upgraded.returncode}"
                )
            else:
                say(f"upgraded the copy: {moves(planned['changes'])}")
            lap("upgrade")
            after = json.loads(copy.run(check_program, input=json.dumps(apps)).stdout)
            lap("checks after")
            restart = copy.run(["needrestart", "-b", "-r", "l"], check=False, env={"LC_ALL": "C"})
    result["failures"] += [f"host check {name}" for name in new_failures(before["host"], after["host"])]
    for name, (ok, bad) in after["apps"].items():
        was_ok = before["apps"].get(name, [True])[0]
        say(f"{'ok  ' if ok else 'FAIL'} app {name}: check_health and test in the copy after the upgrade"
            + ("" if ok or was_ok else " (failed before it too)"))  # fmt: skip
        if was_ok and not ok:
            result["failures"].append(f"app {name}: {'; '.join(bad) or 'failed'}")
    result["restart"] = [line.split(":", 1)[1].strip() for line in restart.stdout.splitlines()
                         if line.startswith("NEEDRESTART-SVC:")]  # fmt: skip
    for failure in result["failures"]:
        say(f"FAIL {failure}")
    result["ok"] = not result["failures"]
    say(f"{'ok  ' if result['ok'] else 'FAIL'} rehearsal of snapshot {snapshot}; this host was not changed")
    return _kept(result)


def _kept(result, keep=10):
    found = dict(sorted(rehearsals().items(), key=lambda item: item[1]["at"])[-(keep - 1) :])
    found[result["snapshot"]] = {"ok": result["ok"], "at": int(time.time()), "failures": result["failures"],
                                 "installed": _fingerprint()}  # fmt: skip
    write_file(REHEARSALS, json.dumps(found, indent=1) + "\n", 0o644)
    return result
