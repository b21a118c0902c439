"""Master mode: the same extension under a salt-master. pytest-salt-factories' master and minion
daemons run inside test hosts (their commands enter the host's namespaces); the master serves
the minicl pillar from the config repo and minicl's states, and the minion applies the base
role to its test host, then an nginx app whose files (a static site, a certificate and key) it
gets from the master's file server, the master's checkout being out of its sight."""

import json
import os
import time

import pytest
from pytestshellutils.exceptions import FactoryTimeout
from saltfactories.cli.call import SaltCall
from saltfactories.daemons.master import SaltMaster
from saltfactories.daemons.minion import SaltMinion

from minicl import saltext
from minicl_lab import acmelab

from .conftest import changed_states, cluster_config, dump

MASTER = ["198.51.100.190/24"]
ALPHA = ["198.51.100.191/24", "2001:db8:100::191/64"]
ALPHA_IP = ALPHA[0].split("/")[0]


class InHost:
    """Runs a factory's command inside a test host; the start checks happen there too."""

    host = None

    def cmdline(self, *args, **kwargs):
        return self.host.command(super().cmdline(*args, **kwargs))

    def get_check_events(self):
        return []

    def get_check_ports(self):
        return []


def in_host(base, host):
    return type(f"{base.__name__}In{host.name.title()}", (InHost, base), {"host": host})


@pytest.fixture(scope="module")
def shared_root(salt_factories, lab):
    """The factories' root folder, bound into every test host at the same path (read-write)."""
    return str(salt_factories.root_dir)


@pytest.fixture(scope="module")
def master_host(lab, shared_root):
    return lab.add_host("master", MASTER, shared=[shared_root])


@pytest.fixture(scope="module")
def alpha(lab, shared_root):
    return lab.add_host("alpha", ALPHA, shared=[shared_root])


@pytest.fixture(scope="module")
def config_repo(master_host, deploy_key):
    data = cluster_config({"alpha": {"ip": [a.split("/")[0] for a in ALPHA], "roles": ["base"]}})
    data["firewall"]["confirm_seconds"] = 0
    master_host.write("/srv/config/cluster.json", dump(data))
    master_host.run(
        "cd /srv/config && git init -q -b main && git add -A && "
        "git -c user.name=t -c user.email=t@example.org commit -q -m first"
    )
    return "file:///srv/config"


@pytest.fixture(scope="module")
def salt_master(salt_factories, master_host, config_repo, shared_root):
    # The master's config repo cache sits in the shared folder: Salt creates missing file_roots
    # folders already while the factory writes the config, on this machine.
    cache_dir = f"{shared_root}/minicl-cache"
    factory = salt_factories.salt_master_daemon(
        "minicl-master",
        factory_class=in_host(SaltMaster, master_host),
        overrides={
            "interface": "0.0.0.0",
            "auto_accept": True,  # the test minion is new to this master
            "file_roots": {"base": [saltext.states_dir(), f"{cache_dir}/live"]},
            "ext_pillar": [
                {
                    "minicl": {
                        "repo": config_repo,
                        "cache_dir": cache_dir,
                        "applied_file": "/var/lib/minicl/applied.json",
                    }
                }
            ],
        },
    )
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="module")
def salt_minion(salt_master, alpha, master_host):
    factory = salt_master.salt_minion_daemon(
        "alpha",
        factory_class=in_host(SaltMinion, alpha),
        overrides={"master": master_host.ipv4, "return": "minicl"},
    )
    with factory.started(start_timeout=120):
        wait_until_signed_in(factory, salt_master)
        yield factory


