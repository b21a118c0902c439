"""Central logging (cluster.json ``logging``, the ``log`` role): every host's syslog-ng reads the
local journal and sends it over TLS (RFC 5425, mutual: certificates of the cluster's logging CA,
see ``minicl.logcerts``) to the log host, through a reliable disk buffer with flow control; the
log host stores each host's lines per day under LOG_DIR and drops files older than the retention
(systemd-tmpfiles). Journald keeps logging locally as before.

    centrallog.settings(cluster)                 # the section, defaults applied (None without one)
    centrallog.log_host(cluster)                 # "vault", the host with the log role
    centrallog.render_syslog_ng(cluster, "alpha")   # /etc/syslog-ng/syslog-ng.conf
    centrallog.render_tmpfiles(cluster)          # the retention rule on the log host
    centrallog.write_metrics(...)                # the textfile metrics (timer, every minute)
"""

import argparse
import ipaddress
import os
import subprocess
import sys
import time

from minicl import paths
from minicl.files import write_file
from minicl.schema import duration_seconds, schema

ROLE = "log"
CA_KEY = "logging-ca.key"  # at the top of the config repo: the logging CA's secret key
CA_CERT = "logging-ca.crt"  # beside it: the CA every host trusts for logging
DEFAULT_CA = "minicl"
SYSLOG_NG_CONF = "/etc/syslog-ng/syslog-ng.conf"
TLS_DIR = "/etc/syslog-ng/minicl"  # this host's key (0600, never leaves the host), cert, the CA
HOST_KEY = f"{TLS_DIR}/host.key"
HOST_CERT = f"{TLS_DIR}/host.crt"
TRUSTED_CA = f"{TLS_DIR}/ca.crt"
LOG_DIR = "/var/log/minicl/hosts"  # on the log host: <host>/<YYYY-MM-DD>.log
TMPFILES_CONF = "/etc/tmpfiles.d/minicl-logging.conf"
METRICS_FILE = "minicl_logging.prom"
METRICS_UNIT = "minicl-log-metrics"
DESTINATION = "d_loghost"
DISK_BUFFER_BYTES = 256 * 1024**2  # per host: an outage of hours at a busy host's rate
MEMORY_BUFFER_BYTES = 8 * 1024**2
RECONNECT_SECONDS = 5  # syslog-ng's time-reopen: how soon a client tries the log host again
MARK_SECONDS = 60  # a destination idle this long gets a "-- MARK --" line: silence means a fault
SILENCE_SECONDS = 4 * MARK_SECONDS  # no line for this long (metrics a minute late included): alert

# What each app type can emit for the "tracing" strategy, on Debian 12 as packaged. None: it
# can; a text: why it cannot (shown when cluster.json selects tracing for such an app).
TRACING = {
    "postgresql": "PostgreSQL emits no traces (no OpenTelemetry support in Debian 12's postgresql-15)",
    "redis": "Redis emits no traces (no OpenTelemetry support in Debian 12's redis-server 7.0)",
    "nginx": "nginx in Debian 12 cannot emit traces (no OpenTelemetry module is packaged)",
    "haproxy": (
        "haproxy 2.6 in Debian 12 is built with OpenTracing but needs a tracer plugin "
        "(a shared library) that Debian does not ship, and speaks no OTLP"
    ),
}


def settings(cluster):
    """The logging section with its defaults, or None when cluster.json has none."""
    given = cluster.data.get("logging")
    if given is None:
        return None
    properties = schema()["properties"]["logging"]["properties"]
    found = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
    return {**found, **given}


def log_host(cluster):
    """The host with the log role, or None."""
    return next((host for host in cluster.hosts if ROLE in cluster.host_roles(host)), None)


def log_address(cluster):
    """The address clients send to: the log host's first IPv4 address, else its first one."""
    ips = sorted(cluster.host_ips(log_host(cluster)), key=lambda ip: ipaddress.ip_address(ip).version)
    return ips[0]


def cluster_only_ports(cluster, host):
    """The syslog-over-TLS port on the log host (cluster hosts only), else nothing."""
    found = settings(cluster)
    return [found["port"]] if found and ROLE in cluster.host_roles(host) else []


def certificate_names(cluster, host):
    """(common name, subjectAltNames) of ``host``'s certificate: the short name (the log host
    files lines under it), its FQDN and addresses (clients check the log host's address)."""
    return host, [f"IP:{ip}" for ip in cluster.host_ips(host)] + [f"DNS:{cluster.fqdn(host)}"]


def _tls(ca):
    return (
        f'tls(key-file("{HOST_KEY}") cert-file("{HOST_CERT}") ca-file("{ca}") peer-verify(required-trusted))'
    )


