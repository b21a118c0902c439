"""Benchmark (not a test): central logging on systemd test hosts, a log host (vault) and a
client (alpha) bootstrapped from a config repo as in tests/integration/test_logging.py.

Prints:
- delivery delay: from ``logger`` on the client to the line in the log host's per-host/day file
  (the hosts share this machine's clock), ``--lines`` lines one every 0.1 s: median, 95th
  percentile, maximum;
- a burst: ``--burst`` lines written at once on the client, lines per second stored;
- catch-up: the same burst written while the log host's syslog-ng is stopped, then the time from
  its start to the last line stored.

    sudo .venv/bin/python bench/central_logging.py [--lines 100] [--burst 3000]

(Not bench/logging.py: run as a script, that name would shadow the standard logging module.)
"""

import argparse
import json
import os
import pathlib
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicl import logcerts  # noqa: E402  pylint: disable=wrong-import-position
from minicl_lab.testhosts import GitServer, Lab  # noqa: E402  pylint: disable=wrong-import-position

VAULT, ALPHA, GIT = "203.0.113.150", "203.0.113.151", "203.0.113.169"

# Runs on the log host: prints "<now> <line>" for every new line of alpha's day files.
FOLLOW = r"""
import glob, os, sys, time
seen = {}
print("ready", flush=True)
while True:
    for path in glob.glob("/var/log/minicl/hosts/alpha/*.log"):
        with open(path) as f:
            f.seek(seen.get(path, 0))
            data = f.read()
            seen[path] = f.tell()
        for line in data.splitlines():
            if "bench-" in line:
                print(time.time(), line, flush=True)
    time.sleep(0.005)
"""


def cluster(lab, workdir):
    key = os.path.join(workdir, "deploy.key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    ca_key, ca_cert = logcerts.make_ca(workdir, "example.org")
    example = json.loads((ROOT / "cluster.json.example").read_text())
    for unused in ("ca_url", "apps"):
        example.pop(unused)
    example["hosts"] = {
        "vault": {"ip": [VAULT], "roles": ["base", "log"]},
        "alpha": {"ip": [ALPHA], "roles": ["base"]},
    }
    example["logging"] = {}
    git = GitServer(lab.add_host("git", [f"{GIT}/24"]), pathlib.Path(key + ".pub").read_text())
    files = {"cluster.json": json.dumps(example), "deploy.key": pathlib.Path(key).read_text()}
    files.update({os.path.basename(p): pathlib.Path(p).read_text() for p in (ca_key, ca_cert)})
    git.commit(files, "bench")
    hosts = {}
    for name, ip in (("vault", VAULT), ("alpha", ALPHA)):
        host = hosts[name] = lab.add_host(name, [f"{ip}/24"])
        host.write("/root/deploy.key", pathlib.Path(key).read_text(), 0o600)
        host.run(["minicl-bootstrap", f"--repo={git.url}", "--deploy-key=/root/deploy.key", "--no-schedule"],
                 timeout=900)  # fmt: skip
    return hosts["vault"], hosts["alpha"]


def burst(alpha, tag, count):
    alpha.run(f"for i in $(seq {count}); do echo bench-{tag}-$i; done | logger -t bench")


def wait_lines(lines, tag, count, quiet=30):
    """(how many lines of ``tag`` arrived, when the last did): until ``count`` or ``quiet`` s
    without one."""
    seen, last = 0, None
    while seen < count:
        try:
            stamp, line = lines.get(timeout=quiet)
        except queue.Empty:
            break
        if f"bench-{tag}-" in line:
            seen, last = seen + 1, stamp
    return seen, last


def reader(follower):
    """A queue of (time, line) the follower on the log host prints."""
    lines = queue.Queue()

    def pump():
        for text in follower.stdout:
            stamp, line = text.split(" ", 1)
            lines.put((float(stamp), line))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--burst", type=int, default=3000)  # under journald's rate limit
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: test hosts are Linux namespaces")
    with tempfile.TemporaryDirectory() as workdir, Lab() as lab:
        vault, alpha = cluster(lab, workdir)
        follower = vault.spawn(["python3", "-c", FOLLOW])
        assert follower.stdout.readline().strip() == "ready"
        lines = reader(follower)
        delays = []
        for i in range(args.lines):
            sent = time.time()
            alpha.run(["logger", "-t", "bench", f"bench-delay-{i}"])
            stamp, _ = lines.get(timeout=60)
            delays.append(stamp - sent)
            time.sleep(0.1)
        delays.sort()
        print(f"delivery delay over {args.lines} lines: median {statistics.median(delays) * 1000:.0f} ms, "
              f"95th percentile {delays[int(0.95 * len(delays)) - 1] * 1000:.0f} ms, "
              f"max {delays[-1] * 1000:.0f} ms (with starting logger)", flush=True)  # fmt: skip
        start = time.time()
        burst(alpha, "burst", args.burst)
        seen, end = wait_lines(lines, "burst", args.burst)
        print(f"burst: {seen} of {args.burst} lines stored, {seen / (end - start):.0f} lines/s", flush=True)
        vault.systemctl("stop", "syslog-ng")
        time.sleep(2)
        burst(alpha, "outage", args.burst)
        start = time.time()
        vault.systemctl("start", "syslog-ng")
        seen, end = wait_lines(lines, "outage", args.burst)
        print(f"catch-up: {seen} of {args.burst} lines written during an outage stored, the last "
              f"{end - start:.1f} s after the log host's syslog-ng started (README: Central logging, "
              "limits)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
