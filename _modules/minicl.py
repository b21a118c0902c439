"""Execution module: what minicl knows about this host and its config repo.

salt-call --local minicl.status           # live commit, last good fetch, last error
salt-call --local minicl.validate /path/to/cluster.json
salt-call --local minicl.schedule_config  # the minion's scheduled jobs, from cluster.json
"""

import json
import os

try:
    from minicl import cli, config, schedule
    from minicl import paths as minicl_paths

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def status():
    """The config repo status from the pillar: commit applied, last good fetch, last error.

    CLI Example: ``salt-call --local minicl.status``
    """
    # Plain data: Salt (3008+) masks pillar containers in output; the status holds no secret.
    return json.loads(json.dumps(__pillar__.get("minicl", {}).get("status", {})))


def paths():
    """Where minicl keeps things on this host, by name (what the SLS files use).

    CLI Example: ``salt-call --local minicl.paths``
    """
    return minicl_paths.as_dict()


def validate(path):
    """Validate a cluster.json file (roles against the roles/ folder beside it), as
    ``minicl validate`` does; returns {"valid": bool, "problems": [...]}.

    CLI Example: ``salt-call --local minicl.validate /root/cluster.json``
    """
    problems = cli.validate_path(path)
    return {"valid": not problems, "problems": problems}


def schedule_file():
    """Where the base role writes the minion's schedule: minion.d beside the minion config.

    CLI Example: ``salt-call --local minicl.schedule_file``
    """
    return schedule.config_path(os.path.dirname(__opts__["conf_file"]))


def schedule_config():
    """The minion config file with the scheduled jobs (highstate, checks) of cluster.json.

    CLI Example: ``salt-call --local minicl.schedule_config``
    """
    return schedule.render(config.from_pillar(__pillar__)[0])
