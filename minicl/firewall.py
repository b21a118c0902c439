"""The IP-ACL firewall: one nftables table, ``inet minicl``, computed from cluster.json.

Every cluster host trusts every other one (and the host's extra trusted sources); the rest of
the world reaches only SSH and the host's public ports. minicl never touches other tables.

    spec = host_spec(cluster, "alpha", local_rules="")
    text = render_ruleset(spec)          # pure; golden-tested
    replace_table(text)                  # nft -c, then one atomic nft -f

The number of rules is constant: addresses and ports live in named interval sets.
"""

import ipaddress
import json
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from minicl import appliances, centrallog, packages, paths
from minicl.config import parse_port_spec
from minicl.errors import MiniclError
from minicl.files import read_file, write_file

NFT = "/usr/sbin/nft"
TABLE = "minicl"
PERSIST_PATH = paths.FIREWALL_SAVED
NFTABLES_CONF = paths.NFTABLES_CONF
LOCAL_RULES_PATH = paths.FIREWALL_LOCAL_RULES
STATE_DIR = paths.STATE_DIR
DEADMAN_PIDFILE = paths.DEADMAN_PIDFILE
BREAK_GLASS_PATH = paths.FIREWALL_BREAK_GLASS  # present: minicl leaves the firewall alone

ICMPV6_NEEDED = (
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "mld-listener-query",
    "mld-listener-report",
    "mld2-listener-report",
)
ICMP_NEEDED = ("destination-unreachable", "time-exceeded", "parameter-problem")


class FirewallError(MiniclError):
    pass


@dataclass
class Spec:
    """What the table of one host must express."""

    trusted_v4: list = field(default_factory=list)  # collapsed networks, as strings
    trusted_v6: list = field(default_factory=list)
    public_tcp: list = field(default_factory=list)  # "80" or "8000-8100"
    public_udp: list = field(default_factory=list)
    ssh_ports: list = field(default_factory=lambda: [22])  # cluster.json's, plus where sshd listens now
    local_rules: str = ""
    cluster_only_tcp: list = field(default_factory=list)  # ports of this host's apps and their exporters
    cluster_v4: list = field(default_factory=list)  # the cluster's hosts only (no trusted_sources)
    cluster_v6: list = field(default_factory=list)
    peer_protocols: list = field(default_factory=list)  # (protocol, [the app's other hosts' addresses])


def _collapse_networks(texts):
    nets = [ipaddress.ip_network(t, strict=False) for t in texts]
    return [
        n.with_prefixlen if n.num_addresses > 1 else str(n.network_address)
        for n in ipaddress.collapse_addresses(nets)
    ]


def _collapse_ports(ranges):
    merged = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], high)
        else:
            merged.append([low, high])
    return [str(low) if low == high else f"{low}-{high}" for low, high in merged]


def host_spec(cluster, host, local_rules="", listening_ssh_ports=()):
    """The firewall Spec of ``host`` from a validated Cluster.

    ``listening_ssh_ports``: where sshd listens right now. They stay open too, so that moving
    sshd to firewall.ssh_port never closes the port it still listens on.
    """
    addresses = [ip for name in cluster.hosts for ip in cluster.host_ips(name)]
    trusted = addresses + cluster.trusted_sources(host)
    v4 = [t for t in trusted if ipaddress.ip_network(t, strict=False).version == 4]
    v6 = [t for t in trusted if ipaddress.ip_network(t, strict=False).version == 6]
    ports = {"tcp": [], "udp": []}
    apps = cluster.apps_of(host).values()
    for spec in cluster.public_ports(host):
        proto, low, high = parse_port_spec(spec)
        ports[proto].append((low, high))
    ssh_ports = sorted({cluster.firewall_option("ssh_port"), *listening_ssh_ports})
    # An app's ports (its service's and its exporter's) and the cluster's apt repository answer
    # the cluster's hosts only, not a host's trusted_sources.
    for app in apps:
        ports["tcp"] += [(port, port) for port in appliances.public_ports(app)]
    app_ports = sorted(
        {
            port
            for app in apps
            for port in appliances.cluster_only_ports(app["type"], appliances.is_public(app))
        }
        | set(packages.cluster_only_ports(cluster, host))
        | set(centrallog.cluster_only_ports(cluster, host))
    )
    return Spec(
        _collapse_networks(v4),
        _collapse_networks(v6),
        _collapse_ports(ports["tcp"]),
        _collapse_ports(ports["udp"]),
        ssh_ports,
        local_rules,
        _collapse_ports([(port, port) for port in app_ports]),
        _collapse_networks([a for a in addresses if ":" not in a]) if app_ports else [],
        _collapse_networks([a for a in addresses if ":" in a]) if app_ports else [],
        [
            (proto, sorted(ip for ips in app["peers"].values() for ip in ips))
            for app in apps
            for proto in appliances.peer_protocols(app["type"])
        ],
    )


