"""
``twistd p2psip-bootstrap``: the well-known peer new peers join through.

A bootstrap is an ordinary ring member with a stable address.  The first
bootstrap founds the ring; further bootstraps (for redundancy) name the
others with ``--bootstrap`` and join like any peer.  Its status page draws
the whole ring.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService

from p2psip.roles.overlay_service import OverlayOptions, make_overlay_role


class Options(OverlayOptions):
    role: ClassVar[str] = "bootstrap"
    default_http: ClassVar[str] = "tcp:8084:interface=127.0.0.1"
    synopsis = "[options]"
    longdesc = (
        "Run the well-known peer of a p2psip overlay. Without --bootstrap it founds "
        "a new ring; with --bootstrap it joins the ring those peers are in."
    )


def makeService(options: Options, reactor: Any = None) -> IService:  # noqa: N802 - Twisted's name
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    top, _overlay = make_overlay_role(options, reactor, found_ring=not options["bootstrap"], title="p2psip bootstrap")
    return top
