"""The nginx appliance: Debian's nginx serving the sites cluster.json declares under
``apps.<name>.sites``: static files from a folder of the config repo, or a reverse proxy to
cluster hosts; TLS with a certificate and key from the config repo, or from the ACME server of
cluster.json's acme section; logging to syslog.

What minicl writes on a host of the app:

- ``/etc/nginx/conf.d/minicl-<app>.conf``: one server per site (and its upstream), a default
  server that answers unknown names with nothing (444; on 443 the TLS handshake is refused),
  and nginx's stub_status on 127.0.0.1 only, for Debian's prometheus-nginx-exporter.
- ``/etc/nginx/minicl-tls/<app>/<site>.crt`` and ``.key`` (the key 0600 root; never shown):
  the config repo's files, or certbot's certificate ``<app>.<site>`` (``tls: {"acme": true}``).
- ``/var/www/minicl/<app>/<site>``: a link to ``.releases/<site>-<digest>``, a copy of the
  site's folder at the config repo's commit; a new copy is made beside the old one and the link
  replaced with rename(2), so that a half-copied tree is never served.
- Debian's default site (``/etc/nginx/sites-enabled/default``) is removed: minicl's default
  server takes its place.

A site with ``tls: {"acme": true}`` gets its certificate with ``certbot --webroot``: nginx
serves /.well-known/acme-challenge/ of the site's names on port 80 from ``/var/www/minicl-acme``.
Each host of the app gets its own certificate, and the ACME server's request reaches whichever
host the name points to: a challenge file that host does not have is asked of the app's other
hosts (once: a request that comes from a peer, marked with a header, is not passed on).
Until the first certificate is there the site has no HTTPS server (nginx could not load it);
the run that obtains it then adds it. A certificate is renewed at the run that finds it
expiring within acme.renew_before (see minicl.acme); nginx is reloaded with the new one.

A new configuration replaces the running one only if ``nginx -t`` accepts it: the files are
written, nginx tests the whole configuration, and on a refusal the previous files are put back
(nginx keeps serving them: it only reads its files at a reload) and the state fails with
nginx's own message. Then ``systemctl reload nginx``: the old workers finish their requests.
(Tested in place: Debian's nginx.conf includes absolute paths, which a staging copy would rewrite. A
restart by someone else in the moment between the write and the put-back would read the new
files; nginx itself never reloads on its own.)
"""

import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field

from minicl import acme, metrics
from minicl.appliances import ApplianceError, Report, systemctl, unit_active, unit_enabled
from minicl.cluster import host_port
from minicl.files import read_file, write_file

PACKAGE = "nginx"
SERVICE = "nginx"
PORT = 80
PORTS = (80, 443)  # both answer cluster hosts only, or everyone when the app is "public"
CONF_DIR = "/etc/nginx/conf.d"
CONF_PREFIX = "minicl-"
TLS_DIR = "/etc/nginx/minicl-tls"
WWW_DIR = "/var/www/minicl"
RELEASES = ".releases"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
ACME_WEBROOT = "/var/www/minicl-acme"  # certbot --webroot writes the challenge files here
CHALLENGE_PATH = "/.well-known/acme-challenge/"
HOP_HEADER = "X-Minicl-Acme-Hop"  # a challenge request passed on by a peer: not passed on again
METRIC_FAMILY = "minicl_nginx_certificate"  # acme.validity_metrics
STATUS_ADDRESS = "127.0.0.1:8073"  # stub_status, for the exporter only
SYSLOG = "syslog:server=unix:/dev/log,tag=nginx,nohostname"
TIMEOUT = 10
VERBS = ("check_health", "test", "upgrade", "downgrade", "monitor", "cleanup")

# For the monitoring machinery: Debian's exporter of this app type.
EXPORTER_PACKAGE = "prometheus-nginx-exporter"
EXPORTER_SERVICE = "prometheus-nginx-exporter"
EXPORTER_PORT = 9113
# What upgrade and downgrade change (with the app's own "packages" from cluster.json).
PACKAGES = ("nginx", "nginx-common")


def render_exporter_defaults(app):
    """/etc/default/prometheus-nginx-exporter: the local stub_status; retries, as nginx may
    start after the exporter."""
    return (
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.\n"
        f'ARGS="-nginx.scrape-uri=http://{STATUS_ADDRESS}/stub_status -web.listen-address=:{EXPORTER_PORT} '
        '-nginx.retries=60 -nginx.retry-interval=5s"\n'
    )


