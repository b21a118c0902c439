"""Tripwire: no test may change the users, groups, sshd config, firewall or minicl state of
this machine."""

import hashlib
import os
import shutil
import subprocess

import pytest

WATCHED = ["/etc/passwd", "/etc/group", "/etc/shadow", "/etc/ssh/sshd_config.d", "/var/lib/minicl",
           "/etc/salt/minion.d", "/etc/minicl", "/run/sshd", "/home", "/etc/nftables.conf", "/etc/nftables.d",
           "/etc/prometheus", "/etc/default/prometheus", "/etc/default/prometheus-alertmanager",
           "/var/lib/prometheus/node-exporter", "/etc/postfix/main.cf"]


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
        found["nft list ruleset"] = subprocess.run(["nft", "list", "ruleset"], capture_output=True,
                                                   text=True, check=False).stdout
    return found


@pytest.fixture(scope="session", autouse=True)
def machine_stays_untouched():
    before = _fingerprint()
    yield
    after = _fingerprint()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"the tests changed this machine: {changed}"
