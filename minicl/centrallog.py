"""Central logging (cluster.json ``logging``, the ``log`` role): every host's syslog-ng reads the
local journal and sends it over TLS (RFC 5425, mutual: certificates of the cluster's logging CA,
see ``minicl.logcerts``) to the log host, through a reliable disk buffer with flow control and
``minicl.logship``, which counts a batch delivered once the log host acknowledged it; the log
host stores each host's lines per day under LOG_DIR, drops files older than the retention
(systemd-tmpfiles), and before its syslog-ng stops stores all it acknowledged (``drain``).
Journald keeps logging locally as before.

    centrallog.settings(cluster)                 # the section, defaults applied (None without one)
    centrallog.log_host(cluster)                 # "vault", the host with the log role
    centrallog.render_syslog_ng(cluster, "alpha")   # /etc/syslog-ng/syslog-ng.conf
    centrallog.render_tmpfiles(cluster)          # the retention rule on the log host
    centrallog.write_metrics(...)                # the textfile metrics (timer, every minute)
    centrallog.drain(6514)                       # the log host's syslog-ng, before it stops
"""

import argparse
import ctypes
import ipaddress
import os
import socket
import subprocess
import sys
import time

from minicl import logship, paths
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
DRAIN_TABLE = "minicl_logdrain"  # nft table of the log host while its syslog-ng stops
DRAIN_SECONDS = 60  # how long a stopping log host waits to store what it acknowledged
SYS_PIDFD_GETFD = 438  # not in Python's os module
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
        f"stats-freq(0); {'stats-level(1); ' if host == server else ''}time-reopen({RECONNECT_SECONDS}); "
        "log-fifo-size(10000); "
        f"mark-freq({MARK_SECONDS});{'' if host == server else ' mark-mode(internal);'} }};",
        "",
        "source s_local { system(); internal(); };",
    ]
    if host == server:
        # A silent client's connection is kept 25 minutes (syslog-ng's default: 2): after a
        # network cut shorter than the client's patience (logship.ACK_TIMEOUT) what it had
        # sent meanwhile arrives on the same connection.
        listeners = " ".join(
            f'syslog(ip("{ip}") port({found["port"]}) transport("tls") {_tls(TRUSTED_CA)} '
            "max-connections(1000) log-iw-size(100000) "
            "tcp-keepalive-time(1200) tcp-keepalive-intvl(60) tcp-keepalive-probes(5));"
            for ip in cluster.host_ips(host)
        )
        # The folder is the name on the client's certificate, not what the line claims. syslog-ng
        # handles the last line of a connection that is closing without its TLS details: that
        # line is filed under the cluster host whose address sent it.
        sender = ['set("${.tls.x509_cn}" value("MINICL_SENDER"));'] + [
            f'set("{name}" value("MINICL_SENDER") '
            f'condition("${{MINICL_SENDER}}" eq "" and "${{SOURCEIP}}" eq "{ipaddress.ip_address(ip)}"));'
            for name in sorted(cluster.hosts)
            for ip in cluster.host_ips(name)
        ]
        sender.append('set("unknown" value("MINICL_SENDER") condition("${MINICL_SENDER}" eq ""));')
        lines += [
            f"source s_cluster {{ {listeners} }};",
            "rewrite r_sender { " + " ".join(sender) + " };",
            "",
            f'destination d_hosts {{ file("{LOG_DIR}/${{MINICL_SENDER}}/{day}.log" {file_options}); }};',
            f'destination d_own {{ file("{LOG_DIR}/{host}/{day}.log" {file_options} '
            "mark-mode(dst-idle)); };",
            "",
            "log { source(s_cluster); rewrite(r_sender); destination(d_hosts); flags(flow-control); };",
            "log { source(s_local); destination(d_own); flags(flow-control); };",
        ]
    else:
        buffer = (
            f"disk-buffer(reliable(yes) disk-buf-size({DISK_BUFFER_BYTES}) "
            f"mem-buf-size({MEMORY_BUFFER_BYTES}))"
        )
        options = {
            "host": log_address(cluster),
            "port": found["port"],
            "cert": HOST_CERT,
            "key": HOST_KEY,
            "ca": TRUSTED_CA,
        }
        pairs = " ".join(f'"{key}" "{value}"' for key, value in options.items())
        lines += [
            "",
            # syslog-ng's Python (Debian's python3) does not see minicl's venv: the logging
            # state installs minicl.logship there.
            f'python {{\nimport sys\nif "{logship.MODULE_DIR}" not in sys.path:\n'
            f'    sys.path.insert(0, "{logship.MODULE_DIR}")\n}};',
            f'destination {DESTINATION} {{ python(class("{logship.CLASS}") options({pairs}) '
            f"batch-lines(1000) batch-timeout(100) {buffer}); }};",
            "",
            f"log {{ source(s_local); destination({DESTINATION}); flags(flow-control); }};",
        ]
    return "\n".join(lines) + "\n"


