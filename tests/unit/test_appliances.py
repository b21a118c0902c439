"""The appliance contract's generic parts: exporters declared by an appliance module."""

import json
import pathlib
import sys
import types

import pytest

from minicl import appliances, config, firewall, monitor

EXAMPLE = json.loads((pathlib.Path(__file__).parents[2] / "cluster.json.example").read_text())


@pytest.fixture
def kvstore(monkeypatch):
    """An appliance type of its own, as a later appliance (Redis) declares its exporter."""
    fake = types.ModuleType("minicl.appliances.kvstore")
    fake.PORT = 7000
    fake.EXPORTER_PACKAGE = "prometheus-kvstore-exporter"
    fake.EXPORTER_SERVICE = "prometheus-kvstore-exporter"
    fake.EXPORTER_PORT = 9777
    fake.EXPORTER_DEFAULTS_SECRET = True
    fake.render_exporter_defaults = lambda app: f'ARGS="--app={app["name"]}"\n'
    monkeypatch.setitem(sys.modules, "minicl.appliances.kvstore", fake)
    monkeypatch.setattr(appliances, "TYPES", (*appliances.TYPES, "kvstore"))
    plain = types.ModuleType("minicl.appliances.plain")  # an appliance without an exporter
    plain.PORT = 7100
    monkeypatch.setitem(sys.modules, "minicl.appliances.plain", plain)
    monkeypatch.setattr(appliances, "TYPES", (*appliances.TYPES, "plain"))
    data = json.loads(json.dumps(EXAMPLE))
    data["apps"]["cache"] = {"type": "kvstore", "hosts": ["beta", "watch"]}
    data["apps"]["misc"] = {"type": "plain", "hosts": ["watch"]}
    return config.Cluster(data)


def test_every_appliance_with_an_exporter_gets_one(kvstore):
    assert sorted(appliances.exporters()) == ["haproxy", "kvstore", "nginx", "postgresql", "redis"]
    assert appliances.exporter("plain") is None
    setup = appliances.exporter_setup(kvstore.apps_of("watch"))
    assert setup == [
        {
            "app": "cache",
            "package": "prometheus-kvstore-exporter",
            "service": "prometheus-kvstore-exporter",
            "defaults_file": "/etc/default/prometheus-kvstore-exporter",
            "defaults": 'ARGS="--app=cache"\n',
            "secret": True,
        }
    ]
    assert [s["app"] for s in appliances.exporter_setup(kvstore.apps_of("beta"))] == ["cache", "db"]


def test_exporter_ports_answer_cluster_hosts_only(kvstore):
    assert appliances.cluster_only_ports("kvstore") == [7000, 9777]
    assert appliances.cluster_only_ports("plain") == [7100]
    assert firewall.host_spec(kvstore, "watch").cluster_only_tcp == ["7000", "7100", "9777"]
    assert firewall.host_spec(kvstore, "beta").cluster_only_tcp == ["5432", "7000", "9187", "9777"]
    assert firewall.host_spec(kvstore, "alpha").cluster_only_tcp == ["5432", "9187"]


def test_the_monitor_scrapes_a_job_per_app_type(kvstore):
    files = monitor.render_app_targets_files(kvstore)
    assert sorted(files) == [
        "/etc/prometheus/minicl-app-haproxy.json",
        "/etc/prometheus/minicl-app-kvstore.json",
        "/etc/prometheus/minicl-app-nginx.json",
        "/etc/prometheus/minicl-app-postgresql.json",
        "/etc/prometheus/minicl-app-redis.json",
    ]
    assert json.loads(files["/etc/prometheus/minicl-app-kvstore.json"]) == [
        {"targets": ["198.51.100.12:9777"], "labels": {"instance": "beta", "app": "cache"}},
        {"targets": ["198.51.100.20:9777"], "labels": {"instance": "watch", "app": "cache"}},
    ]
    rules = [r for r in monitor.alert_rules(kvstore) if r["alert"] == "AppExporterDown"]
    assert [r["expr"] for r in rules] == [
        'up{job="postgresql"} == 0', 'up{job="redis"} == 0', 'up{job="nginx"} == 0', 'up{job="haproxy"} == 0',
        'up{job="kvstore"} == 0'
    ]  # fmt: skip
    assert "'systemctl status prometheus-kvstore-exporter'" in rules[4]["annotations"]["description"]
    assert "(port 9777)" in rules[4]["annotations"]["description"]
