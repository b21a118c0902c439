"""Root mail: Postfix as a null client that sends everything through the cluster's relay.

Pure renderers (main.cf, the SASL password map, /etc/aliases), what installing the password
map and the aliases takes (what would change, then doing it), and small helpers the execution
module uses (queue, test message).
"""

import json
import os
import secrets
import subprocess
import time

from minicl import paths
from minicl.errors import MiniclError
from minicl.files import read_file, write_file


class MailError(MiniclError):
    """A Postfix tool (newaliases, postmap) failed; the message has its error output."""


SASL_PASSWD = paths.SASL_PASSWD
CA_CERT = paths.CLUSTER_CA
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
IMPLICIT_TLS_PORT = 465


def nexthop(cluster):
    """The relayhost value: ``[relay]:port`` (brackets: no MX lookup)."""
    return f"[{cluster.data['smtp']['relay']}]:{cluster.smtp_port()}"


def render_main_cf(cluster, host):
    fqdn = cluster.fqdn(host)
    implicit_tls = cluster.smtp_port() == IMPLICIT_TLS_PORT
    lines = [
        "# Managed by minicl from cluster.json; changes here are overwritten.",
        "# A null client: all mail leaves through the cluster's authenticated relay.",
        "compatibility_level = 3.6",
        f"myhostname = {fqdn}",
        "myorigin = /etc/mailname",
        "mydestination = $myhostname, localhost.$mydomain, localhost",
        "inet_interfaces = loopback-only",
        "inet_protocols = all",
        "mynetworks = 127.0.0.0/8 [::1]/128",
        "alias_maps = hash:/etc/aliases",
        "alias_database = hash:/etc/aliases",
        f"relayhost = {nexthop(cluster)}",
        "smtp_sasl_auth_enable = yes",
        f"smtp_sasl_password_maps = hash:{SASL_PASSWD}",
        "smtp_sasl_security_options = noanonymous",
        "smtp_sasl_tls_security_options = noanonymous",
        # "secure": TLS required, certificate verified against the system CAs, name checked.
        "smtp_tls_security_level = secure",
        f"smtp_tls_CAfile = {CA_BUNDLE}",
        "smtp_tls_loglevel = 1",
        f"smtp_tls_wrappermode = {'yes' if implicit_tls else 'no'}",
        # The relayhost is bracketed (no MX lookup): resolve it like the rest of the system does,
        # /etc/hosts then DNS (with "dns" first, a temporary DNS failure would not fall through).
        "smtp_host_lookup = native",
        "maillog_file = /var/log/postfix.log",
        "biff = no",
        "append_dot_mydomain = no",
        "readme_directory = no",
    ]
    return "\n".join(lines) + "\n"


def render_sasl_passwd(cluster):
    smtp = cluster.data["smtp"]
    return f"{nexthop(cluster)} {smtp['username']}:{smtp['password']}\n"


def render_aliases(cluster, system_accounts):
    """/etc/aliases: root to admin_email, every system account to root."""
    lines = [
        "# Managed by minicl from cluster.json; changes here are overwritten.",
        f"root: {cluster.data['admin_email']}",
        "postmaster: root",
    ]
    lines += [f"{name}: root" for name in sorted(system_accounts) if name not in ("root", "postmaster")]
    return "\n".join(lines) + "\n"


