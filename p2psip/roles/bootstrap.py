"""
``twistd p2psip-bootstrap``: the well-known peer new peers join through.

A bootstrap is an ordinary ring member with a stable address.  The first
bootstrap founds the ring; further bootstraps (for redundancy) name the
others with ``--bootstrap`` and join like any peer.  A bootstrap that
restarts rejoins the ring it knew (its ``known-peers.json``) before it
would found a new one.  With ``--sip`` it is a SIP super-node too, exactly
like a peer.  Its status page draws the whole ring.

It also runs the overlay's CA (RFC 6940 s11.3): the key and root are made
in ``--data-dir`` on first start (or given with ``--ca-key``/``--ca-cert``;
further bootstraps need a copy of them), the bootstrap issues its own
node certificate from it, and its HTTPS enrolment server on
``--enrol-listen`` issues certificates to peers and users with accounts in
``DATA_DIR/enrolment-accounts`` and serves the signed configuration
document.  With ``--insecure`` none of that runs.
"""

from __future__ import annotations

from typing import ClassVar

from twisted.application.service import IService

from p2psip.util.reactor import IRoleReactor
from p2psip.roles.ring_options import RingRoleOptions
from p2psip.roles.security_options import AuthorityOptions
from p2psip.roles.super_node import make_ring_service


class Options(AuthorityOptions, RingRoleOptions):
    role: ClassVar[str] = "bootstrap"
    title: ClassVar[str] = "p2psip bootstrap"
    default_http: ClassVar[str] = "tcp:8084:interface=127.0.0.1"
    synopsis = "[options]"
    longdesc = (
        "Run the well-known peer of a p2psip overlay. Without --bootstrap it founds "
        "a new ring; with --bootstrap it joins the ring those peers are in. "
        "With --sip it is also a SIP super-node, like a peer. It runs the overlay's CA "
        "(made in --data-dir on first start) and its HTTPS enrolment server on "
        "--enrol-listen, unless --insecure."
    )


def makeService(options: Options, reactor: IRoleReactor | None = None) -> IService:
    return make_ring_service(options.config, reactor)
