"""The monitor role's configuration, computed from cluster.json: Prometheus scrapes every
host's node exporter and the exporters of the apps (a job per app type, see
minicl.appliances), evaluates minicl's alert rules and hands alerts to a local Alertmanager,
which mails them to admin_email through the host's own Postfix (and so through the relay).

Timing comes from cluster.json: ``monitoring.scrape_interval`` (also the rule evaluation
interval; an alert fires after ``FOR_SCRAPES`` failed intervals) and ``schedule`` (a host whose
last highstate is older than 3 intervals plus the splay is stale).
"""

import json

import yaml

from minicl import acme, appliances, centrallog, paths, schedule
from minicl.appliances import backups, haproxy, nginx
from minicl.cluster import host_port
from minicl.schema import DURATION_UNITS

NODE_EXPORTER_PORT = 9100
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093  # on loopback only: Prometheus on the same host is its only client
RULES_FILE = paths.PROMETHEUS_RULES
NODE_TARGETS_FILE = paths.PROMETHEUS_NODE_TARGETS
MONITOR_TARGETS_FILE = paths.PROMETHEUS_MONITOR_TARGETS
APP_TARGETS_FILE = paths.PROMETHEUS_APP_TARGETS
FOR_SCRAPES = 4
FULL_RATIO = 0.10  # disk and inodes: alert when less than this is free
STALE_RUNS = 3
HEARTBEAT_INTERVAL = "24h"
REPEAT_INTERVAL = "4h"
# Filesystems that can never fill up (or are read-only images) in node_exporter's metrics.
NOT_FILLING = "ramfs|squashfs|iso9660|nsfs|fuse.lxcfs"
# Checks with their own alert (disk/inode space from node_exporter, the mail queue, package integrity).
OWN_ALERT_CHECKS = "disk .*|inodes .*|mail queue.*|packages verified|apt sources signed"
# The metric by which an app type's exporter says that it reaches the service.
UP_METRICS = {"postgresql": "pg_up", "redis": "redis_up", "nginx": "nginx_up", "haproxy": "haproxy_up"}
# Replication lag: a standby this far behind for LAG_FOR is lagging (a burst of writes is not).
PG_LAG_BYTES = 64 * 2**20  # WAL not replayed yet (the exporter of Debian 12 has no lag in seconds)
REDIS_LAG_SECONDS = 10  # since the replica last acknowledged; a replica acknowledges every second
LAG_FOR = "5m"
BACKUP_STALE_INTERVALS = 2  # a backup older than this many intervals is stale


def _dump(data, header):
    return (
        f"# {header}\n# Managed by minicl from cluster.json; changes here are overwritten.\n"
        + yaml.safe_dump(data, default_flow_style=False, sort_keys=False, width=100)
    )


def _duration(seconds):
    return f"{seconds}s"


def _targets(cluster, hosts, port):
    """file_sd targets: each host at its first address, labelled with its name."""
    return [
        {
            "targets": [host_port(cluster.host_ips(host)[0], port)],
            "labels": {"instance": host, "roles": ",".join(cluster.host_roles(host))},
        }
        for host in sorted(hosts)
    ]


def render_node_targets(cluster):
    return json.dumps(_targets(cluster, cluster.hosts, NODE_EXPORTER_PORT), indent=2) + "\n"


def render_monitor_targets(cluster):
    return json.dumps(_targets(cluster, cluster.monitor_hosts(), PROMETHEUS_PORT), indent=2) + "\n"


def app_targets_file(kind):
    return APP_TARGETS_FILE.format(kind=kind)


def render_app_targets(cluster, kind):
    """file_sd targets of the exporters of the apps of type ``kind``: each host of each app at its
    first address, labelled with the host (``instance``, as the node job) and the app."""
    port = appliances.exporter(kind).port
    targets = [
        {
            "targets": [host_port(cluster.host_ips(host)[0], port)],
            "labels": {"instance": host, "app": name},
        }
        for name, app in sorted(cluster.apps.items())
        if app["type"] == kind
        for host in sorted(app["hosts"])
    ]
    return json.dumps(targets, indent=2) + "\n"


