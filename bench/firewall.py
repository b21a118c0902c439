"""Benchmark (not a test): render, check and apply the firewall for clusters of 10, 1,000 and
10,000 addresses, in a test host; prints times and the rule count.

    sudo .venv/bin/python bench/firewall.py
"""

import copy
import json
import pathlib
import sys
import time

from minicl import config, firewall

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the lab is not installed, only the repository has it

from minicl_lab.testhosts import Lab  # noqa: E402

APPLY = """
import sys, time
from minicl import firewall
text = open(sys.argv[1]).read()
start = time.perf_counter(); firewall.canonical(text); canon = time.perf_counter() - start
start = time.perf_counter(); firewall.replace_table(text); apply = time.perf_counter() - start
start = time.perf_counter(); firewall.live(); live = time.perf_counter() - start
print(canon, apply, live)
"""


def cluster_with(addresses):
    data = copy.deepcopy(json.loads((ROOT / "cluster.json.example").read_text()))
    data.pop("apps")  # the base role's firewall alone
    # Every other address, so that they cannot collapse into a few networks: the worst case.
    data["hosts"] = {
        f"h{n}": {"ip": f"2001:db8:{n // 30000:x}::{2 * (n % 30000) + 1:x}", "roles": ["base"]}
        for n in range(addresses)
    }
    return config.Cluster(data)


def main():
    with Lab() as lab:
        host = lab.add_host("bench", ["198.51.100.98/24"])
        print(
            f"{'addresses':>10} {'rules':>6} {'render':>9} {'canonical':>10} {'nft -c + -f':>12} {'list':>8}"
        )
        for count in (10, 1000, 10000):
            start = time.perf_counter()
            text = firewall.render_ruleset(firewall.host_spec(cluster_with(count), "h0"))
            render = time.perf_counter() - start
            rules = sum(
                1
                for line in text.split("chain input {")[1].splitlines()
                if line.strip() and not line.strip().startswith(("#", "}", "type "))
            )
            host.write("/tmp/ruleset.nft", text)
            canon, apply, live = map(
                float,
                host.run(
                    ["python3", "-c", APPLY, "/tmp/ruleset.nft"], env={"PYTHONPATH": str(ROOT)}
                ).stdout.split(),
            )
            print(
                f"{count:>10} {rules:>6} {render * 1000:>7.0f}ms {canon * 1000:>8.0f}ms "
                f"{apply * 1000:>10.0f}ms {live * 1000:>6.0f}ms"
            )


if __name__ == "__main__":
    main()
