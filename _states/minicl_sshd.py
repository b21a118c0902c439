"""State: sshd without password logins, checked before install, never locking admins out.

.. code-block:: yaml

    minicl-sshd:
      minicl_sshd.hardened:
        - name: /etc/ssh/sshd_config.d/00-minicl.conf

Writes PasswordAuthentication no, KbdInteractiveAuthentication no and PermitRootLogin
prohibit-password, after ``sshd -t``/``sshd -T`` accept them on a copy of the whole config,
then reloads sshd. If no cluster user could log in with a key and use sudo, it refuses to
turn off password login and fails, saying why.
"""

import difflib
import os

try:
    from minicl import accounts, config, sshd

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
    if users is None:
        users = __pillar__["minicl"]["cluster"]["users"]
    admin_group = admin_group or accounts.ADMIN_GROUP
    plans = accounts.plan_all(users, accounts.Snapshot.read(), accounts.Registry.load(), admin_group)
    admins = accounts.usable_admins(users, {plan.name: plan for plan in plans})
    reason = ("no cluster user could log in with a key and use sudo (each is missing a key, has a "
              "locked password, or is in conflict with a local account); fix cluster.json first")
    port = config.Cluster(__pillar__["minicl"]["cluster"]).firewall_option("ssh_port")
    text = sshd.render_dropin(bool(admins), reason, port)
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    guard = "" if admins else f"Refusing to disable password login: {reason}. "

    try:
        with open(name, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    if current == text:
        ret["result"] = not guard
        ret["comment"] = guard + f"{name} is as it should be"
        return ret

    diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), name, name))
    try:
        sshd.check_candidate(text, bool(admins), dropin_dir=os.path.dirname(name))
    except (sshd.CheckFailed, OSError) as exc:
        ret["result"] = False
        ret["comment"] = guard + f"{name} not changed: {exc}"
        return ret
    if __opts__["test"]:
        ret["result"] = None if not guard else False
        ret["changes"] = {"diff": diff}
        ret["comment"] = guard + f"{name} would be updated (sshd -t accepts it) and sshd reloaded"
        return ret

    tmp = name + ".minicl-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, name)
    ret["changes"] = {"diff": diff}
    try:
        done = sshd.reload_sshd()
    except sshd.CheckFailed as exc:
        ret["result"] = False
        ret["comment"] = guard + f"{name} updated, but {exc}"
        return ret
    ret["result"] = not guard
    ret["comment"] = guard + f"{name} updated; {done}"
    return ret
