"""The PostgreSQL appliance: Debian's PostgreSQL 15 (cluster 15/main), a primary and hot standbys
by streaming replication, databases owned by cluster users who reach them as themselves on the
local socket (peer authentication).

The first host of the app is the primary when the app is first created. A standby is cloned from
the primary with pg_basebackup (through a replication slot named after it), only from a cluster
that holds no database of its own (anything else is refused, never overwritten; the cluster it
replaces is kept aside). Replication authenticates with a password every host derives from the
config repo's deploy key (``appliances.shared_secret``); it is in no file but postgres' own
~/.pgpass (mode 0600). What the verbs report and do on the primary is decided by the running
server (``pg_is_in_recovery``), not by cluster.json.

Debian's prometheus-postgres-exporter runs on every host of the app, as OS user prometheus; it
logs in as role ``prometheus`` (member of pg_monitor, created on the primary, replicated to the
standbys) on the local socket by peer authentication: no password.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import time

from minicl import paths
from minicl.appliances import ApplianceError, Report, shared_secret, systemctl, unit_active, unit_enabled
from minicl.files import read_file, write_file

VERSION = "15"
CLUSTER = "main"
PORT = 5432
SERVICE = f"postgresql@{VERSION}-{CLUSTER}"
# What starts the clusters at boot on Debian: postgresql.service pulls in every cluster whose
# start.conf says auto (postgresql-common's generator); the instance itself is not enabled.
BOOT_UNIT = "postgresql.service"
BIN = f"/usr/lib/postgresql/{VERSION}/bin"
DATA_DIR = f"/var/lib/postgresql/{VERSION}/{CLUSTER}"
CONF_DIR = f"/etc/postgresql/{VERSION}/{CLUSTER}"
CONF_FILE = f"{CONF_DIR}/conf.d/minicl.conf"
HBA_FILE = f"{CONF_DIR}/pg_hba.conf"
PGPASS = "/var/lib/postgresql/.pgpass"
FOLLOWING = "# following: "
REPLICA_ROLE = "minicl_replica"
PROBE_TABLE = "minicl_probe"
SYSTEM_DATABASES = ("postgres", "template0", "template1")
VERBS = ("check_health", "test", "backup", "restore", "list", "upgrade", "downgrade", "failover", "monitor",
         "cleanup")  # fmt: skip
# What upgrade and downgrade change (with the app's own "packages" from cluster.json).
PACKAGES = (
    "postgresql",
    "postgresql-15",
    "postgresql-client-15",
    "postgresql-common",
    "postgresql-client-common",
    "libpq5",
)
MIN_FREE_RATIO = 0.10
SOCKET_DIR = "/run/postgresql"
EXPORTER_PACKAGE = "prometheus-postgres-exporter"
EXPORTER_SERVICE = "prometheus-postgres-exporter"
EXPORTER_PORT = 9187
MONITOR_ROLE = "prometheus"  # the OS user Debian's exporter runs as: peer authentication maps it


def ident(name):
    return '"' + name.replace('"', '""') + '"'


def literal(text):
    return "'" + text.replace("'", "''") + "'"


def replica_password(app):
    return shared_secret(app["name"], "postgresql replication")


def slot_name(host):
    return "minicl_" + "".join(c if c.isalnum() else "_" for c in host.lower())


def address_of(app, peer):
    """The address a standby connects to: the peer's first IPv4 address, else its first."""
    ips = app["peers"].get(peer, [])
    return next((ip for ip in ips if ":" not in ip), ips[0] if ips else "127.0.0.1")


def render_conf(app, host, upstream=""):
    """minicl's settings; a standby's (``upstream``: the host it follows) are read only while
    the server is one."""
    lines = [
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.",
        "listen_addresses = '*'",
        "wal_level = replica",
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "hot_standby = on",
        "wal_keep_size = '256MB'",
        "log_destination = 'syslog'",
        "syslog_ident = 'postgres'",
    ]
    if app.get("synchronous"):
        lines.append("synchronous_standby_names = 'ANY 1 (*)'")
    if upstream:
        lines.append(f"{FOLLOWING}{upstream}")
        lines.append(
            f"primary_conninfo = 'host={address_of(app, upstream)} port={PORT} user={REPLICA_ROLE} "
            f"passfile={PGPASS} application_name={host}'"
        )
        lines.append(f"primary_slot_name = '{slot_name(host)}'")
    return "\n".join(lines) + "\n"


