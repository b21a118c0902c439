"""Certificates of central logging, made with openssl.

The cluster's logging CA (``minicl logging-ca``: logging-ca.key and logging-ca.crt at the top of
the config repo) signs each host's certificate on the host itself: every host already holds the
config repo's checkout (root-only, /var/lib/minicl, with deploy.key), so signing there gives no
host a secret it does not already have, and needs no channel between hosts. Each host's own key
is made on the host (0600) and never leaves it.

    logcerts.make_ca(folder, "example.org")         # the CA files, refusing to overwrite
    logcerts.plan(view)                             # what is missing or due on this host
    logcerts.apply(view, todo)
"""

import ipaddress
import os
import secrets
import subprocess
import tempfile
from collections import namedtuple

from minicl import centrallog
from minicl.errors import MiniclError
from minicl.files import write_file

VALID_DAYS = 397
RENEW_DAYS = 30
CA_DAYS = 3650


class CertError(MiniclError):
    pass


def _openssl(*args, stdin=None):
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True, check=True)


def make_ca(folder, domain):
    """logging-ca.key (0600) and logging-ca.crt in ``folder``; refuses to overwrite either."""
    key_path, cert_path = (os.path.join(folder, n) for n in (centrallog.CA_KEY, centrallog.CA_CERT))
    for path in (key_path, cert_path):
        if os.path.exists(path):
            raise CertError(f"{path} exists: remove it first to replace the CA (hosts trust the old one)")
    with tempfile.TemporaryDirectory(prefix="minicl-ca-") as tmp:
        key, cert = os.path.join(tmp, "ca.key"), os.path.join(tmp, "ca.crt")
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
        _openssl(
            "req", "-x509", "-new", "-key", key, "-out", cert, "-days", str(CA_DAYS),
            "-subj", f"/O=minicl/CN=minicl logging CA {domain}",
            "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        with open(key, encoding="ascii") as f:
            key_text = f.read()
        with open(cert, encoding="ascii") as f:
            cert_text = f.read()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key_text)
    with open(cert_path, "w", encoding="ascii") as f:
        f.write(cert_text)
    return key_path, cert_path


def _read(path):
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


Plan = namedtuple("Plan", "ca new_key new_cert why")


def _cert_problem(view, ca_file):
    """Why this host's certificate must be (re)made, or None."""
    if not os.path.exists(centrallog.HOST_CERT):
        return "no certificate yet"
    try:
        _openssl("verify", "-CAfile", ca_file, centrallog.HOST_CERT)
    except subprocess.CalledProcessError:
        return "not signed by the logging CA"
    try:
        _openssl("x509", "-noout", "-in", centrallog.HOST_CERT, "-checkend", str(RENEW_DAYS * 86400))
    except subprocess.CalledProcessError:
        return f"expires within {RENEW_DAYS} days"
    cert_pub = _openssl("x509", "-noout", "-pubkey", "-in", centrallog.HOST_CERT).stdout
    key_pub = _openssl("pkey", "-pubout", "-in", centrallog.HOST_KEY).stdout
    if cert_pub != key_pub:
        return "not the certificate of this host's key"
    text = _openssl(
        "x509", "-noout", "-subject", "-ext", "subjectAltName", "-in", centrallog.HOST_CERT
    ).stdout  # fmt: skip
    found = {_san(part) for line in text.splitlines()[2:] for part in line.split(",") if part.strip()}
    wanted = {_san(san) for san in view["subject_alt_names"]}
    if found != wanted or f"CN = {view['common_name']}" not in text.splitlines()[0]:
        return "its names are not this host's names and addresses"
    return None


def _san(text):
    """A subjectAltName as openssl prints it ("IP Address:2001:DB8:0:0:0:0:0:1") or writes it
    ("IP:2001:db8::1"), in one form."""
    kind, _, value = text.strip().partition(":")
    if kind in ("IP", "IP Address"):
        return "IP", str(ipaddress.ip_address(value))
    return kind, value


def plan(view):
    """What this host needs for its logging TLS identity (``view``: the pillar's minicl:logging)."""
    ca_text = _read(view["ca_cert_file"]) if view.get("ca_cert_file") else None
    if not ca_text:
        raise CertError(f"the logging CA certificate {view.get('ca_cert_file')} cannot be read")
    ca = ca_text if ca_text != _read(centrallog.TRUSTED_CA) else None
    if view["ca"] != centrallog.DEFAULT_CA:
        for path in (centrallog.HOST_KEY, centrallog.HOST_CERT):
            if not os.path.exists(path):
                raise CertError(
                    f"logging.ca is ca_url: put this host's key at {centrallog.HOST_KEY} (0600) and its "
                    f"certificate, signed by the ca_url CA, at {centrallog.HOST_CERT} "
                    "(README: Central logging)"
                )
        return Plan(ca, False, False, None)
    new_key = not os.path.exists(centrallog.HOST_KEY)
    why = "no key yet" if new_key else _cert_problem(view, view["ca_cert_file"])
    return Plan(ca, new_key, why is not None, why)


def apply(view, todo):
    os.makedirs(centrallog.TLS_DIR, mode=0o700, exist_ok=True)
    if todo.ca:
        write_file(centrallog.TRUSTED_CA, todo.ca, 0o644)
    if todo.new_key:
        text = _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256").stdout
        write_file(centrallog.HOST_KEY, text, 0o600)
    if todo.new_cert:
        write_file(centrallog.HOST_CERT, sign(view), 0o644)


def sign(view):
    """A certificate for this host's key, signed with the CA key from the config repo checkout."""
    subject = f"/O=minicl/CN={view['common_name']}"
    csr = _openssl("req", "-new", "-key", centrallog.HOST_KEY, "-subj", subject).stdout
    extensions = (
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={','.join(view['subject_alt_names'])}\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".cnf") as ext:
        ext.write(extensions)
        ext.flush()
        return _openssl(
            "x509", "-req", "-CA", view["ca_cert_file"], "-CAkey", view["ca_key_file"],
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(VALID_DAYS), "-extfile", ext.name,
            stdin=csr,
        ).stdout  # fmt: skip
