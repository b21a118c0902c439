"""Execution module: central logging's files on this host, computed from cluster.json.

    salt-call --local minicl_logging.syslog_ng_conf    # /etc/syslog-ng/syslog-ng.conf
    salt-call --local minicl_logging.tmpfiles          # the log host's retention rule
    salt-call --local minicl_logging.metrics_units     # the metrics timer and service
    salt-call --local minicl_logging.shipper           # a client's transport (minicl.logship)
    salt-call --local minicl_logging.drain_dropin      # the log host's syslog-ng stop

The base role's logging SLS writes each with ``file.managed`` (syslog-ng.conf checked with
``syslog-ng --syntax-only`` first).
"""

import sys

try:
    from minicl import centrallog, config, logship

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_logging"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def syslog_ng_conf():
    """syslog-ng.conf of this host: the journal to the log host (on the log host: stored).

    CLI Example: ``salt-call --local minicl_logging.syslog_ng_conf``
    """
    cluster, host = config.from_pillar(__pillar__)
    return centrallog.render_syslog_ng(cluster, host)


def tmpfiles():
    """The systemd-tmpfiles rule that keeps the log host's files for logging.retention.

    CLI Example: ``salt-call --local minicl_logging.tmpfiles``
    """
    cluster, _ = config.from_pillar(__pillar__)
    return centrallog.render_tmpfiles(cluster)


def metrics_units():
    """{path: text} of the timer and service writing the logging metrics.

    CLI Example: ``salt-call --local minicl_logging.metrics_units``
    """
    view = __pillar__["minicl"]["logging"]
    return centrallog.render_metrics_units(sys.executable, view["hosts"], view["is_log_host"])


def shipper():
    """The text of minicl.logship, which syslog-ng's own Python runs to send this host's lines.

    CLI Example: ``salt-call --local minicl_logging.shipper``
    """
    with open(logship.__file__, encoding="utf-8") as source:
        return source.read()


def drain_dropin():
    """On the log host: syslog-ng.service's drop-in that stores what it received before it stops.

    CLI Example: ``salt-call --local minicl_logging.drain_dropin``
    """
    cluster, _ = config.from_pillar(__pillar__)
    return centrallog.render_drain_dropin(sys.executable, centrallog.settings(cluster)["port"])
