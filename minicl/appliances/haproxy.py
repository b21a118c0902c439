"""The front appliance: Debian's haproxy on two or more hosts (the proxies), a floating service
address held by one of them at a time (Debian's keepalived, VRRP), TLS certificates from the
ACME server of cluster.json's ``acme`` section (certbot, HTTP-01 through haproxy).

What a converge writes (``plan`` reads, ``apply_plan`` changes):

- /etc/keepalived/keepalived.conf (0600: it holds the VRRP password, derived by every proxy
  alike with ``appliances.shared_secret``): one VRRP instance, unicast to the other proxies' own
  addresses, the address on the interface of this host's own address; ``nopreempt``, so that a
  proxy coming back does not take the address back (one move per failure, not two). Its
  ``vrrp_script`` (/etc/keepalived/minicl-front-check, every second) fails while haproxy is not
  active: the proxy then goes to FAULT and gives the address up. The script also writes
  ``minicl_front_address_held`` for node_exporter.
- /etc/haproxy/haproxy.cfg: a frontend on the address's ports 80 and 443 (``transparent``: the
  proxies that do not hold the address have it bound already), http redirected to https but for
  /.well-known/acme-challenge/, which goes to certbot; the domains routed to their backends,
  each server health-checked; a stats page on 127.0.0.1:8404 for the exporter and the verbs.
  The new file is checked with ``haproxy -c`` before it replaces the running one (a rejected one
  leaves the old one running, and the state fails with haproxy's message); then
  ``systemctl reload haproxy`` (graceful: the old process finishes its connections).
- /etc/haproxy/certs/<app>.pem (0600): certbot's fullchain and key of the app's certificate.

Certificates: every proxy holds its own certificate for the app's domains (same names, its own
key), obtained with ``certbot certonly --standalone`` on its own address, port 8402 (see
minicl.acme), when it has none, when the names change, or when it expires within
acme.renew_before. The ACME server's challenge request reaches whichever proxy holds the
address; that haproxy's ``minicl-acme`` backend lists every proxy's port 8402 and retries on
refused connections and 404s with another server, so the request reaches the proxy whose
certbot is listening. Port 8402 answers the cluster's hosts only.
"""

import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from minicl import acme, frontrules, metrics
from minicl.appliances import ApplianceError, Report, shared_secret, systemctl, unit_active, unit_enabled
from minicl.cluster import addresses_by_host, host_port
from minicl.files import read_file, write_file

SERVICE = "haproxy"
KEEPALIVED = "keepalived"
PORT = 443
HTTP_PORT = 80
PORTS = (HTTP_PORT, PORT)  # the front: open to the world unless the app says "public": false
PUBLIC_DEFAULT = True
ACME_PORT = 8402  # certbot's standalone server on each proxy's own address
STATS_PORT = 8404  # 127.0.0.1 only
CONF_FILE = "/etc/haproxy/haproxy.cfg"
CERTS_DIR = "/etc/haproxy/certs"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
CHECK_SCRIPT = "/etc/keepalived/minicl-front-check"
KEEPALIVED_DROPIN = "/etc/systemd/system/keepalived.service.d/minicl.conf"
# Once keepalived has stopped (its checks with it), the metric says whether the address is still here.
DROPIN_TEXT = f"# Managed by minicl.\n[Service]\nExecStopPost=-{CHECK_SCRIPT}\n"
VERBS = ("check_health", "test", "upgrade", "downgrade", "failover", "monitor")
PACKAGES = ("haproxy", "keepalived", "certbot")
# For minicl.firewall: the ACME challenges between proxies answer cluster hosts only, and VRRP is
# accepted from the app's other proxies only.
CLUSTER_ONLY_PORTS = (ACME_PORT,)
PEER_PROTOCOLS = ("vrrp",)

EXPORTER_PACKAGE = "prometheus-haproxy-exporter"
EXPORTER_SERVICE = "prometheus-haproxy-exporter"
EXPORTER_PORT = 9101

