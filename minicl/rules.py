"""The rules of cluster.json that a JSON schema cannot express, as problems.

Names (DNS, POSIX users, roles), uids and addresses unique across entries, system accounts
left alone, durations that make sense together, port specs and trusted networks, credentials
(through ``minicl.credentials``) and roles present in the config repo. ``semantic_problems``
runs them all on data of any shape: each rule looks only at values of the type it expects and
leaves the rest to the schema's problems.
"""

import ipaddress
import json
import re
from urllib.parse import urlparse

from minicl import appliances, centrallog, packages
from minicl.cluster import MINICL_ROLE_STATES
from minicl.credentials import crypt_hash_problem, ssh_key_problem
from minicl.problems import Problem, path_key, quoted
from minicl.schema import duration_seconds, schema, schema_default

MIN_UID = 1000
NOBODY_UID = 65534

# Names that exist (or will, once Debian packages are installed) as system users or groups
# on a Debian host. A cluster user of that name would clash with, or take over, the account.
SYSTEM_NAMES = frozenset(
    """
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats
    nobody nogroup adm tty disk kmem dialout fax voice cdrom floppy tape sudo audio dip
    operator src shadow utmp video sasl plugdev staff users input sgx kvm render netdev
    messagebus sshd postfix postdrop prometheus ntp ntpsec polkitd syslog tss uuidd avahi
    dnsmasq statd tcpdump lxd docker libvirt libvirt-qemu systemd-journal ssl-cert crontab
    debian-exim Debian-exim nslcd sddm lightdm colord geoclue pulse rtkit saned usbmux
    git minicl salt admin wheel
    """.split()
)
SYSTEM_NAME_PREFIXES = ("systemd-", "_")

POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
EMAIL = re.compile(r"^[^@\s]+@([^@\s]+)$")
PORT_SPEC = re.compile(r"(\d{1,5})(?:-(\d{1,5}))?/(tcp|udp)")
MAX_SCRAPE_INTERVAL = 120  # well inside Prometheus' 5-minute staleness window


