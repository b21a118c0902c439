"""Grains: this host's real global-scope addresses (pyroute2) and its short name.

salt-call --local grains.item minicl_ipv4 minicl_ipv6 minicl_interfaces minicl_shortname
"""

try:
    from minicl import netinfo

    HAS_PYROUTE2 = True
except ImportError as exc:  # pragma: no cover
    HAS_PYROUTE2 = False
    IMPORT_ERROR = str(exc)

__virtualname__ = "minicl"


def __virtual__():
    if not HAS_PYROUTE2:
        return False, f"minicl grains need pyroute2 and the minicl package: {IMPORT_ERROR}"
    return __virtualname__


def network():
    interfaces = netinfo.global_addresses()
    return {
        "minicl_interfaces": interfaces,
        "minicl_ipv4": netinfo.all_global(interfaces, "ipv4"),
        "minicl_ipv6": netinfo.all_global(interfaces, "ipv6"),
    }


def shortname():
    return {"minicl_shortname": netinfo.short_hostname()}
