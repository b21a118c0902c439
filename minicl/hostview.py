"""What one host gets from a cluster: its minicl pillar, and the configuration minicl renders
for it (firewall ruleset, sshd drop-in, Postfix main.cf, the minion's schedule, syslog-ng's
configuration, an nginx or haproxy app's, and on a monitor host the Prometheus and Alertmanager
files). The external pillar and ``minicl.api`` both build it here."""

from minicl import acme, appliances, centrallog, firewall, mail, monitor, packages, paths, schedule, sshd
from minicl.cluster import addresses_by_host


def pillar_for(cluster, minion_id, status, applied_file=paths.APPLIED_FILE, checkout=None):
    """The ``minicl`` pillar of ``minion_id`` (short name or FQDN), or None if it is not a host
    of ``cluster``. Group roles in ``status["skipped_states"]`` are left out of ``states``.
    ``checkout``: the config repo's files at the cluster's commit (the packages keys are read there)."""
    host = cluster.host_for_minion(minion_id)
    if host is None:
        return None
    skipped = set(status.get("skipped_states") or ())
    return {
        "minicl": {
            "cluster": cluster.data,
            "host": cluster.host_view(host),
            "addresses": cluster.addresses(),
            "states": [sls for sls in cluster.role_states(host) if sls not in skipped],
            "apps": cluster.apps_of(host),
            "status": status,
            "applied_file": applied_file,
            "packages": packages.pillar(cluster, host, checkout),
            "logging": centrallog.pillar(cluster, host, checkout),
            "checkout": checkout,  # the config repo's files (an nginx site's folder, certificates)
            "acme": acme.pillar(cluster, checkout),
        }
    }


def configuration(cluster, host):
    """{file: text} minicl writes on ``host``, as far as cluster.json decides it (no secrets:
    the relay credentials are left out; no local firewall rules; sshd as when an admin can log
    in with a key)."""
    files = {
        paths.FIREWALL_SAVED: firewall.render_ruleset(firewall.host_spec(cluster, host)),
        paths.SSHD_DROPIN: sshd.render_dropin(True, "", cluster.firewall_option("ssh_port")),
        paths.POSTFIX_MAIN_CF: mail.render_main_cf(cluster, host),
        schedule.config_path(paths.SALT_CONFIG_DIR): schedule.render(cluster),
    }
    if centrallog.pillar(cluster, host) is not None:
        files[centrallog.SYSLOG_NG_CONF] = centrallog.render_syslog_ng(cluster, host)
    cluster_hosts = addresses_by_host(cluster.data)
    for app in cluster.apps_of(host).values():
        shown = getattr(appliances.module(app["type"]), "shown_files", None)
        files.update(shown(app, cluster_hosts) if shown else {})
    if "monitor" in cluster.host_roles(host):
        files.update(
            {
                paths.PROMETHEUS_CONFIG: monitor.render_prometheus(cluster, host),
                paths.PROMETHEUS_RULES: monitor.render_rules(cluster),
                paths.ALERTMANAGER_CONFIG: monitor.render_alertmanager(cluster, host),
            }
        )
    return files
