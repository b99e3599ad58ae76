"""
RELOAD messaging: sign and send, route and forward, verify and dispatch.

Routing is symmetric recursive (RFC 6940 s6.2.2).  A peer that forwards a
message appends the Node-ID of the peer it received the message from to
the via list.  The responder answers along the reversed via list, over the
link the request came in on, so the answer retraces the request's path and
the originator reads the whole route (and hop count) from the answer's own
via list.

Every message we send is signed (the security block carries our
certificate and, for values we pass on, their signers' certificates);
every message delivered to us is verified before any handler sees it:

* **The signer is the claimed sender.**  The node a message claims to
  come from is the first entry of its via list (the first forwarding
  peer put the originator there), or, with an empty via list, the peer at
  the other end of the link.  Requests and answers alike: an answer's via
  list is built the same way as it travels back, so its first entry (or
  the link) names the responder.  A message signed by anyone else is
  dropped and counted.  A message with an empty via list over a link not
  identified yet can only come from the link's other end, so its
  verified signer identifies the link, provisionally for a request (a
  copy of someone's signed request proves nothing about who sent it; the
  node challenges such a link, see :attr:`Messenger.link_claimed`); once
  a link is identified (so, or by TLS), a message with an empty via list
  must be signed by that peer.
* **No replays.**  A request whose (signer, transaction ID) was seen
  within the replay window, or whose transaction-ID time lies outside
  it, is dropped (:mod:`p2psip.overlay.replay`); an answer must match a
  transaction of ours that is still open, and the first one closes it.
* **Answers from the owner.**  An answer's signer must be a node that may
  own the request's target: no node we know lies between the target and
  it (Chord's rule).  Otherwise the answer is refused and the request
  tries once more around the node that answered.
* **Per-source limits.**  Token buckets bound the requests one link
  brings us (dropped unread over the limit, before any signature is
  checked) and the requests of one signer we handle (answered with
  Error_Forbidden over the limit).

**Clients** (RFC 6940 s3.2.1).  A peer delivers messages addressed to
the Node-ID of a client attached to it (:mod:`~p2psip.overlay.attached_clients`)
over the client's link, requests and answers alike; the client's own
requests for its Node-ID (which peer owns it now?) are routed as any
other node's.  A client (:attr:`Messenger.attachment` set) sends
everything that has no direct link through its attachment peer, forwards
nothing, and takes answers from whoever its attachment peer reached: it
has no tables to judge them by.

The other parts of the node fill in the handler table
(:meth:`Messenger.handle`): a handler takes ``(link, message, signer)``
and returns a :class:`Reply`, a Deferred of one, or None (no answer), or
raises :class:`RequestRefused` to answer with a RELOAD Error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay import bodies
from p2psip.overlay.attached_clients import AttachedClients
from p2psip.overlay.codec import DecodeError, UnknownKindError
from p2psip.overlay.counters import Counters
from p2psip.overlay.errors import NotConnected, NotResponsible, OverlayError, RequestFailed
from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError
from p2psip.overlay.link_table import LinkTable
from p2psip.overlay.links import Link
from p2psip.overlay.membership import Membership
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
    PeekedMessage,
    SecurityBlock,
    decode_message,
    decode_signed_message,
    encode_contents,
    encode_message_parts,
    is_request,
    message_signature_input,
    peek_code,
    peek_header,
    peek_message,
    replace_header,
)
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.replay import Freshness, ReplayWindow, transaction_age_seconds
from p2psip.overlay.topology import ChordTopology
from p2psip.overlay.transactions import PendingRequest, TransactionTable
from p2psip.util.ids import MAX_ID, id_hex, id_short
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger
from p2psip.util.token_bucket import TokenBuckets

#: The wildcard Node-ID (all ones) addresses "whoever is at the other end of
#: this link": a new connection's first Ping uses it, since the connecting
#: side may not know the Node-ID of a bootstrap peer it only has an address for.
WILDCARD_NODE_ID = MAX_ID

#: The reason of the Error_Forbidden a joining node gets when its Node-ID
#: belongs to a node that is alive (the same key in two places).
NODE_ID_IN_USE_REASON = "this Node-ID is in use by a live node"
#: The reason when the Node-ID's old link heard from it lately and is being
#: checked: a restarted peer asks again once the check is over.
NODE_ID_BEING_CHECKED_REASON = "this Node-ID's old link is being checked; ask again"


#: Requests sent again, halfway through their timeout, when no answer came
#: (:meth:`Messenger._resend_unanswered`): those a second copy cannot harm.
#: A Store of the identical signed values is accepted as a retransmission;
#: a Join, Leave or Update twice would not be.  Only requests routed by the
#: table qualify: a request sent over a chosen link (a hello, a keepalive,
#: a Join to the admitting peer) tests that link.
RESENDABLE_WHEN_UNANSWERED = frozenset(
    {
        MessageCode.PING_REQ,
        MessageCode.FETCH_REQ,
        MessageCode.STORE_REQ,
        MessageCode.STAT_REQ,
        MessageCode.FIND_REQ,
        MessageCode.APP_ATTACH_REQ,
    }
)


@frozen
class Answer:
    """A decoded answer to one of our requests, with the route it took."""

    message: Message
    body: Any
    responder: int
    route: tuple[int, ...]

    @property
    def hops(self) -> int:
        return len(self.route) - 1


@frozen
class Reply:
    """What a handler answers: the answer's code, its body, extra certificates to carry."""

    code: int
    body: bytes
    certificates: tuple[bytes, ...] = ()


