"""Central logging on systemd test hosts: a log host (role log) and a client from cluster.json's
"logging". A line written with logger on the client lands in the log host's per-host/day file;
only TLS with a certificate of the cluster's logging CA is accepted (a plain connection and a
self-signed certificate are refused, beside the same frame sent with the host's certificate);
the port answers cluster hosts only; with the log host's syslog-ng down and then the whole log
host rebooted, every numbered line written meanwhile arrives exactly once, and so does every
line of a stream written without a pause across a restart, a stop and a reboot of the log
host; with the client cut off, the log host's monitor fires LogsNotArriving for it alone, and
the line written meanwhile arrives once the path is back; syslog-ng stopped on the client fires
SyslogNgDown for it; a day file last written longer ago than the retention is removed, a more
recent one stays; a second converge changes nothing and shows no CA key; a bad logging section
is refused naming the field."""

import json
import re
from collections import Counter

import pytest

from minicl import centrallog, logcerts
from minicl_lab import probes
from minicl_lab.testhosts import GitServer

from .conftest import bootstrap_all, changed_states, cluster_config, dump, salt_call, wait_for

VAULT = ["203.0.113.150/24"]
ALPHA = ["203.0.113.151/24"]
GIT = ["203.0.113.169/24"]  # the config repo; also a host outside cluster.json
LOG_IP = "203.0.113.150"
PORT = 6514

CONFIG = cluster_config(
    {
        "vault": {"ip": [LOG_IP], "roles": ["base", "log", "monitor"]},
        "alpha": {"ip": ["203.0.113.151"], "roles": ["base"]},
    },
    logging={"retention": "7d"},
    monitoring={"scrape_interval": "5s", "retention": "1d"},
)

# Sends one RFC 5425 frame to the log host: over TLS with the given certificate (the log host's
# name checked against its address), or plain. Exit 0: sent and not refused within 2 s.
SEND = r"""
import socket, ssl, sys
ip, port, cert, key, ca, msg = sys.argv[1:]
data = msg.encode()
frame = str(len(data)).encode() + b" " + data
sock = socket.create_connection((ip, int(port)), timeout=5)
if cert != "plain":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    sock = ctx.wrap_socket(sock, server_hostname=ip)
try:
    sock.sendall(frame)
    sock.settimeout(2)
    if sock.recv(1) == b"":
        sys.exit("refused: closed")
except socket.timeout:
    sys.exit(0)
except (ssl.SSLError, OSError) as exc:
    sys.exit(f"refused: {exc}")
"""


@pytest.fixture(scope="module")
def ca_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logging-ca")
    key, cert = logcerts.make_ca(str(folder), "example.org")
    return {centrallog.CA_KEY: open(key).read(), centrallog.CA_CERT: open(cert).read()}


@pytest.fixture(scope="module")
def git_server(lab, deploy_key):
    """The config repo on this module's own addresses."""
    return GitServer(lab.add_host("git", GIT), deploy_key[1])


@pytest.fixture(scope="module")
def hosts(lab, git_server, deploy_key, ca_files):
    vault = lab.add_host("vault", VAULT)
    alpha = lab.add_host("alpha", ALPHA)
    outside = git_server.host
    git_server.commit(
        {"cluster.json": dump(CONFIG), "deploy.key": deploy_key[0], **ca_files}, "central logging"
    )
    bootstrap_all({"vault": vault, "alpha": alpha}, git_server, deploy_key)
    return vault, alpha, outside


def stored(vault, host="alpha"):
    """Every line the log host stored for ``host`` (all its day files)."""
    return vault.run(f"cat /var/log/minicl/hosts/{host}/*.log 2>/dev/null", check=False).stdout


def delivery(vault, client):
    """What the log host's and the client's syslog-ng say, for a failure's explanation."""
    return (
        f"{vault.unit_state('syslog-ng')}\n"
        + vault.journal("syslog-ng", lines=30)
        + client.journal("syslog-ng", lines=30)
        + client.run("syslog-ng-ctl stats", check=False).stdout
    )


def send(client, message, cert=centrallog.HOST_CERT, key=centrallog.HOST_KEY):
    return client.run(
        ["python3", "-c", SEND, LOG_IP, str(PORT), cert, key, centrallog.TRUSTED_CA, message], check=False
    )


def test_a_logger_line_reaches_the_log_hosts_file_for_the_host_and_day(hosts):
    vault, alpha, _ = hosts
    alpha.run(["logger", "-t", "minicl-test", "hello-from-alpha"])
    wait_for("the line on the log host", lambda: "hello-from-alpha" in stored(vault), timeout=60)
    files = vault.run("ls /var/log/minicl/hosts/alpha", check=False).stdout.split()
    assert files and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}\.log", f) for f in files), files
    line = next(line for line in stored(vault).splitlines() if "hello-from-alpha" in line)
    assert " alpha minicl-test" in line, line
    # The log host's own lines are filed under its name; local logging stays in the journal.
    assert wait_for("the log host's own lines", lambda: stored(vault, "vault"), timeout=30)
    assert "hello-from-alpha" in alpha.run(["journalctl", "-q", "-t", "minicl-test"]).stdout
    assert not alpha.exists("/var/log/syslog")


