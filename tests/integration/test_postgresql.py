"""The PostgreSQL appliance on systemd test hosts: a primary and a hot standby from cluster.json's
"apps", databases owned by cluster users over peer authentication, streaming replication seen
from the outside (a row written on the primary is read on the standby), the verbs
check_health and test, idempotence, the port open to cluster hosts only, no secret shown."""

import hashlib
import hmac
import json
import time

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


def said(report, start):
    """Whether a line of the verb's report starts with ``start``."""
    return any(line.startswith(start) for line in report["report"])


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
    code, report, result = verb(alpha, "monitor")
    assert code == 0 and report["standbys"]["beta"]["state"] == "streaming", result.stdout
    assert report["max_connections"] == 100 and "shop" in report["database_bytes"]
    assert report["memory_bytes"] > 10 * 2**20
    assert any(line.startswith("info per second: ") for line in report["report"])


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


def table_checksum(host):
    """md5 of the orders table as COPY writes it: every byte of every row."""
    return host.run(
        "runuser -u alice -- psql -X -d shop -c 'COPY (SELECT * FROM orders ORDER BY id) TO STDOUT' | md5sum"
    ).stdout.split()[0]


def test_backup_destroy_restore_gives_back_the_same_bytes(hosts):
    alpha, beta = hosts
    as_alice(alpha, "INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1000, 5000) g")
    before = table_checksum(alpha)
    code, report, result = verb(alpha, "backup")
    assert code == 0, result.stdout + result.stderr
    backup_id = report["backup"]
    assert report["databases"] == ["shop"] and said(report, f"ok   backup {backup_id}: shop")
    code, data, _ = salt_call(alpha, "minicl_app.list", "db")
    assert code == 0 and data["local"]["backups"] == [{"id": backup_id, "files": ["shop.dump"]}]
    prom = alpha.read("/var/lib/prometheus/node-exporter/minicl_backup_db.prom")
    assert 'minicl_app_backup_failed{app="db"} 0.0' in prom
    assert 'minicl_app_backup_interval_seconds{app="db"} 86400.0' in prom

    as_alice(alpha, "DROP TABLE orders")
    assert wait_for(
        "the loss on the standby too",
        lambda: as_alice(beta, "SELECT 1 FROM orders", check=False).returncode != 0,
    )
    code, data, result = salt_call(alpha, "minicl_app.restore", "db", f"backup={backup_id}")
    assert code == 0, result.stdout + result.stderr
    assert said(data["local"], f"ok   shop restored from backup {backup_id}")
    assert table_checksum(alpha) == before
    assert wait_for(
        "the restore on the standby",
        lambda: as_alice(beta, "SELECT 1 FROM orders LIMIT 1", check=False).returncode == 0,
    )
    assert table_checksum(beta) == before
    assert (
        as_alice(alpha, "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'").stdout.strip()
        == "alice"
    )

    code, data, _ = salt_call(beta, "minicl_app.restore", "db")
    assert code != 0 and "this host is a standby" in " ".join(data["local"]["report"])
    code, data, _ = salt_call(alpha, "minicl_app.restore", "db", "backup=19990101T000000Z")
    assert (
        code != 0
        and f"no backup 19990101T000000Z of app db here (newest first: {backup_id})"
        in data["local"]["report"][0]
    )


def test_a_backup_without_room_is_refused_before_it_starts(hosts):
    alpha, _ = hosts
    alpha.run("mount -t tmpfs -o size=8m tmpfs /var/lib/minicl/backups")
    try:
        code, report, _ = verb(alpha, "backup")
        assert code != 0
        assert "not enough room for a backup of shop" in report["report"][0]
        assert "in /var/lib/minicl/backups, which has 8.0 MB free" in report["report"][0]
        assert alpha.run("ls -A /var/lib/minicl/backups").stdout.strip() == ""  # nothing half-written
        prom = alpha.read("/var/lib/prometheus/node-exporter/minicl_backup_db.prom")
        assert 'minicl_app_backup_failed{app="db"} 1.0' in prom
    finally:
        alpha.run("umount /var/lib/minicl/backups")


