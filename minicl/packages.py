"""The ``packages`` section of cluster.json: the cluster's own apt repository and how each host
uses it. One place for these facts; ``minicl.aptrepo`` builds the repository on its host,
``minicl.aptsource`` points a host's apt at it, ``minicl.upgrade`` upgrades from it.

    packages.settings(cluster)            # the section, defaults applied (None without one)
    packages.repository_host(cluster)     # "depot", the host with the repository role
    packages.base_url(cluster)            # "http://198.51.100.30:8080/"
    packages.use(cluster, "alpha")        # "listed" | "all" | "none"
"""

import ipaddress
import os

from minicl.schema import schema

ROLE = "repository"
SIGNING_KEY = "packages.key"  # at the top of the config repo: the repository's secret signing key
PUBLIC_KEY = "packages.key.pub"  # beside it: what every host trusts for the repository
DISTRIBUTION = "minicl"  # of every published snapshot; its Release has Origin and Label minicl
ORIGIN = "minicl"
COMPONENT = "main"
INDEX = "snapshots.json"  # at the top of the published tree: the snapshots, oldest first
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _defaults(properties):
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


def settings(cluster):
    """The packages section with its defaults, or None when cluster.json has none."""
    given = cluster.data.get("packages")
    if not given:
        return None
    full = schema()
    found = {**_defaults(full["properties"]["packages"]["properties"]), **given}
    upstream_defaults = _defaults(full["$defs"]["upstream"]["properties"])
    upstreams = given["upstream"] if isinstance(given["upstream"], list) else [given["upstream"]]
    found["upstream"] = [{**upstream_defaults, **u} for u in upstreams]
    return found


def repository_host(cluster):
    """The host with the repository role, or None."""
    return next((host for host in cluster.hosts if ROLE in cluster.host_roles(host)), None)


def base_url(cluster):
    """Where the repository host serves the published snapshots (an IPv4 address first)."""
    host = repository_host(cluster)
    if host is None or settings(cluster) is None:
        return None
    ips = sorted(cluster.host_ips(host), key=lambda ip: ipaddress.ip_address(ip).version)
    address = ips[0] if ":" not in ips[0] else f"[{ips[0]}]"
    return f"http://{address}:{settings(cluster)['port']}/"


def use(cluster, host):
    """How ``host`` uses the repository: listed, all or none."""
    found = settings(cluster)
    if found is None or repository_host(cluster) is None:
        return "none"
    return cluster.hosts[host].get("packages", found["use"])


def cluster_only_ports(cluster, host):
    """The repository's HTTP port on the repository host (cluster hosts only), else nothing."""
    found = settings(cluster)
    return [found["port"]] if found and ROLE in cluster.host_roles(host) else []


def _read(checkout, name):
    try:
        with open(os.path.join(checkout, name), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def upstream_key_files(upstreams, checkout):
    """The files of the keys the upstream archives are checked against: those cluster.json
    names (in the config repo), and Debian's archive keyring for an upstream that names none."""
    files = [os.path.join(checkout or "", u["key"]) for u in upstreams if u.get("key")]
    if any(not u.get("key") for u in upstreams):
        files.append(DEBIAN_KEYRING)
    return sorted(set(files))


def local_dir(local, checkout):
    """The folder of the group's own .deb files: absolute (on the repository host), or in the
    config repo's checkout; None without one."""
    if not local:
        return None
    if os.path.isabs(local):
        return local
    return os.path.join(checkout, local) if checkout else None


def pillar(cluster, host, checkout=None):
    """``minicl:packages`` of ``host``: how it uses the repository, and on the repository host
    what it needs to build it. ``checkout``: the config repo's files (keys are read from there);
    without one (a preview), no keys. None when there is no packages section."""
    found = settings(cluster)
    if found is None:
        return None
    view = {
        "use": use(cluster, host),
        "url": base_url(cluster),
        "list": sorted(found["list"]),
        "snapshot": found.get("snapshot"),
        "window": found.get("window"),
        "public_key": _read(checkout, PUBLIC_KEY) if checkout else None,
    }
    if ROLE in cluster.host_roles(host):
        view["repository"] = {
            "settings": found,
            "signing_key": _read(checkout, SIGNING_KEY) if checkout else None,
            "upstream_key_files": upstream_key_files(found["upstream"], checkout),
            "local_dir": local_dir(found.get("local"), checkout),
        }
    return view
