"""
Links to other peers: making them, learning who is at the other end,
keeping them alive, and noticing when a peer is gone.

* **Hello.** A new connection's first message is a Ping, to the Node-ID we
  expect there or to the wildcard id ("whoever is at the other end"); the
  signed answer identifies the link (:mod:`p2psip.overlay.link_table`).
  The side that accepted the connection learns the peer from the hello
  request's signature, but a signed request can be a copy sent by anyone
  who received it, so it *challenges* the link: a Ping of its own to that
  peer over that link.  Only the answer, which must come back over the
  same link, confirms it; a link that fails the challenge is closed.
* **Attach and connect** (RFC 6940 s6.5.1, without ICE).  To reach a peer
  we have no link to, we send an Attach to its Node-ID; the answer carries
  its overlay listener as a host candidate (link type TLS-TCP-FH-NO-ICE)
  and we connect there.  A candidate that leads to another node (a private
  or loopback address) is retried through a connector that can reach the
  peer by Node-ID (the mediator), when there is one.
* **Keepalive.** A link silent for ``ping_interval`` is pinged; a link
  silent for twice that plus the request timeout, or whose Ping goes
  unanswered, is closed.  When a peer's last link is lost, the failure
  observers hear of it (the Chord maintenance repairs the ring, storage
  forgets the peer's replicas, messaging re-routes our requests).
* **Clients** (RFC 6940 s3.2.1).  An Attach that a confirmed link's peer
  sends us directly, offering no candidate, attaches a client
  (:mod:`p2psip.overlay.attached_clients`): from then on messages for its
  Node-ID go over that link.  Losing a client's link is no peer failure:
  the client was never in the ring.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Generator, Iterable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay import bodies
from p2psip.overlay.attached_clients import TooManyClients
from p2psip.overlay.counters import Counters
from p2psip.overlay.errors import OverlayError, UnexpectedPeer
from p2psip.overlay.link_table import LinkTable
from p2psip.overlay.links import Connector, Link, LinkListener
from p2psip.overlay.membership import Membership
from p2psip.overlay.message import Destination, ErrorCode, Message, MessageCode
from p2psip.overlay.messaging import WILDCARD_NODE_ID, Answer, Messenger, Reply, RequestRefused
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.topology import ChordTopology
from p2psip.util.ids import id_short
from p2psip.util.logs import Logger


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


class Connectivity:
    """The node's links: hello, Attach-and-connect, keepalive, failure reports."""

    log = Logger()

    def __init__(
        self,
        *,
        messenger: Messenger,
        links: LinkTable,
        topology: ChordTopology,
        membership: Membership,
        connector: Connector,
        listener: LinkListener,
        clock: IReactorTime,
        config: OverlayConfig,
        counters: Counters,
        advertised_host: str,
        advertised_port: int,
    ) -> None:
        self.messenger = messenger
        self.links = links
        self.topology = topology
        self.membership = membership
        self.connector = connector
        #: What new links report to (the node facade, which dispatches).
        self.listener = listener
        self.clock = clock
        self.config = config
        self.counters = counters
        self.advertised_host = advertised_host
        self.advertised_port = advertised_port
        self.candidate = host_candidate(advertised_host, advertised_port)
        #: False on a client: it has no listener, so its Attaches offer no
        #: candidate and it refuses Attaches (nobody can connect to it).
        self.has_listener = True
        #: Node-ID -> (host, port) of its overlay listener, from Attach candidates.
        self.addresses: dict[int, tuple[str, int]] = {}
        #: Called with a peer's Node-ID when its last link is gone.
        self.failure_observers: list[Callable[[int], None]] = []
        #: Peer -> (the connect under way, the callers waiting for it).
        self._connecting: dict[int, tuple[Deferred[Link], list[Deferred[Link]]]] = {}
        self._pinging: set[int] = set()
        #: Suspects' short deadlines, one per peer however often it is suspected.
        self._suspect_checks: dict[int, IDelayedCall] = {}
        #: When check_acks last ran (a long gap means our own loop stalled).
        self._last_ack_check: float | None = None
        self._asking_address: set[int] = set()
        messenger.handle(MessageCode.PING_REQ, self._on_ping)
        messenger.handle(MessageCode.ATTACH_REQ, self._on_attach)
        messenger.link_claimed = self.challenge_link

    def set_advertised_address(self, host: str, port: int) -> None:
        """Where other peers reach our overlay listener (known once it listens)."""
        self.advertised_host, self.advertised_port = host, port
        self.candidate = host_candidate(host, port)

    def attach_request(self) -> bytes:
        if not self.has_listener:
            return self.client_attach_request()
        return bodies.AttachReq(b"", b"", b"passive", (self.candidate,)).encode()

    @staticmethod
    def client_attach_request() -> bytes:
        """A client's Attach to its attachment peer: no candidate, reach me over this link."""
        return bodies.AttachReq(b"", b"", b"passive", ()).encode()

    def remember_candidates(self, peer: int, attach: Any) -> None:
        """Keep the first candidate of an Attach request or answer as ``peer``'s address."""
        for candidate in attach.candidates:
            self.addresses[peer] = (candidate.address.host, candidate.address.port)
            return

    # -- what links report ----------------------------------------------

    def link_established(self, link: Link) -> None:
        self.links.added(link)
        self.counters.count("links_opened")

    def link_lost(self, link: Link) -> None:
        if self.messenger.clients.lost(link):
            self.links.lost(link)
            self.counters.count("clients_detached")
            self.log.info("client {client} detached", client=id_short(link.peer_id or 0))
            return
        if self.links.lost(link) and self.membership.is_active():
            assert link.peer_id is not None
            self.peer_failed(link.peer_id)

    def peer_failed(self, peer: int) -> None:
        """Tell the observers that ``peer`` is gone."""
        for observer in list(self.failure_observers):
            observer(peer)

    def drop_link(self, link: Link) -> None:
        """Close ``link`` on purpose: its loss is not reported as a failure."""
        self.links.remove(link)
        link.close()

    def drop_stale_links(self, peer: int, keep: Link) -> int:
        """Close every link to ``peer`` but ``keep`` (its new incarnation's); how many were closed."""
        stale = [link for link in self.links.links_to(peer) if link is not keep]
        for link in stale:
            self.drop_link(link)
        return len(stale)

    def close_all(self) -> None:
        for attempt, _ in list(self._connecting.values()):
            attempt.cancel()
        for check in self._suspect_checks.values():
            if check.active():
                check.cancel()
        self._suspect_checks.clear()
        for link in self.links.all_links():
            link.close()

    def drop_all(self) -> None:
        """Close every link on purpose (a join attempt that failed starts from nothing)."""
        for link in self.links.all_links():
            self.drop_link(link)

    # -- hello, Attach and connect --------------------------------------

    def hello(self, link: Link, expected: int | None = None) -> Deferred[Link]:
        """Ping across a new link so both ends learn each other's Node-ID."""
        target = WILDCARD_NODE_ID if expected is None else expected

        def identified(answer: Answer) -> Link:
            if expected is not None and answer.responder != expected:
                link.close()
                raise UnexpectedPeer(
                    f"expected peer {id_short(expected)} answered as {id_short(answer.responder)}"
                )
            if link.peer_id is None:
                self.links.identify(link, answer.responder)
            elif link.peer_id == answer.responder:
                # A request from the peer named the link first; our hello's
                # answer is as good as a challenge.
                self.links.confirm(link)
            else:
                # The link's certificate named someone else than the signer.
                self.drop_link(link)
                raise UnexpectedPeer(
                    f"link to {id_short(link.peer_id)} answered as {id_short(answer.responder)}"
                )
            return link

        d = self.messenger.request(
            Destination.node(target),
            MessageCode.PING_REQ,
            bodies.PingReq().encode(),
            first_link=link,
        )
        return d.addCallback(identified)

    def challenge_link(self, link: Link) -> None:
        """
        Make the peer a request named prove it is at the other end of ``link``.

        A Ping to that peer over that link, whose answer must come back over
        it: a copy of someone's signed request, sent over a connection of
        one's own, cannot answer it.  The link is confirmed by the answer,
        and closed when the challenge fails.
        """
        peer = link.peer_id
        if peer is None:
            return
        d = self.messenger.request(
            Destination.node(peer),
            MessageCode.PING_REQ,
            bodies.PingReq().encode(),
            first_link=link,
        )

        def answered(answer: Answer) -> None:
            if answer.responder == peer:
                self.links.confirm(link)
            else:
                failed(Failure(UnexpectedPeer(f"answered as {id_short(answer.responder)}")))

        def failed(failure: Failure) -> None:
            if link.closed:
                return
            self.messenger.refuse(
                "links_not_confirmed",
                link,
                "closing the link from {address}: it was named {peer}'s by a signed request, "
                "but {peer} did not answer our challenge over it ({why})",
                peer=id_short(peer),
                why=failure.getErrorMessage(),
            )
            self._drop_and_report(link, peer)

        d.addCallbacks(answered, failed)

    def connect_endpoint(self, description: str) -> Deferred[Link]:
        """Connect to a client endpoint string (a bootstrap) and say hello."""
        return self.connector.connect_endpoint(self.listener, description).addCallback(self.hello)

    def connecting_to(self, peer: int) -> bool:
        """Whether a connect to ``peer`` is under way."""
        return peer in self._connecting

    def ensure_link(self, peer: int, informant: Link | None = None) -> Deferred[Link]:
        """
        A live link to ``peer``: reuse one, join a connect under way, or Attach and connect.

        Every caller gets a Deferred of its own, so what one caller chains
        onto its result never reaches another waiting for the same peer.
        """
        existing = self.links.link_for(peer)
        if existing is not None:
            return succeed(existing)
        waiter: Deferred[Link] = Deferred()
        if peer in self._connecting:
            self._connecting[peer][1].append(waiter)
            return waiter
        attempt: Deferred[Link] = self._connect_peer(peer, informant)
        waiters = [waiter]
        self._connecting[peer] = (attempt, waiters)

        def finished(result: Link | Failure) -> None:
            self._connecting.pop(peer, None)
            for each in waiters:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        attempt.addBoth(finished)
        return waiter

    @inlineCallbacks
    def _connect_peer(
        self, peer: int, informant: Link | None = None
    ) -> Generator[Deferred[Any], Any, Link]:
        address = self.addresses.get(peer)
        if address is None:
            # Send the Attach through the peer that told us about this one
            # when we can: our own tables may route its id to ourselves (it
            # would be our new predecessor) or to a peer that has not heard
            # of it yet, while the informant knows the way.
            if informant is not None and informant.closed:
                informant = None
            answer = yield self.messenger.request(
                Destination.node(peer),
                MessageCode.ATTACH_REQ,
                self.attach_request(),
                first_link=informant,
            )
            if answer.responder != peer:
                raise OverlayError(f"peer {id_short(peer)} is not in the ring")
            self.remember_candidates(peer, answer.body)
            address = self.addresses[peer]
            existing = self.links.link_for(peer)
            if existing is not None:
                return existing
        link: Link = yield self.connector.connect(
            self.listener, address[0], address[1], peer_id=peer
        )
        try:
            yield self.hello(link, expected=peer)
        except UnexpectedPeer:
            # A private or loopback candidate can lead to another node, or
            # back to ourselves.  A connector that can also reach a peer by
            # its Node-ID (through the mediator) gets one more try that way.
            if not self.connector.reaches_by_node_id or link.path != "connect":
                raise
            self.log.info(
                "candidate {address} of {peer} leads to another node; reaching it by Node-ID instead",
                address=f"{address[0]}:{address[1]}",
                peer=id_short(peer),
            )
            self.connector.avoid_direct(peer)
            link = yield self.connector.connect(self.listener, address[0], address[1], peer_id=peer)
            yield self.hello(link, expected=peer)
        return link

    def learn_addresses(self, peers: Iterable[int]) -> None:
        """
        Ask peers that linked to us for their listener's address.

        A peer that connected to us (or that we reached through a bootstrap
        endpoint) never told us where it listens; an Attach over the link
        we have asks for its candidate and tells it ours.  The addresses
        go into the known-peers list a restarted node rejoins through.
        """
        for peer in peers:
            link = self.links.link_for(peer)
            if peer in self.addresses or link is None or peer in self._asking_address:
                continue
            self._asking_address.add(peer)
            d = self.messenger.request(
                Destination.node(peer),
                MessageCode.ATTACH_REQ,
                self.attach_request(),
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
            self.remember_candidates(peer, outcome.body)

    # -- keepalive ---------------------------------------------------------

    def keepalive(self) -> None:
        """Ping quiet links; close links that stay silent and report peers left without one."""
        now = self.clock.seconds()
        interval = self.config.ping_interval_seconds
        for peer in self.links.peers():
            for link in self.links.links_to(peer):
                quiet = now - link.last_received_at
                if quiet > 2 * interval + self.config.request_timeout_seconds:
                    self.log.info(
                        "peer {peer} silent for {seconds:.0f} s: closing its link",
                        peer=id_short(peer),
                        seconds=quiet,
                    )
                    self._drop_and_report(link, peer)
                elif quiet > interval and peer not in self._pinging:
                    self._ping_link(link, peer)
                elif (
                    peer not in self.topology.known_peers()
                    and not self._kept_open(link)
                    and now - max(link.last_received_at, link.last_sent_at)
                    > self.config.idle_link_seconds
                ):
                    self.drop_link(link)
        for link in self.links.unidentified():
            if now - link.created_at > self.config.request_timeout_seconds:
                self.links.remove(link)
                link.close()

    def check_acks(self) -> None:
        """
        Close links whose peer left a message unacknowledged past the ack
        timeout and sent nothing at all since, and report peers left
        without a link: a dead peer is
        found within seconds of the first message sent to it, instead of
        after a keepalive round and a request timeout, and a stuck one
        (not reading) stops holding our messages.  The requests it never
        acknowledged, ours and those we forwarded, are routed again around
        it: forwarding keeps no state, so no one else would resend a
        request lost at this hop before its originator's timeout.
        """
        now = self.clock.seconds()
        limit = self.config.link_ack_timeout_seconds
        last, self._last_ack_check = self._last_ack_check, now
        if last is not None and now - last > limit / 2 + 1.0:
            # Our own event loop stalled (a long garbage collection, a busy
            # host): what the peers sent meanwhile is still unread in the
            # socket buffers, so their silence proves nothing yet.
            return
        for peer in self.links.peers():
            for link in self.links.links_to(peer):
                since = link.unacknowledged_since()
                # Only a peer silent since then: a busy one still sends (its
                # acks wait behind what it is sending us), a dead one nothing.
                if since is not None and now - since > limit and link.last_received_at <= since:
                    self._close_silent(link, peer, since)
                    break

    def _close_silent(self, link: Link, peer: int, since: float) -> None:
        """``peer`` has left ``link`` unacknowledged and silent since ``since``: it is gone."""
        self.log.info(
            "peer {peer} left a message unacknowledged for {seconds:.1f} s: closing its link",
            peer=id_short(peer),
            seconds=self.clock.seconds() - since,
        )
        # A peer that died is silent on every link: its other
        # links silent as long go too, or the request we send
        # again would take one of them into the same void (and
        # the peer would stay in our tables until its ack timeout).
        silent = [
            other
            for other in self.links.links_to(peer)
            if other is link or other.last_received_at <= since
        ]
        stranded = [m for other in silent for m in other.unacknowledged_messages()]
        for other in silent[:-1]:
            self.drop_link(other)
        self._drop_and_report(silent[-1], peer)
        # The tables no longer lead there: what it never took goes round it.
        self.messenger.reroute(stranded, peer)

    def _kept_open(self, link: Link) -> bool:
        """A link that idleness does not close: an attached client's, or a client's own attachment."""
        if self.messenger.clients.is_client_link(link):
            return True
        attachment = self.messenger.attachment
        return attachment is not None and attachment() is link

    def _drop_and_report(self, link: Link, peer: int) -> None:
        self.drop_link(link)
        # A peer with another live link (it reconnected) is not gone.
        if not self.links.has_link(peer):
            self.peer_failed(peer)

    def suspect(self, peer: int) -> None:
        """``peer`` may be gone (another peer acts as if it were): ping it now, if we have a link."""
        link = self.links.link_for(peer)
        if link is not None:
            self.ping_now(link, peer, suspected=True)

    def ping_now(self, link: Link, peer: int, suspected: bool = False) -> None:
        """
        Ping ``peer`` over ``link`` now (it may be gone); the link is closed
        if the Ping is not acknowledged within the ack timeout, or within
        ``suspect_ack_timeout_seconds`` when another peer has already
        found it silent (``suspected``).
        """
        if peer not in self._pinging:
            self._ping_link(link, peer)
        # One deadline per suspect: forged answers naming it again and again
        # (a rogue on the path) add no timers.
        if suspected and peer not in self._suspect_checks:
            self._suspect_checks[peer] = self.clock.callLater(
                self.config.suspect_ack_timeout_seconds,
                self._check_suspect,
                link,
                peer,
                self.clock.seconds(),
            )

    def _check_suspect(self, link: Link, peer: int, pinged_at: float) -> None:
        """The suspect's deadline: close its link if it has not said a word since the Ping."""
        self._suspect_checks.pop(peer, None)
        if link.closed or link.last_received_at > pinged_at:
            return
        late = self.clock.seconds() - pinged_at - self.config.suspect_ack_timeout_seconds
        if late > 1.0:
            return  # our own loop stalled: its silence proves nothing yet
        since = link.unacknowledged_since()
        if since is not None and since <= pinged_at:
            self.counters.count("suspects_closed_early")
            self._close_silent(link, since=since, peer=peer)

    def _ping_link(self, link: Link, peer: int) -> None:
        self._pinging.add(peer)
        d = self.messenger.request(
            Destination.node(peer),
            MessageCode.PING_REQ,
            bodies.PingReq().encode(),
            first_link=link,
        )

        def done(result: object) -> None:
            self._pinging.discard(peer)
            if isinstance(result, Failure):
                self.log.info("peer {peer} did not answer a keepalive", peer=id_short(peer))
                self._drop_and_report(link, peer)
            else:
                self.messenger.refuse_held_answers(peer)

        d.addBoth(done)

    # -- handlers ------------------------------------------------------------

    def _on_ping(self, link: Link, message: Message, signer: int) -> Reply:
        answer = bodies.PingAns(secrets.randbits(64), int(self.clock.seconds() * 1000))
        return Reply(MessageCode.PING_ANS, answer.encode())

    def _on_attach(self, link: Link, message: Message, signer: int) -> Reply:
        if not self.has_listener:
            raise RequestRefused(ErrorCode.FORBIDDEN, "a client accepts no connections")
        request = bodies.AttachReq.decode(message.body, self.config.limits)
        if not request.candidates and not message.header.via_list:
            self._attach_client(link, message, signer)
        self.remember_candidates(signer, request)
        answer = bodies.AttachAns(b"", b"", b"active", (self.candidate,))
        return Reply(MessageCode.ATTACH_ANS, answer.encode())

    def _attach_client(self, link: Link, message: Message, signer: int) -> None:
        """
        Take ``signer`` as a client attached over ``link`` (an Attach without candidates).

        Only its own confirmed direct link may attach a client, only to a
        peer in the ring, and a ring member is never taken for a client.

        :raises RequestRefused: Error_Forbidden naming why not.
        """
        reason = None
        if link.peer_id != signer:
            reason = "a client attaches over its own direct link"
        elif not self.links.is_confirmed(link):
            reason = "this link is not confirmed yet"
        elif not self.membership.in_ring():
            reason = "this peer is not in the ring"
        elif signer in self.topology.known_peers():
            reason = "a ring member cannot attach as a client"
        if reason is None:
            try:
                new = self.messenger.clients.attach(signer, link)
            except TooManyClients as error:
                reason = str(error)
            else:
                if new:
                    self.counters.count("clients_attached")
                    self.log.info(
                        "client {client} attached from {address}",
                        client=id_short(signer),
                        address=link.remote_address,
                    )
                return
        self.messenger.refuse(
            "clients_refused",
            link,
            "refused client {client} from {address}: {why}",
            client=id_short(signer),
            why=reason,
        )
        raise RequestRefused(ErrorCode.FORBIDDEN, reason)
