"""The Redis appliance on systemd test hosts: a primary and a replica from cluster.json's "apps",
a key set on the primary read on the replica, the verbs check_health, test, monitor and failover,
idempotence, the port open to cluster hosts only, no password shown, and a fail-over that later
converges keep: the new primary stays, the old one rejoins as its replica."""

import hashlib
import hmac
import json

import pytest

from .conftest import bootstrap_all, changed_states, cluster_config, salt_call, wait_for

ALPHA = ["198.51.100.61/24"]
BETA = ["198.51.100.62/24"]
OUTSIDE = ["198.51.100.69/24"]


def entry(addresses):
    return {"ip": [a.split("/")[0] for a in addresses], "roles": ["base"]}


# alpha trusts the outside host (trusted_sources): its app port still answers the cluster only.
CONFIG = cluster_config(
    {"alpha": dict(entry(ALPHA), trusted_sources=["198.51.100.69/32"]), "beta": entry(BETA)}
)
CONFIG["apps"] = {
    "cache": {
        "type": "redis",
        "hosts": ["alpha", "beta"],
        "maxmemory": "64mb",
        "maxmemory_policy": "allkeys-lru",
    }
}


@pytest.fixture(scope="module")
def password(deploy_key):
    return hmac.new(deploy_key[0].encode(), b"minicl cache redis password", hashlib.sha256).hexdigest()


@pytest.fixture(scope="module")
def hosts(lab, git_server, deploy_key):
    alpha = lab.add_host("alpha", ALPHA)
    beta = lab.add_host("beta", BETA)
    git_server.commit({"cluster.json": json.dumps(CONFIG, indent=2), "deploy.key": deploy_key[0]}, "a cache")
    bootstrap_all({"alpha": alpha}, git_server, deploy_key)  # the primary first
    bootstrap_all({"beta": beta}, git_server, deploy_key)
    return alpha, beta


def redis(host, password, *args, check=True):
    """redis-cli on ``host`` against its own server, the password in the environment."""
    return host.run(
        ["redis-cli", "--no-auth-warning", "-e", *args], check=check, env={"REDISCLI_AUTH": password}
    ).stdout.strip()


def role(host, password):
    info = redis(host, password, "INFO", "replication", check=False)
    return next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("role:")), None
    )


def verb(host, name):
    code, data, result = salt_call(host, f"minicl_app.{name}", "cache")
    return code, (data or {}).get("local"), result


def test_a_key_set_on_the_primary_is_read_on_the_replica(hosts, password):
    alpha, beta = hosts
    assert role(alpha, password) == "master" and role(beta, password) == "slave"
    redis(alpha, password, "SET", "greeting", "hello")
    assert wait_for(
        "the key on the replica", lambda: redis(beta, password, "GET", "greeting") == "hello", timeout=30
    )
    refused = beta.run(
        ["redis-cli", "--no-auth-warning", "-e", "SET", "x", "1"],
        check=False,
        env={"REDISCLI_AUTH": password},
    )
    assert refused.returncode != 0 and "READONLY" in refused.stdout + refused.stderr
    # Without the password: nothing.
    anonymous = alpha.run(["redis-cli", "-e", "GET", "greeting"], check=False)
    assert anonymous.returncode != 0 and "NOAUTH" in anonymous.stdout + anonymous.stderr


def test_settings_and_logging(hosts, password):
    alpha, _ = hosts
    assert redis(alpha, password, "CONFIG", "GET", "maxmemory").splitlines()[1] == str(64 * 1024 * 1024)
    assert redis(alpha, password, "CONFIG", "GET", "maxmemory-policy").splitlines()[1] == "allkeys-lru"
    assert redis(alpha, password, "CONFIG", "GET", "dir").splitlines()[1] == "/var/lib/redis"
    assert alpha.read("/etc/redis/redis.conf").rstrip().endswith("include /etc/redis/minicl.conf")
    assert (
        "Ready to accept connections"
        in alpha.run(["journalctl", "--no-pager", "-q", "-t", "redis"], check=False).stdout
    )


