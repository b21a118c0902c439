"""Execution module: root mail through the cluster's relay.

salt-call --local minicl_mail.test            # send a test message to admin_email, follow it
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
    return config.from_pillar(__pillar__)


def main_cf():
    """The Postfix main.cf for this host. CLI Example: ``salt-call --local minicl_mail.main_cf``"""
    cluster, host = _cluster()
    return mail.render_main_cf(cluster, host)


def aliases():
    """/etc/aliases for this host: root to admin_email, system accounts to root.

    CLI Example: ``salt-call --local minicl_mail.aliases``
    """
    cluster, _ = _cluster()
    return mail.render_aliases(cluster, mail.system_accounts())


def mailname():
    """/etc/mailname for this host: its FQDN in the cluster's domain.

    CLI Example: ``salt-call --local minicl_mail.mailname``
    """
    cluster, host = _cluster()
    return cluster.fqdn(host) + "\n"


def queue():
    """The mail queue: ``{"size", "oldest_age_seconds", "messages"}``.

    CLI Example: ``salt-call --local minicl_mail.queue``
    """
    return mail.queue()


def test(to=None, wait=20):
    """Send a test message (to admin_email unless ``to``), follow it in Postfix's log for up to
    ``wait`` seconds, and say what happened to it. CLI Example: ``salt-call --local minicl_mail.test``

    ``delivered_to_relay`` is True only when the relay accepted this very message.
    """
    import time

    cluster, host = _cluster()
    to = to or cluster.data["admin_email"]
    fqdn = cluster.fqdn(host)
    subject = f"minicl test message from {fqdn} at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    message_id = mail.send_test_message(
        to, subject, "If you read this, mail from this host reaches you.", fqdn
    )
    deadline = time.monotonic() + float(wait)
    status, detail = None, ""
    while status in (None,) and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            with open(mail.LOG_FILE, encoding="utf-8", errors="replace") as f:
                status, detail = mail.delivery_status(message_id, f.readlines()[-2000:])
        except FileNotFoundError:
            pass
    return {
        "sent_to": to,
        "subject": subject,
        "message_id": message_id,
        "status": status or "still queued",
        "detail": detail,
        "delivered_to_relay": status == "sent",
        "queue": mail.queue(),
    }