# -- names and paths ----------------------------------------------------------------------


def conf_path(app):
    return f"{CONF_DIR}/{CONF_PREFIX}{app['name']}.conf"


def tls_paths(app, site):
    base = f"{TLS_DIR}/{app['name']}/{site}"
    return f"{base}.crt", f"{base}.key"


def from_acme(site):
    """True when the site's certificate comes from the ACME server."""
    return bool((site.get("tls") or {}).get("acme"))


def cert_name(app, site):
    """certbot's name of the certificate of ``site`` (app names have no dot)."""
    return f"{app['name']}.{site}"


def acme_upstream(app):
    return _identifier(f"minicl_acme_{app['name']}")


def _challenge_locations(app):
    """The port-80 locations of an ACME site: certbot's files, else the app's other hosts'."""
    peers = app.get("peers") or {}
    lines = [
        f"    location ^~ {CHALLENGE_PATH} {{",
        f"        root {ACME_WEBROOT};",
        "        default_type text/plain;",
    ]
    if not peers:
        return lines + ["    }"]
    variable = "$http_" + HOP_HEADER.lower().replace("-", "_")
    return lines + [
        "        try_files $uri @minicl_acme_peers;",
        "    }",
        "    location @minicl_acme_peers {",
        f"        if ({variable}) {{",
        "            return 404;",
        "        }",
        f"        proxy_pass http://{acme_upstream(app)};",
        "        proxy_set_header Host $host;",
        f"        proxy_set_header {HOP_HEADER} 1;",
        "        proxy_next_upstream error timeout http_404;",
        "    }",
    ]


def site_root(app, site):
    return f"{WWW_DIR}/{app['name']}/{site}"


def releases_dir(app):
    return f"{WWW_DIR}/{app['name']}/{RELEASES}"


def _identifier(text):
    """``text`` as an nginx name (an upstream's): letters, digits and _."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def upstream_name(app, site):
    return _identifier(f"minicl_{app['name']}_{site}")


def address_of(ips):
    """The address to reach a host at: its first IPv4 address, else its first."""
    return next((ip for ip in ips if ":" not in ip), ips[0] if ips else "127.0.0.1")


def proxy_servers(site, host_ips):
    """["address:port"] of a proxy site's backends; ``host_ips``: {host: [addresses]}."""
    servers = []
    for target in site["proxy"]:
        host, _, port = target.rpartition(":")
        if host not in host_ips:
            raise ApplianceError(f'proxy target {target}: host "{host}" is not under "hosts"')
        servers.append(host_port(address_of(host_ips[host]), port))
    return servers


# -- rendering ----------------------------------------------------------------------------


def _listen(port, extra=""):
    return [f"    listen {port}{extra};", f"    listen [::]:{port}{extra};"]


def _site_body(app, name, site, host_ips):
    lines = [f"    server_name {' '.join(site['server_names'])};", f"    access_log {SYSLOG} combined;",
             f"    error_log {SYSLOG} warn;"]  # fmt: skip
    if "root" in site:
        lines += [f"    root {site_root(app, name)};", "    index index.html;",
                  "    location / {", "        try_files $uri $uri/ =404;", "    }"]  # fmt: skip
    else:
        lines += [
            "    location / {",
            f"        proxy_pass http://{upstream_name(app, name)};",
            "        proxy_http_version 1.1;",
            '        proxy_set_header Connection "";',
            "        proxy_set_header Host $host;",
            "        proxy_set_header X-Real-IP $remote_addr;",
            "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "        proxy_set_header X-Forwarded-Proto $scheme;",
            "    }",
        ]
    return lines