def test_check_health_test_and_monitor_verbs(hosts):
    alpha, beta = hosts
    code, report, result = verb(alpha, "check_health")
    assert code == 0, result.stdout + result.stderr
    assert report["ok"] and report["role"] == "primary"
    assert any(line.startswith("ok   replica beta: online") for line in report["report"]), report
    code, report, result = verb(beta, "check_health")
    assert code == 0 and report["role"] == "replica", result.stdout
    assert "ok   replicating from alpha: link up" in report["report"]
    code, report, result = verb(alpha, "test")
    assert code == 0 and report["ok"], result.stdout
    assert "ok   replica beta has the key" in report["report"]
    code, report, _ = verb(beta, "test")
    assert code == 0 and "ok   a write on this replica is refused (read-only)" in report["report"]
    code, report, result = verb(alpha, "monitor")
    assert code == 0 and report["role"] == "primary" and report["connected_clients"] >= 1, result.stdout
    assert any(line.startswith("info replica beta: online") for line in report["report"]), report
    code, report, _ = verb(alpha, "cleanup")
    assert code == 0 and "ok   backups beyond the 7 kept: none removed" in report["report"]


def test_check_health_fails_when_the_replica_is_down(hosts):
    alpha, beta = hosts
    beta.systemctl("stop", "redis-server")
    try:
        code, report, _ = wait_for(
            "the primary to miss its replica",
            lambda: (found := verb(alpha, "check_health"))[0] != 0 and found,
            timeout=30,
        )
        assert "FAIL replica beta: not connected" in report["report"]
    finally:
        beta.systemctl("start", "redis-server")
    wait_for("the replica back", lambda: verb(alpha, "check_health")[0] == 0, timeout=60)


def test_second_runs_change_nothing_and_show_no_secret(hosts, password):
    for host in hosts:
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert changed_states(data) == {}
        assert password not in result.stdout + result.stderr
        assert password not in host.read("/var/log/salt/minion")
        assert password not in host.run("journalctl --no-pager -q", check=False).stdout
        # The password is in minicl.conf, which redis and root read, and in the exporter's environment
        # file (root only); nothing world-readable has it.
        assert host.run("stat -c '%a %U %G' /etc/redis/minicl.conf").stdout.strip() == "640 redis redis"
        exporter = "/etc/default/prometheus-redis-exporter"
        assert host.run(f"stat -c '%a %U %G' {exporter}").stdout.strip() == "600 root root"
        found = host.run(
            ["grep", "-rlsF", password, "/etc", "/var/lib/minicl", "/var/log", "/tmp", "/root"], check=False
        ).stdout.split()
        assert sorted(found) == [exporter, "/etc/redis/minicl.conf"], found
        ps = host.run(["ps", "-eo", "args"]).stdout
        assert password not in ps
    code, data, result = salt_call(hosts[1], "state.apply", "test=True")
    assert code == 0 and changed_states(data) == {}, result.stdout


def test_the_port_is_open_to_cluster_hosts_only(hosts, lab):
    alpha, beta = hosts
    outside = lab.add_host("outside", OUTSIDE)
    assert beta.can_connect(alpha.ipv4, 6379)  # positive control: a cluster host
    assert outside.can_connect(alpha.ipv4, 9100)  # a trusted source reaches alpha's other ports
    assert not outside.can_connect(alpha.ipv4, 6379)  # but not the app's


def test_both_come_back_after_a_reboot(hosts, password):
    alpha, beta = hosts
    for host in (beta, alpha):
        host.reboot()
    for host in (alpha, beta):
        assert wait_for(
            f"{host.name}: redis-server active",
            lambda host=host: host.unit_state("redis-server") == "active",
            timeout=60,
        )
    redis(alpha, password, "SET", "after-reboot", "yes")
    assert wait_for(
        "the replica following again",
        lambda: redis(beta, password, "GET", "after-reboot", check=False) == "yes",
        timeout=60,
    )
    assert redis(beta, password, "GET", "greeting") == "hello"  # the RDB snapshot came back
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr


