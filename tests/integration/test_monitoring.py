"""Monitoring end to end: two cluster hosts and a monitor host, bootstrapped from the config repo,
mail through a fake authenticated relay. The monitor scrapes every node exporter (with minicl's
run metrics), an outsider cannot; a stopped exporter, a failing check, a full filesystem and a bad
config push each produce their alert mail at the relay."""

import pytest

from minicl_lab import probes

from .conftest import (
    alert_mail,
    bootstrap_all,
    changed_states,
    cluster_config,
    dump,
    monitor_state,
    readable,
    salt_call,
    wait_for,
)

RELAY = ["198.51.100.160/24"]
HOSTS = {
    "alpha": ["198.51.100.161/24", "2001:db8:100::161/64"],
    "beta": ["198.51.100.162/24", "2001:db8:100::162/64"],
    "watch": ["198.51.100.169/24", "2001:db8:100::169/64"],
}
OUTSIDER = ["198.51.100.170/24", "2001:db8:100::170/64"]
USER, PASSWORD = "cluster@example.org", "relay-secret-Mon6"


def monitoring_config(**overrides):
    hosts = {
        name: {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}
        for name, addresses in HOSTS.items()
    }
    hosts["watch"]["roles"].append("monitor")
    data = cluster_config(
        hosts,
        smtp={"relay": "relay.example.org", "port": 587, "username": USER, "password": PASSWORD},
        ca_url="http://relay.example.org/ca.crt",
        monitoring={"scrape_interval": "1s", "retention": "1d"},
    )
    data.update(overrides)
    return dump(data)


@pytest.fixture(scope="module")
def cluster(lab, relay, git_server, deploy_key):
    commit = git_server.commit(
        {"cluster.json": monitoring_config(), "deploy.key": deploy_key[0]}, "monitoring"
    )
    hosts = {name: lab.add_host(name, addresses) for name, addresses in HOSTS.items()}
    for host in hosts.values():
        host.run("echo '198.51.100.160 relay.example.org' >> /etc/hosts")
    bootstrap_all(hosts, git_server, deploy_key)
    hosts["commit"] = commit
    return hosts


@pytest.fixture(scope="module")
def outsider(lab):
    return lab.add_host("outsider", OUTSIDER)


def test_nothing_left_to_do_after_bootstrap(cluster):
    for name in HOSTS:
        code, data, result = salt_call(cluster[name], "state.apply", "test=True")
        assert code == 0, result.stdout
        pending = {
            key: (value["comment"], value["changes"])
            for key, value in data["local"].items()
            if value["result"] is None or value["changes"]
        }
        assert pending == {}, name


def test_configs_pass_promtool_and_amtool(cluster):
    watch = cluster["watch"]
    for command in (
        "promtool check config /etc/prometheus/prometheus.yml",
        "promtool check rules /etc/prometheus/minicl.rules.yml",
        "amtool check-config /etc/prometheus/alertmanager.yml",
    ):
        result = watch.run(command, check=False)
        assert result.returncode == 0 and "SUCCESS" in result.stdout + result.stderr, (
            result.stdout + result.stderr
        )
    assert "--storage.tsdb.retention.time=1d" in watch.read("/etc/default/prometheus")
    assert PASSWORD not in watch.read("/etc/prometheus/alertmanager.yml")


def test_monitor_scrapes_every_host_with_run_metrics(cluster):
    watch = cluster["watch"]
    up = wait_for(
        "every node exporter up",
        lambda: (
            found
            if len(found := [m for m, v in probes.prometheus_query(watch, 'up{job="node"}') if v == 1]) == 3
            else None
        ),
        explain=lambda: monitor_state(watch),
    )
    assert sorted(m["instance"] for m in up) == ["alpha", "beta", "watch"]
    commits = wait_for(
        "the commit metric of every host",
        lambda: (
            found if len(found := probes.prometheus_query(watch, "minicl_config_commit_info")) == 3 else None
        ),
    )
    assert {m["instance"]: m["commit"] for m, _ in commits} == dict.fromkeys(
        ["alpha", "beta", "watch"], cluster["commit"]
    )
    runs = probes.prometheus_query(watch, "time() - minicl_run_last_timestamp_seconds")
    assert len(runs) == 3 and all(0 <= age < 600 for _, age in runs)
    assert {m["instance"] for m, v in probes.prometheus_query(watch, "minicl_run_success") if v == 1} == {
        "alpha",
        "beta",
        "watch",
    }
    assert len(probes.prometheus_query(watch, 'minicl_check_ok{check="ssh"} == 1')) == 3
    assert {
        m["instance"]
        for m, v in probes.prometheus_query(watch, 'up{job=~"prometheus|alertmanager"}')
        if v == 1
    } == {"watch"}