def semantic_problems(data, source, repo_files):
    """The problems of parsed cluster.json ``data`` (a dict) beyond the schema.

    ``repo_files``: the paths in the config repo when known (roles are checked against them),
    else None.
    """
    problems = []

    def add(path, message):
        problems.append(Problem(path, message, source))

    domain = data.get("domain")
    if isinstance(domain, str) and domain and not is_dns_name(domain):
        add(
            "domain",
            f"{json.dumps(domain)} is not a valid DNS name (lower-case labels a-z, 0-9, - separated by dots)",
        )

    email = data.get("admin_email")
    if isinstance(email, str) and email:
        match = EMAIL.fullmatch(email)
        if not match or not is_dns_name(match.group(1).lower()):
            add("admin_email", f"{json.dumps(email)} is not an e-mail address (user@domain)")

    ca_url = data.get("ca_url")
    if isinstance(ca_url, str) and ca_url:
        parsed = urlparse(ca_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            add("ca_url", f"{json.dumps(ca_url)} is not an http:// or https:// URL")

    smtp = data.get("smtp")
    if isinstance(smtp, dict):
        relay = smtp.get("relay")
        if isinstance(relay, str) and relay.strip() and is_ip(relay):
            add(
                "smtp.relay",
                f"{json.dumps(relay)} is an address: give the relay's host name, the name on its "
                "TLS certificate (Postfix checks the certificate against it)",
            )
        elif isinstance(relay, str) and relay.strip() and not is_dns_name(relay):
            add("smtp.relay", f"{json.dumps(relay)} is not a host name")
        elif isinstance(relay, str) and not relay.strip():
            add("smtp.relay", "must not be empty")
        username, password = smtp.get("username"), smtp.get("password")
        if (
            isinstance(username, str)
            and username
            and (":" in username or username != "".join(username.split()))
        ):
            add("smtp.username", f'{json.dumps(username)} must not contain spaces, line breaks or ":"')
        if (
            isinstance(password, str)
            and password
            and (password != password.strip() or "\n" in password or "\r" in password)
        ):
            add("smtp.password", "must not begin or end with spaces or contain line breaks (value hidden)")

    problems += _timing_problems(data, source)

    users = data.get("users")
    if isinstance(users, dict):
        problems += _user_problems(users, source)

    hosts = data.get("hosts")
    if isinstance(hosts, dict):
        problems += _host_problems(hosts, source, repo_files)

    roles = data.get("roles")
    if isinstance(roles, dict):
        for role, settings in roles.items():
            if not ROLE_NAME.fullmatch(role):
                add(f"roles.{path_key(role)}", f"{quoted(role)} is not a valid role name (a-z, 0-9, _ and -)")
            if isinstance(settings, dict):
                problems += _port_problems(
                    settings.get("public_ports"), f"roles.{path_key(role)}.public_ports", source
                )

    rollout = data.get("rollout")
    if isinstance(rollout, dict) and isinstance(hosts, dict):
        problems += _rollout_problems(rollout, hosts, source)

    if isinstance(hosts, dict):
        problems += _packages_problems(data.get("packages"), hosts, source, repo_files)

    if isinstance(hosts, dict):
        problems += _logging_problems(data, hosts, source, repo_files)

    apps = data.get("apps")
    if isinstance(apps, dict):
        problems += _app_problems(
            apps, hosts if isinstance(hosts, dict) else {}, users if isinstance(users, dict) else {}, source
        )
        problems += _nginx_problems(data, apps, hosts if isinstance(hosts, dict) else {}, source, repo_files)
    from minicl import frontrules  # the haproxy apps and the acme section

    problems += frontrules.problems(data, source, repo_files)
    return problems


APP_TYPES = appliances.TYPES
APP_ONLY_KEYS = {
    "databases": "postgresql",
    "synchronous": "postgresql",
    "maxmemory": "redis",
    "maxmemory_policy": "redis",
    "sites": "nginx",
    "public": ("nginx", "haproxy"),
    **{key: "haproxy" for key in ("address", "domains", "backends", "routes", "default")},
}
MEMORY = re.compile(r"([0-9]+)(k|kb|m|mb|g|gb)?")
MEMORY_UNITS = {None: 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def memory_bytes(text):
    """A Redis memory size ("256mb", "1g", "1000") in bytes; Redis reads k/m/g as powers of
    1000 and kb/mb/gb as powers of 1024."""
    number, unit = MEMORY.fullmatch(text).groups()
    return int(number) * MEMORY_UNITS[unit]


DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_DATABASES = {"postgres", "template0", "template1"}


def _app_problems(apps, hosts, users, source):
    """Apps: names, their hosts and database owners known, keys of their type, one app of a
    type per host (each type has one port)."""
    problems = []

    def add(path, message):
        problems.append(Problem(path, message, source))

    per_host = {}
    for name, app in apps.items():
        base = f"apps.{path_key(name)}"
        if not ROLE_NAME.fullmatch(name):
            add(base, f"{quoted(name)} is not a valid app name (a-z, 0-9, _ and -)")
        if not isinstance(app, dict):
            continue
        kind = app.get("type")
        for key, owner_type in APP_ONLY_KEYS.items():
            owners = (owner_type,) if isinstance(owner_type, str) else owner_type
            if key in app and kind in APP_TYPES and kind not in owners:
                add(f"{base}.{key}", f"only a {' or '.join(owners)} app has {key} (this one is {kind})")
        app_hosts = app.get("hosts")
        for i, host in enumerate(app_hosts if isinstance(app_hosts, list) else []):
            if not isinstance(host, str):
                continue
            if host not in hosts:
                add(f"{base}.hosts[{i}]", f'{quoted(host)} is not a host in "hosts"')
            elif kind in APP_TYPES:
                other = per_host.setdefault((host, kind), name)
                if other != name:
                    add(
                        f"{base}.hosts[{i}]",
                        f"{host} already runs the {kind} app {quoted(other)}; a host runs one app of a type",
                    )
        maxmemory = app.get("maxmemory")
        if isinstance(maxmemory, str) and MEMORY.fullmatch(maxmemory) and memory_bytes(maxmemory) < 2**20:
            add(f"{base}.maxmemory", f"{quoted(maxmemory)} is too small: Redis needs at least 1mb")
        databases = app.get("databases")
        for db, spec in databases.items() if isinstance(databases, dict) else []:
            where = f"{base}.databases.{path_key(db)}"
            if not DATABASE_NAME.fullmatch(db) or db in RESERVED_DATABASES:
                add(
                    where,
                    f"{quoted(db)} is not a database name minicl creates "
                    "(a-z, 0-9 and _, not starting with a digit; not postgres or template0/1)",
                )
            owner = spec.get("owner") if isinstance(spec, dict) else None
            if isinstance(owner, str) and owner not in users:
                add(f"{where}.owner", f'{quoted(owner)} is not a user in "users"')
    problems += _port_clashes(apps, per_host, source)
    return problems


def _port_clashes(apps, per_host, source):
    """Apps of two types on one host whose services want the same port (nginx and the
    haproxy front both listen on 80 and 443)."""
    problems, by_host = [], {}
    for (host, kind), name in sorted(per_host.items()):
        by_host.setdefault(host, []).append((kind, name))
    for host, found in sorted(by_host.items()):
        for i, (kind, name) in enumerate(found):
            for other_kind, other in found[:i]:
                shared = sorted(
                    set(appliances.service_ports(kind)) & set(appliances.service_ports(other_kind))
                )
                if shared:
                    where = f"apps.{path_key(name)}.hosts[{apps[name]['hosts'].index(host)}]"
                    problems.append(
                        Problem(
                            where,
                            (
                                f"{host} already runs the {other_kind} app {quoted(other)}, which listens on "
                                f"port{'s' if len(shared) > 1 else ''} {' and '.join(map(str, shared))} too; "
                                f"run the {kind} app on other hosts"
                            ),
                            source,
                        )
                    )
    return problems


def _repo_path_problem(path, repo_files, folder=False):
    """Why ``path`` is not a file (or ``folder``) of the config repo, or None."""
    if path.startswith("/") or ".." in path.split("/"):
        return f"{quoted(path)} must be a path inside the config repo (relative, no ..)"
    if repo_files is None:
        return None
    if folder and not any(f.startswith(path.rstrip("/") + "/") for f in repo_files):
        return f"{quoted(path)} is not a folder of the config repo"
    if not folder and path not in repo_files:
        return f"{quoted(path)} is not a file of the config repo"
    return None


def _nginx_problems(data, apps, hosts, source, repo_files):
    """nginx apps: sites, each static (root) or a proxy to cluster hosts, names, TLS files."""
    problems = []

    def add(path, message):
        problems.append(Problem(path, message, source))

    for name, app in apps.items():
        if not isinstance(app, dict) or app.get("type") != "nginx":
            continue
        base = f"apps.{path_key(name)}"
        if "backup" in app:
            add(f"{base}.backup", "an nginx app keeps no data to back up: remove backup")
        sites = app.get("sites")
        if not sites:
            add(f"{base}.sites", 'an nginx app serves at least one site: add one under "sites"')
            continue
        names = {}
        for site, spec in sites.items() if isinstance(sites, dict) else []:
            where = f"{base}.sites.{path_key(site)}"
            if not isinstance(spec, dict):
                continue
            if ("root" in spec) == ("proxy" in spec):
                add(where, "give either root (static files) or proxy (backends), not " +
                    ("both" if "root" in spec else "neither"))  # fmt: skip
            for i, server_name in enumerate(spec.get("server_names") or []):
                if not isinstance(server_name, str):
                    continue
                if not is_dns_name(server_name.removeprefix("*.")):
                    add(f"{where}.server_names[{i}]", f"{quoted(server_name)} is not a DNS name (or *.name)")
                elif names.setdefault(server_name, site) != site:
                    add(
                        f"{where}.server_names[{i}]",
                        f"{quoted(server_name)} is also a name of site {names[server_name]}",
                    )
            if isinstance(spec.get("root"), str) and (
                why := _repo_path_problem(spec["root"], repo_files, True)
            ):
                add(f"{where}.root", why)
            for i, target in enumerate(spec.get("proxy") or []):
                host, sep, port = target.rpartition(":") if isinstance(target, str) else ("", "", "")
                if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                    add(f"{where}.proxy[{i}]", f'{quoted(target)} is not "host:port" (a port 1-65535)')
                elif host not in hosts:
                    add(f"{where}.proxy[{i}]", f'host {quoted(host)} is not under "hosts"')
            tls = spec.get("tls")
            if not isinstance(tls, dict):
                continue
            if tls.get("acme") is True:
                problems += _nginx_acme_problems(data, spec, where, source)
                if "certificate" in tls or "key" in tls:
                    add(f"{where}.tls", "give either acme: true or a certificate and key, not both")
                continue
            missing = [key for key in ("certificate", "key") if key not in tls]
            if missing:
                given = " and ".join(missing)
                add(f"{where}.tls", f'add {given} (files of the config repo), or use "acme": true')
            for key in ("certificate", "key"):
                if isinstance(tls.get(key), str) and (why := _repo_path_problem(tls[key], repo_files)):
                    add(f"{where}.tls.{key}", why)
    return problems


def _nginx_acme_problems(data, site, where, source):
    """A site whose certificate comes from the ACME server: the acme section, and names an
    HTTP-01 challenge can prove."""
    found = []
    if not isinstance(data.get("acme"), dict):
        found.append(
            Problem(
                f"{where}.tls.acme",
                "the certificate comes from an ACME server: add an acme section with its directory",
                source,
            )
        )
    for i, server_name in enumerate(site.get("server_names") or []):
        if isinstance(server_name, str) and server_name.startswith("*."):
            found.append(
                Problem(
                    f"{where}.server_names[{i}]",
                    f"{quoted(server_name)}: an ACME HTTP-01 challenge cannot prove a wildcard name; "
                    "name each host name, or give a certificate and key",
                    source,
                )
            )
    return found


def _rollout_problems(rollout, hosts, source):
    problems = []
    canaries = rollout.get("canaries") or []
    for i, name in enumerate(canaries if isinstance(canaries, list) else []):
        if isinstance(name, str) and name not in hosts:
            problems.append(
                Problem(f"rollout.canaries[{i}]", f"{quoted(name)} is not a host in hosts", source)
            )
    monitors = [h for h, spec in hosts.items() if "monitor" in ((spec or {}).get("roles") or [])]
    if canaries and not monitors:
        problems.append(
            Problem(
                "rollout.canaries",
                "the other hosts learn from the monitor's Prometheus when the canaries have run a new "
                "minicl for the soak time, but no host has the monitor role: give one the monitor "
                "role, or remove the canaries",
                source,
            )
        )
    return problems


def _packages_problems(section, hosts, source, repo_files):
    """One repository host when there is a packages section, its keys and files in the repo."""
    problems = []
    specs = {h: spec for h, spec in hosts.items() if isinstance(spec, dict)}
    servers = [h for h, spec in specs.items() if packages.ROLE in (spec.get("roles") or [])]
    users = [h for h, spec in specs.items() if "packages" in spec]
    if not isinstance(section, dict):
        for host in servers:
            problems.append(
                Problem(
                    f"hosts.{path_key(host)}.roles",
                    f'the {packages.ROLE} role serves the packages of the "packages" section, and '
                    "there is none: add one (upstream, list), or remove the role",
                    source,
                )
            )
        for host in users:
            problems.append(
                Problem(f"hosts.{path_key(host)}.packages", 'there is no "packages" section to use', source)
            )
        return problems
    if not servers:
        problems.append(
            Problem(
                "packages",
                f"no host has the {packages.ROLE} role: give it to the host that serves the "
                "cluster's repository",
                source,
            )  # fmt: skip
        )
    elif len(servers) > 1:
        problems.append(
            Problem(
                "packages",
                f"the {packages.ROLE} role is on {', '.join(sorted(servers))}: give it to one host only",
                source,
            )  # fmt: skip
        )
    if repo_files is None:
        return problems
    for name in (packages.SIGNING_KEY, packages.PUBLIC_KEY):
        if name not in repo_files:
            problems.append(
                Problem(
                    "packages",
                    f"the config repo has no {name}: create the repository's signing key "
                    "with 'minicl packages-key' (README: Upgrading the cluster's packages) and commit "
                    f"{packages.SIGNING_KEY} and {packages.PUBLIC_KEY}",
                    source,
                )  # fmt: skip
            )
    upstream = section.get("upstream")
    entries = {"packages.upstream": upstream} if isinstance(upstream, dict) else {
        f"packages.upstream[{i}]": u for i, u in enumerate(upstream if isinstance(upstream, list) else [])
    }  # fmt: skip
    for where, entry in entries.items():
        key = entry.get("key") if isinstance(entry, dict) else None
        if isinstance(key, str) and key not in repo_files:
            problems.append(
                Problem(f"{where}.key", f"{quoted(key)} is not a file of the config repo", source)
            )
    local = section.get("local")
    in_repo = isinstance(local, str) and not local.startswith("/")
    if in_repo and not any(f.startswith(local.rstrip("/") + "/") for f in repo_files):
        problems.append(
            Problem("packages.local", f"{quoted(local)} is not a folder of the config repo", source)
        )
    return problems


def _timing_problems(data, source):
    """Durations that are each well-formed but do not make sense together."""
    problems = []

    pattern = schema()["$defs"]["duration"]["pattern"]

    def seconds(section, key):
        given = data.get(section) if isinstance(data.get(section), dict) else {}
        value = given.get(key, schema_default(section, key))
        return duration_seconds(value) if isinstance(value, str) and re.search(pattern, value) else None

    interval, splay = seconds("schedule", "interval"), seconds("schedule", "splay")
    if interval is not None and interval < 30:
        problems.append(Problem("schedule.interval", "must be at least 30s (a run takes a while)", source))
    if interval is not None and splay is not None and splay >= interval:
        problems.append(
            Problem(
                "schedule.splay",
                f"must be shorter than schedule.interval ({splay} s is not less than {interval} s)",
                source,
            )
        )
    scrape = seconds("monitoring", "scrape_interval")
    if scrape is not None and scrape > MAX_SCRAPE_INTERVAL:
        problems.append(
            Problem(
                "monitoring.scrape_interval",
                f"must be at most {MAX_SCRAPE_INTERVAL // 60}m "
                "(Prometheus treats samples older than 5m as gone)",
                source,
            )
        )
    retention = seconds("monitoring", "retention")
    if retention is not None and retention < 3600:
        problems.append(Problem("monitoring.retention", "must be at least 1h", source))
    return problems


def _port_problems(ports, path, source):
    problems = []
    for i, spec in enumerate(ports if isinstance(ports, list) else []):
        if isinstance(spec, str) and port_spec_problem(spec):
            problems.append(Problem(f"{path}[{i}]", port_spec_problem(spec), source))
    return problems


def port_spec_problem(spec):
    """Why ``spec`` is not PORT/PROTO or LOW-HIGH/PROTO, or None."""
    match = PORT_SPEC.fullmatch(spec)
    if not match:
        return f'{quoted(spec)} is not a port like "443/tcp", "51820/udp" or "60000-61000/udp"'
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= 65535 or not 1 <= high <= 65535:
        return f"{quoted(spec)}: ports are 1-65535"
    if high < low:
        return f"{quoted(spec)}: the range is backwards"
    return None


def parse_port_spec(spec):
    """("tcp"|"udp", low, high) of a valid port spec."""
    match = PORT_SPEC.fullmatch(spec)
    return match.group(3), int(match.group(1)), int(match.group(2) or match.group(1))


def _user_problems(users, source):
    problems = []

    def add(path, message):
        problems.append(Problem(path, message, source))

    uids = {}
    for name, user in users.items():
        base = f"users.{path_key(name)}"
        if not POSIX_NAME.fullmatch(name):
            add(
                base,
                f"{quoted(name)} is not a valid user name (lower-case letters, digits, _ and -, "
                "starting with a letter or _, at most 32)",
            )
        elif is_system_name(name):
            add(base, f"{quoted(name)} is the name of a system account or group (choose another name)")
        if not isinstance(user, dict):
            continue
        uid = user.get("uid")
        if isinstance(uid, int) and not isinstance(uid, bool):
            if uid < MIN_UID:
                add(f"{base}.uid", f"{uid} is in the system range (must be >= {MIN_UID})")
            elif uid == NOBODY_UID:
                add(f"{base}.uid", f"{uid} is the uid of nobody (choose another)")
            elif uid > 2**32 - 2:
                add(f"{base}.uid", f"{uid} is too large (must be < 4294967295)")
            if uid in uids:
                add(f"{base}.uid", f"{uid} is already the uid of user {uids[uid]}")
            else:
                uids[uid] = name
        passwd = user.get("passwd")
        if isinstance(passwd, str):
            reason = crypt_hash_problem(passwd)
            if reason:
                add(f"{base}.passwd", reason)
        keys = user.get("ssh_key")
        if isinstance(keys, str):
            keys = [keys]
            paths = [f"{base}.ssh_key"]
        elif isinstance(keys, list):
            paths = [f"{base}.ssh_key[{i}]" for i in range(len(keys))]
        else:
            keys, paths = [], []
        seen = set()
        for path, key in zip(paths, keys, strict=True):
            if not isinstance(key, str):
                continue
            reason = ssh_key_problem(key)
            if reason:
                add(path, reason)
            elif key.split()[1] in seen:
                add(path, "repeats a key listed before")
            else:
                seen.add(key.split()[1])
    return problems


def _host_problems(hosts, source, repo_files):
    problems = []

    def add(path, message):
        problems.append(Problem(path, message, source))

    owners = {}
    for name, host in hosts.items():
        base = f"hosts.{path_key(name)}"
        if not DNS_LABEL.fullmatch(name):
            add(base, f"{quoted(name)} is not a valid host name (one DNS label: a-z, 0-9 and -, at most 63)")
        if not isinstance(host, dict):
            continue
        ips = host.get("ip")
        if isinstance(ips, str):
            pairs = [(f"{base}.ip", ips)]
        elif isinstance(ips, list):
            pairs = [(f"{base}.ip[{i}]", ip) for i, ip in enumerate(ips)]
        else:
            pairs = []
        for path, ip in pairs:
            if not isinstance(ip, str):
                continue
            reason = host_ip_problem(ip)
            if reason:
                add(path, reason)
                continue
            addr = ipaddress.ip_address(ip)
            if addr in owners and owners[addr] != name:
                add(path, f"{ip} is already an address of host {owners[addr]}")
            elif addr in owners:
                add(path, f"{ip} is listed twice")
            else:
                owners[addr] = name
        problems += _port_problems(host.get("public_ports"), f"{base}.public_ports", source)
        sources = host.get("trusted_sources")
        for i, cidr in enumerate(sources if isinstance(sources, list) else []):  # else: the schema says
            if isinstance(cidr, str) and trusted_source_problem(cidr):
                add(f"{base}.trusted_sources[{i}]", trusted_source_problem(cidr))
        roles = host.get("roles")
        if isinstance(roles, list):
            if "base" not in roles:
                add(f"{base}.roles", 'must contain "base" (minicl\'s own role, on every host)')
            for i, role in enumerate(roles):
                if not isinstance(role, str):
                    continue
                if not ROLE_NAME.fullmatch(role):
                    add(f"{base}.roles[{i}]", f"{quoted(role)} is not a valid role name (a-z, 0-9, _ and -)")
                elif role not in MINICL_ROLE_STATES and repo_files is not None:
                    if f"roles/{role}/init.sls" not in repo_files:
                        add(
                            f"{base}.roles[{i}]",
                            f'role "{role}" has no roles/{role}/init.sls in the config repo '
                            "(add it, or fix the name)",
                        )
    return problems


def is_dns_name(name):
    if not isinstance(name, str) or len(name) > 253 or name.endswith("."):
        return False
    return all(DNS_LABEL.fullmatch(label) for label in name.split("."))


def is_ip(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_system_name(name):
    return name in SYSTEM_NAMES or name.startswith(SYSTEM_NAME_PREFIXES)


def host_ip_problem(text):
    """Why ``text`` cannot be a host address, or None."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return f"{json.dumps(text)} is not an IPv4 or IPv6 address"
    if addr.version == 6 and addr.scope_id:
        return f"{json.dumps(text)} has a zone (%{addr.scope_id}), which only means something on one host"
    if addr.version == 6 and addr.ipv4_mapped:
        return f"{text} is an IPv4-mapped address: write {addr.ipv4_mapped}"
    if addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
        return f"{text} is the broadcast address, not a host address"
    for test, what in (
        (addr.is_unspecified, "the unspecified address"),
        (addr.is_loopback, "a loopback address"),
        (addr.is_multicast, "a multicast address"),
        (addr.is_link_local, "a link-local address"),
    ):
        if test:
            return f"{text} is {what}, not a host address"
    return None


def trusted_source_problem(text):
    """Why ``text`` is not a network to trust (CIDR), or None."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"{quoted(text)} is not an IPv4 or IPv6 network (CIDR, e.g. 203.0.113.0/24)"
    if net.version == 6 and net.network_address.ipv4_mapped:
        return f"{quoted(text)} is IPv4-mapped and matches nothing: write the IPv4 network"
    if ipaddress.ip_interface(text).ip != net.network_address:
        return f"{quoted(text)} has host bits set (write {net})"
    if net.prefixlen == 0:
        return f"{quoted(text)} is the whole Internet: use public_ports for services open to everyone"
    shortest = 8 if net.version == 4 else 16
    if net.prefixlen < shortest:
        return (
            f"{quoted(text)} is a large part of the Internet (shorter than /{shortest}): "
            "use public_ports for services open to everyone"
        )
    return None


def _logging_problems(data, hosts, source, repo_files):
    """One log host when there is a logging section, the CA's files, and apps' tracing only
    where the app type can emit traces."""
    problems = []

    def add(path, message):
        problems.append(Problem(path, message, source))

    section = data.get("logging")
    specs = {h: spec for h, spec in hosts.items() if isinstance(spec, dict)}
    servers = [h for h, spec in specs.items() if centrallog.ROLE in (spec.get("roles") or [])]
    apps = data.get("apps") if isinstance(data.get("apps"), dict) else {}
    tracing = {n: a for n, a in apps.items() if isinstance(a, dict) and a.get("logging") == "tracing"}
    if not isinstance(section, dict):
        for host in servers:
            add(
                f"hosts.{path_key(host)}.roles",
                f'the {centrallog.ROLE} role receives the logs of the "logging" section, and there is '
                'none: add one ("logging": {}), or remove the role',
            )
        for name in tracing:
            add(f"apps.{path_key(name)}.logging", 'tracing needs "logging": {"tracing": {"endpoint": ...}}')
        return problems
    if not servers:
        add(
            "logging",
            f"no host has the {centrallog.ROLE} role: give it to the host that stores the cluster's "
            'logs, or remove "logging"',
        )
    elif len(servers) > 1:
        on = ", ".join(sorted(servers))
        add("logging", f"the {centrallog.ROLE} role is on {on}: give it to one host only")
    retention = section.get("retention")
    pattern = schema()["$defs"]["duration"]["pattern"]
    if isinstance(retention, str) and re.search(pattern, retention) and duration_seconds(retention) < 86400:
        add("logging.retention", "must be at least 1d (the log host keeps whole days)")
    if section.get("ca") == "ca_url" and not data.get("ca_url"):
        add("logging.ca", 'is ca_url, but there is no "ca_url": name the CA, or use "minicl"')
    if section.get("ca", centrallog.DEFAULT_CA) == centrallog.DEFAULT_CA and repo_files is not None:
        for name in (centrallog.CA_KEY, centrallog.CA_CERT):
            if name not in repo_files:
                add(
                    "logging",
                    f"the config repo has no {name}: create the logging CA with 'minicl logging-ca' "
                    f"(README: Central logging) and commit {centrallog.CA_KEY} and {centrallog.CA_CERT}",
                )
    for name, app in tracing.items():
        why = centrallog.TRACING.get(app.get("type"))
        if why:
            add(f"apps.{path_key(name)}.logging", f"{why}; use syslog")
        elif not isinstance(section.get("tracing"), dict):
            add(f"apps.{path_key(name)}.logging", 'tracing needs "logging": {"tracing": {"endpoint": ...}}')
    return problems
