"""Backups of apps with restic, in a local repository on each host of the app.

A backup is one or more streams an appliance produces (a PostgreSQL database's dump, a Redis
snapshot), each piped straight into ``restic backup --stdin``: nothing is staged on disk, so a
backup needs room only for what restic adds to its repository (deduplicated, compressed). Its
streams are restic snapshots tagged ``app=<app>`` and ``backup=<id>``; the id is the UTC time it
started (``20261201T193000Z``). A restore streams a file back out of restic (``restic dump``)
into the appliance: it needs no room for the rest of the repository, nor for other apps.

The repository's password is derived from the deploy key like the app's other shared secrets,
so that every host of the app can read every other host's repository; it is passed to restic
in its environment, never on a command line. When the deploy key changes, the new password is
added to the repository with the old one (``follow_the_key``): no backup becomes unreadable.
Each host of the app keeps its own backups: the loss of one host leaves the others'.
"""

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone

from minicl import metrics, paths
from minicl.appliances import ApplianceError, Report, shared_secret
from minicl.diskspace import mb
from minicl.files import read_file, write_file
from minicl.schema import duration_seconds, schema

ROOT = paths.BACKUPS_DIR
STAMP = "last-success"  # touched after each good backup; the timer's unit reads its age
PASSWORD_FILE = "minicl-password"  # in the repository's folder (root only): the password it opens with
ROOM_MARGIN = 64 * 2**20


def repository(app):
    return os.path.join(ROOT, app["name"])


def settings(app):
    """(interval seconds, backups kept) from cluster.json's ``backup``, defaults applied."""
    defaults = schema()["$defs"]["app"]["properties"]["backup"]["properties"]
    backup = app.get("backup") or {}
    interval = backup.get("interval", defaults["interval"]["default"])
    return duration_seconds(interval), backup.get("keep", defaults["keep"]["default"])


def password(app):
    return shared_secret(app["name"], "restic")


def _env(app, password_=None):
    return {
        **os.environ,
        "RESTIC_REPOSITORY": repository(app),
        "RESTIC_PASSWORD": password_ or password(app),
        "RESTIC_CACHE_DIR": os.path.join(ROOT, ".cache"),
    }


def _initialized(app):
    return os.path.isfile(os.path.join(repository(app), "config"))


def restic(app, *args, input=None, check=True):
    if _initialized(app):
        follow_the_key(app)
    result = subprocess.run(
        ["restic", "--quiet", *args], input=input, capture_output=True, text=True, env=_env(app), check=False
    )
    if check and result.returncode != 0:
        raise ApplianceError(f"restic {args[0]} ({repository(app)}): {result.stderr.strip()}")
    return result


def ensure_repository(app):
    if not _initialized(app):
        os.makedirs(ROOT, mode=0o700, exist_ok=True)
        restic(app, "init")
        write_file(os.path.join(repository(app), PASSWORD_FILE), password(app), 0o600)


def follow_the_key(app):
    """When the deploy key changed, so did the repository's password: add the new one to the
    repository, opened with the one it had (kept root-only in the repository's folder), so that
    no backup becomes unreadable."""
    kept_path = os.path.join(repository(app), PASSWORD_FILE)
    current, kept = password(app), read_file(kept_path)
    if kept == current:
        return
    opens = subprocess.run(
        ["restic", "--quiet", "cat", "config"], capture_output=True, env=_env(app), check=False
    )
    if opens.returncode != 0:
        if not kept:
            raise ApplianceError(
                f"{repository(app)} does not open with the password derived from the deploy key, and the "
                "one it had is not known: its backups need that key (the deploy key it was made with)"
            )
        new_file = os.path.join(repository(app), ".new-password")
        write_file(new_file, current, 0o600)
        try:
            add = ["restic", "--quiet", "key", "add", "--new-password-file", new_file]
            added = subprocess.run(add, capture_output=True, text=True, env=_env(app, kept), check=False)
        finally:
            os.remove(new_file)
        if added.returncode != 0:
            raise ApplianceError(f"restic key add ({repository(app)}): {added.stderr.strip()}")
    write_file(kept_path, current, 0o600)


