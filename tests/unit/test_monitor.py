"""The monitor role's configuration, computed from cluster.json."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest
import yaml

from minicl import config, monitor, paths

EXAMPLE = pathlib.Path(__file__).parents[2] / "cluster.json.example"


@pytest.fixture
def data():
    return json.loads(EXAMPLE.read_text())


def test_targets_are_every_host_by_name(data):
    data["hosts"]["gamma"] = {"ip": ["2001:db8:100::13"], "roles": ["base"]}
    targets = json.loads(monitor.render_node_targets(config.Cluster(data)))
    assert targets == [
        {"targets": ["198.51.100.11:9100"], "labels": {"instance": "alpha", "roles": "base"}},
        {"targets": ["198.51.100.12:9100"], "labels": {"instance": "beta", "roles": "base"}},
        {"targets": ["[2001:db8:100::13]:9100"], "labels": {"instance": "gamma", "roles": "base"}},
        {"targets": ["198.51.100.20:9100"], "labels": {"instance": "watch", "roles": "base,monitor"}},
    ]
    assert json.loads(monitor.render_monitor_targets(config.Cluster(data))) == [
        {"targets": ["198.51.100.20:9090"], "labels": {"instance": "watch", "roles": "base,monitor"}}
    ]


def test_prometheus_config(data):
    data["monitoring"] = {"scrape_interval": "15s", "retention": "90d"}
    cluster = config.Cluster(data)
    text = monitor.render_prometheus(cluster, "watch")
    assert text.startswith("# Prometheus on watch.example.org")
    parsed = yaml.safe_load(text)
    assert parsed["global"] == {
        "scrape_interval": "15s",
        "evaluation_interval": "15s",
        "external_labels": {"monitor": "watch"},
    }
    assert [job["job_name"] for job in parsed["scrape_configs"]] == ["node", "prometheus", "alertmanager"]
    assert parsed["scrape_configs"][0]["file_sd_configs"] == [{"files": [monitor.NODE_TARGETS_FILE]}]
    assert parsed["rule_files"] == [monitor.RULES_FILE]
    assert monitor.render_prometheus_defaults(cluster).endswith('ARGS="--storage.tsdb.retention.time=90d"\n')


def test_alert_timing_follows_the_config(data):
    data["monitoring"] = {"scrape_interval": "15s"}
    data["schedule"] = {"interval": "1h", "splay": "5m"}
    rules = {rule["alert"]: rule for rule in monitor.alert_rules(config.Cluster(data))}
    assert rules["HostDown"]["for"] == "60s"
    assert "> 11100" in rules["StateRunStale"]["expr"]  # 3 x 1h + 5m
    assert "for" not in rules["Watchdog"]


def test_every_alert_the_issue_names_exists(data):
    names = {rule["alert"] for rule in monitor.alert_rules(config.Cluster(data))}
    assert {
        "HostDown",
        "DiskAlmostFull",
        "InodesAlmostFull",
        "StateRunStale",
        "StateRunFailed",
        "ConfigError",
        "MailQueueStuck",
        "CheckFailing",
        "Watchdog",
    } <= names


def test_alertmanager_mails_admin_email_through_local_postfix(data):
    data["monitoring"] = {"scrape_interval": "10s"}
    cluster = config.Cluster(data)
    parsed = yaml.safe_load(monitor.render_alertmanager(cluster, "watch"))
    assert parsed["global"]["smtp_smarthost"] == "localhost:25"
    assert parsed["global"]["smtp_from"] == "alertmanager@watch.example.org"
    assert parsed["route"]["group_wait"] == "10s"
    assert [r["email_configs"][0]["to"] for r in parsed["receivers"]] == ["admins@example.org"] * 2
    heartbeat = parsed["route"]["routes"][0]
    assert heartbeat["matchers"] == ['alertname="Watchdog"'] and heartbeat["repeat_interval"] == "24h"
    assert data["smtp"]["password"] not in monitor.render_alertmanager(cluster, "watch")
    assert "--cluster.listen-address= " in monitor.render_alertmanager_defaults()


@pytest.mark.skipif(
    not shutil.which("promtool") or not shutil.which("amtool"),
    reason="promtool and amtool come with Debian's prometheus packages",
)
def test_configs_pass_promtool_and_amtool(data, tmp_path):
    cluster = config.Cluster(data)
    files = {
        "prometheus.yml": monitor.render_prometheus(cluster, "watch").replace(
            os.path.dirname(paths.PROMETHEUS_RULES), str(tmp_path)
        ),
        "minicl.rules.yml": monitor.render_rules(cluster),
        "alertmanager.yml": monitor.render_alertmanager(cluster, "watch"),
        "minicl-nodes.json": monitor.render_node_targets(cluster),
        "minicl-monitors.json": monitor.render_monitor_targets(cluster),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for command in (
        ["promtool", "check", "config", "prometheus.yml"],
        ["amtool", "check-config", "alertmanager.yml"],
    ):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package")
def test_alert_rules_fire_as_intended(data, tmp_path):
    """promtool's rule unit tests: the rules fire on the series they are meant for, and only then."""
    data["monitoring"] = {"scrape_interval": "1m"}
    data["schedule"] = {"interval": "1m", "splay": "30s"}  # stale after 210 s
    (tmp_path / "rules.yml").write_text(monitor.render_rules(config.Cluster(data)))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'up{job="node",instance="alpha"}', "values": "1 0 0 0 0 0"},
                    {"series": 'up{job="node",instance="beta"}', "values": "1x12"},
                    {
                        "series": 'minicl_run_last_timestamp_seconds{job="node",instance="beta"}',
                        "values": "0x12",
                    },
                    {
                        "series": 'minicl_check_ok{job="node",instance="beta",check="postfix"}',
                        "values": "1 0 0 0 0 0",
                    },
                    {
                        "series": 'minicl_check_ok{job="node",instance="beta",check="mail queue age"}',
                        "values": "0 0 0 0 0 0",
                    },
                    {
                        "series": 'minicl_check_ok{job="node",instance="beta",check="disk /"}',
                        "values": "0 0 0 0 0 0",
                    },
                    {
                        "series": 'node_filesystem_avail_bytes{job="node",instance="beta",mountpoint="/",fstype="ext4",'
                        'device="sda1"}',
                        "values": "5 5 5 5 5 5",
                    },
                    {
                        "series": 'node_filesystem_size_bytes{job="node",instance="beta",mountpoint="/",fstype="ext4",'
                        'device="sda1"}',
                        "values": "100 100 100 100 100 100",
                    },
                    {
                        "series": 'node_filesystem_readonly{job="node",instance="beta",mountpoint="/",fstype="ext4",'
                        'device="sda1"}',
                        "values": "0 0 0 0 0 0",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "HostDown", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "HostDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "job": "node", "instance": "alpha"},
                                "exp_annotations": {
                                    "summary": "alpha is down",
                                    "description": "The monitor has not reached the node exporter of alpha (port 9100) for "
                                    "240s: the host is off, off the network, or prometheus-node-exporter "
                                    "stopped. Log in and check 'systemctl status prometheus-node-exporter'.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "CheckFailing",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "node",
                                    "instance": "beta",
                                    "check": "postfix",
                                },
                                "exp_annotations": {
                                    "summary": "beta: check postfix fails",
                                    "description": "'salt-call --local minicl_checks.run' on beta gives the reason.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "MailQueueStuck",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "job": "node",
                                    "instance": "beta",
                                    "check": "mail queue age",
                                },
                                "exp_annotations": {
                                    "summary": "beta: mail is stuck in the queue",
                                    "description": "The mail queue age check fails on beta: 'salt-call --local minicl_mail.queue' "
                                    "there says why the relay does not take the mail.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "DiskAlmostFull",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": "node",
                                    "instance": "beta",
                                    "mountpoint": "/",
                                    "fstype": "ext4",
                                    "device": "sda1",
                                },
                                "exp_annotations": {
                                    "summary": "beta: / is almost full",
                                    "description": "Less than 10% of / (sda1) on beta is free (5%). Free space there before "
                                    "writes fail.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "7m",
                        "alertname": "StateRunStale",
                        "exp_alerts": [],
                    },  # stale from 4m, for 4m
                    {
                        "eval_time": "9m",
                        "alertname": "StateRunStale",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "critical", "job": "node", "instance": "beta"},
                                "exp_annotations": {
                                    "summary": "beta has not converged recently",
                                    "description": "minicl's last highstate on beta ended more than 210 s ago (3 schedule "
                                    "intervals plus the splay), or never was recorded. Is the minion's schedule "
                                    "running? Run 'salt-call --local state.apply' there and read its output.",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
