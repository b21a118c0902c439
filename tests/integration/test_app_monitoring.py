"""Monitoring of the apps end to end: a PostgreSQL primary (alpha) and standby (beta, also the
monitor host), mail through a fake authenticated relay. The monitor scrapes both exporters of
Debian's prometheus-postgres-exporter (the replication metrics the rules use included), an
outsider cannot, even one alpha trusts; PostgreSQL stopped on the primary mails an AppDown alert;
a second converge changes nothing."""

import pytest

from minicl_lab import probes

from .conftest import (
    alert_mail,
    bootstrap_all,
    changed_states,
    cluster_config,
    dump,
    monitor_state,
    salt_call,
    wait_for,
)

RELAY = ["198.51.100.140/24"]
ALPHA = ["198.51.100.141/24"]
BETA = ["198.51.100.142/24"]
OUTSIDER = ["198.51.100.149/24"]
USER, PASSWORD = "cluster@example.org", "relay-secret-App7"
EXPORTER_PORT = 9187


@pytest.fixture(scope="module")
def cluster(lab, relay, git_server, deploy_key):
    data = cluster_config(
        {
            # alpha trusts the outsider: the exporter's port still answers cluster hosts only.
            "alpha": {
                "ip": [ALPHA[0].split("/")[0]],
                "roles": ["base"],
                "trusted_sources": ["198.51.100.149/32"],
            },
            "beta": {"ip": [BETA[0].split("/")[0]], "roles": ["base", "monitor"]},
        },
        smtp={"relay": "relay.example.org", "port": 587, "username": USER, "password": PASSWORD},
        ca_url="http://relay.example.org/ca.crt",
        # Not 1 s: with PostgreSQL down, a scrape of its exporter takes 1 s (it retries once), and
        # a scrape that takes its whole interval fails.
        monitoring={"scrape_interval": "3s", "retention": "1d"},
    )
    data["apps"] = {"db": {"type": "postgresql", "hosts": ["alpha", "beta"]}}
    git_server.commit({"cluster.json": dump(data), "deploy.key": deploy_key[0]}, "a database, monitored")
    hosts = {"alpha": lab.add_host("alpha", ALPHA), "beta": lab.add_host("beta", BETA)}
    for host in hosts.values():
        host.run("echo '198.51.100.140 relay.example.org' >> /etc/hosts")
    bootstrap_all({"alpha": hosts["alpha"]}, git_server, deploy_key)  # the primary first: beta clones it
    bootstrap_all({"beta": hosts["beta"]}, git_server, deploy_key)
    return hosts


def test_the_monitor_scrapes_both_exporters(cluster):
    beta = cluster["beta"]
    up = wait_for(
        "pg_up 1 from both hosts of db",
        lambda: (
            found
            if len(found := probes.prometheus_query(beta, 'pg_up{job="postgresql"} == 1')) == 2
            else None
        ),
        explain=lambda: monitor_state(beta),
    )
    assert sorted((m["instance"], m["app"]) for m, _ in up) == [("alpha", "db"), ("beta", "db")]
    # What the replication rules read, from the real exporter: who is a standby, who streams.
    standby = {m["instance"]: v for m, v in probes.prometheus_query(beta, "pg_settings_in_hot_standby")}
    assert standby == {"alpha": 0, "beta": 1}
    streaming = wait_for(
        "beta streaming in alpha's pg_stat_replication",
        lambda: probes.prometheus_query(beta, 'pg_stat_replication_pg_wal_lsn_diff{state="streaming"}'),
    )
    assert [(m["instance"], m["application_name"]) for m, _ in streaming] == [("alpha", "beta")]
    wait_for(
        "no app alert while all is well",
        lambda: probes.prometheus_query(beta, 'ALERTS{alertname=~"App.*|PostgreSQL.*"}') == [],
        timeout=30,
        explain=lambda: str(probes.prometheus_query(beta, "ALERTS")),
    )


def test_the_exporter_answers_cluster_hosts_only(cluster, lab):
    alpha, beta = cluster["alpha"], cluster["beta"]
    outsider = lab.add_host("outsider", OUTSIDER)
    assert beta.can_connect(alpha.ipv4, EXPORTER_PORT)  # the monitor reaches the primary's exporter
    assert outsider.can_connect(alpha.ipv4, 9100)  # a trusted source reaches alpha's other ports
    for host in (alpha, beta):
        assert not outsider.can_connect(host.ipv4, EXPORTER_PORT), host.name
    assert (
        "prometheus"
        in alpha.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-XAtc",
                "SELECT rolname FROM pg_roles WHERE pg_has_role(rolname, 'pg_monitor', 'MEMBER') AND rolname = 'prometheus'",
            ]
        ).stdout
    )


def test_a_second_converge_changes_nothing(cluster):
    for host in (cluster["alpha"], cluster["beta"]):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}, host.name


def test_postgresql_down_on_the_primary_mails_app_down(cluster, relay):
    alpha = cluster["alpha"]
    alpha.systemctl("stop", "postgresql@15-main")
    try:
        try:
            message = alert_mail(relay, "AppDown", "alpha: app db (postgresql) is down")
        except AssertionError as exc:
            beta = cluster["beta"]
            seen = {q: probes.prometheus_query(beta, q) for q in ("ALERTS", 'up{job="postgresql"}', "pg_up")}
            raise AssertionError(f"{exc}\nthe monitor sees: {seen}") from None
        assert message["rcpt_tos"] == ["admins@example.org"] and message["peer"] == cluster["beta"].ipv4
    finally:
        alpha.systemctl("start", "postgresql@15-main")
