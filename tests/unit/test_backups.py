"""Backups of apps (minicl.appliances.backups): how restic's snapshots make backups, the room
check, the schedule's units, and the metrics a backup leaves."""

import json
import subprocess

import pytest

from minicl import appliances
from minicl.appliances import backups

APP = {"name": "db", "host": "alpha", "backup": {"interval": "6h", "keep": 2}}


def snapshot(short_id, backup_id, path):
    return {"short_id": short_id, "tags": ["app=db", f"backup={backup_id}"], "paths": [path]}


def test_snapshots_of_one_backup_make_one_backup_newest_first(monkeypatch):
    monkeypatch.setattr(backups, "snapshots", lambda app: [
        snapshot("a1", "20261201T010000Z", "/shop.dump"),
        snapshot("b1", "20261202T010000Z", "/shop.dump"),
        snapshot("a2", "20261201T010000Z", "/crm.dump"),
        {"short_id": "x", "tags": ["other"], "paths": ["/x"]},  # not minicl's: ignored
    ])  # fmt: skip
    assert backups.backups(APP) == [
        {"id": "20261202T010000Z", "files": ["shop.dump"], "snapshots": ["b1"]},
        {"id": "20261201T010000Z", "files": ["shop.dump", "crm.dump"], "snapshots": ["a1", "a2"]},
    ]
    assert backups.find(APP)["id"] == "20261202T010000Z"
    with pytest.raises(
        appliances.ApplianceError,
        match=r"no backup 1999 of app db here \(newest first: 20261202T010000Z, 20261201T010000Z\)",
    ):
        backups.find(APP, "1999")


def test_prune_forgets_the_snapshots_of_the_backups_beyond_keep(monkeypatch):
    monkeypatch.setattr(backups, "snapshots", lambda app: [
        snapshot(f"s{day}", f"202612{day:02d}T010000Z", "/shop.dump") for day in (1, 2, 3, 4)
    ])  # fmt: skip
    calls = []
    monkeypatch.setattr(backups, "restic", lambda app, *args, **kw: calls.append(args))
    assert backups.prune(APP, 2) == ["20261202T010000Z", "20261201T010000Z"]
    assert calls == [("forget", "--prune", "s2", "s1")]


def test_no_room_is_refused_naming_the_folder_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(backups.shutil, "disk_usage", lambda path: type("U", (), {"free": 100 * 2**20})())
    backups.check_room(APP, 30 * 2**20, "a backup", str(tmp_path))  # 30 + 64 MB margin fit in 100
    with pytest.raises(appliances.ApplianceError) as exc:
        backups.check_room(APP, 40 * 2**20, "a backup of shop", str(tmp_path))
    assert str(exc.value) == (
        f"not enough room for a backup of shop: it needs about 40.0 MB (+ 64.0 MB kept free) in {tmp_path}, "
        "which has 100.0 MB free. Free some space, or keep fewer backups (apps.db.backup.keep) and run "
        "minicl_app.cleanup db"
    )


def test_the_schedule_asks_every_quarter_hour_and_backs_up_when_due():
    units = backups.schedule_units(APP, "/opt/minicl/bin/salt-call")
    service = units["/etc/systemd/system/minicl-backup-db.service"]
    assert "ExecStart=/opt/minicl/bin/salt-call --local --retcode-passthrough minicl_app.backup db" in service
    assert "find /var/lib/minicl/apps/db/last-success -mmin -355 " in service  # 6 h less 5 min
    timer = units["/etc/systemd/system/minicl-backup-db.timer"]
    assert "OnUnitInactiveSec=15min" in timer and "OnBootSec=10min" in timer


def test_defaults_of_the_backup_settings():
    assert backups.settings({"name": "db"}) == (86400, 7)
    assert backups.settings(APP) == (6 * 3600, 2)


def test_a_backup_leaves_metrics_for_the_monitor(tmp_path, monkeypatch):
    monkeypatch.setattr(backups.paths, "APPS_DIR", str(tmp_path / "apps"))
    monkeypatch.setattr(backups.metrics, "TEXTFILE_DIR", str(tmp_path))
    written = []
    real = backups.metrics.write_backup
    monkeypatch.setattr(backups.metrics, "write_backup",
                        lambda *a, **kw: written.append(real(*a, directory=str(tmp_path), **kw)))  # fmt: skip
    backups.record(APP, False, now=1000.0)
    text = (tmp_path / "minicl_backup_db.prom").read_text()
    assert 'minicl_app_backup_failed{app="db"} 1.0' in text
    assert "minicl_app_backup_last_success_timestamp_seconds" not in text  # never succeeded
    backups.record(APP, True, now=2000.0)
    text = (tmp_path / "minicl_backup_db.prom").read_text()
    assert 'minicl_app_backup_failed{app="db"} 0.0' in text
    assert 'minicl_app_backup_interval_seconds{app="db"} 21600.0' in text
    assert 'minicl_app_backup_last_success_timestamp_seconds{app="db"}' in text