def render_conf(app, host_ips, without_tls=()):
    """/etc/nginx/conf.d/minicl-<app>.conf for ``app`` (its sites); ``host_ips``: {host:
    [addresses]} of the cluster's hosts (a proxy site's backends); ``without_tls``: TLS sites
    whose certificate is not there yet (port 80 only, for the ACME challenge)."""
    out = [f"# Managed by minicl (app {app['name']}); changes here are overwritten.", ""]
    out += ["# Names no site has: no answer (Debian's default site is disabled by minicl).", "server {"]
    out += _listen(80, " default_server") + _listen(443, " ssl default_server")
    out += ["    server_name _;", "    ssl_reject_handshake on;", f"    access_log {SYSLOG} combined;",
            f"    error_log {SYSLOG} warn;", "    return 444;", "}", ""]  # fmt: skip
    out += ["# For prometheus-nginx-exporter only.", "server {", f"    listen {STATUS_ADDRESS};",
            "    access_log off;", "    location = /stub_status {", "        stub_status;", "    }",
            "}"]  # fmt: skip
    if app.get("peers") and any(from_acme(site) for site in app["sites"].values()):
        out += ["", "# The other hosts of the app, for the ACME challenges they answer."]
        out += [f"upstream {acme_upstream(app)} {{"]
        out += [f"    server {host_port(address_of(ips), PORT)};" for _, ips in sorted(app["peers"].items())]
        out += ["}"]
    for name, site in sorted(app["sites"].items()):
        out += ["", f"# Site {name}."]
        if "proxy" in site:
            out += [f"upstream {upstream_name(app, name)} {{"]
            out += [f"    server {server};" for server in proxy_servers(site, host_ips)]
            out += ["    keepalive 16;", "}"]
        if site.get("tls"):
            certificate, key = tls_paths(app, name)
            out += ["server {", *_listen(80), f"    server_name {' '.join(site['server_names'])};",
                    f"    access_log {SYSLOG} combined;", f"    error_log {SYSLOG} warn;"]  # fmt: skip
            if from_acme(site):
                out += _challenge_locations(app)
            out += ["    location / {", "        return 301 https://$host$request_uri;", "    }", "}"]
            if name in without_tls:
                continue
            out += ["server {", *_listen(443, " ssl"), f"    ssl_certificate {certificate};",
                    f"    ssl_certificate_key {key};", "    ssl_protocols TLSv1.2 TLSv1.3;",
                    "    ssl_session_cache shared:minicl_ssl:10m;"]  # fmt: skip
        else:
            out += ["server {", *_listen(80)]
        out += _site_body(app, name, site, host_ips) + ["}"]
    return "\n".join(out) + "\n"


def shown_files(app, cluster_hosts):
    """For ``minicl show``: the app's nginx configuration with every certificate in place."""
    return {conf_path(app): render_conf(app, cluster_hosts)}


# -- what the config repo holds -----------------------------------------------------------


