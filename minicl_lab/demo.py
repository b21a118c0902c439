"""The demo cluster: cluster.json.example brought to life in test hosts on this machine.

    sudo ./demo.sh            # or: .venv/bin/python -m minicl_lab.demo [--keep]

A config repo host serves the example over SSH; every host of the example is started as a
test host (Linux namespaces, overlay root: this machine's users, firewall and services are
not touched), bootstrapped with ``minicl-bootstrap`` and converged with real Salt. Logins, the
firewall, root mail and the monitor are checked from outside; a bad commit is pushed to show
that hosts keep the last good configuration; then the scheduler alone brings a new user to every
host. Prints a report and exits 0 only if every check passed.
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

from minicl_lab import fakerelay, probes
from minicl_lab.testhosts import GitServer, Lab

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "cluster.json.example"
GIT_HOST = ["198.51.100.1/24", "2001:db8:100::1/64"]
RELAY_HOST = ["198.51.100.25/24"]
RELAY_NAME = "relay.example.org"
WORKSTATION = ["198.51.100.200/24", "2001:db8:100::200/64"]


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
            print(f"demo: all {len(self.checks)} checks passed in {time.monotonic() - self.started:.0f} s")
        return not failed


def cidr(ip):
    return f"{ip}/{24 if ipaddress.ip_address(ip).version == 4 else 64}"


def salt_json(host, *args):
    result = host.run(["salt-call", "--local", "--out=json", *args], check=False, timeout=600)
    try:
        return result.returncode, json.loads(result.stdout)["local"]
    except (ValueError, KeyError):
        return result.returncode, None


def make_key(workdir, name):
    """(private, public) text of a fresh ed25519 key."""
    path = os.path.join(workdir, name)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", path], check=True)
    with open(path, encoding="ascii") as priv, open(path + ".pub", encoding="ascii") as pub:
        return priv.read(), pub.read().strip()


def demo_config(workdir):
    """cluster.json.example with demo keys and passwords (password: <user>-demo) for its users,
    so the demo can log in as them, smtp.relay and ca_url pointing at the demo's fake relay, and
    a short schedule. Returns (config text, {user: private key})."""
    config = json.loads(EXAMPLE.read_text())
    config["schedule"] = DEMO_SCHEDULE
    config["smtp"]["relay"] = RELAY_NAME
    config["ca_url"] = f"http://{RELAY_NAME}/ca.crt"
    for app in config.get("apps", {}).values():
        app.pop("packages", None)  # extra packages would come from the Debian archive: no route to it here
    private = {}
    for user, spec in config["users"].items():
        private[user], spec["ssh_key"] = make_key(workdir, f"{user}-demo")
        spec["passwd"] = subprocess.run(
            ["openssl", "passwd", "-6", f"{user}-demo"], check=True, capture_output=True, text=True
        ).stdout.strip()
    return json.dumps(config, indent=2) + "\n", private


DEMO_SCHEDULE = {"interval": "30s", "splay": "5s"}
LISTEN_PORTS = (80, 443)  # stand-ins for web servers; 9100 is the real node exporter


def ssh_as(workstation, user, ip, command):
    return workstation.run(
        [
            "ssh",
            "-i",
            f"/root/keys/{user}",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            f"{user}@{ip}",
            command,
        ],
        check=False,
        timeout=60,
    )


def run_demo(lab, report, workdir):
    config = json.loads(EXAMPLE.read_text())
    private_key, public_key = make_key(workdir, "deploy.key")
    config_text, user_keys = demo_config(workdir)

    report.step("starting the config repo host 'git' (sshd, git user, bare repo)")
    git = GitServer(lab.add_host("git", GIT_HOST), public_key)
    first = git.commit(
        {"cluster.json": config_text, "deploy.key": private_key},
        "cluster.json.example, with demo keys and passwords",
    )
    report.step(f"pushed cluster.json.example (users get demo keys) as commit {first[:12]} to {git.url}")

    smtp = config["smtp"]
    report.step(f"starting the fake relay {RELAY_NAME} (STARTTLS and AUTH required; its CA served as ca_url)")
    relay = lab.add_host("relay", RELAY_HOST)
    fakerelay.start_in(relay, fakerelay.make_test_ca(workdir, RELAY_NAME), smtp["username"], smtp["password"])

    hosts = {}
    for name, entry in config["hosts"].items():
        ips = [entry["ip"]] if isinstance(entry["ip"], str) else entry["ip"]
        report.step(f"starting host {name} {' '.join(ips)} and running minicl-bootstrap")
        host = lab.add_host(name, [cidr(ip) for ip in ips])
        host.run(f"echo '{RELAY_HOST[0].split('/')[0]} {RELAY_NAME}' >> /etc/hosts")  # the relay's DNS name
        host.write("/root/deploy.key", private_key, 0o600)
        result = host.run(
            ["minicl-bootstrap", f"--repo={git.url}", "--deploy-key=/root/deploy.key"],
            check=False,
            timeout=600,
        )
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
        print(
            f"        {name}: roles {pillar['host']['roles']} -> states {pillar['states']}; "
            f"addresses {grains['minicl_ipv4'] + grains['minicl_ipv6']}; "
            f"users {sorted(pillar['cluster']['users'])}; applied commit {applied['commit'][:12]}"
        )
        report.check(applied["commit"] == first, f"{name}: converged to commit {first[:12]}")
        report.check(code == 0 and not pending, f"{name}: state.apply test=True plans no change")
        for key in pending:
            print(f"             would change: {key}: {planned[key].get('comment')}")

    report.step("starting a workstation host with the users' keys; logging in to every host")
    workstation = lab.add_host("workstation", WORKSTATION)
    for user, key in user_keys.items():
        workstation.write(f"/root/keys/{user}", key, 0o600)
    workstation.write("/root/askpass", "#!/bin/sh\ncat /root/password\n", 0o755)
    for name, entry in config["hosts"].items():
        ip = entry["ip"] if isinstance(entry["ip"], str) else entry["ip"][0]
        for user in user_keys:
            result = ssh_as(workstation, user, ip, f"echo {user}-demo | sudo -S -k -p '' id -un")
            report.check(
                result.returncode == 0 and result.stdout.strip() == "root",
                f"{user} logs in to {name} with a key and becomes root with sudo",
            )
        workstation.write("/root/password", f"{next(iter(user_keys))}-demo\n", 0o600)
        result = workstation.run(
            [
                "setsid",
                "-w",
                "ssh",
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "LogLevel=ERROR",
                f"{next(iter(user_keys))}@{ip}",
                "true",
            ],
            check=False,
            timeout=60,
            env={"SSH_ASKPASS": "/root/askpass", "SSH_ASKPASS_REQUIRE": "force"},
        )
        report.check(
            result.returncode == 255, f"password login to {name} is refused, even with the right password"
        )

    report.step(
        "firewall: the node exporter (9100, cluster only) and the public ports, from a peer and from the "
        "workstation (not in cluster.json)"
    )
    for host in hosts.values():
        host.listen(LISTEN_PORTS)
    names = list(hosts)
    for name, entry in config["hosts"].items():
        ip = entry["ip"] if isinstance(entry["ip"], str) else entry["ip"][0]
        peer = hosts[names[(names.index(name) + 1) % len(names)]]
        report.check(peer.can_connect(ip, 9100), f"{peer.name} (cluster) reaches {name}:9100")
        report.check(not workstation.can_connect(ip, 9100), f"the workstation is refused on {name}:9100")
        for spec in entry.get("public_ports", []):
            port = int(spec.split("/")[0].split("-")[0])
            if spec.endswith("/tcp") and port in LISTEN_PORTS:
                report.check(
                    workstation.can_connect(ip, port), f"the workstation reaches {name}:{port} (public)"
                )

    report.step("root mail from every host: echo ... | mail -s ... root, then look at the relay")
    for name, host in hosts.items():
        host.run(f"echo 'root mail from {name}' | mail -s 'demo: root mail from {name}' root")
    deadline = time.monotonic() + 30
    while len(fakerelay.received(relay)) < len(hosts) and time.monotonic() < deadline:
        time.sleep(0.3)
    got = {
        m["data"].split("demo: root mail from ")[1].split()[0]: m
        for m in fakerelay.received(relay)
        if "demo: root mail from " in m["data"]
    }
    for name in hosts:
        message = got.get(name)
        report.check(
            bool(message)
            and message["rcpt_tos"] == [config["admin_email"]]
            and message["tls"]
            and message["login"] == smtp["username"],
            f"{name}: root's mail reached the relay for {config['admin_email']}, over TLS, "
            f"after AUTH as {smtp['username']}",
        )

    monitors = [name for name, entry in config["hosts"].items() if "monitor" in entry["roles"]]
    for monitor_name in monitors:
        report.step(
            f"monitoring: {monitor_name}'s Prometheus scrapes every node exporter "
            "(up, and the config commit each host applied)"
        )
        scraped = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            scraped = {
                labels["instance"]: labels["commit"]
                for labels, _ in probes.prometheus_query(hosts[monitor_name], "minicl_config_commit_info")
            }
            if len(scraped) == len(hosts):
                break
            time.sleep(1)
        for name in hosts:
            report.check(
                scraped.get(name) == first,
                f"{monitor_name} scrapes {name}: commit {(scraped.get(name) or 'nothing')[:12]}",
            )

    show_apps(report, hosts, config)

    name, host = next(iter(hosts.items()))
    report.step(f"pushing a bad commit (a uid in the system range), then state.apply on {name}")
    bad_config = json.loads(config_text)
    first_user = next(iter(bad_config["users"]))
    bad_config["users"][first_user]["uid"] = 500
    bad = git.commit({"cluster.json": json.dumps(bad_config, indent=2)}, "a mistake")
    code, _ = salt_json(host, "state.apply")
    _, pillar = salt_json(host, "pillar.get", "minicl:status", "unmask=True")
    print(f"        {name}: status error: {pillar.get('error', '(none)').splitlines()[-1]}")
    report.check(
        code == 0 and pillar.get("commit") == first and pillar.get("bad_commit") == bad,
        f"{name}: kept serving the last good commit {first[:12]}, reported bad commit {bad[:12]}",
    )

    report.step("pushing the fix")
    fixed = git.commit({"cluster.json": config_text}, "fix the uid")
    code, _ = salt_json(host, "state.apply")
    _, pillar = salt_json(host, "pillar.get", "minicl:status", "unmask=True")
    report.check(
        code == 0 and pillar.get("commit") == fixed and pillar.get("ok"),
        f"{name}: picked up the fixed commit {fixed[:12]}",
    )

    show_schedule(report, git, hosts, workstation, workdir, json.loads(config_text))
    return hosts


def show_apps(report, hosts, config):
    for app_name, app in config.get("apps", {}).items():
        primary, standbys = app["hosts"][0], app["hosts"][1:]
        for db, spec in app.get("databases", {}).items():
            owner = spec["owner"]
            report.step(
                f"app {app_name} ({app['type']}): {owner} writes a row in {db} on {primary} "
                f"(peer authentication), the standbys read it"
            )
            psql = ["runuser", "-u", owner, "--", "psql", "-X", "-A", "-t", "-d", db, "-c"]
            wrote = hosts[primary].run(
                [*psql, "CREATE TABLE demo (said text); INSERT INTO demo VALUES ('hello')"], check=False
            )
            report.check(
                wrote.returncode == 0,
                f"{primary}: {owner} wrote to {db} as themselves"
                + ("" if wrote.returncode == 0 else f" ({wrote.stderr.strip()})"),
            )
            for standby in standbys:
                deadline, seen = time.monotonic() + 30, ""
                while time.monotonic() < deadline and seen != "hello":
                    seen = hosts[standby].run([*psql, "SELECT said FROM demo"], check=False).stdout.strip()
                    time.sleep(0.5)
                report.check(seen == "hello", f"{standby}: the standby reads the row written on {primary}")
        code, health = salt_json(hosts[primary], "minicl_app.check_health", app_name)
        report.check(
            code == 0 and bool(health) and health.get("ok"),
            f"{primary}: minicl_app.check_health {app_name}: "
            + "; ".join(line[5:] for line in (health or {}).get("report", [])[:3]),
        )


def show_schedule(report, git, hosts, workstation, workdir, config):
    report.step(
        f"scheduled runs: minicl-minion.service (salt-minion under systemd, started by minicl-bootstrap) "
        f"on every host, schedule {DEMO_SCHEDULE['interval']} ± {DEMO_SCHEDULE['splay']}"
    )
    for name, host in hosts.items():
        state = host.unit_state("minicl-minion.service")
        report.check(state == "active", f"{name}: minicl-minion.service is {state}")

    private, public = make_key(workdir, "carol-demo")
    config["users"]["carol"] = {"uid": 2003, "passwd": "!", "ssh_key": public}
    pushed = git.commit({"cluster.json": json.dumps(config, indent=2) + "\n"}, "add carol")
    report.step(f"pushed a new user, carol, as commit {pushed[:12]}; no manual run from here on")
    workstation.write("/root/keys/carol", private, 0o600)
    pushed_at = time.monotonic()
    pending = dict(hosts)
    limit = 2 * sum(int(DEMO_SCHEDULE[key][:-1]) for key in ("interval", "splay")) + 30  # two rounds + a run
    while pending and time.monotonic() < pushed_at + limit:
        for name, host in list(pending.items()):
            if host.run(["getent", "passwd", "carol"], check=False).returncode == 0:
                ip = config["hosts"][name]["ip"][0]
                login = ssh_as(workstation, "carol", ip, "id -un")
                report.check(
                    login.returncode == 0 and login.stdout.strip() == "carol",
                    f"{name}: carol logs in with her key, {time.monotonic() - pushed_at:.0f} s after "
                    "the push, by the schedule alone",
                )
                del pending[name]
        time.sleep(1)
    for name in pending:
        report.check(False, f"{name}: carol did not arrive within {limit} s of the push")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minicl_lab.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep the test hosts up until Ctrl-C, to look around in them"
    )
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
                print(f"  {host.shell_hint()}   # {name}")
            try:
                signal.pause()
            except KeyboardInterrupt:
                pass
        report.step("tearing the test hosts down")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
