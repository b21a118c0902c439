"""Shared fixtures for the cluster.json validator and ``minicl validate`` tests."""

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from minicl import config

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PATH = REPO_ROOT / "cluster.json.example"


@pytest.fixture(scope="session")
def example_text():
    """The text of cluster.json.example (a valid cluster.json)."""
    return EXAMPLE_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def _example_pristine(example_text):
    return json.loads(example_text)


@pytest.fixture
def example_data(_example_pristine):
    """cluster.json.example parsed, a fresh deep copy for each test (mutate freely). Its apps are
    left out (they name its hosts and users, which many tests rename); ``example_with_apps``
    keeps them."""
    data = copy.deepcopy(_example_pristine)
    data.pop("apps")
    return data


@pytest.fixture
def example_with_apps(_example_pristine):
    return copy.deepcopy(_example_pristine)


@pytest.fixture
def problems():
    """problems(data, repo_files=None) -> the printed problem lines of ``data``, in order."""

    def _problems(data, repo_files=None, source=config.SOURCE):
        return [str(p) for p in config.validate(data, source=source, repo_files=repo_files)]

    return _problems


def _keygen(directory, key_type, *extra):
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    path = directory / f"id_{key_type}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, *extra, "-N", "", "-C", f"test-{key_type}", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return {
        "public": path.with_suffix(".pub").read_text().strip(),
        "private": path.read_text(),
    }


@pytest.fixture(scope="session")
def ecdsa_key(tmp_path_factory):
    """A real ecdsa-sha2-nistp256 key pair made by ssh-keygen: {"public": line, "private": text}."""
    return _keygen(tmp_path_factory.mktemp("ecdsa"), "ecdsa")


@pytest.fixture(scope="session")
def rsa_key(tmp_path_factory):
    """A real ssh-rsa key pair made by ssh-keygen: {"public": line, "private": text}."""
    return _keygen(tmp_path_factory.mktemp("rsa"), "rsa", "-b", "2048")


@pytest.fixture
def deploy_key(tmp_path, monkeypatch):
    """A deploy key at the place the apps' hosts derive their shared secrets from
    (appliances.shared_secret); the path, to change or remove it."""
    from minicl import appliances

    path = tmp_path / "deploy.key"
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n")
    monkeypatch.setattr(appliances.paths, "ETC_DIR", str(tmp_path))
    return path