def tree_files(folder):
    """The regular files under ``folder`` (relative paths, sorted); links and others skipped."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.append(os.path.relpath(path, folder))
    return sorted(found)


def tree_digest(folder):
    """A digest of the files under ``folder``: their paths and contents."""
    digest = hashlib.sha256()
    for rel in tree_files(folder):
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(folder, rel), "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:16]


def repo_paths(app):
    """(folders, files): the config repo's paths ``app`` reads, relative: its static sites'
    folders, and its TLS certificates and keys given as files."""
    folders = sorted({site["root"] for site in app["sites"].values() if "root" in site})
    files = sorted(
        {
            site["tls"][key]
            for site in app["sites"].values()
            if site.get("tls") and not from_acme(site)
            for key in ("certificate", "key")
        }
    )
    return folders, files


def repo_file(checkout, rel, what):
    if not checkout:
        raise ApplianceError(f"{what}: the config repo's files are not known here (no checkout)")
    path = os.path.join(checkout, rel)
    if not os.path.exists(path):
        raise ApplianceError(f"{what}: {rel} is not in the config repo at this commit")
    return path


# -- snapshot, plan, apply ----------------------------------------------------------------


@dataclass
class Plan:
    """What a converge changes: ``files`` {path: (text, mode)} to write (``secret``: paths
    whose content is never shown), ``removed`` paths, ``trees`` {site: (source, release)} to
    publish, the service: ``enable``, ``start``, ``reload``, and ``certificates`` {site: why}
    to obtain from the ACME server."""

    files: dict = field(default_factory=dict)
    secret: set = field(default_factory=set)
    removed: list = field(default_factory=list)
    trees: dict = field(default_factory=dict)
    enable: bool = False
    start: bool = False
    reload: bool = False
    certificates: dict = field(default_factory=dict)

    @property
    def config_changes(self):
        return bool(self.files or self.removed)

    def __bool__(self):
        return bool(
            self.files or self.removed or self.trees or self.enable or self.start or self.reload
            or self.certificates
        )  # fmt: skip


def wanted_files(app, host_ips, checkout):
    """{path: (text, mode)} of every configuration file minicl writes for ``app``, and the set
    of the secret ones. An ACME site's certificate is certbot's, when it has one."""
    files, secret, without_tls = {}, set(), set()
    for name, site in sorted(app["sites"].items()):
        if not site.get("tls"):
            continue
        certificate, key = tls_paths(app, name)
        if from_acme(site):
            texts = [read_file(path) for path in acme.live_paths(cert_name(app, name))]
            if not all(texts):
                without_tls.add(name)
                continue
        else:
            where = f"apps.{app['name']}.sites.{name}.tls"
            texts = [read_file(repo_file(checkout, site["tls"][k], where)) for k in ("certificate", "key")]
        files[certificate] = (texts[0], 0o644)
        files[key] = (texts[1], 0o600)
        secret.add(key)
    files[conf_path(app)] = (render_conf(app, host_ips, without_tls), 0o644)
    return files, secret


def managed_now():
    """The configuration files minicl manages on this host now."""
    found = []
    if os.path.isdir(CONF_DIR):
        found += [
            f"{CONF_DIR}/{f}"
            for f in os.listdir(CONF_DIR)
            if f.startswith(CONF_PREFIX) and f.endswith(".conf")
        ]
    for top, _, files in os.walk(TLS_DIR):
        found += [os.path.join(top, f) for f in files]
    return sorted(found)


def _mode(path):
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return None


def plan(app, host_ips, checkout, settings=None):
    """Compare what this host has with what ``app`` wants (``checkout``: the config repo's
    files at the live commit; ``settings``: minicl:acme, for the ACME sites)."""
    todo = Plan()
    for name, site in sorted(app["sites"].items()):
        if from_acme(site):
            if not settings:
                raise ApplianceError(
                    f"apps.{app['name']}.sites.{name}.tls.acme: cluster.json has no acme section "
                    "to get the certificate from"
                )
            found = acme.certificate(cert_name(app, name))
            why = acme.due(found, site["server_names"], settings)
            if why:
                todo.certificates[name] = why
    files, todo.secret = wanted_files(app, host_ips, checkout)
    for path, (text, mode) in files.items():
        if read_file(path) != text or _mode(path) != mode:
            todo.files[path] = (text, mode)
    todo.removed = [path for path in managed_now() if path not in files]
    if os.path.lexists(DEFAULT_SITE):
        todo.removed.append(DEFAULT_SITE)
    for name, site in sorted(app["sites"].items()):
        if "root" in site:
            source = repo_file(checkout, site["root"], f"apps.{app['name']}.sites.{name}.root")
            release = f"{name}-{tree_digest(source)}"
            link = site_root(app, name)
            if not os.path.islink(link) or os.readlink(link) != f"{RELEASES}/{release}":
                todo.trees[name] = (source, release)
    running = unit_active(SERVICE)
    todo.enable = not unit_enabled(SERVICE)
    todo.start = not running
    todo.reload = running and todo.config_changes
    return todo


def nginx_test():
    """``nginx -t``: (True, "") or (False, nginx's error lines)."""
    result = subprocess.run(["nginx", "-t", "-q"], capture_output=True, text=True, check=False)
    lines = [
        line.removeprefix("nginx: ")
        for line in result.stderr.splitlines()
        if "[emerg]" in line or "[crit]" in line
    ]
    return result.returncode == 0, "; ".join(lines) or result.stderr.strip()


def publish_tree(app, source, release):
    """A copy of ``source`` as ``release`` (made beside, then renamed: never half there)."""
    final = os.path.join(releases_dir(app), release)
    if os.path.isdir(final):
        return final
    tmp = f"{final}.minicl-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o755)
    for rel in tree_files(source):
        dest = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        shutil.copyfile(os.path.join(source, rel), dest)
        os.chmod(dest, 0o644)
    for top, dirs, _ in os.walk(tmp):
        for name in dirs:
            os.chmod(os.path.join(top, name), 0o755)
    os.chmod(tmp, 0o755)
    os.rename(tmp, final)
    return final


def switch_link(link, target):
    tmp = f"{link}.minicl-new"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _put_back(saved):
    for path, (content, mode) in saved.items():
        if content is None:
            if os.path.lexists(path):
                os.remove(path)
        elif isinstance(content, tuple):  # a link
            switch_link(path, content[1])
        else:
            write_file(path, content, mode)


def apply_plan(app, todo):
    """Carry out ``todo``: publish the static trees, write the files, have nginx test the whole
    configuration (and put the previous files back if it refuses), switch the sites' links,
    then start or reload nginx."""
    for source, release in todo.trees.values():
        os.makedirs(releases_dir(app), mode=0o755, exist_ok=True)
        publish_tree(app, source, release)
    saved = {}
    for path in [*todo.files, *todo.removed]:
        if os.path.islink(path):
            saved[path] = (("link", os.readlink(path)), None)
        else:
            saved[path] = (read_file(path) if os.path.exists(path) else None, _mode(path))
    try:
        for path, (text, mode) in todo.files.items():
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            write_file(path, text, mode)
        for path in todo.removed:
            os.remove(path)
        ok, error = nginx_test() if todo.config_changes else (True, "")
    except BaseException:
        _put_back(saved)
        raise
    if not ok:
        _put_back(saved)
        raise ApplianceError(f"nginx -t refused the new configuration, nginx keeps the running one: {error}")
    for name, (_, release) in todo.trees.items():
        switch_link(site_root(app, name), f"{RELEASES}/{release}")
    if todo.enable:
        systemctl("enable", SERVICE)
    try:
        if todo.start:
            systemctl("start", SERVICE)
        elif todo.reload:
            systemctl("reload", SERVICE)
    except ApplianceError:
        _put_back(saved)  # the next run finds the new files missing again, and tries again
        raise
    prune_releases(app)


def converge(app, host_ips, checkout, settings, todo):
    """Carry out ``todo``; then obtain the certificates it lists and load them: another plan,
    written and tested the same way, which is returned (None when no certificate was due)."""
    apply_plan(app, todo)
    if not todo.certificates:
        return None
    os.makedirs(ACME_WEBROOT, mode=0o755, exist_ok=True)
    for name in sorted(todo.certificates):
        try:
            acme.obtain(
                cert_name(app, name), app["sites"][name]["server_names"], settings, acme.webroot(ACME_WEBROOT)
            )
        except acme.AcmeError as exc:
            if app.get("public"):
                raise
            raise acme.AcmeError(
                f"{exc}; app {app['name']} is not public: its port 80 answers the cluster's hosts only, "
                "and an ACME server outside the cluster cannot reach it (set public: true)"
            ) from None
    then = plan(app, host_ips, checkout, settings)
    then.certificates = {}  # just obtained: if the CA's are due at once, the next run says so
    apply_plan(app, then)
    return then


def write_expiry_metrics(app):
    """When each TLS certificate of ``app`` on this host started and expires, for the monitor (the
    textfile collector); labelled with where it comes from (acme or file)."""
    if not os.path.isdir(metrics.TEXTFILE_DIR):
        return
    path = metrics.app_file(metrics.TEXTFILE_DIR, "nginx", app["name"], "certificates")
    rows = []
    for name, site in sorted(app["sites"].items()):
        found = certificate_in(tls_paths(app, name)[0]) if site.get("tls") else None
        if found:
            source = "acme" if from_acme(site) else "file"
            rows.append(({"app": app["name"], "site": name, "source": source}, found))
    if not rows:
        if os.path.exists(path):
            os.remove(path)
        return
    text = acme.validity_metrics(METRIC_FAMILY, "the TLS certificate of an nginx site on this host", rows)
    if read_file(path) != text:
        write_file(path, text, 0o644)


def prune_releases(app):
    """The copies of static sites no link points to (nor will: their site is gone), removed;
    returns them."""
    folder = releases_dir(app)
    if not os.path.isdir(folder):
        return []
    current = set()
    for name in app["sites"]:
        link = site_root(app, name)
        if os.path.islink(link):
            current.add(os.path.basename(os.readlink(link)))
    removed = []
    for entry in sorted(os.listdir(folder)):
        if entry not in current:
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
            removed.append(entry)
    top = os.path.dirname(folder)
    for entry in sorted(os.listdir(top)):
        path = os.path.join(top, entry)
        if entry != RELEASES and entry not in app["sites"] and os.path.islink(path):
            os.remove(path)
            removed.append(entry)
    return removed


# -- requests -----------------------------------------------------------------------------


def probe_name(server_name):
    """A name to ask for ``server_name``: a wildcard's ("*.example.org") with a label in place."""
    return f"minicl-check.{server_name[2:]}" if server_name.startswith("*.") else server_name


def request(name, address, port, tls, path="/", timeout=TIMEOUT):
    """GET ``path`` at ``address``:``port`` for the server name ``name`` (its Host header, and
    its SNI over TLS; the certificate is not verified: the test is about nginx answering).
    Returns (status, headers) or raises OSError."""
    sock = socket.create_connection((address, port), timeout=timeout)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=name)
    conn = http.client.HTTPConnection(name, port, timeout=timeout)
    conn.sock = sock
    try:
        conn.request("GET", path, headers={"Host": name, "User-Agent": "minicl"})
        response = conn.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        conn.close()


