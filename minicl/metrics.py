"""What each host tells the monitor, through node_exporter's textfile collector.

``minicl_run.prom``, after every highstate (the minicl returner)::

    minicl_run_last_timestamp_seconds 1.79e+09       when the last highstate ended
    minicl_run_success 1                             0: a state failed or nothing could render
    minicl_run_states{result="failed"} 0             also succeeded, changed
    minicl_config_commit_info{commit="3f1c..."} 1    the config commit that run applied
    minicl_config_commit_timestamp_seconds 1.79e+09
    minicl_config_fetch_ok 0                         0: the last fetch or validation failed ...
    minicl_config_error_info{error="commit ..."} 1   ... and why (the host keeps the last good commit)

``minicl_checks.prom``, whenever the checks run::

    minicl_check_ok{check="disk /"} 1                one per check of minicl.checks
    minicl_check_value{check="disk /"} 0.41          its measured figure, where it has one
    minicl_checks_last_timestamp_seconds 1.79e+09

Files are written atomically (a temporary file, renamed), readable by the exporter's user, so
the exporter never serves half a file.
"""

import os
import time
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from minicl import paths
from minicl.files import write_file

TEXTFILE_DIR = paths.TEXTFILE_DIR
RUN_FILE = "minicl_run.prom"
CHECKS_FILE = "minicl_checks.prom"
RELEASE_FILE = "minicl_release.prom"
PACKAGES_FILE = "minicl_packages.prom"
HIGHSTATE_FUNCTIONS = ("state.apply", "state.highstate")
ERROR_LABEL_MAX = 200


def is_highstate(fun, fun_args):
    """Whether a job was a real highstate: no SLS named, not a dry run."""
    if fun not in HIGHSTATE_FUNCTIONS:
        return False
    for arg in fun_args or []:
        if isinstance(arg, dict):
            kwargs = arg
        elif isinstance(arg, str) and "=" in arg:
            key, _, value = arg.partition("=")
            kwargs = {key: value}
        else:
            return False  # state.apply <sls>: part of the host only
        if str(kwargs.get("test", "false")).lower() in ("true", "1", "yes"):
            return False
        if kwargs.get("mods") or kwargs.get("sls"):
            return False
    return True


def refused_as_concurrent(state_return):
    """Salt refused the run because another state run is in progress: not a run at all."""
    return isinstance(state_return, list) and any(
        isinstance(line, str) and 'The function "state.' in line and "is running as PID" in line
        for line in state_return
    )


def failed_states(state_return):
    """{state key: its comment on one line} of the states that failed in a highstate's return."""
    return {
        key: " ".join(str(state.get("comment")).split())
        for key, state in state_return.items()
        if isinstance(state, dict) and state.get("result") is False
    }


def run_summary(state_return):
    """{succeeded, failed, changed} of a highstate's return. A list instead of a dict of
    state results means nothing ran (render or pillar errors): counted as one failure."""
    if not isinstance(state_return, dict):
        return {"succeeded": 0, "failed": 1, "changed": 0}
    results = [r for r in state_return.values() if isinstance(r, dict) and "result" in r]
    return {
        "succeeded": sum(1 for r in results if r["result"] is True),
        "failed": sum(1 for r in results if r["result"] is False),
        "changed": sum(1 for r in results if r.get("changes")),
    }


def run_line(summary, status, applied_commit=None):
    """One line saying how a highstate went, for the system log."""
    commit = (applied_commit or status.get("commit") or "?")[:12]
    total = summary["succeeded"] + summary["failed"]
    line = (
        f"highstate {'succeeded' if summary['failed'] == 0 else 'FAILED'} at config commit {commit}: "
        f"{total} states, {summary['changed']} changed, {summary['failed']} failed"
    )
    if status.get("error"):
        line += f"; the config repo was not updated: {_one_line(status['error'])}"
    return line


