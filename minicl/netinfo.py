"""This host's global-scope addresses, read from the kernel with pyroute2."""

import ipaddress
import socket

from pyroute2 import IPRoute

RT_SCOPE_UNIVERSE = 0


def global_addresses():
    """{interface: {"ipv4": [...], "ipv6": [...]}} for global-scope addresses only."""
    interfaces = {}
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for msg in ipr.get_addr():
            if msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            addr = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
            if addr.is_loopback or addr.is_link_local:
                continue
            family = "ipv4" if addr.version == 4 else "ipv6"
            entry = interfaces.setdefault(names.get(msg["index"], str(msg["index"])), {"ipv4": [], "ipv6": []})
            entry[family].append(str(addr))
    for entry in interfaces.values():
        for family in entry:
            entry[family].sort(key=ipaddress.ip_address)
    return interfaces


def all_global(interfaces, family):
    return sorted({a for entry in interfaces.values() for a in entry[family]}, key=ipaddress.ip_address)


def short_hostname():
    return socket.gethostname().split(".")[0]
