"""An ACME server in the lab: Debian's pebble, run inside a test host as a transient systemd unit.

    ca_pem = start_pebble(host, names={"www.front.test": "203.0.113.130"})
    directory = pebble_directory(host)          # https://<host's address>:14000/dir
    root = pebble_root(host)                    # the root that signs the certificates it issues
    restart_pebble(host, 10 * 86400)            # from now on, certificates valid for 10 days
    cert_pem, key_pem = self_signed(["admin.example.test"], 10, 90)   # 10 days left of 90
    age_certificate(host, "front", ["www.front.test"], 10, 90)  # certbot's, as if 80 days old

Debian's pebble ships no certificates for its own HTTPS: ``make_tls`` makes a small CA and a
certificate for the host's address with openssl (``ca_pem`` is what an ACME client must trust,
cluster.json's acme.ca). pebble validates HTTP-01 challenges on port 80 of the names it is asked
for, which it resolves with Go's resolver through the host's /etc/hosts (``names``).
"""

import datetime
import json
import os
import subprocess
import tempfile
import time

DIRECTORY_PORT = 14000
MANAGEMENT_PORT = 15000
UNIT = "minicl-lab-pebble"
CONF_DIR = "/root/pebble"


def self_signed(names, days_left, lifetime_days):
    """(cert_pem, key_pem): a self-signed certificate for ``names`` (its subjectAltNames) that
    expires in ``days_left`` days and began ``lifetime_days - days_left`` days ago."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=lifetime_days - days_left))
        .not_valid_after(now + datetime.timedelta(days=days_left))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def age_certificate(host, name, domains, days_left, lifetime_days):
    """certbot's certificate ``name`` on ``host`` replaced by a self-signed one for ``domains``
    that expires in ``days_left`` days of ``lifetime_days`` (and its key): as if certbot had
    obtained it that long ago. certbot renews the lineage as usual."""
    cert_pem, key_pem = self_signed(domains, days_left, lifetime_days)
    for link, text, mode in (("cert.pem", cert_pem, 0o644), ("fullchain.pem", cert_pem, 0o644),
                             ("privkey.pem", key_pem, 0o600)):  # fmt: skip
        target = host.run(["readlink", "-e", f"/etc/letsencrypt/live/{name}/{link}"]).stdout.strip()
        host.write(target, text, mode)


def make_tls(ip):
    """(ca_pem, cert_pem, key_pem): a throwaway CA and a certificate it signs for ``ip``."""
    with tempfile.TemporaryDirectory() as d:

        def openssl(*args):
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=minicl lab ACME CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        )
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={ip}",
            "-keyout",
            "key.pem",
            "-out",
            "req.pem",
        )
        with open(os.path.join(d, "ext"), "w", encoding="ascii") as f:
            f.write(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
        openssl(
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ext",
            "-out",
            "cert.pem",
        )
        return tuple(
            open(os.path.join(d, n), encoding="ascii").read() for n in ("ca.pem", "cert.pem", "key.pem")
        )


def start_pebble(host, names, http_port=80):
    """pebble on ``host`` (unit minicl-lab-pebble), validating on ``http_port`` of ``names``
    ({name: address}, written to the host's /etc/hosts); returns the CA of its HTTPS."""
    ca_pem, cert_pem, key_pem = make_tls(host.ipv4)
    host.write(f"{CONF_DIR}/cert.pem", cert_pem)
    host.write(f"{CONF_DIR}/key.pem", key_pem, 0o600)
    hosts = host.read("/etc/hosts")
    host.write("/etc/hosts", hosts + "".join(f"{ip} {name}\n" for name, ip in names.items()))
    _run_pebble(host, http_port)
    return ca_pem


def restart_pebble(host, validity_seconds, http_port=80):
    """pebble (again), on the same HTTPS certificate, issuing certificates valid for
    ``validity_seconds`` (pebble's default: 5 years). pebble keeps nothing across a restart:
    it signs with a new root, and the ACME accounts it had are gone."""
    host.run(["systemctl", "stop", UNIT], check=False)  # if it runs
    _run_pebble(host, http_port, validity_seconds)
    probe = ["curl", "-sfk", "-o", "/dev/null", f"https://127.0.0.1:{DIRECTORY_PORT}/dir"]
    for _ in range(50):
        if host.run(probe, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"pebble does not answer on {host.name} after a restart")


def _run_pebble(host, http_port, validity_seconds=None):
    config = {
        "pebble": {
            "listenAddress": f"0.0.0.0:{DIRECTORY_PORT}",
            "managementListenAddress": f"0.0.0.0:{MANAGEMENT_PORT}",
            "certificate": f"{CONF_DIR}/cert.pem",
            "privateKey": f"{CONF_DIR}/key.pem",
            "httpPort": http_port,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            **({"certificateValidityPeriod": validity_seconds} if validity_seconds else {}),
        }
    }
    host.write(f"{CONF_DIR}/pebble-config.json", json.dumps(config, indent=2))
    host.run(
        [
            "systemd-run",
            f"--unit={UNIT}",
            "-E",
            "PEBBLE_VA_NOSLEEP=1",
            "-E",
            "PEBBLE_WFE_NONCEREJECT=0",
            "/usr/bin/pebble",
            "-config",
            f"{CONF_DIR}/pebble-config.json",
        ]
    )


def pebble_directory(host):
    return f"https://{host.ipv4}:{DIRECTORY_PORT}/dir"


def pebble_root(host):
    """The root certificate (PEM) that signs what pebble issues (its management API)."""
    return host.run(["curl", "-sk", f"https://127.0.0.1:{MANAGEMENT_PORT}/roots/0"]).stdout


def served_serial(client, address, name):
    """The serial ("serial=...") of the certificate served at ``address``:443 for ``name``, as
    ``client`` sees it; "" when there is none."""
    return client.run(
        f"openssl s_client -connect {address}:443 -servername {name} </dev/null 2>/dev/null"
        " | openssl x509 -noout -serial",
        check=False,
    ).stdout.strip()
