"""The monitor role's configuration, computed from cluster.json: Prometheus scrapes every
host's node exporter, evaluates minicl's alert rules and hands alerts to a local Alertmanager,
which mails them to admin_email through the host's own Postfix (and so through the relay).

Timing comes from cluster.json: ``monitoring.scrape_interval`` (also the rule evaluation
interval; an alert fires after ``FOR_SCRAPES`` failed intervals) and ``schedule`` (a host whose
last highstate is older than 3 intervals plus the splay is stale).
"""

import ipaddress
import json

import yaml

from minicl import paths

NODE_EXPORTER_PORT = 9100
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093  # on loopback only: Prometheus on the same host is its only client
RULES_FILE = paths.PROMETHEUS_RULES
NODE_TARGETS_FILE = paths.PROMETHEUS_NODE_TARGETS
MONITOR_TARGETS_FILE = paths.PROMETHEUS_MONITOR_TARGETS
FOR_SCRAPES = 4
FULL_RATIO = 0.10  # disk and inodes: alert when less than this is free
STALE_RUNS = 3
HEARTBEAT_INTERVAL = "24h"
REPEAT_INTERVAL = "4h"
# Filesystems that can never fill up (or are read-only images) in node_exporter's metrics.
NOT_FILLING = "ramfs|squashfs|iso9660|nsfs|fuse.lxcfs"
# Checks with their own alert (disk/inode space from node_exporter, the mail queue).
OWN_ALERT_CHECKS = "disk .*|inodes .*|mail queue.*"


def _dump(data, header):
    return (
        f"# {header}\n# Managed by minicl from cluster.json; changes here are overwritten.\n"
        + yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=100)
    )


def _duration(seconds):
    return f"{seconds}s"


def scrape_address(ip, port):
    return f"[{ip}]:{port}" if ipaddress.ip_address(ip).version == 6 else f"{ip}:{port}"


def _targets(cluster, hosts, port):
    """file_sd targets: each host at its first address, labelled with its name."""
    return [
        {
            "targets": [scrape_address(cluster.host_ips(host)[0], port)],
            "labels": {"instance": host, "roles": ",".join(cluster.host_roles(host))},
        }
        for host in sorted(hosts)
    ]


def render_node_targets(cluster):
    return json.dumps(_targets(cluster, cluster.hosts, NODE_EXPORTER_PORT), indent=2) + "\n"


def render_monitor_targets(cluster):
    return json.dumps(_targets(cluster, cluster.monitor_hosts(), PROMETHEUS_PORT), indent=2) + "\n"


def render_prometheus(cluster, host):
    scrape = cluster.duration("monitoring", "scrape_interval")
    config = {
        "global": {
            "scrape_interval": scrape,
            "evaluation_interval": scrape,
            "external_labels": {"monitor": host},
        },
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"localhost:{ALERTMANAGER_PORT}"]}]}]
        },
        "rule_files": [RULES_FILE],
        "scrape_configs": [
            {"job_name": "node", "file_sd_configs": [{"files": [NODE_TARGETS_FILE]}]},
            {"job_name": "prometheus", "file_sd_configs": [{"files": [MONITOR_TARGETS_FILE]}]},
            {
                "job_name": "alertmanager",
                "static_configs": [
                    {"targets": [f"localhost:{ALERTMANAGER_PORT}"], "labels": {"instance": host}}
                ],
            },
        ],
    }
    return _dump(
        config,
        f"Prometheus on {cluster.fqdn(host)}: every host of cluster.json (targets in {NODE_TARGETS_FILE}).",
    )


