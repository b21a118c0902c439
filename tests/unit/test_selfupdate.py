"""minicl updating itself: releases, the decision, canaries, the trial and its roll-back, the
metrics, the state. What a real host does with them is in tests/integration/test_selfupdate.py."""

import json
import os
import pathlib
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from minicl import api, metrics, releases, rollout, selfcheck, selfupdate
from minicl.cluster import Cluster

from . import loader

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "cluster.json.example").read_text())
OLD, NEW = "a" * 40, "b" * 40


def fake_release(root, name, commit="", built_at=100):
    folder = root / "releases" / name
    (folder / "bin").mkdir(parents=True)
    (folder / releases.RECORD).write_text(json.dumps({"commit": commit, "built_at": built_at}))
    return folder


# -- releases ------------------------------------------------------------------------------


def test_a_process_knows_its_release_only_inside_the_release_layout(tmp_path):
    folder = fake_release(tmp_path, "aaaaaaaaaaaa", OLD)
    assert releases.root(str(folder)) == str(tmp_path)
    assert releases.running(str(folder))["commit"] == OLD
    assert releases.program("salt-call", str(folder)) == f"{tmp_path}/current/bin/salt-call"
    assert releases.share_dir(str(folder)) == f"{tmp_path}/current/share/minicl"
    # A development venv, or a release folder without its record (an unfinished build): none.
    assert releases.root(str(tmp_path / "venv")) is None
    (folder / releases.RECORD).unlink()
    assert releases.root(str(folder)) is None


def test_switch_replaces_current_and_bin_follows_it(tmp_path):
    fake_release(tmp_path, "one", OLD)
    fake_release(tmp_path, "two", NEW)
    releases.switch(str(tmp_path), "one")
    assert releases.current(str(tmp_path)) == "one"
    assert os.readlink(tmp_path / "bin") == "current/bin"
    releases.switch(str(tmp_path), "two")
    assert releases.current(str(tmp_path)) == "two"
    assert not (tmp_path / "current.new").exists()


def test_switch_refuses_an_unfinished_build(tmp_path):
    fake_release(tmp_path, "one", OLD)
    (tmp_path / "releases" / "half").mkdir()
    releases.switch(str(tmp_path), "one")
    with pytest.raises(releases.ReleaseError, match="no finished minicl release"):
        releases.switch(str(tmp_path), "half")
    assert releases.current(str(tmp_path)) == "one"


def test_build_installs_from_the_wheelhouse_only_and_writes_the_record_last(tmp_path):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            os.makedirs(cmd[3])
        return subprocess.CompletedProcess(cmd, 0, "", "")

    name = releases.build(str(tmp_path), NEW, "/src", wheelhouse="http://w/", run=run)
    assert name == NEW[:12]
    assert calls[1][-6:] == ["--no-index", "--find-links", "http://w/", "--trusted-host", "w", "/src"]
    assert releases.record(str(tmp_path), name)["commit"] == NEW
    # Built already: kept as it is.
    calls.clear()
    assert releases.build(str(tmp_path), NEW, "/src", run=run) == name and calls == []


def test_a_failed_build_leaves_no_release_folder(tmp_path):
    def run(cmd, **kwargs):
        if cmd[1:3] == ["-m", "venv"]:
            os.makedirs(cmd[3])
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for salt<3009")

    with pytest.raises(releases.ReleaseError, match="installing Salt and minicl.*No matching distribution"):
        releases.build(str(tmp_path), NEW, "/src", run=run)
    assert os.listdir(tmp_path / "releases") == []


def test_prune_keeps_what_it_is_told(tmp_path):
    for name in ("one", "two", "three"):
        fake_release(tmp_path, name)
    assert releases.prune(str(tmp_path), keep={"two", "three"}) == ["one"]
    assert sorted(os.listdir(tmp_path / "releases")) == ["three", "two"]


# -- deciding ------------------------------------------------------------------------------