def test_scheduled_backups_run_when_due_only(hosts):
    alpha, _ = hosts
    assert alpha.unit_state("minicl-backup-db.timer") == "active"
    count = lambda: len(salt_call(alpha, "minicl_app.list", "db")[1]["local"]["backups"])  # noqa: E731
    before = count()
    alpha.systemctl("start", "minicl-backup-db.service")  # the last backup is fresh: not due
    assert count() == before
    alpha.run("touch -d '2 days ago' /var/lib/minicl/apps/db/last-success")
    alpha.systemctl("start", "minicl-backup-db.service")
    assert count() == before + 1
    assert "backup" in alpha.journal("minicl-backup-db.service")
    code, report, _ = verb(alpha, "check_health")
    assert code == 0 and any(
        "the last good backup on this host: 0.0 h ago" in line for line in report["report"]
    )


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


def is_primary(host):
    answer = host.run(
        ["runuser", "-u", "postgres", "--", "psql", "-X", "-A", "-t", "-c", "SELECT pg_is_in_recovery()"]
    )
    return answer.stdout.strip() == "f"


def rows(host):
    return as_alice(host, "SELECT string_agg(id || ':' || item, ',' ORDER BY id) FROM orders").stdout.strip()


def test_failover_after_the_primary_dies_and_the_old_primary_rejoins(hosts):
    alpha, beta = hosts
    as_alice(alpha, "INSERT INTO orders VALUES (10, 'before the power cut')")
    assert wait_for("the row on the standby", lambda: "10:before the power cut" in rows(beta), timeout=30)
    alpha.crash()
    code, report, result = verb(beta, "failover")
    assert code == 0, result.stdout + result.stderr
    assert "ok   promoted this host to primary" in report["report"] and report["hosts"] == ["beta", "alpha"]
    assert any("no primary answers" in line for line in report["report"])
    assert any(
        line.startswith('todo commit in cluster.json: "apps": {"db": {"hosts": ["beta", "alpha"]')
        for line in report["report"]
    )
    as_alice(beta, "INSERT INTO orders VALUES (11, 'on the new primary')")
    # Converges keep the promoted standby primary although cluster.json still names alpha first.
    code, data, result = salt_call(beta, "state.apply")
    assert code == 0, result.stdout + result.stderr
    assert is_primary(beta)
    alpha.boot()
    # Checked before the server started: beta is primary on a newer timeline, so alpha is fenced.
    assert wait_for("alpha's server", lambda: alpha.unit_state("postgresql@15-main") == "active", timeout=60)
    assert not is_primary(alpha)
    assert "starts fenced (read-only)" in alpha.journal("postgresql@15-main")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout + result.stderr
    assert not is_primary(alpha) and is_primary(beta)
    assert wait_for(
        "the new primary's rows on the old one", lambda: "11:on the new primary" in rows(alpha), timeout=30
    )
    assert alpha.run(
        "ls -d /var/lib/postgresql/15/main.minicl-replaced-*"
    ).stdout.strip()  # its old data, kept
    code, report, result = verb(beta, "test")
    assert code == 0 and "ok   standby alpha replayed the write" in report["report"], result.stdout
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0 and changed_states(data) == {}, result.stdout + result.stderr


def test_failover_while_the_primary_runs_fences_it_and_loses_nothing(hosts):
    alpha, beta = hosts  # beta is the primary since the test before
    assert is_primary(beta)
    writer = beta.spawn(
        [
            "sh",
            "-c",
            "i=100; while runuser -u alice -- psql -X -q -d shop -c \"INSERT INTO orders VALUES ($i, 'busy')\" 2>/dev/null; do i=$((i+1)); done; echo $i",
        ]
    )
    assert wait_for("writes on the primary", lambda: "100:busy" in rows(beta), timeout=30)
    code, report, result = verb(alpha, "failover")
    assert code == 0, result.stdout + result.stderr
    assert any(line.startswith("ok   fenced the primary beta (fenced)") for line in report["report"]), report
    last = int(writer.communicate(timeout=60)[0].strip())  # its first refused insert
    assert is_primary(alpha)
    committed = {int(r.split(":")[0]) for r in rows(alpha).split(",")}
    assert set(range(100, last)) <= committed, f"lost: {sorted(set(range(100, last)) - committed)}"
    assert beta.unit_state("postgresql@15-main") != "active"
    code, data, result = salt_call(beta, "state.apply")
    assert code == 0, result.stdout + result.stderr
    assert not is_primary(beta) and is_primary(alpha)
    as_alice(alpha, "INSERT INTO orders VALUES (12, 'back on alpha')")
    assert wait_for("the row on beta", lambda: "12:back on alpha" in rows(beta), timeout=30)


