"""Execution module: the lifecycle verbs of the apps this host runs (cluster.json "apps").

    salt-call --local minicl_app.check_health db   # the service answers, role, replication, disk
    salt-call --local minicl_app.test db           # a write and a read, and through replication
    salt-call --local minicl_app.monitor cache     # live figures: clients, ops/s, memory, replication
    salt-call --local minicl_app.failover cache    # on a replica: promote it now, fence the old primary
    salt-call --local minicl_app.verbs db          # which verbs the app's appliance provides

Each prints a readable report, returns it as data, and sets a non-zero exit code (with
``--retcode-passthrough``) when a check failed. Every verb of the contract is here; one the
app's appliance does not provide (yet) says so and fails.
"""

try:
    from minicl import appliances

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_app"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _apps():
    return (__pillar__.get("minicl") or {}).get("apps") or {}


def _failed(app_name, verb, line):
    __context__["retcode"] = 1
    return appliances.Report(app_name, verb, ok=False, lines=[line]).as_dict()


def _run(verb, app_name):
    apps = _apps()
    if app_name not in apps:
        known = ", ".join(sorted(apps)) or "none"
        return _failed(app_name, verb, f"{app_name} is not an app of this host (apps here: {known})")
    app = apps[app_name]
    try:
        module = appliances.module(app["type"])
        if verb not in module.VERBS:
            return _failed(app_name, verb, f"{verb} is not provided for {app['type']} apps by this version "
                           f"of minicl (provided: {', '.join(module.VERBS)})")  # fmt: skip
        report = getattr(module, verb)(app)
    except appliances.ApplianceError as exc:
        return _failed(app_name, verb, f"FAIL {exc}")
    if not report.ok:
        __context__["retcode"] = 1
    return report.as_dict()


def check_health(app):
    """The app's service answers a real query; its role, replication state and lag, disk headroom.

    CLI Example: ``salt-call --local minicl_app.check_health db``
    """
    return _run("check_health", app)


def test(app):
    """An end-to-end write and read through the app's service, and through replication.

    CLI Example: ``salt-call --local minicl_app.test db``
    """
    return _run("test", app)


def verbs(app):
    """The verbs of the lifecycle contract the app's appliance provides.

    CLI Example: ``salt-call --local minicl_app.verbs db``
    """
    apps = _apps()
    if app not in apps:
        return {}
    provided = appliances.module(apps[app]["type"]).VERBS
    return {verb: verb in provided for verb in appliances.CONTRACT}


def backup(app):
    """A consistent backup of the app (restic). Not provided yet by any appliance: says so.

    CLI Example: ``salt-call --local minicl_app.backup db``
    """
    return _run("backup", app)


def restore(app, backup=None):  # pylint: disable=unused-argument,redefined-outer-name
    """Restore the app from a backup (``backup=ID``, default the newest). Not provided yet.

    CLI Example: ``salt-call --local minicl_app.restore db backup=3f1c9a2b``
    """
    return _run("restore", app)


def upgrade(app):
    """Upgrade the app's packages, undone by itself if its checks fail. Not provided yet.

    CLI Example: ``salt-call --local minicl_app.upgrade db``
    """
    return _run("upgrade", app)


def downgrade(app):
    """Go back to the app's previous recorded package versions. Not provided yet.

    CLI Example: ``salt-call --local minicl_app.downgrade db``
    """
    return _run("downgrade", app)


def failover(app):
    """On a standby or replica: promote it to primary now, fence the old primary when it answers,
    and print the cluster.json change to commit (this host first). Later converges keep it the
    primary. Provided for redis apps.

    CLI Example: ``salt-call --local minicl_app.failover db``
    """
    return _run("failover", app)


def monitor(app):
    """The app's live figures (connections, replication lag, memory, operations). Provided for
    redis apps.

    CLI Example: ``salt-call --local minicl_app.monitor db``
    """
    return _run("monitor", app)


def cleanup(app):
    """Backups beyond retention, old WAL and logs, unused replication slots. Not provided yet.

    CLI Example: ``salt-call --local minicl_app.cleanup db``
    """
    return _run("cleanup", app)