def decide(pin=NEW, running=OLD, record=None, config="c1", ready=(True, "go"), active=False):
    return selfupdate.decide(
        {"commit": pin, "url": "u"} if pin else None,
        running,
        record or {},
        config,
        lambda: ready,
        lambda name: active,
    )


def test_decide():
    assert decide(pin=None)[0] == "none"
    assert decide(pin=OLD) == ("none", f"minicl {OLD[:12]} (the pinned commit) runs here")
    assert decide() == ("update", "go")
    assert decide(ready=(False, "waiting for the canaries")) == ("wait", "waiting for the canaries")
    failed = {"failed": {"commit": NEW, "stage": "first run", "error": "boom", "at": 0}}
    action, why = decide(record=failed)
    assert action == "failed" and "does not try" in why and "boom" in why
    # A failure of another commit is history: the new pin is tried.
    assert decide(pin="c" * 40, record=failed)[0] == "update"
    # A self-check failure is tried again with another config commit, not with the same one.
    checked = {"failed": {"commit": NEW, "stage": "self-check", "error": "x", "config_commit": "c1"}}
    assert decide(record=checked)[0] == "failed"
    assert decide(record=checked, config="c2")[0] == "update"
    trial = {"trial": {"commit": NEW, "name": NEW[:12], "previous": OLD[:12]}}
    assert decide(record=trial, active=True)[0] == "none"
    assert decide(record=trial, active=False)[0] == "resume"


# -- canaries ------------------------------------------------------------------------------


def rollout_cluster(canaries=("alpha",), soak="30m"):
    data = dict(EXAMPLE, rollout={"canaries": list(canaries), "soak": soak})
    return Cluster(data)


def prometheus(good=None, failing=()):
    def ask(cluster, promql):
        if "good_since" in promql:
            return [{"metric": {"instance": h}, "value": [0, str(s)]} for h, s in (good or {}).items()]
        return [{"metric": {"instance": h}, "value": [0, "0"]} for h in failing]

    return ask


def test_without_canaries_every_host_updates_at_once():
    assert rollout.may_update(Cluster(EXAMPLE), "beta", NEW, ask=None)[0] is True


def test_a_canary_updates_at_once():
    assert rollout.may_update(rollout_cluster(), "alpha", NEW, ask=None) == (True, "alpha is a canary")


def test_the_others_wait_for_the_soak_time():
    cluster = rollout_cluster()
    ready, why = rollout.may_update(cluster, "beta", NEW, prometheus({"alpha": 600}))
    assert not ready and "alpha has run it for 600 s" in why and "30m" in why
    ready, why = rollout.may_update(cluster, "beta", NEW, prometheus({}))
    assert not ready and "alpha does not run it successfully" in why
    assert rollout.may_update(cluster, "beta", NEW, prometheus({"alpha": 1800}))[0] is True
    # A canary with a failed run in the soak window does not count.
    assert not rollout.may_update(cluster, "beta", NEW, prometheus({"alpha": 1800}, failing=["alpha"]))[0]


def test_without_a_monitor_the_others_wait_and_say_why():
    def down(cluster, promql):
        raise rollout.MonitorUnreachable("watch (198.51.100.13:9090): [Errno 111] Connection refused")

    ready, why = rollout.may_update(rollout_cluster(), "beta", NEW, down)
    assert not ready and "no monitor answered" in why and "Connection refused" in why


def problems_of(data):
    try:
        api.loads(json.dumps(data))
    except api.ConfigError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_canaries_are_checked_against_hosts_and_need_a_monitor():
    data = dict(EXAMPLE, rollout={"canaries": ["alpha", "nope"], "soak": "2h"})
    assert problems_of(data) == ['cluster.json: rollout.canaries[1]: "nope" is not a host in hosts']
    data["rollout"]["canaries"] = ["alpha"]
    data["hosts"] = {h: dict(s, roles=["base"]) for h, s in EXAMPLE["hosts"].items()}
    assert "no host has the monitor role" in problems_of(data)[0]
    data = dict(EXAMPLE, rollout={"soak": "soon"})
    assert problems_of(data)[0].startswith("cluster.json: rollout.soak:")


