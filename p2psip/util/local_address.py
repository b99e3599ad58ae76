"""
Which of this host's addresses other hosts reach it at, when a listener
binds every interface.

A node listening on ``tcp:6084`` (every interface) must still tell other
peers one address in its Attach candidates, and a super-node one host in
its Via and Record-Route.  Without ``advertise`` the roles take the
address of the interface that carries the default route: the source
address the kernel would pick for a packet to the Internet.  It is found
with ``connect()`` on a UDP socket, which only asks the routing table and
sends nothing.  A host with no default route, or whose route leads only
to loopback or link-local addresses, has no such address, and the role
must be told (``advertise``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

#: Destinations whose route is asked for: global unicast addresses outside
#: every documentation and private range, so that only a default route
#: covers them.  No packet goes to them.
ROUTE_PROBE_ADDRESSES: dict[int, str] = {socket.AF_INET: "9.9.9.9", socket.AF_INET6: "2620:fe::fe"}

#: How a role looks up that address (a parameter, so tests give their own).
AddressFinder = Callable[[int], "str | None"]

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})


def is_wildcard(host: str | None) -> bool:
    """Whether a listener's interface means every interface (or none was named)."""
    return host is None or host in WILDCARD_HOSTS


def default_route_address(family: int = socket.AF_INET) -> str | None:
    """
    The address of the interface of the default route for ``family``
    (``socket.AF_INET`` or ``socket.AF_INET6``); None when there is no
    default route or it leads only to a loopback or link-local address.
    """
    try:
        probe = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return None
    with probe:
        try:
            probe.connect((ROUTE_PROBE_ADDRESSES[family], 9))
            host = str(probe.getsockname()[0])
        except OSError:
            return None
    return host if usable_from_elsewhere(host) else None


def usable_from_elsewhere(host: str) -> bool:
    """Whether another host could reach ``host`` (not loopback, link-local or unspecified)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return not (address.is_loopback or address.is_link_local or address.is_unspecified)