UNIT = "minicl-backup-{app}"
CHECK_EVERY = "15min"
SERVICE_TEXT = """\
# Managed by minicl (app {app}); changes here are overwritten.
[Unit]
Description=minicl: scheduled backup of app {app} (restic)
After=network-online.target

[Service]
Type=oneshot
# Due when the last good backup is older than the interval (less a few minutes of slack).
ExecCondition=/bin/sh -c 'test -z "$(find {stamp} -mmin -{minutes} 2>/dev/null)"'
ExecStart={salt_call} --local --retcode-passthrough minicl_app.backup {app}
Nice=10
IOSchedulingClass=idle
"""
TIMER_TEXT = """\
# Managed by minicl (app {app}); changes here are overwritten.
[Unit]
Description=minicl: is a backup of app {app} due?

[Timer]
OnBootSec=10min
OnUnitInactiveSec={every}
RandomizedDelaySec=60

[Install]
WantedBy=timers.target
"""


def schedule_units(app, salt_call):
    """{path: text} of the systemd units that back the app up on schedule: a timer that asks
    every quarter of an hour whether a backup is due (so that a host that was down catches up),
    and the service that makes it."""
    interval, _ = settings(app)
    unit = UNIT.format(app=app["name"])
    values = dict(
        app=app["name"],
        stamp=os.path.join(paths.APPS_DIR, app["name"], STAMP),
        minutes=max(1, interval // 60 - 5),
        salt_call=salt_call,
        every=CHECK_EVERY,
    )
    return {
        f"/etc/systemd/system/{unit}.service": SERVICE_TEXT.format(**values),
        f"/etc/systemd/system/{unit}.timer": TIMER_TEXT.format(**values),
    }


def check_room(app, need, what, folder):
    """Refuse before starting, rather than fill the disk: ``need`` bytes plus a margin free in
    ``folder``."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < need + ROOM_MARGIN:
        raise ApplianceError(
            f"not enough room for {what}: it needs about {mb(need)} (+ {mb(ROOM_MARGIN)} kept free) in "
            f"{folder}, which has {mb(free)} free. Free some space, or keep fewer backups "
            f"(apps.{app['name']}.backup.keep) and run minicl_app.cleanup {app['name']}"
        )


def new_id(now=None):
    return datetime.fromtimestamp(now or time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def store(app, backup_id, filename, producer):
    """Pipe ``producer``'s stdout (an argv) into a restic snapshot named ``filename``."""
    ensure_repository(app)
    source = subprocess.Popen(producer, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sink = subprocess.run(
        ["restic", "--quiet", "backup", "--stdin", "--stdin-filename", filename, "--host", app["host"],
         "--tag", f"app={app['name']}", "--tag", f"backup={backup_id}"],
        stdin=source.stdout, capture_output=True, text=True, env=_env(app), check=False,
    )  # fmt: skip
    source.stdout.close()
    error = source.stderr.read().decode(errors="replace").strip()
    if source.wait() != 0:
        # A snapshot of a stream that failed half-way is not a backup: remove it.
        for snap in snapshots(app):
            if f"backup={backup_id}" in snap["tags"]:
                restic(app, "forget", snap["short_id"], check=False)
        raise ApplianceError(f"{' '.join(producer)} failed: {error}")
    if sink.returncode != 0:
        raise ApplianceError(f"restic backup ({repository(app)}): {sink.stderr.strip()}")


def snapshots(app):
    if not os.path.isfile(os.path.join(repository(app), "config")):
        return []
    out = restic(app, "snapshots", "--json", "--tag", f"app={app['name']}").stdout
    return json.loads(out or "[]")


def backups(app):
    """The app's backups, newest first: [{"id", "files": [names], "snapshots": [ids]}]."""
    found = {}
    for snap in snapshots(app):
        tag = next((t for t in snap.get("tags", []) if t.startswith("backup=")), None)
        if tag is None:
            continue
        entry = found.setdefault(tag[7:], {"id": tag[7:], "files": [], "snapshots": []})
        entry["files"] += [os.path.basename(p) for p in snap.get("paths", [])]
        entry["snapshots"].append(snap["short_id"])
    return sorted(found.values(), key=lambda b: b["id"], reverse=True)


def take(app, need, what, streams, prepare=None):
    """The ``backup`` verb of every appliance: ``streams`` ([(file name, argv whose output is
    that file)]) into one backup, after a check that ``need`` bytes fit (``what`` names it in
    the error) and ``prepare()`` (a fresh snapshot, say); then the backups beyond retention are
    removed and the metrics written, also when it fails."""
    report = Report(app["name"], "backup")
    try:
        check_room(app, need, what, ROOT)
        started = time.monotonic()
        if prepare:
            prepare()
        backup_id = new_id()
        for filename, producer in streams:
            store(app, backup_id, filename, producer)
    except ApplianceError:
        record(app, False)
        raise
    seconds = time.monotonic() - started
    files = [filename for filename, _ in streams]
    report.check(
        True, f"backup {backup_id}: {', '.join(files) or 'nothing'} ({mb(need)} of data) in {seconds:.1f} s"
    )
    _, keep = settings(app)
    removed = prune(app, keep)
    if removed:
        report.lines.append(f"info removed the backups beyond the {keep} kept: {', '.join(removed)}")
    record(app, True)
    report.data.update(backup=backup_id, files=files, bytes=need, seconds=round(seconds, 2))
    return report


def list_report(app):
    """The ``list`` verb of every appliance: the app's backups on this host, newest first."""
    report = Report(app["name"], "list")
    found = backups(app)
    report.lines += [f"     {b['id']}  {', '.join(sorted(b['files']))}" for b in found]
    if not found:
        report.lines.append(f"info no backup of app {app['name']} on this host yet")
    report.data["backups"] = [{"id": b["id"], "files": sorted(b["files"])} for b in found]
    return report


def find(app, backup_id=None):
    """A backup by id (the newest without one); an error naming the ones there are."""
    known = backups(app)
    if not known:
        raise ApplianceError(f"app {app['name']} has no backup on this host ({repository(app)})")
    if backup_id is None:
        return known[0]
    for entry in known:
        if entry["id"] == str(backup_id):
            return entry
    ids = ", ".join(b["id"] for b in known[:10])
    raise ApplianceError(f"no backup {backup_id} of app {app['name']} here (newest first: {ids})")


def stream(app, entry, filename):
    """A Popen whose stdout is ``filename`` of backup ``entry``, as restic stored it."""
    for snap_id in entry["snapshots"]:
        listed = restic(app, "ls", "--json", snap_id).stdout
        if f'"/{filename}"' in listed:
            return subprocess.Popen(
                ["restic", "--quiet", "dump", snap_id, f"/{filename}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(app),
            )  # fmt: skip
    raise ApplianceError(
        f"backup {entry['id']} of app {app['name']} holds no {filename} ({', '.join(entry['files'])})"
    )


def prune(app, keep):
    """Forget the backups beyond the newest ``keep`` and free their space; returns their ids."""
    old = backups(app)[keep:]
    if old:
        restic(app, "forget", "--prune", *[s for b in old for s in b["snapshots"]])
    return [b["id"] for b in old]


def prune_beyond_retention(app, report):
    """cleanup's share for every appliance: the backups beyond ``keep`` removed, as a line of
    ``report``; returns their ids."""
    _, keep = settings(app)
    removed = prune(app, keep)
    report.check(True, f"backups beyond the {keep} kept: {', '.join(removed) or 'none'} removed")
    return removed


def record(app, ok, now=None):
    """After a backup: the stamp (for the schedule) and the metrics the monitor alerts on."""
    now = now or time.time()
    folder = os.path.join(paths.APPS_DIR, app["name"])
    if ok:
        write_file(os.path.join(folder, STAMP), new_id(now) + "\n", 0o644)
    metrics.write_backup(app["name"], ok, settings(app)[0], last_success(app), now=now)


def check_age(app, report):
    """check_health's share for every appliance: the last good backup on this host younger than
    twice the interval (a line of ``report``; none yet is said, not failed)."""
    interval, _ = settings(app)
    last = last_success(app)
    age = None if last is None else time.time() - last
    report.data["backup_age_seconds"] = None if age is None else int(age)
    if age is None:
        report.lines.append("info no backup on this host yet")
    else:
        report.check(age <= 2 * interval, f"the last good backup on this host: {age / 3600:.1f} h ago "
                                          f"(one every {interval / 3600:g} h)")  # fmt: skip


def last_success(app):
    """When the last good backup of the app on this host ended (epoch seconds), or None."""
    try:
        return os.path.getmtime(os.path.join(paths.APPS_DIR, app["name"], STAMP))
    except OSError:
        return None