# -- self-check ----------------------------------------------------------------------------


def test_the_self_check_fails_on_any_failed_state_and_on_no_highstate():
    states = {
        "file_|-a_|-/x_|-managed": {
            "result": True,
            "changes": {},
            "__sls__": "minicl.base",
            "__run_num__": 0,
        },
        "cmd_|-b_|-x_|-run": {"result": None, "changes": {}, "__sls__": "roles.web", "__run_num__": 1},
        "minicl_users_|-minicl-users_|-x_|-managed": {
            "result": False,
            "comment": "no module\nnamed x",
            "__sls__": "minicl.base.users",
            "__run_num__": 2,
        },
    }
    problems, count, would_change = selfcheck.highstate_problems(states)
    assert problems == ["minicl.base.users: minicl-users: no module named x"]
    assert (count, would_change) == (3, 1)
    problems, count, _ = selfcheck.highstate_problems(["Rendering SLS 'base:minicl.base' failed: Jinja"])
    assert count == 0 and "does not render" in problems[0]


# -- metrics -------------------------------------------------------------------------------


def samples(path):
    text = pathlib.Path(path).read_text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_release_metrics(tmp_path):
    path = metrics.write_release("0.1+abc", NEW, 1000, {}, directory=str(tmp_path))
    found = samples(path)
    assert found[("minicl_release_info", (("commit", NEW), ("version", "0.1+abc")))] == 1
    assert found[("minicl_release_good_since_timestamp_seconds", (("commit", NEW),))] == 1000
    assert found[("minicl_update_failed", ())] == 0
    failed = {"commit": NEW, "stage": "first run", "error": "minicl.base: x failed"}
    found = samples(metrics.write_release("0.1+abc", OLD, None, failed, "waiting", directory=str(tmp_path)))
    assert found[("minicl_update_failed", ())] == 1
    assert (
        "minicl_update_error_info",
        (("commit", NEW), ("error", "minicl.base: x failed"), ("stage", "first run")),
    ) in found
    assert not any(name == "minicl_release_good_since_timestamp_seconds" for name, _ in found)


def test_good_since():
    running = {"commit": NEW, "built_at": 5}
    assert selfupdate.good_since({"good": {"commit": NEW, "since": 9}}, running) == 9
    assert selfupdate.good_since({"trial": {"commit": NEW}}, running) is None  # on trial: not yet
    assert selfupdate.good_since({}, running) == 5  # installed or bootstrapped with it


# -- the trial -----------------------------------------------------------------------------


@pytest.fixture
def trial_host(tmp_path, monkeypatch):
    fake_release(tmp_path, OLD[:12], OLD)
    fake_release(tmp_path, NEW[:12], NEW)
    releases.switch(str(tmp_path), NEW[:12])
    record = tmp_path / "release.json"
    record.write_text(
        json.dumps({"trial": {"commit": NEW, "name": NEW[:12], "previous": OLD[:12], "started": 1}})
    )
    monkeypatch.setattr(selfupdate, "wait_for_runs", lambda cache_dir: None)
    monkeypatch.setattr(selfupdate, "_minion_scheduled", lambda: True)
    monkeypatch.setattr(selfupdate, "say", lambda message, error=False: None)
    monkeypatch.setattr(selfupdate, "write_metrics_with", lambda release_dir: None)
    restarted, runs = [], []
    monkeypatch.setattr(
        selfupdate, "restart_minion", lambda release_dir, settle: restarted.append(release_dir)
    )
    return tmp_path, record, restarted, runs


def run_trial(tmp_path, record, monkeypatch, first_runs):
    results = iter(first_runs)

    def first_run(release_dir):
        outcome = next(results)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(selfupdate, "first_run", first_run)
    return selfupdate.trial(str(tmp_path), "alpha", str(tmp_path), str(record), settle=0)