def render_syslog_ng(cluster, host):
    """The whole syslog-ng.conf of ``host`` (minicl owns it: Debian's default would copy the
    journal into /var/log files; the journal stays the local log)."""
    found = settings(cluster)
    server = log_host(cluster)
    day = "${S_YEAR}-${S_MONTH}-${S_DAY}"
    file_options = (
        'create-dirs(yes) dir-perm(0750) perm(0640) group("adm") dir-group("adm") '
        'template("${ISODATE} ${HOST} ${MSGHDR}${MSG}\\n")'
    )
    lines = [
        "# Managed by minicl (cluster.json logging): the journal travels to the log host over TLS.",
        "@version: 3.38",
        '@include "scl.conf"',
        "",
        f"options {{ chain-hostnames(no); use-dns(no); use-fqdn(no); keep-hostname(yes); "
        f"stats-freq(0); time-reopen({RECONNECT_SECONDS}); log-fifo-size(10000); "
        f"mark-freq({MARK_SECONDS}); }};",
        "",
        "source s_local { system(); internal(); };",
    ]
    if host == server:
        # A silent client's connection is kept 25 minutes (syslog-ng's default: 2): longer than a
        # client's TCP resends (about 15 minutes), so that after a network cut of minutes what the
        # client had sent meanwhile arrives, instead of a reset that loses it.
        listeners = " ".join(
            f'syslog(ip("{ip}") port({found["port"]}) transport("tls") {_tls(TRUSTED_CA)} '
            "max-connections(1000) log-iw-size(100000) "
            "tcp-keepalive-time(1200) tcp-keepalive-intvl(60) tcp-keepalive-probes(5));"
            for ip in cluster.host_ips(host)
        )
        lines += [
            f"source s_cluster {{ {listeners} }};",
            "",
            # The directory is the name on the client's certificate, not what the line claims.
            f'destination d_hosts {{ file("{LOG_DIR}/${{.tls.x509_cn}}/{day}.log" {file_options}); }};',
            f'destination d_own {{ file("{LOG_DIR}/{host}/{day}.log" {file_options} '
            "mark-mode(dst-idle)); };",
            "",
            "log { source(s_cluster); destination(d_hosts); flags(flow-control); };",
            "log { source(s_local); destination(d_own); flags(flow-control); };",
        ]
    else:
        buffer = (
            f"disk-buffer(reliable(yes) disk-buf-size({DISK_BUFFER_BYTES}) "
            f"mem-buf-size({MEMORY_BUFFER_BYTES}))"
        )
        lines += [
            "",
            f'destination {DESTINATION} {{ syslog("{log_address(cluster)}" port({found["port"]}) '
            f'transport("tls") {_tls(TRUSTED_CA)} {buffer} mark-mode(dst-idle)); }};',
            "",
            f"log {{ source(s_local); destination({DESTINATION}); flags(flow-control); }};",
        ]
    return "\n".join(lines) + "\n"


