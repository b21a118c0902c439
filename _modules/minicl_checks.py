"""Execution module: minicl's host checks, each OK or FAIL with a reason.

    salt-call --local minicl_checks.run --retcode-passthrough   # exit 1 when a check fails

Checks: disk and inode use per real filesystem, load against the CPU count, available memory,
mail queue size and age, failed systemd units and clock sync (where systemd runs), sshd and
Postfix up, installed files unchanged from their packages and apt sources signed
(minicl.integrity, which keeps its record in minicl's state dir). Every run also updates the
checks' metrics for the monitor (minicl.metrics).
"""

try:
    from minicl import checks, config, metrics, paths, sshd

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_checks"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def run(verify_packages=True):
    """Run every check; returns {check: "OK reason" | "FAIL reason"} and sets a non-zero retcode
    when one fails. ``verify_packages=False`` reports the installed files as the last
    verification found them (the checks after each highstate do: the scheduled checks, every
    5 minutes, verify them). CLI Example: ``salt-call --local minicl_checks.run --retcode-passthrough``
    """
    cluster = (__pillar__.get("minicl") or {}).get("cluster")
    # A job of a masterless salt-minion has no pillar: ask sshd itself.
    ssh_port = (
        config.Cluster(cluster).firewall_option("ssh_port")
        if cluster
        else (sshd.listening_ports() or [22])[0]
    )
    found = checks.run_all(ssh_port, _state_dir(), verify_packages)
    metrics.write_checks(found, __opts__.get("minicl_textfile_dir", metrics.TEXTFILE_DIR))
    if any(not check.ok for check in found):
        __context__["retcode"] = 1
    return {check.name: f"{'OK' if check.ok else 'FAIL'} {check.reason}" for check in found}


def _state_dir():
    """minicl's state dir: the config repo's cache dir from the minicl external pillar's options
    (as the minicl returner finds it), else /var/lib/minicl."""
    for entry in __opts__.get("ext_pillar") or []:
        if isinstance(entry, dict) and "minicl" in entry:
            return (entry["minicl"] or {}).get("cache_dir", paths.STATE_DIR)
    return paths.STATE_DIR
