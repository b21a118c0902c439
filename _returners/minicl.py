"""Returner: after every highstate, tells the monitor how it went (node_exporter textfile).

``minicl-bootstrap`` sets ``return: minicl`` in the minion config, so every ``salt-call`` passes
its result here; the scheduled highstate job names this returner itself (minicl.schedule).
Each recorded run also leaves one line in the system log (``journalctl -t minicl``; under
minicl-minion.service, ``journalctl -u minicl-minion`` shows the scheduled ones).
Only real highstates are recorded (``state.apply`` or ``state.highstate`` without an SLS and
without ``test=True``; not one Salt refused because another run was in progress); then the
host checks run too, and the failed states are kept for minicl's self-update
(``last_run.json`` in the cache dir: a new release's first run is judged against them). See
minicl.metrics for the metrics. ``minicl_textfile_dir`` in the minion
config overrides the exporter's textfile directory (Debian's /var/lib/prometheus/node-exporter).
"""

import logging
import os
import syslog

try:
    from minicl import configrepo, metrics, paths, selfupdate, statusrecord
    from minicl.files import read_json

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

log = logging.getLogger(__name__)

__virtualname__ = "minicl"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package (with prometheus_client) is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _cache_dir():
    """The config repo's cache dir: masterless, from the minicl external pillar's options."""
    for entry in __opts__.get("ext_pillar") or []:
        if isinstance(entry, dict) and "minicl" in entry:
            return (entry["minicl"] or {}).get("cache_dir", paths.STATE_DIR)
    return None


def _config_status():
    """The config repo's status of this run: masterless, what this process's pillar compile
    found (even if status.json could not be written), else this host's status.json; under a
    master, the pillar's copy."""
    cache_dir = _cache_dir()
    if cache_dir:
        return configrepo.last_status(cache_dir) or statusrecord.read_status(
            statusrecord.status_path(cache_dir)
        )
    return (__pillar__.get("minicl") or {}).get("status") or {}


def returner(ret):
    if not metrics.is_highstate(ret.get("fun"), ret.get("fun_args")):
        return
    if metrics.refused_as_concurrent(ret.get("return")):
        return
    try:
        applied_file = (__pillar__.get("minicl") or {}).get("applied_file")
        applied = read_json(applied_file) if applied_file else {}
        summary, status = metrics.run_summary(ret.get("return")), _config_status()
        syslog.openlog("minicl", 0, syslog.LOG_DAEMON)
        syslog.syslog(
            syslog.LOG_INFO if summary["failed"] == 0 else syslog.LOG_ERR,
            metrics.run_line(summary, status, applied.get("commit")),
        )
        metrics.write_run(
            summary,
            status,
            applied.get("commit"),
            directory=__opts__.get("minicl_textfile_dir", metrics.TEXTFILE_DIR),
        )
        state_return = ret.get("return")
        selfupdate.record_run(
            list(metrics.failed_states(state_return))
            if isinstance(state_return, dict)
            else ["(nothing rendered)"],
            _cache_dir() or os.path.dirname(applied_file or paths.APPLIED_FILE),
        )
        # The scheduled checks verify the installed files; after a run, their last result.
        __salt__["minicl_checks.run"](verify_packages=False)
    except Exception:  # pylint: disable=broad-except
        # A returner must not turn a finished run into a crash; the stale-run alert catches this.
        log.exception("minicl: recording the run for the monitor failed")
