"""
CHORD-RELOAD maintenance (RFC 6940 s10): joining, admitting, Updates,
leaving, stabilisation and fingers.

Joining follows RFC 6940 s10.5: the joining peer (JP) connects to a
bootstrap (or a peer it knew), sends an Attach to its own Node-ID, which
reaches the admitting peer (AP) that owns that id now, connects to AP and
sends Join.  AP hands over the data of JP's new range, then sends JP an
Update with its neighbour table; JP links to those neighbours and
announces itself with Updates.  The joining side is
:mod:`p2psip.overlay.joining`; this module is the ring member's side.

A member keeps its neighbour table whole with periodic Updates to its
neighbours (stabilisation), repairs fingers with an Attach to each
finger target, links to peers it hears of that would be better
neighbours (only once they take an Update of ours: a peer still joining
answers Error_In_Progress), and repairs the table when a neighbour fails
or leaves.  Every change of the table is reported to the neighbour
observers (storage re-replicates, the role saves its known peers).

What others tell us cannot make us flood the ring: the peers an Update
or a Leave names are contacted only when it comes from a neighbour (or
the peer itself, over its own link), only the few that would improve our
table (at most successors + predecessors of them, however long the list),
and at most that many per informant every half update interval; peers
that could not be reached are not tried again for a ping interval.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay import bodies
from p2psip.overlay.codec import DecodeError
from p2psip.overlay.connectivity import Connectivity
from p2psip.overlay.counters import Counters
from p2psip.overlay.errors import OverlayError
from p2psip.overlay.links import Link
from p2psip.overlay.membership import Event, Membership, NodeState
from p2psip.overlay.message import Destination, ErrorCode, Message, MessageCode
from p2psip.overlay.messaging import Answer, Messenger, Reply, RequestRefused
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.results import HandOver
from p2psip.overlay.topology import ChordTopology
from p2psip.util.ids import MAX_ID, between, between_right_inclusive, id_hex, id_short
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger
from p2psip.util.token_bucket import TokenBuckets

#: A requester gets at most one full Update (RouteQuery send_update) this often.
FULL_UPDATE_INTERVAL_SECONDS = 1.0
#: Requesters remembered for that bound; beyond it (a flood) send_update is ignored.
MAX_FULL_UPDATE_REQUESTERS = 1024


class RangeHolder(Protocol):
    """What admitting and leaving need of the storage service."""

    def versions_in(self, in_range: Callable[[int], bool]) -> dict[int, int]: ...

    def changed_since(
        self, versions: dict[int, int], in_range: Callable[[int], bool]
    ) -> list[int]: ...

    def hand_over(self, peer: int, resources: Iterable[int]) -> Deferred[HandOver]: ...

    def primary_resources(self) -> list[int]: ...

    def resource_count(self) -> int: ...


class ChordMaintenance:
    """The ring member's side of CHORD-RELOAD."""

    log = Logger()

    def __init__(
        self,
        *,
        messenger: Messenger,
        connectivity: Connectivity,
        topology: ChordTopology,
        membership: Membership,
        ranges: RangeHolder,
        clock: IReactorTime,
        config: OverlayConfig,
        counters: Counters,
    ) -> None:
        self.messenger = messenger
        self.connectivity = connectivity
        self.topology = topology
        self.membership = membership
        self.ranges = ranges
        self.clock = clock
        self.config = config
        self.counters = counters
        self.node_id = messenger.node_id
        self.started_at = clock.seconds()
        #: Peers that failed or left lately, not linked again from hearsay.
        self.recently_failed: dict[int, float] = {}
        #: Peers whose link or Update failed: not tried again before this time.
        self.unreachable_until: dict[int, float] = {}
        self._corrections_sent: dict[int, float] = {}
        #: When each requester last had a full Update for its RouteQuery.
        self._full_updates_sent: dict[int, float] = {}
        self._full_update_log = LogThrottle(clock)
        #: Told (signer, update) of every full Update from a member: how
        #: :class:`~p2psip.overlay.peer_tables.PeerTablesQuery` hears back.
        self.full_update_observers: list[Callable[[int, bodies.UpdateReq], None]] = []
        table_size = config.successors + config.predecessors
        #: New peers each informant's hearsay may make us contact: a table's
        #: worth every half update interval.
        self.contact_budget = TokenBuckets(
            table_size / (config.update_interval_seconds / 2), table_size, max_keys=1024
        )
        self._neighbour_update_call: IDelayedCall | None = None
        #: Peers we admitted lately: newcomer -> (the predecessor we named
        #: to it, when).  See :meth:`_hand_over_grown_range`.
        self._admitted: dict[int, tuple[int, float]] = {}
        #: Newcomers whose range grew when a peer failed: (newcomer, the
        #: failed peer, the peer before it), handed over after our Updates.
        self._grown_ranges: list[tuple[int, int, int]] = []
        #: Called (with no arguments) after the neighbour table changed.
        self.neighbour_observers: list[Callable[[], None]] = []
        #: The joining side, which takes the Update that admits us.
        self.admission_update: Callable[[Link, Message, int, Any], bool] | None = None
        messenger.handle(MessageCode.JOIN_REQ, self._on_join)
        messenger.handle(MessageCode.UPDATE_REQ, self._on_update)
        messenger.handle(MessageCode.LEAVE_REQ, self._on_leave)
        messenger.handle(MessageCode.ROUTE_QUERY_REQ, self._on_route_query)
        messenger.handle(MessageCode.PROBE_REQ, self._on_probe)

    def uptime_seconds(self) -> int:
        return int(self.clock.seconds() - self.started_at)

    # -- founding and leaving ----------------------------------------------

    def start_alone(self) -> None:
        """Start a new ring with this peer as its only member."""
        self.membership.happened(Event.FOUNDED)
        self.started_at = self.clock.seconds()
        self.log.info(
            "node {node} started a new ring for overlay {overlay}",
            node=id_short(self.node_id),
            overlay=self.config.overlay_name,
        )

    @inlineCallbacks
    def leave(self) -> Generator[Deferred[Any], Any, None]:
        """Leave gracefully (RFC 6940 s10.6): hand our data to the successor, tell the neighbours."""
        self.membership.happened(Event.LEAVE_STARTED)
        successor = self.topology.successor
        handovers = self.ranges.primary_resources()
        if successor is not None and handovers:
            handed = yield self.ranges.hand_over(successor, handovers)
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
        for notice in notices:
            try:
                yield notice
            except OverlayError:
                pass
        self.log.info(
            "node {node} left the ring ({count} resources handed over)",
            node=id_short(self.node_id),
            count=len(handovers),
        )

    def _leave_notice(self, peer: int, data: bodies.ChordLeaveData) -> Deferred[Answer]:
        body = bodies.LeaveReq(self.node_id, data.encode()).encode()
        return self.messenger.request(Destination.node(peer), MessageCode.LEAVE_REQ, body)

    def stop(self) -> None:
        if self._neighbour_update_call is not None and self._neighbour_update_call.active():
            self._neighbour_update_call.cancel()

    # -- admitting a peer ----------------------------------------------------

    def _on_join(self, link: Link, message: Message, signer: int) -> Reply:
        request = bodies.JoinReq.decode(message.body, self.config.limits)
        joining = request.joining_peer_id
        if joining != signer:
            raise RequestRefused(ErrorCode.FORBIDDEN, "a peer may only join under its own Node-ID")
        if not self.membership.is_member():
            raise RequestRefused(ErrorCode.IN_PROGRESS, "this peer is not in the ring yet")
        if not self.topology.is_responsible(joining):
            raise RequestRefused(ErrorCode.FORBIDDEN, "not the admitting peer for that Node-ID")
        self.messenger.links.identify(link, joining)
        self.clock.callLater(0, self._admit, joining)
        return Reply(MessageCode.JOIN_ANS, bodies.JoinAns().encode())

    @inlineCallbacks
    def _admit(self, joining: int) -> Generator[Deferred[Any], Any, None]:
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

        versions = self.ranges.versions_in(moves)
        handed = yield self.ranges.hand_over(joining, list(versions))
        if handed.unreachable:
            self.log.warn(
                "could not hand joining peer {peer} {count} of its {total} resources ({why}); "
                "not admitting it until it asks again",
                peer=id_short(joining),
                count=handed.unreachable,
                total=len(versions),
                why=handed.reason,
            )
            return
        update = bodies.UpdateReq(
            uptime=self.uptime_seconds(),
            type=bodies.ChordUpdateType.FULL,
            predecessors=tuple(self.topology.predecessors),
            successors=tuple(self.topology.successors),
            fingers=tuple(sorted(set(self.topology.fingers.values()))),
        )
        try:
            yield self.messenger.request(
                Destination.node(joining), MessageCode.UPDATE_REQ, update.encode()
            )
        except OverlayError as error:
            self.log.info(
                "joining peer {peer} did not take our Update: {why}",
                peer=id_short(joining),
                why=error,
            )
            return
        if self.membership.is_member():
            self.membership.happened(Event.PEER_JOINED)
        if previous is not None:
            self._forget_old_admissions()
            self._admitted[joining] = (previous, self.clock.seconds())
        self.add_neighbours([joining])
        late = self.ranges.changed_since(versions, moves)
        if late:
            yield self.ranges.hand_over(joining, late)
        self.log.info(
            "admitted peer {peer} ({count} resources handed over)",
            peer=id_short(joining),
            count=len(versions) + len(late),
        )

    # -- Updates ------------------------------------------------------------

    def _on_update(self, link: Link, message: Message, signer: int) -> Reply:
        update = bodies.UpdateReq.decode(message.body, self.config.limits)
        answer = Reply(MessageCode.UPDATE_ANS, bodies.UpdateAns().encode())
        if self.membership.is_joining():
            if self.admission_update is not None and self.admission_update(
                link, message, signer, update
            ):
                return answer
            # Until our admitting peer has handed us our range we are not a
            # member: a peer that takes us for one must not list us yet.
            raise RequestRefused(ErrorCode.IN_PROGRESS, "this peer is still joining the ring")
        if not self.membership.is_member():
            raise RequestRefused(ErrorCode.IN_PROGRESS, "this peer is not in the ring")
        if self.membership.state is NodeState.ALONE:
            self.membership.happened(Event.PEER_JOINED)
        if update.type == bodies.ChordUpdateType.FULL:
            for observer in list(self.full_update_observers):
                observer(signer, update)
        learned = {*update.predecessors, *update.successors} - {self.node_id, signer}
        if not message.header.via_list:
            # Sent by the peer at the other end of the link: it is alive
            # and in the ring (peers send Updates only once admitted),
            # whatever we believed of it before (a peer that restarted).
            self.recently_failed.pop(signer, None)
            self.unreachable_until.pop(signer, None)
            if signer not in self.topology.neighbours() and self._would_be_neighbour(signer):
                self.add_neighbours([signer])
        else:
            self.consider_peers([signer], informant=link, informant_id=signer)
        if signer in self.topology.neighbours():
            # Only a neighbour's view of the neighbourhood is worth acting on.
            self.consider_peers(learned, informant=link, informant_id=signer)
            self._check_skipped_peers(signer, update)
        if signer not in self.topology.neighbours() and self._knows_closer_peers(signer, update):
            # The sender counts us as its neighbour but we know peers
            # closer to it than some it lists: tell it what we know
            # (Chord's "ask your successor for its predecessor").
            self._send_update_to(signer, link)
        return answer

    def _check_skipped_peers(self, sender: int, update: bodies.UpdateReq) -> None:
        """
        Ping at once the neighbours of ours that ``sender`` skips right
        next to itself: its first successor (or predecessor) lies beyond a
        peer we list between the two of us, so it has taken that peer for
        failed.  Our own link then tells within ``link_ack_timeout_seconds``
        whether it is: the peers on both sides of a dead one find out
        together, instead of the second one only at its next keepalive,
        which is what keeps lookups into the dead peer's range failing.
        """
        suspects: set[int] = set()
        for peer in self.topology.neighbours():
            if peer == sender:
                continue
            if update.successors and between(peer, sender, update.successors[0]):
                suspects.add(peer)
            if update.predecessors and between(peer, update.predecessors[0], sender):
                suspects.add(peer)
        for peer in suspects:
            link = self.messenger.links.link_for(peer)
            if link is not None:
                self.connectivity.ping_now(link, peer, suspected=True)

    def _knows_closer_peers(self, sender: int, update: bodies.UpdateReq) -> bool:
        probe = ChordTopology(
            sender, self.topology.successor_count, self.topology.predecessor_count
        )
        probe.add_peers([*update.predecessors, *update.successors])
        before = (list(probe.successors), list(probe.predecessors))
        probe.add_peers(self.topology.neighbours() | {self.node_id})
        return before != (probe.successors, probe.predecessors)

    def _send_update_to(self, peer: int, link: Link | None = None) -> None:
        now = self.clock.seconds()
        if self._corrections_sent.get(peer, -1e9) > now - self.config.update_interval_seconds / 2:
            return
        self._corrections_sent[peer] = now
        self.send_updates(only=[peer], link=link)

    def neighbours_update(self) -> bytes:
        return bodies.UpdateReq(
            uptime=self.uptime_seconds(),
            type=bodies.ChordUpdateType.NEIGHBORS,
            predecessors=tuple(self.topology.predecessors),
            successors=tuple(self.topology.successors),
            fingers=(),
        ).encode()

    def full_update(self) -> bytes:
        """An Update with our predecessors, successors and fingers (type ``full``)."""
        return bodies.UpdateReq(
            uptime=self.uptime_seconds(),
            type=bodies.ChordUpdateType.FULL,
            predecessors=tuple(self.topology.predecessors),
            successors=tuple(self.topology.successors),
            fingers=tuple(dict.fromkeys(self.topology.fingers.values())),
        ).encode()

    def send_updates(self, only: Iterable[int] | None = None, link: Link | None = None) -> None:
        update = self.neighbours_update()
        for peer in self.topology.neighbours() if only is None else only:
            peer_link = link or self.messenger.links.link_for(peer)
            if peer_link is None:
                continue
            self.messenger.request(
                Destination.node(peer), MessageCode.UPDATE_REQ, update, first_link=peer_link
            ).addErrback(self._update_failed, peer)

    def _update_failed(self, failure: Failure, peer: int) -> None:
        self.log.debug(
            "Update to {peer} failed: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )

    # -- the neighbour table -------------------------------------------------

    def consider_peers(
        self,
        peers: Iterable[int],
        informant: Link | None = None,
        informant_id: int | None = None,
    ) -> None:
        """
        Link to peers we hear about that would improve our neighbour table.

        Hearsay is not enough to list a peer: others' tables can name a peer
        that has died, or one that restarted and has not been admitted
        again.  So we link to it and send it our Update, and list it only if
        it takes the Update (a peer still joining answers Error_In_Progress,
        and will announce itself once admitted).

        Of a list told by ``informant_id`` (another peer; None for our own
        repairs) only the peers that would make our table are tried, and at
        most :attr:`contact_budget` allows: a list of a thousand made-up
        peers costs a table's worth of Attaches, not a thousand.
        """
        now = self.clock.seconds()
        wanted = [
            peer
            for peer in set(peers)
            if peer != self.node_id
            and peer not in self.recently_failed
            and self.unreachable_until.get(peer, 0.0) <= now
            and peer not in self.topology.neighbours()
            and not self.connectivity.connecting_to(peer)
        ]
        for peer in self.topology.best_of(wanted):
            if informant_id is not None and not self.contact_budget.take(id_hex(informant_id), now):
                if informant is None:
                    self.counters.count("hearsay_not_followed")
                else:
                    self.messenger.refuse(
                        "hearsay_not_followed",
                        informant,
                        "not contacting {peer} and others yet: {informant} named more new "
                        "peers lately than our table holds",
                        peer=id_short(peer),
                        informant=id_short(informant_id),
                    )
                return
            self.connectivity.ensure_link(peer, informant).addCallback(
                self._confirm_member, peer
            ).addCallbacks(
                lambda _, p=peer: self.add_neighbours([p]),
                lambda failure, p=peer: self._note_unreachable(p, failure),
            )

    def _confirm_member(self, link: Link, peer: int) -> Deferred[Answer]:
        """Send ``peer`` our neighbour table; fires if it answers as a member of the ring."""
        return self.messenger.request(
            Destination.node(peer),
            MessageCode.UPDATE_REQ,
            self.neighbours_update(),
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

    def add_neighbours(self, peers: Iterable[int]) -> None:
        if self.topology.add_peers(peers):
            self.neighbours_changed()

    def neighbours_changed(self) -> None:
        """Coalesce a burst of neighbour changes into one round of Updates."""
        if self._neighbour_update_call is not None and self._neighbour_update_call.active():
            return
        self._neighbour_update_call = self.clock.callLater(0, self._after_neighbour_change)

    def _after_neighbour_change(self) -> None:
        if self.membership.state is not NodeState.JOINED:
            return
        self.send_updates()
        # After the Updates, on the same links: the newcomer must have
        # dropped the failed peer before it is handed that peer's range.
        grown, self._grown_ranges = self._grown_ranges, []
        for newcomer, failed, start in grown:
            self._hand_over_grown_range(newcomer, failed, start)
        self.notify_neighbour_observers()

    def _note_grown_range(self, failed: int, predecessors: list[int]) -> None:
        """
        A peer we named to a newcomer as its predecessor failed before the
        newcomer could hear of it (it was admitted with our table while the
        failure went unnoticed).  The failed peer's range is now the
        newcomer's, yet the newcomer never held it: the failed peer's
        replicas went to its old successors, us among them, and it died
        before it could copy them to the newcomer.  So we hand over what we
        hold of it, once, as we handed over the newcomer's first range.
        """
        self._forget_old_admissions()
        for newcomer, (named, _) in list(self._admitted.items()):
            if named != failed:
                continue
            del self._admitted[newcomer]
            if self.topology.predecessor != newcomer or newcomer not in predecessors:
                continue
            # Our table when the failure came: [..., newcomer, failed, start, ...];
            # the grown range is (start, failed].
            at = predecessors.index(newcomer)
            following = predecessors[at + 1 : at + 3]
            if len(following) == 2 and following[0] == failed:
                self._grown_ranges.append((newcomer, failed, following[1]))

    def _forget_old_admissions(self) -> None:
        """
        After two Update intervals a newcomer has linked to its predecessor
        (or found it gone) and been sent its replicas by it.
        """
        horizon = self.clock.seconds() - 2 * self.config.update_interval_seconds
        for newcomer, (_, at) in list(self._admitted.items()):
            if at < horizon:
                del self._admitted[newcomer]

    def _hand_over_grown_range(self, newcomer: int, failed: int, start: int) -> None:
        resources = list(
            self.ranges.versions_in(
                lambda resource: between_right_inclusive(resource, start, failed)
            )
        )
        if not resources:
            return
        self.log.info(
            "peer {failed} failed before newcomer {newcomer} heard of it: "
            "handing the newcomer the {count} resources of its range we hold",
            failed=id_short(failed),
            newcomer=id_short(newcomer),
            count=len(resources),
        )
        self.counters.count("grown_ranges_handed_over")
        self.ranges.hand_over(newcomer, resources).addCallback(self._grown_range_handed, newcomer)

    def _grown_range_handed(self, handed: HandOver, newcomer: int) -> None:
        if handed.unreachable:
            self.log.info(
                "newcomer {peer} did not take {count} resources of a failed peer's range ({why}); "
                "its replicas remain",
                peer=id_short(newcomer),
                count=handed.unreachable,
                why=handed.reason,
            )

    def notify_neighbour_observers(self) -> None:
        for observer in list(self.neighbour_observers):
            try:
                observer()
            except Exception:
                self.log.failure("neighbour observer {observer!r} failed", observer=observer)

    def _on_leave(self, link: Link, message: Message, signer: int) -> Reply:
        request = bodies.LeaveReq.decode(message.body, self.config.limits)
        if request.leaving_peer_id != signer:
            raise RequestRefused(ErrorCode.FORBIDDEN, "a peer may only announce its own Leave")
        try:
            data = bodies.ChordLeaveData.decode(request.overlay_specific, self.config.limits)
            replacements = set(data.node_ids)
        except DecodeError:
            replacements = set()
        self.log.info("peer {peer} is leaving", peer=id_short(signer))
        self.recently_failed[signer] = self.clock.seconds()
        if self.topology.remove_peer(signer):
            self.neighbours_changed()
        self.connectivity.addresses.pop(signer, None)
        self.clock.callLater(0, self.consider_peers, replacements - {signer}, link, signer)
        return Reply(MessageCode.LEAVE_ANS, bodies.LeaveAns().encode())

    def peer_failed(self, peer: int) -> None:
        """A peer's last link is gone (or it stopped answering): take it out and repair."""
        if peer == self.node_id:
            return
        self.recently_failed[peer] = self.clock.seconds()
        before = list(self.topology.predecessors)
        if self.topology.remove_peer(peer):
            self.log.info("neighbour {peer} failed; repairing", peer=id_short(peer))
            self._note_grown_range(peer, before)
            self.neighbours_changed()
            # Ask the surviving neighbours for their view so the lists fill up again.
            for survivor in list(self.topology.neighbours()):
                self.consider_peers([survivor])

    def forget(self, peer: int) -> bool:
        """Take a restarted peer out of the tables; True if we listed it."""
        known = peer in self.topology.known_peers()
        if self.topology.remove_peer(peer):
            self.neighbours_changed()
        return known

    # -- stabilisation ---------------------------------------------------------

    def stabilize(self) -> None:
        """One round: relink neighbours, learn addresses, send Updates, repair fingers."""
        if self.membership.state is NodeState.JOINED:
            if self.topology.is_alone() and self.connectivity.addresses:
                # Every neighbour was taken for failed (a false alarm on a
                # loaded host ends the same way): a member with an empty
                # table would serve alone for ever.  Offer our Update to the
                # peers we knew, once they are out of recently_failed.
                self.consider_peers(list(self.connectivity.addresses))
            self._relink_neighbours()
            self.connectivity.learn_addresses(self.topology.neighbours())
            self.send_updates()
            self.repair_fingers()
        horizon = self.clock.seconds() - self.config.failed_peer_memory_seconds
        for peer, when in list(self.recently_failed.items()):
            if when < horizon:
                del self.recently_failed[peer]

    def _relink_neighbours(self) -> None:
        """
        Reconnect to neighbours whose links are gone, or drop them.

        A neighbour must always have a live link (that is how Updates and
        keepalives reach it); a link can vanish in ways that do not say
        whether the peer is still there (the far end closing it as idle,
        a duplicate link replaced by the other), so ask again.
        """
        for peer in list(self.topology.neighbours()):
            if self.messenger.links.has_link(peer):
                continue
            self.connectivity.ensure_link(peer).addErrback(self._relink_failed, peer)

    def _relink_failed(self, failure: Failure, peer: int) -> None:
        self.log.debug(
            "lost neighbour {peer}: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )
        self.connectivity.peer_failed(peer)

    def repair_fingers(self) -> None:
        for index in self.topology.finger_indices_to_repair():
            self._repair_finger(index, self.topology.finger_target(index))

    def _repair_finger(self, index: int, target: int) -> None:
        if self.topology.is_responsible(target):
            self.topology.fingers.pop(index, None)
            return

        def found(answer: Answer) -> Any:
            peer = answer.responder
            if peer == self.node_id:
                return None
            self.connectivity.remember_candidates(peer, answer.body)
            return self.connectivity.ensure_link(peer).addCallback(
                lambda _: self.topology.set_finger(index, peer)
            )

        d = self.messenger.request(
            Destination.node(target), MessageCode.ATTACH_REQ, self.connectivity.attach_request()
        )
        d.addCallback(found)
        d.addErrback(
            lambda failure: self.log.debug(
                "finger {index} repair failed: {why}", index=index, why=failure.getErrorMessage()
            )
        )

    # -- small questions ------------------------------------------------------------

    def _on_route_query(self, link: Link, message: Message, signer: int) -> Reply:
        request = bodies.RouteQueryReq.decode(message.body, self.config.limits)
        value = request.destination.value
        target = value if isinstance(value, int) else self.node_id
        hop = self.topology.next_hop(target, usable=self.messenger.links.has_link)
        answer = bodies.RouteQueryAns(hop if hop is not None else self.node_id)
        if request.send_update and signer != self.node_id:
            self._send_full_update(signer)
        return Reply(MessageCode.ROUTE_QUERY_ANS, answer.encode())

    def _send_full_update(self, requester: int) -> None:
        """
        Answer ``send_update`` (RFC 6940 s9.7.4.2) with a full Update, routed
        to the requester: at most one per requester every
        :data:`FULL_UPDATE_INTERVAL_SECONDS`, so RouteQueries cannot make
        this peer send more than they cost the sender.
        """
        now = self.clock.seconds()
        if now - self._full_updates_sent.get(requester, -1e9) < FULL_UPDATE_INTERVAL_SECONDS:
            self.counters.count("full_updates_held_back")
            return
        if len(self._full_updates_sent) >= MAX_FULL_UPDATE_REQUESTERS:
            horizon = now - FULL_UPDATE_INTERVAL_SECONDS
            self._full_updates_sent = {
                peer: sent for peer, sent in self._full_updates_sent.items() if sent >= horizon
            }
            if len(self._full_updates_sent) >= MAX_FULL_UPDATE_REQUESTERS:
                self.counters.count("full_updates_held_back")
                held_back = self._full_update_log.admit("requesters")
                if held_back is not None:
                    self.log.warn(
                        "ignoring RouteQuery send_update from {peer} and {held_back} more: over "
                        "{limit} members asked for this node's tables within a second",
                        peer=id_short(requester),
                        held_back=held_back,
                        limit=MAX_FULL_UPDATE_REQUESTERS,
                    )
                return
        self._full_updates_sent[requester] = now
        self.counters.count("full_updates_sent")
        self.messenger.request(
            Destination.node(requester), MessageCode.UPDATE_REQ, self.full_update()
        ).addErrback(self._update_failed, requester)

    def _on_probe(self, link: Link, message: Message, signer: int) -> Reply:
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
                info.append(bodies.ProbeInformation(wanted, self.ranges.resource_count()))
            elif wanted == bodies.ProbeInformationType.UPTIME:
                info.append(bodies.ProbeInformation(wanted, self.uptime_seconds()))
        return Reply(MessageCode.PROBE_ANS, bodies.ProbeAns(tuple(info)).encode())
