"""
Addresses and AORs shortened for logs.

Public roles log no full IP address or SIP URI at info level (a log is
read by more people than the users file): an AOR keeps its domain and a
short hash of its user, a flow its /24 (IPv4) or /48 (IPv6).  The helpers
accept the shapes flows have in this stack: a ``Hop``, a transport's flow
tuple, or a one-element tuple holding a bare address.
"""

from __future__ import annotations

import hashlib


def blur_aor(aor: str) -> str:
    """An AOR fit for info-level logs: domain kept, user replaced by a short hash."""
    scheme, colon, rest = aor.partition(":")
    user, at, domain = rest.rpartition("@")
    if not colon or not at:
        return "?"
    digest = hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{scheme}:~{digest}@{domain}"


def flow_host(flow: object) -> str | None:
    """The remote IP address of a flow (a ``Hop``, or a transport's flow tuple), if it has one."""
    host = getattr(flow, "host", None)
    if host is None and isinstance(flow, tuple) and flow and isinstance(flow[-1], tuple):
        host = flow[-1][0]
    if host is None and isinstance(flow, tuple) and flow and isinstance(flow[0], str):
        host = flow[0]
    return host if isinstance(host, str) else None


def blur_flow(flow: object) -> str:
    """A flow fit for info-level logs: IPv4 /24 or IPv6 /48, no port."""
    host = flow_host(flow)
    if host is None:
        return "?"
    if ":" in host:
        return ":".join(host.split(":")[:3]) + "::/48"
    parts = host.split(".")
    if len(parts) == 4:
        return ".".join(parts[:3]) + ".x"
    return "?"
