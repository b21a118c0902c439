"""minicl as a library (minicl.api), the ``minicl show`` command built on it, and the README's
example script, run as it is printed there."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from minicl import api, cli
from minicl.appliances import haproxy

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "cluster.json.example"


@pytest.fixture
def repo(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "cluster.json")
    return tmp_path


def test_load_and_query(repo):
    cluster = api.load(str(repo / "cluster.json"))
    assert sorted(cluster.hosts) == ["alpha", "beta", "watch"]
    assert cluster.fqdn("alpha") == "alpha.example.org"
    assert cluster.host_roles("watch") == ["base", "monitor"]
    assert sorted(cluster.users) == ["alice", "bob"]
    assert "198.51.100.11" in cluster.addresses()["v4"]


def test_load_raises_with_every_problem(repo):
    data = json.loads(EXAMPLE.read_text())
    data["users"]["bob"]["uid"] = 500
    data["hosts"]["alpha"]["roles"] = ["base", "web"]
    (repo / "cluster.json").write_text(json.dumps(data))
    with pytest.raises(api.ConfigError) as caught:
        api.load(str(repo / "cluster.json"))
    lines = [str(p) for p in caught.value.problems]
    assert len(lines) == 2 and api.problems(str(repo / "cluster.json")) == lines
    assert any("roles/web/init.sls" in line for line in lines)
    (repo / "roles" / "web").mkdir(parents=True)
    (repo / "roles" / "web" / "init.sls").write_text("{}\n")
    assert len(api.problems(str(repo / "cluster.json"))) == 1  # the role file is there now


def test_problems_of_an_unreadable_file(tmp_path):
    assert api.problems(str(tmp_path / "nope.json")) == [
        f"{tmp_path}/nope.json: cannot read: No such file or directory"
    ]


def test_what_a_host_gets(repo):
    cluster = api.load(str(repo / "cluster.json"))
    watch = api.host(cluster, "watch.example.org")
    assert watch["name"] == "watch" and watch["states"] == ["minicl.base", "minicl.monitor"]
    assert watch["pillar"]["minicl"]["host"]["roles"] == ["base", "monitor"]
    assert "table inet minicl" in watch["files"]["/etc/nftables.d/minicl.nft"]
    assert "/etc/prometheus/prometheus.yml" in watch["files"]
    assert "/etc/prometheus/prometheus.yml" not in api.host(cluster, "alpha")["files"]
    secret = json.loads(EXAMPLE.read_text())["smtp"]["password"]
    assert secret not in json.dumps(watch["files"])
    with pytest.raises(KeyError, match="nohost is not a host in cluster.json"):
        api.host(cluster, "nohost")


def test_the_front_and_web_apps_configuration_is_shown_without_the_vrrp_password(repo, capsys, deploy_key):
    data = json.loads(EXAMPLE.read_text())
    data["acme"] = {"directory": "https://acme.example.org/dir"}
    data["apps"] = {
        "front": {"type": "haproxy", "hosts": ["alpha", "beta"], "address": "198.51.100.30",
                  "domains": ["www.example.org"], "backends": {"web": {"servers": ["watch:80"]}},
                  "default": "web"},
        "web": {"type": "nginx", "hosts": ["watch"],
                "sites": {"shop": {"server_names": ["shop.example.org"], "proxy": ["beta:8081"]}}},
    }  # fmt: skip
    (repo / "cluster.json").write_text(json.dumps(data))
    cluster = api.load(str(repo / "cluster.json"))
    beta, watch = api.host(cluster, "beta")["files"], api.host(cluster, "watch")["files"]
    assert (
        "bind 198.51.100.30:443 transparent ssl crt /etc/haproxy/certs/front.pem"
        in beta["/etc/haproxy/haproxy.cfg"]
    )
    assert "server watch-80 198.51.100.20:80 check" in beta["/etc/haproxy/haproxy.cfg"]
    assert "/etc/haproxy/haproxy.cfg" not in watch and "/etc/keepalived/keepalived.conf" not in beta
    password = haproxy.vrrp_password(cluster.apps_of("beta")["front"])
    assert password not in json.dumps(beta)
    assert "server 198.51.100.12:8081;" in watch["/etc/nginx/conf.d/minicl-web.conf"]
    assert (
        cli.main(["show", "watch", str(repo / "cluster.json"), "--file", "/etc/nginx/conf.d/minicl-web.conf"])
        == 0
    )
    assert "server_name shop.example.org;" in capsys.readouterr().out


def test_the_cli_validates_and_shows_through_the_api(repo, capsys):
    path = str(repo / "cluster.json")
    assert cli.main(["validate", path]) == 0
    assert cli.main(["show", "alpha", path]) == 0
    shown = json.loads(capsys.readouterr().out.split("valid\n", 1)[1])
    assert (
        shown["states"] == ["minicl.base", "minicl.apps.postgresql", "minicl.apps.redis"]
        and "/etc/ssh/sshd_config.d/00-minicl.conf" in shown["files"]
    )
    assert cli.main(["show", "alpha", path, "--file", "/etc/ssh/sshd_config.d/00-minicl.conf"]) == 0
    assert "PasswordAuthentication no" in capsys.readouterr().out
    assert cli.main(["show", "alpha", path, "--file", "/etc/shadow"]) == 1
    assert "minicl renders no /etc/shadow for alpha" in capsys.readouterr().err


def test_the_readme_example_script_runs(repo):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### minicl as a library", 1)[1]
    script = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (repo / "example.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this tree's minicl, as installed
    result = subprocess.run([sys.executable, "example.py"], cwd=repo, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "alpha.example.org" in result.stdout and "table inet minicl" in result.stdout