def render_tmpfiles(cluster):
    """The log host's retention: systemd-tmpfiles (daily, systemd-tmpfiles-clean.timer) removes
    day files last written more than logging.retention ago. By the write time alone ("mM:"):
    by default tmpfiles also counts the access time, so a file read now and then would stay."""
    days = max(1, duration_seconds(settings(cluster)["retention"]) // 86400)
    return (
        "# Managed by minicl: cluster.json logging.retention (systemd-tmpfiles-clean.timer, daily).\n"
        f"d /var/log/minicl 0750 root adm -\nd {LOG_DIR} 0750 root adm mM:{days}d\n"
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


def render_drain_dropin(python, port):
    """The log host's syslog-ng.service drop-in: ``drain`` before syslog-ng stops, the port
    opened again once it has stopped (also after a crash)."""
    return (
        "# Managed by minicl: store what this log host acknowledged before syslog-ng stops.\n"
        f"[Service]\nExecStop={python} -m minicl.centrallog drain --port {port}\n"
        f"ExecStopPost={python} -m minicl.centrallog undrain\n"
        f"TimeoutStopSec={DRAIN_SECONDS + 30}\n"
    )


def queued_to_files(stats_text):
    """Messages syslog-ng read and has not yet written to a file, from ``syslog-ng-ctl stats``."""
    return _queued(stats_text, lambda fields: fields[0] == "dst.file") or 0


def _client_sockets(pid, port):
    """The client connections process ``pid`` (syslog-ng) holds on ``port``: our own copies of
    them (pidfd_getfd), each closed again after the caller's step."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            try:
                if (
                    sock.family in (socket.AF_INET, socket.AF_INET6)
                    and sock.type == socket.SOCK_STREAM
                    and sock.getsockname()[1] == port
                    and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                ):
                    yield sock
            except OSError:
                pass
            finally:
                sock.close()
    finally:
        os.close(pidfd)


def drain(port, timeout=DRAIN_SECONDS, poll=0.2):
    """The log host's syslog-ng is about to stop: refuse new connections to ``port``, end every
    client connection with a FIN (minicl.logship finishes what it was sending, then closes), and
    wait until syslog-ng has read each to its end (closed it) and written what it read. True
    when it has; a stop goes on either way."""
    ruleset = (
        f"table inet {DRAIN_TABLE} {{\n  chain input {{\n"
        "    type filter hook input priority -10; policy accept;\n"
        f"    tcp dport {port} tcp flags & (syn | ack) == syn drop\n  }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)
    pid = subprocess.run(
        ["systemctl", "show", "-P", "MainPID", "syslog-ng"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not pid.isdigit() or int(pid) == 0:
        return False
    start = time.monotonic()
    deadline, calm, left = start + timeout, 0, None
    try:
        for sock in _client_sockets(int(pid), port):
            try:
                sock.shutdown(socket.SHUT_WR)  # our copy shares the connection: a FIN
            except OSError:
                pass
        while time.monotonic() < deadline:
            left = sum(1 for _ in _client_sockets(int(pid), port))
            stats = subprocess.run(["syslog-ng-ctl", "stats"], capture_output=True, text=True, check=False)
            calm = calm + 1 if left == 0 and queued_to_files(stats.stdout) == 0 else 0
            if calm >= 2:
                print(f"every client connection read to its end ({time.monotonic() - start:.1f} s)")
                return True
            time.sleep(poll)
    except ProcessLookupError:
        return False  # syslog-ng is gone
    print(f"{left} client connections still open after {timeout} s", file=sys.stderr)
    return False


def undrain():
    """Accept clients' data again (after syslog-ng stopped)."""
    subprocess.run(["nft", "delete", "table", "inet", DRAIN_TABLE], capture_output=True, check=False)


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


def _queued(stats_text, wanted):
    """The sum of the "queued" counters of ``syslog-ng-ctl stats`` (CSV) whose fields are
    ``wanted``, or None when there is none."""
    total = None
    for line in stats_text.splitlines():
        fields = line.split(";")
        if len(fields) == 6 and fields[4] == "queued" and wanted(fields):
            total = (total or 0) + int(fields[5])
    return total


def queued_messages(stats_text):
    """Messages waiting for the log host, from ``syslog-ng-ctl stats`` (CSV), or None."""
    return _queued(stats_text, lambda fields: fields[1].startswith(DESTINATION))


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
    stopping = sub.add_parser(
        "drain", help="on the log host, before syslog-ng stops: store what was received"
    )
    stopping.add_argument("--port", type=int, required=True, help="the syslog-over-TLS port")
    sub.add_parser("undrain", help="on the log host, once syslog-ng stopped: accept clients' data again")
    args = parser.parse_args(argv)
    if args.command == "drain":
        drain(args.port)  # a stop goes on regardless: it only waited for what it could store
    elif args.command == "undrain":
        undrain()
    else:
        write_metrics(args.hosts.split(",") if args.hosts else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