HELD_METRIC = "minicl_front_address_held"
METRIC_FAMILY = "minicl_front_certificate"  # acme.validity_metrics
WAIT_ADDRESS = 30  # seconds a converge waits for the address to answer before asking for a certificate
PRIORITY_TOP = 200


def render_exporter_defaults(app):
    return (
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.\n"
        f'ARGS="--web.listen-address=:{EXPORTER_PORT} '
        f'--haproxy.scrape-uri=http://127.0.0.1:{STATS_PORT}/stats;csv"\n'
    )


def vrrp_password(app):
    return shared_secret(app["name"], "vrrp password")[:8]  # VRRPv2 PASS: 8 characters at most


def own_ipv4(ips):
    return next((ip for ip in ips if ":" not in ip), None)


def cert_path(app):
    return f"{CERTS_DIR}/{app['name']}.pem"


def backend_of(app, domain):
    return app.get("routes", {}).get(domain, app.get("default"))


# -- rendering ----------------------------------------------------------------------------


def render_haproxy(app, cluster_hosts, with_tls):
    """haproxy.cfg for the app. ``cluster_hosts``: {host: [addresses]} of the cluster (the
    backends' servers and the proxies); ``with_tls``: the certificate is there (the frontend on
    443 needs it)."""
    addresses = frontrules.addresses(app)
    lines = [
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.",
        "global",
        "    log /dev/log local0",
        "    log /dev/log local1 notice",
        "    chroot /var/lib/haproxy",
        "    stats socket /run/haproxy/admin.sock mode 660 level admin",
        "    stats timeout 30s",
        "    user haproxy",
        "    group haproxy",
        "    daemon",
        "    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:"
        "ECDHE-RSA-CHACHA20-POLY1305",
        "    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
        "TLS_CHACHA20_POLY1305_SHA256",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "",
        "defaults",
        "    log global",
        "    mode http",
        "    option httplog",
        "    option dontlognull",
        "    option forwardfor",
        "    timeout connect 5s",
        "    timeout client 50s",
        "    timeout server 50s",
        "    timeout http-request 10s",
        *[
            f"    errorfile {code} /etc/haproxy/errors/{code}.http"
            for code in (400, 403, 408, 500, 502, 503, 504)
        ],
        "",
        "frontend minicl-http",
        *[f"    bind {host_port(ip, HTTP_PORT)} transparent" for ip in addresses],
        "    acl acme_challenge path_beg /.well-known/acme-challenge/",
        "    http-request redirect scheme https code 301 unless acme_challenge",
        "    use_backend minicl-acme if acme_challenge",
        "",
    ]
    if with_tls:
        lines += [
            "frontend minicl-https",
            *[
                f"    bind {host_port(ip, PORT)} transparent ssl crt {cert_path(app)} alpn h2,http/1.1"
                for ip in addresses
            ],
            "    http-request set-header X-Forwarded-Proto https",
            '    http-response set-header Strict-Transport-Security "max-age=31536000"',
        ]
        for domain in app["domains"]:
            if domain in app.get("routes", {}):
                lines.append(
                    f"    use_backend {app['routes'][domain]} if {{ hdr(host),field(1,:) -i {domain} }}"
                )
        if app.get("default"):
            lines.append(f"    default_backend {app['default']}")
        lines.append("")
    lines += [
        "frontend minicl-stats",
        f"    bind 127.0.0.1:{STATS_PORT}",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 10s",
        "",
        "backend minicl-acme",
        "    # certbot listens on one proxy at a time: try the others until one answers",
        f"    retries {len(app['hosts']) + 1}",
        "    retry-on conn-failure empty-response 404",
        "    option redispatch 1",
        "    balance roundrobin",
    ]
    for host in app["hosts"]:
        lines.append(f"    server {host} {host_port(own_ipv4(cluster_hosts[host]), ACME_PORT)}")
    for name, spec in sorted(app["backends"].items()):
        lines += [
            "",
            f"backend {name}",
            "    balance roundrobin",
            "    option httpchk",
            # HTTP/1.1 with a name the backend serves: a server of name-based sites (nginx)
            # answers a check without one with its default server.
            f"    http-check send meth GET uri {spec.get('check', '/')} ver HTTP/1.1 "
            f"hdr Host {check_host(app, name)}",
            "    http-check expect status 200-399",
        ]
        for server in spec["servers"]:
            host, port = frontrules.parse_server(server)
            ip = own_ipv4(cluster_hosts[host]) or cluster_hosts[host][0]
            lines.append(f"    server {host}-{port} {host_port(ip, port)} check inter 2s fall 2 rise 2")
    return "\n".join(lines) + "\n"


def shown_files(app, cluster_hosts):
    """For ``minicl show``: haproxy.cfg with the certificate in place (keepalived.conf holds the
    VRRP password and the interface found on the host: not shown)."""
    return {CONF_FILE: render_haproxy(app, cluster_hosts, with_tls=True)}


def check_host(app, backend):
    """The name a backend's health check asks for: the first domain routed to it, else (the
    default backend) the first domain no route takes, else the app's first domain."""
    routes = app.get("routes", {})
    routed = [d for d in app["domains"] if routes.get(d) == backend]
    unrouted = [d for d in app["domains"] if d not in routes] if app.get("default") == backend else []
    return (routed or unrouted or app["domains"])[0]


@dataclass
class Interface:
    """Where the address goes: the interface of this host's own address, and its prefix."""

    name: str
    prefixes: dict = field(default_factory=dict)  # {4: 24, 6: 64}


def render_keepalived(app, interface):
    """keepalived.conf: one VRRP instance for the app (see the module's docstring)."""
    addresses = frontrules.addresses(app)
    own = own_ipv4(app["addresses"])
    peers = [own_ipv4(ips) for _, ips in sorted(app["peers"].items())]
    priority = PRIORITY_TOP - 10 * app["hosts"].index(app["host"])

    def with_prefix(ip):
        version = ipaddress.ip_address(ip).version
        return f"{ip}/{interface.prefixes.get(version, 32 if version == 4 else 128)} dev {interface.name}"

    lines = [
        f"# Managed by minicl (app {app['name']}); changes here are overwritten.",
        "global_defs {",
        f"    router_id {app['host']}",
        "    enable_script_security",
        "    script_user root",
        "}",
        "",
        "vrrp_script minicl_haproxy {",
        f'    script "{CHECK_SCRIPT}"',
        "    interval 1",
        "    timeout 3",
        "    fall 2",
        "    rise 2",
        "}",
        "",
        f"vrrp_instance {app['name']} {{",
        "    state BACKUP",
        "    nopreempt",
        f"    interface {interface.name}",
        f"    virtual_router_id {frontrules.vrid(app['name'])}",
        f"    priority {priority}",
        "    advert_int 1",
        f"    unicast_src_ip {own}",
        "    unicast_peer {",
        *[f"        {peer}" for peer in peers],
        "    }",
        "    authentication {",
        "        auth_type PASS",
        f"        auth_pass {vrrp_password(app)}",
        "    }",
        "    virtual_ipaddress {",
        f"        {with_prefix(addresses[0])}",
        "    }",
    ]
    if len(addresses) > 1:  # IPv6 is not in IPv4 VRRP adverts: moved along, "excluded"
        lines += ["    virtual_ipaddress_excluded {", f"        {with_prefix(addresses[1])}", "    }"]
    lines += [
        "    track_script {",
        "        minicl_haproxy",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_check_script(app):
    """keepalived's check: haproxy active; and, for node_exporter, whether the address is here."""
    address = frontrules.addresses(app)[0]
    path = f"{metrics.TEXTFILE_DIR}/minicl_front_{app['name']}.prom"
    return (
        "#!/bin/sh\n"
        f"# Managed by minicl (app {app['name']}): keepalived runs it every second. It fails while\n"
        "# haproxy is not active (this proxy then gives the address up), and tells node_exporter\n"
        "# whether this proxy holds the address (also once keepalived has stopped: ExecStopPost).\n"
        "umask 022\n"
        "held=0\n"
        f'ip -o addr show | grep -q " {address}/" && held=1\n'
        f"f={path}\n"
        'if [ -d "${f%/*}" ]; then\n'
        f"    printf '# HELP {HELD_METRIC} 1 if this proxy holds the address of the front.\\n"
        f'# TYPE {HELD_METRIC} gauge\\n{HELD_METRIC}{{app="{app["name"]}"}} %s\\n\' "$held" > "$f.tmp" '
        '&& mv "$f.tmp" "$f"\n'
        "fi\n"
        f"exec systemctl is-active --quiet {SERVICE}.service\n"
    )


# -- reading the host -------------------------------------------------------------------------


def interface_of(app):
    """The Interface that carries this host's own IPv4 address, with the prefixes of its networks;
    an ApplianceError when the app's address is on none of them."""
    found = json.loads(
        subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    )
    own = set(app["addresses"])
    for link in found:
        infos = link.get("addr_info", [])
        if not any(info.get("local") in own for info in infos):
            continue
        prefixes = {}
        for info in infos:
            if info.get("local") in own:
                prefixes[4 if info["family"] == "inet" else 6] = info["prefixlen"]
        iface = Interface(link["ifname"], prefixes)
        for ip in frontrules.addresses(app):
            version = ipaddress.ip_address(ip).version
            mine = next(
                (i for i in infos if i.get("local") in own and (i["family"] == "inet") == (version == 4)),
                None,
            )
            net = mine and ipaddress.ip_network(f"{mine['local']}/{mine['prefixlen']}", strict=False)
            if not net or ipaddress.ip_address(ip) not in net:
                raise ApplianceError(
                    f"the address {ip} of app {app['name']} is not on the network of this host's own "
                    f"addresses on {link['ifname']}: the address must be on the proxies' own network"
                )
        return iface
    raise ApplianceError(f"no interface has this host's address ({', '.join(app['addresses'])})")


def holds_address(app):
    address = frontrules.addresses(app)[0]
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=False).stdout
    return f" {address}/" in out


def config_check(path):
    """haproxy -c on ``path``: None if it is valid, else haproxy's message."""
    result = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return None
    alerts = [line for line in (result.stderr + result.stdout).splitlines() if "[ALERT]" in line]
    return " ".join(" ".join(alerts).split())[-800:] or f"exit code {result.returncode}"


def pem_of(name):
    chain, key = (read_file(p) for p in acme.live_paths(name))
    return chain + key if chain and key else None


# -- planning and converging --------------------------------------------------------------


@dataclass
class Plan:
    """What a converge does: ``files`` {path: (text, mode)} to write (keepalived's and the
    check), the haproxy configuration ``haproxy_conf`` if it changes, the certificate
    (``obtain``: why it is needed, or None; ``pem``: the pem file if it changes), the services."""

    files: dict
    haproxy_conf: str
    obtain: str
    pem: str
    start_haproxy: bool
    enable: list
    start_keepalived: bool
    reload_keepalived: bool


def plan(app, cluster_data, settings):
    """Read this host (nothing changes): what a converge would do. ``settings``: minicl:acme."""
    if not settings:
        raise ApplianceError(f"app {app['name']}: cluster.json has no acme section to get certificates from")
    interface = interface_of(app)
    hosts = addresses_by_host(cluster_data)
    files = {
        KEEPALIVED_CONF: (render_keepalived(app, interface), 0o600),
        CHECK_SCRIPT: (render_check_script(app), 0o755),
        KEEPALIVED_DROPIN: (DROPIN_TEXT, 0o644),
        **{path: (text, 0o644) for path, text in acme.ca_file_wanted(settings).items()},
    }
    files = {path: spec for path, spec in files.items() if read_file(path) != spec[0]}
    found = acme.certificate(app["name"])
    obtain = acme.due(found, app["domains"], settings)
    pem = pem_of(app["name"]) if not obtain else None
    pem = pem if pem and read_file(cert_path(app)) != pem else None
    with_tls = bool(read_file(cert_path(app)) or pem) or bool(obtain)
    conf = render_haproxy(app, hosts, with_tls)
    up = unit_active(SERVICE)
    return Plan(
        files,
        conf if read_file(CONF_FILE) != conf else None,
        obtain,
        pem,
        start_haproxy=not up,
        enable=[unit for unit in (SERVICE, KEEPALIVED) if not unit_enabled(unit)],
        start_keepalived=not unit_active(KEEPALIVED),
        reload_keepalived=KEEPALIVED_CONF in files and unit_active(KEEPALIVED),
    )


def install_haproxy_conf(text):
    """Check ``text`` with haproxy -c, then put it in place; the running configuration stays
    when haproxy rejects it (ApplianceError with haproxy's message)."""
    new = f"{CONF_FILE}.minicl-new"
    write_file(new, text, 0o644)
    problem = config_check(new)
    if problem:
        os.unlink(new)
        raise ApplianceError(f"haproxy -c rejects the new configuration; the running one stays: {problem}")
    os.replace(new, CONF_FILE)


def reload_or_start():
    if unit_active(SERVICE):
        systemctl("reload", SERVICE)
    else:
        systemctl("start", SERVICE)


def install_and_reload(text):
    """install_haproxy_conf, then reload (or start) haproxy; when that fails the previous file is
    put back, so that the next run finds the change still to make and tries again."""
    previous = read_file(CONF_FILE)
    install_haproxy_conf(text)
    try:
        reload_or_start()
    except ApplianceError:
        if previous is not None:
            write_file(CONF_FILE, previous, 0o644)
        raise


def write_pem(app, text):
    os.makedirs(CERTS_DIR, mode=0o700, exist_ok=True)
    write_file(cert_path(app), text, 0o600)


def wait_for_address(app, seconds=WAIT_ADDRESS):
    """Until some proxy answers on the address's port 80 (the challenge goes there)."""
    address = frontrules.addresses(app)[0]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, HTTP_PORT), timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def apply_plan(app, cluster_data, settings, todo):
    """Carry out a plan: keepalived, haproxy (checked first), then the certificate, if due."""
    for path, (text, mode) in todo.files.items():
        write_file(path, text, mode)
    if KEEPALIVED_DROPIN in todo.files:
        systemctl("daemon-reload")
    for unit in todo.enable:
        systemctl("enable", unit)
    current_pem = read_file(cert_path(app))
    if todo.pem:
        write_pem(app, todo.pem)
    if todo.haproxy_conf:
        hosts = addresses_by_host(cluster_data)
        text = todo.haproxy_conf
        if todo.obtain and not (current_pem or todo.pem):  # no certificate yet: port 80 only, for now
            text = render_haproxy(app, hosts, with_tls=False)
        install_and_reload(text)
    elif todo.pem:  # certbot renewed it on its own (certbot.timer): haproxy loads the new pem
        try:
            problem = config_check(CONF_FILE)
            if problem:
                raise ApplianceError(f"haproxy -c rejects {CONF_FILE} with the new certificate: {problem}")
            reload_or_start()
        except ApplianceError:
            if current_pem is not None:  # as for the configuration: the next run tries again
                write_pem(app, current_pem)
            raise
    elif todo.start_haproxy:
        systemctl("start", SERVICE)
    if todo.start_keepalived:
        systemctl("start", KEEPALIVED)
    elif todo.reload_keepalived:
        systemctl("reload", KEEPALIVED)
    if todo.obtain:
        if not wait_for_address(app):
            raise ApplianceError(
                f"no proxy answers on {frontrules.addresses(app)[0]}:{HTTP_PORT} after {WAIT_ADDRESS} s, "
                "where the ACME server sends its challenge: is keepalived running on the proxies?"
            )
        acme.obtain(
            app["name"], app["domains"], settings, acme.standalone(own_ipv4(app["addresses"]), ACME_PORT)
        )
        write_pem(app, pem_of(app["name"]))
        install_and_reload(render_haproxy(app, addresses_by_host(cluster_data), with_tls=True))
    write_expiry_metric(app)


