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
    assert [job["job_name"] for job in parsed["scrape_configs"]] == [
        "node",
        "postgresql",
        "redis",
        "nginx",
        "haproxy",
        "prometheus",
        "alertmanager",
    ]
    assert parsed["scrape_configs"][1]["file_sd_configs"] == [
        {"files": ["/etc/prometheus/minicl-app-postgresql.json"]}
    ]
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
        "MiniclFilesChanged",
        "MiniclUnsignedSource",
        "Watchdog",
        "AppExporterDown",
        "AppDown",
        "PostgreSQLReplicationBroken",
        "PostgreSQLReplicationLagging",
        "RedisReplicationBroken",
        "RedisReplicationLagging",
        "AppBackupStale",
        "AppBackupFailed",
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
@pytest.mark.parametrize("apps", [True, False])
def test_configs_pass_promtool_and_amtool(data, tmp_path, apps):
    if not apps:
        del data["apps"]
    else:  # two backup intervals: a "no backup yet" rule each
        data["apps"]["cache"]["backup"] = {"interval": "6h"}
    cluster = config.Cluster(data)
    files = {
        "prometheus.yml": monitor.render_prometheus(cluster, "watch").replace(
            os.path.dirname(paths.PROMETHEUS_RULES), str(tmp_path)
        ),
        "minicl.rules.yml": monitor.render_rules(cluster),
        "alertmanager.yml": monitor.render_alertmanager(cluster, "watch"),
        "minicl-nodes.json": monitor.render_node_targets(cluster),
        "minicl-monitors.json": monitor.render_monitor_targets(cluster),
        **{os.path.basename(path): text for path, text in monitor.render_app_targets_files(cluster).items()},
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for command in (
        ["promtool", "check", "config", "prometheus.yml"],
        ["amtool", "check-config", "alertmanager.yml"],
    ):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
        # promtool's lint (a rule twice with the same name and labels) fails with exit code 0.
        assert result.returncode == 0 and "FAILED" not in result.stdout + result.stderr, (
            result.stdout + result.stderr
        )


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


def test_app_targets_are_every_host_of_each_app_by_name(data):
    files = monitor.render_app_targets_files(config.Cluster(data))
    assert json.loads(files["/etc/prometheus/minicl-app-postgresql.json"]) == [
        {"targets": ["198.51.100.11:9187"], "labels": {"instance": "alpha", "app": "db"}},
        {"targets": ["198.51.100.12:9187"], "labels": {"instance": "beta", "app": "db"}},
    ]
    assert json.loads(files["/etc/prometheus/minicl-app-redis.json"]) == [
        {"targets": ["198.51.100.11:9121"], "labels": {"instance": "alpha", "app": "cache"}},
        {"targets": ["198.51.100.12:9121"], "labels": {"instance": "beta", "app": "cache"}},
    ]
    del data["apps"]
    assert monitor.render_app_targets_files(config.Cluster(data)) == {
        "/etc/prometheus/minicl-app-postgresql.json": "[]\n",  # the jobs stay, without targets
        "/etc/prometheus/minicl-app-redis.json": "[]\n",
        "/etc/prometheus/minicl-app-nginx.json": "[]\n",
        "/etc/prometheus/minicl-app-haproxy.json": "[]\n",
    }


def _filled(text, labels, value=""):
    """An annotation as Prometheus fills it, for the templates without functions."""
    for key, label in labels.items():
        text = text.replace("{{ $labels." + key + " }}", label)
    return text.replace("{{ $value }}", value)


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package")
def test_package_integrity_checks_have_their_own_alerts(data, tmp_path):
    """A changed file alerts after more than a checks interval (a package being upgraded while the
    check ran is verified again by the next run), an unsigned source at once; neither is also a
    CheckFailing."""
    data["monitoring"] = {"scrape_interval": "1m"}
    rules = {rule["alert"]: rule for rule in monitor.alert_rules(config.Cluster(data))}
    assert rules["MiniclFilesChanged"]["for"] == "540s"  # the 5 min checks interval and 4 scrapes
    (tmp_path / "rules.yml").write_text(monitor.render_rules(config.Cluster(data)))

    def fired(name, check):
        labels = {"job": "node", "instance": "beta", "check": check, **rules[name]["labels"]}
        annotations = {key: _filled(text, labels) for key, text in rules[name]["annotations"].items()}
        return [{"exp_labels": labels, "exp_annotations": annotations}]

    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'minicl_check_ok{job="node",instance="beta",check="packages verified"}',
                        "values": "0x12",
                    },
                    {
                        "series": 'minicl_check_ok{job="node",instance="beta",check="apt sources signed"}',
                        "values": "0x12",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "MiniclFilesChanged", "exp_alerts": []},
                    {
                        "eval_time": "9m",
                        "alertname": "MiniclFilesChanged",
                        "exp_alerts": fired("MiniclFilesChanged", "packages verified"),
                    },
                    {
                        "eval_time": "0m",
                        "alertname": "MiniclUnsignedSource",
                        "exp_alerts": fired("MiniclUnsignedSource", "apt sources signed"),
                    },
                    {"eval_time": "10m", "alertname": "CheckFailing", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool comes with Debian's prometheus package")
def test_app_alert_rules_fire_as_intended(data, tmp_path):
    """promtool's rule unit tests for the apps' rules, on series named and labelled as Debian 12's
    postgres and redis exporters and minicl's backup metrics give them."""
    data["monitoring"] = {"scrape_interval": "1m"}
    data["apps"]["db"]["backup"] = {"interval": "1h"}
    data["apps"]["cache"] = {"type": "redis", "hosts": ["beta", "watch"], "backup": {"interval": "1h"}}
    cluster = config.Cluster(data)
    (tmp_path / "rules.yml").write_text(monitor.render_rules(cluster))
    rules = {}
    for rule in monitor.alert_rules(cluster):
        rules.setdefault(rule["alert"], []).append(rule)

    def alert(name, labels, value="", index=0):
        """An expected alert of rule ``name`` (the ``index``-th of that name) with its labels."""
        rule = rules[name][index]
        labels = {**labels, **rule["labels"]}
        return {
            "exp_labels": labels,
            "exp_annotations": {
                key: _filled(text, labels, value) for key, text in rule["annotations"].items()
            },
        }

    def case(series, checks):
        return {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in series.items()],
            "alert_rule_test": [
                {"eval_time": at, "alertname": name, "exp_alerts": expected} for at, name, expected in checks
            ],
        }

    pg = 'job="postgresql",app="db",server="/run/postgresql:5432"'
    beta_streams = (
        f'{pg},instance="alpha",application_name="beta",client_addr="",slot_name="234",state="streaming"'
    )
    redis = 'job="redis",app="cache"'
    tests = [
        case(  # an exporter down; the app down
            {
                'up{job="postgresql",instance="beta",app="db"}': "1 0 0 0 0 0",
                f'pg_up{{{pg},instance="alpha"}}': "1 1 0 0 0 0 0",
                f'redis_up{{{redis},instance="watch"}}': "1x7",
            },
            [
                ("4m", "AppExporterDown", []),
                ("5m", "AppExporterDown", [alert("AppExporterDown", {"job": "postgresql", "instance": "beta", "app": "db"})]),
                ("5m", "AppDown", []),
                ("6m", "AppDown", [alert("AppDown", {"job": "postgresql", "instance": "alpha", "app": "db", "server": "/run/postgresql:5432"})]),
            ],
        ),
        case(  # beta stops streaming from alpha, the primary; alpha, the standby of no one, is no alert
            {
                f'pg_settings_in_hot_standby{{{pg},instance="alpha"}}': "0x8",
                f'pg_settings_in_hot_standby{{{pg},instance="beta"}}': "1x8",
                f"pg_stat_replication_pg_wal_lsn_diff{{{beta_streams}}}": "0 0 stale",
            },
            [
                ("5m", "PostgreSQLReplicationBroken", []),
                (
                    "6m",
                    "PostgreSQLReplicationBroken",
                    [
                        alert(
                            "PostgreSQLReplicationBroken",
                            {"job": "postgresql", "instance": "alpha", "app": "db", "server": "/run/postgresql:5432"},
                            index=1,  # the rule of standby beta
                        )
                    ],
                ),
            ],
        ),
        case(  # beta lags 100 MB behind for 5 minutes
            {f"pg_stat_replication_pg_wal_lsn_diff{{{beta_streams}}}": "0 100000000x8"},
            [("5m", "PostgreSQLReplicationLagging", []), ("6m", "PostgreSQLReplicationLagging", [
                {
                    "exp_labels": {"severity": "warning", "job": "postgresql", "instance": "alpha", "app": "db",
                                   "server": "/run/postgresql:5432", "application_name": "beta",
                                   "slot_name": "234", "state": "streaming"},
                    "exp_annotations": {
                        "summary": "db: the standby beta lags behind",
                        "description": "The standby beta of app db is 95.37MiB of WAL behind the primary alpha, and has "
                        "been more than 64 MiB behind for 5m: it does not keep up (its disk, the network, or long "
                        "queries on it). A fail-over to it now loses those writes. 'salt-call --local "
                        "minicl_app.check_health db' on the standby shows its replay lag.",
                    },
                }
            ])],
        ),
        case(  # the replica on watch loses its master beta; beta counts no replica; a lagging replica
            {
                f'redis_master_link_up{{{redis},instance="watch",master_host="198.51.100.12",master_port="6379"}}': "1 0 0 0 0 0",
                f'redis_connected_slaves{{{redis},instance="beta"}}': "1 0 0 0 0 0",
                f'redis_connected_slaves{{{redis},instance="watch"}}': "0x6",
                f'redis_instance_info{{{redis},instance="beta",role="master"}}': "1x6",
                f'redis_instance_info{{{redis},instance="watch",role="slave"}}': "1x6",
                f'redis_connected_slave_lag_seconds{{{redis},instance="beta",slave_ip="198.51.100.20",slave_port="6379",slave_state="online"}}': "0 30x8",
            },
            [
                ("5m", "RedisReplicationBroken", [alert("RedisReplicationBroken", {"job": "redis", "instance": "watch", "app": "cache", "master_host": "198.51.100.12", "master_port": "6379"})]),
                ("5m", "RedisReplicasMissing", [alert("RedisReplicasMissing", {"job": "redis", "instance": "beta", "app": "cache"}, "0")]),
                ("6m", "RedisReplicationLagging", [alert("RedisReplicationLagging", {"job": "redis", "instance": "beta", "app": "cache", "slave_ip": "198.51.100.20", "slave_port": "6379", "slave_state": "online"}, "30")]),
            ],
        ),
        case(  # backups every hour: alpha's last one at 0 s, beta never had one, alpha's last one failed
            {
                'minicl_app_backup_interval_seconds{job="node",instance="alpha",app="db"}': "3600x200",
                'minicl_app_backup_last_success_timestamp_seconds{job="node",instance="alpha",app="db"}': "0x200",
                'minicl_app_backup_interval_seconds{job="node",instance="beta",app="cache"}': "3600x200",
                'minicl_app_backup_failed{job="node",instance="alpha",app="db"}': "0 1",
            },
            [
                ("119m", "AppBackupStale", []),
                ("121m", "AppBackupStale", [
                    {
                        "exp_labels": {"severity": "critical", "job": "node", "instance": "alpha", "app": "db"},
                        "exp_annotations": {
                            "summary": "alpha: the last backup of db is old",
                            "description": "The last good backup of app db on alpha is 2h 1m 0s old, more than twice "
                            "its interval: scheduled backups do not succeed. 'salt-call --local minicl_app.backup db' "
                            "there takes one now and says what fails.",
                        },
                    },
                    alert("AppBackupStale", {"job": "node", "instance": "beta", "app": "cache"}, index=1),
                ]),
                ("0m", "AppBackupFailed", []),
                ("1m", "AppBackupFailed", [alert("AppBackupFailed", {"job": "node", "instance": "alpha", "app": "db"})]),
            ],
        ),
    ]  # fmt: skip
    (tmp_path / "tests.yml").write_text(
        yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert rules["AppBackupStale"][1]["annotations"]["summary"].endswith("no backup of {{ $labels.app }} yet")
    assert rules["AppBackupStale"][1]["for"] == "2h"