def test_textfile_metrics_are_readable_by_the_exporter(cluster):
    alpha = cluster["alpha"]
    listing = alpha.run("stat -c '%a %n' /var/lib/prometheus/node-exporter/minicl_*.prom").stdout.split("\n")
    assert listing[:3] == [
        "644 /var/lib/prometheus/node-exporter/minicl_checks.prom",
        "644 /var/lib/prometheus/node-exporter/minicl_release.prom",
        "644 /var/lib/prometheus/node-exporter/minicl_run.prom",
    ]
    run = alpha.read("/var/lib/prometheus/node-exporter/minicl_run.prom")
    assert f'minicl_config_commit_info{{commit="{cluster["commit"]}"}} 1.0' in run
    assert "minicl_config_fetch_ok 1.0" in run


def test_outsider_cannot_scrape(cluster, outsider):
    for name in ("alpha", "beta", "watch"):
        for ip in cluster[name].ips:
            assert cluster["watch"].can_connect(ip, 9100)  # the control: the port is open to the monitor
            assert not outsider.can_connect(ip, 9100), f"the outsider reached {name} [{ip}]:9100"
    assert not outsider.can_connect(cluster["watch"].ipv4, 9090)
    assert not cluster["alpha"].can_connect(cluster["watch"].ipv4, 9093)  # Alertmanager: loopback only


def test_monitor_sends_a_heartbeat(cluster, relay):
    message = alert_mail(relay, "Watchdog", "minicl monitor heartbeat")
    assert message["rcpt_tos"] == ["admins@example.org"]
    assert message["login"] == USER and message["tls"] is True
    assert message["peer"] == cluster["watch"].ipv4


def test_stopped_node_exporter_mails_host_down(cluster, relay):
    cluster["beta"].systemctl("stop", "prometheus-node-exporter")
    message = alert_mail(relay, "HostDown", "beta is down")
    assert message["rcpt_tos"] == ["admins@example.org"]


def test_failing_check_mails_its_reason(cluster, relay):
    alpha = cluster["alpha"]
    alpha.systemctl("stop", "postfix@-")
    code, data, _ = salt_call(alpha, "minicl_checks.run")  # as the schedule does between runs
    assert code == 1 and data["local"]["postfix"].startswith("FAIL")
    alert_mail(relay, "CheckFailing", "alpha: check postfix fails")


def test_full_filesystem_mails_disk_almost_full(cluster, relay):
    watch = cluster["watch"]
    watch.run(
        "mkdir -p /srv/full && mount -t tmpfs -o size=1m tmpfs /srv/full && "
        "dd if=/dev/zero of=/srv/full/fill bs=4k count=250 2>/dev/null || true"
    )
    alert_mail(relay, "DiskAlmostFull", "watch: /srv/full is almost full")


def test_second_run_on_the_monitor_changes_nothing(cluster):
    code, data, result = salt_call(cluster["watch"], "state.apply")
    assert code == 0, result.stdout
    assert changed_states(data) == {}


def test_bad_config_push_mails_config_error(cluster, relay, git_server):
    alpha = cluster["alpha"]
    git_server.commit({"cluster.json": monitoring_config(admin_email="not-an-address")}, "a typo")
    code, _, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout  # the last good config keeps running
    message = alert_mail(relay, "ConfigError", "alpha cannot use the config repo")
    assert "admin_email" in readable(message)
