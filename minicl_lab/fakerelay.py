"""A fake authenticated SMTP relay for test hosts and the demo (aiosmtpd).

    python -m minicl_lab.fakerelay --cert relay.crt --key relay.key --user U --password P \
        --spool /srv/relay --ca-file ca.crt

Listens on port 587 with STARTTLS and AUTH (PLAIN, LOGIN) both required, and on port 80 serves
the CA certificate (``/ca.crt``) for ``ca_url``. Each accepted message is written to
``<spool>/<n>.json``: sender, recipients, the login used, whether TLS was on, and the message.
"""

import argparse
import http.server
import json
import os
import socket
import ssl
import subprocess
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def make_test_ca(directory, name="relay.example.org"):
    """A throwaway CA and a certificate for ``name`` signed by it; returns {file: text}."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=minicl test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "relay.key",
        "-out",
        "relay.csr",
        "-subj",
        f"/CN={name}",
    )
    with open(os.path.join(directory, "ext"), "w", encoding="ascii") as f:
        f.write(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "relay.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "relay.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    files = {}
    for item in ("ca.crt", "relay.crt", "relay.key"):
        with open(os.path.join(directory, item), encoding="ascii") as f:
            files[item] = f.read()
    return files


def start_in(host, files, user, password):
    """Run the relay in test host ``host`` with ``files`` from make_test_ca; returns the Popen."""
    import sys

    for item, text in files.items():
        host.write(f"/srv/tls/{item}", text, 0o600)
    proc = host.spawn(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--cert",
            "/srv/tls/relay.crt",
            "--key",
            "/srv/tls/relay.key",
            "--user",
            user,
            "--password",
            password,
            "--spool",
            "/srv/relay",
            "--ca-file",
            "/srv/tls/ca.crt",
        ]
    )
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the fake relay did not start: {proc.stderr.read()}")
    return proc


def received(host):
    """The messages the relay in ``host`` accepted so far, oldest first."""
    names = host.run("ls /srv/relay 2>/dev/null || true").stdout.split()
    count = len([n for n in names if n.endswith(".json")])
    return [json.loads(host.read(f"/srv/relay/{n}.json")) for n in range(1, count + 1)]


class Spool:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()
        os.makedirs(directory, exist_ok=True)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        with self.lock:
            self.count += 1
            path = os.path.join(self.directory, f"{self.count}.json")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "login": session.auth_data.login.decode() if session.authenticated else None,
            "tls": session.ssl is not None,
            "peer": session.peer[0],
            "data": envelope.content.decode("utf-8", errors="replace"),
        }
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 OK queued by the fake relay"


class Authenticator:
    def __init__(self, user, password):
        self.user, self.password = user, password

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.user
            and auth_data.password.decode() == self.password
        )
        # handled=False: aiosmtpd answers (535 on failure; otherwise the client hangs);
        # auth_data is what the session keeps, so the spool can say who logged in.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class RelaySMTP(SMTP):
    # Go and some other clients expect the classic LOGIN prompts.
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"


class RelayController(Controller):
    def factory(self):
        return RelaySMTP(self.handler, **self.SMTP_kwargs)


def serve_ca(ca_file, port):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path != "/ca.crt":
                self.send_error(404)
                return
            with open(ca_file, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-x509-ca-cert")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class DualStackServer(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    server = DualStackServer(("::", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="minicl_lab.fakerelay")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--ca-file")
    parser.add_argument("--port", type=int, default=587)
    parser.add_argument("--http-port", type=int, default=80)
    args = parser.parse_args(argv)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    handler = Spool(args.spool)
    # asyncio makes "::" IPv6-only: one listener per address family.
    for address in ("0.0.0.0", "::"):
        RelayController(
            handler,
            hostname=address,
            port=args.port,
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            auth_require_tls=True,
            authenticator=Authenticator(args.user, args.password),
            server_hostname="relay.example.org",
        ).start()
    if args.ca_file:
        serve_ca(args.ca_file, args.http_port)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
