"""sshd hardening: a drop-in that turns off password logins, checked before it is installed.

The drop-in is named 00-minicl.conf so that it comes first: sshd keeps the first value it
reads for each setting, and Debian's sshd_config includes sshd_config.d/*.conf at its top.

A candidate is checked with ``sshd -t`` and ``sshd -T`` on a temporary copy of the whole
configuration (the main file with its Include pointing at a copy of sshd_config.d holding the
candidate), so a file that sshd would reject, or that would not take effect, is never installed.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager

from minicl import accounts, paths
from minicl.errors import MiniclError

SSHD = "/usr/sbin/sshd"
MAIN_CONFIG = paths.SSHD_CONFIG
DROPIN_DIR = paths.SSHD_DROPIN_DIR
DROPIN_NAME = paths.SSHD_DROPIN_NAME
PRIVSEP_DIR = "/run/sshd"
ALIASES = {"without-password": "prohibit-password"}  # sshd -T prints the old name
HARDENED = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitrootlogin": "prohibit-password",
}
_INCLUDE = re.compile(r"^\s*Include\s+(\S*sshd_config\.d/\*\.conf)\s*$", re.IGNORECASE | re.MULTILINE)


def render_dropin(disable_passwords, reason="", port=22):
    lines = ["# Managed by minicl (base role); changes here are overwritten.\n"]
    if port != 22:
        lines += [f"Port {port}\n"]  # the firewall opens this port (cluster.json firewall.ssh_port)
    if disable_passwords:
        lines += ["PasswordAuthentication no\n", "KbdInteractiveAuthentication no\n"]
    else:
        lines += [f"# Password login is NOT disabled: {reason}\n"]
    lines += ["PermitRootLogin prohibit-password\n"]
    return "".join(lines)


def wanted_settings(disable_passwords):
    if disable_passwords:
        return dict(HARDENED)
    return {"permitrootlogin": HARDENED["permitrootlogin"]}


class CheckFailed(MiniclError):
    pass


@contextmanager
def _privsep_dir():
    """sshd -t/-T insist on /run/sshd; systemd makes it for a running sshd. Leave no trace."""
    made = not os.path.isdir(PRIVSEP_DIR)
    if made:
        os.makedirs(PRIVSEP_DIR, mode=0o755)
    try:
        yield
    finally:
        if made:
            os.rmdir(PRIVSEP_DIR)


def _settings(test_main):
    """{keyword: [values]} of ``sshd -T -f test_main``; raises CheckFailed if sshd -t rejects it."""
    with _privsep_dir():
        result = subprocess.run([SSHD, "-t", "-f", test_main], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CheckFailed(f"sshd -t rejects the configuration: {result.stderr.strip()}")
        effective = subprocess.run([SSHD, "-T", "-f", test_main], capture_output=True, text=True, check=False)
    settings = {}
    for line in effective.stdout.splitlines():
        if " " in line:
            key, value = line.split(" ", 1)
            settings.setdefault(key, []).append(ALIASES.get(value, value))
    return settings


def live_settings(main=MAIN_CONFIG):
    """What the installed configuration makes sshd do ({keyword: [values]})."""
    return _settings(main)


def listening_ports(main=MAIN_CONFIG):
    """The ports sshd listens on with the installed configuration; [] if it cannot be read."""
    try:
        return sorted(int(p) for p in live_settings(main).get("port", []))
    except (CheckFailed, OSError):
        return []


def differences(settings, disable_passwords, port):
    """What in ``settings`` is not as minicl wants it: ["passwordauthentication yes", ...]."""
    wanted = dict(wanted_settings(disable_passwords))
    found = []
    for key, value in wanted.items():
        if settings.get(key, [None])[0] != value:
            found.append(f"{key} {settings.get(key, ['(unset)'])[0]} (minicl wants {value})")
    if settings.get("port") and settings["port"] != [str(port)]:
        found.append(f"port {' '.join(settings['port'])} (minicl wants {port})")
    return found


def check_candidate(text, disable_passwords, port=22, main=MAIN_CONFIG, dropin_dir=DROPIN_DIR):
    """Check ``text`` as the drop-in against a copy of the whole config; raise CheckFailed."""
    with open(main, encoding="utf-8") as f:
        main_text = f.read()
    if not _INCLUDE.search(main_text):
        raise CheckFailed(f"{main} does not include {dropin_dir}/*.conf, so a drop-in would not take effect")
    with tempfile.TemporaryDirectory(prefix="minicl-sshd-") as tmp:
        copy = os.path.join(tmp, "sshd_config.d")
        os.mkdir(copy)
        if os.path.isdir(dropin_dir):
            for name in os.listdir(dropin_dir):
                if name.endswith(".conf") and name != DROPIN_NAME:
                    shutil.copyfile(os.path.join(dropin_dir, name), os.path.join(copy, name))
        with open(os.path.join(copy, DROPIN_NAME), "w", encoding="utf-8") as f:
            f.write(text)
        test_main = os.path.join(tmp, "sshd_config")
        with open(test_main, "w", encoding="utf-8") as f:
            f.write(_INCLUDE.sub(f"Include {copy}/*.conf", main_text))
        settings = _settings(test_main)
    wrong = differences(settings, disable_passwords, port)
    if wrong:
        raise CheckFailed(
            f"sshd would run with {'; '.join(wrong)}: another setting wins over minicl's; "
            f"look for it in {main} or {dropin_dir}"
        )


def reload_sshd():
    """Make a running sshd read its configuration; returns what was done."""
    if os.path.isdir(paths.SYSTEMD_RUN_DIR):
        result = subprocess.run(
            ["systemctl", "reload-or-restart", "ssh"], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise CheckFailed(f"systemctl reload ssh failed: {result.stderr.strip()}")
        return "sshd reloaded"
    try:
        with open("/run/sshd.pid", encoding="ascii") as f:
            os.kill(int(f.read().strip()), signal.SIGHUP)
        return "sshd reloaded"
    except (OSError, ValueError):
        return "sshd is not running; it reads the new configuration when it starts"


NO_ADMIN = (
    "no cluster user could log in with a key and use sudo (each is missing a key, has a "
    "locked password, is in conflict with a local account, or failed to converge); fix that first"
)


def login_guard(users, admin_group, converged):
    """Whether password login may be turned off: some cluster user can log in with a key and
    use sudo (after minicl_users ran, ``converged``: only accounts that really converged count).
    Returns (True, "") or (False, the refusal to show). Raises AccountsError."""
    plans = accounts.plan_all(users, accounts.Snapshot.read(), accounts.Registry.load(), admin_group)
    if accounts.usable_admins(users, {p.name: p for p in plans}, converged=converged):
        return True, ""
    return False, f"Refusing to disable password login: {NO_ADMIN}. "


def port_move_blocked(port, listening, firewall_listing, open_ports):
    """Why sshd must not move to ``port`` yet (the firewall does not open it), or None."""
    if port not in listening and firewall_listing and port not in open_ports:
        return f"sshd stays on port {listening} until the firewall (table inet minicl) opens port {port}"
    return None