def certificate_in(path):
    """The certificate (acme.Certificate) in ``path``, or None if there is none to read."""
    text = read_file(path)
    try:
        return acme.read_certificate(path, text) if text else None
    except ValueError:  # not a PEM certificate
        return None


def stub_status():
    """nginx's stub_status figures."""
    with urllib.request.urlopen(f"http://{STATUS_ADDRESS}/stub_status", timeout=TIMEOUT) as f:
        return parse_stub_status(f.read().decode())


def parse_stub_status(text):
    """{active, accepted, handled, requests, reading, writing, waiting} from stub_status's text."""
    numbers = [int(n) for n in re.findall(r"\d+", text)]
    keys = ("active", "accepted", "handled", "requests", "reading", "writing", "waiting")
    if len(numbers) != len(keys):
        raise ApplianceError(f"nginx's stub_status said something unexpected: {text!r}")
    return dict(zip(keys, numbers, strict=True))


# -- verbs --------------------------------------------------------------------------------


def check_health(app):
    """nginx active, its configuration valid, each site answering locally for its first name
    (a status below 500), and the days left of each TLS certificate."""
    report = Report(app["name"], "check_health")
    if not report.check(unit_active(SERVICE), f"{SERVICE} is active"):
        return report
    ok, error = nginx_test()
    report.check(ok, "nginx -t accepts the configuration" + ("" if ok else f": {error}"))
    report.data["sites"] = {}
    for name, site in sorted(app["sites"].items()):
        tls = bool(site.get("tls"))
        server_name = probe_name(site["server_names"][0])
        found = report.data["sites"][name] = {}
        try:
            status, _ = request(server_name, "127.0.0.1", 443 if tls else 80, tls)
        except OSError as exc:
            report.check(False, f"site {name} ({server_name}): no answer: {exc}")
            continue
        found["status"] = status
        report.check(status < 500, f"site {name} ({server_name}) answers {status}")
        if tls:
            cert = certificate_in(tls_paths(app, name)[0])
            found["certificate_days_left"] = int(cert.days_left() // 1) if cert else None
            report.check(
                cert is not None and not cert.expiring(),
                f"site {name}: its certificate expires in {acme.span(cert.seconds_left())}"
                if cert
                else f"site {name}: its certificate cannot be read",
            )
    return report


def test(app):
    """Each site through each of its server names at this host's address: 2xx or 3xx; a TLS
    site's port 80 redirects to https."""
    report = Report(app["name"], "test")
    address = address_of(app["addresses"])
    for _, site in sorted(app["sites"].items()):
        tls = bool(site.get("tls"))
        for server_name in map(probe_name, site["server_names"]):
            scheme = "https" if tls else "http"
            try:
                status, _ = request(server_name, address, 443 if tls else 80, tls)
                report.check(200 <= status < 400, f"{scheme}://{server_name}/ at {address}: {status}")
            except OSError as exc:
                report.check(False, f"{scheme}://{server_name}/ at {address}: {exc}")
            if tls:
                try:
                    status, headers = request(server_name, address, 80, False)
                    where = headers.get("Location", "")
                    report.check(
                        status == 301 and where.startswith(f"https://{server_name}"),
                        f"http://{server_name}/ redirects to https ({status} {where})",
                    )
                except OSError as exc:
                    report.check(False, f"http://{server_name}/ at {address}: {exc}")
    return report


def monitor(app):
    """nginx's live figures (stub_status): connections and requests."""
    report = Report(app["name"], "monitor")
    figures = stub_status()
    report.data.update(figures)
    report.lines.append(
        f"info {figures['active']} connections ({figures['reading']} reading, {figures['writing']} writing, "
        f"{figures['waiting']} waiting), {figures['requests']} requests, {figures['accepted']} accepted, "
        f"{figures['accepted'] - figures['handled']} dropped"
    )
    return report


def cleanup(app):
    """Copies of static sites that no site serves any more."""
    report = Report(app["name"], "cleanup")
    removed = prune_releases(app)
    report.check(True, f"unused copies of static sites: {', '.join(removed) or 'none'} removed")
    report.data["removed"] = removed
    return report


def upgrade(app):
    from minicl.appliances import upgrades

    return upgrades.upgrade(sys.modules[__name__], app)


def downgrade(app):
    from minicl.appliances import upgrades

    return upgrades.downgrade(sys.modules[__name__], app)