def timestamp(iso_utc):
    """Seconds since the epoch of minicl's "2026-11-22T05:00:00Z" timestamps (None stays None)."""
    if not iso_utc:
        return None
    return datetime.strptime(iso_utc.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z").timestamp()


def write_run(summary, status, applied_commit=None, directory=TEXTFILE_DIR, now=None):
    """Writes minicl_run.prom. ``status`` is the config repo's status record; ``applied_commit``
    the commit the run applied, when known (else the live one from ``status``)."""
    registry = CollectorRegistry()

    def gauge(name, doc, labels=()):
        return Gauge(name, doc, labels, registry=registry)

    gauge("minicl_run_last_timestamp_seconds", "When minicl's last highstate on this host ended.").set(
        now if now is not None else time.time()
    )
    gauge("minicl_run_success", "1 if every state of the last highstate succeeded.").set(
        1 if summary["failed"] == 0 else 0
    )
    states = gauge("minicl_run_states", "States of the last highstate, by result.", ["result"])
    for result in ("succeeded", "failed", "changed"):
        states.labels(result).set(summary[result])

    commit = applied_commit or status.get("commit")
    if commit:
        gauge(
            "minicl_config_commit_info", "The config commit the last highstate applied.", ["commit"]
        ).labels(commit).set(1)
    if commit and commit == status.get("commit") and status.get("commit_time"):
        gauge("minicl_config_commit_timestamp_seconds", "Commit time of the applied config commit.").set(
            timestamp(status["commit_time"])
        )
    gauge("minicl_config_fetch_ok", "0 if the last fetch or validation of the config repo failed.").set(
        0 if status.get("error") else 1
    )
    if status.get("error"):
        gauge(
            "minicl_config_error_info",
            "Why the config repo was not updated (the host keeps the last good commit).",
            ["error"],
        ).labels(_one_line(status["error"])).set(1)
    if status.get("last_good_fetch"):
        gauge(
            "minicl_config_last_good_fetch_timestamp_seconds",
            "When the config repo was last fetched and validated.",
        ).set(timestamp(status["last_good_fetch"]))
    return _write(registry, directory, RUN_FILE)


def write_checks(checks, directory=TEXTFILE_DIR, now=None):
    """Writes minicl_checks.prom from minicl.checks results."""
    registry = CollectorRegistry()
    ok = Gauge("minicl_check_ok", "1 if the minicl check passes.", ["check"], registry=registry)
    value = Gauge(
        "minicl_check_value",
        "The figure a minicl check measured (ratio, count or seconds).",
        ["check"],
        registry=registry,
    )
    for check in checks:
        ok.labels(check.name).set(1 if check.ok else 0)
        if check.value is not None:
            value.labels(check.name).set(check.value)
    Gauge("minicl_checks_last_timestamp_seconds", "When the minicl checks last ran.", registry=registry).set(
        now if now is not None else time.time()
    )
    return _write(registry, directory, CHECKS_FILE)


def write_backup(app, ok, interval, last_success, directory=TEXTFILE_DIR, now=None):
    """Writes minicl_backup_<app>.prom after a backup of ``app``."""
    registry = CollectorRegistry()
    labels = {"app": app}

    def gauge(name, doc, value):
        Gauge(name, doc, ["app"], registry=registry).labels(**labels).set(value)

    gauge("minicl_app_backup_failed", "1 if the app's last backup on this host failed.", 0 if ok else 1)
    gauge(
        "minicl_app_backup_interval_seconds", "Time between two scheduled backups (cluster.json).", interval
    )
    if last_success:
        gauge("minicl_app_backup_last_success_timestamp_seconds", "When the app's last good backup ended.",
              last_success)  # fmt: skip
    gauge("minicl_app_backup_last_attempt_timestamp_seconds", "When the app's last backup ended.",
          now if now is not None else time.time())  # fmt: skip
    return _write(registry, directory, f"minicl_backup_{app}.prom")


def write_release(version, commit, good_since, failed, waiting=None, directory=TEXTFILE_DIR):
    """Writes minicl_release.prom: the minicl this host runs, and how its updates go.
    ``failed``: the record of the pinned commit's failed update ({} if none); ``waiting``:
    why the host waits for the canaries, if it does."""
    registry = CollectorRegistry()
    Gauge(
        "minicl_release_info",
        "The minicl this host runs: its version and commit.",
        ["version", "commit"],
        registry=registry,
    ).labels(version, commit or "").set(1)
    if good_since:
        Gauge(
            "minicl_release_good_since_timestamp_seconds",
            "Since when the running minicl has run well here (passed its first run).",
            ["commit"],
            registry=registry,
        ).labels(commit or "").set(good_since)
    Gauge(
        "minicl_update_failed", "1 if the pinned minicl failed here and was not kept.", registry=registry
    ).set(1 if failed else 0)
    if failed:
        Gauge(
            "minicl_update_error_info",
            "Why the pinned minicl failed here (the host stays on the running one).",
            ["commit", "stage", "error"],
            registry=registry,
        ).labels(failed.get("commit", ""), failed.get("stage", ""), _one_line(failed.get("error", ""))).set(1)
    if waiting:
        Gauge(
            "minicl_update_waiting_info",
            "Why this host waits before taking the pinned minicl.",
            ["reason"],
            registry=registry,
        ).labels(_one_line(waiting)).set(1)
    return _write(registry, directory, RELEASE_FILE)


def last_run_timestamp(run_file_text):
    """minicl_run_last_timestamp_seconds from the text of minicl_run.prom (0 if absent)."""
    for family in text_string_to_metric_families(run_file_text):
        for sample in family.samples:
            if sample.name == "minicl_run_last_timestamp_seconds":
                return sample.value
    return 0.0


def _one_line(text):
    line = " ".join(str(text).split())
    return line if len(line) <= ERROR_LABEL_MAX else line[: ERROR_LABEL_MAX - 3] + "..."


def write_packages(snapshot, good_since, failed, reboot, directory=TEXTFILE_DIR):
    """Writes minicl_packages.prom: the package snapshot this host is at, and how its upgrades
    go. ``failed``: the record of the snapshot that failed here ({} if none)."""
    registry = CollectorRegistry()
    if snapshot:
        Gauge(
            "minicl_packages_snapshot_info", "The snapshot of the cluster's repository this host is at.",
            ["snapshot"], registry=registry,
        ).labels(snapshot).set(1)  # fmt: skip
    if snapshot and good_since:
        Gauge(
            "minicl_packages_good_since_timestamp_seconds",
            "Since when this host runs its snapshot successfully (its upgrade passed its checks).",
            ["snapshot"], registry=registry,
        ).labels(snapshot).set(good_since)  # fmt: skip
    Gauge(
        "minicl_packages_upgrade_failed",
        "1 if the upgrade to the newest snapshot failed here.",
        registry=registry,
    ).set(1 if failed else 0)
    if failed:
        Gauge(
            "minicl_packages_upgrade_error_info",
            "Which snapshot failed here, at which stage, with which packages, and why.",
            ["snapshot", "stage", "packages", "error"],
            registry=registry,
        ).labels(
            failed.get("snapshot", ""), failed.get("stage", ""), _one_line(failed.get("packages", "")),
            _one_line(failed.get("error", "")),
        ).set(1)  # fmt: skip
    Gauge(
        "minicl_packages_reboot_required", "1 if an upgrade installed what needs a reboot (a kernel).",
        registry=registry,
    ).set(1 if reboot else 0)  # fmt: skip
    return _write(registry, directory, PACKAGES_FILE)


def app_file(directory, kind, app_name, what):
    """The path of app ``app_name``'s textfile (``minicl_<kind>_<app>_<what>.prom``), after
    removing the files of the same kind for other apps: a host runs one app of a type, so those
    are the series of an app it ran before, which would otherwise stay."""
    own = f"minicl_{kind}_{app_name}_{what}.prom"
    for entry in os.listdir(directory):
        if entry.startswith(f"minicl_{kind}_") and entry.endswith(f"_{what}.prom") and entry != own:
            os.remove(os.path.join(directory, entry))
    return os.path.join(directory, own)


def _write(registry, directory, name):
    """Writes the file when node_exporter's textfile directory exists; returns its path or None."""
    if not os.path.isdir(directory):
        return None
    path = os.path.join(directory, name)
    write_file(path, generate_latest(registry).decode("utf-8"), 0o644)
    return path