def render_hba(app):
    lines = [
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.",
        "# TYPE  DATABASE     USER            ADDRESS                 METHOD",
        "local   all          postgres                                peer",
        "local   all          all                                     peer",
        "local   replication  all                                     peer",
        "host    all          all             127.0.0.1/32            scram-sha-256",
        "host    all          all             ::1/128                 scram-sha-256",
    ]
    for peer in sorted(app["peers"]):
        for ip in app["peers"][peer]:
            mask = "128" if ":" in ip else "32"
            for database in ("replication", "postgres"):  # streaming; the fail-over's questions
                where = f"{ip}/{mask}"
                lines.append(f"host    {database:<11}  {REPLICA_ROLE}  {where:<23} scram-sha-256  # {peer}")
    return "\n".join(lines) + "\n"


def render_exporter_defaults(app):
    """/etc/default/prometheus-postgres-exporter: the local socket, as role prometheus (peer)."""
    return (
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.\n"
        f'DATA_SOURCE_NAME="user={MONITOR_ROLE} host={SOCKET_DIR} dbname=postgres sslmode=disable"\n'
        f'ARGS="--web.listen-address=:{EXPORTER_PORT}"\n'
    )


def render_pgpass(app):
    return f"*:{PORT}:*:{REPLICA_ROLE}:{replica_password(app)}\n"


# -- the running server --------------------------------------------------------------------


def run(argv, input=None, env=None, check=True):
    result = subprocess.run(argv, input=input, capture_output=True, text=True, check=False, env=env)
    if check and result.returncode != 0:
        raise ApplianceError(f"{' '.join(argv[:4])}...: {result.stderr.strip() or result.stdout.strip()}")
    return result


# As postgres, and with commits that do not wait for a synchronous standby: minicl's own work
# (roles, databases, a restore) must not hang on a primary whose standby is not there (yet); the
# standby gets it when it connects.
AS_POSTGRES = ["runuser", "-u", "postgres", "--", "env", "PGOPTIONS=-c synchronous_commit=local"]


