"""Benchmark (not a test): the PostgreSQL appliance on two systemd test hosts (primary alpha,
standby beta), bootstrapped from a config repo served over SSH as in the integration tests.

Prints:
- fail-over: from the primary's death (its host's PID 1 killed: a power cut) to the first
  committed write on the new primary, with ``minicl_app.failover`` run at once (target 10 s or
  less); and the committed transactions lost: a client on beta writes rows to alpha over TCP as
  fast as it can, and every row alpha acknowledged is looked up on beta after the fail-over, with
  asynchronous replication (the default) and with ``"synchronous": true`` (target 0);
- backup and restore of a database of ``--size-mb`` MB (default 1024): ``minicl_app.backup``
  and ``minicl_app.restore`` against a plain copy (``cp -a``) of the same data folder on the same
  host.

    sudo .venv/bin/python bench/appliances.py [--size-mb 1024] [--only failover|backup]

The hosts' disks are tmpfs (memory): leave about 5 times ``--size-mb`` free.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicl_lab.testhosts import GitServer, Lab  # noqa: E402  pylint: disable=wrong-import-position

ALPHA = ["198.51.100.11/24"]
BETA = ["198.51.100.12/24"]
TARGET_FAILOVER_SECONDS = 10
BENCH_PASSWORD = "bench-only"
WRITER = f"""
import subprocess, sys
i = 0
while True:
    i += 1
    r = subprocess.run(["psql", "-X", "-q", "-h", "{ALPHA[0].split("/")[0]}", "-U", "bench", "-d", "shop",
                        "-c", f"INSERT INTO acked VALUES ({{i}})"], capture_output=True,
                       env={{"PGPASSWORD": "{BENCH_PASSWORD}", "PGCONNECT_TIMEOUT": "2", "PATH": "/usr/bin"}})
    if r.returncode != 0:
        break
    print(i, flush=True)
