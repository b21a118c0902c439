"""Execution module: the lifecycle verbs of the apps this host runs (cluster.json "apps").

    salt-call --local minicl_app.check_health db   # the service answers, role, replication, disk
    salt-call --local minicl_app.test db           # a write and a read, and through replication
    salt-call --local minicl_app.monitor cache     # live figures: clients, ops/s, memory, replication
    salt-call --local minicl_app.backup db         # a backup now (restic, on this host)
    salt-call --local minicl_app.list db           # the backups there are
    salt-call --local minicl_app.restore db backup=20261201T193000Z
    salt-call --local minicl_app.failover db       # on a standby or replica: make it the primary
    salt-call --local minicl_app.cleanup db        # backups beyond retention, unused slots
    salt-call --local minicl_app.verbs db          # which verbs the app's appliance provides

Each prints a readable report, returns it as data, and sets a non-zero exit code (with
``--retcode-passthrough``) when a check failed. Every verb of the contract is here; one the
app's appliance does not provide (yet) says so and fails.
"""

try:
    from minicl import appliances
    from minicl.appliances import backups
    from minicl.bootstrap import salt_program

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_app"
__func_alias__ = {"list_": "list"}


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _apps():
    return (__pillar__.get("minicl") or {}).get("apps") or {}


def _failed(app_name, verb, line):
    __context__["retcode"] = 1
    return appliances.Report(app_name, verb, ok=False, lines=[line]).as_dict()


def _run(verb, app_name, **options):
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
        report = appliances.verb_function(module, verb)(app, **options)
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


def backup_units(app):
    """{path: text} of the systemd timer and service that back the app up on schedule (the
    app's states install them).

    CLI Example: ``salt-call --local minicl_app.backup_units db``
    """
    return backups.schedule_units(_apps()[app], salt_program("salt-call"))


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
    """A consistent backup of the app into its restic repository on this host (after a check
    that there is room for it), then the backups beyond retention removed.

    CLI Example: ``salt-call --local minicl_app.backup db``
    """
    return _run("backup", app)


def list_(app):
    """The app's backups on this host, newest first, with what each holds.

    CLI Example: ``salt-call --local minicl_app.list db``
    """
    return _run("list", app)


def restore(app, backup=None, database=None):  # pylint: disable=redefined-outer-name
    """Restore the app from a backup (``backup=ID`` from ``minicl_app.list``, default the
    newest); ``database=NAME``: only that database of a PostgreSQL app.

    CLI Example: ``salt-call --local minicl_app.restore db backup=20261201T193000Z``
    """
    options = {"backup": None if backup is None else str(backup)}
    if database is not None:
        options["database"] = database
    return _run("restore", app, **options)


def upgrade(app):
    """Upgrade the app's packages after a safety backup; when its check_health or test fails
    afterwards, the previous versions are installed again and the safety backup restored.

    CLI Example: ``salt-call --local minicl_app.upgrade db``
    """
    return _run("upgrade", app)


def downgrade(app):
    """Go back to the package versions before the app's last upgrade on this host.

    CLI Example: ``salt-call --local minicl_app.downgrade db``
    """
    return _run("downgrade", app)


def failover(app):
    """On a standby or replica: fence the primary if it answers, promote this host, and print
    the cluster.json change to commit (this host first). Later converges keep it the primary.

    CLI Example: ``salt-call --local minicl_app.failover db``
    """
    return _run("failover", app)


def monitor(app):
    """The app's live figures: connections, operations per second, sizes or memory, replication.

    CLI Example: ``salt-call --local minicl_app.monitor db``
    """
    return _run("monitor", app)


def cleanup(app):
    """Backups beyond retention, unused replication slots, data set aside long ago.

    CLI Example: ``salt-call --local minicl_app.cleanup db``
    """
    return _run("cleanup", app)
