"""Benchmark (not a test): ``minicl validate`` and one pillar compile with no new commit, on
generated cluster.json files: 1000 hosts and 1000 users, 1000 hosts and 55,000 users (21 MB),
100,000 hosts and 100 users. Prints the figures.

    .venv/bin/python bench/foundation.py [--hosts N --users N]
"""

import argparse
import base64
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PASSWD = "$6$benchsalt$" + "A" * 86


def fake_ed25519_key(n):
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + n.to_bytes(32, "big")
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} user{n}"


def generate(hosts, users):
    data = json.loads((ROOT / "cluster.json.example").read_text())
    data.pop("apps")  # its owner and hosts are the example's, replaced below
    data["users"] = {
        f"user{n}": {
            "uid": 10000 + n,
            "passwd": PASSWD,
            "ssh_key": [fake_ed25519_key(2 * n), fake_ed25519_key(2 * n + 1)],
        }
        for n in range(users)
    }
    # Documentation ranges only: IPv4 while 198.51.100.0/24 and 203.0.113.0/24 last, IPv6 for all.
    v4 = [f"198.51.100.{n}" for n in range(1, 255)] + [f"203.0.113.{n}" for n in range(1, 255)]
    data["hosts"] = {
        f"host{n}": {"ip": v4[n - 1 : n] + [f"2001:db8::{n >> 16:x}:{n & 0xFFFF:x}"], "roles": ["base"]}
        for n in range(1, hosts + 1)
    }
    return data


def timed(func, repeat=5):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_pillar_module():
    spec = importlib.util.spec_from_file_location("minicl_pillar", ROOT / "_pillar" / "minicl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__opts__ = {"__cli": "bench"}  # neither a salt-call run nor a minion: no render check
    return module


SIZES = [(1000, 1000), (1000, 55000), (100000, 100)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int)
    parser.add_argument("--users", type=int)
    args = parser.parse_args()
    sizes = [(args.hosts or 1000, args.users or 1000)] if args.hosts or args.users else SIZES
    for hosts, users in sizes:
        bench(hosts, users)


def bench(hosts, users):
    repeat = 5 if hosts * 2 + users < 10000 else 3
    work = pathlib.Path(tempfile.mkdtemp(prefix="minicl-bench-"))
    repo = work / "config"
    repo.mkdir()
    (repo / "cluster.json").write_text(json.dumps(generate(hosts, users), indent=2))
    for cmd in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@example.org", "commit", "-q", "-m", "bench"],
    ):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    size = (repo / "cluster.json").stat().st_size

    from minicl import config  # noqa: E402  (after argument parsing, for a quick --help)

    text = (repo / "cluster.json").read_text()
    in_process = timed(lambda: config.load_cluster(text), repeat)
    minicl_cli = str(pathlib.Path(sys.executable).with_name("minicl"))
    cli = timed(
        lambda: subprocess.run([minicl_cli, "validate", "-q", str(repo / "cluster.json")], check=True),
        repeat=3,
    )

    pillar = load_pillar_module()
    options = {"repo": f"file://{repo}", "cache_dir": str(work / "cache")}
    first = timed(lambda: pillar.ext_pillar("host1", {}, **options), repeat=1)
    compile_no_change = timed(lambda: pillar.ext_pillar("host1", {}, **options), repeat)

    print(f"cluster.json: {hosts} hosts, {users} users ({size / 1024:.0f} KiB)")
    print(f"validate (in process):              {in_process * 1000:7.0f} ms")
    print(f"minicl validate (command, with startup): {cli * 1000:7.0f} ms")
    print(f"pillar compile, first fetch:        {first * 1000:7.0f} ms")
    print(f"pillar compile, no new commit:      {compile_no_change * 1000:7.0f} ms  (target < 1000 ms)")
    print()
    subprocess.run(["rm", "-rf", str(work)], check=True)


if __name__ == "__main__":
    os.environ.setdefault("GIT_TERMINAL_PROMPT", "0")
    main()
