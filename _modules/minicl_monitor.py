"""Execution module: the monitor role's configuration files, computed from cluster.json.

    salt-call --local minicl_monitor.prometheus_config   # /etc/prometheus/prometheus.yml
    salt-call --local minicl_monitor.rules               # the alert rules
    salt-call --local minicl_monitor.node_targets        # every host the monitor scrapes
    salt-call --local minicl_monitor.app_targets         # the exporters of the apps, by type
    salt-call --local minicl_monitor.app_exporters       # the exporters this host runs for its apps

The monitor role's SLS writes each of these with ``file.managed`` (checked by promtool/amtool).
"""

try:
    from minicl import appliances, config, monitor

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_monitor"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _cluster():
    return config.from_pillar(__pillar__)


def prometheus_config():
    """prometheus.yml for this monitor host.

    CLI Example: ``salt-call --local minicl_monitor.prometheus_config``
    """
    cluster, host = _cluster()
    return monitor.render_prometheus(cluster, host)


def rules():
    """minicl's alert rules, with the timing of cluster.json.

    CLI Example: ``salt-call --local minicl_monitor.rules``
    """
    cluster, _ = _cluster()
    return monitor.render_rules(cluster)


def node_targets():
    """The node exporters of every host (file_sd JSON).

    CLI Example: ``salt-call --local minicl_monitor.node_targets``
    """
    cluster, _ = _cluster()
    return monitor.render_node_targets(cluster)


def app_targets():
    """{file: file_sd JSON} of the exporters of the apps, one file per app type with an exporter.

    CLI Example: ``salt-call --local minicl_monitor.app_targets``
    """
    cluster, _ = _cluster()
    return monitor.render_app_targets_files(cluster)


def app_exporters():
    """The exporters this host runs for its apps: package, service, /etc/default file and its text.

    CLI Example: ``salt-call --local minicl_monitor.app_exporters``
    """
    return appliances.exporter_setup((__pillar__.get("minicl") or {}).get("apps") or {})


def monitor_targets():
    """The Prometheus servers of every monitor host (file_sd JSON): monitors watch each other.

    CLI Example: ``salt-call --local minicl_monitor.monitor_targets``
    """
    cluster, _ = _cluster()
    return monitor.render_monitor_targets(cluster)


def prometheus_defaults():
    """/etc/default/prometheus: the retention from cluster.json.

    CLI Example: ``salt-call --local minicl_monitor.prometheus_defaults``
    """
    cluster, _ = _cluster()
    return monitor.render_prometheus_defaults(cluster)


def alertmanager_config():
    """alertmanager.yml: every alert to admin_email through this host's Postfix.

    CLI Example: ``salt-call --local minicl_monitor.alertmanager_config``
    """
    cluster, host = _cluster()
    return monitor.render_alertmanager(cluster, host)


def alertmanager_defaults():
    """/etc/default/prometheus-alertmanager: the options minicl's Alertmanager runs with.

    CLI Example: ``salt-call --local minicl_monitor.alertmanager_defaults``
    """
    return monitor.render_alertmanager_defaults()
