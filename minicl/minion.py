"""minicl-minion.service: the masterless salt-minion that runs the schedule, under systemd.

    python -m minicl.minion wait-for-jobs -c /etc/salt    # the unit's ExecStop

``minicl-bootstrap`` installs, enables and (re)starts the unit. Stopping or restarting it (a
changed schedule does, from inside a scheduled run) first waits for the minion's jobs in progress
to finish, up to ``TimeoutStopSec``: a highstate is never cut off half-way by its own minion.
"""

import argparse
import os
import subprocess
import sys
import time

from minicl import paths
from minicl.errors import MiniclError

UNIT_NAME = "minicl-minion.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
STOP_TIMEOUT = 600
UNIT_TEXT = """\
# Written by minicl-bootstrap.
[Unit]
Description=minicl: masterless Salt minion applying the cluster config on schedule
Wants=network-online.target
After=network-online.target

[Service]
ExecStart={salt_minion} -c {salt_config_dir}
# Stop (and restart) only once the jobs in progress have finished; even after the timeout,
# KillMode=process leaves a job running rather than killing it half-way (as Salt's own unit).
ExecStop={python} -m minicl.minion wait-for-jobs -c {salt_config_dir}
KillMode=process
TimeoutStopSec={stop_timeout}
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
"""


class MinionUnitError(MiniclError):
    pass


def unit_text(salt_minion, salt_config_dir, python=sys.executable):
    return UNIT_TEXT.format(
        salt_minion=salt_minion, salt_config_dir=salt_config_dir, python=python, stop_timeout=STOP_TIMEOUT
    )


def systemd_running():
    return os.path.isdir(paths.SYSTEMD_RUN_DIR)


def install_and_restart(text, write):
    """Write the unit (with ``write(path, text)``), enable it and (re)start it: a restart reads
    a changed minion config."""
    write(UNIT_PATH, text)
    for command in (
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--quiet", UNIT_NAME],
        ["systemctl", "restart", UNIT_NAME],
    ):
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise MinionUnitError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def running_jobs(salt_config_dir):
    """The minion's jobs in progress, as Salt records them (stale records are dropped)."""
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.utils.minion  # pylint: disable=import-outside-toplevel

    opts = salt.config.minion_config(os.path.join(salt_config_dir, "minion"))
    return salt.utils.minion.running(opts)


def wait_for_jobs(salt_config_dir, poll=1.0, jobs=running_jobs):
    """Return once no job runs; says once (in the journal) what it waits for."""
    said = False
    while True:
        running = jobs(salt_config_dir)
        if not running:
            return
        if not said:
            names = ", ".join(f"{job.get('fun')} (PID {job.get('pid')})" for job in running)
            print(f"minicl-minion: waiting for the job(s) in progress to finish: {names}", flush=True)
            said = True
        time.sleep(poll)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minicl.minion")
    sub = parser.add_subparsers(dest="command", required=True)
    wait = sub.add_parser("wait-for-jobs", help="return once the minion runs no job")
    wait.add_argument("-c", "--config-dir", default=paths.SALT_CONFIG_DIR)
    args = parser.parse_args(argv)
    if args.command == "wait-for-jobs":
        wait_for_jobs(args.config_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