def alert_rules(cluster):
    """minicl's alert rules, as Prometheus rule dicts."""
    scrape = cluster.seconds("monitoring", "scrape_interval")
    wait = _duration(FOR_SCRAPES * scrape)
    stale = STALE_RUNS * cluster.seconds("schedule", "interval") + cluster.seconds("schedule", "splay")
    free = f"{FULL_RATIO:.0%}"

    def rule(name, expr, summary, description, for_=wait, severity="critical"):
        found = {"alert": name, "expr": expr}
        if for_:
            found["for"] = for_
        found["labels"] = {"severity": severity}
        found["annotations"] = {"summary": summary, "description": description}
        return found

    return [
        rule(
            "HostDown",
            'up{job="node"} == 0',
            "{{ $labels.instance }} is down",
            "The monitor has not reached the node exporter of {{ $labels.instance }} (port "
            f"{NODE_EXPORTER_PORT}) for {wait}: the host is off, off the network, or "
            "prometheus-node-exporter stopped. Log in and check 'systemctl status prometheus-node-exporter'.",
        ),
        rule(
            "MonitorDown",
            'up{job=~"prometheus|alertmanager"} == 0',
            "{{ $labels.job }} on {{ $labels.instance }} is down",
            "The monitor's {{ $labels.job }} on {{ $labels.instance }} has not answered for " + wait + ".",
        ),
        rule(
            "DiskAlmostFull",
            f'node_filesystem_avail_bytes{{fstype!~"{NOT_FILLING}"}}'
            f" / node_filesystem_size_bytes < {FULL_RATIO}"
            " and node_filesystem_readonly == 0",
            "{{ $labels.instance }}: {{ $labels.mountpoint }} is almost full",
            "Less than "
            + free
            + " of {{ $labels.mountpoint }} ({{ $labels.device }}) on {{ $labels.instance }} "
            "is free ({{ $value | humanizePercentage }}). Free space there before writes fail.",
            severity="warning",
        ),
        rule(
            "InodesAlmostFull",
            f'node_filesystem_files_free{{fstype!~"{NOT_FILLING}"}} / node_filesystem_files < {FULL_RATIO}'
            " and node_filesystem_files > 0 and node_filesystem_readonly == 0",
            "{{ $labels.instance }}: {{ $labels.mountpoint }} is running out of inodes",
            "Less than "
            + free
            + " of the inodes of {{ $labels.mountpoint }} on {{ $labels.instance }} are free: "
            "look for directories with very many small files.",
            severity="warning",
        ),
        rule(
            "StateRunStale",
            f"time() - minicl_run_last_timestamp_seconds > {stale}"
            ' or (up{job="node"} == 1 unless on(instance) minicl_run_last_timestamp_seconds)',
            "{{ $labels.instance }} has not converged recently",
            f"minicl's last highstate on {{{{ $labels.instance }}}} ended more than {stale} s ago "
            f"({STALE_RUNS} schedule intervals plus the splay), or never was recorded. "
            "Is the minion's schedule running? "
            "Run 'salt-call --local state.apply' there and read its output.",
        ),
        rule(
            "StateRunFailed",
            "minicl_run_success == 0",
            "{{ $labels.instance }}: the last highstate had failures",
            "States failed in the last highstate on {{ $labels.instance }} (or nothing could render). "
            "Run 'salt-call --local state.apply' there to see why.",
            for_=None,
        ),
        rule(
            "ConfigError",
            "minicl_config_error_info == 1",
            "{{ $labels.instance }} cannot use the config repo",
            "{{ $labels.instance }} keeps running its last good config: {{ $labels.error }}",
            for_=None,
        ),
        rule(
            "MailQueueStuck",
            'minicl_check_ok{check=~"mail queue.*"} == 0',
            "{{ $labels.instance }}: mail is stuck in the queue",
            "The {{ $labels.check }} check fails on {{ $labels.instance }}: "
            "'salt-call --local minicl_mail.queue' there says why the relay does not take the mail.",
            for_=None,
        ),
        rule(
            "CheckFailing",
            f'minicl_check_ok{{check!~"{OWN_ALERT_CHECKS}"}} == 0',
            "{{ $labels.instance }}: check {{ $labels.check }} fails",
            "'salt-call --local minicl_checks.run' on {{ $labels.instance }} gives the reason.",
            for_=None,
        ),
        rule(
            "MetricsFileBroken",
            "node_textfile_scrape_error == 1",
            "{{ $labels.instance }}: the node exporter cannot read a textfile metrics file",
            "A file in /var/lib/prometheus/node-exporter on {{ $labels.instance }} does not parse, "
            "so minicl's run and check metrics from it are missing; "
            "'curl -s localhost:9100/metrics | grep textfile' there shows which.",
            severity="warning",
        ),
        rule(
            "Watchdog",
            "vector(1)",
            "minicl monitor heartbeat",
            "This alert always fires, so that the monitor mails once a day: if the daily heartbeat stops "
            "arriving, the monitor or its mail path is broken.",
            for_=None,
            severity="none",
        ),
    ]


def render_rules(cluster):
    return _dump(
        {"groups": [{"name": "minicl", "rules": alert_rules(cluster)}]},
        "minicl's alert rules (hosts, runs, config, mail, checks, heartbeat).",
    )


def render_alertmanager(cluster, host):
    scrape = cluster.seconds("monitoring", "scrape_interval")
    admin = cluster.data["admin_email"]
    config = {
        "global": {
            # The host's Postfix null client relays to admin_email with the cluster's credentials.
            "smtp_smarthost": "localhost:25",
            "smtp_from": f"alertmanager@{cluster.fqdn(host)}",
            "smtp_hello": cluster.fqdn(host),
            "smtp_require_tls": False,
        },
        "route": {
            "receiver": "admins",
            "group_by": ["alertname", "instance"],
            "group_wait": _duration(scrape),
            "group_interval": "5m",
            "repeat_interval": REPEAT_INTERVAL,
            "routes": [
                {
                    "matchers": ['alertname="Watchdog"'],
                    "receiver": "heartbeat",
                    "repeat_interval": HEARTBEAT_INTERVAL,
                }
            ],
        },
        "receivers": [
            {"name": "admins", "email_configs": [{"to": admin, "send_resolved": True}]},
            {"name": "heartbeat", "email_configs": [{"to": admin, "send_resolved": False}]},
        ],
    }
    return _dump(config, f"Alertmanager on {cluster.fqdn(host)}: alerts by mail to {admin}.")


def render_prometheus_defaults(cluster):
    """/etc/default/prometheus: read by the Debian init script and systemd unit."""
    return (
        "# Managed by minicl from cluster.json (monitoring.retention).\n"
        f'ARGS="--storage.tsdb.retention.time={cluster.duration("monitoring", "retention")}"\n'
    )


def render_alertmanager_defaults():
    # Without an empty cluster address, Alertmanager looks for peers and refuses public addresses.
    return (
        "# Managed by minicl: a single Alertmanager, reachable from this host only.\n"
        f'ARGS="--cluster.listen-address= --web.listen-address=127.0.0.1:{ALERTMANAGER_PORT}"\n'
    )
