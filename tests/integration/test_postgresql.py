"""The PostgreSQL appliance on systemd test hosts: a primary and a hot standby from cluster.json's
"apps", databases owned by cluster users over peer authentication, streaming replication seen
from the outside (a row written on the primary is read on the standby), the verbs
check_health and test, idempotence, the port open to cluster hosts only, no secret shown."""

import hashlib
import hmac
import json

import pytest

from .conftest import bootstrap_all, changed_states, cluster_config, salt_call, wait_for

ALPHA = ["198.51.100.51/24"]
BETA = ["198.51.100.52/24"]
OUTSIDE = ["198.51.100.59/24"]


def entry(addresses):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}


@pytest.fixture(scope="module")
def hosts(lab, git_server, deploy_key):
    alpha = lab.add_host("alpha", ALPHA)
    beta = lab.add_host("beta", BETA)
    # alpha trusts the outside host (trusted_sources): its app port still answers the cluster only.
    config = cluster_config(
        {"alpha": dict(entry(ALPHA), trusted_sources=["198.51.100.59/32"]), "beta": entry(BETA)}
    )
    config["apps"] = {
        "db": {"type": "postgresql", "hosts": ["alpha", "beta"], "databases": {"shop": {"owner": "alice"}}}
    }
    git_server.commit(
        {"cluster.json": json.dumps(config, indent=2), "deploy.key": deploy_key[0]}, "a database"
    )
    bootstrap_all({"alpha": alpha}, git_server, deploy_key)  # the primary first: the standby clones it
    bootstrap_all({"beta": beta}, git_server, deploy_key)
    return alpha, beta


def as_alice(host, sql, check=True):
    return host.run(
        ["runuser", "-u", "alice", "--", "psql", "-X", "-A", "-t", "-d", "shop", "-c", sql], check=check
    )


def verb(host, name):
    code, data, result = salt_call(host, f"minicl_app.{name}", "db")
    return code, (data or {}).get("local"), result


def test_a_row_written_on_the_primary_is_read_on_the_standby(hosts):
    alpha, beta = hosts
    as_alice(
        alpha, "CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders VALUES (1, 'tea')"
    )
    seen = wait_for(
        "the row on the standby",
        lambda: as_alice(beta, "SELECT item FROM orders WHERE id = 1", check=False).stdout.strip() == "tea",
        timeout=30,
    )
    assert seen
    refused = as_alice(beta, "INSERT INTO orders VALUES (2, 'coffee')", check=False)
    assert refused.returncode != 0 and "read-only" in refused.stderr


def test_owners_reach_their_database_as_themselves_only(hosts):
    alpha, _ = hosts
    assert as_alice(alpha, "SELECT current_user").stdout.strip() == "alice"
    assert (
        as_alice(
            alpha, "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"
        ).stdout.strip()
        == "alice"
    )
    # bob is a cluster user too, but owns nothing: peer authentication as bob, no role bob.
    bob = alpha.run(["runuser", "-u", "bob", "--", "psql", "-X", "-d", "shop", "-c", "SELECT 1"], check=False)
    assert bob.returncode != 0 and 'role "bob" does not exist' in bob.stderr


def test_check_health_and_test_verbs(hosts):
    alpha, beta = hosts
    code, report, result = verb(alpha, "check_health")
    assert code == 0, result.stdout + result.stderr
    assert report["ok"] and report["role"] == "primary"
    assert any(line.startswith("ok   standby beta: streaming") for line in report["report"]), report
    code, report, result = verb(beta, "check_health")
    assert code == 0 and report["role"] == "standby", result.stdout
    assert any("streaming from the primary" in line for line in report["report"])
    code, report, result = verb(alpha, "test")
    assert code == 0 and report["ok"], result.stdout
    assert "ok   standby beta replayed the write" in report["report"]
    code, report, _ = verb(beta, "test")
    assert code == 0 and "ok   a write on this standby is refused (read-only)" in report["report"]
    code, report, _ = verb(alpha, "backup")
    assert (
        code != 0
        and "backup is not provided for postgresql apps by this version of minicl" in report["report"][0]
    )


def test_check_health_fails_when_the_standby_is_down(hosts):
    alpha, beta = hosts
    beta.systemctl("stop", "postgresql@15-main")
    try:
        code, report, _ = wait_for(
            "the primary to miss its standby",
            lambda: (found := verb(alpha, "check_health"))[0] != 0 and found,
            timeout=30,
        )
        assert "FAIL standby beta: not connected" in report["report"]
    finally:
        beta.systemctl("start", "postgresql@15-main")
    wait_for("the standby back", lambda: verb(alpha, "check_health")[0] == 0, timeout=60)


def test_second_runs_change_nothing_and_show_no_secret(hosts, deploy_key):
    password = hmac.new(
        deploy_key[0].encode(), b"minicl db postgresql replication", hashlib.sha256
    ).hexdigest()
    for host in hosts:
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}
        assert password not in result.stdout + result.stderr
        assert password not in host.read("/var/log/salt/minion")
        assert host.run("stat -c '%a %U' /var/lib/postgresql/.pgpass").stdout.strip() == "600 postgres"
    code, data, result = salt_call(hosts[1], "state.apply", "test=True")
    assert code == 0 and changed_states(data) == {}, result.stdout


def test_the_port_is_open_to_cluster_hosts_only(hosts, lab):
    alpha, beta = hosts
    outside = lab.add_host("outside", OUTSIDE)
    assert beta.can_connect(alpha.ipv4, 5432)  # positive control: a cluster host
    assert outside.can_connect(alpha.ipv4, 9100)  # a trusted source reaches alpha's other ports
    assert not outside.can_connect(alpha.ipv4, 5432)  # but not the app's


def test_both_come_back_after_a_reboot(hosts):
    alpha, beta = hosts
    for host in (beta, alpha):  # the standby first: it must reconnect once the primary is back
        host.reboot()
    for host in (alpha, beta):
        assert wait_for(
            f"{host.name}: {'postgresql@15-main'} active",
            lambda host=host: host.unit_state("postgresql@15-main") == "active",
            timeout=60,
            explain=lambda host=host: (
                host.run(
                    "systemctl is-enabled postgresql@15-main; systemctl status postgresql@15-main --no-pager; "
                    "journalctl -b -u postgresql@15-main --no-pager | tail -20; ls -la /run/postgresql",
                    check=False,
                ).stdout
            ),
        )
    as_alice(alpha, "INSERT INTO orders VALUES (3, 'after the reboot')")
    assert wait_for(
        "the standby streaming again and replaying",
        lambda: (
            as_alice(beta, "SELECT item FROM orders WHERE id = 3", check=False).stdout.strip()
            == "after the reboot"
        ),
        timeout=60,
    )
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr
