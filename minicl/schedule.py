"""The jobs of the minion's scheduler (Salt's own), from cluster.json.

The base role writes them to ``/etc/salt/minion.d/minicl-schedule.conf`` and restarts
minicl-minion.service when they change (a masterless salt-minion reads its schedule from its
config at start; it never refreshes a pillar without a master):

- ``minicl-highstate``: ``state.apply`` every ``schedule.interval``, up to ``schedule.splay``
  later at random, never two at a time; its result goes to the minicl returner (metrics);
- ``minicl-checks``: the host checks every few minutes, so their metrics stay fresh between runs.
"""

import os

import yaml

CHECKS_INTERVAL = 300


def config_path(salt_config_dir):
    """The minion config file that holds the jobs: minion.d beside the minion config."""
    return os.path.join(salt_config_dir, "minion.d", "minicl-schedule.conf")


def jobs(cluster):
    return {
        "minicl-highstate": {
            "function": "state.apply",
            "seconds": cluster.seconds("schedule", "interval"),
            "splay": cluster.seconds("schedule", "splay"),
            "maxrunning": 1,
            # Not at the minion's start: bootstrap has just applied, and a restart for a changed
            # schedule comes from a run that is still finishing.
            "run_on_start": False,
            "returner": "minicl",
            "return_job": False,
        },
        "minicl-checks": {
            "function": "minicl_checks.run",
            "seconds": CHECKS_INTERVAL,
            "maxrunning": 1,
            "return_job": False,
        },
    }


def render(cluster):
    return (
        "# Managed by minicl from cluster.json (schedule); changes here are overwritten.\n"
        + yaml.safe_dump({"schedule": jobs(cluster)}, default_flow_style=False, sort_keys=True)
    )
