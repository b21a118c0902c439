"""The PostgreSQL appliance's pure parts: what it writes for a primary and a standby."""

import json
import pathlib
import subprocess
import sys

import pytest

from minicl import appliances, config
from minicl.appliances import pgfailover as pgf
from minicl.appliances import postgresql as pg

EXAMPLE = json.loads((pathlib.Path(__file__).parents[2] / "cluster.json.example").read_text())


def app_of(host, **changes):
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["db"].update(changes)
    return config.Cluster(data).apps_of(host)["db"]


def test_primary_conf_has_no_standby_settings():
    text = pg.render_conf(app_of("alpha"), "alpha")
    assert "listen_addresses = '*'" in text and "wal_level = replica" in text
    assert "primary_conninfo" not in text and "synchronous_standby_names" not in text


def test_standby_conf_follows_the_primary_through_its_slot():
    text = pg.render_conf(app_of("beta"), "beta", upstream="alpha")
    assert "# following: alpha" in text
    assert ("primary_conninfo = 'host=198.51.100.11 port=5432 user=minicl_replica "
            "passfile=/var/lib/postgresql/.pgpass application_name=beta'") in text  # fmt: skip
    assert "primary_slot_name = 'minicl_beta'" in text
    assert "password" not in text.replace("passfile", "")


def test_synchronous_commits_wait_for_a_standby():
    assert "synchronous_standby_names = 'ANY 1 (*)'" in pg.render_conf(
        app_of("alpha", synchronous=True), "alpha"
    )


def test_hba_lets_only_the_app_hosts_replicate():
    text = pg.render_hba(app_of("alpha"))
    assert "host    replication  minicl_replica  198.51.100.12/32" in text
    assert "host    postgres     minicl_replica  198.51.100.12/32" in text  # the fail-over's questions
    assert "host    replication  minicl_replica  2001:db8:100::12/128" in text
    assert "198.51.100.20" not in text  # watch is a cluster host, not one of the app's
    assert "local   all          all                                     peer" in text
    assert " trust" not in text


def test_the_replication_password_is_derived_alike_and_changes_with_the_key(deploy_key):
    first = pg.replica_password(app_of("alpha"))
    assert first == pg.replica_password(app_of("beta")) and len(first) == 64
    assert pg.render_pgpass(app_of("beta")) == f"*:5432:*:minicl_replica:{first}\n"
    deploy_key.write_text("another key\n")
    assert pg.replica_password(app_of("alpha")) != first


def test_without_the_deploy_key_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(appliances.paths, "ETC_DIR", str(tmp_path))
    with pytest.raises(appliances.ApplianceError, match="run minicl-bootstrap with --deploy-key"):
        pg.replica_password(app_of("alpha"))


def test_slot_names_are_safe_identifiers():
    assert pg.slot_name("web-1") == "minicl_web_1"


def test_unknown_app_types_are_refused():
    with pytest.raises(appliances.ApplianceError, match="no appliance for apps of type 'mysql'"):
        appliances.module("mysql")


# -- who is the primary (pgfailover.placement) ---------------------------------------------


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pg, "DATA_DIR", str(tmp_path))
    monkeypatch.setattr(pg, "CONF_FILE", str(tmp_path / "minicl.conf"))
    return tmp_path


def server(host, recovery=False, timeline=1, member=True):
    return pgf.Server(host, recovery, timeline, member)


def test_the_app_is_created_on_its_first_host(data_dir):
    fresh = server("alpha", member=False)
    place = pgf.placement(app_of("alpha"), fresh, {"beta": None})
    assert (place.role, place.clone) == ("primary", "")
    beta = pgf.placement(app_of("beta"), server("beta", member=False), {"alpha": server("alpha")})
    assert (beta.role, beta.upstream, beta.clone) == ("standby", "alpha", "a new standby")


def test_a_standby_follows_the_primary(data_dir):
    place = pgf.placement(
        app_of("beta"), server("beta", recovery=True, timeline=0), {"alpha": server("alpha")}
    )
    assert (place.role, place.upstream, place.clone) == ("standby", "alpha", "")


def test_a_promoted_standby_stays_primary_while_cluster_json_names_the_old_one(data_dir):
    promoted = server("beta", timeline=2)
    assert pgf.placement(app_of("beta"), promoted, {"alpha": None}).role == "primary"
    # The old primary is back, not fenced, on the old timeline: the newer one wins.
    assert pgf.placement(app_of("beta"), promoted, {"alpha": server("alpha", timeline=1)}).role == "primary"
    old = pgf.placement(app_of("alpha"), server("alpha", timeline=1), {"beta": promoted})
    assert (old.role, old.upstream) == ("standby", "beta") and old.clone.startswith("a former primary")


def test_cluster_json_breaks_a_tie_of_timelines(data_dir):
    assert pgf.placement(app_of("alpha"), server("alpha"), {"beta": server("beta")}).role == "primary"
    assert pgf.placement(app_of("beta"), server("beta"), {"alpha": server("alpha")}).role == "standby"


def test_a_fenced_former_primary_is_cloned_again(data_dir):
    (data_dir / "minicl.fenced").write_text("")
    place = pgf.placement(
        app_of("alpha"), server("alpha", recovery=True, timeline=0), {"beta": server("beta", timeline=2)}
    )
    assert (place.role, place.upstream) == ("standby", "beta") and place.clone.startswith(
        "fenced at a fail-over"
    )


