"""minicl updates itself: the config repo pins a minicl commit, every host follows.

On every run, the ``minicl_release.pinned`` state (last in the highstate) compares the pin of
the live config commit with the release this host runs. When they differ, and the host may take
it now (``minicl.rollout``: canaries first), it

1. builds the pinned commit into a new release beside the running one (``minicl.releases``),
2. lets it check itself (``minicl.selfcheck``: it loads its modules, validates the live
   cluster.json and runs this host's highstate with ``test=True``); a release that fails is
   never switched to,
3. switches ``current`` to it and starts the *trial* (``python -m minicl.selfupdate trial``, a
   transient systemd unit running the previous, known-good release's code): once the run in
   progress has ended, it restarts minicl-minion.service into the new release (its ExecStop
   waits for jobs), checks that the minion stays up, and runs the first highstate under the new
   release. A minion that does not come back, or a first run with a failed state that did not
   fail before, switches ``current`` back, restarts into the previous release and converges
   with it; the failed commit is recorded and not tried again until the pin changes.

The record, ``/var/lib/minicl/release.json`` (0600)::

    {"trial":  {"commit": <sha>, "name": <new>, "previous": <old>, "started": <time>},
     "good":   {"commit": <sha>, "since": <time>},        # passed its first run here
     "failed": {"commit": <sha>, "stage": "self-check"|"first run", "error": ..., "at": <time>,
                "config_commit": <sha>}}                  # a self-check is retried with new config

Each run and each step of the trial writes ``minicl_release.prom`` for the monitor (see
minicl.metrics.write_release).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import syslog
import time

from minicl import metrics, minion, paths, release, releases, rollout, runlock
from minicl.errors import MiniclError
from minicl.files import read_json, write_file

RECORD_FILE = f"{paths.STATE_DIR}/release.json"
LAST_RUN_NAME = "last_run.json"  # in the cache dir: the failed states of the last highstate
RUN_WAIT = 3600  # the trial waits this long for the run that started it (and others) to end
MINION_SETTLE = 15  # a restarted minion must stay up this long
FIRST_RUN_TIMEOUT = 3600


class UpdateError(MiniclError):
    """An update failed; ``stage``: build, self-check, switch or first run."""

    def __init__(self, message, stage="update"):
        super().__init__(message)
        self.stage = stage


def read_record(path=RECORD_FILE):
    return read_json(path)


def save_record(data, path=RECORD_FILE):
    write_file(path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o600)


def say(message, error=False):
    """A line in the journal (``journalctl -t minicl``), as the runs' own lines."""
    syslog.openlog("minicl", 0, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_ERR if error else syslog.LOG_INFO, message)


def record_run(failed_states, cache_dir=paths.STATE_DIR):
    """Called after every highstate (the returner): which states failed, for the next trial."""
    write_file(
        os.path.join(cache_dir, LAST_RUN_NAME),
        json.dumps(
            {"failed": sorted(failed_states), "release": release.fingerprint(), "at": int(time.time())}
        ),
        0o600,
    )


# -- deciding ----------------------------------------------------------------------------


def decide(pin, running_commit, record, config_commit, may_update, trial_active=lambda name: False):
    """What to do about ``pin`` ({"commit", "url"} or None): ("none" | "failed" | "wait" |
    "update" | "resume", why). ``may_update()`` → (bool, why) is asked only when an update is
    due; ``trial_active(name)`` says whether the trial of the release ``name`` still runs."""
    attempt = record.get("trial")
    if attempt:
        if trial_active(attempt["name"]):
            return "none", f"minicl {attempt['commit'][:12]} is on trial here: its first run decides"
        return "resume", (
            f"the trial of minicl {attempt['commit'][:12]} was cut off (a reboot?); it starts again"
        )
    if not pin:
        return "none", "the config repo pins no minicl: it is updated by hand (install.sh)"
    commit = pin["commit"]
    if commit == running_commit:
        return "none", f"minicl {commit[:12]} (the pinned commit) runs here"
    failed = record.get("failed") or {}
    if failed.get("commit") == commit and (
        failed.get("stage") != "self-check" or failed.get("config_commit") == config_commit
    ):
        return "failed", (
            f"minicl {commit[:12]} failed its {failed.get('stage')} here at {_when(failed.get('at'))} "
            f"and was not kept: {failed.get('error')}. This host stays on "
            f"{running_commit[:12] if running_commit else 'the running release'} and does not try "
            f"{commit[:12]} again until the pin changes"
            + (" (or, for a self-check, the config)" if failed.get("stage") == "self-check" else "")
        )
    ok, why = may_update()
    return ("update", why) if ok else ("wait", why)


def _when(timestamp):
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp or 0))


# -- updating (inside the run) -------------------------------------------------------------


