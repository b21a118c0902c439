"""State: the cluster's users, exactly as cluster.json says, on this host.

.. code-block:: yaml

    minicl-users:
      minicl_users.managed:
        - name: cluster users     # users default to the pillar's minicl:cluster:users

Creates and updates accounts minicl owns (uid, group, home, bash, shadow hash, admin group,
exactly the listed SSH keys) and locks out those removed from cluster.json. A user in
conflict with a local account fails alone; the others still converge. Hashes and keys are
never shown: changes name what changed and the keys' fingerprints.
"""

try:
    from minicl import accounts, config, statekit

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_users"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def managed(name, users=None, admin_group=None, registry=None):
    """``users`` (default: the pillar's), ``admin_group`` (default sudo), ``registry`` (default
    /var/lib/minicl/users.json) are for tests and special hosts."""
    if users is None:
        users = config.from_pillar(__pillar__)[0].users
    admin_group = admin_group or accounts.ADMIN_GROUP
    ret = statekit.new_ret(name)
    try:
        registry = accounts.Registry.load(registry or accounts.REGISTRY_PATH)
        plans = accounts.plan_all(users, accounts.Snapshot.read(), registry, admin_group)
    except (accounts.AccountsError, OSError) as exc:
        ret["result"], ret["comment"] = False, f"no account changed: {exc}"
        return ret
    failed = {plan.name: plan.conflict for plan in plans if plan.conflict}
    todo = [plan for plan in plans if not plan.conflict and plan.changes]

    if __opts__["test"]:
        ret["changes"] = {plan.name: plan.changes for plan in todo}
        ret["result"] = False if failed else (None if todo else True)
    else:
        for plan in todo:
            try:
                accounts.apply_plan(plan, registry)
            except (accounts.ApplyError, OSError) as exc:
                failed[plan.name] = str(exc)
                continue
            ret["changes"][plan.name] = plan.changes
        ret["result"] = not failed

    verb = "would change" if __opts__["test"] else "changed"
    lines = [f"{len(users)} cluster users; {verb} {len(ret['changes'])} account(s)"]
    lines += [f"{user}: {why}" for user, why in sorted(failed.items())]
    ret["comment"] = "\n".join(lines)
    return ret
