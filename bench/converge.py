"""Benchmark (not a test): a no-op converge of the base role against Salt's own start-up, on a
systemd test host bootstrapped from a config repo served over SSH (as in the integration tests).

Prints, as medians of ``--runs`` runs: a bare ``salt-call --local test.ping`` (Salt's start-up,
with minicl's pillar), a ``salt-call --local state.apply`` that changes nothing, their ratio
(the target is 1.5 or less), the pillar compile (fetch over SSH, validation, rendering the
pillar) and the five slowest states of the last no-op run.

    sudo .venv/bin/python bench/converge.py [--runs 5]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicl_lab.testhosts import GitServer, Lab  # noqa: E402  pylint: disable=wrong-import-position

TARGET_RATIO = 1.5
ALPHA = ["198.51.100.11/24", "2001:db8:100::11/64"]


def timed(host, *args):
    start = time.perf_counter()
    result = host.run(["salt-call", "--local", "--out=json", *args], check=False, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"salt-call {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return elapsed, json.loads(result.stdout)["local"]


PILLAR_TIMER = r"""
import sys, time
import salt.config, salt.pillar
opts = salt.config.minion_config("/etc/salt/minion")
opts["file_client"] = "local"
start = time.perf_counter()
salt.pillar.get_pillar(opts, {"id": opts["id"]}, opts["id"]).compile_pillar()
print(time.perf_counter() - start)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: test hosts are Linux namespaces")
    example = json.loads((ROOT / "cluster.json.example").read_text())
    example.pop("ca_url")
    example.pop("apps")  # the base role alone
    example["hosts"] = {"alpha": {"ip": [a.split("/")[0] for a in ALPHA], "roles": ["base"]}}
    example["firewall"] = dict(example.get("firewall", {}), confirm_seconds=0)
    with tempfile.TemporaryDirectory() as workdir, Lab() as lab:
        key = os.path.join(workdir, "deploy.key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        git = GitServer(lab.add_host("git", ["198.51.100.1/24"]), pathlib.Path(key + ".pub").read_text())
        git.commit(
            {"cluster.json": json.dumps(example), "deploy.key": pathlib.Path(key).read_text()}, "bench"
        )
        alpha = lab.add_host("alpha", ALPHA)
        alpha.write("/root/deploy.key", pathlib.Path(key).read_text(), 0o600)
        alpha.run(
            ["minicl-bootstrap", f"--repo={git.url}", "--deploy-key=/root/deploy.key", "--no-schedule"],
            timeout=900,
        )
        timed(alpha, "state.apply")  # warm: nothing left to change, caches filled
        bare, converge, pillar = [], [], []
        for _ in range(args.runs):  # alternated, so that noise hits both alike
            bare.append(timed(alpha, "test.ping")[0])
            seconds, states = timed(alpha, "state.apply")
            changed = [k for k, v in states.items() if v.get("changes")]
            if changed:
                raise SystemExit(f"not a no-op: {changed}")
            converge.append(seconds)
            pillar.append(float(alpha.run([sys.executable, "-c", PILLAR_TIMER]).stdout))
        b, c = statistics.median(bare), statistics.median(converge)
        print(f"bare salt-call test.ping    {b:6.2f} s")
        print(f"no-op state.apply           {c:6.2f} s")
        print(
            f"ratio                       {c / b:6.2f}   (target {TARGET_RATIO} or less: "
            f"{'met' if c / b <= TARGET_RATIO else 'NOT met'})"
        )
        print(f"pillar compile              {statistics.median(pillar):6.2f} s")
        print(
            f"states                      {sum(v.get('duration', 0) for v in states.values()) / 1000:6.2f} s "
            f"({len(states)} states)"
        )
        print("slowest states of the last run:")
        for key, value in sorted(states.items(), key=lambda kv: -kv[1].get("duration", 0))[:5]:
            print(f"  {value.get('duration', 0) / 1000:6.3f} s  {value.get('__id__', key)}")


if __name__ == "__main__":
    main()