def test_failover_is_kept_and_the_old_primary_rejoins(hosts, password):
    alpha, beta = hosts
    redis(alpha, password, "SET", "before-failover", "kept")
    wait_for(
        "the key on the replica",
        lambda: redis(beta, password, "GET", "before-failover") == "kept",
        timeout=30,
    )
    alpha.systemctl("stop", "redis-server")

    code, report, result = verb(beta, "failover")
    assert code == 0 and report["ok"], result.stdout + result.stderr
    assert report["cluster_json_hosts"] == ["beta", "alpha"]
    assert report["unreachable"] == ["alpha"]
    assert any(
        'commit to cluster.json: "apps": {"cache": {"hosts": ["beta", "alpha"]' in line
        for line in report["report"]
    )
    redis(beta, password, "SET", "after-failover", "on beta")  # writes succeed on the new primary
    assert redis(beta, password, "GET", "before-failover") == "kept"

    # The next converge keeps beta the primary although cluster.json still lists alpha first.
    code, data, result = salt_call(beta, "state.apply")
    assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr
    assert role(beta, password) == "master"

    # alpha comes back as a primary (its own configuration) until its converge makes it beta's replica.
    alpha.systemctl("start", "redis-server")
    assert role(alpha, password) == "master"
    redis(alpha, password, "SET", "stale-write", "lost")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout + result.stderr
    assert "replica of beta" in json.dumps(changed_states(data)), changed_states(data)
    assert role(alpha, password) == "slave"
    assert wait_for(
        "alpha's data to follow beta",
        lambda: redis(alpha, password, "GET", "after-failover", check=False) == "on beta",
        timeout=30,
    )
    assert redis(alpha, password, "GET", "stale-write", check=False) == ""
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr
    code, report, result = verb(beta, "check_health")
    assert code == 0 and report["role"] == "primary", result.stdout

    # A restart of both keeps the roles: beta's promotion is in its configuration.
    alpha.systemctl("restart", "redis-server")
    beta.systemctl("restart", "redis-server")
    assert role(beta, password) == "master" and role(alpha, password) == "slave"


def test_a_second_failover_back_fences_the_reachable_old_primary(hosts, password):
    alpha, beta = hosts
    code, report, result = verb(alpha, "failover")
    assert code == 0 and report["fenced"] == ["beta"], result.stdout + result.stderr
    assert role(alpha, password) == "master" and role(beta, password) == "slave"
    redis(alpha, password, "SET", "back-on-alpha", "yes")
    assert wait_for(
        "beta following alpha",
        lambda: redis(beta, password, "GET", "back-on-alpha", check=False) == "yes",
        timeout=30,
    )
    # beta's older promotion record goes at its next converge; nothing changes on alpha.
    code, data, result = salt_call(beta, "state.apply")
    assert code == 0 and "promotion record dropped" in json.dumps(changed_states(data)), result.stdout
    assert not beta.exists("/var/lib/minicl/apps/cache/promoted")
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr
    assert role(alpha, password) == "master" and role(beta, password) == "slave"


def test_backup_change_restore_gives_back_the_keys_on_the_primary_and_its_replica(hosts, password):
    alpha, beta = hosts  # alpha is the primary again (the test before)
    redis(alpha, password, "SET", "in-backup", "yes")
    code, report, result = verb(alpha, "backup")
    assert code == 0, result.stdout + result.stderr
    backup_id = report["backup"]
    code, data, _ = salt_call(alpha, "minicl_app.list", "cache")
    assert code == 0 and data["local"]["backups"][0] == {"id": backup_id, "files": ["dump.rdb"]}
    redis(alpha, password, "SET", "after-backup", "gone after the restore")
    redis(alpha, password, "DEL", "in-backup")
    code, data, result = salt_call(alpha, "minicl_app.restore", "cache", f"backup={backup_id}")
    assert code == 0, result.stdout + result.stderr
    assert redis(alpha, password, "GET", "in-backup") == "yes"
    assert redis(alpha, password, "GET", "after-backup") == ""
    assert wait_for(
        "the replica to take the restored data",
        lambda: (
            redis(beta, password, "GET", "in-backup", check=False) == "yes"
            and redis(beta, password, "GET", "after-backup", check=False) == ""
        ),
        timeout=30,
    )
    code, data, _ = salt_call(beta, "minicl_app.restore", "cache")
    assert code != 0 and "this host is a replica" in " ".join(data["local"]["report"])


def test_the_exporter_reads_the_server_with_its_password(hosts, password):
    alpha, _ = hosts
    scrape = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9121/metrics').read().decode())"
    metrics = wait_for("the exporter", lambda: alpha.run(["python3", "-c", scrape], check=False).stdout)
    assert "redis_up 1" in metrics and "redis_instance_info{" in metrics
    assert alpha.run("stat -c '%a %U' /etc/default/prometheus-redis-exporter").stdout.strip() == "600 root"
    assert password not in alpha.run("ps -eo args").stdout
