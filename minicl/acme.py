"""Certificates from an ACME server with certbot: the ``acme`` section of cluster.json, what a
host has, and obtaining or renewing a certificate (HTTP-01, certbot's own standalone server).

    settings = acme.pillar(cluster, checkout)            # {directory, email, ca, renew_before}
    found = acme.certificate("front")                    # a Certificate or None
    acme.due(found, ["www.example.org"], settings)       # why it must be (re)issued, or None
    acme.obtain("front", domains, settings, acme.standalone(address, port))
    acme.obtain("web.www", domains, settings, acme.webroot("/var/www/minicl-acme"))

certbot keeps its account and certificates in /etc/letsencrypt (``live/<name>/fullchain.pem``,
``privkey.pem``); which certificate a host needs, and when, minicl decides at every run from the
certificate itself (its names and validity, read with ``cryptography``): a certificate is renewed
when it names other domains, or when it expires within ``renew_before`` (default 30 days) or a
third of its lifetime, whichever is shorter, so that a CA's short-lived certificates (a day, a
week) are not renewed at every run. It counts as expiring (check_health fails, the monitor
alerts: renewal has failed) within WARN_DAYS or a sixth of its lifetime, whichever is shorter.
The challenge is answered by certbot's standalone server on ``address:port``, where the front
(haproxy) forwards /.well-known/acme-challenge/ (see minicl.appliances.haproxy), or by a web
server that serves certbot's files from a folder (nginx: see minicl.appliances.nginx). When
``acme.ca`` names a CA file of the config repo (a private ACME server), certbot trusts it for
the directory through REQUESTS_CA_BUNDLE, and only there.
"""

import datetime
import os
import subprocess
from dataclasses import dataclass

from minicl import paths
from minicl.errors import MiniclError
from minicl.files import read_file, write_file
from minicl.schema import duration_seconds, schema_default

CERTBOT = "certbot"
LIVE_DIR = "/etc/letsencrypt/live"
CA_FILE = f"{paths.ETC_DIR}/acme-ca.pem"  # acme.ca of cluster.json, on the host
TIMEOUT = 300
WARN_DAYS = 14
RENEW_SHARE = 3  # renewed with a third of its lifetime left at the latest: 30 days of Let's Encrypt's 90
WARN_SHARE = 6  # expiring with a sixth left: half the renewal window has passed without a renewal


class AcmeError(MiniclError):
    """A certificate could not be obtained; the message has certbot's reason."""


def pillar(cluster, checkout=None):
    """``minicl:acme``: the acme section with its defaults, the CA's text read from the config
    repo (``checkout``; None without one), or None when there is no acme section."""
    section = cluster.data.get("acme")
    if not section:
        return None
    ca_text = None
    if section.get("ca") and checkout:
        ca_text = read_file(os.path.join(checkout, section["ca"])) or None
    return {
        "directory": section["directory"],
        "email": section.get("email", cluster.data.get("admin_email")),
        "ca": section.get("ca"),
        "ca_text": ca_text,
        "renew_before": duration_seconds(section.get("renew_before", schema_default("acme", "renew_before"))),
    }


@dataclass
class Certificate:
    """What a certificate on this host says: its names, when it starts and ends, its serial."""

    name: str
    domains: list
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: str

    def seconds_left(self, now=None):
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return (self.not_after - now).total_seconds()

    def days_left(self, now=None):
        return self.seconds_left(now) / 86400

    def lifetime(self):
        return (self.not_after - self.not_before).total_seconds()

    def renew_within(self, renew_before):
        """Seconds before its end at which it is renewed (``renew_before``, bounded by its lifetime)."""
        return min(renew_before, self.lifetime() / RENEW_SHARE)

    def warn_within(self):
        """Seconds before its end from which it counts as expiring."""
        return min(WARN_DAYS * 86400, self.lifetime() / WARN_SHARE)

    def expiring(self, now=None):
        return self.seconds_left(now) < self.warn_within()


def span(seconds):
    """``seconds`` for a person: "12.0 days", "7.5 hours", "50 minutes", "40 seconds"."""
    if abs(seconds) >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if abs(seconds) >= 2 * 3600:
        return f"{seconds / 3600:.1f} hours"
    if abs(seconds) >= 120:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds:.0f} seconds"