LAB_PACKAGE = "minicl-lab-pgsetting"
LAB_REPO = "/srv/lab-apt"
SETTINGS = {  # each version of the lab package ships a PostgreSQL setting; 1.1 breaks writes
    "1.0": "work_mem = '8MB'",
    "1.1": "default_transaction_read_only = on",
    "1.2": "work_mem = '16MB'",
}


def publish(host, version):
    """Build version ``version`` of the lab package with dpkg-deb into the host's lab repository
    (the only apt source it has: test hosts have no route to Debian's archive)."""
    tree = f"/root/build/{LAB_PACKAGE}-{version}"
    host.write(
        f"{tree}/DEBIAN/control",
        f"Package: {LAB_PACKAGE}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: minicl tests <root@localhost>\nDescription: a PostgreSQL setting for minicl's tests\n",
    )
    host.write(
        f"{tree}/DEBIAN/postinst", "#!/bin/sh\nsystemctl try-restart postgresql@15-main || true\n", 0o755
    )
    host.write(f"{tree}/etc/postgresql/15/main/conf.d/lab-setting.conf", SETTINGS[version] + "\n")
    host.run(
        f"mkdir -p {LAB_REPO} && dpkg-deb -Zxz --build --root-owner-group {tree} {LAB_REPO}/ >/dev/null"
        f" && cd {LAB_REPO} && dpkg-scanpackages . > Packages 2>/dev/null"
    )


def installed_version(host):
    return host.run(["dpkg-query", "-W", "-f", "${Version}", LAB_PACKAGE]).stdout


def test_an_upgrade_that_breaks_the_app_is_undone_with_the_data_intact(hosts, git_server):
    alpha, beta = hosts
    assert is_primary(alpha)
    for host in hosts:
        host.run(
            "mkdir -p /etc/apt/away && mv /etc/apt/sources.list /etc/apt/sources.list.d/* /etc/apt/away/ 2>/dev/null; true"
        )
        host.write("/etc/apt/sources.list.d/minicl-lab.list", f"deb [trusted=yes] file:{LAB_REPO} ./\n")
        publish(host, "1.0")
    config = json.loads(git_server.host.read(f"{git_server.WORK}/cluster.json"))
    config["apps"]["db"]["packages"] = [LAB_PACKAGE]
    git_server.commit({"cluster.json": json.dumps(config, indent=2)}, "db: the lab package")
    for host in (alpha, beta):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
        assert installed_version(host) == "1.0"
    before = table_checksum(alpha)

    publish(alpha, "1.1")
    code, report, result = verb(alpha, "upgrade")
    assert code != 0, result.stdout
    lines = report["report"]
    assert f"ok   kept a copy of {LAB_PACKAGE} 1.0" in lines
    assert any(line.startswith("ok   safety backup ") for line in lines)
    assert f"ok   upgraded {LAB_PACKAGE} 1.0 -> 1.1" in lines
    assert any(line.startswith("FAIL test after the change") and "read-only" in line for line in lines), lines
    assert "info the upgrade failed its checks: undoing it" in lines
    assert f"info back to {LAB_PACKAGE} 1.0" in lines
    assert report["undone"] and report["healthy_after_undo"], lines
    assert installed_version(alpha) == "1.0"
    assert alpha.read("/etc/postgresql/15/main/conf.d/lab-setting.conf") == "work_mem = '8MB'\n"
    assert table_checksum(alpha) == before
    as_alice(alpha, "INSERT INTO orders VALUES (20, 'after the undone upgrade')")

    publish(alpha, "1.2")
    code, report, result = verb(alpha, "upgrade")
    assert code == 0, result.stdout + result.stderr
    assert f"ok   upgraded {LAB_PACKAGE} 1.0 -> 1.2" in report["report"]
    assert installed_version(alpha) == "1.2"
    code, report, result = verb(alpha, "downgrade")
    assert code == 0, result.stdout + result.stderr
    assert f"ok   back to {LAB_PACKAGE} 1.0" in report["report"] and installed_version(alpha) == "1.0"
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0 and changed_states(data) == {}, result.stdout  # the converge keeps the version


