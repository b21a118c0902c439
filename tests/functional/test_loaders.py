"""minicl's Salt modules loaded by Salt's own loader (pytest-salt-factories), without copying:
the salt.loader entry point must make them visible. The config repo is a local file:// repo."""

import json
import os
import pathlib
import subprocess
import syslog

import pytest
import salt.loader
from saltfactories.utils.functional import Loaders

from minicl import saltext

EXAMPLE = pathlib.Path(__file__).parents[2] / "cluster.json.example"
WEB_ROLE = """\
web-marker:
  file.managed:
    - name: {path}
    - contents: "domain {{{{ pillar['minicl']['cluster']['domain'] }}}}"
"""


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("functional")


@pytest.fixture(scope="module")
def config_repo(workdir):
    repo = workdir / "config"
    (repo / "roles" / "web").mkdir(parents=True)
    data = json.loads(EXAMPLE.read_text())
    data["hosts"]["alpha"]["roles"] = ["base", "web"]
    data.pop("ca_url")  # a dry run still downloads it: no traffic leaves this machine
    data.pop("apps")  # appliances run in test hosts (tests/integration), not on this machine
    (repo / "cluster.json").write_text(json.dumps(data))
    (repo / "roles" / "web" / "init.sls").write_text(WEB_ROLE.format(path=workdir / "web-marker"))
    git(repo, "init", "-q", "-b", "main")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "c")
    return repo


@pytest.fixture(scope="module")
def minion_opts(salt_factories, workdir, config_repo):
    cache = workdir / "minicl-cache"
    factory = salt_factories.salt_minion_daemon(
        "alpha.example.org",
        overrides={
            "file_client": "local",
            "file_roots": {"base": [saltext.states_dir(), str(cache / "live")]},
            "ext_pillar": [{"minicl": {"repo": f"file://{config_repo}", "cache_dir": str(cache)}}],
        },
    )
    return factory.config.copy()


@pytest.fixture(scope="module")
def loaders(minion_opts):
    return Loaders(minion_opts)


@pytest.fixture(autouse=True)
def reset_loaders_state(loaders):
    try:
        yield
    finally:
        loaders.reset_state()


def test_pillar_is_loaded_through_the_entry_point(loaders, config_repo):
    pillar = loaders.pillar["minicl"]
    assert pillar["host"]["name"] == "alpha"
    assert pillar["states"] == ["minicl.base", "roles.web"]
    assert pillar["status"]["ok"] is True
    head = subprocess.run(
        ["git", "-C", str(config_repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert pillar["status"]["commit"] == head


def test_grains(loaders):
    grains = loaders.grains
    assert isinstance(grains["minicl_ipv4"], list) and isinstance(grains["minicl_ipv6"], list)
    assert not any(
        ip.startswith(("127.", "fe80:")) or ip == "::1"
        for ip in grains["minicl_ipv4"] + grains["minicl_ipv6"]
    )
    assert grains["minicl_shortname"]


def test_execution_module_validate(loaders, tmp_path):
    assert loaders.modules.minicl.validate(str(EXAMPLE)) == {"valid": True, "problems": []}
    bad = tmp_path / "cluster.json"
    bad.write_text("{}")
    result = loaders.modules.minicl.validate(str(bad))
    assert result["valid"] is False
    assert f'{bad}: missing required field "domain"' in result["problems"]


def test_execution_module_status(loaders):
    loaders.refresh_pillar()
    status = loaders.modules.minicl.status()
    assert status["ok"] is True and len(status["commit"]) == 40


def test_highstate_in_test_mode_plans_every_role(loaders, workdir):
    # Only test=True here: the base role manages users and sshd, which this machine must keep.
    # Real highstates run in test hosts (tests/integration).
    loaders.refresh_pillar()
    planned = loaders.modules.state.apply(test=True)
    assert planned["web-marker"].result is None and planned["web-marker"].changes
    assert planned["cluster users"].result is not True  # alice and bob would be created
    assert not (workdir / "web-marker").exists()


def test_role_and_applied_record_apply_for_real(loaders, workdir):
    loaders.refresh_pillar()
    marker = workdir / "web-marker"
    applied = loaders.modules.state.sls("roles.web,minicl.base.applied")
    assert not applied.failed
    assert marker.read_text() == "domain example.org\n"
    assert json.loads((workdir / "minicl-cache" / "applied.json").read_text())["host"] == "alpha"
    again = loaders.modules.state.sls("roles.web,minicl.base.applied")
    assert not again.failed
    assert all(not result.changes for result in again)


def test_returner_records_highstates_for_the_monitor(loaders, workdir, tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(
        syslog, "syslog", lambda priority, line: logged.append((priority, line))
    )  # not this machine's log
    loaders.refresh_pillar()
    # The checks' metrics go to tmp_path as well, never to this machine's exporter directory.
    opts = dict(loaders.opts, minicl_textfile_dir=str(tmp_path), pillar=loaders.pillar)
    returners = salt.loader.returners(opts, salt.loader.minion_mods(opts))
    record = returners["minicl.returner"]
    record({"fun": "state.apply", "fun_args": ["test=True"], "return": {}})
    record({"fun": "grains.items", "fun_args": [], "return": {}})
    assert os.listdir(tmp_path) == []
    record(
        {
            "fun": "state.apply",
            "fun_args": [],
            "return": {
                "file_|-a_|-a_|-managed": {"result": True, "changes": {"diff": "new"}},
                "file_|-b_|-b_|-managed": {"result": False, "changes": {}},
            },
        }
    )
    run = (tmp_path / "minicl_run.prom").read_text()
    status = json.loads((workdir / "minicl-cache" / "status.json").read_text())
    assert f'minicl_config_commit_info{{commit="{status["commit"]}"}} 1.0' in run
    assert "minicl_run_success 0.0" in run and 'minicl_run_states{result="changed"} 1.0' in run
    assert 'minicl_check_ok{check="ssh"}' in (tmp_path / "minicl_checks.prom").read_text()
    # What failed, for the first run of a new minicl release to be judged against.
    last_run = json.loads((workdir / "minicl-cache" / "last_run.json").read_text())
    assert last_run["failed"] == ["file_|-b_|-b_|-managed"]
    assert logged == [
        (
            syslog.LOG_ERR,
            f"highstate FAILED at config commit {status['commit'][:12]}: 2 states, 1 changed, 1 failed",
        )
    ]
