"""State: the host's IP-ACL firewall, table ``inet minicl``, as cluster.json says.

.. code-block:: yaml

    minicl-firewall:
      minicl_firewall.applied:
        - name: inet minicl

Renders the ruleset from the pillar (plus /etc/minicl/firewall.local.nft, if present), compares
it with the live table (normalised ``nft -j``), and only if they differ: checks it with
``nft -c``, replaces the table in one ``nft -f`` transaction and confirms that a peer is still
reachable, restoring the previous ruleset if not (dead-man switch; a host's first ruleset has
no previous one and is applied unconfirmed). Other tables are never touched. The ruleset is
saved to /etc/nftables.d/minicl.nft for the next boot. While /etc/minicl/firewall.off exists
(break-glass), the state leaves the live table alone, empties the saved one, and fails.
"""

import difflib
import os
import tempfile

try:
    from minicl import config, firewall, sshd
    from minicl.files import read_file, write_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_firewall"
BREAK_GLASS_PERSISTED = "# minicl: break-glass (/etc/minicl/firewall.off): no firewall at boot\n"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    if not os.path.exists(firewall.NFT):
        return False, f"{firewall.NFT} is missing: install nftables"
    return __virtualname__


def applied(name, confirm_seconds=None):
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        return _applied(ret, confirm_seconds)
    except (firewall.FirewallError, OSError) as exc:
        ret["comment"] = f"table inet minicl: {exc}"
        return ret


def _applied(ret, confirm_seconds):
    if os.path.exists(firewall.BREAK_GLASS_PATH):
        if read_file(firewall.PERSIST_PATH) != BREAK_GLASS_PERSISTED and not __opts__["test"]:
            write_file(firewall.PERSIST_PATH, BREAK_GLASS_PERSISTED)  # a reboot must not close it again
        # Loud on purpose: a host without its firewall must show up as failing.
        ret["comment"] = (
            f"{firewall.BREAK_GLASS_PATH} exists (break-glass): table inet minicl is left as it "
            "is and not loaded at boot; remove the file to let minicl manage the firewall again"
        )
        return ret
    local_rules = read_file(firewall.LOCAL_RULES_PATH)
    problem = firewall.local_rules_problem(local_rules)
    if problem:
        ret["comment"] = f"table inet minicl not changed: {firewall.LOCAL_RULES_PATH}: {problem}"
        return ret
    cluster, host = config.from_pillar(__pillar__)
    spec = firewall.host_spec(cluster, host, local_rules, sshd.listening_ports())
    text = firewall.render_ruleset(spec)
    wanted, wanted_listing = firewall.canonical(text)
    current, current_listing = firewall.live()
    persisted = read_file(firewall.PERSIST_PATH) == text
    summary = (
        f"{len(spec.trusted_v4) + len(spec.trusted_v6)} trusted networks, ssh on {spec.ssh_ports}, "
        f"public tcp {spec.public_tcp or 'none'}, udp {spec.public_udp or 'none'}"
    )
    if wanted == current and persisted:
        ret["result"] = True
        ret["comment"] = f"table inet minicl is as cluster.json says ({summary})"
        return ret

    changes = {}
    if wanted != current:
        changes["diff"] = "".join(
            difflib.unified_diff(
                current_listing.splitlines(True), wanted_listing.splitlines(True), "live", "cluster.json"
            )
        )
    if not persisted:
        changes["persisted"] = firewall.PERSIST_PATH
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = f"table inet minicl would be replaced ({summary})"
        return ret

    if wanted != current:
        error = _replace_with_deadman(cluster, host, text, current_listing, spec.ssh_ports, confirm_seconds)
        if error:
            ret["comment"] = error
            return ret
        if firewall.live()[0] != wanted:
            ret["comment"] = (
                "table inet minicl changed under this run (another run?); it is checked again next run"
            )
            return ret
    write_file(firewall.PERSIST_PATH, text)
    ret["result"], ret["changes"] = True, changes
    ret["comment"] = (
        f"table inet minicl replaced ({summary})"
        if "diff" in changes
        else f"saved for the next boot in {firewall.PERSIST_PATH}"
    )
    return ret


def _replace_with_deadman(cluster, host, text, previous_listing, ssh_ports, confirm_seconds):
    """Apply ``text``; returns an error message, or None when the new ruleset is in force."""
    firewall.stop_stray_deadman()
    seconds = cluster.firewall_option("confirm_seconds") if confirm_seconds is None else confirm_seconds
    peers = firewall.peers_of(cluster, host)
    # A host's first ruleset has nothing to go back to but no firewall at all: it is applied
    # unconfirmed (SSH is open in every ruleset minicl renders); later changes are confirmed.
    if not (seconds and peers and previous_listing.strip()):
        firewall.replace_table(text)
        return None
    backup = firewall.restore_script(previous_listing)
    firewall.check_script(backup)  # know that the way back works before going
    fd, backup_path = tempfile.mkstemp(prefix="firewall-previous-", suffix=".nft", dir=firewall.STATE_DIR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(backup)
    deadman = firewall.start_deadman(backup_path, seconds + 10)
    try:
        firewall.replace_table(text)
    except firewall.FirewallError as exc:
        deadman.kill()
        return f"table inet minicl not changed: {exc}"
    # Peers that have not converged yet may still listen on an SSH port of the previous ruleset.
    probe_ports = sorted(set(ssh_ports) | firewall.ssh_ports_open(previous_listing))
    if firewall.reach_a_peer(peers, probe_ports, seconds):
        deadman.kill()
        return None
    try:
        firewall.replace_table(backup)
    except firewall.FirewallError as exc:
        return (
            f"no peer answered after the new ruleset was applied and restoring the previous one "
            f"failed ({exc}); the watchdog tries again in 10 s"
        )
    deadman.kill()
    return (
        f"no peer ({', '.join(peers)}) answered on port {', '.join(map(str, probe_ports))} within "
        f"{seconds} s after the new ruleset was applied: the previous ruleset is restored"
    )
