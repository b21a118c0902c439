"""The cluster model: a validated cluster.json and what is derived from it.

    cluster.host_for_minion("alpha.example.org")      # -> "alpha"
    cluster.addresses()                               # -> {"v4": [...], "v6": [...]}

A ``Cluster`` trusts its data: build one from ``minicl.config.load_cluster`` (which validates)
or from the pillar that carries a validated cluster.json (``from_pillar``). Defaults for
optional fields are applied here.
"""

import ipaddress

from minicl.schema import duration_seconds, schema_default

DEFAULT_SMTP_PORT = 587
DEFAULT_SSH_PORT = 22
DEFAULT_CONFIRM_SECONDS = 30

# Roles implemented by minicl itself, mapped to the SLS files that implement them. The
# state tree serves them from minicl's own states/ folder; every other role is the config
# repo's roles/<name>/init.sls.
MINICL_ROLE_STATES = {
    "base": ["minicl.base"],
    "monitor": ["minicl.monitor"],
    "repository": ["minicl.repository"],
    "log": ["minicl.log"],
}


def as_list(value):
    return [value] if isinstance(value, str) else list(value)


def addresses_by_host(data):
    """{host: [addresses]} of the hosts of cluster.json's ``data`` (as the pillar has it)."""
    return {host: as_list(spec["ip"]) for host, spec in data.get("hosts", {}).items()}


def host_port(ip, port):
    """``ip:port`` as URLs and nginx, haproxy and Prometheus write it: an IPv6 address in brackets."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


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
        """The SLS names that implement the roles of ``host``, in role order, then those of
        the app types it runs (``minicl.apps.postgresql``, ...)."""
        states = []
        for role in self.host_roles(host):
            states += MINICL_ROLE_STATES.get(role, [f"roles.{role}"])
        for kind in sorted({app["type"] for app in self.apps_of(host).values()}):
            states.append(f"minicl.apps.{kind}")
        return states

    @property
    def apps(self):
        return self.data.get("apps", {})

    def apps_of(self, host):
        """{name: app} of the apps ``host`` runs, each with what this host needs to know:
        ``host`` (this one), ``primary`` (the first of its hosts: the primary when the app is
        created; who is primary later, the servers decide: see appliances.pgfailover and
        appliances.redis), ``peers`` ({host: [addresses]} of the app's other hosts) and
        ``addresses`` (this host's own)."""
        mine = {}
        for name, app in self.apps.items():
            if host not in app["hosts"]:
                continue
            mine[name] = dict(
                app,
                name=name,
                host=host,
                primary=app["hosts"][0],
                peers={peer: self.host_ips(peer) for peer in app["hosts"] if peer != host},
                addresses=self.host_ips(host),
            )
        return mine

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
