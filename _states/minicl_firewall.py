"""State: the host's IP-ACL firewall, table ``inet minicl``, as cluster.json says.

.. code-block:: yaml

    minicl-firewall:
      minicl_firewall.applied:
        - name: inet minicl

Renders the ruleset from the pillar (plus /etc/minicl/firewall.local.nft, if present), compares
it with the live table (normalised ``nft -j``), and only if they differ: checks it with
``nft -c``, replaces the table in one ``nft -f`` transaction and confirms that a peer is still
reachable, restoring the previous ruleset if not (dead-man switch; a host's first ruleset has
no previous one and is applied unconfirmed). Other tables are never touched. The ruleset is saved to /etc/nftables.d/minicl.nft for the next boot.
"""

import difflib
import os

try:
    from minicl import config, firewall

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_firewall"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    if not os.path.exists(firewall.NFT):
        return False, f"{firewall.NFT} is missing: install nftables"
    return __virtualname__


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def applied(name, confirm_seconds=None):
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if os.path.exists(firewall.BREAK_GLASS_PATH):
        # Loud on purpose: a host without its firewall must show up as failing.
        ret["result"] = False
        ret["comment"] = (f"{firewall.BREAK_GLASS_PATH} exists (break-glass): table inet minicl is left as it "
                          "is; remove the file to let minicl manage the firewall again")
        return ret
    cluster = config.Cluster(__pillar__["minicl"]["cluster"])
    host = __pillar__["minicl"]["host"]["name"]
    spec = firewall.host_spec(cluster, host, _read(firewall.LOCAL_RULES_PATH))
    text = firewall.render_ruleset(spec)
    try:
        wanted, wanted_listing = firewall.canonical(text)
    except firewall.FirewallError as exc:
        ret["result"] = False
        ret["comment"] = f"table inet minicl not changed: {exc}"
        return ret
    current, current_listing = firewall.live()
    persisted = _read(firewall.PERSIST_PATH) == text
    summary = (f"{len(spec.trusted_v4) + len(spec.trusted_v6)} trusted networks, ssh on {spec.ssh_port}, "
               f"public tcp {spec.public_tcp or 'none'}, udp {spec.public_udp or 'none'}")
    if wanted == current and persisted:
        ret["comment"] = f"table inet minicl is as cluster.json says ({summary})"
        return ret

    if wanted != current:
        ret["changes"]["diff"] = "".join(difflib.unified_diff(
            current_listing.splitlines(True), wanted_listing.splitlines(True), "live", "cluster.json"))
    if not persisted:
        ret["changes"]["persisted"] = firewall.PERSIST_PATH
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"table inet minicl would be replaced ({summary})"
        return ret

    if wanted != current:
        error = _replace_with_deadman(cluster, host, text, current_listing, spec.ssh_port, confirm_seconds)
        if error:
            ret["result"] = False
            ret["changes"] = {}
            ret["comment"] = error
            return ret
    firewall.write_file(firewall.PERSIST_PATH, text)
    ret["comment"] = f"table inet minicl replaced ({summary})" if "diff" in ret["changes"] else \
        f"saved for the next boot in {firewall.PERSIST_PATH}"
    return ret


def _replace_with_deadman(cluster, host, text, previous_listing, ssh_port, confirm_seconds):
    """Apply ``text``; returns an error message, or None when the new ruleset is in force."""
    seconds = cluster.firewall_option("confirm_seconds") if confirm_seconds is None else confirm_seconds
    peers = firewall.peers_of(cluster, host)
    backup = firewall.restore_script(previous_listing)
    firewall.write_file(firewall.BACKUP_PATH, backup, 0o600)
    # A host's first ruleset has nothing to go back to but no firewall at all: it is applied
    # unconfirmed (SSH is open in every ruleset minicl renders); later changes are confirmed.
    confirm = bool(seconds and peers and previous_listing.strip())
    deadman = firewall.start_deadman(firewall.BACKUP_PATH, seconds + 10) if confirm else None
    try:
        firewall.replace_table(text)
    except firewall.FirewallError as exc:
        if deadman:
            deadman.kill()
        return f"table inet minicl not changed: {exc}"
    if deadman is None:
        return None
    confirmed = firewall.reach_a_peer(peers, ssh_port, seconds)
    deadman.kill()
    deadman.wait()
    if confirmed:
        return None
    firewall.replace_table(backup)
    return (f"no peer ({', '.join(peers)}) answered on port {ssh_port} within {seconds} s after the new "
            "ruleset was applied: the previous ruleset is restored")