def render_app_targets_files(cluster):
    """{file: text} of every app type with an exporter; an empty list for a type no app has, so
    that an app type's last app removed also leaves its job without targets."""
    return {app_targets_file(kind): render_app_targets(cluster, kind) for kind in appliances.exporters()}


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
            *(
                {"job_name": kind, "file_sd_configs": [{"files": [app_targets_file(kind)]}]}
                for kind in appliances.exporters()
            ),
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
        f"Prometheus on {cluster.fqdn(host)}: every host of cluster.json (targets in {NODE_TARGETS_FILE}) "
        "and the exporters of its apps.",
    )


def alert_rules(cluster):
    """minicl's alert rules, as Prometheus rule dicts."""
    scrape = cluster.seconds("monitoring", "scrape_interval")
    wait = _duration(FOR_SCRAPES * scrape)
    stale = STALE_RUNS * cluster.seconds("schedule", "interval") + cluster.seconds("schedule", "splay")
    free = f"{FULL_RATIO:.0%}"
    rollout_time = _duration(rollout_seconds(cluster))

    def rule(name, expr, summary, description, for_=wait, severity="critical"):
        return _rule(name, expr, summary, description, for_, severity)

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
            "MiniclUpdateFailed",
            "minicl_update_error_info == 1",
            "{{ $labels.instance }}: the pinned minicl failed there and was not kept",
            "minicl {{ $labels.commit }}, pinned by the config repo, failed its {{ $labels.stage }} on "
            "{{ $labels.instance }}: {{ $labels.error }}. The host keeps running its previous minicl "
            "and does not try that commit again until the pin changes: fix minicl and bump the pin, "
            "or pin the previous commit again.",
            for_=None,
        ),
        rule(
            "MiniclPackagesUpgradeFailed",
            "minicl_packages_upgrade_error_info == 1",
            "{{ $labels.instance }}: the upgrade to snapshot {{ $labels.snapshot }} failed "
            "({{ $labels.packages }})",
            "The {{ $labels.stage }} of the upgrade of {{ $labels.packages }} to snapshot "
            "{{ $labels.snapshot }} failed on {{ $labels.instance }}: {{ $labels.error }}. The host keeps "
            "its packages, and the rollout of that snapshot stops on every host. "
            "'salt-call --local minicl_upgrade.rehearse' there shows the details; a newer snapshot "
            "(a fixed package) starts the rollout again.",
            for_=None,
        ),
        rule(
            "MiniclRebootRequired",
            "minicl_packages_reboot_required == 1",
            "{{ $labels.instance }} needs a reboot",
            "An upgrade on {{ $labels.instance }} installed what takes effect only after a reboot (a "
            "kernel, microcode; needrestart says so). Reboot it when it suits you.",
            for_="1h",
            severity="warning",
        ),
        rule(
            "MiniclVersionsDiffer",
            "count(count by (version) (minicl_release_info)) > 1",
            "the hosts run different minicl versions",
            f"Hosts have run different minicl versions for longer than a rollout takes ({rollout_time}): "
            "a host could not update, waits for a canary, or was left behind. "
            "'count by (version, instance) (minicl_release_info)' on the monitor shows which.",
            for_=rollout_time,
            severity="warning",
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
            "MiniclFilesChanged",
            'minicl_check_ok{check="packages verified"} == 0',
            "{{ $labels.instance }}: installed files differ from their packages",
            "Files that packages installed on {{ $labels.instance }} (programs, libraries; not "
            "configuration files) differ from what their package shipped, are missing, or could not be "
            "verified: tampering, a failing disk, or an edit by hand. 'salt-call --local minicl_checks.run' "
            "there names them (check 'packages verified'), 'dpkg --verify' (or 'debsums -c') lists them "
            "all; 'apt-get install --reinstall <package>' puts a package's files back.",
            # Longer than a checks interval: a package being upgraded while the check ran is
            # verified again by the next run.
            for_=_duration(schedule.CHECKS_INTERVAL + FOR_SCRAPES * scrape),
        ),
        rule(
            "MiniclUnsignedSource",
            'minicl_check_ok{check="apt sources signed"} == 0',
            "{{ $labels.instance }}: apt may install unsigned packages",
            "An apt source of {{ $labels.instance }} is not checked against a signature ([trusted=yes], "
            "Trusted: yes, allow-insecure) or apt's configuration accepts unsigned repositories "
            "(Acquire::AllowInsecureRepositories, ...): whoever is between the host and the repository "
            "can give it packages. 'salt-call --local minicl_checks.run' there names the file and line "
            "(check 'apt sources signed').",
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
        *app_alert_rules(cluster),
        *centrallog.alert_rules(cluster, rule, wait),
    ]