def system_accounts(passwd_path="/etc/passwd"):
    """Names of the local system accounts (uid < 1000, and nobody)."""
    names = []
    with open(passwd_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split(":")
            if (
                len(fields) >= 3
                and fields[2].isdigit()
                and (int(fields[2]) < 1000 or int(fields[2]) == 65534)
            ):
                names.append(fields[0])
    return names


POSTFIX_PRESEED = "postfix postfix/main_mailer_type select No configuration\n"


def package_installed(name):
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.endswith("ok installed")


def preseed_postfix():
    """Tell debconf, before Postfix is installed, to leave mail routing to minicl."""
    subprocess.run(
        ["debconf-set-selections"], input=POSTFIX_PRESEED, capture_output=True, text=True, check=True
    )


def ca_trusted(ca_file=CA_CERT, bundle=CA_BUNDLE):
    """Whether the system's CA bundle trusts ``ca_file``."""
    return (
        subprocess.run(
            ["openssl", "verify", "-CAfile", bundle, ca_file], capture_output=True, check=False
        ).returncode
        == 0
    )


def trust_cas():
    """Rebuild the system's CA bundle from /usr/local/share/ca-certificates (and Debian's)."""
    subprocess.run(["update-ca-certificates", "--fresh"], capture_output=True, text=True, check=True)


def _older(db, source):
    return not os.path.exists(db) or (
        os.path.exists(source) and os.path.getmtime(db) < os.path.getmtime(source)
    )


def aliases_changes(path, wanted):
    """What installing ``wanted`` as ``path`` (/etc/aliases) would change: {} if nothing,
    else "text" (it differs) and "newaliases" (the map must be rebuilt)."""
    changes = {}
    if read_file(path) != wanted:
        changes["text"] = True
    if changes or _older(path + ".db", path):
        changes["newaliases"] = f"{path}.db rebuilt"
    return changes


def install_aliases(path, wanted):
    """Write ``path`` if it differs and rebuild its map; raises MailError if newaliases fails."""
    if read_file(path) != wanted:
        write_file(path, wanted, 0o644)
    result = subprocess.run(["newaliases"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MailError(f"newaliases failed: {result.stderr.strip()}")


def _owner_mode(path):
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_uid, info.st_mode & 0o777


def sasl_passwd_changes(path, wanted, nexthop_text):
    """What installing the credentials ``wanted`` as ``path`` would change ({} if nothing);
    never the credentials themselves."""
    db = path + ".db"
    changes = {}
    if read_file(path) != wanted:
        changes["credentials"] = f"for {nexthop_text} (content hidden)"
    if any(_owner_mode(p) not in (None, (0, 0o600)) for p in (path, db)):
        changes["mode"] = "0600, owner root"
    if "credentials" in changes or _older(db, path):
        changes["lookup table"] = f"{db} rebuilt with postmap"
    return changes


def install_sasl_passwd(path, wanted, changes):
    """Write the credentials (mode 0600, root, never readable by others, also not for a
    moment) and rebuild the postmap table, as ``changes`` says; raises MailError."""
    result = None
    old_umask = os.umask(0o077)
    try:
        if "credentials" in changes:
            write_file(path, wanted, 0o600)
        if "lookup table" in changes:
            result = subprocess.run(["postmap", f"hash:{path}"], capture_output=True, text=True, check=False)
    finally:
        os.umask(old_umask)
    for p in (path, path + ".db"):
        if os.path.exists(p):
            os.chown(p, 0, 0)
            os.chmod(p, 0o600)
    if result is not None and result.returncode != 0:
        raise MailError(f"postmap {path} failed: {result.stderr.strip()}")


def queue():
    """{"size": N, "oldest_age_seconds": S or None, "messages": [...]} from ``postqueue -j``."""
    result = subprocess.run(["postqueue", "-j"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"postqueue -j failed: {result.stderr.strip()}")
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    now = time.time()
    ages = [now - m["arrival_time"] for m in messages]
    return {
        "size": len(messages),
        "oldest_age_seconds": int(max(ages)) if ages else None,
        "messages": [
            {
                "queue_id": m["queue_id"],
                "queue_name": m["queue_name"],
                "sender": m["sender"],
                "recipients": [r["address"] for r in m["recipients"]],
                "reason": "; ".join(r.get("delay_reason", "") for r in m["recipients"]).strip("; "),
            }
            for m in messages
        ],
    }


LOG_FILE = paths.POSTFIX_LOG


def send_test_message(to, subject, body, fqdn):
    """Hand a message to Postfix; returns its Message-ID (to follow it in the log)."""
    message_id = f"<minicl-test-{secrets.token_hex(8)}@{fqdn}>"
    message = f"To: {to}\nSubject: {subject}\nMessage-ID: {message_id}\n\n{body}\n"
    result = subprocess.run(
        ["/usr/sbin/sendmail", "-oi", "-t"], input=message, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"sendmail failed: {result.stderr.strip()}")
    return message_id


def delivery_status(message_id, log_lines):
    """(status, detail) of the message with ``message_id`` from Postfix log lines, or (None, "").

    status is Postfix's: sent, deferred, bounced, expired.
    """
    queue_id = None
    for line in log_lines:
        if queue_id is None and f"message-id={message_id}" in line:
            queue_id = line.split(": message-id=")[0].rsplit(" ", 1)[-1]
        elif queue_id and f" {queue_id}: to=<" in line and " status=" in line:
            status, _, detail = line.split(" status=", 1)[1].partition(" ")
            return status, detail.strip().strip("()")
    return None, ""
