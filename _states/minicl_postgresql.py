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
    from minicl.appliances import pgfailover as pgf
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
    return __pillar__["minicl"]["apps"][name]


@_guarded(label="postgresql app {name}")
def running(name):
    """The app ``name`` running on this host as its primary or a standby (see above)."""
    app = _app(name)
    ret = statekit.new_ret(name)
    changes = {}
    up, enabled = pg.running(), pg.starts_at_boot()
    if not up or not enabled:
        changes["service"] = f"{pg.SERVICE} running, started at boot ({pg.BOOT_UNIT} enabled)"
        if not __opts__["test"]:
            if not enabled:
                pg.systemctl("enable", pg.BOOT_UNIT)
            if not up:
                pgf.fence_if_superseded(app)
                pg.systemctl("start", pg.SERVICE)
                up = pg.wait_ready()
    local = pgf.local_server(app) if up else None
    place = pgf.placement(app, local, pgf.peer_servers(app))
    changed = pg.file_changes(app, app["host"], place.upstream)
    todo = {}
    for path, new in sorted(changed.items()):
        diff = statekit.diff(read_file(path), new, path, path)
        todo[path] = "(content hidden)" if path == pg.PGPASS else diff
    if place.clone:
        source = f"{place.upstream} ({pg.address_of(app, place.upstream)})"
        todo["standby"] = f"cloned from {source}: {place.clone}"
    if place.role == "primary":
        todo.update(pgf.primary_changes(app, local))
    changes.update(todo)
    note = f"; {place.note}" if place.note else ""
    ret["changes"] = changes
    if __opts__["test"] and changes:
        ret["result"] = None
        ret["comment"] = f"app {name} would be converged on {pg.SERVICE} as its {place.role}{note}"
        return ret
    if not todo:
        ret["comment"] = f"{pg.SERVICE} runs app {name} as its {place.role}{note}"
        return ret

    restart = pg.CONF_FILE in changed and pg.needs_restart(read_file(pg.CONF_FILE), changed[pg.CONF_FILE])
    pg.write_files(changed)
    if place.clone:
        pg.clone_from(app, app["host"], place.upstream)
    if not pg.running():
        pg.systemctl("start", pg.SERVICE)
    elif restart:
        pg.systemctl("restart", pg.SERVICE)
    elif pg.CONF_FILE in changed or pg.HBA_FILE in changed:
        pg.systemctl("reload", pg.SERVICE)
    if not pg.wait_ready():
        raise pg.ApplianceError(f"{pg.SERVICE} does not answer after the change (journalctl -u {pg.SERVICE})")
    if place.role == "primary":
        pgf.apply_primary_changes(app, todo)
    ret["comment"] = f"app {name} converged on {pg.SERVICE} as its {place.role}{note}"
    return ret


@_guarded(label="postgresql app {name}")
def databases(name):
    """On the primary: the app's database owners and databases, the exporter's role (see above)."""
    app = _app(name)
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
