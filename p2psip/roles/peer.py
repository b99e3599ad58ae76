"""
``twistd p2psip-peer``: a super-node that stores part of the DHT.

It joins the ring through ``--bootstrap`` (retrying until one answers),
stores and replicates its share of the data, and serves the status page and
admin API on ``--http``.  With ``--sip`` it is also a SIP registrar and
proxy for the overlay's domain (:mod:`p2psip.roles.sip_service`): phones
register with it, their bindings go into the DHT, and calls for any
overlay user are routed through the super-node that serves that user.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService
from twisted.python import usage

from p2psip.roles.super_node import SuperNodeOptions, make_super_node_service


class Options(SuperNodeOptions):
    role: ClassVar[str] = "peer"
    default_http: ClassVar[str] = "tcp:8085:interface=127.0.0.1"
    synopsis = "--bootstrap tcp:HOST:PORT [--sip udp:5060 --users FILE] [options]"
    longdesc = (
        "Run a p2psip super-node: a ring member that stores part of the DHT and, "
        "with --sip, the SIP registrar and proxy of the overlay's domain."
    )

    def postOptions(self) -> None:
        super().postOptions()
        if not self["bootstrap"]:
            raise usage.UsageError(
                "a peer needs at least one --bootstrap ENDPOINT (or 'bootstrap =' in the "
                "[peer] section of its --config file), e.g. --bootstrap tcp:198.51.100.1:6084"
            )


def makeService(options: Options, reactor: Any = None) -> IService:
    return make_super_node_service(options, reactor, found_ring=False, title="p2psip peer")