def render_tmpfiles(cluster):
    """The log host's retention: systemd-tmpfiles (daily, systemd-tmpfiles-clean.timer) removes
    day files older than logging.retention."""
    days = max(1, duration_seconds(settings(cluster)["retention"]) // 86400)
    return (
        "# Managed by minicl: cluster.json logging.retention (systemd-tmpfiles-clean.timer, daily).\n"
        f"d /var/log/minicl 0750 root adm -\nd {LOG_DIR} 0750 root adm {days}d\n"
    )


def render_metrics_units(python, hosts, is_log_host):
    """{path: text} of the timer (every minute) and service that write the textfile metrics."""
    args = f"--hosts {','.join(hosts)}" if is_log_host else ""
    return {
        f"/etc/systemd/system/{METRICS_UNIT}.service": (
            "[Unit]\nDescription=minicl: central logging metrics for the node exporter\n\n"
            f"[Service]\nType=oneshot\nExecStart={python} -m minicl.centrallog metrics {args}".rstrip()
            + "\n"
        ),
        f"/etc/systemd/system/{METRICS_UNIT}.timer": (
            "[Unit]\nDescription=minicl: central logging metrics every minute\n\n"
            "[Timer]\nOnBootSec=30s\nOnUnitActiveSec=60s\nAccuracySec=5s\n\n"
            "[Install]\nWantedBy=timers.target\n"
        ),
    }


def last_received(hosts, log_dir=LOG_DIR):
    """{host: time of the newest write into its day files} (0 when none yet)."""
    found = {}
    for host in hosts:
        folder = os.path.join(log_dir, host)
        try:
            found[host] = max(e.stat().st_mtime for e in os.scandir(folder) if e.is_file())
        except (OSError, ValueError):
            found[host] = 0
    return found


def queued_messages(stats_text):
    """Messages waiting for the log host, from ``syslog-ng-ctl stats`` (CSV), or None."""
    total = None
    for line in stats_text.splitlines():
        fields = line.split(";")
        if len(fields) == 6 and fields[1].startswith(DESTINATION) and fields[4] == "queued":
            total = (total or 0) + int(fields[5])
    return total


def render_metrics(up, queued, received, now):
    lines = [
        "# HELP minicl_syslog_ng_up 1 when syslog-ng answers syslog-ng-ctl.",
        "# TYPE minicl_syslog_ng_up gauge",
        f"minicl_syslog_ng_up {int(up)}",
    ]
    if queued is not None:
        lines += [
            "# HELP minicl_log_queued_messages Lines waiting in the disk buffer for the log host.",
            "# TYPE minicl_log_queued_messages gauge",
            f"minicl_log_queued_messages {queued}",
        ]
    if received is not None:
        lines += [
            "# HELP minicl_log_last_received_seconds When the log host last stored a line of the host.",
            "# TYPE minicl_log_last_received_seconds gauge",
            *(f'minicl_log_last_received_seconds{{host="{h}"}} {t:.0f}' for h, t in sorted(received.items())),
        ]
    lines.append(f"minicl_log_metrics_timestamp_seconds {now:.0f}")
    return "\n".join(lines) + "\n"


def write_metrics(hosts=None, textfile_dir=paths.TEXTFILE_DIR):
    stats = subprocess.run(["syslog-ng-ctl", "stats"], capture_output=True, text=True, check=False)
    up = stats.returncode == 0
    queued = queued_messages(stats.stdout) if up else None
    text = render_metrics(up, queued, last_received(hosts) if hosts else None, time.time())
    write_file(os.path.join(textfile_dir, METRICS_FILE), text)


def alert_rules(cluster, rule, wait):
    """The logging alerts (``rule`` makes one, ``wait`` the usual for:)."""
    if settings(cluster) is None:
        return []
    return [
        rule(
            "LogsNotArriving",
            f"time() - minicl_log_last_received_seconds > {SILENCE_SECONDS}",
            "no log lines from {{ $labels.host }} for a while",
            f"The log host has stored no line from {{{{ $labels.host }}}} for more than {SILENCE_SECONDS} s "
            f"(a host with nothing to log sends a '-- MARK --' line every {MARK_SECONDS} s, so a quiet "
            "host is not the reason): its syslog-ng is down, cannot reach the log host, or its "
            "certificate is refused. Run 'syslog-ng-ctl stats' and 'journalctl -u syslog-ng' there.",
            "1m",
        ),
        rule(
            "SyslogNgDown",
            "minicl_syslog_ng_up == 0",
            "syslog-ng on {{ $labels.instance }} is down",
            "syslog-ng on {{ $labels.instance }} does not answer syslog-ng-ctl for " + wait + ": "
            "its lines stay in the local journal and do not reach the log host. "
            "Run 'systemctl status syslog-ng' there.",
            wait,
        ),
        rule(
            "LogBacklog",
            "minicl_log_queued_messages > 100000",
            "{{ $labels.instance }} has a log backlog",
            "More than 100000 lines of {{ $labels.instance }} wait for the log host (disk buffer): "
            "is the log host reachable? The buffer holds 256 MiB; when full, syslog-ng stops "
            "reading the journal (nothing is lost while the journal keeps it).",
            "15m",
        ),
    ]


def pillar(cluster, host, checkout=None):
    """``minicl:logging`` of ``host``, or None without a logging section. Only paths to the CA's
    key (in the config repo checkout, root-only on every host): never the key itself."""
    found = settings(cluster)
    if found is None or log_host(cluster) is None:
        return None
    cn, sans = certificate_names(cluster, host)
    view = {
        "settings": found,
        "log_host": log_host(cluster),
        "is_log_host": host == log_host(cluster),
        "hosts": sorted(cluster.hosts),
        "common_name": cn,
        "subject_alt_names": sans,
        "ca": found["ca"],
    }
    if found["ca"] == DEFAULT_CA:
        view["ca_cert_file"] = os.path.join(checkout, CA_CERT) if checkout else None
        view["ca_key_file"] = os.path.join(checkout, CA_KEY) if checkout else None
    else:
        view["ca_cert_file"] = paths.CLUSTER_CA
        view["ca_key_file"] = None
    return view


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minicl.centrallog")
    sub = parser.add_subparsers(dest="command", required=True)
    metrics = sub.add_parser("metrics", help="write the textfile metrics of central logging")
    metrics.add_argument("--hosts", help="on the log host: the cluster's hosts, comma-separated")
    args = parser.parse_args(argv)
    write_metrics(args.hosts.split(",") if args.hosts else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
