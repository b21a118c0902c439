"""The cluster.json model: load, validate, derive.

Everything that reads cluster.json goes through here: the external pillar, ``minicl validate``,
the pre-commit hook and ``minicl-bootstrap``.

    cluster = load_cluster(text, repo_files=files)   # raises ConfigError listing every problem
    cluster.host_for_minion("alpha.example.org")      # -> "alpha"
    cluster.addresses()                               # -> {"v4": [...], "v6": [...]}
"""

import base64
import binascii
import ipaddress
import json
import re
import struct
from functools import lru_cache
from importlib import resources
from urllib.parse import urlparse

import jsonschema

from minicl.errors import MiniclError

SOURCE = "cluster.json"
MIN_UID = 1000
NOBODY_UID = 65534
DEFAULT_SMTP_PORT = 587

# Roles implemented by minicl itself, mapped to the SLS files that implement them. The
# state tree serves them from minicl's own states/ folder; every other role is the config
# repo's roles/<name>/init.sls.
MINICL_ROLE_STATES = {
    "base": ["minicl.base"],
    "monitor": ["minicl.monitor"],
}

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
DEFAULT_SSH_PORT = 22
DEFAULT_CONFIRM_SECONDS = 30
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SCRAPE_INTERVAL = 120  # well inside Prometheus' 5-minute staleness window

_B64 = r"[./0-9A-Za-z]"
CRYPT_HASHES = {
    # scheme id: (readable name, pattern of what follows "$id$")
    "y": ("yescrypt", re.compile(rf"^{_B64}+\${_B64}+\${_B64}{{43}}$")),
    "gy": ("gost-yescrypt", re.compile(rf"^{_B64}+\${_B64}+\${_B64}{{43}}$")),
    "7": ("scrypt", re.compile(rf"^{_B64}{{11,}}\${_B64}{{43}}$")),
    "2b": ("bcrypt", re.compile(rf"^\d\d\${_B64}{{53}}$")),
    "2a": ("bcrypt", re.compile(rf"^\d\d\${_B64}{{53}}$")),
    "2y": ("bcrypt", re.compile(rf"^\d\d\${_B64}{{53}}$")),
    "6": ("sha512crypt", re.compile(rf"^(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{86}}$")),
    "5": ("sha256crypt", re.compile(rf"^(rounds=\d+\$)?{_B64}{{1,16}}\${_B64}{{43}}$")),
}
WEAK_CRYPT = {"1": "MD5-crypt", "3": "NT", "md5": "MD5-crypt", "sha1": "SHA1-crypt"}


# Values at these paths are secrets: problems about them never quote the value.
SECRET_PATHS = (re.compile(r"^smtp\.password$"), re.compile(r"^users\.[^.]+\.passwd$"))


SHOWN_PROBLEMS = 20  # problems a host records and logs per bad commit
PROBLEM_CHARS = 300  # characters of one problem line in those records


class Problem:
    """One thing wrong with cluster.json, at a dotted path (``users.bob.uid``)."""

    def __init__(self, path, message, source=SOURCE):
        self.path = path
        self.message = message
        self.source = source

    def __str__(self):
        if self.path:
            return f"{self.source}: {self.path}: {self.message}"
        return f"{self.source}: {self.message}"

    def __repr__(self):
        return f"Problem({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Problem) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


class ConfigError(MiniclError):
    """cluster.json is not usable; ``problems`` lists every reason."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def summary(self, limit=SHOWN_PROBLEMS):
        """The first ``limit`` problems and a count of the rest: what a host's status, pillar
        and log carry (``minicl validate`` prints them all)."""
        lines = [bounded(str(p), PROBLEM_CHARS) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(
                f"... and {len(self.problems) - limit} more problems "
                "('minicl validate cluster.json' in a checkout lists them all)"
            )
        return "\n".join(lines)


def bounded(text, limit):
    """``text``, cut to ``limit`` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


@lru_cache(maxsize=1)
def schema():
    return json.loads(resources.files("minicl").joinpath("cluster.schema.json").read_text())


def _is_strict_integer(_checker, value):
    # JSON Schema counts 500.0 as an integer; a uid or port written that way is a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


@lru_cache(maxsize=1)
def _validator():
    base = jsonschema.validators.validator_for(schema())
    cls = jsonschema.validators.extend(
        base, type_checker=base.TYPE_CHECKER.redefine("integer", _is_strict_integer)
    )
    return cls(schema())


