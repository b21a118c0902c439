"""Which host of a PostgreSQL app is its primary, and fail-over: promotion, fencing, rejoining.

cluster.json names the primary only for the app's creation. After that the servers decide: the
primary is the server that answers, holds the app's data and is not in recovery; if two do (the
old primary came back after a fail-over), the one on the newest timeline wins, since a promotion
always starts a new timeline; cluster.json's order breaks a tie. A converge reads this on every
run (``placement``), so it never demotes a promoted standby and never makes a second primary: a
former primary is fenced and rejoins the new one as a standby, its old data kept aside.

Hosts see each other's servers as the replication role over TCP (the password every host of the
app derives alike): a server that lets it in holds the app's data. Fencing is a function the
primary creates, which only that role may call: it writes standby.signal (the server restarts
read-only) and ``minicl.fenced`` (its next converge re-clones it) into the data folder and stops
the server.
"""

import os
import shutil
import time
from dataclasses import dataclass

from minicl.appliances import ApplianceError, Report
from minicl.appliances import postgresql as pg
from minicl.files import read_file, write_file

PEER_TIMEOUT = 3
FENCED_MARK = "minicl.fenced"
FENCE_FUNCTION = "minicl_fence"
# pg_is_in_recovery, and the timeline a primary writes (0 on a standby).
STATE_SQL = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN 0 ELSE "
    "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
)


@dataclass
class Server:
    """What a host's PostgreSQL says about itself."""

    host: str
    recovery: bool
    timeline: int
    member: bool  # holds the app's data (its replication role exists)


def _parse(host, row, member):
    recovery, timeline = row.split("|")
    return Server(host, recovery == "t", int(timeline), member)


def local_server(app):
    """This host's server, or None if it does not answer."""
    row = pg.psql(STATE_SQL, check=False)
    if row is None:
        return None
    return _parse(app["host"], row, pg.holds_app_data())


def peer_sql(app, peer, sql):
    """Run SQL on a peer's server as the replication role; None if it does not answer or refuses."""
    for address in app["peers"][peer]:
        result = pg.run(
            ["psql", "-X", "-A", "-t", "-q", "-h", address, "-p", str(pg.PORT), "-U", pg.REPLICA_ROLE,
             "-d", "postgres", "-c", sql],
            env={**os.environ, "PGPASSWORD": pg.replica_password(app),
                 "PGCONNECT_TIMEOUT": str(PEER_TIMEOUT)},
            check=False,
        )  # fmt: skip
        if result.returncode == 0:
            return result.stdout.strip()
    return None


def peer_servers(app):
    """{peer: Server or None} of the app's other hosts."""
    found = {}
    for peer in sorted(app["peers"]):
        row = peer_sql(app, peer, STATE_SQL)
        found[peer] = _parse(peer, row, True) if row else None
    return found


def current_primary(app, servers):
    """The host whose server is the app's primary now (see the module's docstring), or None."""
    primaries = [s for s in servers if s and s.member and not s.recovery]
    if not primaries:
        return None
    return max(primaries, key=lambda s: (s.timeline, s.host == app["primary"])).host


@dataclass
class Placement:
    """What this host's server is to be: ``role`` primary or standby, ``upstream`` the host a
    standby follows, ``clone`` why its data is to be replaced by a clone of the upstream (empty
    if not), ``note`` what a person should know."""

    role: str
    upstream: str = ""
    clone: str = ""
    note: str = ""


def placement(app, local, peers):
    """Decide this host's part from what the servers say (``local``: this host's Server or None
    if it does not run; ``peers``: from ``peer_servers``)."""
    host = app["host"]
    primary = current_primary(app, [local, *peers.values()])
    if primary == host:
        return Placement("primary")
    fenced = os.path.exists(os.path.join(pg.DATA_DIR, FENCED_MARK))
    if primary is None:
        if local and local.member and local.recovery:
            upstream = following() or app["primary"]
            if fenced:
                return Placement("standby", upstream, note="fenced; no primary answers to rejoin")
            return Placement("standby", upstream, note=f"no primary answers (following {upstream})")
        holders = [p for p, s in peers.items() if s and s.member]
        if holders:
            raise ApplianceError(
                f"no primary of app {app['name']} answers, and its data is on {', '.join(holders)} "
                f"(standby): this host creates nothing. Promote a standby: "
                f"salt-call --local minicl_app.failover {app['name']} on {holders[0]}"
            )
        if host == app["primary"]:
            return Placement("primary", note="the app is created here")
        return Placement("standby", app["primary"], clone="a new standby",
                         note=f"the primary {app['primary']} does not answer yet")  # fmt: skip
    if local is None:
        clone = "" if pg.is_standby_data() and not fenced else "a new standby"
        return Placement("standby", primary, clone=clone)
    if local.member and not local.recovery:
        return Placement("standby", primary, clone=f"a former primary: {primary} is the primary now")
    if fenced:
        return Placement("standby", primary, clone=f"fenced at a fail-over: {primary} is the primary now")
    if not local.member or not local.recovery:
        return Placement("standby", primary, clone="a new standby")
    return Placement("standby", primary)