@pytest.mark.skipif(subprocess.run(["which", "restic"], capture_output=True).returncode != 0, reason="restic")
def test_a_stream_goes_in_and_comes_out_the_same(tmp_path, monkeypatch, deploy_key):
    monkeypatch.setattr(backups, "ROOT", str(tmp_path / "backups"))
    data = tmp_path / "data"
    data.write_bytes(bytes(range(256)) * 1000)
    backups.store(APP, "20261201T000000Z", "shop.dump", ["cat", str(data)])
    entry = backups.find(APP)
    assert entry["files"] == ["shop.dump"]
    out = backups.stream(APP, entry, "shop.dump")
    assert out.stdout.read() == data.read_bytes() and out.wait() == 0
    assert "RESTIC_PASSWORD" not in json.dumps(entry)
    with pytest.raises(appliances.ApplianceError, match="false"):
        backups.store(APP, "20261202T000000Z", "broken.dump", ["sh", "-c", "echo half; exit 1", "false"])
    assert [b["id"] for b in backups.backups(APP)] == ["20261201T000000Z"]  # the broken one is gone


@pytest.mark.skipif(subprocess.run(["which", "restic"], capture_output=True).returncode != 0, reason="restic")
def test_backups_stay_readable_when_the_deploy_key_changes(tmp_path, monkeypatch, deploy_key):
    monkeypatch.setattr(backups, "ROOT", str(tmp_path / "backups"))
    backups.store(APP, "20261201T000000Z", "shop.dump", ["echo", "the data"])
    kept = tmp_path / "backups" / "db" / "minicl-password"
    assert oct(kept.stat().st_mode & 0o777) == "0o600"
    deploy_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\na new key\n")
    entry = backups.find(APP)  # opened: the new password was added with the kept one
    out = backups.stream(APP, entry, "shop.dump")
    assert out.stdout.read() == b"the data\n" and out.wait() == 0
    assert kept.read_text() == backups.password(APP)
    kept.unlink()  # a repository made elsewhere, with another key, and no password kept
    deploy_key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nyet another key\n")
    with pytest.raises(
        appliances.ApplianceError, match="does not open with the password derived from the deploy key"
    ):
        backups.backups(APP)


def test_a_backup_checks_room_first_stores_every_stream_prunes_and_records(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        backups, "check_room", lambda app, need, what, folder: calls.append(("room", need, what))
    )
    monkeypatch.setattr(backups, "store", lambda app, backup_id, name, argv: calls.append(("store", name)))
    monkeypatch.setattr(
        backups, "prune", lambda app, keep: calls.append(("prune", keep)) or ["20260101T000000Z"]
    )
    monkeypatch.setattr(backups, "record", lambda app, ok: calls.append(("record", ok)))
    report = backups.take(APP, 2**20, "a backup of shop", [("shop.dump", ["pg_dump"]), ("crm.dump", ["pg_dump"])],
                          prepare=lambda: calls.append(("prepare",)))  # fmt: skip
    assert calls == [("room", 2**20, "a backup of shop"), ("prepare",), ("store", "shop.dump"),
                     ("store", "crm.dump"), ("prune", 2), ("record", True)]  # fmt: skip
    assert report.ok and report.lines[0].startswith(
        f"ok   backup {report.data['backup']}: shop.dump, crm.dump (1.0 MB"
    )
    assert report.lines[1] == "info removed the backups beyond the 2 kept: 20260101T000000Z"

    def no_room(app, need, what, folder):
        raise appliances.ApplianceError("not enough room")

    calls.clear()
    monkeypatch.setattr(backups, "check_room", no_room)
    with pytest.raises(appliances.ApplianceError):
        backups.take(APP, 2**40, "a backup of shop", [("shop.dump", ["pg_dump"])])
    assert calls == [("record", False)]  # nothing stored; the failure is in the metrics
