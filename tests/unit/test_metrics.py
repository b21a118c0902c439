"""The textfile metrics every host writes for the monitor."""

import os
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from minicl import metrics
from minicl.checks import Check

STATUS = {
    "ok": True,
    "commit": "a" * 40,
    "commit_time": "2026-11-22T05:00:00Z",
    "last_good_fetch": "2026-11-22T06:00:00Z",
}


def samples(path):
    with open(path, encoding="utf-8") as f:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(f.read())
            for s in family.samples
        }


@pytest.mark.parametrize(
    "fun, args, expected",
    [
        ("state.apply", [], True),
        ("state.highstate", [], True),
        ("state.apply", ["test=False"], True),
        ("state.apply", [{"saltenv": "base"}], True),
        ("state.apply", ["test=True"], False),
        ("state.apply", [{"test": True}], False),
        ("state.highstate", ["test=true"], False),
        ("state.apply", ["minicl.base.users"], False),
        ("state.apply", ["mods=minicl.base.users"], False),
        ("state.apply", [{"mods": "minicl.base"}], False),
        ("state.sls", ["minicl.base"], False),
        ("test.ping", [], False),
        ("minicl_checks.run", [], False),
    ],
)
def test_only_real_highstates_count_as_runs(fun, args, expected):
    assert metrics.is_highstate(fun, args) is expected


def test_run_summary_counts_results_and_changes():
    ret = {
        "a": {"result": True, "changes": {}},
        "b": {"result": True, "changes": {"diff": "x"}},
        "c": {"result": False, "changes": {}},
        "d": {"result": None, "changes": {}},
    }
    assert metrics.run_summary(ret) == {"succeeded": 2, "failed": 1, "changed": 1}


def test_a_run_refused_for_another_in_progress_is_no_run():
    refused = [
        'The function "state.apply" is running as PID 4242 and was started at 2026, Nov 22 08:00:00.000000 '
        "with jid 20261122080000000000"
    ]
    assert metrics.refused_as_concurrent(refused)
    assert not metrics.refused_as_concurrent(["Pillar failed to render with the following messages:"])
    assert not metrics.refused_as_concurrent({"a": {"result": True}})


def test_nothing_rendered_counts_as_a_failure():
    assert metrics.run_summary(["Pillar failed to render with the following messages:", "..."]) == {
        "succeeded": 0,
        "failed": 1,
        "changed": 0,
    }


def test_run_metrics(tmp_path):
    path = metrics.write_run(
        {"succeeded": 40, "failed": 0, "changed": 2},
        STATUS,
        "a" * 40,
        directory=str(tmp_path),
        now=1_800_000_000,
    )
    assert path == str(tmp_path / "minicl_run.prom")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # the exporter runs as "prometheus"
    found = samples(path)
    assert found[("minicl_run_last_timestamp_seconds", ())] == 1_800_000_000
    assert found[("minicl_run_success", ())] == 1
    assert found[("minicl_run_states", (("result", "changed"),))] == 2
    assert found[("minicl_run_states", (("result", "failed"),))] == 0
    assert found[("minicl_config_commit_info", (("commit", "a" * 40),))] == 1
    assert found[("minicl_config_commit_timestamp_seconds", ())] == 1_795_323_600
    assert found[("minicl_config_fetch_ok", ())] == 1
    assert found[("minicl_config_last_good_fetch_timestamp_seconds", ())] == 1_795_327_200
    assert not any(name == "minicl_config_error_info" for name, _ in found)
    assert os.listdir(tmp_path) == ["minicl_run.prom"]  # no temporary file left


def test_failed_run_with_config_error(tmp_path):
    status = dict(
        STATUS,
        ok=False,
        error="commit bbbbbbbbbbbb is invalid and was not applied:\n"
        'cluster.json: admin_email: "x" is not an e-mail address' + " x" * 200,
    )
    found = samples(
        metrics.write_run({"succeeded": 3, "failed": 1, "changed": 0}, status, directory=str(tmp_path))
    )
    assert found[("minicl_run_success", ())] == 0
    assert found[("minicl_config_fetch_ok", ())] == 0
    [(labels, value)] = [
        (labels, v) for (name, labels), v in found.items() if name == "minicl_config_error_info"
    ]
    error = dict(labels)["error"]
    assert value == 1 and error.startswith(
        "commit bbbbbbbbbbbb is invalid and was not applied: cluster.json: admin"
    )
    assert len(error) == metrics.ERROR_LABEL_MAX and error.endswith("...") and "\n" not in error


def test_commit_time_only_for_the_commit_it_belongs_to(tmp_path):
    found = samples(
        metrics.write_run(
            {"succeeded": 1, "failed": 0, "changed": 0}, STATUS, "c" * 40, directory=str(tmp_path)
        )
    )
    assert found[("minicl_config_commit_info", (("commit", "c" * 40),))] == 1
    assert ("minicl_config_commit_timestamp_seconds", ()) not in found


def test_check_metrics(tmp_path):
    checks = [
        Check("disk /", True, "41% used", 0.41),
        Check("postfix", False, "not running", 0),
        Check("mail queue", True, "0 message(s)", 0),
    ]
    found = samples(metrics.write_checks(checks, directory=str(tmp_path), now=5))
    assert found[("minicl_check_ok", (("check", "disk /"),))] == 1
    assert found[("minicl_check_ok", (("check", "postfix"),))] == 0
    assert found[("minicl_check_value", (("check", "disk /"),))] == 0.41
    assert found[("minicl_checks_last_timestamp_seconds", ())] == 5


def test_nothing_written_without_a_node_exporter(tmp_path):
    assert metrics.write_checks([], directory=str(tmp_path / "absent")) is None
    assert not (tmp_path / "absent").exists()


def test_failed_states_name_each_failure_with_its_comment_on_one_line():
    ret = {
        "a": {"result": True, "comment": "fine"},
        "b": {"result": False, "comment": "nft said:\n  Error: no such table"},
        "c": {"result": None, "comment": "would change"},
        "d": "not a state",
    }
    assert metrics.failed_states(ret) == {"b": "nft said: Error: no such table"}
