"""State: sshd without password logins, checked before install, never locking admins out.

.. code-block:: yaml

    minicl-sshd:
      minicl_sshd.hardened:
        - name: /etc/ssh/sshd_config.d/00-minicl.conf

Writes PasswordAuthentication no, KbdInteractiveAuthentication no, PermitRootLogin
prohibit-password (and Port, if firewall.ssh_port is not 22), after ``sshd -t``/``sshd -T``
accept them on a copy of the whole config, then reloads sshd. Refuses to turn off password
login if no cluster user can log in with a key and use sudo, and to move sshd to a port the
firewall does not open yet. When the file is already right, it checks that sshd really runs
with these settings.
"""

import difflib
import os

try:
    from minicl import accounts, config, firewall, sshd
    from minicl.files import read_file, write_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_sshd"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    if not os.path.exists(sshd.SSHD):
        return False, f"{sshd.SSHD} is missing: install openssh-server"
    return __virtualname__


def hardened(name, users=None, admin_group=None):
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    cluster = config.Cluster(__pillar__["minicl"]["cluster"])
    users = cluster.users if users is None else users
    port = cluster.firewall_option("ssh_port")
    try:
        plans = accounts.plan_all(
            users, accounts.Snapshot.read(), accounts.Registry.load(), admin_group or accounts.ADMIN_GROUP
        )
    except accounts.AccountsError as exc:
        ret["result"], ret["comment"] = False, f"{name} not changed: {exc}"
        return ret
    # After minicl_users ran, only accounts that really converged count; test=True can only plan.
    admins = accounts.usable_admins(users, {p.name: p for p in plans}, converged=not __opts__["test"])
    reason = (
        "no cluster user could log in with a key and use sudo (each is missing a key, has a "
        "locked password, is in conflict with a local account, or failed to converge); fix that first"
    )
    guard = "" if admins else f"Refusing to disable password login: {reason}. "
    text = sshd.render_dropin(bool(admins), reason, port)
    current = read_file(name)

    if current == text:
        try:
            wrong = sshd.differences(sshd.live_settings(), bool(admins), port)
        except (sshd.CheckFailed, OSError) as exc:
            wrong = [str(exc)]
        ret["result"] = not guard and not wrong
        ret["comment"] = guard + (
            f"{name} is as it should be, but sshd runs with: {'; '.join(wrong)}"
            if wrong
            else f"{name} is as it should be"
        )
        return ret

    listening = sshd.listening_ports()
    table = firewall.live()[1]
    if port not in listening and table and port not in firewall.ssh_ports_open(table):
        ret["result"] = False
        ret["comment"] = (
            guard + f"{name} not changed: sshd stays on port {listening} until the firewall "
            f"(table inet minicl) opens port {port}"
        )
        return ret

    diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), name, name))
    try:
        sshd.check_candidate(text, bool(admins), port, dropin_dir=os.path.dirname(name))
    except (sshd.CheckFailed, OSError) as exc:
        ret["result"], ret["comment"] = False, guard + f"{name} not changed: {exc}"
        return ret
    if __opts__["test"]:
        ret["result"] = None if not guard else False
        ret["changes"] = {"diff": diff}
        ret["comment"] = guard + f"{name} would be updated (sshd -t accepts it) and sshd reloaded"
        return ret

    try:
        write_file(name, text)
        done = sshd.reload_sshd()
    except (sshd.CheckFailed, OSError) as exc:
        ret["result"], ret["comment"] = False, guard + f"{name}: {exc}"
        return ret
    ret["changes"] = {"diff": diff}
    ret["result"] = not guard
    ret["comment"] = guard + f"{name} updated; {done}"
    return ret