def live_paths(name):
    return f"{LIVE_DIR}/{name}/fullchain.pem", f"{LIVE_DIR}/{name}/privkey.pem"


def read_certificate(name, pem_text):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem_text.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        domains = sorted(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        domains = []
    return Certificate(
        name,
        domains,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        format(cert.serial_number, "x"),
    )


def certificate(name):
    """The certificate certbot holds as ``name`` on this host, or None."""
    text = read_file(live_paths(name)[0])
    return read_certificate(name, text) if text else None


def due(found, domains, settings, now=None):
    """Why the certificate ``found`` (or None) must be obtained again for ``domains``, or None."""
    if found is None:
        return "no certificate yet"
    if sorted(found.domains) != sorted(domains):
        return f"it names {', '.join(found.domains)}, not {', '.join(sorted(domains))}"
    left, within = found.seconds_left(now), found.renew_within(settings["renew_before"])
    if left < within:
        return f"it expires in {span(left)} (renewed {span(within)} before)"
    return None


def ca_file_wanted(settings):
    """{CA_FILE: text} when the acme section names a CA, else {}."""
    return {CA_FILE: settings["ca_text"]} if settings and settings.get("ca_text") else {}


def write_ca(settings):
    for path, text in ca_file_wanted(settings).items():
        if read_file(path) != text:
            write_file(path, text, 0o644)


def standalone(address, port):
    """certbot's arguments for answering the challenge with its own server on ``address:port``."""
    return ["--standalone", "--http-01-address", address, "--http-01-port", str(port)]


def webroot(folder):
    """certbot's arguments for answering the challenge with files under ``folder`` (which a web
    server serves as /.well-known/acme-challenge/)."""
    return ["--webroot", "--webroot-path", folder]


def certbot_command(name, domains, settings, challenge):
    """certbot certonly for ``domains`` as certificate ``name``, the challenge answered as
    ``challenge`` says (standalone() or webroot()); a new certificate whenever it runs (minicl
    decides when it is due)."""
    argv = [
        CERTBOT,
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--quiet",
        "--server",
        settings["directory"],
        "--cert-name",
        name,
        *challenge,
        "--force-renewal",
    ]
    argv += ["--email", settings["email"]] if settings.get("email") else ["--register-unsafely-without-email"]
    for domain in domains:
        argv += ["-d", domain]
    return argv


def certbot_environment(settings):
    env = dict(os.environ)
    if settings.get("ca_text"):
        env["REQUESTS_CA_BUNDLE"] = CA_FILE
    return env


def obtain(name, domains, settings, challenge):
    """Run certbot to obtain (or renew) certificate ``name``; returns the new Certificate."""
    write_ca(settings)
    argv = certbot_command(name, domains, settings, challenge)
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=certbot_environment(settings),
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise AcmeError(
            f"certbot did not finish in {TIMEOUT} s (the ACME server {settings['directory']})"
        ) from None
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[-600:]
        raise AcmeError(
            f"certbot could not get the certificate {name} from {settings['directory']}: {said} "
            "(/var/log/letsencrypt/letsencrypt.log has the details)"
        )
    found = certificate(name)
    if found is None:
        raise AcmeError(f"certbot succeeded but {live_paths(name)[0]} is missing")
    return found


def validity_metrics(family, what, certificates):
    """The textfile collector's text for ``certificates`` ([(labels, Certificate)]): when each
    started (``<family>_start_timestamp_seconds``) and expires (``_expiry_``); ``what`` for HELP."""
    text = ""
    for series, attribute, help_text in (
        (f"{family}_start_timestamp_seconds", "not_before", f"When {what} became valid."),
        (f"{family}_expiry_timestamp_seconds", "not_after", f"When {what} expires."),
    ):
        text += f"# HELP {series} {help_text}\n# TYPE {series} gauge\n"
        for labels, found in certificates:
            label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
            text += f"{series}{{{label_text}}} {getattr(found, attribute).timestamp():.0f}\n"
    return text


def expiring_expr(family):
    """PromQL: the certificates of ``family`` (see validity_metrics) that count as expiring (as
    Certificate.expiring says), valued at the seconds they have left."""
    expiry, start = f"{family}_expiry_timestamp_seconds", f"{family}_start_timestamp_seconds"
    return f"{expiry} - time() < clamp_max(({expiry} - {start}) / {WARN_SHARE}, {WARN_DAYS} * 86400)"