def following():
    """The host the standby configuration names (minicl writes it in a comment), or ''."""
    for line in (read_file(pg.CONF_FILE) or "").splitlines():
        if line.startswith(pg.FOLLOWING):
            return line[len(pg.FOLLOWING) :].strip()
    return ""


FENCE_SQL = f"""
CREATE OR REPLACE FUNCTION {FENCE_FUNCTION}() RETURNS text LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog AS $fence$
DECLARE dir text := current_setting('data_directory');
BEGIN
  IF pg_is_in_recovery() THEN RETURN 'a standby already'; END IF;
  EXECUTE format('COPY (SELECT 1 WHERE false) TO %L', dir || '/standby.signal');
  EXECUTE format('COPY (SELECT 1 WHERE false) TO %L', dir || '/{FENCED_MARK}');
  EXECUTE format('COPY (SELECT 1 WHERE false) TO PROGRAM %L',
                 format('(sleep 0.5; kill -INT $(head -1 %s/postmaster.pid)) >/dev/null 2>&1 &', dir));
  RETURN 'fenced';
END $fence$;
REVOKE ALL ON FUNCTION {FENCE_FUNCTION}() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {FENCE_FUNCTION}() TO {pg.REPLICA_ROLE};
"""


def fence_if_superseded(app):
    """Before this host's stopped server starts: if it was a primary and a peer is the primary on
    a newer timeline (a fail-over happened while it was away), fence it, so that it never starts
    as a second primary."""
    if not pg.has_data_dir() or pg.is_standby_data():
        return False
    control = pg.run(["runuser", "-u", "postgres", "--", f"{pg.BIN}/pg_controldata", pg.DATA_DIR])
    key = "Latest checkpoint's TimeLineID:"
    mine = next((int(line[len(key) :]) for line in control.stdout.splitlines() if line.startswith(key)), 0)
    me = Server(app["host"], False, mine, True)
    if current_primary(app, [me, *peer_servers(app).values()]) in (None, app["host"]):
        return False
    for mark in ("standby.signal", FENCED_MARK):
        write_file(os.path.join(pg.DATA_DIR, mark), "", 0o600)
        shutil.chown(os.path.join(pg.DATA_DIR, mark), "postgres", "postgres")
    return True


def primary_changes(app, local):
    """On the primary: what it lacks of the replication role, the fencing function and its
    standbys' slots, as {what: description}. Nothing to say before the server answers."""
    if local is None:
        return {}
    todo = {}
    if not local.member or not pg.replica_role_ok(app):
        todo["replication role"] = f"{pg.REPLICA_ROLE} (password derived from the deploy key)"
    if not local.member or not has_fence_function():
        todo["fencing"] = f"function {FENCE_FUNCTION}(), which the app's standbys call at a fail-over"
    slots = missing_slots(app)
    if slots:
        todo["replication slots"] = slots
    if synchronous_to_resume(app):
        todo["synchronous commits"] = "resumed: a standby streams from this host again"
    return todo


def apply_primary_changes(app, todo):
    """Make what ``primary_changes`` found (``todo``), as it found it: a standby that is
    reconnecting after a reload does not undo what was reported."""
    if "replication role" in todo:
        pg.set_replica_role(app)
    if "fencing" in todo:
        create_fence_function()
    create_slots(missing_slots(app))
    if "synchronous commits" in todo:
        pg.psql("ALTER SYSTEM RESET synchronous_standby_names")
        pg.psql("SELECT pg_reload_conf()")


# A promoted standby of a synchronous app with no standby of its own would make every commit wait
# until the old primary is back: the fail-over suspends synchronous commits (ALTER SYSTEM, which
# overrides minicl.conf) until a standby streams again.
SUSPENDED_SQL = (
    "SELECT count(*) FROM pg_file_settings WHERE name = 'synchronous_standby_names' "
    "AND sourcefile LIKE '%/postgresql.auto.conf' AND setting = ''"
)


