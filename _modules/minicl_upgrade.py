"""Execution module: this host's package upgrades from the cluster's repository.

    salt-call --local minicl_upgrade.plan        # what moving to the newest snapshot would change
    salt-call --local minicl_upgrade.plan snapshot=20261204T053000Z
    salt-call --local minicl_upgrade.rehearse    # the upgrade tried on a throwaway copy of this host
    salt-call --local minicl_upgrade.apply       # upgrade now, after a green rehearsal; undone on failure
    salt-call --local minicl_upgrade.rollback    # back to the snapshot before the last upgrade
    salt-call --local minicl_upgrade.status      # the snapshot this host is at, its upgrades

Each sets a non-zero exit code (with ``--retcode-passthrough``) when it failed.
"""

try:
    from minicl import aptsource, package_rollout, upgrade
    from minicl.errors import MiniclError

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_upgrade"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _view():
    view = (__pillar__.get("minicl") or {}).get("packages") or {}
    if view.get("use", "none") == "none":
        raise upgrade.UpgradeError(
            "this host does not use the cluster's repository (cluster.json packages.use, or the host's "
            "packages)"
        )
    return view


def _target(view, snapshot):
    if snapshot:
        return str(snapshot)
    found = aptsource.allowed_snapshot(view)
    if found is None:
        raise upgrade.UpgradeError("the repository has published no snapshot yet")
    return found


def _apps():
    return list(((__pillar__.get("minicl") or {}).get("apps") or {}).values())


def _failed(message):
    __context__["retcode"] = 1
    return {"ok": False, "error": message}


def plan(snapshot=None):
    """The upgrades moving to ``snapshot`` (default: the one this host may use) would bring,
    each with the services that would need a restart and whether it needs a reboot.
    CLI Example: ``salt-call --local minicl_upgrade.plan``"""
    try:
        view = _view()
        found = upgrade.plan(view["url"], _target(view, snapshot), view["use"], view["list"])
    except MiniclError as exc:
        return _failed(str(exc))
    found["current"] = upgrade.current_snapshot()
    return found


def apply(snapshot=None, rehearsal=True):
    """Upgrade this host to ``snapshot`` now, after a green rehearsal (one runs first if there is
    none for this snapshot and the packages installed now; ``rehearsal=False`` skips it); undone
    by itself when a check fails after it.
    CLI Example: ``salt-call --local minicl_upgrade.apply``"""
    try:
        view = _view()
        target = _target(view, snapshot)
        done = upgrade.apply(view["url"], target, view["use"], view["list"], view["public_key"], _apps(),
                             rehearsal=bool(rehearsal))  # fmt: skip
    except MiniclError as exc:
        return _failed(str(exc))
    package_rollout.write_metrics()
    if not done["ok"]:
        __context__["retcode"] = 1
    return done


def rehearse(snapshot=None):
    """Upgrade a throwaway copy of this host (its own namespaces, no network) to ``snapshot`` and
    run minicl's host checks and every local app's check_health and test there; this host is
    not changed. Kernel upgrades are installed in the copy but cannot be booted there.
    CLI Example: ``salt-call --local minicl_upgrade.rehearse``"""
    try:
        view = _view()
        done = upgrade.rehearse(view["url"], _target(view, snapshot), view["use"], view["list"], _apps())
    except MiniclError as exc:
        return _failed(str(exc))
    if not done["ok"]:
        __context__["retcode"] = 1
    return done


def rollback():
    """Back to the snapshot before the last upgrade that stayed, with its package versions; the
    rollout holds that snapshot back (on every host) until a newer one is published.
    CLI Example: ``salt-call --local minicl_upgrade.rollback``"""
    try:
        view = _view()
        done = upgrade.rollback(view["url"], view["use"], view["list"], view["public_key"], _apps())
    except MiniclError as exc:
        return _failed(str(exc))
    package_rollout.write_metrics()
    if not done["ok"]:
        __context__["retcode"] = 1
    return done


def status():
    """The snapshot this host is at and the upgrades that stayed.
    CLI Example: ``salt-call --local minicl_upgrade.status``"""
    found = upgrade.record()
    return {"snapshot": upgrade.current_snapshot(found), "history": found.get("history", [])}