def rollout_seconds(cluster):
    """How long a new minicl may take to reach every host: the canaries' soak time (if there are
    canaries), two schedule intervals plus the splay, and an hour to build and check it."""
    soak = cluster.seconds("rollout", "soak") if (cluster.data.get("rollout") or {}).get("canaries") else 0
    return soak + 2 * (cluster.seconds("schedule", "interval") + cluster.seconds("schedule", "splay")) + 3600


def _rule(name, expr, summary, description, for_, severity="critical", labels=None):
    found = {"alert": name, "expr": expr}
    if for_:
        found["for"] = for_
    found["labels"] = {"severity": severity, **(labels or {})}
    found["annotations"] = {"summary": summary, "description": description}
    return found


def _human_duration(seconds):
    """``seconds`` in the largest unit that divides it: "2d", "90m"."""
    unit = max((u for u, n in DURATION_UNITS.items() if seconds % n == 0), key=DURATION_UNITS.get)
    return f"{seconds // DURATION_UNITS[unit]}{unit}"


def app_alert_rules(cluster):
    """The apps' alert rules: an exporter or the app down, replication broken or lagging, a
    stale or failed backup (from minicl's textfile metrics of each host of the app)."""
    wait = _duration(FOR_SCRAPES * cluster.seconds("monitoring", "scrape_interval"))
    check = "'salt-call --local minicl_app.check_health {{ $labels.app }}'"
    rules = [
        _rule(
            "AppExporterDown",
            f'up{{job="{kind}"}} == 0',
            "{{ $labels.instance }}: the " + kind + " exporter of {{ $labels.app }} is down",
            f"The monitor has not reached {exporter.service} on {{{{ $labels.instance }}}} "
            f"(port {exporter.port}) for {wait}, so app {{{{ $labels.app }}}} is not watched there. "
            f"Log in and check 'systemctl status {exporter.service}'.",
            wait,
            labels={"exporter": exporter.service},  # one rule per type: told apart for promtool
        )
        for kind, exporter in appliances.exporters().items()
    ]
    rules.append(
        _rule(
            "AppDown",
            f'{{__name__=~"{"|".join(UP_METRICS.values())}"}} == 0',
            "{{ $labels.instance }}: app {{ $labels.app }} ({{ $labels.job }}) is down",
            "The {{ $labels.job }} exporter on {{ $labels.instance }} has had no answer from app "
            "{{ $labels.app }} for "
            + wait
            + ": the service is stopped, or refuses the exporter. "
            + check
            + " there says what fails.",
            wait,
        )
    )
    for name, app in sorted(cluster.apps.items()):
        if app["type"] == "postgresql":
            rules += _postgresql_replication_rules(name, app, wait, check)
        elif app["type"] == "redis":
            rules += _redis_replication_rules(name, app, wait, check)
    if any(app["type"] == "haproxy" for app in cluster.apps.values()):
        rules += _front_rules(wait, check)
    rules += [
        _rule(
            "PostgreSQLReplicationLagging",
            f"pg_stat_replication_pg_wal_lsn_diff > {PG_LAG_BYTES}",
            "{{ $labels.app }}: the standby {{ $labels.application_name }} lags behind",
            "The standby {{ $labels.application_name }} of app {{ $labels.app }} is "
            "{{ $value | humanize1024 }}B of WAL behind the primary {{ $labels.instance }}, and has been "
            f"more than {PG_LAG_BYTES // 2**20} MiB behind for {LAG_FOR}: it does not keep up (its disk, the "
            "network, or long queries on it). A fail-over to it now loses those writes. "
            + check
            + " on the standby shows its replay lag.",
            LAG_FOR,
            "warning",
        ),
        _rule(
            "RedisReplicationBroken",
            "redis_master_link_up == 0",
            "{{ $labels.app }}: the replica {{ $labels.instance }} has lost its master",
            "The Redis replica of app {{ $labels.app }} on {{ $labels.instance }} has had no link to its "
            "master ({{ $labels.master_host }}) for "
            + wait
            + ": it serves old keys, and a fail-over to it loses "
            "the writes since. " + check + " there, and the master's, say why.",
            wait,
        ),
        _rule(
            "RedisReplicationLagging",
            f"redis_connected_slave_lag_seconds > {REDIS_LAG_SECONDS}",
            "{{ $labels.app }}: a replica of {{ $labels.instance }} lags behind",
            "The replica {{ $labels.slave_ip }} of app {{ $labels.app }} has not acknowledged the writes of "
            "its master {{ $labels.instance }} for {{ $value }} s, and for more than "
            f"{REDIS_LAG_SECONDS} s for {LAG_FOR}. " + check + " on the replica shows its link.",
            LAG_FOR,
            "warning",
        ),
        _rule(
            "NginxConnectionsDropped",
            "rate(nginx_connections_accepted[5m]) - rate(nginx_connections_handled[5m]) > 0",
            "{{ $labels.instance }}: nginx of {{ $labels.app }} drops connections",
            "nginx on {{ $labels.instance }} (app {{ $labels.app }}) accepts connections it does not "
            "handle, for 5m: it is out of worker_connections or open files. "
            "'salt-call --local minicl_app.monitor {{ $labels.app }}' there shows the figures.",
            LAG_FOR,
            "warning",
        ),
        _rule(
            "NginxCertificateExpiring",
            acme.expiring_expr(nginx.METRIC_FAMILY),
            "{{ $labels.instance }}: the certificate of {{ $labels.app }}/{{ $labels.site }} expires soon",
            "The TLS certificate of site {{ $labels.site }} (app {{ $labels.app }}) on "
            "{{ $labels.instance }} expires in {{ $value | humanizeDuration }}. "
            '{{ if eq $labels.source "acme" }}minicl renews it well before (acme.renew_before, or a third '
            "of its lifetime): renewal fails. 'salt-call --local state.apply' there says why (the ACME "
            "server, or its challenge not reaching port 80 of this host).{{ else }}It is a file of the "
            "config repo (apps.{{ $labels.app }}.sites.{{ $labels.site }}.tls): commit a new certificate "
            'and key, or use tls: {"acme": true}.{{ end }}',
            None,
        ),
        _rule(
            "AppBackupStale",
            "time() - minicl_app_backup_last_success_timestamp_seconds > on(instance, app) group_left()"
            f" {BACKUP_STALE_INTERVALS} * minicl_app_backup_interval_seconds",
            "{{ $labels.instance }}: the last backup of {{ $labels.app }} is old",
            "The last good backup of app {{ $labels.app }} on {{ $labels.instance }} is "
            "{{ $value | humanizeDuration }} old, more than twice its interval: scheduled backups do not "
            "succeed. 'salt-call --local minicl_app.backup {{ $labels.app }}' there takes one now "
            "and says what fails.",
            None,
        ),
    ]
    # Never succeeded: the interval metric has existed for twice the interval with no success.
    for seconds in sorted({backups.settings(app)[0] for app in cluster.apps.values()}):
        rules.append(
            _rule(
                "AppBackupStale",
                f"minicl_app_backup_interval_seconds == {seconds}"
                " unless on(instance, app) minicl_app_backup_last_success_timestamp_seconds",
                "{{ $labels.instance }}: no backup of {{ $labels.app }} yet",
                "No backup of app {{ $labels.app }} on {{ $labels.instance }} has succeeded in the "
                f"{_human_duration(BACKUP_STALE_INTERVALS * seconds)} since backups were scheduled there "
                f"(every {_human_duration(seconds)}). "
                "'salt-call --local minicl_app.backup {{ $labels.app }}' there takes one now "
                "and says what fails.",
                _human_duration(BACKUP_STALE_INTERVALS * seconds),
                labels={"interval": _human_duration(seconds)},  # one rule per interval
            )
        )
    rules.append(
        _rule(
            "AppBackupFailed",
            "minicl_app_backup_failed == 1",
            "{{ $labels.instance }}: the scheduled backup of {{ $labels.app }} failed",
            "The last scheduled backup of app {{ $labels.app }} on {{ $labels.instance }} failed; the "
            "previous backups are kept. 'salt-call --local minicl_app.backup {{ $labels.app }}' there "
            "runs one now and says why it fails (often: not enough free space).",
            None,
        )
    )
    return rules


