"""Execution module: root mail through the cluster's relay.

    salt-call --local minicl_mail.test            # send a test message to admin_email, show the queue
    salt-call --local minicl_mail.queue           # queue size, age of the oldest message, reasons
    salt-call --local minicl_mail.main_cf         # the main.cf minicl writes (no secret in it)
"""

try:
    from minicl import config, mail

    HAS_MINICL = True
except ImportError as exc:  # pragma: no cover
    HAS_MINICL = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl_mail"


def __virtual__():
    if not HAS_MINICL:
        return False, f"the minicl package is not importable: {IMPORT_ERROR}"
    return __virtualname__


def _cluster():
    return config.Cluster(__pillar__["minicl"]["cluster"]), __pillar__["minicl"]["host"]["name"]


def main_cf():
    """The Postfix main.cf for this host. CLI Example: ``salt-call --local minicl_mail.main_cf``"""
    cluster, host = _cluster()
    return mail.render_main_cf(cluster, host)


def aliases():
    """/etc/aliases for this host: root to admin_email, system accounts to root."""
    cluster, _ = _cluster()
    return mail.render_aliases(cluster, mail.system_accounts())


def mailname():
    cluster, host = _cluster()
    return cluster.fqdn(host) + "\n"


def queue():
    """The mail queue: ``{"size", "oldest_age_seconds", "messages"}``.

    CLI Example: ``salt-call --local minicl_mail.queue``
    """
    return mail.queue()


def test(to=None, wait=10):
    """Send a test message (to admin_email unless ``to``), wait up to ``wait`` s for it to leave,
    and report what happened. CLI Example: ``salt-call --local minicl_mail.test``
    """
    import time

    cluster, host = _cluster()
    to = to or cluster.data["admin_email"]
    subject = f"minicl test message from {cluster.fqdn(host)} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    mail.send_test_message(to, subject, "If you read this, mail from this host reaches you.")
    deadline = time.monotonic() + float(wait)
    while True:
        current = mail.queue()
        if current["size"] == 0 or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return {"sent_to": to, "subject": subject, "delivered_to_relay": current["size"] == 0, "queue": current}