def build_and_check(root, pin, source_mirror, minion_id, cache_dir, wheelhouse=None):
    """Build the pinned commit into a release and let it check itself; returns its name.
    Raises UpdateError with the stage and what failed."""
    commit = pin["commit"]
    source = os.path.join(cache_dir, "release-source", commit)
    shutil.rmtree(source, ignore_errors=True)
    os.makedirs(os.path.dirname(source), mode=0o700, exist_ok=True)
    try:
        source_mirror.export(commit, source)
        name = releases.build(root, commit, source, wheelhouse=wheelhouse)
    except MiniclError as exc:
        raise UpdateError(str(exc), stage="build") from None
    finally:
        shutil.rmtree(os.path.dirname(source), ignore_errors=True)
    result = self_check(root, name, minion_id, cache_dir)
    if not result.get("ok"):
        shutil.rmtree(releases.path(root, name), ignore_errors=True)
        problems = result.get("problems") or ["no highstate was rendered"]
        raise UpdateError("; ".join(problems), stage="self-check")
    return name


def self_check(root, name, minion_id, cache_dir):
    python = os.path.join(releases.path(root, name), "bin", "python")
    result = subprocess.run(
        [python, "-m", "minicl.selfcheck", "--id", minion_id, "--cache-dir", cache_dir],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        said = (result.stderr or result.stdout).strip().splitlines()[-4:]
        return {
            "ok": False,
            "problems": [f"the self-check crashed (exit {result.returncode}): {' / '.join(said)}"],
        }


def trial_unit(name):
    return f"minicl-release-trial-{name}.service"


def trial_active(name):
    return (
        subprocess.run(["systemctl", "is-active", "--quiet", trial_unit(name)], check=False).returncode == 0
    )


def start_trial(root, name, commit, previous, minion_id, cache_dir, record_path=RECORD_FILE):
    """Switch ``current`` to ``name`` and hand over to the trial (a transient systemd unit
    running the previous release's code)."""
    record = read_record(record_path)
    record["trial"] = {"commit": commit, "name": name, "previous": previous, "started": int(time.time())}
    record.pop("failed", None)
    save_record(record, record_path)
    releases.switch(root, name)
    try:
        run_trial_unit(root, record["trial"], minion_id, cache_dir, record_path)
    except UpdateError:
        releases.switch(root, previous)
        record.pop("trial", None)
        save_record(record, record_path)
        raise


def run_trial_unit(root, attempt, minion_id, cache_dir, record_path=RECORD_FILE):
    """Start the trial of ``attempt`` in a transient unit of its own: it outlives this run and
    the minion's restart."""
    unit = trial_unit(attempt["name"])
    subprocess.run(["systemctl", "reset-failed", unit], capture_output=True, check=False)
    started = subprocess.run(
        [
            "systemd-run",
            f"--unit={unit}",
            "--collect",
            "--quiet",
            f"--description=minicl: first run of release {attempt['name']}",
            os.path.join(releases.path(root, attempt["previous"]), "bin", "python"),
            "-m",
            "minicl.selfupdate",
            "trial",
            "--root",
            root,
            "--id",
            minion_id,
            "--cache-dir",
            cache_dir,
            "--record",
            record_path,
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    if started.returncode != 0:
        raise UpdateError(f"systemd-run could not start the trial: {started.stderr.strip()}", stage="switch")
    return unit


def converge(pin, cluster, host, minion_id, cache_dir, source_mirror, test=False, record_path=RECORD_FILE,
             ask=rollout.query):  # fmt: skip
    """The work of the ``minicl_release.pinned`` state: (result, changes, comment)."""
    record = read_record(record_path)
    running = releases.running()
    root = releases.root()
    commit = (pin or {}).get("commit", "")
    action, why = decide(
        pin,
        running.get("commit"),
        record,
        cluster.commit,
        lambda: rollout.may_update(cluster, host, commit, ask),
        trial_active,
    )
    if action in ("none", "wait", "failed"):
        if not test:
            write_metrics(record, why if action == "wait" else None, pin)
        return action != "failed", {}, why
    if action == "resume":
        if test:
            return None, {"trial": why}, why
        run_trial_unit(root, record["trial"], minion_id, cache_dir, record_path)
        return True, {"trial": why}, why
    if root is None:
        return (
            False,
            {},
            (
                f"the config repo pins minicl {commit[:12]}, but this minicl runs from {sys.prefix}, "
                "not from a release folder: install minicl with install.sh (README: Install minicl)"
            ),
        )
    previous = releases.current(root) or os.path.basename(sys.prefix)
    change = {"minicl": {"old": running.get("commit") or previous, "new": commit}}
    if test:
        return None, change, f"would build minicl {commit[:12]}, let it check itself and switch to it ({why})"
    if not os.path.isdir(paths.SYSTEMD_RUN_DIR):
        return False, {}, f"minicl {commit[:12]} is pinned, but minicl updates itself only on systemd hosts"
    try:
        name = build_and_check(
            root,
            pin,
            source_mirror,
            minion_id,
            cache_dir,
            cluster.data.get("self_update", {}).get("wheelhouse"),
        )
        start_trial(root, name, commit, previous, minion_id, cache_dir, record_path)
    except UpdateError as exc:
        record = read_record(record_path)
        if exc.stage != "build":  # a build may fail for a while (network): tried again next run
            record["failed"] = {
                "commit": commit, "stage": exc.stage, "error": str(exc), "at": int(time.time()),
                "config_commit": cluster.commit,
            }  # fmt: skip
            save_record(record, record_path)
        write_metrics(record, None, pin)
        say(
            f"minicl {commit[:12]} was not switched to on {minion_id}: its {exc.stage} failed: {exc}",
            error=True,
        )
        return False, {}, f"minicl {commit[:12]} was not switched to: its {exc.stage} failed: {exc}"
    return (
        True,
        change,
        (
            f"minicl {commit[:12]} built and self-checked ({why}); it is current now. "
            f"minicl-minion.service restarts into it once this run has ended, and its first run decides: "
            f"if that fails, this host goes back to {previous}"
        ),
    )


# -- the trial (previous release's code, outside the run) ----------------------------------------


def _runs_in_progress(cache_dir):
    """Processes in a run (the config repo's run lock), and Salt jobs in progress or waiting
    for their turn (a state run queued behind another one holds no lock yet)."""
    return runlock.lock_holders(os.path.join(cache_dir, "runs.lock")) or minion.running_jobs(
        paths.SALT_CONFIG_DIR
    )


def wait_for_runs(cache_dir, timeout=RUN_WAIT, poll=1.0):
    deadline = time.monotonic() + timeout
    while _runs_in_progress(cache_dir):
        if time.monotonic() > deadline:
            raise UpdateError(f"a run was still in progress after {timeout} s", stage="first run")
        time.sleep(poll)


def _minion(prop):
    out = subprocess.run(
        ["systemctl", "show", "-p", prop, "--value", minion.UNIT_NAME],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def _minion_scheduled():
    return (
        subprocess.run(["systemctl", "is-enabled", "--quiet", minion.UNIT_NAME], check=False).returncode == 0
    )


def restart_minion(release_dir, settle=MINION_SETTLE):
    """Restart minicl-minion.service (its ExecStop lets jobs finish) and check that it runs
    ``release_dir``'s code and stays up for ``settle`` seconds."""
    done = subprocess.run(
        ["systemctl", "restart", minion.UNIT_NAME], capture_output=True, text=True, check=False, timeout=900
    )
    if done.returncode != 0:
        raise UpdateError(
            f"systemctl restart {minion.UNIT_NAME} failed: {done.stderr.strip()}", stage="first run"
        )
    restarts = _minion("NRestarts")
    time.sleep(settle)
    state, pid = _minion("ActiveState"), _minion("MainPID")
    if state != "active" or _minion("NRestarts") != restarts or pid in ("", "0"):
        raise UpdateError(
            f"{minion.UNIT_NAME} did not stay up under the new release ({state})", stage="first run"
        )
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        argv = []
    if not any(arg.decode(errors="replace").startswith(release_dir + "/") for arg in argv):
        raise UpdateError(
            f"{minion.UNIT_NAME} does not run {release_dir} after its restart", stage="first run"
        )


def first_run(release_dir, timeout=FIRST_RUN_TIMEOUT):
    """The failed states of a highstate with ``release_dir``'s salt-call; UpdateError if it
    gave no state results at all."""
    result = subprocess.run(
        [f"{release_dir}/bin/salt-call", "--local", "--out=json", "state.apply"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd="/",
    )
    try:
        states = json.loads(result.stdout)["local"]
    except (ValueError, KeyError, TypeError):
        said = (result.stderr or result.stdout).strip().splitlines()[-4:]
        raise UpdateError(
            f"its highstate crashed (exit {result.returncode}): {' / '.join(said)}", stage="first run"
        ) from None
    if not isinstance(states, dict):
        lines = states if isinstance(states, list) else [states]
        raise UpdateError(
            "its highstate did not render: " + " / ".join(map(str, lines))[:600], stage="first run"
        )
    return {key: comment[:200] for key, comment in metrics.failed_states(states).items()}


def state_name(key):
    """``minicl.base.users: minicl-users`` for Salt's ``minicl_users_|-minicl-users_|-...`` key."""
    parts = key.split("_|-")
    return parts[1] if len(parts) > 1 else key


def trial(root, minion_id, cache_dir, record_path=RECORD_FILE, settle=MINION_SETTLE):
    """The trial of the release ``current`` was switched to (see the module docstring)."""
    record = read_record(record_path)
    attempt = record.get("trial")
    if not attempt:
        return 0
    name, previous, commit = attempt["name"], attempt["previous"], attempt["commit"]
    new_dir = releases.path(root, name)
    try:
        wait_for_runs(cache_dir)
        failed_before = set(read_json(os.path.join(cache_dir, LAST_RUN_NAME)).get("failed") or [])
        if _minion_scheduled():
            restart_minion(new_dir, settle)
        failed = first_run(new_dir)
        new = sorted(key for key in failed if state_name(key) not in {state_name(k) for k in failed_before})
        if new:
            raise UpdateError(
                "its first run failed: " + "; ".join(f"{state_name(k)}: {failed[k]}" for k in new[:5]),
                stage="first run",
            )
    except (UpdateError, OSError, subprocess.TimeoutExpired) as exc:
        roll_back(root, record_path, attempt, exc, minion_id, cache_dir, settle)
        return 1
    mark_good(commit, record_path)
    removed = releases.prune(root, keep={name, previous})
    say(
        f"minicl release {name} passed its first run on {minion_id} and stays current"
        + (f" (removed old releases: {', '.join(removed)})" if removed else "")
    )
    write_metrics_with(new_dir)
    return 0


def roll_back(root, record_path, attempt, exc, minion_id, cache_dir, settle=MINION_SETTLE):
    name, previous, commit = attempt["name"], attempt["previous"], attempt["commit"]
    stage = getattr(exc, "stage", "first run")
    releases.switch(root, previous)
    record = read_record(record_path)
    record.pop("trial", None)
    record["failed"] = {"commit": commit, "stage": stage, "error": str(exc), "at": int(time.time())}
    save_record(record, record_path)
    say(
        f"minicl release {name} (commit {commit[:12]}) failed on {minion_id}: {exc}; rolled back to "
        f"{previous}, which stays current until the pin changes",
        error=True,
    )
    shutil.rmtree(releases.path(root, name), ignore_errors=True)
    old_dir = releases.path(root, previous)
    try:
        if _minion_scheduled():
            restart_minion(old_dir, settle)
        first_run(old_dir)  # converge with the previous release again; it reports the failure
    except (UpdateError, OSError, subprocess.TimeoutExpired) as again:
        say(f"after the roll-back to {previous}: {again}", error=True)
    write_metrics_with(old_dir)


def write_metrics_with(release_dir):
    """minicl_release.prom as ``release_dir``'s code sees it (its version is its own)."""
    subprocess.run(
        [f"{release_dir}/bin/python", "-m", "minicl.selfupdate", "metrics"],
        capture_output=True,
        check=False,
        cwd="/",
    )


def write_metrics(record=None, waiting=None, pin=None, directory=metrics.TEXTFILE_DIR):
    record = read_record() if record is None else record
    running = releases.running()
    failed = record.get("failed") or {}
    if pin and failed.get("commit") != pin.get("commit"):
        failed = {}  # a failure of a commit no longer pinned is history
    return metrics.write_release(
        version=release.fingerprint(),
        commit=running.get("commit", ""),
        good_since=good_since(record, running),
        failed=failed,
        waiting=waiting,
        directory=directory,
    )


def mark_good(commit, record_path=RECORD_FILE):
    """``commit`` runs well here from now on (bootstrap put the host on it)."""
    record = read_record(record_path)
    record.pop("trial", None)
    record.pop("failed", None)
    record["good"] = {"commit": commit, "since": int(time.time())}
    save_record(record, record_path)


def good_since(record, running):
    """Since when the running release has run well here: since it passed its first run, or,
    for the release a host was installed or bootstrapped with, since it was built; None while
    its trial is on."""
    commit = running.get("commit")
    good, attempt = record.get("good") or {}, record.get("trial") or {}
    if commit and good.get("commit") == commit:
        return good.get("since")
    if commit and attempt.get("commit") == commit:
        return None
    return running.get("built_at")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minicl.selfupdate")
    sub = parser.add_subparsers(dest="command", required=True)
    run_trial = sub.add_parser("trial", help="the first run of the release current was switched to")
    run_trial.add_argument("--root", required=True)
    run_trial.add_argument("--id", required=True)
    run_trial.add_argument("--cache-dir", default=paths.STATE_DIR)
    run_trial.add_argument("--record", default=RECORD_FILE)
    sub.add_parser("metrics", help="write minicl_release.prom")
    args = parser.parse_args(argv)
    if args.command == "trial":
        return trial(args.root, args.id, args.cache_dir, args.record)
    write_metrics()
    return 0


if __name__ == "__main__":
    sys.exit(main())
