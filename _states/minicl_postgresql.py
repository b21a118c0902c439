"""States: the PostgreSQL apps of this host (cluster.json "apps", type postgresql).

.. code-block:: yaml

    minicl-postgresql-db:
      minicl_postgresql.running:
        - name: db          # the app, from the pillar's minicl:apps
    minicl-postgresql-db-databases:
      minicl_postgresql.databases:
        - name: db

``running``: minicl's conf.d file and pg_hba.conf, postgres' .pgpass (never shown), the service
enabled and running (restarted when the configuration needs it), a standby cloned from the
primary, the replication role on the primary. ``databases``: on the primary, the owners (cluster
users, peer authentication) and databases of cluster.json, and the exporter's role; never drops
one. See minicl.appliances.postgresql.
"""

try:
    from minicl import statekit
    from minicl.appliances import postgresql as pg
    from minicl.files import read_file

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

# Unavailable without minicl (see __virtual__), but the module must still load to say why.
_guarded = statekit.guarded if HAS_MINICL else (lambda func=None, **kwargs: func or (lambda f: f))

__virtualname__ = "minicl_postgresql"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _app(name):
    return __pillar__["minicl"]["apps"][name], __pillar__["minicl"]["host"]["name"]


@_guarded(label="postgresql app {name}")
def running(name):
    """The app ``name`` running on this host as its primary or a standby (see above)."""
    app, host = _app(name)
    ret = statekit.new_ret(name)
    changed = pg.file_changes(app, host)
    clone = pg.needs_clone(app)
    up = pg.running()
    enabled = pg.starts_at_boot()
    changes = {}
    for path in sorted(changed):
        changes[path] = (
            "(content hidden)"
            if path == pg.PGPASS
            else statekit.diff(read_file(path), changed[path], path, path)
        )
    if clone:
        changes["standby"] = f"cloned from the primary {app['primary']} ({pg.primary_address(app)})"
    if not up or not enabled:
        changes["service"] = f"{pg.SERVICE} running, started at boot ({pg.BOOT_UNIT} enabled)"
    recovery = pg.in_recovery() if up else None
    if not clone and recovery is False and not pg.replica_role_ok(app):
        changes["replication role"] = f"{pg.REPLICA_ROLE} (password derived from the deploy key)"
    if not changes:
        ret["comment"] = f"{pg.SERVICE} runs app {name} as configured ({_role(recovery)})"
        return ret
    if __opts__["test"]:
        ret["result"], ret["changes"] = None, changes
        ret["comment"] = f"app {name} would be converged on {pg.SERVICE}"
        return ret

    pg.write_files(changed)
    if clone:
        pg.clone_from_primary(app, host)
    if not enabled:
        pg.systemctl("enable", pg.BOOT_UNIT)
    if not pg.running():
        pg.systemctl("start", pg.SERVICE)
    elif pg.CONF_FILE in changed:
        pg.systemctl("restart", pg.SERVICE)
    elif pg.HBA_FILE in changed:
        pg.systemctl("reload", pg.SERVICE)
    if not pg.wait_ready():
        raise pg.ApplianceError(f"{pg.SERVICE} does not answer after the change (journalctl -u {pg.SERVICE})")
    recovery = pg.in_recovery()
    if recovery is False and not pg.replica_role_ok(app):
        pg.set_replica_role(app)
        changes["replication role"] = f"{pg.REPLICA_ROLE} (password derived from the deploy key)"
    ret["changes"] = changes
    ret["comment"] = f"app {name} converged on {pg.SERVICE} ({_role(recovery)})"
    return ret


def _role(recovery):
    return "not answering" if recovery is None else ("standby" if recovery else "primary")


@_guarded(label="postgresql app {name}")
def databases(name):
    """On the primary: the app's database owners and databases, the exporter's role (see above)."""
    app, _ = _app(name)
    ret = statekit.new_ret(name)
    recovery = pg.in_recovery()
    if recovery is None:
        ret["result"] = None if __opts__["test"] else False
        ret["comment"] = f"{pg.SERVICE} does not answer: databases not checked"
        return ret
    if recovery:
        ret["comment"] = "a standby: its databases are replicated from the primary"
        return ret
    todo = pg.database_changes(app) + pg.monitor_role_changes()
    forgotten = pg.forgotten_databases(app)
    note = (
        f"; not in cluster.json any more, and left as they are: {', '.join(forgotten)}" if forgotten else ""
    )
    if not todo:
        ret["comment"] = f"databases as cluster.json says{note}"
        return ret
    ret["changes"] = {"created": [what for what, _ in todo]}
    if __opts__["test"]:
        ret["result"], ret["comment"] = None, f"{len(todo)} change(s) would be made{note}"
        return ret
    for _, sql in todo:
        pg.psql(sql)
    ret["comment"] = f"{len(todo)} change(s) made{note}"
    return ret