def parse_json(text, source=SOURCE):
    """Parse cluster.json text; syntax errors and duplicate keys become a ConfigError."""
    duplicates = []

    def no_duplicates(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [Problem("", f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}", source)]
        ) from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        raise ConfigError([Problem("", f"invalid JSON: {exc}", source)]) from None
    except RecursionError:
        raise ConfigError([Problem("", "invalid JSON: nested too deeply", source)]) from None
    problems = [
        Problem("", f'key "{key}" appears more than once in one object', source)
        for key in dict.fromkeys(duplicates)
    ]
    if problems:
        raise ConfigError(problems)
    return data


def load_cluster(text, source=SOURCE, repo_files=None):
    """Parse and validate cluster.json text and return a Cluster, or raise ConfigError.

    ``repo_files``: the paths in the config repo (``roles/web/init.sls``, ...) when known,
    so that roles can be checked against it.
    """
    data = parse_json(text, source)
    problems = validate(data, source, repo_files)
    if problems:
        raise ConfigError(problems)
    return Cluster(data)


def validate(data, source=SOURCE, repo_files=None):
    """Every problem of already-parsed cluster.json data, schema first, then semantics."""
    problems = []
    for error in _schema_errors(data):
        found = _schema_problem(error, source)
        problems += found if isinstance(found, list) else [found]
    if isinstance(data, dict):
        problems += _semantic_problems(data, source, repo_files)
    # One problem per line, stable order, no repeats.
    return sorted(set(problems), key=lambda p: (_natural(p.path), p.message))


def _natural(path):
    """Sort key that puts ip[2] before ip[10]."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _schema_errors(data):
    return _validator().iter_errors(data)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _quote(text):
    return json.dumps(text, ensure_ascii=False)


def _key(name):
    """A mapping key as it appears in a problem's path: quoted unless plain (one line, no dots)."""
    return name if _PLAIN_KEY.fullmatch(name) else _quote(name)


def _dotted(parts):
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{_key(part)}" if path else _key(part)
    return path


def _is_secret(path):
    return any(p.match(path) for p in SECRET_PATHS)


_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "object": "an object",
    "array": "a list",
    "boolean": "true or false",
    "number": "a number",
    "null": "null",
}


def _json_type(value):
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _schema_problem(error, source):
    path = _dotted(error.absolute_path)
    value = error.instance
    shown = "(value hidden)" if _is_secret(path) else json.dumps(value)
    kind = error.validator
    if kind == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        prefix = f"{path}." if path else ""
        return [
            Problem(f"{prefix}{_key(key)}", f"unknown field (allowed here: {allowed})", source)
            for key in extra
        ]
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return Problem(path, f'missing required field "{missing}"', source)
    if kind == "type":
        return Problem(
            path,
            f"must be {_TYPE_NAMES[error.validator_value]}, not {_TYPE_NAMES[_json_type(value)]}",
            source,
        )
    if kind == "oneOf":
        if isinstance(value, list) and not value:
            return Problem(path, "must list at least one entry", source)
        return Problem(path, f"must be a string or a list of strings, not {shown}", source)
    if kind == "minLength":
        return Problem(path, "must not be empty", source)
    if kind == "minProperties":
        return Problem(path, "must have at least one entry", source)
    if kind == "minItems":
        return Problem(path, "must list at least one entry", source)
    if kind in ("minimum", "maximum"):
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        return Problem(path, f"{shown} is out of range ({low}-{high})", source)
    if kind == "uniqueItems":
        return Problem(path, "lists an entry more than once", source)
    if kind == "pattern" and error.schema.get("title") == "duration":
        return Problem(path, f"{shown} is not a duration ({error.schema['description'].rstrip('.')})", source)
    message = error.message if not _is_secret(path) else f"is invalid ({kind})"
    return Problem(path, message, source)


def _semantic_problems(data, source, repo_files):
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
                add(f"roles.{_key(role)}", f"{_quote(role)} is not a valid role name (a-z, 0-9, _ and -)")
            if isinstance(settings, dict):
                problems += _port_problems(
                    settings.get("public_ports"), f"roles.{_key(role)}.public_ports", source
                )
    return problems


def schema_default(section, key):
    return schema()["properties"][section]["properties"][key]["default"]


