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

import os

try:
    from minicl import config, deadman, firewall, sshd, statekit
    from minicl.files import read_file, write_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_firewall"
BREAK_GLASS_PERSISTED = "# minicl: break-glass ({}): no firewall at boot\n"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    if not os.path.exists(firewall.NFT):
        return False, f"{firewall.NFT} is missing: install nftables"
    return __virtualname__


@_guarded(label="table {name}")
def applied(name, confirm_seconds=None):
    """Table inet minicl as cluster.json says, applied with the dead-man switch (see above).
    ``confirm_seconds`` overrides cluster.json's firewall.confirm_seconds (0: unconfirmed)."""
    ret = statekit.new_ret(name, result=False)
    if os.path.exists(firewall.BREAK_GLASS_PATH):
        persisted = BREAK_GLASS_PERSISTED.format(firewall.BREAK_GLASS_PATH)
        if read_file(firewall.PERSIST_PATH) != persisted and not __opts__["test"]:
            write_file(firewall.PERSIST_PATH, persisted)  # a reboot must not close it again
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
    plan = firewall.plan(cluster, host, local_rules, sshd.listening_ports())
    if not plan.table_differs and plan.persisted:
        ret["result"] = True
        ret["comment"] = f"table inet minicl is as cluster.json says ({plan.summary})"
        return ret

    changes = {}
    if plan.table_differs:
        changes["diff"] = statekit.diff(plan.current_listing, plan.wanted_listing, "live", "cluster.json")
    if not plan.persisted:
        changes["persisted"] = firewall.PERSIST_PATH
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = f"table inet minicl would be replaced ({plan.summary})"
        return ret

    if plan.table_differs:
        seconds = cluster.firewall_option("confirm_seconds") if confirm_seconds is None else confirm_seconds
        error = deadman.replace_confirmed(
            plan.text, plan.current_listing, firewall.peers_of(cluster, host), plan.spec.ssh_ports, seconds
        )
        if error:
            ret["comment"] = error
            return ret
        if firewall.live()[0] != plan.wanted:
            ret["comment"] = (
                "table inet minicl changed under this run (another run?); it is checked again next run"
            )
            return ret
    write_file(firewall.PERSIST_PATH, plan.text)
    ret["result"], ret["changes"] = True, changes
    ret["comment"] = (
        f"table inet minicl replaced ({plan.summary})"
        if "diff" in changes
        else f"saved for the next boot in {firewall.PERSIST_PATH}"
    )
    return ret
