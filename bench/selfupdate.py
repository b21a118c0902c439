"""Benchmark (not a test): how long one push of a new minicl pin takes to reach a whole cluster.

Four systemd test hosts (alpha the canary, beta, gamma, watch the monitor) installed from the
lab's minicl repository and wheelhouse as in tests/integration/test_selfupdate.py, with the real
scheduler (minicl-minion.service, ``--interval``, ``--splay``) and ``--soak``. One push bumps the
pin; nothing is run by hand. Prints, from the push: when each host passed the new release's first
run, and the whole cluster, beside what the README's timeline says it can take at most
(interval + splay, the build, the soak, interval + splay, the build).

    sudo .venv/bin/python bench/selfupdate.py [--interval 60s] [--splay 10s] [--soak 60s]
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# pylint: disable=wrong-import-position
from minicl.schema import duration_seconds  # noqa: E402
from minicl_lab import releaselab  # noqa: E402
from minicl_lab.testhosts import GitServer, Lab  # noqa: E402

HOSTS = {
    "alpha": "198.51.100.11",
    "beta": "198.51.100.12",
    "gamma": "198.51.100.14",
    "watch": "198.51.100.13",
}
BUILD_ALLOWANCE = 120  # seconds a host may take to build and check a release, then its first run


def config(args, wheelhouse):
    data = json.loads((ROOT / "cluster.json.example").read_text())
    for key in ("ca_url", "apps"):
        data.pop(key)
    data["hosts"] = {name: {"ip": [ip], "roles": ["base"]} for name, ip in HOSTS.items()}
    data["hosts"]["watch"]["roles"].append("monitor")
    data["schedule"] = {"interval": args.interval, "splay": args.splay}
    data["monitoring"] = {"scrape_interval": "5s", "retention": "1d"}
    data["rollout"] = {"canaries": ["alpha"], "soak": args.soak}
    data["self_update"] = {"wheelhouse": wheelhouse}
    return json.dumps(data, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--interval", default="60s")
    parser.add_argument("--splay", default="10s")
    parser.add_argument("--soak", default="60s")
    args = parser.parse_args()
    key = pathlib.Path(tempfile.mkdtemp()) / "deploy.key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with Lab() as lab:
        git = GitServer(lab.add_host("git", ["198.51.100.1/24"]), key.with_suffix(".key.pub").read_text())
        work = git.add_source_repo(releaselab.REPO)
        first = git.host.run(["git", "-C", work, "rev-parse", "HEAD"]).stdout.strip()
        wheelhouse = releaselab.serve_wheelhouse(git.host)
        git.commit({"cluster.json": config(args, wheelhouse), "deploy.key": key.read_text()}, "bench")
        git.pin(releaselab.REPO, first)
        hosts = {name: lab.add_host(name, [f"{ip}/24"]) for name, ip in HOSTS.items()}
        print(f"installing {len(hosts)} hosts at minicl {first[:12]} ...", flush=True)
        results = {}
        threads = [
            threading.Thread(
                target=lambda n, h: results.update(
                    {n: releaselab.install(h, git, key.read_text(), first, wheelhouse)}
                ),
                args=item,
            )
            for item in hosts.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name, result in results.items():
            if result.returncode != 0:
                raise SystemExit(
                    f"install of {name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
                )

        new = releaselab.new_version(git, work, "bench")
        pushed = time.monotonic()
        git.pin(releaselab.REPO, new)
        print(f"pushed the pin {new[:12]}; waiting for every host's first run under it ...", flush=True)
        reached = {}
        interval, splay, soak = (duration_seconds(v) for v in (args.interval, args.splay, args.soak))
        bound = 2 * (interval + splay + BUILD_ALLOWANCE) + soak
        while len(reached) < len(hosts) and time.monotonic() - pushed < 3 * bound:
            for name, host in hosts.items():
                if name not in reached and (releaselab.record(host).get("good") or {}).get("commit") == new:
                    reached[name] = time.monotonic() - pushed
                    print(f"  {name}: {reached[name]:.0f} s", flush=True)
            time.sleep(2)
    print(
        f"\nminicl self-update, one push of the pin (interval {args.interval}, splay {args.splay}, "
        f"soak {args.soak}, canary alpha, {len(hosts)} hosts, 2-core machine):"
    )
    for name in hosts:
        print(f"  {name:6} {f'{reached[name]:.0f} s' if name in reached else 'NOT REACHED'}")
    if len(reached) == len(hosts):
        print(f"  whole cluster: {max(reached.values()):.0f} s (at most {bound} s: 2 x (interval + splay + "
              f"{BUILD_ALLOWANCE} s to build, check and run) + soak)")  # fmt: skip
    return 0 if len(reached) == len(hosts) else 1


if __name__ == "__main__":
    sys.exit(main())
