"""Benchmark (not a test): no-op converge of 500 cluster users in a test host, minicl's
``minicl_users.managed`` versus the same users as plain Salt ``user.present`` + ``ssh_auth.present``.

    sudo .venv/bin/python bench/users.py [--users 500]

Both read the same pillar (minicl:cluster:users). Each is applied once to converge, then timed
on a second, no-op run: Salt's own per-state durations and the wall-clock of the salt-call.
"""

import argparse
import base64
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the lab is not installed, only the repository has it

from minicl_lab.testhosts import Lab  # noqa: E402

PLAIN_SALT_SLS = """\
{% for name, user in salt['pillar.get']('minicl:cluster:users', {}).items() %}
user-{{ name }}:
  user.present:
    - name: {{ name }}
    - uid: {{ user.uid }}
    - gid: {{ user.uid }}
    - home: /home/{{ name }}
    - shell: /bin/bash
    - password: {{ user.passwd | json }}
    - groups: [sudo]
keys-{{ name }}:
  ssh_auth.manage:
    - user: {{ name }}
    - ssh_keys: {{ user.ssh_key | json }}
    - require:
      - user: user-{{ name }}
{% endfor %}
"""
MINICL_SLS = """\
cluster users:
  minicl_users.managed: []
"""


def fake_key(n):
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + n.to_bytes(32, "big")
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} key{n}"


def users(count):
    return {
        f"bench{n}": {
            "uid": 20000 + n,
            "passwd": "$6$benchsalt$" + "B" * 86,
            "ssh_key": [fake_key(2 * n), fake_key(2 * n + 1)],
        }
        for n in range(count)
    }


def run_sls(host, sls):
    start = time.perf_counter()
    result = host.run(
        [
            "salt-call",
            "--local",
            "--out=json",
            "--file-root=/srv/bench",
            "--pillar-root=/srv/bench-pillar",
            "state.sls",
            sls,
        ],
        check=False,
        timeout=3600,
    )
    wall = time.perf_counter() - start
    states = json.loads(result.stdout)["local"]
    failed = [k for k, v in states.items() if not v["result"]]
    if failed:
        raise SystemExit(f"{sls}: {len(failed)} states failed, e.g. {states[failed[0]]['comment']}")
    changed = sum(1 for v in states.values() if v["changes"])
    return wall, sum(v["duration"] for v in states.values()) / 1000, len(states), changed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=500)
    args = parser.parse_args()
    with Lab() as lab:
        host = lab.add_host("bench", ["198.51.100.99/24"])
        host.write("/srv/bench/minicl_users_bench.sls", MINICL_SLS)
        host.write("/srv/bench/plain_salt_bench.sls", PLAIN_SALT_SLS)
        host.write("/srv/bench-pillar/top.sls", "base:\n  '*':\n    - users\n")
        host.write(
            "/srv/bench-pillar/users.sls", json.dumps({"minicl": {"cluster": {"users": users(args.users)}}})
        )
        host.run("mkdir -p /etc/salt/minion.d && echo 'file_client: local' > /etc/salt/minion.d/bench.conf")

        start = time.perf_counter()
        run_sls(host, "minicl_users_bench")
        print(f"{args.users} users created by minicl in {time.perf_counter() - start:.1f} s")
        run_sls(host, "plain_salt_bench")  # Salt's first pass may adjust details of its own
        results = {}
        for sls in ("minicl_users_bench", "plain_salt_bench"):
            wall, in_states, count, changed = run_sls(host, sls)
            results[sls] = (wall, in_states)
            print(
                f"{sls:20s} no-op: {count:5d} states, {changed} changed, "
                f"{in_states:7.2f} s in states, {wall:7.2f} s salt-call wall-clock"
            )
    minicl, plain = results["minicl_users_bench"], results["plain_salt_bench"]
    print(
        f"minicl is {plain[1] / minicl[1]:.0f}x faster in the states "
        f"({plain[0] / minicl[0]:.1f}x over the whole salt-call incl. start-up); target >= 5x"
    )


if __name__ == "__main__":
    main()
