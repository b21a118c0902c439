"""minicl-bootstrap's pure parts: URL handling, the minion config it writes, argument errors."""

import shutil
import subprocess

import pytest
import yaml

from minicl import bootstrap, minion, saltext


@pytest.mark.parametrize(
    "url, pattern",
    [
        ("ssh://git@git.example.org/srv/git/c.git", "git.example.org"),
        ("ssh://git@git.example.org:22/srv/git/c.git", "git.example.org"),
        ("ssh://git@git.example.org:2222/srv/git/c.git", "[git.example.org]:2222"),
        ("ssh://git@[2001:db8::1]:2222/c.git", "[2001:db8::1]:2222"),
        ("ssh://198.51.100.1/c.git", "198.51.100.1"),
        ("git@git.example.org:group/cluster.git", "git.example.org"),
        ("file:///srv/git/c.git", None),
    ],
)
def test_repo_host_pattern(url, pattern):
    assert bootstrap.repo_host_pattern(url) == pattern


@pytest.mark.parametrize(
    "url, ssh",
    [
        ("ssh://git@h/x", True),
        ("git@h:x", True),
        ("file:///x", False),
        ("/srv/x", False),
    ],
)
def test_is_ssh_url(url, ssh):
    assert bootstrap.is_ssh_url(url) is ssh


def test_minion_config_for_ssh_repo(tmp_path):
    args = bootstrap.parse_args(
        ["--repo=ssh://git@h/c.git", "--deploy-key=/root/k", "--branch=prod", f"--salt-config-dir={tmp_path}"]
    )
    path = bootstrap.write_minion_config(args, "alpha")
    conf = yaml.safe_load(open(path, encoding="utf-8"))
    assert conf["id"] == "alpha"
    assert conf["file_client"] == "local" and conf["master_type"] == "disable"  # salt-minion runs masterless
    assert conf["return"] == "minicl"
    assert conf["file_roots"] == {"base": [saltext.states_dir(), "/var/lib/minicl/live"]}
    assert conf["ext_pillar"] == [
        {
            "minicl": {
                "repo": "ssh://git@h/c.git",
                "branch": "prod",
                "cache_dir": "/var/lib/minicl",
                "deploy_key": "/etc/minicl/deploy.key",
                "known_hosts": "/etc/minicl/known_hosts",
            }
        }
    ]


def test_minion_config_for_file_repo_has_no_ssh_options(tmp_path):
    args = bootstrap.parse_args(["--repo=file:///srv/c.git", f"--salt-config-dir={tmp_path}"])
    options = bootstrap.minion_config(args, "alpha")["ext_pillar"][0]["minicl"]
    assert options == {"repo": "file:///srv/c.git", "branch": "main", "cache_dir": "/var/lib/minicl"}


def test_repo_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        bootstrap.parse_args([])
    assert exc.value.code == 2
    assert "--repo is required" in capsys.readouterr().err


def test_missing_deploy_key_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 0)
    code = bootstrap.main(
        [
            "--repo=ssh://git@h/c.git",
            f"--deploy-key={tmp_path}/nope",
            f"--etc-dir={tmp_path}/etc",
            f"--salt-config-dir={tmp_path}/salt",
            f"--cache-dir={tmp_path}/cache",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert f"--deploy-key: {tmp_path}/nope is not a file" in err and "Traceback" not in err


def test_print_snippet_needs_no_root(capsys, monkeypatch):
    monkeypatch.setattr(bootstrap.os, "geteuid", lambda: 1000)
    assert bootstrap.main(["--print-snippet", "--id=alpha.example.org"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('  "alpha": {') and '"roles": [\n      "base"\n    ]' in out


def test_systemd_unit_runs_this_venvs_salt_minion():
    unit = minion.unit_text("/opt/minicl/bin/salt-minion", "/etc/salt", python="/opt/minicl/bin/python")
    assert "ExecStart=/opt/minicl/bin/salt-minion -c /etc/salt\n" in unit
    assert "ExecStop=/opt/minicl/bin/python -m minicl.minion wait-for-jobs -c /etc/salt\n" in unit
    assert "KillMode=process" in unit and "Restart=always" in unit and "WantedBy=multi-user.target" in unit


def test_without_systemd_bootstrap_says_how_to_start_the_schedule(monkeypatch, tmp_path):
    """minicl targets systemd hosts; on others bootstrap configures the host and says how to run
    the scheduler, without installing a unit."""
    monkeypatch.setattr(minion, "systemd_running", lambda: False)
    monkeypatch.setattr(minion, "install_and_restart", lambda *a: pytest.fail("installed a unit"))
    args = bootstrap.parse_args(["--repo=file:///srv/c", f"--salt-config-dir={tmp_path}/salt"])
    said = bootstrap.start_schedule(args)
    assert said.startswith("no systemd here: start the scheduled runs with '")
    assert f"salt-minion -c {tmp_path}/salt -d'" in said


def test_stop_waits_for_the_jobs_in_progress(capsys):
    rounds = [[{"fun": "state.apply", "pid": 41}], [{"fun": "state.apply", "pid": 41}], []]
    minion.wait_for_jobs("/etc/salt", poll=0, jobs=lambda _: rounds.pop(0))
    assert rounds == []
    assert capsys.readouterr().out == (
        "minicl-minion: waiting for the job(s) in progress to finish: state.apply (PID 41)\n"
    )


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_unit_passes_systemd_analyze(tmp_path):
    """systemd's own checker reads the unit (a control proves it reports mistakes)."""
    salt_minion = tmp_path / "salt-minion"
    salt_minion.write_text("#!/bin/sh\n")
    salt_minion.chmod(0o755)
    unit = minion.unit_text(salt_minion, "/etc/salt")
    good, bad = tmp_path / "minicl-minion.service", tmp_path / "broken.service"
    good.write_text(unit)
    bad.write_text(unit.replace("KillMode=process", "KillMode=sometimes"))
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(good)], capture_output=True, text=True, check=False
    )
    assert [line for line in checked.stderr.splitlines() if str(good) in line] == [], checked.stderr
    control = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, check=False
    )
    assert any(str(bad) in line and "kill mode" in line for line in control.stderr.splitlines()), (
        control.stderr
    )
