"""The PostgreSQL appliance's pure parts: what it writes for a primary and a standby."""

import json
import pathlib

import pytest

from minicl import appliances, config
from minicl.appliances import postgresql as pg

EXAMPLE = json.loads((pathlib.Path(__file__).parents[2] / "cluster.json.example").read_text())


@pytest.fixture
def key(tmp_path, monkeypatch):
    path = tmp_path / "deploy.key"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n")
    monkeypatch.setattr(appliances.paths, "ETC_DIR", str(tmp_path))
    return path


def app_of(host, **changes):
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["db"].update(changes)
    return config.Cluster(data).apps_of(host)["db"]


def test_primary_conf_has_no_standby_settings():
    text = pg.render_conf(app_of("alpha"), "alpha")
    assert "listen_addresses = '*'" in text and "wal_level = replica" in text
    assert "primary_conninfo" not in text and "synchronous_standby_names" not in text


def test_standby_conf_follows_the_primary_through_its_slot():
    text = pg.render_conf(app_of("beta"), "beta")
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
    assert "host    replication  minicl_replica  2001:db8:100::12/128" in text
    assert "198.51.100.20" not in text  # watch is a cluster host, not one of the app's
    assert "local   all          all                                     peer" in text
    assert " trust" not in text


def test_the_replication_password_is_derived_alike_and_changes_with_the_key(key):
    first = pg.replica_password(app_of("alpha"))
    assert first == pg.replica_password(app_of("beta")) and len(first) == 64
    assert pg.render_pgpass(app_of("beta")) == f"*:5432:*:minicl_replica:{first}\n"
    key.write_text("another key\n")
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