def test_a_good_first_run_keeps_the_new_release(trial_host, monkeypatch):
    root, record, restarted, _ = trial_host
    assert run_trial(root, record, monkeypatch, [{}]) == 0
    assert releases.current(str(root)) == NEW[:12]
    assert restarted == [str(root / "releases" / NEW[:12])]
    data = json.loads(record.read_text())
    assert "trial" not in data and data["good"]["commit"] == NEW


def test_a_failed_first_run_rolls_back_and_records_the_commit(trial_host, monkeypatch):
    root, record, restarted, _ = trial_host
    failed = {"cmd_|-minicl-break_|-false_|-run": 'Command "false" run'}
    assert run_trial(root, record, monkeypatch, [failed, {}]) == 1
    assert releases.current(str(root)) == OLD[:12]
    assert restarted[-1] == str(root / "releases" / OLD[:12])
    data = json.loads(record.read_text())
    assert data["failed"]["commit"] == NEW and "minicl-break" in data["failed"]["error"]
    assert "trial" not in data


def test_a_state_that_failed_before_does_not_roll_back(trial_host, monkeypatch):
    root, record, _, _ = trial_host
    (root / "last_run.json").write_text(json.dumps({"failed": ["cmd_|-web-broken_|-x_|-run"]}))
    assert run_trial(root, record, monkeypatch, [{"cmd_|-web-broken_|-x_|-run": "still broken"}]) == 0
    assert releases.current(str(root)) == NEW[:12]


def test_a_minion_that_does_not_come_back_rolls_back(trial_host, monkeypatch):
    root, record, _, _ = trial_host

    def restart(release_dir, settle):
        if release_dir.endswith(NEW[:12]):
            raise selfupdate.UpdateError("minicl-minion.service did not stay up (failed)", stage="first run")

    monkeypatch.setattr(selfupdate, "restart_minion", restart)
    assert run_trial(root, record, monkeypatch, [{}]) == 1
    assert releases.current(str(root)) == OLD[:12]
    assert "did not stay up" in json.loads(record.read_text())["failed"]["error"]


# -- the state -----------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["test", "real"])
def testmode(request):
    return request.param


def test_the_state_reports_what_converge_decided(testmode, monkeypatch):
    pillar = {
        "minicl": {
            "cluster": EXAMPLE,
            "host": {"name": "alpha"},
            "status": {"commit": "c1"},
            "applied_file": "/var/lib/minicl/applied.json",
            "release": {"pin": {"commit": NEW, "url": "ssh://git@git/minicl.git"}},
        }
    }
    state = loader.load_state("minicl_release", testmode, pillar)
    state.__opts__["id"] = "alpha"
    seen = {}

    def converge(pin, cluster, host, minion_id, cache_dir, mirror, test=False):
        seen.update(pin=pin, host=host, cache_dir=cache_dir, test=test, url=mirror.url, commit=cluster.commit)
        return (None if test else True), {"minicl": {"old": OLD, "new": NEW}}, "switched"

    monkeypatch.setattr(state.selfupdate, "converge", converge)
    ret = state.pinned("minicl")
    assert ret["result"] is (None if testmode else True)
    assert ret["changes"] == {"minicl": {"old": OLD, "new": NEW}}
    assert seen == {
        "pin": {"commit": NEW, "url": "ssh://git@git/minicl.git"},
        "host": "alpha",
        "cache_dir": "/var/lib/minicl",
        "test": testmode,
        "url": "ssh://git@git/minicl.git",
        "commit": "c1",
    }


def test_the_state_without_a_pin_changes_nothing(testmode, monkeypatch, tmp_path):
    pillar = {
        "minicl": {
            "cluster": EXAMPLE,
            "host": {"name": "alpha"},
            "status": {"commit": "c1"},
            "applied_file": str(tmp_path / "applied.json"),
            "release": {"pin": None},
        }
    }
    state = loader.load_state("minicl_release", testmode, pillar)
    state.__opts__["id"] = "alpha"
    monkeypatch.setattr(selfupdate, "RECORD_FILE", str(tmp_path / "release.json"))
    monkeypatch.setattr(selfupdate, "write_metrics", lambda *args, **kwargs: None)
    ret = state.pinned("minicl")
    assert ret["result"] is True and ret["changes"] == {}
    assert "pins no minicl" in ret["comment"]


