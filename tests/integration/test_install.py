"""minicl installed as the README says (install.sh: pip install into a venv, not editable) works
on a host: its Salt finds the pillar, grains, modules and states through the entry point and
share/minicl."""

import json
import os
import pathlib
import subprocess

import pytest

from .conftest import changed_states, cluster_config, dump

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASE = ROOT / ".venv-release"
HOST = ["198.51.100.41/24"]


@pytest.fixture(scope="module")
def release_venv():
    """A regular install of this tree in .venv-release by install.sh (the venv is reused: a second
    run upgrades it, as on a real host)."""
    result = subprocess.run(
        ["sh", str(ROOT / "install.sh"), str(ROOT)],
        env={**os.environ, "MINICL_PREFIX": str(RELEASE)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Next: {RELEASE}/bin/minicl-bootstrap" in result.stdout
    installed = subprocess.run(
        [
            str(RELEASE / "current" / "bin" / "python"),
            "-c",
            "import minicl, os; print(os.path.dirname(minicl.__file__))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    ).stdout.strip()
    assert installed.startswith(str(RELEASE)), installed  # not the source tree
    return RELEASE


def test_a_host_install_carries_no_lab_and_no_test_dependency(release_venv):
    python = str(release_venv / "current" / "bin" / "python")
    for module in ("minicl_lab", "aiosmtpd", "pytest", "saltfactories"):
        found = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True, cwd="/")
        assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, module
    # Positive control: the product and what it needs are there.
    subprocess.run(
        [python, "-c", "import minicl.configrepo, minicl.bootstrap, salt, git, jsonschema, pyroute2"],
        check=True,
        cwd="/",
    )
    files = subprocess.run(
        [python, "-m", "pip", "show", "-f", "minicl"], capture_output=True, text=True, check=True
    ).stdout
    assert "minicl_lab" not in files and "testhosts" not in files and "fakerelay" not in files


def test_bootstrap_with_a_regular_install(release_venv, lab, git_server, deploy_key):
    host = lab.add_host("gamma", HOST)
    config = cluster_config({"gamma": {"ip": ["198.51.100.41"], "roles": ["base"]}})
    git_server.commit({"cluster.json": dump(config), "deploy.key": deploy_key[0]}, "gamma")
    host.write("/root/deploy.key", deploy_key[0], 0o600)
    bin_dir = release_venv / "bin"
    # Only the release venv on PATH: nothing may come from the development venv.
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"}
    result = host.run(
        [f"{bin_dir}/minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
        check=False,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "minicl_users.managed" in result.stdout  # _states/ came from share/minicl
    conf = host.read("/etc/salt/minion.d/minicl.conf")
    # Through "current": the minion config follows the release minicl switches to.
    assert f"{release_venv}/current/share/minicl/states" in conf

    out = host.run([f"{bin_dir}/salt-call", "--local", "--out=json", "grains.item", "minicl_ipv4"], env=env)
    assert json.loads(out.stdout)["local"]["minicl_ipv4"] == ["198.51.100.41"]
    out = host.run([f"{bin_dir}/salt-call", "--local", "--out=json", "state.apply"], env=env, check=False)
    assert out.returncode == 0, out.stdout
    assert changed_states(json.loads(out.stdout)) == {}
    assert host.run("id -nG alice").stdout.split() == ["alice", "sudo"]