"""


def salt(host, *args, check=True):
    result = host.run(
        ["salt-call", "--local", "--out=json", "--retcode-passthrough", *args], check=False, timeout=3600
    )
    if check and result.returncode != 0:
        raise SystemExit(f"{host.name}: salt-call {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout)["local"] if result.stdout.strip().startswith("{") else None


def psql(host, sql, user="postgres", database="shop"):
    return host.run(
        ["runuser", "-u", user, "--", "psql", "-X", "-A", "-t", "-d", database, "-c", sql]
    ).stdout.strip()


def cluster(lab, workdir, synchronous):
    """A fresh lab cluster: git, alpha (primary), beta (standby), app db with database shop."""
    key = os.path.join(tempfile.mkdtemp(dir=workdir), "deploy.key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    example = json.loads((ROOT / "cluster.json.example").read_text())
    example.pop("ca_url")
    example["hosts"] = {
        "alpha": {"ip": [a.split("/")[0] for a in ALPHA], "roles": ["base"]},
        "beta": {"ip": [a.split("/")[0] for a in BETA], "roles": ["base"]},
    }
    example["firewall"] = dict(example.get("firewall", {}), confirm_seconds=0)
    example["apps"] = {"db": {"type": "postgresql", "hosts": ["alpha", "beta"], "synchronous": synchronous,
                              "databases": {"shop": {"owner": "alice"}}}}  # fmt: skip
    git = GitServer(lab.add_host("git", ["198.51.100.1/24"]), pathlib.Path(key + ".pub").read_text())
    git.commit({"cluster.json": json.dumps(example), "deploy.key": pathlib.Path(key).read_text()}, "bench")
    hosts = {}
    for name, addresses in (("alpha", ALPHA), ("beta", BETA)):  # the primary first: the standby clones it
        host = hosts[name] = lab.add_host(name, addresses)
        host.write("/root/deploy.key", pathlib.Path(key).read_text(), 0o600)
        host.run(["minicl-bootstrap", f"--repo={git.url}", "--deploy-key=/root/deploy.key", "--no-schedule"],
                 timeout=900)  # fmt: skip
    return hosts["alpha"], hosts["beta"], git


def failover(lab, workdir, synchronous):
    alpha, beta, git = cluster(lab, workdir, synchronous)
    # A client on beta writes to alpha over TCP (a role for the benchmark only).
    psql(alpha, "CREATE TABLE acked (id int PRIMARY KEY)", user="alice")
    psql(alpha, f"CREATE ROLE bench LOGIN PASSWORD '{BENCH_PASSWORD}'; GRANT INSERT ON acked TO bench")
    line = f"host shop bench {BETA[0].split('/')[0]}/32 scram-sha-256"
    alpha.run(f"echo '{line}' >> /etc/postgresql/15/main/pg_hba.conf && systemctl reload postgresql@15-main")
    writer = beta.spawn(["python3", "-c", WRITER])
    time.sleep(5)
    alpha.crash()
    died = time.monotonic()
    report = salt(beta, "minicl_app.failover", "db")
    promoted = time.monotonic()
    while True:
        done = beta.run(["runuser", "-u", "alice", "--", "psql", "-X", "-q", "-d", "shop", "-c",
                         "INSERT INTO acked VALUES (-1)"], check=False)  # fmt: skip
        if done.returncode == 0:
            break
        time.sleep(0.05)
    written = time.monotonic()
    acked = [int(line) for line in writer.communicate(timeout=60)[0].split()]
    present = set(int(x) for x in psql(beta, "SELECT id FROM acked").split())
    lost = [i for i in acked if i not in present]
    for name in ("git", "alpha", "beta"):
        lab.remove_host(name)
    return {
        "synchronous": synchronous,
        "seconds_to_first_write": round(written - died, 2),
        "failover_verb_seconds": round(promoted - died, 2),
        "acknowledged": len(acked),
        "lost": len(lost),
        "ok": bool(report and report.get("ok")),
    }


def backup_restore(lab, workdir, size_mb):
    alpha, beta, _ = cluster(lab, workdir, False)
    rows = size_mb * 1024  # rows of about 1 KB
    psql(alpha, f"CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat('x', 960) AS filler "
                f"FROM generate_series(1, {rows}) g", user="alice")  # fmt: skip
    size = int(psql(alpha, "SELECT pg_database_size('shop')"))
    alpha.run("sync")
    start = time.monotonic()
    alpha.run("cp -a /var/lib/postgresql/15/main /var/tmp/plain-copy && sync")
    copy = time.monotonic() - start
    alpha.run("rm -rf /var/tmp/plain-copy")
    start = time.monotonic()
    backup = salt(alpha, "minicl_app.backup", "db")
    backup_seconds = time.monotonic() - start
    before = psql(alpha, "SELECT md5(string_agg(filler, '' ORDER BY id)) FROM big")
    psql(alpha, "DROP TABLE big", user="alice")
    start = time.monotonic()
    salt(alpha, "minicl_app.restore", "db", f"backup={backup['backup']}")
    restore_seconds = time.monotonic() - start
    after = psql(alpha, "SELECT md5(string_agg(filler, '' ORDER BY id)) FROM big")
    mb = size / 2**20
    return {
        "database_mb": round(mb),
        "plain_copy_mb_per_s": round(mb / copy),
        "backup_mb_per_s": round(mb / backup_seconds),
        "restore_mb_per_s": round(mb / restore_seconds),
        "restored_identical": before == after,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--only", choices=["failover", "backup"], help="run one part only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: test hosts are Linux namespaces")
    with tempfile.TemporaryDirectory() as workdir, Lab() as lab:
        for synchronous in (False, True) if args.only != "backup" else ():
            found = failover(lab, workdir, synchronous)
            mode = "synchronous " if synchronous else "asynchronous"
            print(f"fail-over, {mode}: first write on the new primary {found['seconds_to_first_write']} s "
                  f"after the power cut (target <= {TARGET_FAILOVER_SECONDS} s; the verb itself "
                  f"{found['failover_verb_seconds']} s); {found['lost']} of {found['acknowledged']} "
                  f"acknowledged transactions lost", flush=True)  # fmt: skip
        if args.only == "failover":
            return
        found = backup_restore(lab, workdir, args.size_mb)
        print(f"backup of a {found['database_mb']} MB database: {found['backup_mb_per_s']} MB/s; "
              f"restore {found['restore_mb_per_s']} MB/s; plain copy of its data folder "
              f"{found['plain_copy_mb_per_s']} MB/s; restored identical: "
              f"{found['restored_identical']}")  # fmt: skip


if __name__ == "__main__":
    main()