def test_an_update_that_fails_its_self_check_is_recorded_and_not_switched(tmp_path, monkeypatch):
    fake_release(tmp_path, OLD[:12], OLD)
    releases.switch(str(tmp_path), OLD[:12])
    monkeypatch.setattr(releases, "running", lambda: {"commit": OLD})
    monkeypatch.setattr(releases, "root", lambda: str(tmp_path))
    monkeypatch.setattr(selfupdate.paths, "SYSTEMD_RUN_DIR", str(tmp_path))
    monkeypatch.setattr(selfupdate, "write_metrics", lambda *args, **kwargs: None)
    monkeypatch.setattr(selfupdate, "say", lambda message, error=False: None)

    def build_and_check(*args):
        raise selfupdate.UpdateError("roles.web: Rendering SLS failed", stage="self-check")

    monkeypatch.setattr(selfupdate, "build_and_check", build_and_check)
    cluster = Cluster(EXAMPLE)
    cluster.commit = "c1"
    record = tmp_path / "release.json"
    result, changes, comment = selfupdate.converge(
        {"commit": NEW, "url": "u"}, cluster, "alpha", "alpha", str(tmp_path), None, record_path=str(record)
    )
    assert result is False and changes == {}
    assert "self-check failed: roles.web: Rendering SLS failed" in comment
    assert releases.current(str(tmp_path)) == OLD[:12]
    assert json.loads(record.read_text())["failed"]["stage"] == "self-check"
    # The next run does not build it again (same pin, same config).
    result, _, comment = selfupdate.converge(
        {"commit": NEW, "url": "u"}, cluster, "alpha", "alpha", str(tmp_path), None, record_path=str(record)
    )
    assert result is False and "does not try" in comment


def test_run_record(tmp_path):
    selfupdate.record_run(["b", "a"], str(tmp_path))
    data = json.loads((tmp_path / "last_run.json").read_text())
    assert data["failed"] == ["a", "b"] and data["at"] <= time.time()


def test_the_monitor_alerts_on_a_failed_update_and_on_a_rollout_that_takes_too_long():
    from minicl import monitor

    rules = {rule["alert"]: rule for rule in monitor.alert_rules(rollout_cluster(soak="2h"))}
    assert rules["MiniclUpdateFailed"]["expr"] == "minicl_update_error_info == 1"
    assert "{{ $labels.stage }}" in rules["MiniclUpdateFailed"]["annotations"]["description"]
    differ = rules["MiniclVersionsDiffer"]
    assert differ["expr"] == "count(count by (version) (minicl_release_info)) > 1"
    # The soak, two schedule intervals and splays (15m, 2m), and an hour to build and check.
    assert differ["for"] == f"{2 * 3600 + 2 * (15 + 2) * 60 + 3600}s"
    without = {rule["alert"]: rule for rule in monitor.alert_rules(Cluster(EXAMPLE))}
    assert without["MiniclVersionsDiffer"]["for"] == f"{2 * (15 + 2) * 60 + 3600}s"


def test_the_state_fails_when_the_pin_cannot_be_read(testmode):
    error = "the live commit 3f1c9a2b44e0 cannot be read: /var/lib/minicl/mirror.git is missing or damaged"
    pillar = {
        "minicl": {
            "cluster": EXAMPLE,
            "host": {"name": "alpha"},
            "applied_file": "/var/lib/minicl/applied.json",
            "release": {"pin": None, "error": error},
        }
    }
    state = loader.load_state("minicl_release", testmode, pillar)
    ret = state.pinned("minicl")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == f"minicl release: {error}"
