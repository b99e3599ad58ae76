"""
A CHORD-RELOAD peer: routing, joining, stabilisation, storage and leaving.

This is where the sans-IO pieces meet: the RELOAD codec
(:mod:`~p2psip.overlay.message`, :mod:`~p2psip.overlay.bodies`), the
routing tables (:mod:`~p2psip.overlay.topology`), the data store
(:mod:`~p2psip.overlay.storage`) and the links
(:mod:`~p2psip.overlay.links`).  Everything that waits goes through the
injected clock, so a whole ring runs deterministically on a
``twisted.internet.task.Clock``.

Routing is symmetric recursive (RFC 6940 s6.2.2).  A peer that forwards a
message appends the Node-ID of the peer it received the message from to
the via list.  The responder answers along the reversed via list, over the
link the request came in on, so the answer retraces the request's path and
the originator can read the whole route from the answer's own via list.

Joining follows RFC 6940 s10.5: the joining peer (JP) connects to a
bootstrap peer, sends an Attach to its own Node-ID, which reaches the
admitting peer (AP) that owns that id now, connects to AP, sends Join; AP
hands over the data JP will own, then sends JP an Update with its
neighbour table, and JP attaches to those neighbours and announces itself
with Updates.  Periodic Updates to the neighbours (stabilisation),
finger repair with Attach to each finger target, keepalive Pings and the
re-replication of every primary value to the next successors keep the
ring and its data whole while peers come and go.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterable
from typing import Any, cast

from attrs import define, evolve, field, frozen
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    DeferredSemaphore,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2psip.interfaces import IApplicationRegistry, IOverlayStorage
from p2psip.overlay import bodies
from p2psip.overlay.codec import DecodeError, Limits, UnknownKindError
from p2psip.overlay.errors import NotConnected, OverlayError, RequestFailed, UnexpectedPeer
from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError
from p2psip.overlay.kinds import DATA, DEFAULT_KINDS, Kind, data_models
from p2psip.overlay.links import Link
from p2psip.overlay.message import (
    FRAGMENT_UNFRAGMENTED,
    RELOAD_VERSION,
    Destination,
    DestinationType,
    ErrorCode,
    ForwardingHeader,
    GenericCertificate,
    Message,
    MessageCode,
    SecurityBlock,
    decode_message,
    encode_contents,
    is_request,
    peek_code,
    encode_message,
    message_signature_input,
    overlay_hash,
    peek_header,
    replace_header,
)
from p2psip.overlay.storage import DataStore, StoreError
from p2psip.overlay.topology import ChordTopology
from p2psip.overlay.transactions import TransactionTable
from p2psip.util.ids import MAX_ID, between_right_inclusive, id_hex, id_short, resource_id

#: The wildcard Node-ID (all ones) addresses "whoever is at the other end of
#: this link": a new connection's first Ping uses it, since the connecting
#: side may not know the Node-ID of a bootstrap peer it only has an address for.
WILDCARD_NODE_ID = MAX_ID

#: Attach/Join rounds before a join attempt gives up (the service retries later).
JOIN_ATTEMPTS = 5

#: The replica_number of hand-over Stores (a newcomer's range at join, ours
#: at leave): non-zero, like a replica, so the receiver adopts the
#: sender's generation counters and merges (RFC 6940 s7.4.1.1 checks the
#: counter only for original stores).
HAND_OVER_REPLICA_NUMBER = 1

#: Hand-over Stores in flight at once to one peer.
HAND_OVER_WINDOW = 16


def host_candidate(host: str, port: int) -> bodies.IceCandidate:
    """
    Our one Attach candidate: the overlay listener, reached directly.

    Links are made without ICE (overlay link type TLS-TCP-FH-NO-ICE); NAT
    traversal is the mediator's job, not ICE's.
    """
    return bodies.IceCandidate(
        bodies.IpAddressPort(host, port),
        bodies.OverlayLinkType.TLS_TCP_FH_NO_ICE,
        b"1",
        1,
        bodies.CandidateType.HOST,
    )


@frozen
class OverlayConfig:
    """Sizes and timers of the ring (RFC 6940 defaults where it gives them)."""

    overlay_name: str = "p2psip.test"
    successors: int = 4
    predecessors: int = 4
    replicas: int = 2
    update_interval_seconds: float = 60.0
    ping_interval_seconds: float = 15.0
    request_timeout_seconds: float = 15.0
    join_timeout_seconds: float = 60.0
    idle_link_seconds: float = 120.0
    failed_peer_memory_seconds: float = 60.0
    initial_ttl: int = 100
    limits: Limits = field(factory=Limits)


@frozen
class Answer:
    """A decoded answer to one of our requests."""

    message: Message
    body: Any
    responder: int
    route: tuple[int, ...]

    @property
    def hops(self) -> int:
        return len(self.route) - 1


@frozen
class OperationResult:
    """What put/get/lookup report to the admin API and the demo."""

    resource_id: int
    responsible: int
    route: tuple[int, ...]
    found: bool = True
    value: bytes | None = None
    replicas: tuple[int, ...] = ()

    @property
    def hops(self) -> int:
        return len(self.route) - 1

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "resource_id": id_hex(self.resource_id),
            "responsible": id_hex(self.responsible),
            "stored_at": id_hex(self.responsible),
            "route": [id_hex(hop) for hop in self.route],
            "hops": self.hops,
            "found": self.found,
            "replicas": [id_hex(peer) for peer in self.replicas],
        }
        if self.value is not None:
            result["value"] = self.value.decode("utf-8", "replace")
        return result


@define
class HandOver:
    """How a hand-over went: resources the peer refused, and ones it never answered for."""

    refused: int = 0
    unreachable: int = 0
    reason: str = ""


class DuplicateNodeId(OverlayError):
    """Our Node-ID is already in the ring (the same key in two places)."""


class _RequestError(Exception):
    """A handler's way of answering with a RELOAD Error."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class NodeState:
    ALONE = "alone"
    JOINING = "joining"
    JOINED = "joined"
    LEAVING = "leaving"
    STOPPED = "stopped"


