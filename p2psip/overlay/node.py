"""
One CHORD-RELOAD peer, composed of its parts: the facade roles and the SIP
layer use.

The parts, each in its own module with one job, and the direction of
their dependencies (each uses only those above it):

* :mod:`~p2psip.overlay.membership`: the node's state (a typed machine);
  :mod:`~p2psip.overlay.topology`: the neighbour and finger tables;
  :mod:`~p2psip.overlay.link_table`: open links by Node-ID.
* :mod:`~p2psip.overlay.messaging`: sign and send, route and forward,
  verify and dispatch to a handler table the other parts fill in.
* :mod:`~p2psip.overlay.connectivity`: hello, Attach-and-connect,
  keepalive, failure reports; :mod:`~p2psip.overlay.app_attach`: AppAttach.
* :mod:`~p2psip.overlay.storage_service`: Store/Fetch/Stat, replication,
  hand-over, and the operations users call.
* :mod:`~p2psip.overlay.chord`: admitting, Updates, leaving,
  stabilisation, fingers; :mod:`~p2psip.overlay.joining`: joining.

This module builds them with their collaborators, runs the two periodic
loops (stabilisation and keepalive, on the injected clock, jittered by an
injected random generator so a simulation repeats exactly), routes the
events that concern several parts (a peer failed; a peer restarted), and
offers the operations of :class:`~p2psip.interfaces.IOverlayStorage`
(written once for peers and clients in :mod:`~p2psip.overlay.operations`).
Everything that waits goes through the clock, so a whole ring runs
deterministically on a fake one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from p2psip.interfaces import ISuperNodeOverlay
from p2psip.overlay.certificates import TrustPolicy
from p2psip.overlay.chord import ChordMaintenance
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.joining import DuplicateNodeId, Joiner
from p2psip.overlay.kinds import Kind
from p2psip.overlay.links import Connector, Link
from p2psip.overlay.membership import Event, NodeState
from p2psip.overlay.messaging import WILDCARD_NODE_ID, Answer
from p2psip.overlay.operations import OverlayOperations
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.peer_tables import PeerTables, PeerTablesQuery
from p2psip.overlay.results import OperationResult
from p2psip.util.ids import id_short
from p2psip.util.logs import Logger
from p2psip.util.periodic import JitteredLoop


@implementer(ISuperNodeOverlay)
class OverlayNode(OverlayOperations):
    """One peer of the ring; see the module docstring for its parts."""

    log = Logger()

    def __init__(
        self,
        *,
        identity: NodeIdentity,
        clock: IReactorTime,
        connector: Connector,
        advertised_host: str,
        advertised_port: int,
        config: OverlayConfig | None = None,
        kinds: dict[int, Kind] | None = None,
        rng: random.Random | None = None,
        trust: TrustPolicy | None = None,
    ) -> None:
        self._build_common_parts(
            identity=identity,
            clock=clock,
            connector=connector,
            advertised=(advertised_host, advertised_port),
            config=config or OverlayConfig(),
            kinds=kinds,
            rng=rng,
            trust=trust,
            holds_data=True,
        )
        config = self.config
        self.chord = ChordMaintenance(
            messenger=self.messenger,
            connectivity=self.connectivity,
            topology=self.topology,
            membership=self.membership,
            ranges=self.storage,
            clock=clock,
            config=config,
            counters=self.counters,
        )
        self.joiner = Joiner(
            messenger=self.messenger,
            connectivity=self.connectivity,
            chord=self.chord,
            topology=self.topology,
            membership=self.membership,
            clock=clock,
            config=config,
        )
        #: Other peers' tables, asked for by the ring page (RouteQuery send_update).
        self.peer_tables_query = PeerTablesQuery(
            self.messenger,
            clock,
            timeout_seconds=config.request_timeout_seconds,
        )
        self.chord.full_update_observers.append(self.peer_tables_query.update_received)
        self.storage.hand_over_source = lambda: self.joiner.admitting_peer
        self.connectivity.failure_observers.append(self._peer_failed)
        self.messenger.rejoin_policy = self._peer_rejoining
        self.messenger.suspect_observer = self.connectivity.suspect
        self.chord.neighbour_observers.append(self.storage.replicate_all)
        self.chord.neighbour_observers.append(self._release_moved_clients)
        self._stabilisation = JitteredLoop(
            clock, config.update_interval_seconds, self._stabilise, self.random, "stabilisation"
        )
        self._keepalive = JitteredLoop(
            clock,
            config.ping_interval_seconds / 2,
            self.connectivity.keepalive,
            self.random,
            "keepalive",
        )
        self._ack_watch = JitteredLoop(
            clock,
            config.link_ack_timeout_seconds / 4,
            self.connectivity.check_acks,
            self.random,
            "ack watch",
        )

    # -- what the role and the status page read ---------------------------------

    @property
    def neighbour_observers(self) -> list[Callable[[], None]]:
        """Called (with no arguments) after the neighbour table changed."""
        return self.chord.neighbour_observers

    def uptime_seconds(self) -> float:
        return self.clock.seconds() - self.chord.started_at

    def attached_clients(self) -> list[int]:
        """Node-IDs of the clients attached to this peer (RFC 6940 s3.2.1)."""
        return self.messenger.clients.clients()

    def stored_resource_count(self) -> int:
        """Resources this node holds values of (as responsible peer or replica)."""
        return self.storage.resource_count()

    def stored_values_per_kind(self) -> dict[str, int]:
        """Kind name -> values that exist (not tombstones) held here."""
        return self.storage.store.counts_per_kind()

    def known_peer_addresses(self) -> list[tuple[int, str, int]]:
        """
        (Node-ID, host, port) of the ring members we know, neighbours first.

        The role keeps this list in its data directory, so a restarted peer
        can come back through any of them when its bootstrap peers are gone.
        """
        topology = self.topology
        ordered = [*topology.successors, *topology.predecessors, *topology.fingers.values()]
        result = []
        for peer in dict.fromkeys(ordered):
            address = self.connectivity.addresses.get(peer)
            if address is not None and peer != self.node_id:
                result.append((peer, address[0], address[1]))
        return result

    # -- lifecycle ----------------------------------------------------------------

    def set_advertised_address(self, host: str, port: int) -> None:
        """Where other peers reach our overlay listener (known once it listens)."""
        self.connectivity.set_advertised_address(host, port)

    def start_alone(self) -> None:
        """Start a new ring with this peer as its only member."""
        self.chord.start_alone()
        self._start_loops()

    def join(self, bootstrap: Iterable[str]) -> Deferred[int]:
        """
        Join the ring through the first of ``bootstrap`` (client endpoint
        strings) that admits us; fires with the Node-ID we joined through.
        See :meth:`p2psip.overlay.joining.Joiner.join`.
        """
        self._start_loops()
        joined: Deferred[int] = self.joiner.join(bootstrap)
        return joined

    @inlineCallbacks
    def leave(self) -> Generator[Deferred[Any], Any, None]:
        """Leave gracefully (RFC 6940 s10.6), then stop."""
        if self.membership.is_member():
            yield self.chord.leave()
        self.stop()

    def stop(self) -> None:
        """Stop at once: cancel timers, fail outstanding requests, close links."""
        self.membership.happened(Event.STOPPED)
        self._stabilisation.stop()
        self._keepalive.stop()
        self._ack_watch.stop()
        self.chord.stop()
        self.peer_tables_query.stop()
        self.messenger.fail_all("the node is stopping")
        self.connectivity.close_all()

    def _start_loops(self) -> None:
        self._stabilisation.start()
        self._keepalive.start()
        self._ack_watch.start()

    def _stabilise(self) -> None:
        self.chord.stabilize()
        self.storage.maintain()

    # -- events that concern several parts ----------------------------------------

    def _release_moved_clients(self) -> None:
        """
        Close the links of attached clients whose Node-ID a new neighbour
        took over: messages for them now reach that peer, so each client
        must attach there (it does at once when its link goes).
        """
        if self.membership.state is not NodeState.JOINED:
            return
        for client in self.messenger.clients.clients():
            if self.topology.is_responsible(client):
                continue
            link = self.messenger.clients.link_for(client)
            self.messenger.clients.detach(client)
            if link is not None:
                self.log.info(
                    "client {client} is no longer in our range (a new neighbour owns its "
                    "Node-ID); closing its link so that it attaches to the owner",
                    client=id_short(client),
                )
                self.counters.count("clients_released")
                self.connectivity.drop_link(link)

    def _peer_failed(self, peer: int) -> None:
        self.storage.peer_gone(peer)
        self.messenger.resend_after_failure(peer)
        self.chord.peer_failed(peer)
        self.messenger.release_held_answers(peer)

    def _peer_rejoining(self, peer: int, link: Link) -> bool | None:
        """
        A peer asks, over ``link``, for the owner of its own Node-ID.

        If an older link to it heard from it since ``link`` came up, a
        second node uses the same key: refuse (False).  If it heard from it
        only shortly before, the peer may have restarted within seconds:
        challenge the old link with a Ping and answer "ask again" (None);
        the old link is closed once the Ping goes unanswered
        (``link_ack_timeout_seconds``), and the next ask gets in.
        Otherwise it has restarted: forget its old incarnation (its place,
        its stale links, its replicas) and let the Attach find the peer
        that will admit it.
        """
        stale = [other for other in self.links.links_to(peer) if other is not link]
        alive_since = self.clock.seconds() - self.config.ping_interval_seconds
        recent = [o for o in stale if not o.closed and o.last_received_at > alive_since]
        if any(other.last_received_at > link.created_at for other in recent):
            self.counters.count("duplicate_node_ids")
            self.log.warn(
                "a second node at {address} uses the Node-ID of live peer {peer}; refusing its join",
                address=link.remote_address,
                peer=id_short(peer),
            )
            return False
        if recent:
            for other in recent:
                self.connectivity.ping_now(other, peer)
            return None
        if peer not in self.topology.known_peers() and not stale:
            return True
        self.log.info(
            "peer {peer} is joining again: forgetting its old place and {count} old links",
            peer=id_short(peer),
            count=len(stale),
        )
        self.counters.count("peers_rejoined")
        self.connectivity.drop_stale_links(peer, link)
        self.storage.peer_gone(peer)
        self.messenger.resend_after_failure(peer)
        self.chord.forget(peer)
        return True

    # -- the ring page -------------------------------------------------------------

    def peer_tables(self, peer: int) -> Deferred[PeerTables]:
        """
        ``peer``'s predecessors, successors and fingers: ours at once, another
        member's from the full Update it sends for a RouteQuery with
        ``send_update`` (:mod:`p2psip.overlay.peer_tables`).
        """
        if peer == self.node_id:
            topology = self.topology
            return succeed(
                PeerTables(
                    peer=peer,
                    predecessors=tuple(topology.predecessors),
                    successors=tuple(topology.successors),
                    fingers=tuple(dict.fromkeys(topology.fingers.values())),
                    uptime_seconds=self.chord.uptime_seconds(),
                    received_at=self.clock.seconds(),
                )
            )
        return self.peer_tables_query.ask(peer)


__all__ = [
    "OverlayNode",
    "OverlayConfig",
    "OperationResult",
    "Answer",
    "NodeState",
    "DuplicateNodeId",
    "WILDCARD_NODE_ID",
]
