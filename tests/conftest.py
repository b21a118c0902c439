"""Tripwire: no test may change the users, groups, sshd config, firewall or minicl state of
this machine."""

import hashlib
import os
import shutil
import signal
import subprocess

import pytest

WATCHED = [
    "/etc/passwd",
    "/etc/group",
    "/etc/shadow",
    "/etc/ssh/sshd_config.d",
    "/var/lib/minicl",
    "/etc/salt/minion.d",
    "/etc/minicl",
    "/run/sshd",
    "/home",
    "/etc/nftables.conf",
    "/etc/nftables.d",
    "/etc/prometheus",
    "/etc/default/prometheus",
    "/etc/default/prometheus-alertmanager",
    "/var/lib/prometheus/node-exporter",
    "/etc/postfix/main.cf",
]


def _fingerprint():
    found = {}
    for path in WATCHED:
        found[path] = os.path.exists(path)
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if os.path.isdir(os.path.join(path, name)):
                    found[os.path.join(path, name)] = "dir"
                    continue
                with open(os.path.join(path, name), "rb") as f:
                    found[os.path.join(path, name)] = hashlib.sha256(f.read()).hexdigest()
        elif os.path.exists(path):
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    if shutil.which("nft") and os.geteuid() == 0:
        found["nft list ruleset"] = subprocess.run(
            ["nft", "list", "ruleset"], capture_output=True, text=True, check=False
        ).stdout
    return found


_XDIST_CONTROLLER = False  # this process runs pytest-xdist's workers (set at configure)


def _interrupted(signum, frame):  # pylint: disable=unused-argument
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once
    if _XDIST_CONTROLLER:
        from minicl.hostcopy import child_pids  # pylint: disable=import-outside-toplevel

        for pid in child_pids(os.getpid()):  # each worker tears its own test hosts down
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # A run stopped with SIGTERM (a CI timeout, kill) tears its fixtures down like Ctrl-C does:
    # test hosts left running would hold namespaces, mounts and cgroups of this machine.
    global _XDIST_CONTROLLER  # pylint: disable=global-statement
    _XDIST_CONTROLLER = bool(getattr(config.option, "numprocesses", None)) and (
        "PYTEST_XDIST_WORKER" not in os.environ
    )
    signal.signal(signal.SIGTERM, _interrupted)
    # Importing Salt installs a handler that keeps every log record until the process exits and
    # then writes them to the stderr it saw at import: pytest's capture, closed by then
    # ("--- Logging error ---"). Without it, Salt's records reach pytest like any library's.
    import salt._logging  # pylint: disable=import-outside-toplevel

    salt._logging.shutdown_temp_handler()


@pytest.fixture(scope="session")
def salt_factories_default_root_dir(tmp_path_factory):
    """pytest-salt-factories' daemons and configs under pytest's own temporary directory."""
    return tmp_path_factory.mktemp("salt-factories")


@pytest.fixture(scope="session", autouse=True)
def machine_stays_untouched():
    before = _fingerprint()
    yield
    after = _fingerprint()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"the tests changed this machine: {changed}"
