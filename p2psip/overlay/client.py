"""
A RELOAD client (RFC 6940 s3.2.1): a node with a Node-ID and a
certificate that is not in the ring.

It holds no range and stores nothing for others (Store, Fetch and Stat
addressed to it are refused), forwards nothing, and appears in no
peer's neighbour or finger table.  Everything it sends goes through its
attachment peer (:mod:`p2psip.overlay.attaching`), which delivers to it
the messages addressed to its Node-ID.  It signs its own stores with its
own certificate or its user's, verifies what it fetches as a peer would,
and answers AppAttach for the applications it serves (the thin client's
SIP adaptor), so a call can reach it by Node-ID.

It is built from the same parts as a peer (:class:`~p2psip.overlay.node.OverlayNode`)
minus the ring's: messaging, connectivity (hello, connect, keepalive),
storage operations, AppAttach; the Chord parts are not built at all.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from p2psip.interfaces import ISuperNodeOverlay
from p2psip.overlay.attaching import Attacher
from p2psip.overlay.certificates import TrustPolicy
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.kinds import Kind
from p2psip.overlay.links import Connector
from p2psip.overlay.membership import Event
from p2psip.overlay.operations import OverlayOperations
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.peer_cache import KnownPeer
from p2psip.util.periodic import JitteredLoop

#: What a client's (unused) Attach candidate would say: it has no listener.
NO_LISTENER = ("0.0.0.0", 0)


@implementer(ISuperNodeOverlay)
class OverlayClient(OverlayOperations):
    """One client of the ring, attached to one peer; see the module docstring."""

    def __init__(
        self,
        *,
        identity: NodeIdentity,
        clock: IReactorTime,
        connector: Connector,
        config: OverlayConfig | None = None,
        kinds: dict[int, Kind] | None = None,
        rng: random.Random | None = None,
        trust: TrustPolicy | None = None,
    ) -> None:
        # The topology stays empty: a client keeps no ring tables, and the
        # parts it shares with peers read it and find nothing.
        self._build_common_parts(
            identity=identity,
            clock=clock,
            connector=connector,
            advertised=NO_LISTENER,
            config=config or OverlayConfig(),
            kinds=kinds,
            rng=rng,
            trust=trust,
            holds_data=False,
        )
        self.connectivity.has_listener = False
        config = self.config
        self.attacher = Attacher(
            messenger=self.messenger,
            connectivity=self.connectivity,
            membership=self.membership,
            clock=clock,
            rng=self.random,
        )
        self.connectivity.failure_observers.append(self.attacher.peer_failed)
        self.attacher.observers.append(lambda peer: self.storage.publish_certificates())
        self._keepalive = JitteredLoop(
            clock,
            config.ping_interval_seconds / 2,
            self.connectivity.keepalive,
            self.random,
            "keepalive",
        )
        # As on a peer: a peer that dies without closing the link (power
        # cut, partition) is found within the ack timeout of the first
        # message left unacknowledged, not a keepalive round later.
        self._ack_watch = JitteredLoop(
            clock,
            config.link_ack_timeout_seconds / 4,
            self.connectivity.check_acks,
            self.random,
            "ack watch",
        )
        self._maintenance = JitteredLoop(
            clock, config.update_interval_seconds, self._maintain, self.random, "attachment check"
        )

    # -- what the role and the status page read -----------------------------------

    @property
    def attachment_peer(self) -> int | None:
        """The Node-ID of the peer our messages go through, while attached."""
        return self.attacher.peer if self.attacher.link is not None else None

    @property
    def attachment_observers(self) -> list[Callable[[int], None]]:
        """Called with the peer's Node-ID whenever the client has attached (again)."""
        return self.attacher.observers

    def stored_resource_count(self) -> int:
        """A client stores nothing for others."""
        return 0

    def known_peer_addresses(self) -> list[tuple[int, str, int]]:
        """The attachment peer and its fallback, for ``known-peers.json``."""
        return [(peer.node_id, peer.host, peer.port) for peer in self.attacher.known_peers()]

    # -- lifecycle ------------------------------------------------------------------

    def attach(self, endpoints: Iterable[str]) -> Deferred[int]:
        """
        Attach to the peer responsible for our Node-ID, found through the
        first of ``endpoints`` that answers (bootstraps, then cached peers);
        fires with its Node-ID.  See :meth:`Attacher.attach`.
        """
        self._keepalive.start()
        self._ack_watch.start()
        self._maintenance.start()
        attached: Deferred[int] = self.attacher.attach(endpoints)
        return attached

    def stop(self) -> None:
        """Stop at once: cancel timers, fail outstanding requests, close the link."""
        self.membership.happened(Event.STOPPED)
        self._keepalive.stop()
        self._ack_watch.stop()
        self._maintenance.stop()
        self.attacher.stop()
        self.messenger.fail_all("the client is stopping")
        self.connectivity.close_all()

    def _maintain(self) -> None:
        self.attacher.check()
        if self.membership.reaches_ring():
            self.storage.publish_certificates()


__all__ = ["OverlayClient", "KnownPeer", "NO_LISTENER"]
