"""The status record of the config repo: ``status.json`` in the cache dir (last good commit,
last good fetch, last error and bad commit, pending commit, skipped states, notice), and
``last_status``, this process's own record of its last update: what the run reports even when
status.json could not be written.
"""

import json
import logging
import os
from datetime import datetime, timezone

from minicl.diskspace import describe
from minicl.files import read_json, write_file

log = logging.getLogger(__name__)

ERROR_CHARS = 6000  # bound on the error a status carries into the pillar, log and metrics
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the times in a status, in UTC

# cache_dir -> (pid, status) of this process's last update, written to disk or not.
_LAST_STATUS = {}


def status_path(cache_dir):
    return os.path.join(cache_dir, "status.json")


def last_status(cache_dir):
    """The status this process's last ``update`` returned (None if it made none): what the
    run's returner reports, even when status.json could not be written."""
    pid, status = _LAST_STATUS.get(cache_dir, (None, None))
    return status if pid == os.getpid() else None


def now():
    return datetime.now(timezone.utc).strftime(TIME_FORMAT)


def read_status(status_path):
    """The status in ``status_path``, or {} if there is none (or it cannot be read)."""
    return read_json(status_path)


def save_status(cache_dir, status_path, status):
    """Record ``status`` as this process's last (see ``last_status``) and write it to
    ``status_path``; a failed write is logged, not raised. Returns ``status``."""
    _LAST_STATUS[cache_dir] = (os.getpid(), status)
    try:
        write_file(status_path, json.dumps(status, indent=2, sort_keys=True), 0o600)
    except OSError as exc:  # the run still reports it: see last_status
        log.error("minicl: could not write %s: %s", status_path, describe(exc))
    return status
