"""minicl-minion.service on a systemd test host: bootstrap installs, enables and starts it; the
first manual run right after bootstrap works; runs that meet wait for each other; a pushed commit
is applied by the schedule alone and shows in the journal; systemd restarts a killed minion; a
schedule change restarts it only after the run in progress; ``systemctl stop`` waits for a job;
a host that was cut off catches up in one run."""

import json
import os
import time

import pytest
import yaml

from minicl_lab import probes

from .conftest import changed_states, cluster_config, dump, salt_call, wait_for

ALPHA = ["198.51.100.171/24", "2001:db8:100::171/64"]
INTERVAL = 30
UNIT = "minicl-minion.service"
SLOW_ROLE = """\
slow:
  cmd.run:
    - name: echo started >> /root/slow.log; sleep {seconds}; echo finished >> /root/slow.log
"""


def schedule_config(users=None, interval=INTERVAL, roles=("base",)):
    data = cluster_config(
        {"alpha": {"ip": [a.split("/")[0] for a in ALPHA], "roles": list(roles)}},
        schedule={"interval": f"{interval}s", "splay": "2s"},
    )
    data["firewall"]["confirm_seconds"] = 0
    if users is not None:
        data["users"] = users
    return dump(data)


def with_user(name, uid):
    users = json.loads(schedule_config())["users"]
    users[name] = dict(users["bob"], uid=uid)
    return users


