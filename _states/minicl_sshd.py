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

import os

try:
    from minicl import accounts, config, firewall, sshd, statekit
    from minicl.files import read_file, write_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func: func)

__virtualname__ = "minicl_sshd"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    if not os.path.exists(sshd.SSHD):
        return False, f"{sshd.SSHD} is missing: install openssh-server"
    return __virtualname__


@_guarded
def hardened(name, users=None, admin_group=None):
    """The drop-in ``name`` as described above. ``users`` (default: the pillar's) and
    ``admin_group`` (default sudo) are for tests and special hosts."""
    ret = statekit.new_ret(name)
    cluster, _ = config.from_pillar(__pillar__)
    users = cluster.users if users is None else users
    port = cluster.firewall_option("ssh_port")
    try:
        admins, guard = sshd.login_guard(users, admin_group or accounts.ADMIN_GROUP, not __opts__["test"])
    except accounts.AccountsError as exc:
        ret["result"], ret["comment"] = False, f"{name} not changed: {exc}"
        return ret
    text = sshd.render_dropin(admins, sshd.NO_ADMIN, port)
    current = read_file(name)

    if current == text:
        try:
            wrong = sshd.differences(sshd.live_settings(), admins, port)
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
    blocked = sshd.port_move_blocked(
        port, listening, table, firewall.ssh_ports_open(table) if table else set()
    )
    if blocked:
        ret["result"], ret["comment"] = False, guard + f"{name} not changed: {blocked}"
        return ret

    diff = statekit.diff(current, text, name, name)
    try:
        sshd.check_candidate(text, admins, port, dropin_dir=os.path.dirname(name))
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
