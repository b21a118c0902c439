"""The Redis appliance: Debian's redis-server (7.0), a primary and replicas by Redis replication,
RDB snapshots in /var/lib/redis, logging to syslog.

minicl leaves Debian's /etc/redis/redis.conf as it is but for one line at its end,
``include /etc/redis/minicl.conf``, so that minicl's settings (the file it writes, mode 0640
redis:redis like Debian's) win. Clients and replicas authenticate with a password every host of
the app derives from the config repo's deploy key (``appliances.shared_secret``): it is in that
file only, never in a state's output, and reaches redis-cli through REDISCLI_AUTH, never its
command line.

Who is the primary (``decide_role``), at every converge, from what the servers say:

- A primary in view: this host's server if minicl converged it and it is a primary (or it is
  down but this host was promoted), and each peer that answers with the app's password as a
  primary. A server promoted by ``failover`` publishes when, as a disabled ACL user
  ``minicl-promoted-<unix time>`` (in minicl.conf too, so it survives a restart); the promotion
  is also recorded on the host, in /var/lib/minicl/apps/<app>/promoted.
- Of the primaries in view, the most recently promoted one is the primary, and every other host
  its replica: a converge never demotes a promoted server for an older one or for cluster.json,
  and an old primary that comes back (as a primary, from its own configuration) rejoins as a
  replica of the promoted one at its next converge. Between primaries never promoted, the one
  listed first in cluster.json wins (a primary made by hand with REPLICAOF NO ONE is undone:
  promote with ``failover``).
- No primary in view: a replica keeps following the primary it follows (it may be restarting);
  otherwise cluster.json decides: its first host is the primary, which is what happens when the
  app is first created.

Listing the promoted host first in cluster.json (what ``failover`` prints) changes nothing on
running servers; it decides for new hosts and when no primary answers at all. A host that ends
up a replica drops its own promotion record.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from minicl import paths
from minicl.appliances import ApplianceError, Report, shared_secret, systemctl, unit_active, unit_enabled
from minicl.files import read_file, write_file

PACKAGE = "redis-server"
SERVICE = "redis-server"
PORT = 6379
MAIN_CONF = "/etc/redis/redis.conf"
CONF_FILE = "/etc/redis/minicl.conf"
INCLUDE = f"include {CONF_FILE}"
INCLUDE_COMMENT = "# minicl's settings, last so that they win:"
DATA_DIR = "/var/lib/redis"
DUMP = f"{DATA_DIR}/dump.rdb"
PROMOTED_USER = "minicl-promoted-"
ROLE_MARK = "# The role: decided by minicl at each run (see minicl.appliances.redis)."
VERBS = ("check_health", "test", "backup", "restore", "list", "upgrade", "downgrade", "monitor", "failover",
         "cleanup")  # fmt: skip
MIN_FREE_RATIO = 0.10
MEMORY_WARN_RATIO = 0.90
PEER_TIMEOUT = 3

# For the monitoring machinery: Debian's exporter of this app type.
EXPORTER_PACKAGE = "prometheus-redis-exporter"
EXPORTER_SERVICE = "prometheus-redis-exporter"
EXPORTER_PORT = 9121
EXPORTER_DEFAULTS_SECRET = True  # the exporter logs in with the app's password
# What upgrade and downgrade change (with the app's own "packages" from cluster.json).
PACKAGES = ("redis-server", "redis-tools")


def password(app):
    return shared_secret(app["name"], "redis password")


def render_exporter_defaults(app):
    """/etc/default/prometheus-redis-exporter: the local server, with the app's password (in the
    environment, not on the command line where ps shows it)."""
    return (
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.\n"
        f'REDIS_ADDR="redis://127.0.0.1:{PORT}"\n'
        f'REDIS_PASSWORD="{password(app)}"\n'
        f'ARGS="--web.listen-address=:{EXPORTER_PORT}"\n'
    )


def address_of(ips):
    """The address to reach a host at: its first IPv4 address, else its first."""
    return next((ip for ip in ips if ":" not in ip), ips[0] if ips else "127.0.0.1")


def peer_at(app, address):
    """The peer that has ``address``, or None."""
    return next((peer for peer, ips in app["peers"].items() if address in ips), None)


@dataclass
class Decision:
    """What this host is for the app: the "primary", or a "replica" of ``master`` (a peer);
    ``epoch`` is the promotion this primary publishes (0: none); ``why`` says which rule."""

    role: str
    master: str = None
    epoch: int = 0
    why: str = ""

    def __str__(self):
        return "primary" if self.role == "primary" else f"replica of {self.master}"


@dataclass
class Server:
    """What a running server says: ``role`` "primary" or "replica", the address of its primary,
    its link to it, the promotion it publishes (a replica's is a leftover, removed)."""

    role: str
    master: str = None
    link: str = None
    epoch: int = 0
    info: dict = None


# -- rendering ----------------------------------------------------------------------------


def render_conf(app, decision):
    """minicl.conf for ``decision``: the settings, then the role's lines (applied at runtime
    when only they change)."""
    listen = " ".join(f"-{ip}" for ip in app["addresses"])  # "-": a missing address is skipped
    lines = [
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.",
        f"bind {listen} 127.0.0.1 -::1".replace("  ", " "),
        "protected-mode yes",
        f"port {PORT}",
        f"requirepass {password(app)}",
        f"masterauth {password(app)}",
        'logfile ""',
        "syslog-enabled yes",
        "syslog-ident redis",
        f"dir {DATA_DIR}",
        "dbfilename dump.rdb",
        "save 3600 1 300 100 60 10000",
        "appendonly no",
        "replica-read-only yes",
        f"maxmemory-policy {app.get('maxmemory_policy', 'noeviction')}",
    ]
    if app.get("maxmemory"):
        lines.append(f"maxmemory {app['maxmemory']}")
    lines.append(ROLE_MARK)
    if decision.role == "replica":
        lines.append(f"replicaof {address_of(app['peers'][decision.master])} {PORT}")
    if decision.epoch:
        lines.append(f"user {PROMOTED_USER}{decision.epoch} off")
    return "\n".join(lines) + "\n"


def settings_part(text):
    """minicl.conf without its role's lines: what only a restart applies."""
    return text.split(ROLE_MARK)[0]


def render_main_conf(text):
    """Debian's redis.conf with minicl's include as its last line (later settings win)."""
    kept = [line for line in text.splitlines() if line.strip() not in (INCLUDE, INCLUDE_COMMENT)]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", INCLUDE_COMMENT, INCLUDE]) + "\n"


def includes_minicl(text):
    directives = [
        line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return bool(directives) and directives[-1] == INCLUDE


def redacted(app, text):
    return text.replace(password(app), "(hidden)")


# -- the running servers ------------------------------------------------------------------


def cli(app, *args, address="127.0.0.1", timeout=10, check=True):
    """One command through redis-cli with the app's password (in the environment); its reply,
    or None (check=False) when it fails or does not answer in ``timeout`` seconds."""
    argv = ["redis-cli", "--no-auth-warning", "-e", "-h", address, "-p", str(PORT), *args]
    env = {**os.environ, "REDISCLI_AUTH": password(app)}
    try:
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        failed = result.returncode != 0
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no answer"]
    except subprocess.TimeoutExpired:
        failed, why = True, [f"no answer in {timeout} s"]
    if failed:
        if check:
            raise ApplianceError(f"redis {address}:{PORT} {args[0]}: {why[0]}")
        return None
    return result.stdout.strip()


def parse_info(text):
    info = {}
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            info[key] = value
    return info


def server(app, address="127.0.0.1", timeout=5):
    """What the server at ``address`` says (a Server), or None when it does not answer to the
    app's password."""
    text = cli(app, "INFO", "replication", address=address, timeout=timeout, check=False)
    info = parse_info(text)
    if "role" not in info:
        return None
    users = (cli(app, "ACL", "USERS", address=address, timeout=timeout, check=False) or "").split()
    epochs = [int(u[len(PROMOTED_USER) :]) for u in users if re.fullmatch(PROMOTED_USER + r"\d+", u)]
    epoch = max(epochs, default=0)
    if info["role"] == "master":
        return Server("primary", epoch=epoch, info=info)
    master, link = info.get("master_host"), info.get("master_link_status")
    return Server("replica", master=master, link=link, epoch=epoch, info=info)


def running():
    return unit_active(SERVICE)


def starts_at_boot():
    return unit_enabled(SERVICE)


def wait_ready(app, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cli(app, "PING", timeout=3, check=False) == "PONG":
            return True
        time.sleep(0.3)
    return False


def marker_path(app):
    return f"{paths.STATE_DIR}/apps/{app['name']}/promoted"


def promoted_epoch(app):
    """When ``failover`` promoted this host (unix time), 0 if it did not."""
    try:
        with open(marker_path(app), encoding="utf-8") as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def converged():
    """Whether minicl's configuration is in place (a server that is not yet minicl's is not a
    primary in view: a fresh host's stock server is not the app's primary)."""
    return os.path.exists(CONF_FILE) and includes_minicl(read_file(MAIN_CONF))


# -- deciding and converging ----------------------------------------------------------------


def decide_role(app, host, promoted, own, peers, own_converged=True):
    """Who this host is (see the module's docstring). ``promoted``: this host's promotion (unix
    time, 0: none); ``own``: its server (None when it does not answer); ``peers``: {peer:
    Server or None}."""
    in_view = {}
    if promoted and (own is None or own.role == "primary"):
        in_view[host] = promoted
    elif own is not None and own.role == "primary" and own_converged:
        in_view[host] = own.epoch
    for peer, seen in peers.items():
        if seen is not None and seen.role == "primary":
            in_view[peer] = seen.epoch
    if in_view:
        order = app["hosts"]
        winner = max(in_view, key=lambda h: (in_view[h], -order.index(h)))
        why = (
            f"the most recently promoted primary (at {in_view[winner]})"
            if in_view[winner]
            else "the primary listed first in cluster.json"
        )
        if len(in_view) == 1:
            why = "the only primary that answers"
        if winner == host:
            return Decision("primary", epoch=promoted if in_view[host] else 0, why=why)
        return Decision("replica", winner, why=why)
    if own is not None and own.role == "replica" and peer_at(app, own.master):
        return Decision("replica", peer_at(app, own.master), why="no primary answers; it keeps its primary")
    if app["primary"] == host:
        return Decision("primary", why="no primary answers; the first host in cluster.json")
    return Decision("replica", app["primary"], why="no primary answers; the first host in cluster.json")


@dataclass
class Plan:
    """What a converge does: ``files`` {path: text} to write, ``start`` / ``enable`` /
    ``restart`` the service, ``runtime`` (what, [redis-cli args]) for the role, and whether
    this host's promotion record goes (``drop_promotion``)."""

    decision: Decision
    files: dict
    enable: bool
    start: bool
    restart: bool
    runtime: list
    drop_promotion: bool


def plan(app):
    """Read this host and its peers (nothing changes): what a converge would do."""
    host = app["host"]
    up = running()
    own = server(app) if up else None
    peers = {peer: server(app, address_of(ips), timeout=PEER_TIMEOUT) for peer, ips in app["peers"].items()}
    promoted = promoted_epoch(app)
    decision = decide_role(app, host, promoted, own, peers, own_converged=converged())
    main = read_file(MAIN_CONF)
    wanted = {
        CONF_FILE: render_conf(app, decision),
        MAIN_CONF: main if includes_minicl(main) else render_main_conf(main),
    }
    files = {path: text for path, text in wanted.items() if read_file(path) != text}
    restart = up and (
        MAIN_CONF in files or settings_part(read_file(CONF_FILE)) != settings_part(wanted[CONF_FILE])
    )
    runtime = [] if (restart or not up) else role_commands(app, own, decision)
    return Plan(
        decision,
        files,
        enable=not starts_at_boot(),
        start=not up,
        restart=restart,
        runtime=runtime,
        drop_promotion=bool(promoted) and decision.role == "replica",
    )


def role_commands(app, own, decision):
    """What the running server needs to take ``decision`` without a restart."""
    commands = []
    if own is None:
        return commands
    if decision.role == "primary" and own.role != "primary":
        commands.append(("REPLICAOF NO ONE", ["REPLICAOF", "NO", "ONE"]))
    if decision.role == "replica":
        address = address_of(app["peers"][decision.master])
        if own.role != "replica" or own.master != address:
            commands.append((f"REPLICAOF {decision.master}", ["REPLICAOF", address, str(PORT)]))
    if own.epoch != decision.epoch:
        if own.epoch:
            commands.append(("ACL DELUSER (promotion)", ["ACL", "DELUSER", f"{PROMOTED_USER}{own.epoch}"]))
        if decision.epoch:
            commands.append(
                ("ACL SETUSER (promotion)", ["ACL", "SETUSER", f"{PROMOTED_USER}{decision.epoch}", "off"])
            )
    return commands


def write_files(changed):
    for path, text in changed.items():
        write_file(path, text, 0o640)
        shutil.chown(path, "redis", "redis")


def apply_plan(app, todo):
    """Carry out a plan; then check that the server took the role."""
    write_files(todo.files)
    if todo.drop_promotion and os.path.exists(marker_path(app)):
        os.unlink(marker_path(app))
    if todo.enable:
        systemctl("enable", SERVICE)
    if todo.start:
        systemctl("start", SERVICE)
    elif todo.restart:
        systemctl("restart", SERVICE)
    if not wait_ready(app):
        raise ApplianceError(f"{SERVICE} does not answer after the change (journalctl -u {SERVICE})")
    for _, args in todo.runtime:
        cli(app, *args)
    own = server(app)
    wanted = todo.decision
    took = own is not None and own.role == wanted.role
    if took and wanted.role == "replica":
        took = own.master == address_of(app["peers"][wanted.master])
    if not took:
        raise ApplianceError(f"the server should be the {wanted} but says {own.role if own else 'nothing'}")


# -- snapshots, for backup and restore ---------------------------------------------------------


def fresh_snapshot(app, timeout=600):
    """A new, consistent RDB snapshot in dump.rdb: BGSAVE, wait until LASTSAVE moves past the
    time before it. Works on the primary and on a replica (which saves its replicated data)."""
    before = int(cli(app, "LASTSAVE"))
    deadline = time.monotonic() + timeout
    while cli(app, "BGSAVE", "SCHEDULE", check=False) is None:  # one already running
        if time.monotonic() > deadline:
            raise ApplianceError("BGSAVE was refused until the timeout")
        time.sleep(0.5)
    while int(cli(app, "LASTSAVE")) <= before:
        if time.monotonic() > deadline:
            raise ApplianceError(f"no snapshot within {timeout} s (INFO persistence says why)")
        time.sleep(0.2)
    status = parse_info(cli(app, "INFO", "persistence")).get("rdb_last_bgsave_status")
    if status != "ok":
        raise ApplianceError(f"the snapshot failed (rdb_last_bgsave_status: {status}; journalctl -t redis)")


def snapshot(app, dest, timeout=600):
    """``fresh_snapshot``, copied to ``dest`` (mode 0600)."""
    fresh_snapshot(app, timeout)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(DUMP, "rb") as src, os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out)
    return dest


def load_snapshot(app, source):
    """Replace the app's data by an RDB file (from ``snapshot``), on the primary: stop the
    server, put the file in place as dump.rdb, start; the replicas resynchronise by themselves. The
    data it replaces is kept as dump.rdb.minicl-replaced."""
    own = server(app)
    if own is not None and own.role == "replica":
        raise ApplianceError("this host is a replica: load the snapshot on the primary")
    tmp = f"{DUMP}.minicl-new"
    shutil.copyfile(source, tmp)
    os.chmod(tmp, 0o660)
    shutil.chown(tmp, "redis", "redis")
    systemctl("stop", SERVICE)  # it saves its data on the way: the file is replaced after
    if os.path.exists(DUMP):
        os.replace(DUMP, f"{DUMP}.minicl-replaced")
    os.replace(tmp, DUMP)
    systemctl("start", SERVICE)
    if not wait_ready(app, 120):
        raise ApplianceError(f"{SERVICE} does not answer after loading {source} (journalctl -t redis)")


# -- backup, restore, upgrade: through the shared modules ------------------------------------

SNAPSHOT_FILE = "dump.rdb"
REPLACED_DAYS = 7


def backup(app):
    """An RDB snapshot (BGSAVE, then dump.rdb streamed into restic: see appliances.backups)."""
    from minicl.appliances import backups

    size = os.path.getsize(DUMP) if os.path.exists(DUMP) else 0
    streams = [(SNAPSHOT_FILE, ["cat", DUMP])]
    return backups.take(
        app, size, f"a snapshot of {app['name']}", streams, prepare=lambda: fresh_snapshot(app)
    )


def list_backups(app):
    from minicl.appliances import backups

    return backups.list_report(app)


def restore(app, backup=None, database=None):  # pylint: disable=redefined-outer-name
    """Load a backup's snapshot on the primary (``load_snapshot``); the replicas resynchronise."""
    from minicl.appliances import backups

    report = Report(app["name"], "restore")
    if database is not None:
        raise ApplianceError("a Redis app has no databases to choose from: restore takes backup=ID only")
    own = server(app)
    if own is not None and own.role == "replica":
        report.check(False, "this host is a replica, which replicates the primary: restore on the primary")
        return report
    entry = backups.find(app, backup)
    tmp = f"{DUMP}.minicl-restoring"
    source = backups.stream(app, entry, SNAPSHOT_FILE)
    try:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source.stdout, out)
        if source.wait() != 0:
            raise ApplianceError(
                f"restic dump of backup {entry['id']} failed: {source.stderr.read().decode().strip()}"
            )
        load_snapshot(app, tmp)
    finally:
        source.stdout.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    report.check(True, f"{app['name']} restored from backup {entry['id']}")
    report.data["backup"] = entry["id"]
    return report


def cleanup(app):
    """Backups beyond retention, and the data a restore replaced once it is a week old."""
    from minicl.appliances import backups

    report = Report(app["name"], "cleanup")
    removed = backups.prune_beyond_retention(app, report)
    replaced = f"{DUMP}.minicl-replaced"
    old = os.path.exists(replaced) and os.path.getmtime(replaced) < time.time() - REPLACED_DAYS * 86400
    if old:
        os.remove(replaced)
    report.check(
        True, f"the data a restore replaced over {REPLACED_DAYS} days ago: {'removed' if old else 'none'}"
    )
    report.data.update(backups_removed=removed, replaced_removed=bool(old))
    return report


def upgrade(app):
    from minicl.appliances import upgrades

    return upgrades.upgrade(sys.modules[__name__], app)


def downgrade(app):
    from minicl.appliances import upgrades

    return upgrades.downgrade(sys.modules[__name__], app)


# -- verbs --------------------------------------------------------------------------------


def _replicas(info):
    """{address: {state, offset, lag}} of the replicas a primary's INFO lists."""
    found = {}
    for key, value in info.items():
        if re.fullmatch(r"slave\d+", key):
            fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            found[fields.get("ip")] = fields
    return found


def check_health(app):
    report = Report(app["name"], "check_health")
    own = server(app) if running() else None
    if not report.check(
        own is not None and cli(app, "PING", check=False) == "PONG", f"{SERVICE} answers PING"
    ):
        return report
    report.data["role"] = own.role
    report.lines.append(f"info this host is a {own.role}")
    if own.role == "replica":
        master = peer_at(app, own.master) or own.master
        report.check(own.link == "up", f"replicating from {master}: link {own.link}")
        seconds = int(own.info.get("master_last_io_seconds_ago", "-1"))
        report.data["last_io_seconds"] = seconds
        theirs = server(app, own.master, timeout=PEER_TIMEOUT)
        if theirs is not None:
            lag = int(theirs.info.get("master_repl_offset", 0)) - int(own.info.get("slave_repl_offset", 0))
            report.data["lag_bytes"] = max(lag, 0)
            report.lines.append(f"info {max(lag, 0)} bytes behind the primary, last contact {seconds} s ago")
    else:
        replicas = _replicas(own.info)
        report.data["replicas"] = {}
        for peer in sorted(app["peers"]):
            row = next((replicas[ip] for ip in app["peers"][peer] if ip in replicas), None)
            if row is None:
                seen = server(app, address_of(app["peers"][peer]), timeout=PEER_TIMEOUT)
                said = "not connected" if seen is None or seen.role == "replica" else "ALSO A PRIMARY"
                report.check(False, f"replica {peer}: {said}")
                continue
            lag = int(own.info.get("master_repl_offset", 0)) - int(row.get("offset", 0))
            report.data["replicas"][peer] = {
                "state": row.get("state"),
                "lag_bytes": lag,
                "lag_seconds": int(row.get("lag", 0)),
            }
            report.check(
                row.get("state") == "online",
                f"replica {peer}: {row.get('state')}, {lag} bytes and {row.get('lag')} s behind",
            )
    memory = parse_info(cli(app, "INFO", "memory"))
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    report.data.update(used_memory=used, maxmemory=limit)
    if limit:
        policy = memory.get("maxmemory_policy", "noeviction")
        fine = used < MEMORY_WARN_RATIO * limit or policy != "noeviction"
        report.check(
            fine,
            f"{used / limit:.0%} of maxmemory used ({memory.get('used_memory_human')} of "
            f"{memory.get('maxmemory_human')}, {policy})",
        )
    else:
        report.lines.append(f"info {memory.get('used_memory_human')} used, no maxmemory")
    persistence = parse_info(cli(app, "INFO", "persistence"))
    report.check(
        persistence.get("rdb_last_bgsave_status") == "ok",
        f"last snapshot: {persistence.get('rdb_last_bgsave_status')}",
    )
    usage = shutil.disk_usage(DATA_DIR)
    free = usage.free / usage.total
    report.data["disk_free_ratio"] = round(free, 3)
    report.check(
        free >= MIN_FREE_RATIO and usage.free > used,
        f"{free:.0%} of the data disk free ({DATA_DIR}; a snapshot needs about "
        f"{memory.get('used_memory_human')})",
    )
    from minicl.appliances import backups

    backups.check_age(app, report)
    return report


def test(app, wait=15):
    """On the primary: a key set and read back, then read on every replica; on a replica: a
    read, and a write refused."""
    report = Report(app["name"], "test")
    own = server(app)
    if not report.check(own is not None, f"{SERVICE} answers"):
        return report
    if own.role == "replica":
        report.check(cli(app, "PING", check=False) == "PONG", "a read on this replica")
        refused = cli(app, "SET", "minicl:test:refused", "x", check=False) is None
        report.check(refused, "a write on this replica is refused (read-only)")
        return report
    token = os.urandom(8).hex()
    key = f"minicl:test:{token}"
    cli(app, "SET", key, token, "EX", "300")
    report.check(cli(app, "GET", key) == token, f"a write and a read ({key})")
    deadline = time.monotonic() + wait
    pending = dict(app["peers"])
    while pending and time.monotonic() < deadline:
        for peer, ips in list(pending.items()):
            if cli(app, "GET", key, address=address_of(ips), timeout=PEER_TIMEOUT, check=False) == token:
                del pending[peer]
        if pending:
            time.sleep(0.3)
    for peer in sorted(app["peers"]):
        report.check(peer not in pending, f"replica {peer} has the key")
    cli(app, "DEL", key, check=False)
    return report


def monitor(app):
    """The server's live figures: clients, operations per second, memory, replication."""
    report = Report(app["name"], "monitor")
    info = parse_info(cli(app, "INFO"))
    figures = {
        "role": "primary" if info.get("role") == "master" else "replica",
        "connected_clients": int(info.get("connected_clients", 0)),
        "ops_per_sec": int(info.get("instantaneous_ops_per_sec", 0)),
        "used_memory": int(info.get("used_memory", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "evicted_keys": int(info.get("evicted_keys", 0)),
        "repl_offset": int(info.get("master_repl_offset", 0)),
        "keys": sum(int(parse_kv(v).get("keys", 0)) for k, v in info.items() if re.fullmatch(r"db\d+", k)),
    }
    report.data.update(figures)
    report.lines.append(
        f"info {figures['role']}: {figures['connected_clients']} clients, {figures['ops_per_sec']} ops/s, "
        f"{figures['keys']} keys, {info.get('used_memory_human')} used"
        + (f" of {info.get('maxmemory_human')}" if figures["maxmemory"] else "")
        + f", {figures['evicted_keys']} evicted"
    )
    if figures["role"] == "replica":
        master = peer_at(app, info.get("master_host")) or info.get("master_host")
        report.lines.append(
            f"info replicating from {master}: link {info.get('master_link_status')}, offset "
            f"{info.get('slave_repl_offset')}, last contact {info.get('master_last_io_seconds_ago')} s ago"
        )
    for address, row in sorted(_replicas(info).items()):
        lag = figures["repl_offset"] - int(row.get("offset", 0))
        report.lines.append(
            f"info replica {peer_at(app, address) or address}: {row.get('state')}, "
            f"{lag} bytes and {row.get('lag')} s behind"
        )
    return report


def parse_kv(text):
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def failover(app):
    """On a replica: make it the primary now (REPLICAOF NO ONE), record and publish the
    promotion so that later converges keep it, fence the old primary and repoint the other
    replicas when they answer, and say what to commit to cluster.json."""
    report = Report(app["name"], "failover")
    host = app["host"]
    own = server(app)
    if not report.check(own is not None, f"{SERVICE} answers on this host"):
        return report
    hosts = [host] + [h for h in app["hosts"] if h != host]
    if own.role == "primary":
        report.lines.append(f"info {host} is already the primary: nothing to do")
    else:
        previous = peer_at(app, own.master) or own.master
        epoch = int(time.time())
        cli(app, "REPLICAOF", "NO", "ONE")
        cli(app, "ACL", "SETUSER", f"{PROMOTED_USER}{epoch}", "off")
        write_file(marker_path(app), json.dumps({"epoch": epoch, "previous": previous}) + "\n", 0o644)
        write_files({CONF_FILE: render_conf(app, Decision("primary", epoch=epoch))})
        report.check(server(app).role == "primary", f"{host} is the primary (was a replica of {previous})")
        report.data.update(promoted_at=epoch, previous=previous, fenced=[], unreachable=[])
        me = address_of(app["addresses"])
        for peer, ips in sorted(app["peers"].items()):
            done = cli(
                app, "REPLICAOF", me, str(PORT), address=address_of(ips), timeout=PEER_TIMEOUT, check=False
            )
            if done is not None:
                report.data["fenced"].append(peer)
                report.lines.append(f"info {peer} now replicates from {host}")
            else:
                report.data["unreachable"].append(peer)
                report.lines.append(
                    f"info {peer} does not answer: when it is back, its next converge makes it a replica "
                    f"of {host} (until then, writes it takes are lost)"
                )
    report.data["cluster_json_hosts"] = hosts
    report.lines.append(
        f'info commit to cluster.json: "apps": {{"{app["name"]}": {{"hosts": {json.dumps(hosts)}, ...}}}}'
    )
    return report


def data_format(app):  # pylint: disable=unused-argument
    """The RDB format the installed server writes, which follows its major.minor version (7.0,
    7.2, ...): minicl.upgrade restores the safety backup when an upgrade that changed it is
    rolled back (an older server cannot read a newer RDB file)."""
    found = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"v=(\d+)\.(\d+)", found)
    return f"{match.group(1)}.{match.group(2)}" if match else None