class RequestRefused(Exception):
    """Raised by a handler to answer with a RELOAD Error (RFC 6940 s6.3.3.1)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


HandlerResult = Union[Reply, "Deferred[Reply]", None]
RequestHandler = Callable[[Link, Message, int], HandlerResult]


def _buckets(rate_per_second: float, burst: float) -> TokenBuckets | None:
    """A per-source limit, or None when the configuration turns it off (0)."""
    if rate_per_second <= 0:
        return None
    return TokenBuckets(rate_per_second, max(burst, 1.0))


def _code_name(code: int) -> str:
    try:
        return MessageCode(code).name
    except ValueError:
        return f"message code {code}"


#: An answer held back: the request, the link it came over, the message, its signer.
HeldAnswer = tuple[PendingRequest, Link, Message, int]


class Messenger:
    """Sends our requests, answers others', and forwards what is not for us."""

    log = Logger()

    def __init__(
        self,
        *,
        identity: NodeIdentity,
        certificates: CertificateCache,
        clock: IReactorTime,
        config: OverlayConfig,
        overlay: int,
        topology: ChordTopology,
        links: LinkTable,
        membership: Membership,
        counters: Counters,
        data_models: Mapping[int, bodies.DataModel],
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.certificates = certificates
        self.clock = clock
        self.config = config
        self.overlay = overlay
        self.topology = topology
        self.links = links
        self.membership = membership
        self.counters = counters
        #: Kind-ID -> data model, for decoding Fetch and Stat answers.
        self.data_models = dict(data_models)
        self.transactions = TransactionTable(clock, config.request_timeout_seconds)
        self.replays = ReplayWindow(config.replay_window_seconds, config.replay_memory)
        #: One warning per kind of refusal and source a minute, with a count of the rest.
        self.refusal_log = LogThrottle(clock)
        self.link_requests = _buckets(
            config.requests_per_link_per_second, config.request_burst_per_link
        )
        self.signer_requests = _buckets(
            config.requests_per_signer_per_second, config.request_burst_per_signer
        )
        self.handlers: dict[int, RequestHandler] = {}
        #: Called as (method name, seconds, answered) when a request of ours ends.
        self.request_observers: list[Callable[[str, float, bool], None]] = []
        #: Asked as (peer, link) when a peer asks, over its own link, for the
        #: owner of its own Node-ID (it is joining, perhaps after a restart);
        #: False refuses the request (the Node-ID is in use by a live node).
        self.rejoin_policy: Callable[[int, Link], bool | None] = lambda peer, link: True
        #: Told of a peer our tables list that may be gone (connectivity pings it).
        self.suspect_observer: Callable[[int], None] | None = None
        #: Suspect peer -> answers held until we know whether it is alive.
        self._held_answers: dict[int, list[HeldAnswer]] = {}
        #: Told of a link that a request's signer has just identified: only
        #: an answer to a challenge of ours proves who is at the other end
        #: (see Connectivity.challenge_link).
        self.link_claimed: Callable[[Link], None] = lambda link: None
        #: The clients attached to this peer, reached over their links.
        self.clients = AttachedClients()
        #: Set on a client: the link to its attachment peer (None while it
        #: has none), the first hop of everything without a direct link.
        self.attachment: Callable[[], Link | None] | None = None

    def handle(self, code: MessageCode, handler: RequestHandler) -> None:
        """Answer requests of ``code`` with ``handler`` (one handler per code)."""
        if code in self.handlers:
            raise ValueError(f"{code.name} already has a handler")
        self.handlers[code] = handler

    # -- sending ------------------------------------------------------------

    def encode(
        self,
        code: int,
        body: bytes,
        destinations: tuple[Destination, ...],
        transaction_id: int,
        extra_certificates: Iterable[bytes] = (),
        signer: NodeIdentity | None = None,
    ) -> bytes:
        """
        A whole signed RELOAD message from us.

        ``signer`` signs instead of the node's identity: one of this node's
        user credentials (same key and Node-ID, a certificate naming a
        user), for a Store that the Kind's policy lets only that user's
        credential sign (RFC 6940 s7.4.1.1).
        """
        identity = signer if signer is not None else self.identity
        contents = encode_contents(code, body, ())
        signature = identity.sign(
            message_signature_input(
                self.overlay, transaction_id, contents, identity.signer_identity()
            )
        )
        certificates = [GenericCertificate(0, identity.certificate_der)]
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
        return encode_message_parts(header, contents, SecurityBlock(tuple(certificates), signature))

    def first_hop(self, destination: Destination, avoid: Link | None = None) -> Link | None:
        """The link a message for ``destination`` leaves on (never ``avoid``)."""
        assert isinstance(destination.value, int)
        target = destination.value
        if destination.type == DestinationType.NODE and avoid is None:
            direct = self.links.link_for(target)
            if direct is not None:
                return direct
        if self.attachment is not None:
            attachment = self.attachment()
            return None if attachment is avoid else attachment
        avoided = avoid.peer_id if avoid is not None else None
        hop = self.topology.next_hop(
            target, usable=lambda peer: peer != avoided and self.links.has_link(peer)
        )
        return self.links.link_for(hop) if hop is not None else None

    def request(
        self,
        destination: Destination,
        code: int,
        body: bytes,
        first_link: Link | None = None,
        extra_certificates: Iterable[bytes] = (),
        signer: NodeIdentity | None = None,
    ) -> Deferred[Answer]:
        """
        Send a request; a Deferred of its decoded :class:`Answer`, or of an OverlayError.

        ``signer`` is as for :meth:`encode`.
        """
        extra_certificates = tuple(extra_certificates)
        transaction_id = self.transactions.new_transaction_id()
        data = self.encode(code, body, (destination,), transaction_id, extra_certificates, signer)
        target = id_short(destination.value) if isinstance(destination.value, int) else "?"
        describe = f"{MessageCode(code).name} to {target}"
        pending = self.transactions.add(transaction_id, code, data, describe)
        link = first_link or self.first_hop(destination)
        if link is None:
            self.transactions.complete(transaction_id)
            assert isinstance(destination.value, int)
            if self.attachment is not None:
                return fail(
                    NotConnected(f"no route for {describe}: this client has no attachment peer")
                )
            if self.topology.is_responsible(destination.value):
                return fail(
                    OverlayError(f"{describe}: this node itself is responsible for that id")
                )
            return fail(
                NotConnected(f"no route for {describe}: this node has no usable link into the ring")
            )
        pending.first_hop = link.peer_id
        pending.first_link = link
        # A challenge (a hello, or a Ping over a link only a request named)
        # proves who is at the other end only if its answer comes back there.
        pending.bound_to_link = first_link is not None and not self.links.is_confirmed(first_link)
        if (
            destination.type in (DestinationType.NODE, DestinationType.RESOURCE)
            and isinstance(destination.value, int)
            and destination.value != WILDCARD_NODE_ID
            and link.peer_id is not None
        ):
            # Over a link not identified yet (a hello) the caller checks who answered.
            pending.target = destination
        pending.resign = lambda new_id: self.encode(
            code, body, (destination,), new_id, extra_certificates, signer
        )
        self.counters.count("requests_sent")
        link.send(data)
        if first_link is None and code in RESENDABLE_WHEN_UNANSWERED:
            pending.retry_call = self.clock.callLater(
                self.config.request_timeout_seconds / 2, self._resend_unanswered, pending
            )
        if self.request_observers:
            started = self.clock.seconds()

            def observe(outcome: object) -> object:
                seconds = self.clock.seconds() - started
                for observer in list(self.request_observers):
                    observer(MessageCode(code).name, seconds, not isinstance(outcome, Failure))
                return outcome

            pending.deferred.addBoth(observe)
        return pending.deferred

    def resend_after_failure(self, failed_peer: int) -> None:
        """Send again, over another route, our requests whose first hop was ``failed_peer``."""
        for pending in self.transactions.sent_via(failed_peer):
            if pending.retries_left <= 0:
                continue
            header = peek_header(pending.data, self.config.limits)
            link = self.first_hop(header.destination_list[0])
            if link is None or link.peer_id == failed_peer:
                continue
            self._resend(pending, link)

    def reroute(self, messages: list[bytes], dead: int) -> None:
        """
        Send again, by the route that is best now, the requests ``dead``
        never acknowledged (its link was just closed).  The bytes are the
        ones we sent: a forwarded request already names the peer we had it
        from in its via list, so the answer comes back the same way.
        Answers are left: they can only retrace their request's path, and
        the requester resends.

        Taking ``dead`` out of our tables may have made its range ours (it
        was our predecessor, and we hold its replicas): a request we had
        forwarded to it is then delivered here, not dropped for want of a
        route.
        """
        for data in messages:
            try:
                header, code = peek_code(data, self.config.limits)
            except DecodeError:
                continue
            if not is_request(code) or not header.destination_list:
                continue
            destination = header.destination_list[0]
            if destination.value == dead or not isinstance(destination.value, int):
                continue
            link = self.first_hop(destination)
            if link is None and self._take_over_stranded(data, header, destination):
                continue
            if link is None or link.peer_id == dead:
                continue
            self.counters.count("messages_rerouted")
            link.send(data)

    def _take_over_stranded(
        self, data: bytes, header: ForwardingHeader, destination: Destination
    ) -> bool:
        """
        Deliver here a request we had forwarded to a peer now gone, if its
        target is ours now; True when it was.

        The request is handled as if it had just come from the peer that
        handed it to us (the last entry of its via list, which our
        forwarding added), so the answer goes back over that peer's link.
        """
        if not header.via_list or not self.membership.in_ring():
            return False
        previous = header.via_list[-1].value
        if not isinstance(previous, int):
            return False
        back = self.links.link_for(previous)
        if back is None:
            return False
        arrived = evolve(header, ttl=header.ttl + 1, via_list=header.via_list[:-1])
        if not self._delivers_locally(destination, back):
            return False
        self.counters.count("stranded_requests_taken_over")
        self._deliver(back, replace_header(data, arrived))
        return True

    def _resend_unanswered(self, pending: PendingRequest) -> None:
        """
        Halfway through its timeout, send a request that got no answer once
        more, by the route that is best now.  A request lost to a peer that
        died on its path (forwarding is stateless, so no one else resends
        it) is then answered within the timeout: by the time this fires, the
        peer before the dead one has seen its messages go unacknowledged and
        routes around it (``link_ack_timeout_seconds``).  The copy leaves
        over another first hop than the first one if there is one: the
        first path may lead into the same dead peer again (the first hop's
        tables do not change until its own ack timeout).
        """
        pending.retry_call = None
        if (
            pending.retries_left <= 0
            or self.transactions.find(pending.transaction_id) is not pending
        ):
            return
        header = peek_header(pending.data, self.config.limits)
        destination = header.destination_list[0]
        link = self.first_hop(destination, avoid=pending.first_link) or self.first_hop(destination)
        if link is None:
            return
        self._resend(pending, link)

    def _resend(self, pending: PendingRequest, link: Link) -> None:
        """Send an outstanding request once more over ``link``, signed under a new transaction id."""
        pending.retries_left -= 1
        if pending.resign is not None:
            # The responder may have seen the first copy: the same id again
            # would be refused as a replay.
            self.transactions.renumber(pending, pending.resign)
        pending.first_hop = link.peer_id
        pending.first_link = link
        self.counters.count("requests_resent")
        link.send(pending.data)

    def fail_all(self, reason: str) -> None:
        """Fail every outstanding request of ours (the node is stopping)."""
        self.transactions.fail_all(lambda: NotConnected(reason))

    # -- receiving and forwarding --------------------------------------------

    def message_received(self, link: Link, data: bytes) -> None:
        self.counters.count("messages_received")
        try:
            peeked = peek_message(data, self.config.limits)
        except DecodeError as error:
            self.counters.count("malformed_messages")
            self.log.debug(
                "dropped malformed message from {address}: {why}",
                address=link.remote_address,
                why=error,
            )
            return
        if peeked.header.overlay != self.overlay:
            self.counters.count("wrong_overlay")
            self.log.debug(
                "dropped message for another overlay from {address}", address=link.remote_address
            )
            return
        request = is_request(peeked.code)
        if (
            request
            and self.link_requests is not None
            and not self.link_requests.take(f"link {id(link)}", self.clock.seconds())
        ):
            self.refuse(
                "requests_over_link_limit",
                link,
                "dropped requests from {address}: more than {rate:g}/s over one link",
                rate=self.link_requests.rate_per_second,
            )
            return
        try:
            self._route(link, data, peeked, request)
        except Exception:
            self.log.failure("while routing a message from {address}", address=link.remote_address)

    def _route(self, link: Link, data: bytes, peeked: PeekedMessage, request: bool) -> None:
        header = peeked.header
        destinations = header.destination_list
        if not destinations:
            self.counters.count("malformed_messages")
            return
        first = destinations[0]
        sender = link.peer_id
        verified: tuple[Message, int] | None = None
        if (
            request
            and not header.via_list
            and sender is not None
            and sender != self.node_id
            and first.type == DestinationType.NODE
            and first.value == sender
        ):
            # A peer asking, over its own link, for the owner of its own
            # Node-ID is joining (RFC 6940 s10.5's Attach); if we still hold
            # it in our tables it has restarted and lost its old place.
            # Forgetting a peer is too much to do on an unchecked claim: the
            # request must be the peer's own, and fresh.
            verified = self._verify(link, data, peeked)
            if verified is None:
                return
            allowed = self.rejoin_policy(sender, link)
            if allowed is not True:
                reason = NODE_ID_IN_USE_REASON if allowed is False else NODE_ID_BEING_CHECKED_REASON
                self.reply_error(link, verified[0], ErrorCode.FORBIDDEN, reason)
                return
        if first.type == DestinationType.NODE and first.value in (self.node_id, WILDCARD_NODE_ID):
            rest = destinations[1:]
            if not rest:
                self._deliver(link, data, verified, peeked)
                return
            header = evolve(header, destination_list=rest)
            signed_part = len(data) - peeked.contents_offset
            data = replace_header(data, header, peeked.contents_offset)
            peeked = PeekedMessage(header, peeked.code, len(data) - signed_part)
            first = rest[0]
        elif self._delivers_locally(first, link):
            self._deliver(link, data, verified, peeked)
            return
        if first.type == DestinationType.OPAQUE_ID:
            # RFC 6940 s6.3.2.2: an opaque id stands for a route that the node
            # reading it compressed earlier.  This node compresses none, so
            # no peer can hold one of ours: the message is malformed.
            self.counters.count("malformed_messages")
            self._error_for_undeliverable(
                link, data, ErrorCode.INVALID_MESSAGE, "opaque destination not issued by this node"
            )
            return
        self._forward(link, data, peeked, first, request)

    def _delivers_locally(self, destination: Destination, link: Link) -> bool:
        if link.peer_id is None and destination.type == DestinationType.NODE:
            # A new link's first Ping names the Node-ID its sender expects
            # here.  We never forward for an unidentified link, so we answer
            # it ourselves: the sender learns who is really at that address
            # (a private or loopback candidate that led to another node, or
            # back to the sender itself).
            return True
        if not self.membership.in_ring():
            # A peer that is still joining (or stopping) holds no range: it
            # must not answer Fetches "not found" for data it never got.
            return False
        if not isinstance(destination.value, int):
            return False
        if destination.type == DestinationType.NODE and link.peer_id != destination.value:
            if self.clients.link_for(destination.value) is not None:
                # For a client attached to us: it goes over the client's link.
                return False
        if destination.type == DestinationType.RESOURCE:
            return self.topology.is_responsible(destination.value)
        if destination.type == DestinationType.NODE:
            if destination.value in self.topology.known_peers() and self.links.has_link(
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
        peeked: PeekedMessage,
        destination: Destination,
        request: bool,
    ) -> None:
        header = peeked.header
        previous = link.peer_id
        if self.attachment is not None:
            # A client routes for nobody (RFC 6940 s3.2.1).
            self.counters.count("not_forwarded_by_client")
            self._error_for_undeliverable(
                link, data, ErrorCode.NOT_FOUND, "a client forwards no messages"
            )
            return
        if previous is None:
            self.counters.count("dropped_unidentified")
            self.log.debug(
                "not forwarding for an unidentified link from {address}",
                address=link.remote_address,
            )
            return
        if self.node_id in {v.value for v in header.via_list}:
            self.counters.count("loops_detected")
            self.log.debug(
                "dropped a looping message {txid:x} via {via}",
                txid=header.transaction_id,
                via=[id_short(int(v.value)) for v in header.via_list if isinstance(v.value, int)],
            )
            return
        if header.ttl <= 1:
            self.counters.count("ttl_exceeded")
            self._error_for_undeliverable(link, data, ErrorCode.TTL_EXCEEDED, "TTL exceeded")
            return
        if len(header.via_list) + 1 > self.config.limits.max_via:
            self.counters.count("ttl_exceeded")
            self._error_for_undeliverable(link, data, ErrorCode.TTL_EXCEEDED, "via list too long")
            return
        next_link = None
        if destination.type == DestinationType.NODE and isinstance(destination.value, int):
            client_link = self.clients.link_for(destination.value)
            if client_link is not None and client_link is not link:
                next_link = client_link
        if next_link is None and (
            destination.type == DestinationType.NODE and isinstance(destination.value, int)
        ):
            # Answers retrace the request's path over direct links.  Requests
            # take a direct link only to a ring member: a peer that is still
            # joining may be linked to us, yet its own Node-ID must reach the
            # peer that owns it, not the joining peer itself.
            if not request or destination.value in self.topology.known_peers():
                next_link = self.links.link_for(destination.value)
        if next_link is None or next_link is link:
            # A request that came from the very peer it is addressed to (a
            # joining peer's Attach to its own Node-ID) must go round the ring.
            next_link = self.first_hop(destination, avoid=link)
        if next_link is None or next_link is link:
            self.counters.count("unroutable")
            self._error_for_undeliverable(
                link, data, ErrorCode.NOT_FOUND, "no route to destination"
            )
            return
        forwarded = evolve(
            header,
            ttl=header.ttl - 1,
            via_list=header.via_list + (Destination.node(previous),),
        )
        self.counters.count("messages_forwarded")
        # Only the header changes: the signed rest goes on as it came.
        next_link.send(replace_header(data, forwarded, peeked.contents_offset))

    def _error_for_undeliverable(self, link: Link, data: bytes, code: int, reason: str) -> None:
        try:
            message = decode_message(data, self.config.limits)
        except DecodeError:
            return
        if is_request(message.code):
            self.reply_error(link, message, code, reason)

    def _deliver(
        self,
        link: Link,
        data: bytes,
        verified: tuple[Message, int] | None = None,
        peeked: PeekedMessage | None = None,
    ) -> None:
        """
        Verify a message for us (unless ``verified`` already holds it and its
        signer) and dispatch it; ``peeked`` is its header as already read.
        """
        if verified is None:
            verified = self._verify(link, data, peeked)
            if verified is None:
                return
        message, signer = verified
        if not is_request(message.code):
            self._handle_answer(link, message, signer)
            return
        if link.peer_id is None and not message.header.via_list:
            self.links.identify(link, signer, confirmed=False)
            self.link_claimed(link)
        if self.signer_requests is not None and not self.signer_requests.take(
            id_hex(signer), self.clock.seconds()
        ):
            self.refuse(
                "requests_over_signer_limit",
                link,
                "refused requests of {signer}: more than {rate:g}/s",
                signer=id_short(signer),
                rate=self.signer_requests.rate_per_second,
            )
            self.reply_error(
                link,
                message,
                ErrorCode.FORBIDDEN,
                f"more than {self.signer_requests.rate_per_second:g} requests/s from one node",
            )
            return
        self._handle_request(link, message, signer)

    def _verify(
        self, link: Link, data: bytes, peeked: PeekedMessage | None = None
    ) -> tuple[Message, int] | None:
        """
        The decoded message and the Node-ID of its sender, if it may be believed.

        None (the message is dropped, counted and logged) when it does not
        decode, its signature does not hold, its signer is not the sender it
        claims, or it is a request seen before (a replay).
        """
        try:
            message, signed = decode_signed_message(data, self.config.limits, peeked)
        except DecodeError as error:
            self.counters.count("malformed_messages")
            self.log.debug(
                "dropped undecodable message from {address}: {why}",
                address=link.remote_address,
                why=error,
            )
            return None
        try:
            for certificate in message.security.certificates:
                self.certificates.add(certificate.certificate)
            identity = self.certificates.verify_signer(message.security.signature, signed)
        except SignatureError as error:
            self.refuse(
                "bad_signatures",
                link,
                "dropped a message with a bad signature from {address}: {why}",
                why=str(error),
            )
            return None
        signer = self._claimed_sender(link, message, identity.node_ids)
        if signer is None:
            return None
        if is_request(message.code) and not self._fresh(link, message, signer):
            return None
        return message, signer

    def _claimed_sender(self, link: Link, message: Message, signers: tuple[int, ...]) -> int | None:
        """
        The Node-ID ``message`` claims to come from, if its signature is that node's.

        The claimed sender is the first via-list entry, else the peer at the
        other end of the link; a link not identified yet claims nothing, and
        the signer is taken.  None (the message is dropped, counted and
        logged) when the certificate that signed the message does not name
        the claimed sender.
        """
        via = message.header.via_list
        if via:
            first = via[0]
            claimed = first.value if first.type == DestinationType.NODE else None
            if not isinstance(claimed, int):
                self.counters.count("malformed_messages")
                return None
        elif link.peer_id is not None:
            claimed = link.peer_id
        else:
            return signers[0]
        if claimed in signers:
            return claimed
        self.refuse(
            "signer_mismatches",
            link,
            "dropped {code} {txid:x} from {address}: it claims to come from {claimed} "
            "but is signed by {signer}",
            code=_code_name(message.code),
            txid=message.header.transaction_id,
            claimed=id_short(claimed),
            signer=id_short(signers[0]),
        )
        if is_request(message.code) and not via:
            # The peer at the other end of the link sent it: it hears why.
            self.reply_error(
                link,
                message,
                ErrorCode.FORBIDDEN,
                "message not signed by the peer that sent it over this link",
            )
        return None

    def _fresh(self, link: Link, message: Message, signer: int) -> bool:
        """Whether a request is not a replay (and is remembered now); counted and logged otherwise."""
        transaction_id = message.header.transaction_id
        now = self.clock.seconds()
        verdict = self.replays.admit(signer, transaction_id, now)
        if verdict is Freshness.FRESH:
            return True
        if verdict is Freshness.OUT_OF_WINDOW:
            self.refuse(
                "stale_requests",
                link,
                "dropped {code} {txid:x} from {signer} via {address}: its transaction id is "
                "{age} s old, outside the {window:g} s replay window (a replay, or the "
                "sender's clock is off)",
                code=_code_name(message.code),
                txid=transaction_id,
                signer=id_short(signer),
                age=transaction_age_seconds(transaction_id, now),
                window=self.replays.window_seconds,
            )
        else:
            self.refuse(
                "replayed_requests",
                link,
                "dropped {code} {txid:x} from {signer} via {address}: {verdict}",
                code=_code_name(message.code),
                txid=transaction_id,
                signer=id_short(signer),
                verdict=(
                    "a replay of a request already handled"
                    if verdict is Freshness.REPLAYED
                    else "older than the replay memory reaches under this load"
                ),
            )
        return False

    def refuse(self, event: str, link: Link, text: str, **fields: Any) -> None:
        """
        Count ``event`` and warn about it, at most once a minute per event and sender.

        Refusals are what a hostile peer produces by the thousand, so the
        log says how many were held back instead of one line each.
        """
        self.counters.count(event)
        source = link.remote_address if link.peer_id is None else id_short(link.peer_id)
        held_back = self.refusal_log.admit(f"{event} {source}")
        if held_back is None:
            return
        suffix = f" ({held_back} more since the last warning)" if held_back else ""
        self.log.warn(text + suffix, address=link.remote_address, **fields)

    def _handle_answer(self, link: Link, message: Message, signer: int) -> None:
        pending = self.transactions.find(message.header.transaction_id)
        if pending is None or (
            (link.peer_id is None or pending.bound_to_link) and pending.first_link is not link
        ):
            # A late answer, a copy of one already taken, or an answer over a
            # link we never sent that request on.
            self.counters.count("unmatched_answers")
            self.log.debug(
                "dropped an answer {txid:x} from {signer} that matches no open request of ours",
                txid=message.header.transaction_id,
                signer=id_short(signer),
            )
            return
        self._take_answer(pending, link, message, signer)

    def _take_answer(
        self, pending: PendingRequest, link: Link, message: Message, signer: int
    ) -> None:
        """Complete ``pending`` with the answer, unless its signer cannot own the target."""
        if message.code != MessageCode.ERROR and not self._from_possible_owner(
            link, message, pending, signer
        ):
            return
        if message.code == MessageCode.ERROR and self._retry_past_transit_error(
            link, pending, signer
        ):
            return
        self.transactions.complete(pending.transaction_id)
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
            body = bodies.decode_body(
                message.code, message.body, self.config.limits, self.data_models
            )
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

    def _from_possible_owner(
        self, link: Link, message: Message, pending: PendingRequest, signer: int
    ) -> bool:
        """
        Whether an answer's signer may be the node responsible for the request's target.

        Chord's rule against what we know: no node of our tables may lie
        between the target and the signer.  An answer from anyone else (a
        node on the path answering for a range it does not hold) is refused:
        the request goes once more over another first hop, else fails with
        :class:`NotResponsible`.  The node in between is checked (pinged)
        and the answer held meanwhile: the true owner's answer, while a
        dead peer is still in our tables, is taken once that peer is found
        dead; if it answers the ping the refusal is the result.  This holds
        for a peer heard from a moment ago too: under churn the peer in
        between is most often one that died within the last keepalive
        interval.  Error answers are not checked (any node on the path may
        refuse to carry a request); one from a node on the path is retried
        once over another first hop (:meth:`_retry_past_transit_error`).
        """
        if pending.target is None or self.attachment is not None:
            return True
        destination: Destination = pending.target
        target = int(destination.value)
        closer = self.topology.closer_known_node(target, signer)
        if closer is None:
            return True
        if self.suspect_observer is not None:
            # Our tables may still list a peer that died (that is what a
            # ring under churn looks like for a while), which makes us
            # refuse the true owner's answers.  The refusal stands (a node
            # on the path may be lying), but the peer is asked now: if it
            # is gone its link closes, the tables forget it and the next
            # request is answered.
            self.suspect_observer(closer)
            # The answer is also held until the check ends: when the peer
            # proves dead (release_held_answers) it no longer lies between,
            # and the answer is taken unless another came first; the
            # request's own timeout still bounds the wait.
            self._hold_answer(closer, (pending, link, message, signer))
            held = True
        else:
            held = False
        self.refuse(
            "answers_not_from_owner",
            link,
            "refused an answer to {code} for {target} from {signer}: {closer} lies between "
            "them, so {signer} cannot be responsible",
            code=_code_name(pending.code),
            target=id_short(target),
            signer=id_short(signer),
            closer=id_short(closer),
        )
        if pending.retries_left > 0:
            other = self.first_hop(destination, avoid=link)
            if other is not None and other is not link:
                self._resend(pending, other)
                return False
        if held:
            return False
        self.transactions.complete(pending.transaction_id)
        pending.deferred.errback(
            NotResponsible(
                f"{_code_name(pending.code)} for {id_short(target)} was answered by "
                f"{id_short(signer)}, which cannot be responsible for it ({id_short(closer)} "
                "comes first): answer refused"
            )
        )
        return False

    def _hold_answer(self, suspect: int, held: HeldAnswer) -> None:
        outstanding = {
            peer: kept
            for peer, answers in self._held_answers.items()
            if (kept := [h for h in answers if self._outstanding(h[0])])
        }
        outstanding.setdefault(suspect, []).append(held)
        self._held_answers = outstanding
        self.counters.count("answers_held_for_suspect")

    def _retry_past_transit_error(self, link: Link, pending: PendingRequest, signer: int) -> bool:
        """
        Send the request once more over another first hop when its Error
        came from a node on the path, not one that may own the target.

        Under churn a hop whose tables have not caught up answers "no route
        to destination" for a range whose peer died seconds ago; another
        path often gets through.  An Error from a possible owner (Not_Found
        for a value nobody stored) is the answer and is not retried, and a
        node on the path that refuses on purpose gains only the retry.
        """
        if pending.retries_left <= 0 or pending.target is None or self.attachment is not None:
            return False
        if self.topology.closer_known_node(int(pending.target.value), signer) is None:
            return False
        other = self.first_hop(pending.target, avoid=link)
        if other is None or other is link:
            return False
        self.counters.count("transit_errors_retried")
        self._resend(pending, other)
        return True

    def _outstanding(self, pending: PendingRequest) -> bool:
        return self.transactions.find(pending.transaction_id) is pending

    def refuse_held_answers(self, live_peer: int) -> None:
        """
        ``live_peer`` answered its check: it does lie between the targets
        and the signers of the answers held for it, so those answers stay
        refused, and a request with no copy out over another first hop
        fails now rather than at its timeout.
        """
        for pending, link, message, signer in self._held_answers.pop(live_peer, []):
            if not self._outstanding(pending) or pending.first_link is not link:
                continue
            target = id_short(int(pending.target.value)) if pending.target else "?"
            self.transactions.complete(pending.transaction_id)
            pending.deferred.errback(
                NotResponsible(
                    f"{_code_name(pending.code)} for {target} was answered by "
                    f"{id_short(signer)}, which cannot be responsible for it "
                    f"({id_short(live_peer)} comes first, and is up): answer refused"
                )
            )

    def release_held_answers(self, failed_peer: int) -> None:
        """
        ``failed_peer`` is gone from our tables: judge again the answers
        held because it seemed to lie between their targets and their
        signers (a dead peer does not make the true owner's answer wrong).
        """
        for pending, link, message, signer in self._held_answers.pop(failed_peer, []):
            if self._outstanding(pending):
                self._take_answer(pending, link, message, signer)

    # -- answering requests ----------------------------------------------

    def reply(self, link: Link, request: Message, reply: Reply) -> None:
        """Answer ``request`` along its reversed via list, over the link it came in on."""
        path = [v.value for v in request.header.via_list]
        if link.peer_id is not None:
            path.append(link.peer_id)
        if not path:
            return
        destinations = tuple(Destination.node(int(hop)) for hop in reversed(path))
        link.send(
            self.encode(
                reply.code,
                reply.body,
                destinations,
                request.header.transaction_id,
                reply.certificates,
            )
        )

    def reply_error(self, link: Link, request: Message, code: int, reason: str) -> None:
        self.counters.count("errors_sent")
        body = bodies.ErrorResponse(code, reason[:255]).encode()
        self.reply(link, request, Reply(MessageCode.ERROR, body))

    def _handle_request(self, link: Link, message: Message, signer: int) -> None:
        self.counters.count("requests_received")
        handler = self.handlers.get(message.code)
        if handler is None:
            self.reply_error(
                link, message, ErrorCode.INVALID_MESSAGE, f"unsupported message code {message.code}"
            )
            return
        try:
            result = handler(link, message, signer)
        except Exception:
            self._answer_failure(link, message, Failure())
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda reply: self.reply(link, message, reply),
                lambda failure: self._answer_failure(link, message, failure),
            )
        elif result is not None:
            self.reply(link, message, result)

    def _answer_failure(self, link: Link, message: Message, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, RequestRefused):
            self.reply_error(link, message, error.code, error.reason)
        elif isinstance(error, UnknownKindError):
            self.reply_error(link, message, ErrorCode.UNKNOWN_KIND, str(error))
        elif isinstance(error, DecodeError):
            self.counters.count("malformed_messages")
            self.reply_error(link, message, ErrorCode.INVALID_MESSAGE, str(error))
        else:
            self.log.failure("while answering {code}", failure, code=message.code)
            self.reply_error(link, message, ErrorCode.INVALID_MESSAGE, "internal error")