def test_a_standby_without_a_primary_keeps_following_and_creates_nothing(data_dir):
    (data_dir / "minicl.conf").write_text("# following: gamma\n")
    place = pgf.placement(app_of("beta"), server("beta", recovery=True, timeline=0), {"alpha": None})
    assert (place.role, place.upstream, place.clone) == ("standby", "gamma", "")
    assert "no primary answers" in place.note


def test_a_fresh_host_refuses_to_create_the_app_while_a_standby_holds_its_data(data_dir):
    with pytest.raises(
        appliances.ApplianceError, match=r"its data is on beta \(standby\).*minicl_app.failover db on beta"
    ):
        pgf.placement(
            app_of("alpha"),
            server("alpha", member=False),
            {"beta": server("beta", recovery=True, timeline=0)},
        )


def test_the_exporter_logs_in_as_prometheus_on_the_local_socket_without_password():
    exporter = appliances.exporter("postgresql")
    assert (exporter.package, exporter.service, exporter.port) == (
        "prometheus-postgres-exporter",
        "prometheus-postgres-exporter",
        9187,
    )
    assert exporter.defaults_file == "/etc/default/prometheus-postgres-exporter"
    text = exporter.defaults(app_of("beta"))
    assert 'DATA_SOURCE_NAME="user=prometheus host=/run/postgresql dbname=postgres sslmode=disable"\n' in text
    assert 'ARGS="--web.listen-address=:9187"\n' in text
    assert "password" not in text and not exporter.secret


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("", [("role prometheus (pg_monitor, for the exporter, peer authentication)",
               'CREATE ROLE "prometheus" LOGIN IN ROLE pg_monitor')]),
        ("f", [("role prometheus now in pg_monitor", 'GRANT pg_monitor TO "prometheus"')]),
        ("t", []),
    ],
)  # fmt: skip
def test_the_exporter_role_is_created_or_granted_pg_monitor(monkeypatch, answer, expected):
    asked = []
    monkeypatch.setattr(pg, "psql", lambda sql, database="postgres", check=True: asked.append(sql) or answer)
    assert pg.monitor_role_changes() == expected
    assert "pg_has_role(oid, 'pg_monitor', 'MEMBER')" in asked[0] and "'prometheus'" in asked[0]


def test_before_the_server_starts_a_superseded_primary_is_fenced(tmp_path, monkeypatch, deploy_key):
    monkeypatch.setattr(pg.paths, "APPS_DIR", str(tmp_path))
    monkeypatch.setattr(pg, "read_file", lambda path: None)
    app = app_of("alpha")
    files = pg.file_changes(app, "alpha")
    dropin = files["/etc/systemd/system/postgresql@15-main.service.d/minicl-fence.conf"]
    assert (
        f"ExecStartPre=-{sys.executable} -m minicl.appliances.pgfailover fence-check {tmp_path}/db/app.json"
        in dropin
    )
    assert "After=network-online.target" in dropin
    known = json.loads(files[f"{tmp_path}/db/app.json"])
    assert known == {"host": "alpha", "hosts": ["alpha", "beta"], "name": "db", "primary": "alpha",
                     "peers": {"beta": ["198.51.100.12", "2001:db8:100::12"]}}  # fmt: skip
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "app.json").write_text(files[f"{tmp_path}/db/app.json"])
    fenced = []
    monkeypatch.setattr(pgf, "fence_if_superseded", lambda app: fenced.append(app["name"]) or True)
    assert pgf.main(["fence-check", str(tmp_path / "db" / "app.json")]) == 0 and fenced == ["db"]
    assert pgf.main(["fence-check", str(tmp_path / "nowhere.json")]) == 0  # never keeps it from starting


def test_a_server_is_fenced_only_when_another_host_is_primary_on_a_newer_timeline(monkeypatch, tmp_path):
    monkeypatch.setattr(pg, "DATA_DIR", str(tmp_path))
    (tmp_path / "PG_VERSION").write_text("15\n")
    monkeypatch.setattr(pg, "run", lambda argv, **kw: subprocess.CompletedProcess(
        argv, 0, "Latest checkpoint's TimeLineID:       1\n", ""))  # fmt: skip
    monkeypatch.setattr(pgf.shutil, "chown", lambda *a: None)
    monkeypatch.setattr(pgf, "peer_servers", lambda app: {"beta": server("beta", timeline=1)})
    assert not pgf.fence_if_superseded(app_of("alpha"))  # same timeline: cluster.json's first wins
    monkeypatch.setattr(pgf, "peer_servers", lambda app: {"beta": server("beta", timeline=2)})
    assert pgf.fence_if_superseded(app_of("alpha"))
    assert (tmp_path / "standby.signal").exists() and (tmp_path / "minicl.fenced").exists()
    assert not pgf.fence_if_superseded(app_of("alpha"))  # a standby's data now: nothing to do


def test_only_settings_read_at_start_restart_the_server():
    standby = pg.render_conf(app_of("beta"), "beta", upstream="alpha")
    promoted = pg.render_conf(app_of("beta"), "beta")
    assert not pg.needs_restart(standby, promoted)  # a fail-over's new primary keeps its clients
    assert not pg.needs_restart(promoted, pg.render_conf(app_of("beta", synchronous=True), "beta"))
    assert pg.needs_restart(None, promoted)  # the first time
    assert pg.needs_restart(promoted, promoted.replace("max_wal_senders = 10", "max_wal_senders = 20"))