def duration_seconds(text):
    """Seconds in a schema-checked duration such as "30s" or "15m"."""
    return int(text[:-1]) * DURATION_UNITS[text[-1]]


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
        return f'{_quote(spec)} is not a port like "443/tcp", "51820/udp" or "60000-61000/udp"'
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= 65535 or not 1 <= high <= 65535:
        return f"{_quote(spec)}: ports are 1-65535"
    if high < low:
        return f"{_quote(spec)}: the range is backwards"
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
        base = f"users.{_key(name)}"
        if not POSIX_NAME.fullmatch(name):
            add(
                base,
                f"{_quote(name)} is not a valid user name (lower-case letters, digits, _ and -, "
                "starting with a letter or _, at most 32)",
            )
        elif is_system_name(name):
            add(base, f"{_quote(name)} is the name of a system account or group (choose another name)")
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
        base = f"hosts.{_key(name)}"
        if not DNS_LABEL.fullmatch(name):
            add(base, f"{_quote(name)} is not a valid host name (one DNS label: a-z, 0-9 and -, at most 63)")
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
        for i, cidr in enumerate(host.get("trusted_sources") or []):
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
                    add(f"{base}.roles[{i}]", f"{_quote(role)} is not a valid role name (a-z, 0-9, _ and -)")
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
        return f"{_quote(text)} is not an IPv4 or IPv6 network (CIDR, e.g. 203.0.113.0/24)"
    if net.version == 6 and net.network_address.ipv4_mapped:
        return f"{_quote(text)} is IPv4-mapped and matches nothing: write the IPv4 network"
    if ipaddress.ip_interface(text).ip != net.network_address:
        return f"{_quote(text)} has host bits set (write {net})"
    if net.prefixlen == 0:
        return f"{_quote(text)} is the whole Internet: use public_ports for services open to everyone"
    shortest = 8 if net.version == 4 else 16
    if net.prefixlen < shortest:
        return (
            f"{_quote(text)} is a large part of the Internet (shorter than /{shortest}): "
            "use public_ports for services open to everyone"
        )
    return None


def crypt_hash_problem(text):
    """Why ``text`` is not a shadow password field minicl accepts, or None. Never quotes it.

    Accepted: a crypt hash, a lock marker (``!``, ``*``, ``!!``, ``!*``), or a locked hash (``!$6$...``).
    """
    value = text.lstrip("!")
    if text and value in ("", "*"):
        return None
    if not value.startswith("$"):
        return "is not a crypt hash ($y$, $6$, $5$, $2b$, ...) or a lock marker (! or *) (value hidden)"
    parts = value.split("$", 2)
    scheme = parts[1]
    if scheme in WEAK_CRYPT:
        return f"is a weak {WEAK_CRYPT[scheme]} hash: use yescrypt ($y$) or sha512crypt ($6$) (value hidden)"
    if scheme not in CRYPT_HASHES:
        return "has an unknown crypt scheme (use $y$, $6$, $5$, $2b$, ...) (value hidden)"
    name, pattern = CRYPT_HASHES[scheme]
    if len(parts) < 3 or not pattern.fullmatch(parts[2]):
        return f"is not a well-formed {name} hash (value hidden)"
    return None


# Fields of the public key blob after the type name: OpenSSH's wire format (RFC 4253, 5656,
# 8709 and PROTOCOL.u2f), all length-prefixed strings.
SSH_KEY_FIELDS = {
    "ssh-ed25519": 1,
    "ssh-rsa": 2,
    "ecdsa-sha2-nistp256": 2,
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,
}


SSH_KEY_TYPES = frozenset(SSH_KEY_FIELDS)


def _wire_strings(raw):
    """Split an SSH wire-format blob into its length-prefixed strings; ValueError if malformed."""
    fields, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ValueError("truncated length")
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        pos += 4
        if pos + length > len(raw):
            raise ValueError("truncated field")
        fields.append(raw[pos : pos + length])
        pos += length
    return fields