def streaming_standbys():
    return int(pg.psql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") or 0)


def synchronous_suspended():
    return pg.psql(SUSPENDED_SQL) != "0"


def suspend_synchronous_commits():
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
    pg.psql("SELECT pg_reload_conf()")


def synchronous_to_resume(app):
    """Suspended, and a standby streams again (or the app is not synchronous any more)."""
    return synchronous_suspended() and (streaming_standbys() > 0 or not app.get("synchronous"))


def has_fence_function():
    return pg.psql(f"SELECT 1 FROM pg_proc WHERE proname = {pg.literal(FENCE_FUNCTION)}") == "1"


def create_fence_function():
    pg.psql(FENCE_SQL)


def missing_slots(app):
    """On the primary: the replication slots its standbys need that do not exist (slots are not
    replicated, so a promoted standby has none)."""
    have = set((pg.psql("SELECT slot_name FROM pg_replication_slots") or "").splitlines())
    return [pg.slot_name(peer) for peer in sorted(app["peers"]) if pg.slot_name(peer) not in have]


def create_slots(names):
    for name in names:
        pg.psql(f"SELECT pg_create_physical_replication_slot({pg.literal(name)})")


# -- the verb ------------------------------------------------------------------------------


def failover(app, wait=30):
    """On a standby: fence the primary if it answers (after it has sent this standby all it
    wrote), promote this server, and say what to commit to cluster.json."""
    report = Report(app["name"], "failover")
    local = local_server(app)
    if not report.check(local is not None, f"{pg.SERVICE} answers on this host"):
        return report
    if not local.recovery:
        report.check(False, "this host is the primary already: run failover on a standby")
        return report
    peers = peer_servers(app)
    old = current_primary(app, peers.values())
    if old:
        before = pg.psql("SELECT pg_last_wal_receive_lsn()")
        said = peer_sql(app, old, f"SELECT {FENCE_FUNCTION}()")
        report.check(said is not None, f"fenced the primary {old} ({said or 'the call failed'})")
        stopped = _wait(lambda: peer_sql(app, old, "SELECT 1") is None, wait)
        report.check(stopped, f"{old}'s server stopped; it restarts read-only and rejoins as a standby")
        # A stopping primary sends its standbys all it wrote; then their WAL receiver stops.
        _wait(lambda: pg.psql("SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'") == "0",
              wait)  # fmt: skip
        caught_up = _wait(
            lambda: pg.psql("SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()") == "t", wait
        )
        received = pg.psql(f"SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), {pg.literal(before)})")
        report.check(caught_up, f"replayed all the primary sent before it stopped ({received} bytes more)")
        if not report.ok:
            report.lines.append("info nothing was promoted: the old primary may still take writes")
            return report
    else:
        down = ", ".join(p for p, s in peers.items() if s is None) or "none"
        report.lines.append(
            f"info no primary answers (hosts not answering: {down}): nothing to fence. Transactions "
            "the old primary committed and had not sent here are not on this host. When it comes back, "
            "its next converge finds this host primary and makes it a standby (its data kept aside)."
        )
    promoted = pg.psql("SELECT pg_promote(true, 60)", check=False) == "t"
    if not report.check(promoted and local_server(app).recovery is False, "promoted this host to primary"):
        return report
    if app.get("synchronous") and not streaming_standbys():
        suspend_synchronous_commits()
        report.lines.append(
            "info synchronous commits are suspended until a standby streams from this host (the "
            "converge after that resumes them): meanwhile a commit does not wait for a standby"
        )
    hosts = [app["host"], *[h for h in app["hosts"] if h != app["host"]]]
    report.data.update(role="primary", previous_primary=old or "", hosts=hosts)
    report.lines.append(
        f'todo commit in cluster.json: "apps": {{"{app["name"]}": {{"hosts": {hosts} ...'.replace("'", '"')
        + " (until then runs keep this host primary; new hosts are cloned from it)"
    )
    return report


def _wait(probe, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.3)
    return False


def main(argv=None):
    """``python -m minicl.appliances.pgfailover fence-check APP_FILE``: run before the server
    starts (a systemd drop-in minicl installs); never keeps it from starting."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m minicl.appliances.pgfailover")
    parser.add_argument("command", choices=["fence-check"])
    parser.add_argument("app_file")
    args = parser.parse_args(argv)
    try:
        with open(args.app_file, encoding="utf-8") as f:
            app = json.load(f)
        if fence_if_superseded(app):
            print(f"minicl: another host of app {app['name']} is its primary now: this server starts "
                  "fenced (read-only); its next converge makes it a standby")  # fmt: skip
    except (OSError, ValueError, ApplianceError) as exc:
        print(f"minicl: fence check skipped: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
