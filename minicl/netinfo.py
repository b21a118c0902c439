"""This host's global-scope addresses, read from the kernel with pyroute2."""

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute

RT_SCOPE_UNIVERSE = 0
# Interfaces of container runtimes and VMs: their addresses are not the host's own.
VIRTUAL_PREFIXES = (
    "docker",
    "br-",
    "veth",
    "virbr",
    "vnet",
    "cni",
    "flannel",
    "cali",
    "lxcbr",
    "lxdbr",
    "podman",
    "kube",
    "tap",
)


def global_addresses():
    """{interface: {"ipv4": [...], "ipv6": [...]}} for global-scope addresses only."""
    # pyroute2's synchronous IPRoute runs its own asyncio loop, which fails inside a running
    # loop (salt-minion loads grains from one): a thread of its own has none.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_read_addresses).result()


def _read_addresses():
    interfaces = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            if msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            # IFA_LOCAL is this end of a point-to-point link; IFA_ADDRESS would be the peer.
            addr = ipaddress.ip_address(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))
            name = names.get(msg["index"], str(msg["index"]))
            if addr.is_loopback or addr.is_link_local or name.startswith(VIRTUAL_PREFIXES):
                continue
            family = "ipv4" if addr.version == 4 else "ipv6"
            entry = interfaces.setdefault(name, {"ipv4": [], "ipv6": []})
            entry[family].append(str(addr))
    for entry in interfaces.values():
        for family in entry:
            entry[family].sort(key=ipaddress.ip_address)
    return interfaces


def all_global(interfaces, family):
    return sorted({a for entry in interfaces.values() for a in entry[family]}, key=ipaddress.ip_address)


def short_hostname():
    return socket.gethostname().split(".")[0]
