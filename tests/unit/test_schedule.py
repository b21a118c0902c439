"""The minion's scheduled jobs, from cluster.json."""

import json
import pathlib

import yaml

from minicl import config, schedule

EXAMPLE = pathlib.Path(__file__).parents[2] / "cluster.json.example"


def test_jobs_follow_the_schedule_of_cluster_json():
    data = json.loads(EXAMPLE.read_text())
    data["schedule"] = {"interval": "1h", "splay": "5m"}
    text = schedule.render(config.Cluster(data))
    assert text.startswith("# Managed by minicl")
    jobs = yaml.safe_load(text)["schedule"]
    assert jobs["minicl-highstate"] == {
        "function": "state.apply",
        "seconds": 3600,
        "splay": 300,
        "maxrunning": 1,
        "run_on_start": False,
        "returner": "minicl",
        "return_job": False,
    }
    assert jobs["minicl-checks"] == {
        "function": "minicl_checks.run",
        "seconds": schedule.CHECKS_INTERVAL,
        "maxrunning": 1,
        "return_job": False,
    }


def test_defaults():
    data = json.loads(EXAMPLE.read_text())
    del data["schedule"]
    highstate = schedule.jobs(config.Cluster(data))["minicl-highstate"]
    assert (highstate["seconds"], highstate["splay"]) == (900, 120)
