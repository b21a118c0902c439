"""The rules of cluster.json for the front: the haproxy apps (address, domains, backends, routes)
and the ``acme`` section they get their certificates from, as problems naming the field."""

import hashlib
import ipaddress
from urllib.parse import urlparse

from minicl.problems import Problem, path_key, quoted

RESERVED_PREFIX = "minicl"  # minicl's own backends and frontends (the ACME challenges, stats)


def vrid(app_name):
    """The VRRP virtual router id of an app (1-255), the same on every host of it."""
    return int(hashlib.sha256(app_name.encode()).hexdigest(), 16) % 255 + 1


def addresses(app):
    """The app's floating address(es) as a list, IPv4 first."""
    found = app.get("address")
    return [found] if isinstance(found, str) else list(found or [])


def parse_server(text):
    """("host", port) of a "host:port" backend server, or None."""
    host, sep, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def problems(data, source, repo_files):
    """The problems of the haproxy apps and the acme section of cluster.json ``data``."""
    from minicl import rules  # rules calls this module: imported here, not at the top

    found = []

    def add(path, message):
        found.append(Problem(path, message, source))

    hosts = data.get("hosts") if isinstance(data.get("hosts"), dict) else {}
    apps = data.get("apps") if isinstance(data.get("apps"), dict) else {}
    own = {}
    for host, spec in hosts.items():
        ips = spec.get("ip") if isinstance(spec, dict) else None
        for ip in [ips] if isinstance(ips, str) else ips if isinstance(ips, list) else []:
            own[ip] = host
    fronts = {n: a for n, a in apps.items() if isinstance(a, dict) and a.get("type") == "haproxy"}
    taken = {}
    vrids = {}
    for name, app in sorted(fronts.items()):
        base = f"apps.{path_key(name)}"
        for key in ("address", "domains", "backends"):
            if key not in app:
                add(f"{base}.{key}", f"a haproxy app needs {key} (README: the front)")
        app_hosts = app.get("hosts")
        if isinstance(app_hosts, list) and len(app_hosts) < 2:
            add(
                f"{base}.hosts",
                "a haproxy app needs two hosts at least: the address moves to the other when one fails",
            )
        found += _address_problems(app, base, own, taken, name, source)
        other = vrids.setdefault(vrid(name), name)
        if other != name:
            add(
                base,
                f"its VRRP router id ({vrid(name)}, from its name) is that of app {quoted(other)}: "
                "rename one of them",
            )
        domains = app.get("domains") if isinstance(app.get("domains"), list) else []
        for i, domain in enumerate(domains):
            if isinstance(domain, str) and not rules.is_dns_name(domain):
                add(
                    f"{base}.domains[{i}]",
                    f"{quoted(domain)} is not a DNS name (lower-case labels a-z, 0-9, - separated by dots)",
                )
        backends = app.get("backends") if isinstance(app.get("backends"), dict) else {}
        for backend, spec in backends.items():
            where = f"{base}.backends.{path_key(backend)}"
            if not rules.ROLE_NAME.fullmatch(backend) or backend.startswith(RESERVED_PREFIX):
                add(
                    where,
                    f"{quoted(backend)} is not a backend name (a-z, 0-9, _ and -, not "
                    f"starting with {RESERVED_PREFIX})",
                )
            servers = spec.get("servers") if isinstance(spec, dict) else None
            for i, server in enumerate(servers if isinstance(servers, list) else []):
                parsed = parse_server(server)
                if parsed is None:
                    add(f"{where}.servers[{i}]", f'{quoted(server)} is not "host:port" (a port 1-65535)')
                elif parsed[0] not in hosts:
                    add(f"{where}.servers[{i}]", f'{quoted(parsed[0])} is not a host in "hosts"')
            check = spec.get("check") if isinstance(spec, dict) else None
            if isinstance(check, str) and (not check.startswith("/") or any(c.isspace() for c in check)):
                add(f"{where}.check", f"{quoted(check)} is not a path (starting with /, no spaces)")
        routes = app.get("routes") if isinstance(app.get("routes"), dict) else {}
        for domain, backend in routes.items():
            where = f"{base}.routes.{path_key(domain)}"
            if domain not in domains:
                add(where, f"{quoted(domain)} is not one of the app's domains")
            if isinstance(backend, str) and backend not in backends:
                add(where, f"{quoted(backend)} is not one of the app's backends")
        default = app.get("default")
        if isinstance(default, str) and default not in backends:
            add(f"{base}.default", f"{quoted(default)} is not one of the app's backends")
        if default is None and backends:
            unrouted = [d for d in domains if isinstance(d, str) and d not in routes]
            if unrouted:
                add(
                    f"{base}.default",
                    f"the domains {', '.join(unrouted)} have no route: name a "
                    "default backend, or give each a route",
                )
    if fronts and not isinstance(data.get("acme"), dict):
        add(
            "acme",
            f"the haproxy app {quoted(sorted(fronts)[0])} gets its certificates from an ACME "
            "server: add an acme section with its directory",
        )
    found += _acme_problems(data.get("acme"), source, repo_files)
    return found


def _address_problems(app, base, own, taken, name, source):
    found = []
    where = f"{base}.address"
    given = app.get("address")
    items = addresses(app) if isinstance(given, (str, list)) else []
    versions = []
    for i, text in enumerate(items):
        at = where if isinstance(given, str) else f"{where}[{i}]"
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            found.append(Problem(at, f"{quoted(text)} is not an IP address", source))
            continue
        versions.append(ip.version)
        if text in own:
            found.append(
                Problem(
                    at,
                    f"{text} is the own address of host {own[text]}: the floating "
                    "address must be one no host has",
                    source,
                )
            )
        other = taken.setdefault(text, name)
        if other != name:
            found.append(Problem(at, f"{text} is already the address of app {quoted(other)}", source))
    if versions and (versions[0] != 4 or len(versions) != len(set(versions))):
        found.append(Problem(where, "give one IPv4 address, optionally followed by one IPv6 address", source))
    return found


def _acme_problems(acme, source, repo_files):
    from minicl import rules

    found = []
    if not isinstance(acme, dict):
        return found
    directory = acme.get("directory")
    if isinstance(directory, str):
        parsed = urlparse(directory)
        if parsed.scheme != "https" or not parsed.netloc:
            found.append(Problem("acme.directory", f"{quoted(directory)} is not an https:// URL", source))
    email = acme.get("email")
    if isinstance(email, str):
        match = rules.EMAIL.fullmatch(email)
        if not match or not rules.is_dns_name(match.group(1).lower()):
            found.append(
                Problem("acme.email", f"{quoted(email)} is not an e-mail address (user@domain)", source)
            )
    ca = acme.get("ca")
    if isinstance(ca, str) and repo_files is not None and ca not in repo_files:
        found.append(Problem("acme.ca", f"{quoted(ca)} is not a file of the config repo", source))
    return found