def test_only_tls_with_a_cluster_certificate_is_accepted(hosts):
    vault, alpha, outside = hosts
    alpha.run(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=alpha "
        "-keyout /root/self.key -out /root/self.crt 2>/dev/null"
    )
    plain = send(alpha, "<14>1 - beta forged - - - PLAIN-MARKER", cert="plain")
    forged = send(alpha, "<14>1 - beta forged - - - SELF-SIGNED-MARKER", "/root/self.crt", "/root/self.key")
    good = send(alpha, "<14>1 - alpha direct - - - CA-SIGNED-MARKER")
    assert good.returncode == 0, good.stderr
    assert forged.returncode != 0 and "refused" in forged.stderr, forged.stderr
    wait_for("the CA-signed frame stored", lambda: "CA-SIGNED-MARKER" in stored(vault), timeout=30)
    everything = vault.run("cat /var/log/minicl/hosts/*/*.log", check=False).stdout
    assert "PLAIN-MARKER" not in everything and "SELF-SIGNED-MARKER" not in everything
    assert plain.returncode != 0 or "PLAIN-MARKER" not in everything
    # Filed under the certificate's name, not the name the line claims.
    assert "beta" not in vault.run("ls /var/log/minicl/hosts", check=False).stdout.split()
    # The port answers the cluster's hosts only.
    assert alpha.can_connect(LOG_IP, PORT)
    assert not outside.can_connect(LOG_IP, PORT)


def test_nothing_written_while_the_log_host_is_down_is_lost(hosts):
    vault, alpha, _ = hosts
    count = 200
    vault.systemctl("stop", "syslog-ng")
    # Lines written once the client has dropped its connection wait in its disk buffer (the
    # lines in flight as the log host goes away: the next test).
    wait_for(
        "the client to see the log host gone",
        lambda: not alpha.run(f"ss -Htn dst {LOG_IP}:{PORT}", check=False).stdout.strip(),
        timeout=30,
    )
    for start in range(0, count, 50):
        script = "; ".join(
            f"logger -t minicl-outage outage-line-{i:04d}-end" for i in range(start, start + 50)
        )
        alpha.run(script)
    # The outage goes on through a reboot of the log host: syslog-ng comes back by itself.
    vault.reboot()
    assert wait_for(
        "every line after the outage",
        lambda: len(set(re.findall(r"outage-line-(\d{4})-end", stored(vault)))) >= count,
        timeout=120,
        explain=lambda: f"{stored(vault).count('-end')} stored\n" + delivery(vault, alpha),
    )
    found = re.findall(r"outage-line-(\d{4})-end", stored(vault))
    missing = sorted({f"{i:04d}" for i in range(count)} - set(found))
    assert sorted(found) == [f"{i:04d}" for i in range(count)], missing  # all there, each once


def test_no_line_is_lost_or_doubled_while_the_log_host_restarts_and_reboots(hosts):
    """Lines written without a pause across a restart, a stop and a reboot of the log host: the
    ones in flight at each instant too (minicl.logship sends a batch until the log host
    acknowledged it; the log host reads every connection to its end before syslog-ng stops)."""
    vault, alpha, _ = hosts
    count = 3000
    alpha.run(
        "systemd-run --unit minicl-test-stream --collect sh -c "
        f"'i=0; while [ $i -lt {count} ]; do logger -t minicl-stream stream-line-$(printf %05d $i)-end; "
        "i=$((i+1)); sleep 0.01; done'"
    )

    def written():
        return int(alpha.run("journalctl -q -t minicl-stream | wc -l", check=False).stdout or 0)

    wait_for("the first lines", lambda: written() > 300, timeout=60)
    vault.systemctl("restart", "syslog-ng")
    wait_for("more lines", lambda: written() > 900, timeout=60)
    vault.systemctl("stop", "syslog-ng")
    wait_for("more lines", lambda: written() > 1200, timeout=60)
    vault.systemctl("start", "syslog-ng")
    wait_for("more lines", lambda: written() > 1800, timeout=60)
    vault.reboot()
    wait_for("every line written", lambda: written() >= count, timeout=120)

    def numbers():
        return re.findall(r"stream-line-(\d{5})-end", stored(vault))

    wait_for(
        "every line on the log host",
        lambda: len(set(numbers())) >= count,
        timeout=120,
        explain=lambda: f"{len(set(numbers()))} of {count} stored\n" + delivery(vault, alpha),
    )
    # Each in the sender's folder (a closing connection's last line too: see r_sender).
    assert not vault.run("find /var/log/minicl/hosts -maxdepth 1 -type f", check=False).stdout
    found = Counter(numbers())
    doubled = sorted(n for n, times in found.items() if times > 1)
    assert not doubled, f"{len(doubled)} lines stored more than once: {doubled[:20]}\n" + delivery(
        vault, alpha
    )