def _postgresql_replication_rules(name, app, wait, check):
    """Per host of the app: whichever other host is a primary (the running server says so, not
    cluster.json, so that these hold after a fail-over) lists it streaming in pg_stat_replication,
    where a standby is known by its application_name, its host name."""
    return [
        _rule(
            "PostgreSQLReplicationBroken",
            f'pg_settings_in_hot_standby{{app="{name}",instance!="{host}"}} == 0 unless on(app, instance) '
            f'pg_stat_replication_pg_wal_lsn_diff{{app="{name}",application_name="{host}",state="streaming"}}',
            f"{name}: {host} does not stream from the primary {{{{ $labels.instance }}}}",
            f"The primary of app {name} on {{{{ $labels.instance }}}} has had no streaming standby {host} "
            f"for {wait}: {host} does not get the writes, and a fail-over to it would lose them. {check} on "
            f"{host} says why (its PostgreSQL down, or refused by the primary: its journal tells).",
            wait,
            labels={"standby": host},
        )
        for host in app["hosts"]
        if len(app["hosts"]) > 1
    ]


def _redis_replication_rules(name, app, wait, check):
    """The master of the app has fewer replicas than the app's other hosts (the replica side of a
    broken link is RedisReplicationBroken)."""
    replicas = len(app["hosts"]) - 1
    if not replicas:
        return []
    return [
        _rule(
            "RedisReplicasMissing",
            f'redis_connected_slaves{{app="{name}"}} < {replicas}'
            f' and on(app, instance) redis_instance_info{{app="{name}",role="master"}}',
            f"{name}: {{{{ $labels.instance }}}} has {{{{ $value }}}} of its {replicas} replicas",
            f"Only {{{{ $value }}}} of the {replicas} replicas of app {name} are connected to its master on "
            f"{{{{ $labels.instance }}}} (for {wait}): the others do not get the writes. {check} on each "
            "host of the app says which one and why.",
            wait,
        )
    ]