def ssh_key_problem(text):
    """Why ``text`` is not one OpenSSH public key (type, base64 blob, optional comment), or None."""
    if "PRIVATE KEY" in text:
        return "is a PRIVATE key: remove it from the repo now and use the .pub file (value hidden)"
    if "\n" in text or "\r" in text:
        return "must be one key on one line (use a list for several keys)"
    fields = text.split()
    if len(fields) < 2:
        return "is not an OpenSSH public key (expected: TYPE BASE64 [COMMENT])"
    key_type, blob = fields[0], fields[1]
    if key_type not in SSH_KEY_TYPES:
        if key_type == "ssh-dss":
            return "is a DSA key, which OpenSSH no longer accepts: use ssh-ed25519"
        return f'has unknown key type "{key_type[:40]}" (expected one of {", ".join(sorted(SSH_KEY_TYPES))})'
    try:
        raw = base64.b64decode(blob, validate=True)
    except binascii.Error:
        return f"{key_type} key: the key data is not valid base64 of an OpenSSH key"
    try:
        parts = _wire_strings(raw)
        embedded = parts[0].decode("ascii") if parts else ""
    except (ValueError, UnicodeDecodeError):
        if raw[4 : 4 + len(key_type)] == key_type.encode():
            return f"{key_type} key: the key data is truncated or damaged"
        return f"{key_type} key: the key data is not valid base64 of an OpenSSH key"
    if embedded != key_type:
        return f'{key_type} key: the key data is of type "{embedded[:40]}"'
    if len(parts) != 1 + SSH_KEY_FIELDS[key_type] or not all(parts[1:]):
        return f"{key_type} key: the key data is truncated or damaged"
    if key_type.endswith("ed25519") and len(parts[1]) != 32:
        return f"{key_type} key: the key data is truncated or damaged"
    return None


def as_list(value):
    return [value] if isinstance(value, str) else list(value)


class Cluster:
    """A validated cluster.json and what is derived from it."""

    def __init__(self, data):
        self.data = data

    @property
    def domain(self):
        return self.data["domain"]

    @property
    def hosts(self):
        return self.data["hosts"]

    @property
    def users(self):
        return self.data["users"]

    def fqdn(self, host):
        return f"{host}.{self.domain}"

    def host_for_minion(self, minion_id):
        """The short host name a minion id stands for (short name or FQDN), or None."""
        wanted = minion_id.lower().rstrip(".")
        suffix = "." + self.domain.lower()
        if wanted.endswith(suffix):
            wanted = wanted[: -len(suffix)]
        return wanted if wanted in self.hosts else None

    def host_ips(self, host):
        return as_list(self.hosts[host]["ip"])

    def host_roles(self, host):
        return list(self.hosts[host]["roles"])

    def role_states(self, host):
        """The SLS names that implement the roles of ``host``, in role order."""
        states = []
        for role in self.host_roles(host):
            states += MINICL_ROLE_STATES.get(role, [f"roles.{role}"])
        return states

    def user_keys(self, user):
        return as_list(self.users[user]["ssh_key"])

    def smtp_port(self):
        return self.data["smtp"].get("port", DEFAULT_SMTP_PORT)

    def firewall_option(self, key):
        defaults = {"ssh_port": DEFAULT_SSH_PORT, "confirm_seconds": DEFAULT_CONFIRM_SECONDS}
        return self.data.get("firewall", {}).get(key, defaults[key])

    def seconds(self, section, key):
        """A schedule or monitoring duration in seconds, default applied."""
        return duration_seconds(self.duration(section, key))

    def duration(self, section, key):
        return self.data.get(section, {}).get(key, schema_default(section, key))

    def monitor_hosts(self):
        return [host for host in self.hosts if "monitor" in self.host_roles(host)]

    def public_ports(self, host):
        """Port specs open to the world on ``host``: its own plus those of its roles."""
        specs = list(self.hosts[host].get("public_ports", []))
        for role in self.host_roles(host):
            specs += self.data.get("roles", {}).get(role, {}).get("public_ports", [])
        return specs

    def trusted_sources(self, host):
        return list(self.hosts[host].get("trusted_sources", []))

    def addresses(self):
        """Every address of every host, split by family, sorted."""
        addrs = {ipaddress.ip_address(ip) for host in self.hosts for ip in self.host_ips(host)}
        return {
            "v4": [str(a) for a in sorted(a for a in addrs if a.version == 4)],
            "v6": [str(a) for a in sorted(a for a in addrs if a.version == 6)],
        }

    def host_view(self, host):
        return {
            "name": host,
            "fqdn": self.fqdn(host),
            "ip": self.host_ips(host),
            "roles": self.host_roles(host),
        }


def from_pillar(pillar):
    """(Cluster, this host's name) from the minicl pillar, for the Salt modules."""
    return Cluster(pillar["minicl"]["cluster"]), pillar["minicl"]["host"]["name"]


def host_snippet(name, ips, roles=("base",)):
    """The JSON text to add under "hosts" in cluster.json for one host."""
    return json.dumps({name: {"ip": list(ips), "roles": list(roles)}}, indent=2)[2:-2]