def _set(name, kind, elements):
    body = f"\t\ttype {kind}\n\t\tflags interval\n"
    if elements:
        body += f"\t\telements = {{ {', '.join(elements)} }}\n"
    return f"\tset {name} {{\n{body}\t}}\n"


def render_ruleset(spec):
    """The nft script that replaces table inet minicl (and nothing else) in one transaction."""
    local = ""
    if spec.local_rules.strip():
        lines = "".join(f"\t\t{line}\n" for line in spec.local_rules.strip().splitlines())
        local = f"\t\t# from {LOCAL_RULES_PATH}\n{lines}"
    return (
        "# Managed by minicl from cluster.json; changes here are overwritten.\n"
        f"table inet {TABLE} {{}}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        + _set("trusted_v4", "ipv4_addr", spec.trusted_v4)
        + _set("trusted_v6", "ipv6_addr", spec.trusted_v6)
        + _set("public_tcp", "inet_service", spec.public_tcp)
        + _set("public_udp", "inet_service", spec.public_udp)
        + _cluster_only_sets(spec)
        + "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy drop;\n"
        '\t\tiif "lo" accept\n'
        "\t\tct state established,related accept\n"
        "\t\tct state invalid drop\n"
        f"\t\ticmpv6 type {{ {', '.join(ICMPV6_NEEDED)} }} accept\n"
        "\t\ticmpv6 type echo-request limit rate 20/second accept\n"
        f"\t\ticmp type {{ {', '.join(ICMP_NEEDED)} }} accept\n"
        "\t\ticmp type echo-request limit rate 20/second accept\n"
        '\t\tip6 saddr fe80::/10 udp dport 546 accept comment "DHCPv6 replies"\n'
        f'\t\ttcp dport {_elements(spec.ssh_ports)} accept comment "ssh, always"\n'
        + _cluster_only_rules(spec)
        + _peer_protocol_rules(spec)
        + "\t\tip saddr @trusted_v4 accept\n"
        "\t\tip6 saddr @trusted_v6 accept\n"
        "\t\ttcp dport @public_tcp accept\n"
        "\t\tudp dport @public_udp accept\n"
        + local
        + '\t\tlimit rate 10/minute burst 20 packets log prefix "minicl drop: " level info\n'
        "\t}\n"
        "}\n"
    )


def _cluster_only_sets(spec):
    if not spec.cluster_only_tcp:
        return ""
    return (
        _set("cluster_v4", "ipv4_addr", spec.cluster_v4)
        + _set("cluster_v6", "ipv6_addr", spec.cluster_v6)
        + _set("cluster_only_tcp", "inet_service", spec.cluster_only_tcp)
    )


def _cluster_only_rules(spec):
    if not spec.cluster_only_tcp:
        return ""
    return (
        '\t\ttcp dport @cluster_only_tcp ip saddr != @cluster_v4 drop comment "apps: cluster hosts only"\n'
        '\t\ttcp dport @cluster_only_tcp ip6 saddr != @cluster_v6 drop comment "apps: cluster hosts only"\n'
    )


def _peer_protocol_rules(spec):
    """An app's own protocol (VRRP) from the app's other hosts, from nobody else."""
    rules = ""
    for proto, peers in spec.peer_protocols:
        for family, match in (
            ("ip", [p for p in peers if ":" not in p]),
            ("ip6", [p for p in peers if ":" in p]),
        ):
            if match:
                rules += (
                    f'\t\tmeta l4proto {proto} {family} saddr {_elements(match)} accept comment "app peers"\n'
                )
        rules += f'\t\tmeta l4proto {proto} drop comment "app peers only"\n'
    return rules


def _elements(ports):
    return str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, ports)) + " }"


def local_rules_problem(text):
    """Why ``text`` cannot go into the input chain, or None. Local rules must stay inside it."""
    if text.count("{") != text.count("}"):
        return "its braces { } do not balance"
    for word in ("table", "chain", "include", "flush", "delete", "policy"):
        if any(word in line.split() for line in text.splitlines() if not line.strip().startswith("#")):
            return f'"{word}" is not allowed: only rules for the input chain belong there'
    return None


def _run(argv, stdin=None):
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


def _nft_error(result):
    return (result.stderr or result.stdout).strip()


def _normalise(json_text):
    """The table's objects without handles and nft's metainfo: what makes two tables equal."""

    def strip(value):
        if isinstance(value, dict):
            # Handles and the running values of counters and quotas are not part of the rules.
            return {k: strip(v) for k, v in value.items() if k not in ("handle", "packets", "bytes", "used")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(item) for item in json.loads(json_text)["nftables"] if "metainfo" not in item]


def _with_script(text, func):
    with tempfile.NamedTemporaryFile("w", prefix="minicl-fw-", suffix=".nft", delete=False) as f:
        f.write(text)
    try:
        return func(f.name)
    finally:
        os.unlink(f.name)