def test_synchronous_commits_wait_for_a_standby_but_converges_do_not(hosts, git_server):
    alpha, beta = hosts
    config = json.loads(git_server.host.read(f"{git_server.WORK}/cluster.json"))
    config["apps"]["db"]["synchronous"] = True
    git_server.commit({"cluster.json": json.dumps(config, indent=2)}, "db: synchronous")
    for host in (beta, alpha):
        code, data, result = salt_call(host, "state.apply")
        assert code == 0, result.stdout + result.stderr
    assert "synchronous_standby_names = 'ANY 1 (*)'" in alpha.read(
        "/etc/postgresql/15/main/conf.d/minicl.conf"
    )
    as_alice(alpha, "INSERT INTO orders VALUES (30, 'while the standby is there')")  # positive control

    beta.systemctl("stop", "postgresql@15-main")
    # minicl's own work on the primary does not wait for the missing standby: a new database.
    config["apps"]["db"]["databases"]["crm"] = {"owner": "bob"}
    git_server.commit({"cluster.json": json.dumps(config, indent=2)}, "db: crm")
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout + result.stderr
    assert (
        alpha.run(
            ["runuser", "-u", "bob", "--", "psql", "-X", "-A", "-t", "-d", "crm", "-c", "SELECT current_user"]
        ).stdout.strip()
        == "bob"
    )
    # A user's commit waits until a standby has it.
    writer = alpha.spawn(["runuser", "-u", "alice", "--", "psql", "-X", "-q", "-d", "shop", "-c",
                          "INSERT INTO orders VALUES (31, 'waits for the standby')"])  # fmt: skip
    time.sleep(3)
    assert writer.poll() is None, writer.communicate()
    beta.systemctl("start", "postgresql@15-main")
    assert writer.wait(timeout=60) == 0
    assert wait_for("the row on the standby", lambda: "31:waits for the standby" in rows(beta), timeout=30)


def test_a_failover_of_a_synchronous_app_does_not_leave_its_writes_waiting(hosts):
    alpha, beta = hosts  # synchronous since the test before; alpha primary
    alpha.systemctl("stop", "postgresql@15-main")
    code, report, result = verb(beta, "failover")
    assert code == 0, result.stdout + result.stderr
    assert said(report, "info synchronous commits are suspended until a standby streams")
    as_alice(beta, "INSERT INTO orders VALUES (40, 'no standby, no wait')")  # would wait for ever
    code, report, _ = verb(beta, "check_health")
    assert code != 0 and said(report, "FAIL synchronous commits are suspended since the fail-over")
    # alpha's server starts fenced (another host is primary on a newer timeline), rejoins...
    alpha.systemctl("start", "postgresql@15-main")
    assert not is_primary(alpha)
    code, _, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout + result.stderr
    # ...and the primary's next converge resumes synchronous commits.
    code, data, result = salt_call(beta, "state.apply")
    assert code == 0, result.stdout + result.stderr
    assert (
        "synchronous commits"
        in changed_states(data)["minicl_postgresql_|-minicl-postgresql-db_|-db_|-running"]
    )
    show = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-A",
        "-t",
        "-c",
        "SHOW synchronous_standby_names",
    ]
    assert beta.run(show).stdout.strip() == "ANY 1 (*)"
    code, report, _ = verb(beta, "check_health")
    assert code == 0, report
    assert wait_for("the row on alpha", lambda: "40:no standby, no wait" in rows(alpha), timeout=30)
