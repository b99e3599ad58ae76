"""
``twistd p2psip-peer``: a super-node that stores part of the DHT.

It joins the ring through ``--bootstrap`` (then through the peers it knew,
retrying until one answers), stores and replicates its share of the data,
and serves the status page and admin API on ``--http``.  With ``--sip`` it
is also a SIP registrar and proxy for the overlay's domain
(:mod:`p2psip.roles.sip_service`): phones register with it, their bindings
go into the DHT, and calls for any overlay user are routed through the
super-node that serves that user.  With ``--workers N`` the process
starts N worker peers sharing the SIP ports (:mod:`p2psip.roles.workers`).
"""

from __future__ import annotations

from typing import ClassVar

from twisted.application.service import IService, MultiService
from twisted.python import usage

from p2psip.util.reactor import IRoleReactor, as_role_reactor
from p2psip.roles.workers import ParentWatch, WorkerSupervisor
from p2psip.roles.ring_options import RingRoleOptions
from p2psip.roles.super_node import make_ring_service


class Options(RingRoleOptions):
    role: ClassVar[str] = "peer"
    title: ClassVar[str] = "p2psip peer"
    default_http: ClassVar[str] = "tcp:8085:interface=127.0.0.1"
    synopsis = "--bootstrap tcp:HOST:PORT [--sip udp:5060 --users FILE] [options]"
    longdesc = (
        "Run a p2psip super-node: a ring member that stores part of the DHT and, "
        "with --sip, the SIP registrar and proxy of the overlay's domain."
    )

    def check_bootstrap(self) -> None:
        if not self["bootstrap"]:
            raise usage.UsageError(
                "a peer needs at least one --bootstrap ENDPOINT (or 'bootstrap =' in the "
                "[peer] section of its --config file), e.g. --bootstrap tcp:198.51.100.1:6084"
            )

    def founds_ring(self) -> bool:
        # A peer never founds a ring: it waits for one to admit it.
        return False


def makeService(options: Options, reactor: IRoleReactor | None = None) -> IService:
    config = options.config
    if config.workers <= 1 and config.worker_index is None:
        return make_ring_service(config, reactor)
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = as_role_reactor(global_reactor)
    if config.worker_index is None:
        # --workers N: this process starts and watches the N workers.
        return WorkerSupervisor(config, options.arguments, reactor)
    top = MultiService()
    make_ring_service(config, reactor).setServiceParent(top)
    ParentWatch(reactor).setServiceParent(top)
    return top