def _front_rules(wait, check):
    """The haproxy apps: a backend server down, a certificate expiring, the address on no proxy or
    on two (from the proxies' textfile metrics: see minicl.appliances.haproxy)."""
    return [
        _rule(
            "FrontBackendServerDown",
            'haproxy_server_up{backend!~"minicl.*"} == 0',
            "{{ $labels.app }}: backend {{ $labels.backend }} server {{ $labels.server }} is down",
            "haproxy on {{ $labels.instance }} has found the server {{ $labels.server }} of backend "
            "{{ $labels.backend }} failing its health check for " + wait + ": it gets no requests (the "
            "other servers of the backend do, if any). " + check + " there lists every server's state.",
            wait,
        ),
        _rule(
            "FrontCertificateExpiring",
            acme.expiring_expr(haproxy.METRIC_FAMILY),
            "{{ $labels.instance }}: the certificate of {{ $labels.app }} expires soon",
            "The TLS certificate of the front {{ $labels.app }} on {{ $labels.instance }} expires in "
            "{{ $value | humanizeDuration }}, and minicl renews it well before (acme.renew_before, or a "
            "third of its lifetime): renewal fails. 'salt-call --local state.apply' there says why (the "
            "ACME server, or its challenge not reaching this proxy).",
            None,
        ),
        _rule(
            "FrontAddressNotHeld",
            "sum by (app) (minicl_front_address_held) == 0",
            "{{ $labels.app }}: no proxy holds the front's address",
            "No proxy of the front {{ $labels.app }} has held its address for " + wait + ": the front does "
            "not answer. Check keepalived and haproxy on each proxy (" + check + ").",
            wait,
        ),
        _rule(
            "FrontAddressHeldTwice",
            "sum by (app) (minicl_front_address_held) > 1",
            "{{ $labels.app }}: {{ $value }} proxies hold the front's address",
            "{{ $value }} proxies of the front {{ $labels.app }} have held its address for " + wait + ": "
            "they do not hear each other's VRRP adverts (the firewall, the network), and clients reach "
            "either. " + check + " on each says which holds it.",
            wait,
        ),
    ]


def render_rules(cluster):
    return _dump(
        {"groups": [{"name": "minicl", "rules": alert_rules(cluster)}]},
        "minicl's alert rules (hosts, runs, config, mail, checks, apps, heartbeat).",
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
