"""When a host takes a new package snapshot on its own, from the schedule.

A host moves to the newest published snapshot (or the one cluster.json holds the cluster at)
when all of this holds: it is inside ``packages.window`` (if set); no host failed that snapshot
(the monitor's Prometheus shows ``minicl_packages_upgrade_error_info``: one failure stops the
rollout on every host); it is a canary, or every canary has run that snapshot successfully for
the soak time (minicl.rollout, as for minicl's own updates); and its rehearsal is green. Then
``minicl.upgrade.apply`` upgrades it (safety backups, checks, undone on failure). A snapshot that
failed on this host is not tried again; a newer one is.

    result, changes, comment = package_rollout.converge(view, cluster, host, apps, test=False)
"""

import os
import time

from minicl import aptsource, metrics, rollout, upgrade
from minicl.errors import MiniclError
from minicl.rollout import MonitorUnreachable

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def in_window(window, now=None):
    """True if ``window`` ("HH:MM-HH:MM", local time, may span midnight; None: always) holds now."""
    if not window:
        return True
    local = time.localtime(now)
    minute = local.tm_hour * 60 + local.tm_min
    start, end = ((int(part[:2]) * 60 + int(part[3:])) for part in window.split("-"))
    return start <= minute < end if start <= end else (minute >= start or minute < end)


def failed_elsewhere(cluster, host, snapshot, ask=rollout.query):
    """The hosts other than ``host`` on which ``snapshot`` failed, as the monitor shows them."""
    rows = ask(cluster, f'minicl_packages_upgrade_error_info{{snapshot="{snapshot}"}} == 1')
    return sorted(
        f"{row['metric'].get('instance')} ({row['metric'].get('packages', '')})"
        for row in rows
        if row["metric"].get("instance") != host
    )


def decide(view, cluster, host, current, target, failed, now=None, ask=rollout.query):
    """("none" | "failed" | "wait" | "upgrade", why)."""
    if target is None:
        return "none", "the repository has published no snapshot yet"
    if target == current:
        return "none", f"at snapshot {current}, the newest this host may use"
    if failed.get("snapshot") == target:
        return "failed", (
            f"snapshot {target} failed here ({failed.get('stage')}: {failed.get('error')}); waiting for a "
            "newer snapshot"
        )
    if not in_window(view.get("window"), now):
        return "wait", f"snapshot {target} waits for the upgrade window {view['window']}"
    if cluster.monitor_hosts():
        try:
            stopped = failed_elsewhere(cluster, host, target, ask)
        except MonitorUnreachable as exc:
            return (
                "wait",
                f"snapshot {target} waits: no monitor answered to say whether it failed elsewhere ({exc})",
            )
        if stopped:
            return "wait", f"the rollout of snapshot {target} is stopped: it failed on {', '.join(stopped)}"
    ready, why = rollout.may_take(
        cluster, host, f'minicl_packages_good_since_timestamp_seconds{{snapshot="{target}"}}',
        f"snapshot {target}", "a new package snapshot", ask,
    )  # fmt: skip
    return ("upgrade" if ready else "wait"), why


def reboot_required(found):
    """Whether an upgrade that stayed installed what needs a reboot, and the host has not rebooted
    since (needrestart's verdict after it, or Debian's /run/reboot-required)."""
    pending = found.get("reboot")
    return os.path.exists("/run/reboot-required") or bool(pending and pending.get("boot_id") == _boot_id())


def _boot_id():
    try:
        with open(BOOT_ID, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return None


def write_metrics(found=None):
    found = found if found is not None else upgrade.record()
    history = found.get("history") or []
    good_since = next((h["at"] for h in reversed(history) if h["to"] == found.get("snapshot")), None)
    good_since = good_since or found.get("since")
    metrics.write_packages(
        found.get("snapshot"), good_since, found.get("failed") or {}, reboot_required(found)
    )


def converge(view, cluster, host, apps, test=False, ask=rollout.query):
    """The scheduled step of the rollout on ``host``: (result, changes, comment)."""
    found = upgrade.record()
    current = upgrade.current_snapshot(found)
    if current is None:
        return True, {}, "apt does not point at the cluster's repository yet (minicl-apt-source)"
    try:
        target = aptsource.allowed_snapshot(view)
    except aptsource.SourceError as exc:
        write_metrics(found)
        return True, {}, f"staying at snapshot {current}: {exc}"
    action, why = decide(view, cluster, host, current, target, found.get("failed") or {}, ask=ask)
    if action != "upgrade":
        if not test:
            write_metrics(found)
        return True, {}, why
    if test:
        return None, {"snapshot": {"old": current, "new": target}}, f"would rehearse and upgrade: {why}"
    try:
        done = upgrade.apply(view["url"], target, view["use"], view["list"], view["public_key"], apps)
    except MiniclError as exc:
        done = {"ok": False, "lines": [f"FAIL {exc}"], "changes": [], "undone": False, "error": str(exc)}
    found = upgrade.record()
    if done["ok"]:
        found.pop("failed", None)
        pending = upgrade.needrestart()
        found["reboot"] = {"boot_id": _boot_id()} if pending["reboot"] else None
        upgrade.save(found)
        write_metrics(found)
        return True, {"snapshot": {"old": current, "new": target}}, f"upgraded to snapshot {target} ({why})"
    rehearsal = done.get("rehearsal")
    failed = {
        "snapshot": target,
        "at": int(time.time()),
        "stage": "rehearsal" if rehearsal else "upgrade",
        "packages": ", ".join(c["package"] for c in done["changes"]) or "-",
        "error": "; ".join((rehearsal or done).get("failures") or [])
        or done.get("error")
        or "; ".join(line for line in done["lines"] if line.startswith("FAIL")),
    }
    found["failed"] = failed
    upgrade.save(found)
    write_metrics(found)
    return (
        False,
        {},
        f"snapshot {target} failed its {failed['stage']} ({failed['packages']}): {failed['error']}",
    )
