"""An ACME server in the lab: Debian's pebble, run inside a test host as a transient systemd unit.

    ca_pem = start_pebble(host, names={"www.front.test": "203.0.113.130"})
    directory = pebble_directory(host)          # https://<host's address>:14000/dir
    root = pebble_root(host)                    # the root that signs the certificates it issues
    restart_pebble(host, 10 * 86400)            # from now on, certificates valid for 10 days

Debian's pebble ships no certificates for its own HTTPS: ``make_tls`` makes a small CA and a
certificate for the host's address with openssl (``ca_pem`` is what an ACME client must trust,
cluster.json's acme.ca). pebble validates HTTP-01 challenges on port 80 of the names it is asked
for, which it resolves with Go's resolver through the host's /etc/hosts (``names``).
"""

import json
import os
import subprocess
import tempfile
import time

DIRECTORY_PORT = 14000
MANAGEMENT_PORT = 15000
UNIT = "minicl-lab-pebble"
CONF_DIR = "/root/pebble"


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
    """pebble again, on the same HTTPS certificate, issuing certificates valid for
    ``validity_seconds`` (pebble's default: 5 years). pebble keeps nothing across a restart:
    it signs with a new root, and the ACME accounts it had are gone."""
    host.systemctl("stop", UNIT)
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
