"""Backups of a PostgreSQL app: one dump per database (pg_dump's custom format, uncompressed so
that restic deduplicates and compresses it), streamed into restic (minicl.appliances.backups).

A restore loads a database's dump into a new database beside the live one, and only when that
has worked swaps the two (the live one is dropped after the swap): a failed restore leaves the
live database as it was. It runs on the primary; the standbys replicate it.
"""

import glob
import os
import shutil
import subprocess
import time

from minicl.appliances import ApplianceError, Report, backups
from minicl.appliances import postgresql as pg

RESTORING = "{db}_minicl_restoring"
REPLACED = "{db}_minicl_replaced"
REPLACED_DATA_DAYS = 7


def _database_size(db):
    return int(pg.psql(f"SELECT pg_database_size({pg.literal(db)})") or 0)


def backup(app):
    """One dump per database of the server (``pg_dump -Fc``, uncompressed) into one backup."""
    if not (pg.running() and pg.wait_ready(5)):
        backups.record(app, False)
        return Report(app["name"], "backup", ok=False, lines=[f"FAIL {pg.SERVICE} does not answer"])
    databases = pg.own_databases()
    need = sum(_database_size(db) for db in databases)
    streams = [(f"{db}.dump", [*pg.AS_POSTGRES, "pg_dump", "-Fc", "-Z0", "-d", db]) for db in databases]
    report = backups.take(app, need, f"a backup of {', '.join(databases) or 'no database'}", streams)
    report.data["databases"] = databases
    return report


def restore(app, backup=None, database=None):
    """Restore every database of a backup (``database``: only that one) on the primary."""
    report = Report(app["name"], "restore")
    recovery = pg.in_recovery()
    if not report.check(recovery is not None, f"{pg.SERVICE} answers"):
        return report
    if recovery:
        report.check(False, "this host is a standby, which replicates the primary: restore on the primary")
        return report
    entry = backups.find(app, backup)
    names = sorted(f[: -len(".dump")] for f in entry["files"] if f.endswith(".dump"))
    if database is not None:
        if database not in names:
            raise ApplianceError(
                f"backup {entry['id']} holds no database {database} (it holds: {', '.join(names)})"
            )
        names = [database]
    for db in names:
        started = time.monotonic()
        _restore_database(app, entry, db)
        report.check(True, f"{db} restored from backup {entry['id']} in {time.monotonic() - started:.1f} s")
    report.data.update(backup=entry["id"], databases=names)
    return report


def _restore_database(app, entry, db):
    owner = (app.get("databases") or {}).get(db, {}).get("owner") or "postgres"
    aside, replaced = RESTORING.format(db=db), REPLACED.format(db=db)
    backups.check_room(app, _database_size(db) if db in pg.own_databases() else 0,
                       f"restoring {db} beside the live database", pg.DATA_DIR)  # fmt: skip
    pg.psql(f"DROP DATABASE IF EXISTS {pg.ident(aside)}")
    pg.psql(f"CREATE DATABASE {pg.ident(aside)} OWNER {pg.ident(owner)}")
    source = backups.stream(app, entry, f"{db}.dump")
    load = subprocess.run(
        [*pg.AS_POSTGRES, "pg_restore", "--exit-on-error", "-d", aside],
        stdin=source.stdout, capture_output=True, text=True, check=False,
    )  # fmt: skip
    source.stdout.close()
    dumped = source.wait() == 0
    if load.returncode != 0 or not dumped:
        pg.psql(f"DROP DATABASE IF EXISTS {pg.ident(aside)}", check=False)
        why = load.stderr.strip() or source.stderr.read().decode(errors="replace").strip()
        raise ApplianceError(f"restoring {db} from backup {entry['id']} failed, {db} is as it was: {why}")
    if db in pg.own_databases():
        # Nobody may be connected to a database that is renamed: close the doors, then swap.
        pg.psql(f"ALTER DATABASE {pg.ident(db)} ALLOW_CONNECTIONS false")
        for _ in range(50):
            pg.psql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = {pg.literal(db)}"
            )
            if (
                pg.psql(f"ALTER DATABASE {pg.ident(db)} RENAME TO {pg.ident(replaced)}", check=False)
                is not None
            ):
                break
            time.sleep(0.1)
        else:
            pg.psql(f"ALTER DATABASE {pg.ident(db)} ALLOW_CONNECTIONS true")
            raise ApplianceError(f"{db} stayed in use; it is as it was (the restored copy is {aside})")
    pg.psql(f"ALTER DATABASE {pg.ident(aside)} RENAME TO {pg.ident(db)}")
    pg.psql(f"DROP DATABASE IF EXISTS {pg.ident(replaced)}")


def cleanup(app):
    """Backups beyond retention, replication slots of hosts no longer in the app, data folders
    replaced by a re-clone more than a week ago."""
    report = Report(app["name"], "cleanup")
    removed = backups.prune_beyond_retention(app, report)
    if pg.in_recovery() is False:
        wanted = {pg.slot_name(peer) for peer in app["peers"]}
        inactive = (
            "SELECT slot_name FROM pg_replication_slots WHERE NOT active AND slot_name LIKE 'minicl\\_%'"
        )
        slots = (pg.psql(inactive) or "").splitlines()
        unused = [slot for slot in slots if slot not in wanted]
        for slot in unused:
            pg.psql(f"SELECT pg_drop_replication_slot({pg.literal(slot)})")
        report.check(
            True, f"replication slots of hosts no longer in the app: {', '.join(unused) or 'none'} dropped"
        )
        report.data["slots_dropped"] = unused
    cutoff = time.time() - REPLACED_DATA_DAYS * 86400
    old = [d for d in glob.glob(f"{pg.DATA_DIR}.minicl-replaced-*") if os.path.getmtime(d) < cutoff]
    for folder in old:
        shutil.rmtree(folder)
    kept = len(glob.glob(f"{pg.DATA_DIR}.minicl-replaced-*"))
    report.check(True, f"data folders replaced by a re-clone over {REPLACED_DATA_DAYS} days ago: "
                       f"{len(old)} removed ({kept} younger kept)")  # fmt: skip
    report.data.update(backups_removed=removed, replaced_data_removed=old)
    return report
