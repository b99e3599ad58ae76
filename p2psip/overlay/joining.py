"""
Joining the ring: the joining peer's side of RFC 6940 s10.5.

1. Connect to a bootstrap endpoint (or a peer known from an earlier run)
   and say hello.
2. Send an Attach to our own Node-ID through it; it reaches the admitting
   peer (AP), the peer that owns our id now.  Connect to AP.
3. Send Join to AP.  AP hands over the data of our new range and then
   sends its neighbour table in a FULL Update: from that moment the range
   is ours (ADMITTED) and we answer for it.
4. Link to the neighbours AP named, send AP our peer_ready Update and
   every neighbour our table (JOINED).

The owner of our id can change between the Attach and the Join (another
peer joining beside us); we then ask again, up to :data:`JOIN_ATTEMPTS`
rounds, before trying the next endpoint.  An answer to our own Attach from
ourselves means our Node-ID is in use elsewhere (:class:`DuplicateNodeId`).
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from p2psip.overlay import bodies
from p2psip.overlay.chord import ChordMaintenance
from p2psip.overlay.connectivity import Connectivity
from p2psip.overlay.errors import NotConnected, OverlayError, RequestFailed
from p2psip.overlay.links import Link
from p2psip.overlay.membership import Event, Membership, NodeState
from p2psip.overlay.message import Destination, ErrorCode, Message, MessageCode
from p2psip.overlay.messaging import (
    NODE_ID_BEING_CHECKED_REASON,
    NODE_ID_IN_USE_REASON,
    Messenger,
)
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.topology import ChordTopology
from p2psip.util.ids import id_short
from p2psip.util.logs import Logger

#: Attach/Join rounds through one endpoint before trying the next.
JOIN_ATTEMPTS = 5


class DuplicateNodeId(OverlayError):
    """Our Node-ID is already in the ring (the same key in two places)."""


class Joiner:
    """Takes a stopped node into the ring through the first endpoint that admits it."""

    log = Logger()

    def __init__(
        self,
        *,
        messenger: Messenger,
        connectivity: Connectivity,
        chord: ChordMaintenance,
        topology: ChordTopology,
        membership: Membership,
        clock: IReactorTime,
        config: OverlayConfig,
    ) -> None:
        self.messenger = messenger
        self.connectivity = connectivity
        self.chord = chord
        self.topology = topology
        self.membership = membership
        self.clock = clock
        self.config = config
        self.node_id = messenger.node_id
        #: The peer we sent Join to, whose FULL Update admits us.
        self._admitting: int | None = None
        self._admitted: Deferred[None] | None = None
        chord.admission_update = self._admission_update

    @property
    def admitting_peer(self) -> int | None:
        """The peer we sent Join to: it hands us our range (hand-over Stores) and admits us."""
        return self._admitting

    @inlineCallbacks
    def join(self, endpoints: Iterable[str]) -> Generator[Deferred[Any], Any, int]:
        """
        Join through the first of ``endpoints`` that gets us admitted.

        ``endpoints`` holds client endpoint strings (``tcp:HOST:PORT``): the
        configured bootstrap peers and then, on a restart, the peers this
        node knew before, so that it comes back even when the bootstrap is
        gone.  An endpoint that does not answer, or through which no
        admitting peer takes us, is skipped for the next one.  Fires with
        the Node-ID of the peer we joined through; fails with
        :class:`NotConnected` naming what to fix.
        """
        self.membership.happened(Event.JOIN_STARTED)
        self.chord.started_at = self.clock.seconds()
        failures: list[str] = []
        for description in list(endpoints):
            try:
                link = yield self.connectivity.connect_endpoint(description)
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
                self.membership.happened(Event.STOPPED)
                raise
            except OverlayError as error:
                failures.append(f"{description} (peer {id_short(through)}): {error.reason}")
                self._start_over()
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
        self.membership.happened(Event.STOPPED)
        raise NotConnected(
            "could not join through any bootstrap or known peer ("
            + "; ".join(failures or ["none configured"])
            + "); check --bootstrap and that the bootstrap role is running"
        )

    @inlineCallbacks
    def _join_through(self, link: Link) -> Generator[Deferred[Any], Any, None]:
        """Find our admitting peer through ``link``, send it Join and wait until we are in."""
        admitted: Deferred[None] = Deferred()
        self._admitted = admitted
        self._admitting = None
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            # The admitting peer is whoever owns our Node-ID right now; the
            # ring may change between the Attach and the Join (another peer
            # joining next to us), and a message may be lost in a loop while
            # the ring converges around a newcomer; either way, ask again.
            try:
                answer = yield self.messenger.request(
                    Destination.node(self.node_id),
                    MessageCode.ATTACH_REQ,
                    self.connectivity.attach_request(),
                    first_link=link,
                )
                admitting = answer.responder
                if admitting == self.node_id:
                    raise DuplicateNodeId(
                        "another peer already uses this Node-ID; delete the node key in --data-dir"
                    )
                self.connectivity.remember_candidates(admitting, answer.body)
                admitting_link = yield self.connectivity.ensure_link(admitting)
                self._admitting = admitting
                yield self.messenger.request(
                    Destination.node(admitting),
                    MessageCode.JOIN_REQ,
                    bodies.JoinReq(self.node_id).encode(),
                    first_link=admitting_link,
                )
                break
            except DuplicateNodeId:
                raise
            except RequestFailed as error:
                if (
                    error.error_code == ErrorCode.FORBIDDEN
                    and NODE_ID_IN_USE_REASON in error.reason
                ):
                    raise DuplicateNodeId(
                        "another node in the ring uses this Node-ID (the same key in two places); "
                        "stop the other node, or delete the node key in --data-dir for a new Node-ID"
                    ) from None
                if attempt == JOIN_ATTEMPTS or link.closed:
                    raise
                pause = 0.5 * attempt
                if NODE_ID_BEING_CHECKED_REASON in error.reason:
                    # Our old incarnation's link is being pinged; it closes
                    # once the Ping goes unacknowledged.
                    pause = self.config.link_ack_timeout_seconds + 2.0
                yield deferLater(self.clock, pause, lambda: None)
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
            # Once admitted the range is ours and we are only linking to
            # the neighbourhood, whose connects have their own timeouts.
            if not admitted.called and self.membership.state is NodeState.JOINING:
                admitted.errback(OverlayError("the admitting peer never sent its neighbour table"))

        timeout = self.clock.callLater(self.config.join_timeout_seconds, give_up)
        try:
            yield admitted
        finally:
            if timeout.active():
                timeout.cancel()

    def _start_over(self) -> None:
        """After a failed join through one endpoint: try the next from nothing."""
        self._admitting = None
        self._admitted = None
        for peer in list(self.topology.known_peers()):
            self.topology.remove_peer(peer)
        self.connectivity.drop_all()

    def _admission_update(
        self, link: Link, message: Message, signer: int, update: bodies.UpdateReq
    ) -> bool:
        """
        Take the admitting peer's FULL Update, and its later Updates while
        we link to the neighbourhood; False for any other Update while joining.
        """
        if self.membership.state is NodeState.ADMITTED and signer == self._admitting:
            self._follow_admitting_peer(update)
            return True
        if (
            self.membership.state is not NodeState.JOINING
            or signer != self._admitting
            or update.type != bodies.ChordUpdateType.FULL
            or self._admitted is None
            or self._admitted.called
        ):
            return False
        learned = {signer, *update.predecessors, *update.successors}
        learned.discard(self.node_id)
        self.membership.happened(Event.RANGE_RECEIVED)
        self._finish(signer, update, learned)
        return True

    def _follow_admitting_peer(self, update: bodies.UpdateReq) -> None:
        """
        Keep our range right while we are admitted but not yet linked.

        We answer for (our predecessor, us] from the moment we are
        admitted, with the predecessor the admitting peer named; until our
        own link to it is up, only the admitting peer can tell us that it
        has failed since.  When its Update no longer lists a predecessor we
        have no link to, that peer is gone and its range is ours up to the
        next one: the admitting peer already sends us requests for it, and
        we would bounce them back to it as unroutable.
        """
        if update.type == bodies.ChordUpdateType.PEER_READY:
            return
        named = [peer for peer in update.predecessors if peer != self.node_id]
        for peer in list(self.topology.predecessors):
            if peer not in named and self.messenger.links.link_for(peer) is None:
                self.topology.remove_peer(peer)
                self.log.info(
                    "admitting peer {admitting} no longer lists {peer}: its range is ours",
                    admitting=id_short(self._admitting or 0),
                    peer=id_short(peer),
                )
        self.topology.add_peers(named[:1])

    def _linked(self, result: object, peer: int) -> object:
        """One neighbour's connect ended: list it if its link is up, else drop it."""
        if self.membership.state is NodeState.ADMITTED:
            if isinstance(result, Failure):
                self.topology.remove_peer(peer)
            else:
                self.topology.add_peers([peer])
        return result

    @inlineCallbacks
    def _finish(
        self, admitting: int, update: bodies.UpdateReq, learned: set[int]
    ) -> Generator[Deferred[Any], Any, None]:
        # Our range is (the admitting peer's predecessor, us]: it has handed
        # that range over before sending this Update, so we answer for it
        # from now on instead of bouncing requests back to it while we link
        # to the rest of the neighbourhood.
        predecessors = [peer for peer in update.predecessors if peer != self.node_id]
        self.topology.add_peers([admitting, *predecessors[:1]])
        # However long the list, we link only to the peers our table can hold
        # (and to the predecessor we just listed, which needs its link too).
        candidates = learned - {admitting}
        others = sorted(set(self.topology.best_of(candidates)) | (candidates & {*predecessors[:1]}))
        informant = self.messenger.links.link_for(admitting)
        # Each peer is listed as soon as its link is up, not when the
        # slowest connect ends: a neighbour that failed after the admitting
        # peer's Update takes a request timeout to fail, and until then we
        # would route through the admitting peer alone.
        yield DeferredList(
            [
                self.connectivity.ensure_link(peer, informant).addBoth(self._linked, peer)
                for peer in others
            ],
            consumeErrors=True,
        )
        if self.membership.state is not NodeState.ADMITTED:
            return  # stopped meanwhile
        self.membership.happened(Event.JOIN_COMPLETED)
        # Tell the admitting peer we are ready to route (RFC 6940 s10.5's
        # peer_ready), then give every neighbour our neighbour table.
        ready = bodies.UpdateReq(
            uptime=self.chord.uptime_seconds(), type=bodies.ChordUpdateType.PEER_READY
        ).encode()
        admitting_link = self.messenger.links.link_for(admitting)
        if admitting_link is not None:
            self.messenger.request(
                Destination.node(admitting),
                MessageCode.UPDATE_REQ,
                ready,
                first_link=admitting_link,
            ).addErrback(
                lambda failure: self.log.debug(
                    "peer_ready to {peer} failed: {why}",
                    peer=id_short(admitting),
                    why=failure.getErrorMessage(),
                )
            )
        self.chord.send_updates()
        self.chord.repair_fingers()
        if self._admitted is not None and not self._admitted.called:
            self._admitted.callback(None)
        self.chord.notify_neighbour_observers()