def psql(sql, database="postgres", check=True):
    """Run SQL (from stdin, so nothing shows in the process list) as postgres on the local
    socket; returns the unaligned rows."""
    result = run(
        [*AS_POSTGRES, "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", database],
        input=sql,
        check=check,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def running():
    return unit_active(SERVICE)


def starts_at_boot():
    return unit_enabled(BOOT_UNIT)


def wait_ready(seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if run(["runuser", "-u", "postgres", "--", f"{BIN}/pg_isready", "-q"], check=False).returncode == 0:
            return True
        time.sleep(0.5)
    return False


def in_recovery():
    """True on a standby, False on a primary, None if the server does not answer."""
    answer = psql("SELECT pg_is_in_recovery()", check=False)
    return None if answer is None else answer == "t"


def own_databases():
    rows = psql("SELECT datname FROM pg_database WHERE NOT datistemplate") or ""
    return [name for name in rows.splitlines() if name and name not in SYSTEM_DATABASES]


def has_data_dir():
    return os.path.isfile(os.path.join(DATA_DIR, "PG_VERSION"))


def is_standby_data():
    return os.path.exists(os.path.join(DATA_DIR, "standby.signal"))


# -- converging ---------------------------------------------------------------------------


BOOT_CHECK_DROPIN = f"/etc/systemd/system/{SERVICE}.service.d/minicl-fence.conf"
BOOT_CHECK_TEXT = """\
# Managed by minicl (app {app}); changes here are overwritten.
# Before the server starts: if it was a primary and another host was promoted meanwhile, it is
# fenced (it starts read-only) rather than start as a second primary.
[Unit]
Wants=network-online.target
After=network-online.target

[Service]
ExecStartPre=-{python} -m minicl.appliances.pgfailover fence-check {app_file}
"""


def app_file(app):
    """What the check before the server starts knows of the app (no secret in it)."""
    return os.path.join(paths.APPS_DIR, app["name"], "app.json")


def render_app_file(app):
    keys = ("name", "host", "hosts", "primary", "peers")
    return json.dumps({key: app[key] for key in keys}, indent=2, sort_keys=True) + "\n"


def file_changes(app, host, upstream=""):
    """{path: new text} of minicl's PostgreSQL files that differ from what is there."""
    wanted = {
        CONF_FILE: render_conf(app, host, upstream),
        HBA_FILE: render_hba(app),
        PGPASS: render_pgpass(app),
        app_file(app): render_app_file(app),
        BOOT_CHECK_DROPIN: BOOT_CHECK_TEXT.format(
            app=app["name"], python=sys.executable, app_file=app_file(app)
        ),
    }
    return {path: text for path, text in wanted.items() if read_file(path) != text}


# Read only when the server starts; minicl's other settings take effect with a reload.
RESTART_SETTINGS = (
    "listen_addresses",
    "wal_level",
    "max_wal_senders",
    "max_replication_slots",
    "hot_standby",
)


def needs_restart(old_conf, new_conf):
    """Whether going from one text of minicl.conf to the other needs a restart (which drops
    every client's connection) rather than a reload."""

    def settings(text):
        pairs = (line.partition("=") for line in (text or "").splitlines() if not line.startswith("#"))
        return {key.strip(): value.strip() for key, sep, value in pairs if sep}

    old, new = settings(old_conf), settings(new_conf)
    return any(old.get(key) != new.get(key) for key in RESTART_SETTINGS)


def write_files(changed):
    for path, text in changed.items():
        if path in (CONF_FILE, HBA_FILE, PGPASS):
            write_file(path, text, 0o600 if path == PGPASS else 0o640)
            shutil.chown(path, "postgres", "postgres")
        else:
            write_file(path, text, 0o644)
    if BOOT_CHECK_DROPIN in changed:
        systemctl("daemon-reload")


def holds_app_data():
    """Whether the local server holds an app's data (minicl's replication role exists)."""
    return psql(f"SELECT 1 FROM pg_roles WHERE rolname = {literal(REPLICA_ROLE)}") == "1"


def clone_from(app, host, upstream):
    """Make this host a standby of ``upstream``: its data replaced by a clone through a
    replication slot of its own. A server holding databases of its own that are not the app's
    is refused, never overwritten; the data folder it replaces is kept aside."""
    if has_data_dir():
        if not running():
            systemctl("start", SERVICE)
        if not wait_ready():
            raise ApplianceError(f"the local PostgreSQL ({SERVICE}) does not start; it is left as it is")
        mine = own_databases()
        if mine and not holds_app_data():
            raise ApplianceError(
                f"this host should be a standby of {upstream}, but its PostgreSQL holds databases "
                f"of its own ({', '.join(mine)}): minicl does not overwrite them. Move them away "
                f"(pg_dump), or make {host} the primary in cluster.json"
            )
        systemctl("stop", SERVICE)
        # shutil.move renames, or copies where it cannot (a folder of an overlay's lower layer).
        shutil.move(DATA_DIR, f"{DATA_DIR}.minicl-replaced-{int(time.time())}")
    os.makedirs(DATA_DIR, mode=0o700, exist_ok=True)
    shutil.chown(DATA_DIR, "postgres", "postgres")
    base = [
        "runuser", "-u", "postgres", "--", "env", f"PGPASSFILE={PGPASS}",
        f"{BIN}/pg_basebackup", "-h", address_of(app, upstream), "-p", str(PORT), "-U", REPLICA_ROLE,
        "-D", DATA_DIR, "-X", "stream", "-c", "fast", "-S", slot_name(host), "-w",
    ]  # fmt: skip
    result = run([*base, "-C"], check=False)
    if result.returncode != 0 and "already exists" in result.stderr:
        shutil.rmtree(DATA_DIR)
        os.makedirs(DATA_DIR, mode=0o700)
        shutil.chown(DATA_DIR, "postgres", "postgres")
        result = run(base, check=False)
    if result.returncode != 0:
        raise ApplianceError(
            f"cloning {upstream} ({address_of(app, upstream)}) failed: {result.stderr.strip()} "
            "(is its PostgreSQL up and converged? the next run tries again)"
        )
    write_file(os.path.join(DATA_DIR, "standby.signal"), "", 0o600)
    shutil.chown(os.path.join(DATA_DIR, "standby.signal"), "postgres", "postgres")


def replica_role_ok(app):
    """Whether the replication role logs in with the shared password (over TCP, as a standby does)."""
    probe = run(
        ["psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-U", REPLICA_ROLE, "-d", "postgres", "-c", "SELECT 1"],
        env={**os.environ, "PGPASSWORD": replica_password(app), "PGCONNECT_TIMEOUT": "5"},
        check=False,
    )
    return probe.returncode == 0


def set_replica_role(app):
    """On the primary: create the replication role, or set its password to the shared one."""
    exists = psql(f"SELECT 1 FROM pg_roles WHERE rolname = {literal(REPLICA_ROLE)}") == "1"
    verb = "ALTER" if exists else "CREATE"
    psql(f"SET password_encryption = 'scram-sha-256'; {verb} ROLE {ident(REPLICA_ROLE)} "
         f"WITH REPLICATION LOGIN PASSWORD {literal(replica_password(app))}")  # fmt: skip


def database_changes(app):
    """What the primary lacks of the app's databases and owners: a list of (what, SQL)."""
    todo = []
    roles = set((psql("SELECT rolname FROM pg_roles") or "").splitlines())
    owners = dict(
        line.split("|", 1)
        for line in (psql("SELECT datname, pg_get_userbyid(datdba) FROM pg_database") or "").splitlines()
        if "|" in line
    )
    for db, spec in sorted((app.get("databases") or {}).items()):
        owner = spec["owner"]
        if owner not in roles:
            todo.append((f"role {owner} (login, peer authentication)", f"CREATE ROLE {ident(owner)} LOGIN"))
            roles.add(owner)
        if db not in owners:
            todo.append(
                (f"database {db} owned by {owner}", f"CREATE DATABASE {ident(db)} OWNER {ident(owner)}")
            )
        elif owners[db] != owner:
            todo.append(
                (
                    f"database {db} now owned by {owner}",
                    f"ALTER DATABASE {ident(db)} OWNER TO {ident(owner)}",
                )
            )
    return todo


def monitor_role_changes():
    """What the primary lacks for its exporters: the role prometheus, member of pg_monitor (read
    access to the statistics, nothing else), logging in by peer authentication only."""
    member = psql(
        "SELECT pg_has_role(oid, 'pg_monitor', 'MEMBER') FROM pg_roles "
        f"WHERE rolname = {literal(MONITOR_ROLE)}"
    )
    if not member:
        return [
            (
                f"role {MONITOR_ROLE} (pg_monitor, for the exporter, peer authentication)",
                f"CREATE ROLE {ident(MONITOR_ROLE)} LOGIN IN ROLE pg_monitor",
            )
        ]
    if member != "t":
        return [(f"role {MONITOR_ROLE} now in pg_monitor", f"GRANT pg_monitor TO {ident(MONITOR_ROLE)}")]
    return []


def forgotten_databases(app):
    """Databases on the server that cluster.json no longer lists: minicl never drops them."""
    listed = set(app.get("databases") or {})
    return [db for db in own_databases() if db not in listed and db != PROBE_TABLE]


# -- verbs --------------------------------------------------------------------------------


def check_health(app):
    report = Report(app["name"], "check_health")
    up = running() and wait_ready(5)
    if not report.check(up, f"{SERVICE} answers on the local socket"):
        return report
    recovery = in_recovery()
    role = "standby" if recovery else "primary"
    report.data["role"] = role
    report.check(recovery is not None, f"this host is the {role}")
    if recovery:
        status = psql("SELECT status, sender_host FROM pg_stat_wal_receiver") or ""
        streaming = status.startswith("streaming|")
        report.check(
            streaming, f"streaming from the primary ({status.replace('|', ' from ') or 'not connected'})"
        )
        lag = psql("SELECT COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::int")
        report.data["replay_lag_seconds"] = int(lag or 0)
        report.lines.append(f"info last replayed transaction {int(lag or 0)} s ago")
    else:
        rows = (
            psql(
                "SELECT application_name, state, COALESCE(pg_wal_lsn_diff(sent_lsn, replay_lsn), 0) "
                "FROM pg_stat_replication"
            )
            or ""
        ).splitlines()
        standbys = {r.split("|")[0]: r.split("|") for r in rows if r}
        report.data["standbys"] = {
            name: {"state": r[1], "lag_bytes": int(float(r[2]))} for name, r in standbys.items()
        }
        for peer in sorted(app["peers"]):
            row = standbys.get(peer)
            said = f"{row[1]}, {int(float(row[2]))} bytes behind" if row else "not connected"
            report.check(row is not None and row[1] == "streaming", f"standby {peer}: {said}")
    if not recovery:
        from minicl.appliances import pgfailover

        if pgfailover.synchronous_suspended():
            report.check(
                False, "synchronous commits are suspended since the fail-over: no standby streams yet"
            )
    usage = shutil.disk_usage(DATA_DIR)
    free = usage.free / usage.total
    report.data["disk_free_ratio"] = round(free, 3)
    report.check(free >= MIN_FREE_RATIO, f"{free:.0%} of the data disk free ({DATA_DIR})")
    from minicl.appliances import backups

    backups.check_age(app, report)
    return report


def test(app, wait=15):
    """A write and a read through the service on the primary, and the write seen by every
    standby (their replay position passes it); on a standby, a read and a refused write."""
    report = Report(app["name"], "test")
    recovery = in_recovery()
    if not report.check(recovery is not None, f"{SERVICE} answers"):
        return report
    token = os.urandom(8).hex()
    if recovery:
        report.check(psql("SELECT 1") == "1", "a read on this standby")
        refused = psql("CREATE TABLE minicl_should_not_exist (x int)", check=False) is None
        report.check(refused, "a write on this standby is refused (read-only)")
        return report
    psql(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (id int PRIMARY KEY, token text, at timestamptz); "
         f"INSERT INTO {PROBE_TABLE} VALUES (1, {literal(token)}, now()) "
         f"ON CONFLICT (id) DO UPDATE SET token = EXCLUDED.token, at = now()")  # fmt: skip
    lsn = psql("SELECT pg_current_wal_lsn()")
    report.check(
        psql(f"SELECT token FROM {PROBE_TABLE} WHERE id = 1") == token, f"a write and a read ({token})"
    )
    deadline = time.monotonic() + wait
    pending = set(app["peers"])
    while pending and time.monotonic() < deadline:
        rows = (psql(f"SELECT application_name FROM pg_stat_replication "
                     f"WHERE replay_lsn >= {literal(lsn)}::pg_lsn") or "").splitlines()  # fmt: skip
        pending -= set(rows)
        if pending:
            time.sleep(0.3)
    for peer in sorted(app["peers"]):
        report.check(peer not in pending, f"standby {peer} replayed the write")
    return report


COUNTERS_SQL = (
    "SELECT sum(xact_commit), sum(tup_inserted + tup_updated + tup_deleted), sum(tup_fetched) "
    "FROM pg_stat_database"
)
CLIENTS_SQL = (
    "SELECT count(*), count(*) FILTER (WHERE state = 'active') FROM pg_stat_activity "
    "WHERE backend_type = 'client backend'"
)
SIZES_SQL = "SELECT datname, pg_database_size(datname) FROM pg_database WHERE NOT datistemplate ORDER BY 1"
STANDBYS_SQL = (
    "SELECT application_name, state, COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint, "
    "COALESCE(EXTRACT(EPOCH FROM replay_lag), 0) FROM pg_stat_replication"
)


def memory_bytes():
    """The memory the server's processes use, shared buffers counted once (the sum of their
    proportional set sizes), or None where /proc does not say."""
    uid = pwd.getpwnam("postgres").pw_uid
    total, seen = 0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
                seen = True
        except (OSError, StopIteration):
            continue
    return total if seen else None


def _rows(sql):
    return [row.split("|") for row in (psql(sql) or "").splitlines()]


def monitor(app, seconds=1.0):
    """Live figures: connections, commits and rows per second (over ``seconds``), database
    sizes, and replication (each standby's lag on the primary; the replay delay on a standby)."""
    report = Report(app["name"], "monitor")
    if not report.check(running() and wait_ready(5), f"{SERVICE} answers"):
        return report
    first = [float(x) for x in _rows(COUNTERS_SQL)[0]]
    time.sleep(seconds)
    second = [float(x) for x in _rows(COUNTERS_SQL)[0]]
    commits, written, read = (round((b - a) / seconds, 1) for a, b in zip(first, second, strict=True))
    clients, active = (int(x) for x in _rows(CLIENTS_SQL)[0])
    limit = int(psql("SHOW max_connections"))
    sizes = {db: int(size) for db, size in _rows(SIZES_SQL)}
    data = {
        "connections": clients, "active": active, "max_connections": limit,
        "commits_per_second": commits, "rows_written_per_second": written, "rows_read_per_second": read,
        "database_bytes": sizes,
    }  # fmt: skip
    memory = memory_bytes()
    data["memory_bytes"] = memory
    report.lines += [
        f"info connections: {clients} ({active} active) of {limit}",
        "info memory: "
        + ("unknown" if memory is None else f"{memory / 2**20:.1f} MB (the server's processes)"),
        f"info per second: {commits} commits, {written} rows written, {read} rows read",
        "info sizes: " + ", ".join(f"{db} {size / 2**20:.1f} MB" for db, size in sizes.items()),
    ]
    if in_recovery():
        delay = int(
            psql("SELECT COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0)::int")
        )
        report.lines.append(f"info standby: last replayed transaction {delay} s ago")
        data["replay_delay_seconds"] = delay
    else:
        data["standbys"] = {}
        for name, state, lag_bytes, lag_seconds in _rows(STANDBYS_SQL):
            data["standbys"][name] = {
                "state": state,
                "lag_bytes": int(lag_bytes),
                "lag_seconds": float(lag_seconds),
            }
            report.lines.append(
                f"info standby {name}: {state}, {lag_bytes} bytes, {float(lag_seconds):.2f} s behind"
            )
    report.data.update(data)
    return report


# The verbs that live in modules of their own, which build on this one.


def failover(app):
    from minicl.appliances import pgfailover

    return pgfailover.failover(app)


def backup(app):
    from minicl.appliances import pgbackup

    return pgbackup.backup(app)


def restore(app, backup=None, database=None):  # pylint: disable=redefined-outer-name
    from minicl.appliances import pgbackup

    return pgbackup.restore(app, backup, database)


def list_backups(app):
    from minicl.appliances import backups

    return backups.list_report(app)


def upgrade(app):
    from minicl.appliances import upgrades

    return upgrades.upgrade(sys.modules[__name__], app)


def downgrade(app):
    from minicl.appliances import upgrades

    return upgrades.downgrade(sys.modules[__name__], app)


def cleanup(app):
    from minicl.appliances import pgbackup

    return pgbackup.cleanup(app)


def data_format(app):  # pylint: disable=unused-argument
    """The cluster's on-disk format: its major version and catalog version (pg_controldata). A
    package upgrade that changes it needs the data converted (minicl.upgrade restores the safety
    backup when such an upgrade is rolled back)."""
    try:
        with open(os.path.join(DATA_DIR, "PG_VERSION"), encoding="ascii") as f:
            major = f.read().strip()
    except OSError:
        return None
    control = subprocess.run([f"{BIN}/pg_controldata", DATA_DIR], capture_output=True, text=True, check=False,
                             env={**os.environ, "LC_ALL": "C"})  # fmt: skip
    catalog = next(
        (
            line.split(":", 1)[1].strip()
            for line in control.stdout.splitlines()
            if line.startswith("Catalog version")
        ),
        "?",
    )
    return f"{major}/{catalog}"