def wait_until_signed_in(minion, master, timeout=120):
    """The minion daemon has signed in and the master holds its session key. A salt-call that
    signs in at the same moment as a new minion's daemon can be left waiting forever (Salt 3008:
    two master workers each write a first session key for the minion id)."""
    session = os.path.join(master.config["cachedir"], "sessions", minion.id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(session) and "Minion is ready to receive requests" in _read(
            minion.config["log_file"]
        ):
            return
        time.sleep(0.5)
    pytest.fail(f"the minion did not sign in to the master within {timeout} s\n{log_tails(minion, master)}")


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def log_tails(minion, master, lines=40):
    """The last lines of the daemons' logs (without Salt's trace noise), for a failure message."""
    out = []
    for factory in (master, minion):
        text = [
            line
            for line in _read(factory.config["log_file"]).splitlines()
            if line.startswith("[") and "[TRACE" not in line and "GARBAGE" not in line
        ]
        out.append(f"--- {factory.config['log_file']}\n" + "\n".join(line[:300] for line in text[-lines:]))
    return "\n".join(out)


@pytest.fixture
def salt_call(salt_minion, salt_master, alpha):
    """salt-call in alpha, through the master; a hang fails with the daemons' logs."""

    def call(*args):
        cli = salt_minion.salt_call_cli(factory_class=in_host(SaltCall, alpha), timeout=300)
        try:
            return cli.run(*args)
        except FactoryTimeout:
            pytest.fail(f"salt-call {' '.join(args)} timed out\n{log_tails(salt_minion, salt_master)}")

    return call


def test_minion_applies_the_base_role_from_the_master(salt_call, alpha):
    ret = salt_call("pillar.get", "minicl:host:name", "unmask=True")
    assert ret.data == "alpha", ret.stdout + ret.stderr  # the master's ext_pillar
    ret = salt_call("state.apply")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert alpha.run("id -nG alice").stdout.split() == ["alice", "sudo"]
    assert alpha.run("nft list table inet minicl", check=False).returncode == 0
    applied = json.loads(alpha.read("/var/lib/minicl/applied.json"))
    assert applied["host"] == "alpha"
    # The minion's returner records the run for the monitor, with the commit from the master.
    assert f'commit="{applied["commit"]}"' in alpha.read("/var/lib/prometheus/node-exporter/minicl_run.prom")
    again = salt_call("state.apply")
    assert again.returncode == 0 and changed_states({"local": again.data}) == {}


def test_a_pushed_commit_reaches_the_minion_through_the_master(salt_call, alpha, master_host):
    data = json.loads(master_host.read("/srv/config/cluster.json"))
    data["users"]["carol"] = dict(data["users"]["bob"], uid=2003)
    master_host.write("/srv/config/cluster.json", dump(data))
    master_host.run("cd /srv/config && git -c user.name=t -c user.email=t@example.org commit -q -am carol")
    ret = salt_call("state.apply")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert alpha.run("getent passwd carol", check=False).returncode == 0


def test_an_nginx_site_s_files_reach_the_minion_through_the_master(
    salt_call, salt_minion, alpha, master_host, shared_root
):
    # The master's checkout is on the master only, as with a real minion: hidden in alpha.
    alpha.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "hidden", f"{shared_root}/minicl-cache"])
    cert, key = acmelab.self_signed(["secure.example.test"], 80, 90)
    data = json.loads(master_host.read("/srv/config/cluster.json"))
    data["apps"] = {"web": {"type": "nginx", "hosts": ["alpha"], "sites": {
        "www": {"server_names": ["www.example.test"], "root": "sites/www"},
        "secure": {"server_names": ["secure.example.test"], "root": "sites/www",
                   "tls": {"certificate": "tls/secure.crt", "key": "tls/secure.key"}}}}}  # fmt: skip
    files = {"cluster.json": dump(data), "sites/www/index.html": "first\n", "sites/www/old.html": "old\n",
             "tls/secure.crt": cert, "tls/secure.key": key}  # fmt: skip
    for path, text in files.items():
        master_host.write(f"/srv/config/{path}", text)
    master_host.run(
        "cd /srv/config && git add -A && git -c user.name=t -c user.email=t@example.org commit -q -m web"
    )

    def get(url):
        name = url.split("/")[2]
        found = alpha.run(["curl", "-sk", "--resolve", f"{name}:80:{ALPHA_IP}", "--resolve", f"{name}:443:{ALPHA_IP}",
                           "-w", " %{http_code}", url], check=False)  # fmt: skip
        return found.stdout

    ret = salt_call("state.apply")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert get("http://www.example.test/") == "first\n 200"
    assert get("http://www.example.test/old.html") == "old\n 200"
    assert get("https://secure.example.test/") == "first\n 200"
    assert alpha.run(["stat", "-c", "%a", "/etc/nginx/minicl-tls/web/secure.key"]).stdout.strip() == "600"
    cached = os.path.join(salt_minion.config["cachedir"], "files", "base")
    modes = alpha.run(
        ["stat", "-c", "%a", cached, f"{cached}/tls", f"{cached}/tls/secure.key"]
    ).stdout.split()
    assert modes == ["700", "700", "600"], modes  # the key's copy: root's only
    # A changed page and a removed one: the next commit's files, nothing of the last.
    master_host.write("/srv/config/sites/www/index.html", "second\n")
    master_host.run("cd /srv/config && git rm -q sites/www/old.html && "
                    "git -c user.name=t -c user.email=t@example.org commit -q -am second")  # fmt: skip
    ret = salt_call("state.apply")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert get("http://www.example.test/") == "second\n 200"
    assert get("http://www.example.test/old.html").endswith(" 404")
    again = salt_call("state.apply")
    assert again.returncode == 0 and changed_states({"local": again.data}) == {}, again.stdout