@pytest.fixture(scope="module")
def alpha(lab, git_server, deploy_key):
    host = lab.add_host("alpha", ALPHA)
    git_server.commit(
        {
            "cluster.json": schedule_config(),
            "deploy.key": deploy_key[0],
            "roles/slow/init.sls": SLOW_ROLE.format(seconds=8),
        },
        "scheduled",
    )
    host.write("/root/deploy.key", deploy_key[0], 0o600)
    result = host.run(
        ["minicl-bootstrap", f"--repo={git_server.url}", "--deploy-key=/root/deploy.key"],
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    host.bootstrap = result
    return host


def applied(host):
    return json.loads(host.read("/var/lib/minicl/applied.json"))["commit"]


def main_pid(host):
    return int(host.systemctl("show", "-p", "MainPID", "--value", UNIT).stdout)


def minion_journal(host):
    return host.run(["journalctl", "--no-pager", "-o", "cat", "-u", UNIT], check=False).stdout


def slow_log(host):
    return host.run("cat /root/slow.log 2>/dev/null", check=False).stdout.split()


def test_first_manual_run_right_after_bootstrap_applies(alpha):
    """No start-up run of the minion meets it: a user's first state.apply just works."""
    code, data, result = salt_call(alpha, "state.apply")
    assert code == 0 and isinstance(data["local"], dict), result.stdout + result.stderr
    assert changed_states(data) == {}
    assert "another run is in progress" not in result.stderr


def test_bootstrap_enables_and_starts_the_minion_with_systemd(alpha):
    assert f"{UNIT} enabled and started" in alpha.bootstrap.stdout
    assert alpha.systemctl("is-enabled", UNIT).stdout.strip() == "enabled"
    assert alpha.unit_state(UNIT) == "active"
    cmdline = alpha.read(f"/proc/{main_pid(alpha)}/cmdline").split("\0")
    assert cmdline[1].endswith("/salt-minion") and cmdline[2:4] == ["-c", "/etc/salt"]


def test_schedule_comes_from_cluster_json(alpha):
    text = alpha.read("/etc/salt/minion.d/minicl-schedule.conf")
    jobs = yaml.safe_load(text)["schedule"]
    assert jobs["minicl-highstate"] == {
        "function": "state.apply",
        "seconds": INTERVAL,
        "splay": 2,
        "maxrunning": 1,
        "run_on_start": False,
        "returner": "minicl",
        "return_job": False,
    }
    assert jobs["minicl-checks"]["function"] == "minicl_checks.run"


def test_minion_applies_a_pushed_commit_by_itself_and_says_so_in_the_journal(alpha, git_server):
    first = applied(alpha)
    pushed = git_server.commit({"cluster.json": schedule_config(with_user("carol", 2003))}, "add carol")
    started = time.monotonic()
    wait_for(
        "carol on alpha",
        lambda: alpha.run("getent passwd carol", check=False).returncode == 0,
        timeout=2 * INTERVAL + 60,
        explain=lambda: minion_journal(alpha)[-3000:],
    )
    wait_for("the applied record", lambda: applied(alpha) == pushed, timeout=30)
    print(
        f"commit {pushed[:12]} applied {time.monotonic() - started:.0f} s after the push (was {first[:12]})"
    )
    line = f"highstate succeeded at config commit {pushed[:12]}"
    wait_for("the run in the minion's journal", lambda: line in minion_journal(alpha), timeout=30)
    assert "minicl" in alpha.run(["journalctl", "--no-pager", "-t", "minicl"]).stdout
    # The scheduled run went through the returner: the monitor sees the new commit.
    wait_for(
        "run metrics of the scheduled run",
        lambda: pushed in alpha.read("/var/lib/prometheus/node-exporter/minicl_run.prom"),
        timeout=30,
    )


def test_manual_run_waits_for_the_run_in_progress_then_applies_the_newest_commit(alpha, git_server):
    alpha.systemctl("stop", UNIT)  # only the two runs of this test
    try:
        git_server.commit(
            {"cluster.json": schedule_config(with_user("carol", 2003), roles=("base", "slow"))}, "a slow role"
        )
        alpha.run("rm -f /root/slow.log")
        first = alpha.spawn(["salt-call", "--local", "--out=json", "state.apply"])
        wait_for("the first run in its slow state", lambda: slow_log(alpha) == ["started"], timeout=120)
        users = with_user("carol", 2003)
        users["dave"] = dict(users["bob"], uid=2004)
        newest = git_server.commit(
            {"cluster.json": schedule_config(users, roles=("base", "slow"))}, "add dave"
        )
        code, data, second = salt_call(alpha, "state.apply")
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, out + err
        assert code == 0 and isinstance(data["local"], dict), second.stdout + second.stderr
        assert "another run is in progress on this host (PID" in second.stderr
        assert slow_log(alpha) == ["started", "finished", "started", "finished"]  # one after the other
        assert applied(alpha) == newest
        assert alpha.run("getent passwd dave", check=False).returncode == 0
    finally:
        alpha.systemctl("start", UNIT)


def test_killed_minion_is_restarted_by_systemd(alpha):
    before = main_pid(alpha)
    alpha.run(["kill", "-9", str(before)])
    wait_for(
        "a new salt-minion",
        lambda: alpha.unit_state(UNIT) == "active" and main_pid(alpha) not in (0, before),
        timeout=60,
    )


def test_schedule_change_restarts_the_minion_after_the_run_in_progress(alpha, git_server):
    before = main_pid(alpha)
    alpha.run("rm -f /root/slow.log")
    users = json.loads(alpha.read("/var/lib/minicl/live/cluster.json"))["users"]
    pushed = git_server.commit(
        {"cluster.json": schedule_config(users, interval=40, roles=("base", "slow"))}, "a longer interval"
    )
    # The scheduled run that applies it writes the new schedule (which asks systemd for a
    # restart), then runs the slow role: the restart waits for that run to finish.
    line = f"highstate succeeded at config commit {pushed[:12]}"
    wait_for(
        "the scheduled run of the new schedule",
        lambda: line in minion_journal(alpha),
        timeout=2 * INTERVAL + 60,
        explain=lambda: minion_journal(alpha)[-3000:],
    )
    wait_for(
        "the restarted minion",
        lambda: alpha.unit_state(UNIT) == "active" and main_pid(alpha) != before,
        timeout=60,
    )
    journal = minion_journal(alpha)
    waited = journal.rindex("minicl-minion: waiting for the job(s) in progress to finish: state.apply")
    assert waited < journal.rindex(line) < journal.rindex("Started minicl-minion.service"), journal[-3000:]
    assert slow_log(alpha)[-1] == "finished"  # the run was not cut off
    assert (
        yaml.safe_load(alpha.read("/etc/salt/minion.d/minicl-schedule.conf"))["schedule"]["minicl-highstate"][
            "seconds"
        ]
        == 40
    )


def test_systemctl_stop_waits_for_the_running_job(alpha):
    alpha.run("rm -f /root/slow.log")
    wait_for("a scheduled run in its slow state", lambda: slow_log(alpha) == ["started"], timeout=120)
    started = time.monotonic()
    alpha.systemctl("stop", UNIT)
    print(f"systemctl stop took {time.monotonic() - started:.1f} s")
    assert slow_log(alpha) == ["started", "finished"]
    assert alpha.unit_state(UNIT) == "inactive"
    assert not probes.salt_jobs_running(alpha)


def test_host_that_was_cut_off_catches_up_in_one_run(alpha, git_server):
    # The minion stays stopped (previous test): only the runs below.
    git_server.stop_sshd()
    try:
        users = with_user("carol", 2003)
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
    assert os.path.basename(alpha.run("readlink /var/lib/minicl/live").stdout.strip()) == commits[-1]
