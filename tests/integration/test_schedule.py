"""Scheduled highstate: a masterless salt-minion daemon in a test host applies a newly pushed
commit on its own; a manual run at the same time never applies a second commit or corrupts the
checkout; a host that could not reach the repo for a while catches up in one run."""

import json
import os
import subprocess
import time

import pytest
import yaml

from .conftest import changed_states, cluster_config, dump, salt_call, wait_for

ALPHA = ["198.51.100.171/24", "2001:db8:100::171/64"]
INTERVAL = 30


def schedule_config(users=None):
    data = cluster_config({"alpha": {"ip": [a.split("/")[0] for a in ALPHA], "roles": ["base"]}},
                          schedule={"interval": f"{INTERVAL}s", "splay": "2s"})
    data["firewall"]["confirm_seconds"] = 0
    if users is not None:
        data["users"] = users
    return dump(data)


@pytest.fixture(scope="module")
def alpha(lab, git_server, deploy_key):
    host = lab.add_host("alpha", ALPHA)
    host.start_sshd()
    git_server.commit({"cluster.json": schedule_config(), "deploy.key": deploy_key[0]}, "scheduled")
    host.write("/root/deploy.key", deploy_key[0], 0o600)
    result = host.run(["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
                      check=False, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    host.bootstrap = result
    return host


def applied(host):
    return json.loads(host.read("/var/lib/minicl/applied.json"))["commit"]


def test_bootstrap_says_how_the_schedule_runs_without_systemd(alpha):
    assert "no systemd here: start the scheduled runs with" in alpha.bootstrap.stdout
    assert "salt-minion -c /etc/salt -d" in alpha.bootstrap.stdout


def test_schedule_comes_from_cluster_json(alpha):
    text = alpha.read("/etc/salt/minion.d/minicl-schedule.conf")
    jobs = yaml.safe_load(text)["schedule"]
    assert jobs["minicl-highstate"] == {"function": "state.apply", "seconds": INTERVAL, "splay": 2,
                                        "maxrunning": 1, "run_on_start": False, "returner": "minicl", "return_job": False}
    assert jobs["minicl-checks"]["function"] == "minicl_checks.run"


def test_minion_daemon_applies_a_pushed_commit_by_itself(alpha, git_server, deploy_key):
    alpha.minion = alpha.spawn(["salt-minion", "-c", "/etc/salt", "-l", "quiet", "--log-file-level=debug"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    # The daemon runs a highstate at start; the push comes after that run, so a scheduled run
    # (not the start-up one) must bring it.
    started = time.time()
    wait_for("the daemon's start-up run",
             lambda: alpha.last_minicl_run() > started and not alpha.salt_jobs_running(), timeout=120)
    first = applied(alpha)
    users = json.loads(schedule_config())["users"]
    users["carol"] = dict(users["bob"], uid=2003)
    pushed = git_server.commit({"cluster.json": schedule_config(users)}, "add carol")
    started = time.monotonic()
    wait_for("carol on alpha", lambda: alpha.run("getent passwd carol", check=False).returncode == 0,
             timeout=2 * INTERVAL + 60, explain=lambda: alpha.run("grep -i -E 'schedul|error|pillar|exception' /var/log/salt/minion | tail -40", check=False).stdout)
    wait_for("the applied record", lambda: applied(alpha) == pushed, timeout=30)
    print(f"commit {pushed[:12]} applied {time.monotonic() - started:.0f} s after the push (was {first[:12]})")
    assert alpha.minion.poll() is None, "the minion daemon died"
    # The scheduled run went through the returner: the monitor sees the new commit.
    metrics = wait_for("run metrics of the scheduled run",
                       lambda: pushed in alpha.read("/var/lib/prometheus/node-exporter/minicl_run.prom"), timeout=30)
    assert metrics


def test_manual_run_beside_the_schedule_is_refused_or_consistent(alpha, git_server):
    """Manual runs while the daemon runs highstates: each is refused as concurrent or succeeds,
    and afterwards the host is on the pushed commit with nothing left to change."""
    users = json.loads(schedule_config())["users"]
    users["dave"] = dict(users["bob"], uid=2004)
    pushed = git_server.commit({"cluster.json": schedule_config(users)}, "add dave")
    alpha.run(["salt-call", "--local", "schedule.run_job", "minicl-highstate"], check=False)
    outcomes = []
    for _ in range(3):
        code, data, result = salt_call(alpha, "state.apply")
        if isinstance(data and data.get("local"), list):
            assert "is running as PID" in " ".join(data["local"]), result.stdout
            outcomes.append("refused")
        else:
            assert code == 0, result.stdout
            outcomes.append("applied")
    print("manual runs:", outcomes)
    wait_for("dave on alpha", lambda: alpha.run("getent passwd dave", check=False).returncode == 0, timeout=60)
    wait_for("no run in progress", lambda: not alpha.salt_jobs_running(), timeout=120)
    live = alpha.run("readlink /var/lib/minicl/live").stdout.strip()
    assert os.path.basename(live) == pushed
    assert alpha.run(["git", "-C", "/var/lib/minicl/live", "status"], check=False).returncode != 0  # an export, no .git
    code, data, result = salt_call(alpha, "state.apply")
    if isinstance(data["local"], dict):
        assert code == 0 and changed_states(data) == {}, result.stdout
    assert applied(alpha) == pushed
    assert "minicl_run_success 1.0" in alpha.read("/var/lib/prometheus/node-exporter/minicl_run.prom")


def test_host_that_was_cut_off_catches_up_in_one_run(alpha, git_server):
    alpha.minion.terminate()
    alpha.minion.wait(timeout=30)
    git_server.stop_sshd()
    try:
        users = json.loads(schedule_config())["users"]
        commits = []
        for n, name in enumerate(["erin", "frank", "grace"]):
            users[name] = dict(users["bob"], uid=2010 + n)
            commits.append(git_server.commit({"cluster.json": schedule_config(dict(users))}, f"add {name}"))
        code, _, result = salt_call(alpha, "state.apply")
        assert code == 0, result.stdout  # the last good config keeps running
        _, status, _ = salt_call(alpha, "minicl.status")
        assert status["local"]["ok"] is False and "fetching" in status["local"]["error"]
    finally:
        git_server.start_sshd()
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0, result.stdout
    assert applied(alpha) == commits[-1]
    for name in ("erin", "frank", "grace"):
        assert alpha.run(["getent", "passwd", name], check=False).returncode == 0