@implementer(IOverlayStorage, IApplicationRegistry)
class OverlayNode:
    """One peer of the ring; see the module docstring for the protocol."""

    log = Logger()

    def __init__(
        self,
        *,
        identity: NodeIdentity,
        clock: IReactorTime,
        connector: Any,
        advertised_host: str,
        advertised_port: int,
        config: OverlayConfig | None = None,
        kinds: dict[int, Kind] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        #: Only spreads periodic timers; simulations pass a seeded one.
        self.random = rng or random.Random()
        self.node_id = identity.node_id
        self.local_node_id = self.node_id
        self.clock = clock
        self.connector = connector
        self.advertised_host = advertised_host
        self.advertised_port = advertised_port
        self.config = config or OverlayConfig()
        self.kinds = dict(kinds or DEFAULT_KINDS)
        self.data_models = data_models(self.kinds)
        self.overlay = overlay_hash(self.config.overlay_name)
        self.topology = ChordTopology(
            self.node_id, self.config.successors, self.config.predecessors
        )
        self.certificates = CertificateCache()
        self.certificates.add_identity(identity)
        self.store = DataStore(self.kinds, self.certificates)
        self.transactions = TransactionTable(clock, self.config.request_timeout_seconds)
        self.state = NodeState.STOPPED
        self.started_at = clock.seconds()
        self.links: dict[int, list[Link]] = {}
        self.unidentified_links: set[Link] = set()
        self.addresses: dict[int, tuple[str, int]] = {}
        self.applications: dict[int, tuple[str, int]] = {}
        self.replica_holders: dict[int, set[int]] = {}
        self.recently_failed: dict[int, float] = {}
        self.unreachable_until: dict[int, float] = {}
        self.corrections_sent: dict[int, float] = {}
        self.counters: dict[str, int] = {}
        #: Called (with no arguments) after the neighbour table changed.
        self.neighbour_observers: list[Callable[[], None]] = []
        #: Called as (method name, seconds, answered) when a request of ours
        #: is answered, fails or times out: the overlay request-time metric.
        self.request_observers: list[Callable[[str, float, bool], None]] = []
        self._connecting: dict[int, Deferred[Link]] = {}
        self._pinging: set[int] = set()
        self._asking_address: set[int] = set()
        self._joined: Deferred[None] | None = None
        #: While joining: the peer we sent Join to, whose FULL Update admits us.
        self._admitting: int | None = None
        #: While joining: set once the admitting peer's Update gave us our range.
        self._admitted = False
        self._neighbour_update_call: IDelayedCall | None = None
        self._periodic: list[IDelayedCall] = []
        self._candidate = host_candidate(advertised_host, advertised_port)

    # ------------------------------------------------------------------
    # lifecycle

    def start_alone(self) -> None:
        """Start a new ring with this peer as its only member."""
        self.state = NodeState.ALONE
        self.started_at = self.clock.seconds()
        self._schedule_periodic()
        self.log.info(
            "node {node} started a new ring for overlay {overlay}",
            node=id_short(self.node_id),
            overlay=self.config.overlay_name,
        )

    @inlineCallbacks
    def join(self, bootstrap: Iterable[str]) -> Any:
        """
        Join the ring through the first of ``bootstrap`` that gets us admitted.

        ``bootstrap`` holds client endpoint strings (``tcp:HOST:PORT``): the
        configured bootstrap peers and then, on a restart, the peers this
        node knew before, so that it comes back even when the bootstrap is
        gone.  An endpoint that does not answer, or through which no
        admitting peer takes us, is skipped for the next one.  Fires with
        the Node-ID of the peer we joined through once the admitting peer
        has handed over our data and its neighbour table; fails with
        :class:`NotConnected` naming what to fix.
        """
        self.state = NodeState.JOINING
        self.started_at = self.clock.seconds()
        self._schedule_periodic()
        failures: list[str] = []
        for description in list(bootstrap):
            try:
                link = yield self.connector.connect_endpoint(self, description)
                yield self._hello(link)
            except Exception as error:
                failures.append(f"{description}: {error}")
                continue
            through = link.peer_id or 0
            self.log.info(
                "node {node} reached peer {peer} at {endpoint}; looking for its admitting peer",
                node=id_short(self.node_id),
                peer=id_short(through),
                endpoint=description,
            )
            try:
                yield self._join_through(link)
            except DuplicateNodeId:
                self.state = NodeState.STOPPED
                raise
            except OverlayError as error:
                failures.append(f"{description} (peer {id_short(through)}): {error.reason}")
                self._forget_partial_join(link)
                continue
            self.log.info(
                "node {node} joined the ring through peer {peer} at {endpoint}: "
                "predecessor {pred}, successor {succ}",
                node=id_short(self.node_id),
                peer=id_short(through),
                endpoint=description,
                pred=id_short(self.topology.predecessor or 0),
                succ=id_short(self.topology.successor or 0),
            )
            return through
        self.state = NodeState.STOPPED
        raise NotConnected(
            "could not join through any bootstrap or known peer ("
            + "; ".join(failures or ["none configured"])
            + "); check --bootstrap and that the bootstrap role is running"
        )

    @inlineCallbacks
    def _join_through(self, link: Link) -> Any:
        """Find our admitting peer through ``link``, send it Join and wait for its Update."""
        joined: Deferred[None] = Deferred()
        self._joined = joined
        self._admitting = None
        self._admitted = False
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            # The admitting peer is whoever owns our Node-ID right now; the
            # ring may change between the Attach and the Join (another peer
            # joining next to us), and a message may be lost in a loop while
            # the ring converges around a newcomer; either way, ask again.
            try:
                answer = yield self._request(
                    Destination.node(self.node_id),
                    MessageCode.ATTACH_REQ,
                    self._attach_request(),
                    first_link=link,
                )
                admitting = answer.responder
                if admitting == self.node_id:
                    raise DuplicateNodeId(
                        "another peer already uses this Node-ID; delete the node key in --data-dir"
                    )
                self._remember_candidates(admitting, answer.body)
                admitting_link = yield self._ensure_link(admitting)
                self._admitting = admitting
                yield self._request(
                    Destination.node(admitting),
                    MessageCode.JOIN_REQ,
                    bodies.JoinReq(self.node_id).encode(),
                    first_link=admitting_link,
                )
                break
            except DuplicateNodeId:
                raise
            except OverlayError as error:
                if attempt == JOIN_ATTEMPTS or link.closed:
                    raise
                self.log.info(
                    "join attempt {attempt} failed ({why}); asking again",
                    attempt=attempt,
                    why=error.reason,
                )
                yield deferLater(self.clock, 0.5 * attempt, lambda: None)

        def give_up() -> None:
            if not joined.called:
                joined.errback(OverlayError("the admitting peer never sent its neighbour table"))

        timeout = self.clock.callLater(self.config.join_timeout_seconds, give_up)
        try:
            yield joined
        finally:
            if timeout.active():
                timeout.cancel()

    def _forget_partial_join(self, link: Link) -> None:
        """After a failed join through ``link``: start the next attempt from nothing."""
        self._admitting = None
        self._admitted = False
        self._joined = None
        for peer in list(self.topology.known_peers()):
            self.topology.remove_peer(peer)
        for other in self._all_links():
            self._drop_link(other)

    @inlineCallbacks
    def leave(self) -> Any:
        """
        Leave gracefully (RFC 6940 s10.6): hand our data to the successor,
        tell the neighbours, close the links.
        """
        if self.state not in (NodeState.JOINED, NodeState.ALONE):
            self.stop()
            return
        self.state = NodeState.LEAVING
        successor = self.topology.successor
        handovers = [
            resource
            for resource in self.store.resources()
            if self.topology.is_responsible(resource)
        ]
        if successor is not None and handovers:
            handed = yield self._hand_over(successor, handovers)
            if handed.unreachable:
                self.log.warn(
                    "successor {peer} did not take {count} resources ({why}); its replicas remain",
                    peer=id_short(successor),
                    count=handed.unreachable,
                    why=handed.reason,
                )
        notices = []
        for peer in self.topology.successors:
            data = bodies.ChordLeaveData(
                bodies.ChordLeaveType.FROM_PREDECESSOR, tuple(self.topology.predecessors)
            )
            notices.append(self._leave_notice(peer, data))
        for peer in self.topology.predecessors:
            data = bodies.ChordLeaveData(
                bodies.ChordLeaveType.FROM_SUCCESSOR, tuple(self.topology.successors)
            )
            notices.append(self._leave_notice(peer, data))
        if notices:
            yield DeferredList(notices, consumeErrors=True)
        self.log.info(
            "node {node} left the ring ({count} resources handed over)",
            node=id_short(self.node_id),
            count=len(handovers),
        )
        self.stop()

    def _leave_notice(self, peer: int, data: Any) -> Deferred[Any]:
        body = bodies.LeaveReq(self.node_id, data.encode()).encode()
        return self._request(Destination.node(peer), MessageCode.LEAVE_REQ, body)

    def stop(self) -> None:
        """Stop at once: cancel timers, fail outstanding requests, close links."""
        self.state = NodeState.STOPPED
        for call in self._periodic:
            if call.active():
                call.cancel()
        self._periodic = []
        if self._neighbour_update_call is not None and self._neighbour_update_call.active():
            self._neighbour_update_call.cancel()
        self.transactions.fail_all(lambda: NotConnected("the node is stopping"))
        for pending in list(self._connecting.values()):
            pending.cancel()
        for link in self._all_links():
            link.close()

    # ------------------------------------------------------------------
    # periodic work

    def _schedule_periodic(self) -> None:
        self._periodic = [
            self.clock.callLater(
                self._jitter(self.config.update_interval_seconds), self._stabilize
            ),
            self.clock.callLater(self._jitter(self.config.ping_interval_seconds), self._keepalive),
        ]

    def _jitter(self, seconds: float) -> float:
        # Spread periodic work so a ring started at once does not pulse.
        return seconds * (0.75 + 0.5 * self.random.random())

    def _reschedule(self, function: Callable[[], None], seconds: float) -> None:
        if self.state in (NodeState.STOPPED, NodeState.LEAVING):
            return
        self._periodic = [c for c in self._periodic if c.active()]
        self._periodic.append(self.clock.callLater(self._jitter(seconds), function))

    def _stabilize(self) -> None:
        """Send Updates to the neighbours, repair fingers, expire and re-replicate data."""
        try:
            if self.state == NodeState.JOINED:
                self._relink_neighbours()
                self._learn_neighbour_addresses()
                self._send_updates()
                self._repair_fingers()
            expired = self.store.expire(self.clock.seconds())
            if expired:
                self.log.debug("expired {count} stored values", count=expired)
            self._replicate_all()
            self._forget_old_failures()
        except Exception:
            self.log.failure("stabilisation round failed")
        self._reschedule(self._stabilize, self.config.update_interval_seconds)

    def _relink_neighbours(self) -> None:
        """
        Reconnect to neighbours whose links are gone, or drop them.

        A neighbour must always have a live link (that is how Updates and
        keepalives reach it); a link can vanish in ways that do not say
        whether the peer is still there (the far end closing it as idle,
        a duplicate link replaced by the other), so ask again.
        """
        for peer in list(self.topology.neighbours()):
            if self.has_link(peer):
                continue
            self._ensure_link(peer).addErrback(self._relink_failed, peer)

    def _learn_neighbour_addresses(self) -> None:
        """
        Ask neighbours that linked to us for their listener's address.

        A peer that connected to us (or that we reached through a bootstrap
        endpoint) never told us where it listens; an Attach over the link
        we have asks for its candidate and tells it ours.  The addresses
        go into the known-peers list a restarted node rejoins through.
        """
        for peer in self.topology.neighbours():
            link = self.link_for(peer)
            if peer in self.addresses or link is None or peer in self._asking_address:
                continue
            self._asking_address.add(peer)
            d = self._request(
                Destination.node(peer),
                MessageCode.ATTACH_REQ,
                self._attach_request(),
                first_link=link,
            )

            d.addBoth(self._address_answered, peer)

    def _address_answered(self, outcome: Answer | Failure, peer: int) -> None:
        self._asking_address.discard(peer)
        if isinstance(outcome, Failure):
            self.log.debug(
                "neighbour {peer} did not tell its address: {why}",
                peer=id_short(peer),
                why=outcome.getErrorMessage(),
            )
        elif outcome.responder == peer:
            self._remember_candidates(peer, outcome.body)

    def _relink_failed(self, failure: Failure, peer: int) -> None:
        self.log.debug(
            "lost neighbour {peer}: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )
        self._peer_failed(peer)

    def _keepalive(self) -> None:
        """Ping quiet links; declare peers dead whose links stay silent."""
        now = self.clock.seconds()
        interval = self.config.ping_interval_seconds
        try:
            for peer, links in list(self.links.items()):
                for link in list(links):
                    quiet = now - link.last_received_at
                    if quiet > 2 * interval + self.config.request_timeout_seconds:
                        self.log.info(
                            "peer {peer} silent for {seconds:.0f} s: closing its link",
                            peer=id_short(peer),
                            seconds=quiet,
                        )
                        self._drop_link(link)
                        if not self.has_link(peer):
                            self._peer_failed(peer)
                    elif quiet > interval and peer not in self._pinging:
                        self._ping_link(link, peer)
                    elif (
                        peer not in self.topology.known_peers()
                        and now - max(link.last_received_at, link.last_sent_at)
                        > self.config.idle_link_seconds
                    ):
                        self._drop_link(link)
            for link in list(self.unidentified_links):
                if now - link.created_at > self.config.request_timeout_seconds:
                    self.unidentified_links.discard(link)
                    link.close()
        except Exception:
            self.log.failure("keepalive round failed")
        self._reschedule(self._keepalive, interval / 2)

    def _ping_link(self, link: Link, peer: int) -> None:
        self._pinging.add(peer)
        d = self._request(
            Destination.node(peer), MessageCode.PING_REQ, bodies.PingReq().encode(), first_link=link
        )

        def done(result: object) -> None:
            self._pinging.discard(peer)
            if isinstance(result, Failure):
                self.log.info("peer {peer} did not answer a keepalive", peer=id_short(peer))
                self._drop_link(link)
                if not self.has_link(peer):
                    self._peer_failed(peer)

        d.addBoth(done)

    def _forget_old_failures(self) -> None:
        horizon = self.clock.seconds() - self.config.failed_peer_memory_seconds
        for peer, when in list(self.recently_failed.items()):
            if when < horizon:
                del self.recently_failed[peer]

    # ------------------------------------------------------------------
    # links

    def _all_links(self) -> list[Link]:
        every = [link for links in self.links.values() for link in links]
        return every + list(self.unidentified_links)

    def link_for(self, peer: int) -> Link | None:
        """
        The open link to ``peer`` that last carried something from it.

        A peer can have two links for a while (both sides connected at once,
        or it restarted and connected again before the old link was found
        dead); the one that hears from the peer is the one that works.
        """
        best: Link | None = None
        for link in self.links.get(peer, ()):
            if not link.closed and (best is None or link.last_received_at > best.last_received_at):
                best = link
        return best

    def has_link(self, peer: int) -> bool:
        return self.link_for(peer) is not None

    def link_established(self, link: Link) -> None:
        self.unidentified_links.add(link)
        self._count("links_opened")

    def link_lost(self, link: Link) -> None:
        self.unidentified_links.discard(link)
        peer = link.peer_id
        if peer is None:
            return
        links = self.links.get(peer)
        if links is None or link not in links:
            return  # dropped on purpose (see _drop_link), not a failure
        links.remove(link)
        if not links:
            del self.links[peer]
            if self.state not in (NodeState.STOPPED, NodeState.LEAVING):
                self._peer_failed(peer)

    def _drop_link(self, link: Link) -> None:
        peer = link.peer_id
        if peer is not None and link in self.links.get(peer, []):
            self.links[peer].remove(link)
            if not self.links[peer]:
                del self.links[peer]
        self.unidentified_links.discard(link)
        link.close()

    def _identify(self, link: Link, peer: int) -> None:
        if link.peer_id is not None:
            return
        link.peer_id = peer
        self.unidentified_links.discard(link)
        self.links.setdefault(peer, []).append(link)

    def _hello(self, link: Link, expected: int | None = None) -> Deferred[Any]:
        """Ping across a new link so both ends learn each other's Node-ID."""
        target = WILDCARD_NODE_ID if expected is None else expected

        def identified(answer: Answer) -> Link:
            if expected is not None and answer.responder != expected:
                link.close()
                raise UnexpectedPeer(
                    f"expected peer {id_short(expected)} answered as {id_short(answer.responder)}"
                )
            self._identify(link, answer.responder)
            return link

        d = self._request(
            Destination.node(target),
            MessageCode.PING_REQ,
            bodies.PingReq().encode(),
            first_link=link,
        )
        return d.addCallback(identified)

    def _ensure_link(self, peer: int, informant: Link | None = None) -> Deferred[Link]:
        """A live link to ``peer``: reuse one, or Attach and connect."""
        existing = self.link_for(peer)
        if existing is not None:
            return succeed(existing)
        if peer in self._connecting:
            waiting: Deferred[Link] = Deferred()

            def relay(result: object) -> object:
                if isinstance(result, Failure):
                    waiting.errback(result)
                else:
                    waiting.callback(cast(Link, result))
                return result

            self._connecting[peer].addBoth(relay)
            return waiting
        d = self._connect_peer(peer, informant)
        self._connecting[peer] = d

        def finished(result: object) -> object:
            self._connecting.pop(peer, None)
            return result

        d.addBoth(finished)
        return d

    @inlineCallbacks
    def _connect_peer(self, peer: int, informant: Link | None = None) -> Any:
        address = self.addresses.get(peer)
        if address is None:
            # Send the Attach through the peer that told us about this one
            # when we can: our own tables may route its id to ourselves (it
            # would be our new predecessor) or to a peer that has not heard
            # of it yet, while the informant knows the way.
            if informant is not None and informant.closed:
                informant = None
            answer = yield self._request(
                Destination.node(peer),
                MessageCode.ATTACH_REQ,
                self._attach_request(),
                first_link=informant,
            )
            if answer.responder != peer:
                raise OverlayError(f"peer {id_short(peer)} is not in the ring")
            self._remember_candidates(peer, answer.body)
            address = self.addresses[peer]
            existing = self.link_for(peer)
            if existing is not None:
                return existing
        link = yield self.connector.connect(self, address[0], address[1], peer_id=peer)
        try:
            yield self._hello(link, expected=peer)
        except UnexpectedPeer:
            # A private or loopback candidate can lead to another node, or
            # back to ourselves.  A connector that can also reach a peer by
            # its Node-ID (through the mediator) gets one more try that way.
            avoid_direct = getattr(self.connector, "direct_reached_wrong_peer", None)
            if avoid_direct is None or getattr(link, "path", "connect") != "connect":
                raise
            self.log.info(
                "candidate {address} of {peer} leads to another node; reaching it by Node-ID instead",
                address=f"{address[0]}:{address[1]}",
                peer=id_short(peer),
            )
            avoid_direct(peer)
            link = yield self.connector.connect(self, address[0], address[1], peer_id=peer)
            yield self._hello(link, expected=peer)
        return link

    def _attach_request(self) -> bytes:
        return bodies.AttachReq(b"", b"", b"passive", (self._candidate,)).encode()

    def set_advertised_address(self, host: str, port: int) -> None:
        """Where other peers reach our overlay listener (known once it listens)."""
        self.advertised_host, self.advertised_port = host, port
        self._candidate = host_candidate(host, port)

    def _remember_candidates(self, peer: int, attach: Any) -> None:
        for candidate in attach.candidates:
            self.addresses[peer] = (candidate.address.host, candidate.address.port)
            return

    # ------------------------------------------------------------------
    # sending

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _encode(
        self,
        code: int,
        body: bytes,
        destinations: tuple[Destination, ...],
        transaction_id: int,
        extra_certificates: Iterable[bytes] = (),
    ) -> bytes:
        contents = encode_contents(code, body, ())
        signer = self.identity.signer_identity()
        signature = self.identity.sign(
            message_signature_input(self.overlay, transaction_id, contents, signer)
        )
        certificates = [GenericCertificate(0, self.identity.certificate_der)]
        certificates += [GenericCertificate(0, der) for der in extra_certificates]
        header = ForwardingHeader(
            overlay=self.overlay,
            configuration_sequence=0,
            version=RELOAD_VERSION,
            ttl=self.config.initial_ttl,
            fragment=FRAGMENT_UNFRAGMENTED,
            transaction_id=transaction_id,
            max_response_length=0,
            via_list=(),
            destination_list=destinations,
            options=(),
        )
        message = Message(header, code, body, (), SecurityBlock(tuple(certificates), signature))
        return encode_message(message)

    def _first_hop(self, destination: Destination, avoid: Link | None = None) -> Link | None:
        assert isinstance(destination.value, int)
        target = destination.value
        if destination.type == DestinationType.NODE and avoid is None:
            direct = self.link_for(target)
            if direct is not None:
                return direct
        avoided = avoid.peer_id if avoid is not None else None
        hop = self.topology.next_hop(
            target, usable=lambda peer: peer != avoided and self.has_link(peer)
        )
        return self.link_for(hop) if hop is not None else None

    def _request(
        self,
        destination: Destination,
        code: int,
        body: bytes,
        first_link: Link | None = None,
        extra_certificates: Iterable[bytes] = (),
    ) -> Deferred[Answer]:
        """Send a request and return a Deferred of its decoded :class:`Answer`."""
        transaction_id = self.transactions.new_transaction_id()
        data = self._encode(code, body, (destination,), transaction_id, extra_certificates)
        describe = f"{MessageCode(code).name} to {id_short(destination.value) if isinstance(destination.value, int) else '?'}"
        pending = self.transactions.add(transaction_id, code, data, describe)
        link = first_link or self._first_hop(destination)
        if link is None:
            self.transactions.complete(transaction_id)
            assert isinstance(destination.value, int)
            if self.topology.is_responsible(destination.value):
                return fail(
                    OverlayError(f"{describe}: this node itself is responsible for that id")
                )
            return fail(
                NotConnected(f"no route for {describe}: this node has no usable link into the ring")
            )
        pending.first_hop = link.peer_id
        self._count("requests_sent")
        link.send(data)
        if self.request_observers:
            started = self.clock.seconds()

            def observe(outcome: object) -> object:
                seconds = self.clock.seconds() - started
                for observer in list(self.request_observers):
                    observer(MessageCode(code).name, seconds, not isinstance(outcome, Failure))
                return outcome

            pending.deferred.addBoth(observe)
        return pending.deferred

    def _resend_after_failure(self, failed_peer: int) -> None:
        for pending in self.transactions.sent_via(failed_peer):
            if pending.retries_left <= 0:
                continue
            header = peek_header(pending.data, self.config.limits)
            link = self._first_hop(header.destination_list[0])
            if link is None or link.peer_id == failed_peer:
                continue
            pending.retries_left -= 1
            pending.first_hop = link.peer_id
            self._count("requests_resent")
            link.send(pending.data)

    # ------------------------------------------------------------------
    # receiving and forwarding

    def message_received(self, link: Link, data: bytes) -> None:
        self._count("messages_received")
        try:
            header, code = peek_code(data, self.config.limits)
        except DecodeError as error:
            self._count("malformed_messages")
            self.log.debug(
                "dropped malformed message from {address}: {why}",
                address=link.remote_address,
                why=error,
            )
            return
        if header.overlay != self.overlay:
            self._count("wrong_overlay")
            self.log.debug(
                "dropped message for another overlay from {address}", address=link.remote_address
            )
            return
        try:
            self._route(link, data, header, is_request(code))
        except Exception:
            self.log.failure("while routing a message from {address}", address=link.remote_address)

    def _route(self, link: Link, data: bytes, header: ForwardingHeader, request: bool) -> None:
        destinations = header.destination_list
        if not destinations:
            self._count("malformed_messages")
            return
        first = destinations[0]
        if (
            request
            and not header.via_list
            and link.peer_id is not None
            and link.peer_id != self.node_id
            and first.type == DestinationType.NODE
            and first.value == link.peer_id
        ):
            # A peer asking, over its own link, for the owner of its own
            # Node-ID is joining (RFC 6940 s10.5's Attach); if we still hold
            # it in our tables it has restarted and lost its old place.
            self._peer_rejoining(link.peer_id, link)
        if first.type == DestinationType.NODE and first.value in (self.node_id, WILDCARD_NODE_ID):
            rest = destinations[1:]
            if not rest:
                self._deliver(link, data, header)
                return
            header = evolve(header, destination_list=rest)
            data = replace_header(data, header)
            first = rest[0]
        elif self._delivers_locally(first, link):
            self._deliver(link, data, header)
            return
        self._forward(link, data, header, first, request)

    def _in_ring(self) -> bool:
        """Whether we answer for our range: a member, or a newcomer its admitting peer has handed its range."""
        return self.state in (NodeState.JOINED, NodeState.ALONE) or (
            self.state == NodeState.JOINING and self._admitted
        )

    def _delivers_locally(self, destination: Destination, link: Link) -> bool:
        if not self._in_ring():
            # A peer that is still joining (or stopping) holds no range: it
            # must not answer Fetches "not found" for data it never got.  It
            # does answer a new link's first Ping for whatever Node-ID the
            # sender expected, so that the sender learns who is really there
            # (a loopback candidate that led back to ourselves).
            return destination.type == DestinationType.NODE and link.peer_id is None
        if destination.type == DestinationType.RESOURCE:
            assert isinstance(destination.value, int)
            return self.topology.is_responsible(destination.value)
        if destination.type == DestinationType.NODE:
            assert isinstance(destination.value, int)
            if destination.value in self.topology.known_peers() and self.has_link(
                destination.value
            ):
                return False
            # A request to a Node-ID that is not in the ring is delivered to
            # the peer responsible for that id (how Attach finds the
            # admitting peer and finger targets find their peers).
            return self.topology.is_responsible(destination.value)
        return False

    def _forward(
        self,
        link: Link,
        data: bytes,
        header: ForwardingHeader,
        destination: Destination,
        request: bool,
    ) -> None:
        previous = link.peer_id
        if previous is None:
            self._count("dropped_unidentified")
            self.log.debug(
                "not forwarding for an unidentified link from {address}",
                address=link.remote_address,
            )
            return
        via_ids = {v.value for v in header.via_list}
        if self.node_id in via_ids:
            self._count("loops_detected")
            self.log.debug(
                "dropped a looping message {txid:x} for {target} via {via}",
                txid=header.transaction_id,
                target=id_short(int(destination.value))
                if isinstance(destination.value, int)
                else "?",
                via=[id_short(int(v.value)) for v in header.via_list if isinstance(v.value, int)],
            )
            return
        if header.ttl <= 1:
            self._count("ttl_exceeded")
            self._error_for_undeliverable(link, data, ErrorCode.TTL_EXCEEDED, "TTL exceeded")
            return
        if len(header.via_list) + 1 > self.config.limits.max_via:
            self._count("ttl_exceeded")
            self._error_for_undeliverable(link, data, ErrorCode.TTL_EXCEEDED, "via list too long")
            return
        next_link = None
        if destination.type == DestinationType.NODE:
            assert isinstance(destination.value, int)
            # Answers retrace the request's path over direct links.  Requests
            # take a direct link only to a ring member: a peer that is still
            # joining may be linked to us, yet its own Node-ID must reach the
            # peer that owns it, not the joining peer itself.
            if not request or destination.value in self.topology.known_peers():
                next_link = self.link_for(destination.value)
        if next_link is None or next_link is link:
            # A request that came from the very peer it is addressed to (a
            # joining peer's Attach to its own Node-ID) must go round the ring.
            next_link = self._first_hop(destination, avoid=link)
        if next_link is None or next_link is link:
            self._count("unroutable")
            self._error_for_undeliverable(
                link, data, ErrorCode.NOT_FOUND, "no route to destination"
            )
            return
        forwarded = evolve(
            header,
            ttl=header.ttl - 1,
            via_list=header.via_list + (Destination.node(previous),),
        )
        self._count("messages_forwarded")
        next_link.send(replace_header(data, forwarded))

    def _error_for_undeliverable(self, link: Link, data: bytes, code: int, reason: str) -> None:
        try:
            message = decode_message(data, self.config.limits)
        except DecodeError:
            return
        if is_request(message.code):
            self._reply_error(link, message, code, reason)

    def _deliver(self, link: Link, data: bytes, header: ForwardingHeader) -> None:
        try:
            message = decode_message(data, self.config.limits)
        except DecodeError as error:
            self._count("malformed_messages")
            self.log.debug(
                "dropped undecodable message from {address}: {why}",
                address=link.remote_address,
                why=error,
            )
            return
        try:
            for certificate in message.security.certificates:
                self.certificates.add(certificate.certificate)
            signer = self.certificates.verify(
                message.security.signature,
                message_signature_input(
                    message.header.overlay,
                    message.header.transaction_id,
                    encode_contents(message.code, message.body, message.extensions),
                    message.security.signature.identity,
                ),
            )
        except SignatureError as error:
            self._count("bad_signatures")
            self.log.debug(
                "dropped message with a bad signature from {address}: {why}",
                address=link.remote_address,
                why=error,
            )
            return
        if link.peer_id is None and not message.header.via_list:
            self._identify(link, signer)
        if is_request(message.code):
            self._handle_request(link, message, signer)
        else:
            self._handle_answer(link, message, signer)

    def _handle_answer(self, link: Link, message: Message, signer: int) -> None:
        pending = self.transactions.complete(message.header.transaction_id)
        if pending is None:
            self._count("unmatched_answers")
            return
        hops = [v.value for v in message.header.via_list]
        if link.peer_id is not None:
            hops.append(link.peer_id)
        route = (self.node_id,) + tuple(int(h) for h in reversed(hops))
        if message.code == MessageCode.ERROR:
            try:
                error = bodies.ErrorResponse.decode(message.body, self.config.limits)
                reason, code = error.reason_phrase, error.error_code
            except DecodeError:
                reason, code = "undecodable error", ErrorCode.INVALID_MESSAGE
            pending.deferred.errback(
                RequestFailed(f"peer {id_short(signer)} answered: {reason}", code)
            )
            return
        try:
            body = self._decode_answer_body(pending.code, message)
        except DecodeError as error:
            pending.deferred.errback(
                OverlayError(f"undecodable answer from {id_short(signer)}: {error}")
            )
            return
        except Exception as error:
            # Whatever happens, the caller waiting on this transaction must hear of it.
            self.log.failure("while decoding an answer from {peer}", peer=id_short(signer))
            pending.deferred.errback(
                OverlayError(f"unreadable answer from {id_short(signer)}: {error}")
            )
            return
        pending.deferred.callback(Answer(message, body, signer, route))

    def _decode_answer_body(self, request_code: int, message: Message) -> Any:
        return bodies.decode_body(message.code, message.body, self.config.limits, self.data_models)

    # ------------------------------------------------------------------
    # answering requests

    def _reply(
        self,
        link: Link,
        request: Message,
        code: int,
        body: bytes,
        extra_certificates: Iterable[bytes] = (),
    ) -> None:
        path = [v.value for v in request.header.via_list]
        if link.peer_id is not None:
            path.append(link.peer_id)
        if not path:
            return
        destinations = tuple(Destination.node(int(hop)) for hop in reversed(path))
        link.send(
            self._encode(
                code, body, destinations, request.header.transaction_id, extra_certificates
            )
        )

    def _reply_error(self, link: Link, request: Message, code: int, reason: str) -> None:
        self._count("errors_sent")
        body = bodies.ErrorResponse(code, reason[:255]).encode()
        self._reply(link, request, MessageCode.ERROR, body)

    def _handle_request(self, link: Link, message: Message, signer: int) -> None:
        self._count("requests_received")
        handler = self._handlers().get(message.code)
        if handler is None:
            self._reply_error(
                link, message, ErrorCode.INVALID_MESSAGE, f"unsupported message code {message.code}"
            )
            return
        try:
            result = handler(link, message, signer)
        except _RequestError as error:
            self._reply_error(link, message, error.code, error.reason)
            return
        except UnknownKindError as error:
            self._reply_error(link, message, ErrorCode.UNKNOWN_KIND, str(error))
            return
        except StoreError as error:
            self._reply_error(link, message, error.error_code, error.reason)
            return
        except DecodeError as error:
            self._count("malformed_messages")
            self._reply_error(link, message, ErrorCode.INVALID_MESSAGE, str(error))
            return
        except Exception:
            self.log.failure("while answering {code}", code=message.code)
            self._reply_error(link, message, ErrorCode.INVALID_MESSAGE, "internal error")
            return
        if isinstance(result, Deferred):

            def answered(outcome: object) -> None:
                if isinstance(outcome, Failure):
                    error = outcome.value
                    if isinstance(error, _RequestError):
                        self._reply_error(link, message, error.code, error.reason)
                    elif isinstance(error, StoreError):
                        self._reply_error(link, message, error.error_code, error.reason)
                    else:
                        self.log.failure("while answering {code}", outcome, code=message.code)
                        self._reply_error(
                            link, message, ErrorCode.INVALID_MESSAGE, "internal error"
                        )
                    return
                answer = cast(tuple[int, bytes, tuple[bytes, ...]], outcome)
                self._reply(link, message, answer[0], answer[1], answer[2])

            result.addBoth(answered)
        elif result is not None:
            code, body, certs = result
            self._reply(link, message, code, body, certs)

    def _handlers(self) -> dict[int, Callable[[Link, Message, int], Any]]:
        return {
            MessageCode.PING_REQ: self._on_ping,
            MessageCode.ATTACH_REQ: self._on_attach,
            MessageCode.APP_ATTACH_REQ: self._on_app_attach,
            MessageCode.JOIN_REQ: self._on_join,
            MessageCode.UPDATE_REQ: self._on_update,
            MessageCode.LEAVE_REQ: self._on_leave,
            MessageCode.ROUTE_QUERY_REQ: self._on_route_query,
            MessageCode.PROBE_REQ: self._on_probe,
            MessageCode.STORE_REQ: self._on_store,
            MessageCode.FETCH_REQ: self._on_fetch,
            MessageCode.STAT_REQ: self._on_stat,
        }

    def _on_ping(self, link: Link, message: Message, signer: int) -> Any:
        answer = bodies.PingAns(secrets.randbits(64), int(self.clock.seconds() * 1000))
        return MessageCode.PING_ANS, answer.encode(), ()

    def _on_attach(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.AttachReq.decode(message.body, self.config.limits)
        self._remember_candidates(signer, request)
        answer = bodies.AttachAns(b"", b"", b"active", (self._candidate,))
        return MessageCode.ATTACH_ANS, answer.encode(), ()

    def _on_app_attach(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.AppAttachReq.decode(message.body, self.config.limits)
        address = self.applications.get(request.application)
        if address is None:
            raise _RequestError(
                ErrorCode.NOT_FOUND, f"application {request.application} not served here"
            )
        answer = bodies.AppAttachAns(
            b"", b"", request.application, b"active", (host_candidate(address[0], address[1]),)
        )
        return MessageCode.APP_ATTACH_ANS, answer.encode(), ()

    def _on_join(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.JoinReq.decode(message.body, self.config.limits)
        joining = request.joining_peer_id
        if joining != signer:
            raise _RequestError(ErrorCode.FORBIDDEN, "a peer may only join under its own Node-ID")
        if self.state not in (NodeState.JOINED, NodeState.ALONE):
            raise _RequestError(ErrorCode.IN_PROGRESS, "this peer is not in the ring yet")
        if not self.topology.is_responsible(joining):
            raise _RequestError(ErrorCode.FORBIDDEN, "not the admitting peer for that Node-ID")
        self._identify(link, joining)
        self.clock.callLater(0, self._admit, joining)
        return MessageCode.JOIN_ANS, bodies.JoinAns().encode(), ()

    @inlineCallbacks
    def _admit(self, joining: int) -> Any:
        """
        Hand the joining peer its data, then our neighbour table (RFC 6940 s10.5).

        The data goes first and must arrive before the Update that lets the
        newcomer take its range: a peer that answered Fetches for a range it
        does not hold yet would report stored values as missing.  If the
        newcomer cannot be reached for part of it, it is not admitted (its
        join times out and it asks again); we keep every value either way,
        so the range stays whole at this peer and its replicas.  Values
        stored here for that range while the hand-over travelled are sent
        once more after the newcomer has taken the range.
        """
        previous = self.topology.predecessor

        def moves(resource: int) -> bool:
            if previous is None:
                # Alone, we own the whole ring; the newcomer takes (us, it].
                return not between_right_inclusive(resource, joining, self.node_id)
            return between_right_inclusive(resource, previous, joining)

        moving = [resource for resource in self.store.resources() if moves(resource)]
        versions = {resource: self.store.version(resource) for resource in moving}
        handed = yield self._hand_over(joining, moving)
        if handed.unreachable:
            self.log.warn(
                "could not hand joining peer {peer} {count} of its {total} resources ({why}); "
                "not admitting it until it asks again",
                peer=id_short(joining),
                count=handed.unreachable,
                total=len(moving),
                why=handed.reason,
            )
            return
        update = bodies.UpdateReq(
            uptime=int(self.clock.seconds() - self.started_at),
            type=bodies.ChordUpdateType.FULL,
            predecessors=tuple(self.topology.predecessors),
            successors=tuple(self.topology.successors),
            fingers=tuple(sorted(set(self.topology.fingers.values()))),
        )
        try:
            yield self._request(Destination.node(joining), MessageCode.UPDATE_REQ, update.encode())
        except OverlayError as error:
            self.log.info(
                "joining peer {peer} did not take our Update: {why}",
                peer=id_short(joining),
                why=error,
            )
            return
        if self.state == NodeState.ALONE:
            self.state = NodeState.JOINED
        self._add_neighbours([joining])
        late = [
            resource
            for resource in self.store.resources()
            if moves(resource) and self.store.version(resource) != versions.get(resource)
        ]
        if late:
            yield self._hand_over(joining, late)
        self.log.info(
            "admitted peer {peer} ({count} resources handed over)",
            peer=id_short(joining),
            count=len(moving) + len(late),
        )

    def _hand_over(self, peer: int, resources: Iterable[int]) -> Deferred[HandOver]:
        """
        Copy whole resources to a peer that takes them over (a newcomer, or
        our successor when we leave), a few Stores in flight at a time.

        Hand-over Stores carry a non-zero replica_number, as replicas do: the
        receiver takes our generation counters instead of checking them
        (they are ours, not the writer's), and merges rather than refusing
        when it already holds a newer version of some value.
        """
        result = HandOver()
        window = DeferredSemaphore(HAND_OVER_WINDOW)

        def one(resource: int) -> Deferred[Any]:
            def failed(failure: Failure) -> None:
                if failure.check(RequestFailed):
                    result.refused += 1
                    self.log.warn(
                        "peer {peer} refused the hand-over of resource {resource}: {why}",
                        peer=id_short(peer),
                        resource=id_short(resource),
                        why=failure.getErrorMessage(),
                    )
                else:
                    result.unreachable += 1
                    result.reason = failure.getErrorMessage()

            return self._send_store(peer, resource, HAND_OVER_REPLICA_NUMBER).addErrback(failed)

        sends = [window.run(one, resource) for resource in resources]
        return DeferredList(sends, consumeErrors=True).addCallback(lambda _: result)

    def _on_update(self, link: Link, message: Message, signer: int) -> Any:
        update = bodies.UpdateReq.decode(message.body, self.config.limits)
        learned = {signer, *update.predecessors, *update.successors}
        learned.discard(self.node_id)
        if self.state == NodeState.JOINING:
            if (
                signer == self._admitting
                and update.type == bodies.ChordUpdateType.FULL
                and self._joined is not None
                and not self._joined.called
            ):
                self._finish_join(signer, update, learned)
                return MessageCode.UPDATE_ANS, bodies.UpdateAns().encode(), ()
            # Until our admitting peer has handed us our range we are not a
            # member: a peer that takes us for one must not list us yet.
            raise _RequestError(ErrorCode.IN_PROGRESS, "this peer is still joining the ring")
        if self.state in (NodeState.JOINED, NodeState.ALONE):
            if self.state == NodeState.ALONE:
                self.state = NodeState.JOINED
            if not message.header.via_list:
                # Sent by the peer at the other end of the link: it is alive
                # and in the ring (peers send Updates only once admitted),
                # whatever we believed of it before (a peer that restarted).
                learned.discard(signer)
                self.recently_failed.pop(signer, None)
                self.unreachable_until.pop(signer, None)
                if signer not in self.topology.neighbours() and self._would_be_neighbour(signer):
                    self._add_neighbours([signer])
            self._consider_peers(learned, informant=link)
            if signer not in self.topology.neighbours() and self._knows_closer_peers(
                signer, update
            ):
                # The sender counts us as its neighbour but we know peers
                # closer to it than some it lists: tell it what we know
                # (Chord's "ask your successor for its predecessor").
                self._send_update_to(signer, link)
        return MessageCode.UPDATE_ANS, bodies.UpdateAns().encode(), ()

    def _knows_closer_peers(self, sender: int, update: Any) -> bool:
        probe = ChordTopology(
            sender, self.topology.successor_count, self.topology.predecessor_count
        )
        probe.add_peers([*update.predecessors, *update.successors])
        before = (list(probe.successors), list(probe.predecessors))
        probe.add_peers(self.topology.neighbours() | {self.node_id})
        return before != (probe.successors, probe.predecessors)

    def _send_update_to(self, peer: int, link: Link | None = None) -> None:
        now = self.clock.seconds()
        if self.corrections_sent.get(peer, -1e9) > now - self.config.update_interval_seconds / 2:
            return
        self.corrections_sent[peer] = now
        self._send_updates(only=[peer], link=link)

    @inlineCallbacks
    def _finish_join(self, admitting: int, update: Any, learned: set[int]) -> Any:
        # Our range is (the admitting peer's predecessor, us]: it has handed
        # that range over before sending this Update, so we answer for it
        # from now on instead of bouncing requests back to it while we link
        # to the rest of the neighbourhood.
        self._admitted = True
        predecessors = [peer for peer in update.predecessors if peer != self.node_id]
        self.topology.add_peers([admitting, *predecessors[:1]])
        others = sorted(learned - {admitting})
        informant = self.link_for(admitting)
        results = yield DeferredList(
            [self._ensure_link(peer, informant) for peer in others], consumeErrors=True
        )
        for peer, (ok, _) in zip(others, results):
            if ok:
                self.topology.add_peers([peer])
            else:
                self.topology.remove_peer(peer)
        self.state = NodeState.JOINED
        # Tell the admitting peer we are ready to route (RFC 6940 s10.5's
        # peer_ready), then give every neighbour our neighbour table.
        ready = bodies.UpdateReq(
            uptime=int(self.clock.seconds() - self.started_at),
            type=bodies.ChordUpdateType.PEER_READY,
        ).encode()
        admitting_link = self.link_for(admitting)
        if admitting_link is not None:
            self._request(
                Destination.node(admitting),
                MessageCode.UPDATE_REQ,
                ready,
                first_link=admitting_link,
            ).addErrback(self._update_failed, admitting)
        self._send_updates()
        self._repair_fingers()
        if self._joined is not None and not self._joined.called:
            self._joined.callback(None)

    def _consider_peers(self, peers: Iterable[int], informant: Link | None = None) -> None:
        """
        Link to peers we hear about that would improve our neighbour table.

        Hearsay is not enough to list a peer: others' tables can name a peer
        that has died, or one that restarted and has not been admitted
        again.  So we link to it and send it our Update, and list it only if
        it takes the Update (a peer still joining answers Error_In_Progress,
        and will announce itself once admitted).
        """
        for peer in peers:
            if peer == self.node_id or peer in self.recently_failed:
                continue
            if self.unreachable_until.get(peer, 0.0) > self.clock.seconds():
                continue
            if peer in self.topology.neighbours():
                continue
            if not self._would_be_neighbour(peer):
                continue
            self._ensure_link(peer, informant).addCallback(self._confirm_member, peer).addCallbacks(
                lambda _, p=peer: self._add_neighbours([p]),
                lambda failure, p=peer: self._note_unreachable(p, failure),
            )

    def _confirm_member(self, link: Link, peer: int) -> Deferred[Answer]:
        """Send ``peer`` our neighbour table; fires if it answers as a member of the ring."""
        return self._request(
            Destination.node(peer),
            MessageCode.UPDATE_REQ,
            self._neighbours_update(),
            first_link=link,
        )

    def _would_be_neighbour(self, peer: int) -> bool:
        probe = ChordTopology(
            self.node_id, self.topology.successor_count, self.topology.predecessor_count
        )
        probe.successors = list(self.topology.successors)
        probe.predecessors = list(self.topology.predecessors)
        probe.add_peers([peer])
        return peer in probe.successors or peer in probe.predecessors

    def _note_unreachable(self, peer: int, failure: Failure) -> None:
        # Not a proven failure (the Attach may have raced a join elsewhere):
        # try again after a short back-off rather than shunning the peer.
        self.unreachable_until[peer] = self.clock.seconds() + self.config.ping_interval_seconds
        self.log.debug(
            "peer {peer} unreachable: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )

    def _add_neighbours(self, peers: Iterable[int]) -> None:
        if self.topology.add_peers(peers):
            self._neighbours_changed()

    def _on_leave(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.LeaveReq.decode(message.body, self.config.limits)
        if request.leaving_peer_id != signer:
            raise _RequestError(ErrorCode.FORBIDDEN, "a peer may only announce its own Leave")
        try:
            data = bodies.ChordLeaveData.decode(request.overlay_specific, self.config.limits)
            replacements = set(data.node_ids)
        except DecodeError:
            replacements = set()
        self.log.info("peer {peer} is leaving", peer=id_short(signer))
        self.recently_failed[signer] = self.clock.seconds()
        if self.topology.remove_peer(signer):
            self._neighbours_changed()
        self.addresses.pop(signer, None)
        self.clock.callLater(0, self._consider_peers, replacements - {signer}, link)
        return MessageCode.LEAVE_ANS, bodies.LeaveAns().encode(), ()

    def _on_route_query(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.RouteQueryReq.decode(message.body, self.config.limits)
        target = (
            request.destination.value
            if isinstance(request.destination.value, int)
            else self.node_id
        )
        hop = self.topology.next_hop(target, usable=self.has_link)
        return (
            MessageCode.ROUTE_QUERY_ANS,
            bodies.RouteQueryAns(hop if hop is not None else self.node_id).encode(),
            (),
        )

    def _on_probe(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.ProbeReq.decode(message.body, self.config.limits)
        info = []
        for wanted in request.requested_info:
            if wanted == bodies.ProbeInformationType.RESPONSIBLE_SET:
                predecessor = self.topology.predecessor
                share = (
                    1.0
                    if predecessor is None
                    else ((self.node_id - predecessor) % (MAX_ID + 1)) / (MAX_ID + 1)
                )
                info.append(bodies.ProbeInformation(wanted, int(share * 1_000_000_000)))
            elif wanted == bodies.ProbeInformationType.NUM_RESOURCES:
                info.append(bodies.ProbeInformation(wanted, len(list(self.store.resources()))))
            elif wanted == bodies.ProbeInformationType.UPTIME:
                info.append(
                    bodies.ProbeInformation(wanted, int(self.clock.seconds() - self.started_at))
                )
        return MessageCode.PROBE_ANS, bodies.ProbeAns(tuple(info)).encode(), ()

    def _on_store(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.StoreReq.decode(message.body, self.config.limits, self.data_models)
        now = self.clock.seconds()
        responses = []
        for kind_data in request.kind_data:
            responses.append(
                self._store_locally(request.resource, kind_data, now, request.replica_number)
            )
        if request.replica_number == 0 and self.topology.is_responsible(request.resource):
            return self._replicate(request.resource, request.kind_data).addCallback(
                lambda replicas: (
                    MessageCode.STORE_ANS,
                    bodies.StoreAns(
                        tuple(
                            bodies.StoreKindResponse(kind, generation, tuple(replicas))
                            for kind, generation in responses
                        )
                    ).encode(),
                    (),
                )
            )
        answer = bodies.StoreAns(
            tuple(bodies.StoreKindResponse(kind, generation, ()) for kind, generation in responses)
        )
        return MessageCode.STORE_ANS, answer.encode(), ()

    def _store_locally(
        self, resource: int, kind_data: Any, now: float, replica_number: int
    ) -> tuple[int, int]:
        response = self.store.store(resource, kind_data, now, replica_number=replica_number)
        return response.kind, response.generation_counter

    def _on_fetch(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.FetchReq.decode(message.body, self.config.limits, self.data_models)
        responses = self.store.fetch(request.resource, request.specifiers, self.clock.seconds())
        certificates = self._signer_certificates(v for r in responses for v in r.values)
        return MessageCode.FETCH_ANS, bodies.FetchAns(tuple(responses)).encode(), certificates

    def _on_stat(self, link: Link, message: Message, signer: int) -> Any:
        request = bodies.StatReq.decode(message.body, self.config.limits, self.data_models)
        responses = self.store.stat(request.resource, request.specifiers, self.clock.seconds())
        return MessageCode.STAT_ANS, bodies.StatAns(tuple(responses)).encode(), ()

    def _signer_certificates(self, values: Iterable[Any]) -> tuple[bytes, ...]:
        """Certificates of the signers of stored values, so receivers can verify them."""
        own = self.identity.certificate_der
        found: dict[bytes, bytes] = {}
        for value in values:
            identity = value.signature.identity
            der = self.certificates.certificate_for(identity.value)
            if der is not None and der != own:
                found[identity.value] = der
        return tuple(found.values())

    # ------------------------------------------------------------------
    # Chord maintenance

    def _neighbours_changed(self) -> None:
        """Coalesce a burst of neighbour changes into one round of Updates."""
        if self._neighbour_update_call is not None and self._neighbour_update_call.active():
            return
        self._neighbour_update_call = self.clock.callLater(0, self._after_neighbour_change)

    def _after_neighbour_change(self) -> None:
        if self.state != NodeState.JOINED:
            return
        self._send_updates()
        self._replicate_all()
        for observer in list(self.neighbour_observers):
            try:
                observer()
            except Exception:
                self.log.failure("neighbour observer {observer!r} failed", observer=observer)

    def _neighbours_update(self) -> bytes:
        return bodies.UpdateReq(
            uptime=int(self.clock.seconds() - self.started_at),
            type=bodies.ChordUpdateType.NEIGHBORS,
            predecessors=tuple(self.topology.predecessors),
            successors=tuple(self.topology.successors),
            fingers=(),
        ).encode()

    def _send_updates(self, only: Iterable[int] | None = None, link: Link | None = None) -> None:
        update = self._neighbours_update()
        for peer in self.topology.neighbours() if only is None else only:
            peer_link = link or self.link_for(peer)
            if peer_link is None:
                continue
            self._request(
                Destination.node(peer), MessageCode.UPDATE_REQ, update, first_link=peer_link
            ).addErrback(self._update_failed, peer)

    def _update_failed(self, failure: Failure, peer: int) -> None:
        self.log.debug(
            "Update to {peer} failed: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )

    def _repair_fingers(self) -> None:
        for index in self.topology.finger_indices_to_repair():
            target = self.topology.finger_target(index)
            self._repair_finger(index, target)

    def _repair_finger(self, index: int, target: int) -> None:
        if self.topology.is_responsible(target):
            self.topology.fingers.pop(index, None)
            return

        def found(answer: Answer) -> Any:
            peer = answer.responder
            if peer == self.node_id:
                return None
            self._remember_candidates(peer, answer.body)
            return self._ensure_link(peer).addCallback(
                lambda _: self.topology.set_finger(index, peer)
            )

        d = self._request(Destination.node(target), MessageCode.ATTACH_REQ, self._attach_request())
        d.addCallback(found)
        d.addErrback(
            lambda failure: self.log.debug(
                "finger {index} repair failed: {why}", index=index, why=failure.getErrorMessage()
            )
        )

    def _peer_rejoining(self, peer: int, link: Link) -> None:
        """Forget a restarted peer's old incarnation: its place, its links, its replicas."""
        stale = [other for other in self.links.get(peer, []) if other is not link]
        if peer not in self.topology.known_peers() and not stale:
            return
        self.log.info(
            "peer {peer} is joining again: forgetting its old place and {count} old links",
            peer=id_short(peer),
            count=len(stale),
        )
        self._count("peers_rejoined")
        for other in stale:
            self._drop_link(other)
        for holders in self.replica_holders.values():
            holders.discard(peer)
        self._resend_after_failure(peer)
        if self.topology.remove_peer(peer):
            self._neighbours_changed()

    def _peer_failed(self, peer: int) -> None:
        if peer == self.node_id:
            return
        self.recently_failed[peer] = self.clock.seconds()
        for holders in self.replica_holders.values():
            holders.discard(peer)
        self._resend_after_failure(peer)
        if self.topology.remove_peer(peer):
            self.log.info("neighbour {peer} failed; repairing", peer=id_short(peer))
            self._neighbours_changed()
            # Ask the surviving neighbours for their view so the lists fill up again.
            for survivor in list(self.topology.neighbours()):
                self._consider_peers([survivor])

    # ------------------------------------------------------------------
    # replication

    def _replicate(self, resource: int, kind_data: Iterable[Any]) -> Deferred[list[int]]:
        """Copy a just-stored value to the next successors; fires with who took it."""
        targets = self.topology.successors[: self.config.replicas]
        if not targets:
            return succeed([])
        sends = [
            self._send_store(peer, resource, number + 1, kind_data=tuple(kind_data))
            for number, peer in enumerate(targets)
        ]

        def collect(results: list[tuple[bool, Any]]) -> list[int]:
            holders = self.replica_holders.setdefault(resource, set())
            done = []
            for peer, (ok, _) in zip(targets, results):
                if ok:
                    holders.add(peer)
                    done.append(peer)
            return done

        return DeferredList(sends, consumeErrors=True).addCallback(collect)

    def _replicate_all(self) -> None:
        """Make sure every value we are primary for sits on our first successors."""
        targets = self.topology.successors[: self.config.replicas]
        for resource in list(self.store.resources()):
            if not self.topology.is_responsible(resource):
                continue
            holders = self.replica_holders.setdefault(resource, set())
            for number, peer in enumerate(targets):
                if peer in holders:
                    continue
                holders.add(peer)
                self._send_store(peer, resource, number + 1).addErrback(
                    self._replication_failed, peer, resource
                )

    def _replication_failed(self, failure: Failure, peer: int, resource: int) -> None:
        # Forget the holder so the next round tries again (or picks another peer).
        self.replica_holders.get(resource, set()).discard(peer)
        self.log.debug(
            "replica to {peer} failed: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )

    def _send_store(
        self,
        peer: int,
        resource: int,
        replica_number: int,
        kind_data: tuple[Any, ...] | None = None,
    ) -> Deferred[Any]:
        if kind_data is None:
            kind_data = self.store.export(resource, self.clock.seconds())
        if not kind_data:
            return succeed(None)
        body = bodies.StoreReq(resource, replica_number, tuple(kind_data)).encode()
        certificates = self._signer_certificates(v for kd in kind_data for v in kd.values)
        return self._request(
            Destination.node(peer), MessageCode.STORE_REQ, body, extra_certificates=certificates
        )

    # ------------------------------------------------------------------
    # the operations users call

    def _stored_data(self, resource: int, kind: int, value: Any, lifetime: int) -> Any:
        storage_time = int(self.clock.seconds() * 1000)
        value_bytes = bodies.encode_stored_value(value)
        signer = self.identity.signer_identity()
        signature = self.identity.sign(
            bodies.stored_data_signature_input(resource, kind, storage_time, value_bytes, signer)
        )
        return bodies.StoredData(storage_time, lifetime, value, signature)

    def store_values(
        self, resource: int, kind: int, values: Iterable[Any], lifetime: int
    ) -> Deferred[OperationResult]:
        """Sign and store values of one kind at the responsible peer."""
        stored = tuple(self._stored_data(resource, kind, value, lifetime) for value in values)
        kind_data = bodies.StoreKindData(kind, 0, stored)
        if self.topology.is_responsible(resource) and self.state in (
            NodeState.JOINED,
            NodeState.ALONE,
        ):
            try:
                self.store.store(resource, kind_data, self.clock.seconds(), replica_number=0)
            except StoreError as error:
                return fail(RequestFailed(error.reason, error.error_code))
            return self._replicate(resource, [kind_data]).addCallback(
                lambda replicas: OperationResult(
                    resource, self.node_id, (self.node_id,), replicas=tuple(replicas)
                )
            )
        body = bodies.StoreReq(resource, 0, (kind_data,)).encode()

        def done(answer: Answer) -> OperationResult:
            replicas = tuple(
                peer for response in answer.body.kind_responses for peer in response.replicas
            )
            return OperationResult(resource, answer.responder, answer.route, replicas=replicas)

        return self._request(
            Destination.resource(resource), MessageCode.STORE_REQ, body
        ).addCallback(done)

    def fetch_values(
        self, resource: int, kind: int, specifier: Any | None = None
    ) -> Deferred[tuple[OperationResult, tuple[Any, ...]]]:
        """Fetch the live values of one kind; fires with (result, StoredData tuple)."""
        specifier = specifier or bodies.StoredDataSpecifier(
            kind, 0, data_model=self.data_models.get(kind)
        )
        if self.topology.is_responsible(resource) and self.state in (
            NodeState.JOINED,
            NodeState.ALONE,
        ):
            responses = self.store.fetch(resource, (specifier,), self.clock.seconds())
            values = tuple(v for r in responses for v in r.values)
            return succeed((OperationResult(resource, self.node_id, (self.node_id,)), values))
        body = bodies.FetchReq(resource, (specifier,)).encode()

        def done(answer: Answer) -> tuple[OperationResult, tuple[Any, ...]]:
            values = tuple(v for r in answer.body.kind_responses for v in r.values)
            for value in values:
                self._verify_stored(resource, r_kind(answer, value), value)
            return OperationResult(resource, answer.responder, answer.route), values

        def r_kind(answer: Answer, value: Any) -> int:
            for response in answer.body.kind_responses:
                if value in response.values:
                    return int(response.kind)
            return kind

        return self._request(
            Destination.resource(resource), MessageCode.FETCH_REQ, body
        ).addCallback(done)

    def _verify_stored(self, resource: int, kind: int, value: Any) -> None:
        """Check a fetched value's signature: the storing peer must not be able to forge it."""
        signed = bodies.stored_data_signature_input(
            resource,
            kind,
            value.storage_time,
            bodies.encode_stored_value(value.value),
            value.signature.identity,
        )
        try:
            self.certificates.verify(value.signature, signed)
        except SignatureError as error:
            raise OverlayError(f"a fetched value has a bad signature: {error}") from error

    def put(self, name: str, value: bytes, lifetime: int = 3600) -> Deferred[OperationResult]:
        """Store a DATA value under a resource name (admin API, demo)."""
        return self.store_values(
            resource_id(name), DATA.kind_id, [bodies.DataValue(True, value)], lifetime
        )

    def get(self, name: str) -> Deferred[OperationResult]:
        """Fetch the DATA value stored under a resource name."""
        resource = resource_id(name)

        def done(outcome: tuple[OperationResult, tuple[Any, ...]]) -> OperationResult:
            result, values = outcome
            live = [v for v in values if v.value.exists]
            if not live:
                return evolve(result, found=False)
            return evolve(result, found=True, value=live[-1].value.value)

        return self.fetch_values(resource, DATA.kind_id).addCallback(done)

    def find_owner(self, target: int) -> Deferred[tuple[int, tuple[str, int]]]:
        """
        The peer responsible for ``target`` and where its overlay listener is
        (an Attach to that id, answered by its owner): how the ring page walks
        the ring peer by peer.
        """
        if self.topology.is_responsible(target) and self.state in (
            NodeState.JOINED,
            NodeState.ALONE,
        ):
            return succeed((self.node_id, (self.advertised_host, self.advertised_port)))

        def answered(answer: Answer) -> tuple[int, tuple[str, int]]:
            self._remember_candidates(answer.responder, answer.body)
            address = answer.body.candidates[0].address
            return answer.responder, (address.host, address.port)

        return self._request(
            Destination.node(target), MessageCode.ATTACH_REQ, self._attach_request()
        ).addCallback(answered)

    def lookup(self, name: str) -> Deferred[OperationResult]:
        """Find the peer responsible for a name and the route to it (a routed Ping)."""
        return self.lookup_id(resource_id(name))

    def lookup_id(self, resource: int) -> Deferred[OperationResult]:
        if self.topology.is_responsible(resource) and self.state in (
            NodeState.JOINED,
            NodeState.ALONE,
        ):
            return succeed(OperationResult(resource, self.node_id, (self.node_id,)))
        return self._request(
            Destination.resource(resource), MessageCode.PING_REQ, bodies.PingReq().encode()
        ).addCallback(lambda answer: OperationResult(resource, answer.responder, answer.route))

    # IOverlayStorage ------------------------------------------------------

    def put_dictionary_entry(
        self, resource_name: str, kind_id: int, key: bytes, value: bytes, lifetime_seconds: int
    ) -> Deferred[None]:
        entry = bodies.DictionaryEntry(key, bodies.DataValue(True, value))
        return self.store_values(
            resource_id(resource_name), kind_id, [entry], lifetime_seconds
        ).addCallback(lambda _: None)

    def remove_dictionary_entry(
        self, resource_name: str, kind_id: int, key: bytes
    ) -> Deferred[None]:
        entry = bodies.DictionaryEntry(key, bodies.DataValue(False, b""))
        return self.store_values(resource_id(resource_name), kind_id, [entry], 0).addCallback(
            lambda _: None
        )

    def get_dictionary(self, resource_name: str, kind_id: int) -> Deferred[dict[bytes, bytes]]:
        def collect(outcome: tuple[OperationResult, tuple[Any, ...]]) -> dict[bytes, bytes]:
            entries: dict[bytes, bytes] = {}
            for value in outcome[1]:
                entry = value.value
                if entry.value.exists:
                    entries[entry.key] = entry.value.value
            return entries

        model = self.data_models.get(kind_id, bodies.DataModel.DICTIONARY)
        specifier = bodies.StoredDataSpecifier(kind_id, 0, data_model=model)
        return self.fetch_values(resource_id(resource_name), kind_id, specifier).addCallback(
            collect
        )

    def resolve_application(self, node_id: int, application: int) -> Deferred[tuple[str, int]]:
        if node_id == self.node_id:
            address = self.applications.get(application)
            if address is None:
                return fail(OverlayError(f"application {application} is not served by this node"))
            return succeed(address)
        request = bodies.AppAttachReq(
            b"", b"", application, b"passive", (self._candidate,)
        ).encode()

        def done(answer: Answer) -> tuple[str, int]:
            if answer.responder != node_id:
                raise OverlayError(f"peer {id_short(node_id)} is not in the ring")
            candidate = answer.body.candidates[0]
            return candidate.address.host, candidate.address.port

        return self._request(
            Destination.node(node_id), MessageCode.APP_ATTACH_REQ, request
        ).addCallback(done)

    def set_application_address(self, application: int, host: str, port: int) -> None:
        self.applications[application] = (host, port)

    # ------------------------------------------------------------------
    # status

    def status(self) -> dict[str, Any]:
        """The JSON document behind ``/status``."""

        def peer(peer_id: int) -> dict[str, Any]:
            address = self.addresses.get(peer_id)
            return {
                "node_id": id_hex(peer_id),
                "address": f"{address[0]}:{address[1]}" if address else None,
                "linked": self.has_link(peer_id),
            }

        return {
            "node_id": id_hex(self.node_id),
            "overlay": self.config.overlay_name,
            "state": self.state,
            "address": f"{self.advertised_host}:{self.advertised_port}",
            "uptime_seconds": round(self.clock.seconds() - self.started_at, 3),
            "predecessors": [peer(p) for p in self.topology.predecessors],
            "successors": [peer(p) for p in self.topology.successors],
            "fingers": {
                str(index): id_hex(p)
                for index, p in sorted(self.topology.fingers.items(), reverse=True)
            },
            "storage": {
                "resources": len(list(self.store.resources())),
                "values_per_kind": self.store.counts_per_kind(),
            },
            "connections": [link.describe() for link in self._all_links()],
            "pending_transactions": len(self.transactions),
            "counters": dict(sorted(self.counters.items())),
        }

    def open_link_count(self) -> int:
        """Open overlay links, identified or not."""
        return len(self._all_links())

    def links_by_path(self) -> dict[str, int]:
        """Open links by how they were made: ``connect`` or the mediator's method."""
        paths: dict[str, int] = {}
        for link in self._all_links():
            paths[link.path] = paths.get(link.path, 0) + 1
        return paths

    def stored_resource_count(self) -> int:
        """Resources this node holds values of (as responsible peer or replica)."""
        return len(list(self.store.resources()))

    def pending_request_count(self) -> int:
        """Requests of ours still waiting for an answer."""
        return len(self.transactions)

    def known_peer_addresses(self) -> list[tuple[int, str, int]]:
        """
        (Node-ID, host, port) of the ring members we know, neighbours first.

        The role keeps this list in its data directory, so a restarted peer
        can come back through any of them when its bootstrap peers are gone.
        """
        ordered = [
            *self.topology.successors,
            *self.topology.predecessors,
            *self.topology.fingers.values(),
        ]
        result = []
        for peer in dict.fromkeys(ordered):
            address = self.addresses.get(peer)
            if address is not None and peer != self.node_id:
                result.append((peer, address[0], address[1]))
        return result

    def ring_neighbourhood(self) -> list[dict[str, str]]:
        """This node and every peer it knows, in ring order (for the ring page)."""
        peers = {self.node_id, *self.topology.known_peers()}
        result = []
        for peer_id in sorted(peers):
            address = (
                (self.advertised_host, self.advertised_port)
                if peer_id == self.node_id
                else self.addresses.get(peer_id)
            )
            result.append(
                {
                    "node_id": id_hex(peer_id),
                    "address": f"{address[0]}:{address[1]}" if address else "",
                }
            )
        return result


__all__ = [
    "OverlayNode",
    "OverlayConfig",
    "OperationResult",
    "Answer",
    "NodeState",
    "WILDCARD_NODE_ID",
    "CancelledError",
]