def write_expiry_metric(app):
    if not os.path.isdir(metrics.TEXTFILE_DIR):
        return
    path = metrics.app_file(metrics.TEXTFILE_DIR, "front", app["name"], "certificate")
    found = acme.certificate(app["name"])
    if found is None:
        return
    text = acme.validity_metrics(
        METRIC_FAMILY, "the front's certificate on this proxy", [({"app": app["name"]}, found)]
    )
    if read_file(path) != text:
        write_file(path, text, 0o644)


# -- verbs --------------------------------------------------------------------------------


def stats():
    """haproxy's stats as rows ({pxname, svname, status, ...}), or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{STATS_PORT}/stats;csv", timeout=3) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    header, *rows = text.splitlines()
    names = header.lstrip("# ").split(",")
    return [dict(zip(names, row.split(","), strict=False)) for row in rows if row]


def peer_holds(app, peer_ips, timeout=2):
    """Whether a peer says (its node_exporter's textfile metric) that it holds the address:
    True, False, or None when it does not answer."""
    ip = own_ipv4(peer_ips)
    try:
        with urllib.request.urlopen(f"http://{host_port(ip, 9100)}/metrics", timeout=timeout) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    wanted = f'{HELD_METRIC}{{app="{app["name"]}"}} '
    line = next((line for line in text.splitlines() if line.startswith(wanted)), None)
    return None if line is None else line.split()[-1] == "1"


def check_health(app):
    report = Report(app["name"], "check_health")
    report.check(unit_active(SERVICE), f"{SERVICE} is active")
    problem = config_check(CONF_FILE)
    report.check(problem is None, f"haproxy -c accepts {CONF_FILE}" + (f": {problem}" if problem else ""))
    report.check(unit_active(KEEPALIVED), f"{KEEPALIVED} is active")
    address = frontrules.addresses(app)[0]
    mine = holds_address(app)
    report.data["holds_address"] = mine
    report.lines.append(f"info this proxy {'holds' if mine else 'does not hold'} the address {address}")
    holders = [app["host"]] if mine else []
    report.data["peers"] = {}
    for peer, ips in sorted(app["peers"].items()):
        said = peer_holds(app, ips)
        report.data["peers"][peer] = said
        if said:
            holders.append(peer)
        report.lines.append(
            f"info peer {peer}: "
            + {True: "holds the address", False: "standby", None: "does not answer"}[said]
        )
    report.check(len(holders) == 1, f"the address is on {', '.join(holders) or 'no proxy'}")
    rows = stats()
    if report.check(rows is not None, "haproxy's stats answer"):
        servers = {}
        for row in rows:
            if row["pxname"] in app["backends"] and row["svname"] not in ("FRONTEND", "BACKEND"):
                servers[f"{row['pxname']}/{row['svname']}"] = row["status"]
                report.check(
                    row["status"].startswith("UP"),
                    f"backend {row['pxname']} server {row['svname']}: {row['status']}",
                )
        report.data["servers"] = servers
    found = acme.certificate(app["name"])
    if report.check(found is not None, f"a certificate for {', '.join(app['domains'])}"):
        days = found.days_left()
        report.data["certificate_days_left"] = round(days, 1)
        report.data["certificate_serial"] = found.serial
        report.check(
            not found.expiring(),
            f"the certificate expires in {acme.span(found.seconds_left())} "
            f"({found.not_after:%Y-%m-%d %H:%M} UTC)",
        )
        report.check(read_file(cert_path(app)) == pem_of(app["name"]), f"haproxy has it ({cert_path(app)})")
    return report


def fetch(address, domain, timeout=5):
    """(HTTP status, the served certificate's DER) of GET / for ``domain`` at ``address``:443.
    The certificate is not verified here (the caller compares it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((address, PORT), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=domain) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n".encode())
            status = tls.recv(64).decode(errors="replace").split(" ")
    return int(status[1]) if len(status) > 1 and status[1].isdigit() else 0, der


def test(app):
    """A request through the address to each domain: an answer from its backend (below 500) with
    a certificate that names the domain and has not expired."""
    from cryptography import x509

    report = Report(app["name"], "test")
    address = frontrules.addresses(app)[0]
    for domain in app["domains"]:
        try:
            status, der = fetch(address, domain)
        except OSError as exc:
            report.check(False, f"https://{domain}/ through {address}: {exc}")
            continue
        cert = x509.load_der_x509_certificate(der)
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        fresh = cert.not_valid_after_utc.timestamp() > time.time()
        report.check(
            0 < status < 500,
            f"https://{domain}/ through {address}: HTTP {status} (backend {backend_of(app, domain)})",
        )
        report.check(
            domain in names and fresh,
            f"its certificate names {domain} and is valid until {cert.not_valid_after_utc:%Y-%m-%d}",
        )
    return report


def monitor(app):
    report = Report(app["name"], "monitor")
    rows = stats() or []
    report.data["holds_address"] = holds_address(app)
    for row in rows:
        if row["svname"] == "FRONTEND":
            report.lines.append(
                f"info frontend {row['pxname']}: {row['scur']} sessions, {row['stot']} in all, "
                f"{row.get('req_rate') or 0} requests/s"
            )
        elif row["svname"] == "BACKEND" and row["pxname"] in app["backends"]:
            report.lines.append(
                f"info backend {row['pxname']}: {row['status']}, {row['scur']} sessions, "
                f"{row['stot']} in all, {row.get('hrsp_5xx') or 0} 5xx"
            )
    report.data["stats"] = {f"{r['pxname']}/{r['svname']}": r.get("status") for r in rows}
    return report


def failover(app, wait=15):
    """On the proxy that holds the address: stop keepalived a moment, so that another proxy takes
    the address (they do not give it back: nopreempt), then start it again as a standby."""
    report = Report(app["name"], "failover")
    address = frontrules.addresses(app)[0]
    if not holds_address(app):
        holder = next((p for p, ips in sorted(app["peers"].items()) if peer_holds(app, ips)), None)
        report.lines.append(
            f"info {app['host']} does not hold {address}"
            + (f" ({holder} does): run failover there" if holder else " (no proxy says it does)")
        )
        report.data["holder"] = holder
        return report
    systemctl("stop", KEEPALIVED)
    try:
        deadline = time.monotonic() + wait
        holder = None
        while holder is None and time.monotonic() < deadline:
            holder = next((p for p, ips in sorted(app["peers"].items()) if peer_holds(app, ips)), None)
            if holder is None:
                time.sleep(0.5)
    finally:
        systemctl("start", KEEPALIVED)
    report.data["holder"] = holder
    report.check(
        holder is not None,
        f"{address} moved to {holder}"
        if holder
        else f"no other proxy took {address} within {wait} s (keepalived is started again here)",
    )
    return report


def upgrade(app):
    """haproxy, keepalived and certbot (and the app's own packages) upgraded on this proxy, and
    undone when check_health or test fail after it (see minicl.appliances.upgrades)."""
    from minicl.appliances import upgrades

    return upgrades.upgrade(sys.modules[__name__], app)


def downgrade(app):
    from minicl.appliances import upgrades

    return upgrades.downgrade(sys.modules[__name__], app)


def redacted(text, app):
    return text.replace(vrrp_password(app), "(hidden)")
