"""The demo cluster: cluster.json.example brought to life in test hosts on this machine.

    sudo ./demo.sh            # or: .venv/bin/python -m minicl.demo [--keep]

A config repo host serves the example over SSH; every host of the example is started as a
test host (Linux namespaces, overlay root: this machine's users, firewall and services are
not touched), bootstrapped with ``minicl-bootstrap`` and converged with real Salt. Then a bad
commit is pushed to show that hosts keep the last good configuration. Prints a report and
exits 0 only if every check passed.
"""

import argparse
import ipaddress
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

from minicl.testhosts import GitServer, Lab

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "cluster.json.example"
GIT_HOST = ["198.51.100.1/24", "2001:db8:100::1/64"]


class Report:
    def __init__(self):
        self.checks = []
        self.started = time.monotonic()

    def step(self, text):
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", flush=True)

    def check(self, ok, text):
        self.checks.append((ok, text))
        print(f"        {'ok  ' if ok else 'FAIL'} {text}", flush=True)
        return ok

    def summary(self):
        failed = [text for ok, text in self.checks if not ok]
        print()
        if failed:
            print(f"demo: {len(failed)} of {len(self.checks)} checks FAILED:")
            for text in failed:
                print(f"  - {text}")
        else:
            print(f"demo: all {len(self.checks)} checks passed "
                  f"in {time.monotonic() - self.started:.0f} s")
        return not failed


def cidr(ip):
    return f"{ip}/{24 if ipaddress.ip_address(ip).version == 4 else 64}"


def salt_json(host, *args):
    result = host.run(["salt-call", "--local", "--out=json", *args], check=False, timeout=600)
    try:
        return result.returncode, json.loads(result.stdout)["local"]
    except (ValueError, KeyError):
        return result.returncode, None


def make_deploy_key(workdir):
    path = os.path.join(workdir, "deploy.key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "minicl-demo-deploy", "-f", path],
                   check=True)
    with open(path, encoding="ascii") as priv, open(path + ".pub", encoding="ascii") as pub:
        return priv.read(), pub.read()


def run_demo(lab, report, workdir):
    config = json.loads(EXAMPLE.read_text())
    private_key, public_key = make_deploy_key(workdir)

    report.step("starting the config repo host 'git' (sshd, git user, bare repo)")
    git = GitServer(lab.add_host("git", GIT_HOST), public_key)
    first = git.commit({"cluster.json": EXAMPLE.read_text(), "deploy.key": private_key},
                       "cluster.json.example")
    report.step(f"pushed cluster.json.example as commit {first[:12]} to {git.url}")

    hosts = {}
    for name, entry in config["hosts"].items():
        ips = [entry["ip"]] if isinstance(entry["ip"], str) else entry["ip"]
        report.step(f"starting host {name} {' '.join(ips)} and running minicl-bootstrap")
        host = lab.add_host(name, [cidr(ip) for ip in ips])
        host.write("/root/deploy.key", private_key, 0o600)
        result = host.run(["minicl-bootstrap", f"--repo={git.url}", "--deploy-key=/root/deploy.key"],
                          check=False, timeout=600)
        report.check(result.returncode == 0, f"{name}: minicl-bootstrap exited {result.returncode}")
        if result.returncode != 0:
            print(result.stdout + result.stderr)
        hosts[name] = host

    report.step("what each host got (salt-call --local pillar.get / grains / state.apply test=True):")
    for name, host in hosts.items():
        _, pillar = salt_json(host, "pillar.get", "minicl", "unmask=True")
        _, grains = salt_json(host, "grains.item", "minicl_ipv4", "minicl_ipv6")
        code, planned = salt_json(host, "state.apply", "test=True")
        pending = [k for k, v in (planned or {}).items() if v.get("changes") or v.get("result") is None]
        applied = json.loads(host.read("/var/lib/minicl/applied.json"))
        print(f"        {name}: roles {pillar['host']['roles']} -> states {pillar['states']}; "
              f"addresses {grains['minicl_ipv4'] + grains['minicl_ipv6']}; "
              f"users {sorted(pillar['cluster']['users'])}; applied commit {applied['commit'][:12]}")
        report.check(applied["commit"] == first, f"{name}: converged to commit {first[:12]}")
        report.check(code == 0 and not pending, f"{name}: state.apply test=True plans no change")

    name, host = next(iter(hosts.items()))
    report.step(f"pushing a bad commit (a uid in the system range), then state.apply on {name}")
    bad_config = json.loads(EXAMPLE.read_text())
    first_user = next(iter(bad_config["users"]))
    bad_config["users"][first_user]["uid"] = 500
    bad = git.commit({"cluster.json": json.dumps(bad_config, indent=2)}, "a mistake")
    code, _ = salt_json(host, "state.apply")
    _, pillar = salt_json(host, "pillar.get", "minicl:status", "unmask=True")
    print(f"        {name}: status error: {pillar.get('error', '(none)').splitlines()[-1]}")
    report.check(code == 0 and pillar.get("commit") == first and pillar.get("bad_commit") == bad,
                 f"{name}: kept serving the last good commit {first[:12]}, reported bad commit {bad[:12]}")

    report.step("pushing the fix")
    fixed = git.commit({"cluster.json": EXAMPLE.read_text()}, "fix the uid")
    code, _ = salt_json(host, "state.apply")
    _, pillar = salt_json(host, "pillar.get", "minicl:status", "unmask=True")
    report.check(code == 0 and pillar.get("commit") == fixed and pillar.get("ok"),
                 f"{name}: picked up the fixed commit {fixed[:12]}")
    return hosts


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minicl.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the test hosts up until Ctrl-C, to look around in them")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: run as root (test hosts are Linux namespaces)", file=sys.stderr)
        return 2
    report = Report()
    with tempfile.TemporaryDirectory(prefix="minicl-demo-") as workdir, Lab() as lab:
        try:
            hosts = run_demo(lab, report, workdir)
        except Exception as exc:  # a demo reports what broke, then still tears down
            report.check(False, f"demo stopped: {exc}")
            hosts = {}
        ok = report.summary()
        if args.keep and hosts:
            print("\nThe hosts stay up until Ctrl-C. Enter one with, e.g.:")
            for name, host in lab.hosts.items():
                print(f"  nsenter -t {host.pid} -m -u -n -p -r -w env -i PATH=$PATH TERM=$TERM bash -l   # {name}")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        report.step("tearing the test hosts down")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
