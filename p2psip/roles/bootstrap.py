"""
``twistd p2psip-bootstrap``: the well-known peer new peers join through.

A bootstrap is an ordinary ring member with a stable address.  The first
bootstrap founds the ring; further bootstraps (for redundancy) name the
others with ``--bootstrap`` and join like any peer.  With ``--sip`` it is a
SIP super-node too, exactly like a peer.  Its status page draws
the whole ring.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService

from p2psip.roles.overlay_service import OverlayOptions, make_overlay_role
from p2psip.roles.sip_service import SIP_OPTION_FLAGS, SIP_OPTION_PARAMETERS, add_sip_service, check_sip_options


class Options(OverlayOptions):
    role: ClassVar[str] = "bootstrap"
    repeatable: ClassVar[tuple[str, ...]] = ("bootstrap", "sip")
    default_http: ClassVar[str] = "tcp:8084:interface=127.0.0.1"
    synopsis = "[options]"
    longdesc = (
        "Run the well-known peer of a p2psip overlay. Without --bootstrap it founds "
        "a new ring; with --bootstrap it joins the ring those peers are in. "
        "With --sip it is also a SIP super-node, like a peer."
    )
    optParameters = SIP_OPTION_PARAMETERS
    optFlags = SIP_OPTION_FLAGS

    def postOptions(self) -> None:  # noqa: N802 - Twisted's name
        super().postOptions()
        check_sip_options(self)


def makeService(options: Options, reactor: Any = None) -> IService:  # noqa: N802 - Twisted's name
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    top, overlay = make_overlay_role(options, reactor, found_ring=not options["bootstrap"], title="p2psip bootstrap")
    add_sip_service(top, overlay, options, reactor)
    return top