def canonical(text):
    """(normalised JSON, nft's own listing) of ``text``, loaded in a throwaway network namespace."""

    def load(path):
        script = f'{NFT} -f "$1" && {NFT} -j list table inet {TABLE} && {NFT} list table inet {TABLE}'
        result = _run(["unshare", "--net", "sh", "-c", script, "sh", path])
        if result.returncode != 0:
            raise FirewallError(f"nft rejects the ruleset: {_nft_error(result)}")
        json_line, listing = result.stdout.split("\n", 1)
        return _normalise(json_line), listing

    return _with_script(text, load)


def live():
    """(normalised JSON, listing) of the live table inet minicl, or (None, "") if there is none."""
    result = _run([NFT, "-j", "list", "table", "inet", TABLE])
    if result.returncode != 0:
        return None, ""
    return _normalise(result.stdout), _run([NFT, "list", "table", "inet", TABLE]).stdout


def check_script(text):
    """nft -c on this host; raises FirewallError with nft's message."""

    def check(path):
        result = _run([NFT, "-c", "-f", path])
        if result.returncode != 0:
            raise FirewallError(f"nft -c rejects the ruleset, nothing changed: {_nft_error(result)}")

    _with_script(text, check)


def replace_table(text):
    """Check, then apply in one transaction; on failure the previous ruleset stays in force."""
    check_script(text)

    def apply(path):
        result = _run([NFT, "-f", path])
        if result.returncode != 0:
            raise FirewallError(f"nft -f failed, the previous ruleset stays: {_nft_error(result)}")

    _with_script(text, apply)


def ssh_ports_open(listing):
    """The ports the live table's "ssh, always" rule opens, from ``nft list table`` output."""
    for line in listing.splitlines():
        if 'comment "ssh, always"' in line and "dport" in line:
            spec = line.split("dport", 1)[1].split("accept", 1)[0]
            return {
                int(p)
                for p in spec.replace("{", " ").replace("}", " ").replace(",", " ").split()
                if p.isdigit()
            }
    return set()


def restore_script(previous_listing):
    """The nft script that brings back ``previous_listing`` (or removes the table if empty)."""
    if previous_listing.strip():
        return f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{previous_listing}"
    return f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"


def reach_a_peer(peers, ports, seconds):
    """True once a TCP connection to some peer on one of ``ports`` succeeds within ``seconds``.

    ``ports``: the SSH ports of this ruleset; during a move of firewall.ssh_port peers may still
    listen on the old one.
    """
    deadline = time.monotonic() + seconds
    while True:
        for peer in peers:
            for port in ports:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    with socket.create_connection((peer, port), timeout=min(2.0, left)):
                        return True
                except OSError:
                    continue
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def peers_of(cluster, host):
    """One address per other cluster host (IPv4 first): whom to reach to confirm a ruleset."""
    peers = []
    for name in sorted(cluster.hosts):
        if name != host:
            ips = sorted(cluster.host_ips(name), key=lambda ip: ipaddress.ip_address(ip).version)
            peers.append(ips[0])
    return peers


def start_deadman(backup_path, seconds):
    """A detached watchdog that restores ``backup_path`` after ``seconds`` unless confirmed.

    Confirm by killing it (``proc.kill()``): that also covers this process dying mid-way.
    Its pid is in DEADMAN_PIDFILE, so that a later run can stop a stray one first.
    """
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "minicl.deadman", backup_path, str(seconds)],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    write_file(DEADMAN_PIDFILE, f"{proc.pid}\n")
    return proc


def stop_stray_deadman():
    """Stop a watchdog left by a run that died; True if there was one."""
    import signal

    try:
        with open(DEADMAN_PIDFILE, encoding="ascii") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"minicl.deadman" not in f.read():
                return False
        os.kill(pid, signal.SIGKILL)
        return True
    except (OSError, ValueError):
        return False
    finally:
        try:
            os.unlink(DEADMAN_PIDFILE)
        except OSError:
            pass


@dataclass
class Plan:
    """The ruleset a host must have, against what it has (``plan``)."""

    spec: Spec
    text: str  # the ruleset to load and to save for the next boot
    wanted: object  # normalised, to compare
    wanted_listing: str
    current: object
    current_listing: str
    persisted: bool  # PERSIST_PATH already holds ``text``

    @property
    def table_differs(self):
        return self.wanted != self.current

    @property
    def summary(self):
        spec = self.spec
        return (
            f"{len(spec.trusted_v4) + len(spec.trusted_v6)} trusted networks, ssh on {spec.ssh_ports}, "
            f"public tcp {spec.public_tcp or 'none'}, udp {spec.public_udp or 'none'}"
        )


def plan(cluster, host, local_rules, listening_ssh_ports):
    """What table inet minicl must become on ``host``, compared with the live one and the saved
    one. Raises FirewallError if nft rejects the rendered ruleset."""
    spec = host_spec(cluster, host, local_rules, listening_ssh_ports)
    text = render_ruleset(spec)
    wanted, wanted_listing = canonical(text)
    current, current_listing = live()
    return Plan(spec, text, wanted, wanted_listing, current, current_listing, read_file(PERSIST_PATH) == text)