# alpha's packets to the log host dropped, as a network cut would: the batch not acknowledged
# within logship.ACK_TIMEOUT is sent again on a new connection once the path is back.
CUT = (
    "nft add table inet minicl_test_cut && "
    "nft add chain inet minicl_test_cut output '{ type filter hook output priority -10; }' && "
    f"nft add rule inet minicl_test_cut output ip daddr {LOG_IP} tcp dport {PORT} drop"
)


def logs_not_arriving(vault):
    found = probes.prometheus_query(vault, 'ALERTS{alertname="LogsNotArriving",alertstate="firing"}')
    return sorted(labels["host"] for labels, _ in found)


def test_a_host_whose_lines_stop_arriving_alerts_and_catches_up(hosts):
    vault, alpha, _ = hosts

    def recent():  # every host's last line, at the monitor (after the reboot: its first scrapes)
        found = probes.prometheus_query(vault, "time() - minicl_log_last_received_seconds")
        ages = {labels["host"]: age for labels, age in found}
        return ages.keys() == {"alpha", "vault"} and max(ages.values()) < centrallog.SILENCE_SECONDS

    wait_for("the log host's metrics at its monitor", recent, timeout=120)
    assert logs_not_arriving(vault) == []
    alpha.run(CUT)
    try:
        alpha.run(["logger", "-t", "minicl-test", "written-while-cut-off"])
        # No line for 240 s (an idle host sends a MARK each minute), then 1 min: about 5-6 min.
        wait_for("LogsNotArriving for alpha", lambda: logs_not_arriving(vault) == ["alpha"], timeout=540)
    finally:
        alpha.run("nft delete table inet minicl_test_cut")
    # The next connection attempt comes within syslog-ng's time-reopen (5 s) plus connect's 10 s.
    wait_for(
        "the line written while cut off",
        lambda: "written-while-cut-off" in stored(vault),
        timeout=180,
        explain=lambda: alpha.run("ss -tni", check=False).stdout + alpha.run("syslog-ng-ctl stats").stdout,
    )


def test_syslog_ng_stopped_on_a_host_alerts(hosts):
    vault, alpha, _ = hosts

    def firing():
        found = probes.prometheus_query(vault, 'ALERTS{alertname="SyslogNgDown",alertstate="firing"}')
        return sorted(labels["instance"] for labels, _ in found)

    assert firing() == []
    alpha.systemctl("stop", "syslog-ng")
    try:
        # The metrics timer notices within a minute; then the rule's for: (a few scrapes).
        wait_for("SyslogNgDown for alpha", lambda: firing() == ["alpha"], timeout=150)
    finally:
        alpha.systemctl("start", "syslog-ng")


def test_day_files_older_than_the_retention_are_removed(hosts):
    vault, _, _ = hosts
    folder = "/var/log/minicl/hosts/alpha"
    # logging.retention is 7d; both files were just read (atime now): only the write time counts.
    vault.run(
        f"echo old > {folder}/2000-01-01.log && touch -m -d '8 days ago' {folder}/2000-01-01.log && "
        f"echo recent > {folder}/2000-01-02.log && touch -m -d '6 days ago' {folder}/2000-01-02.log && "
        f"cat {folder}/2000-01-01.log {folder}/2000-01-02.log"
    )
    vault.run("systemd-tmpfiles --clean")  # what systemd-tmpfiles-clean.timer runs each day
    left = vault.run(f"ls {folder}").stdout.split()
    assert "2000-01-01.log" not in left
    assert "2000-01-02.log" in left and len(left) >= 2, left  # and today's
    vault.run(f"rm {folder}/2000-01-02.log")


def test_a_second_converge_changes_nothing_and_shows_no_ca_key(hosts, ca_files):
    secret = ca_files[centrallog.CA_KEY].splitlines()[1]
    for host in hosts[:2]:
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}, changed_states(data)
        assert secret not in result.stdout + result.stderr
        code, data, result = salt_call(host, "state.apply", "test=True")
        assert code == 0 and secret not in result.stdout + result.stderr
    mode = hosts[1].run(["stat", "-c", "%a", centrallog.HOST_KEY]).stdout.strip()
    assert mode == "600"
    metrics = hosts[0].run("cat /var/lib/prometheus/node-exporter/minicl_logging.prom", check=False).stdout
    if not metrics:
        hosts[0].systemctl("start", "minicl-log-metrics.service")
        metrics = hosts[0].read("/var/lib/prometheus/node-exporter/minicl_logging.prom")
    assert 'minicl_log_last_received_seconds{host="alpha"}' in metrics and "minicl_syslog_ng_up 1" in metrics


def test_a_bad_logging_section_is_refused_naming_the_field(hosts, git_server):
    _, alpha, _ = hosts
    bad = json.loads(json.dumps(CONFIG))
    bad["hosts"]["vault"]["roles"] = ["base"]
    commit = git_server.commit({"cluster.json": dump(bad)}, "no log host")
    code, data, result = salt_call(alpha, "minicl.status")
    assert code == 0, result.stdout + result.stderr
    status = data["local"]
    assert status["bad_commit"] == commit and status["ok"] is False, status
    assert "logging: no host has the log role" in status["error"], status["error"]
