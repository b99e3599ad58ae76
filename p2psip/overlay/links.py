"""
Links: the connections that carry RELOAD messages between two nodes.

Over TLS (RFC 6940 s6.6; :mod:`p2psip.overlay.tls`) RELOAD messages travel
in the framed-message format of RFC 6940 s6.5.1: every message is wrapped
in a data frame with a per-link sequence number, and the receiver answers
each data frame with an ack frame.  On a reliable stream the acks are not
needed for retransmission, but they tell the sender that the peer is
still reading, which feeds the round-trip estimate shown on the status
page and failure detection.

A :class:`Link` is what the node sees: ``send(message_bytes)``,
``close()``, the remote peer's Node-ID once known, and activity
timestamps.  A TLS link is reported to the node only once its handshake
is done, and then with the Node-ID the other end's certificate proved, so
nothing the peer sends later can make the link someone else's.  A link
without TLS (the in-memory links of tests) learns its Node-ID from the
first message with an empty via list (it can only come from the link's
other end) and a valid signature.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from p2psip.overlay.codec import DecodeError
from p2psip.overlay.framing import AckFrame, DataFrame, FrameDecoder, encode_frame, received_mask
from p2psip.overlay.message import ErrorCode
from p2psip.overlay.tls import LinkRefused, LinkSecurity
from p2psip.util.endpoints import escape_field
from p2psip.util.ids import id_short
from p2psip.util.logs import Logger

CONNECT_TIMEOUT_SECONDS = 10
#: After a TLS link sends its close_notify, how long the other end has to
#: answer before the connection is cut (a silent peer must not keep it).
CLOSE_GRACE_SECONDS = 5.0
#: What a link may have sent without the far end acknowledging it.  A peer
#: that stops reading (stuck, or flooded) would otherwise make us buffer
#: without end; past either bound the link is closed and the ring routes
#: around that peer.
MAX_UNACKED_FRAMES = 4096
MAX_UNACKED_BYTES = 8 * 1024 * 1024


class LinkListener(TypingProtocol):
    """What a link reports to (the node), and what a connector may ask of it."""

    def link_established(self, link: Link) -> None: ...

    def message_received(self, link: Link, data: bytes) -> None: ...

    def link_lost(self, link: Link) -> None: ...

    def link_for(self, peer: int) -> Link | None:
        """The open link to ``peer`` if there is one (a connector need not make another)."""
        ...


class Connector(TypingProtocol):
    """
    How a node opens links: to an overlay listener's address, or to a
    client endpoint string (a ``--bootstrap`` value).

    ``reaches_by_node_id`` says whether the connector has a second way to a
    peer besides its address (the mediator, by Node-ID); when a direct
    connect to a peer's candidate leads to another node, the node then
    calls :meth:`avoid_direct` and connects again.
    """

    reaches_by_node_id: bool

    def connect(
        self, listener: LinkListener, host: str, port: int, peer_id: int | None = None
    ) -> Deferred[Link]: ...

    def connect_endpoint(self, listener: LinkListener, description: str) -> Deferred[Link]: ...

    def avoid_direct(self, peer_id: int) -> None:
        """Reach ``peer_id`` some other way than its address from now on."""
        ...


class Link:
    """A connection to one other node, whatever carries it."""

    peer_id: int | None
    remote_address: str
    inbound: bool
    created_at: float
    last_received_at: float
    last_sent_at: float
    messages_sent: int
    messages_received: int
    rtt_seconds: float | None
    closed: bool
    #: How the connection was made: "connect" (a plain connection to an
    #: overlay listener) or the mediator's method ("direct",
    #: "simultaneous-open", "low-ttl", "relayed").
    path: str = "connect"
    #: True once a mutually authenticated TLS handshake named the peer.
    tls: bool = False

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def unacknowledged_since(self) -> float | None:
        """
        When the oldest message the far end has not acknowledged yet was
        sent (None: everything sent was acknowledged, or this kind of link
        cannot tell).  A peer that stays silent past the ack timeout is
        dead or stuck (:meth:`p2psip.overlay.connectivity.Connectivity.check_acks`).
        """
        return None

    def unacknowledged_messages(self) -> list[bytes]:
        """The messages sent and not acknowledged yet, oldest first (empty if this kind cannot tell)."""
        return []

    def when_established(self) -> Deferred[Link]:
        """Fires with this link once it is up and its peer known; this kind is up at once."""
        return succeed(self)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for the status page."""
        from p2psip.util.ids import id_hex

        return {
            "peer": id_hex(self.peer_id) if self.peer_id is not None else None,
            "address": self.remote_address,
            "direction": "in" if self.inbound else "out",
            "path": self.path,
            "mediated": self.path != "connect",
            "transport": "tls" if self.tls else "plain",
            "sent": self.messages_sent,
            "received": self.messages_received,
            "rtt_ms": round(self.rtt_seconds * 1000, 3) if self.rtt_seconds is not None else None,
        }


@implementer(IHandshakeListener)
class FramedStreamLink(Protocol, Link):
    """
    RELOAD framed messages over a stream transport.

    With ``security`` the transport is TLS (:mod:`p2psip.overlay.tls`): the
    link reports itself to its listener, with the peer's certificate-proven
    Node-ID, only when the handshake is done, and gives up on a handshake
    that takes longer than the security's timeout.  Without, it is reported
    at once (in-memory transports in tests).
    """

    log = Logger()

    def __init__(
        self,
        listener: LinkListener,
        clock: IReactorTime,
        max_message_bytes: int,
        inbound: bool,
        *,
        security: LinkSecurity | None = None,
    ) -> None:
        self.listener = listener
        self.clock = clock
        self.inbound = inbound
        self.security = security
        self.decoder = FrameDecoder(max_message_bytes)
        self.peer_id = None
        self.remote_address = "?"
        self.created_at = self.last_received_at = self.last_sent_at = clock.seconds()
        self.messages_sent = self.messages_received = 0
        self.rtt_seconds = None
        self.closed = False
        self.established = False
        #: True once the connection is gone (closing ends here).
        self.lost = False
        self._next_sequence = 1
        #: Sequence number -> (when sent, message) of frames not acknowledged yet, oldest first.
        self._unacked: dict[int, tuple[float, bytes]] = {}
        self._unacked_bytes = 0
        self._received_sequences: list[int] = []
        self._waiting: list[Deferred[Link]] = []
        self._refusal: LinkRefused | None = None
        self._failed: Exception | None = None
        self._timer: IDelayedCall | None = None

    def when_established(self) -> Deferred[Link]:
        """
        Fires with this link once it is up and its peer known (after the
        TLS handshake), or fails with why it went down first.  Cancelling
        it aborts the connection.
        """
        if self.established:
            return succeed(self)
        if self._failed is not None:
            return fail(self._failed)
        waiter: Deferred[Link] = Deferred(lambda _: self._abort())
        self._waiting.append(waiter)
        return waiter

    def connectionMade(self) -> None:
        # RELOAD messages are small and answered at once; Nagle's algorithm
        # meeting the peer's delayed ACKs would add ~40 ms to every hop.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.remote_address = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        if self.security is None:
            self._established()
            return
        self._timer = self.clock.callLater(
            self.security.handshake_timeout_seconds, self._handshake_timed_out
        )

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: the certificate it checked names the peer."""
        self._cancel_timer()
        assert self.security is not None
        try:
            peer = self.security.peer_of(self.transport)
        except LinkRefused as refusal:
            self._refusal = refusal
            self._abort()
            return
        self.peer_id = peer.node_id
        self.tls = True
        self._established()

    def _established(self) -> None:
        self.established = True
        self.listener.link_established(self)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(self)

    def _handshake_timed_out(self) -> None:
        self._timer = None
        assert self.security is not None
        self._refusal = LinkRefused(
            f"no TLS handshake within {self.security.handshake_timeout_seconds:g} s",
            ErrorCode.REQUEST_TIMEOUT,
        )
        self.security.note(self._source(), str(self._refusal))
        self._abort()

    def _source(self) -> str:
        return self.remote_address.rsplit(":", 1)[0]

    def _abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            _abort(self.transport)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        if not self.established:
            return  # TLS hands over application data only after the handshake
        try:
            frames = self.decoder.feed(data)
        except DecodeError as error:
            self.log.debug(
                "closing link from {address}: bad framing: {why}",
                address=self.remote_address,
                why=error,
            )
            self.close()
            return
        now = self.clock.seconds()
        for frame in frames:
            self.last_received_at = now
            if isinstance(frame, DataFrame):
                self.messages_received += 1
                self._acknowledge(frame.sequence)
                self.listener.message_received(self, frame.message)
                if self.closed:
                    return
            elif isinstance(frame, AckFrame):
                unacked = self._unacked.pop(frame.ack_sequence, None)
                if unacked is not None:
                    sent_at, message = unacked
                    self._unacked_bytes -= len(message)
                    sample = now - sent_at
                    self.rtt_seconds = (
                        sample
                        if self.rtt_seconds is None
                        else 0.875 * self.rtt_seconds + 0.125 * sample
                    )

    def _acknowledge(self, sequence: int) -> None:
        # The received mask reports which of the 32 sequence numbers before
        # the one acked arrived too (RFC 6940 s6.5.1.2).
        recent = self._received_sequences
        recent.append(sequence)
        if len(recent) > 33:
            del recent[:-33]
        ack = AckFrame(sequence, received_mask(sequence, recent))
        self.transport.write(encode_frame(ack))  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        if self.closed or self.transport is None or not self.established:
            return
        sequence = self._next_sequence
        self._next_sequence = (sequence + 1) & 0xFFFFFFFF or 1
        now = self.clock.seconds()
        if (
            len(self._unacked) >= MAX_UNACKED_FRAMES
            or self._unacked_bytes + len(data) > MAX_UNACKED_BYTES
        ):
            self.log.info(
                "closing the link to {peer}: {frames} message(s), {size} bytes sent and not "
                "acknowledged (the peer is not reading)",
                peer=self._peer_name(),
                frames=len(self._unacked),
                size=self._unacked_bytes,
            )
            self.close()
            return
        self._unacked[sequence] = (now, data)
        self._unacked_bytes += len(data)
        self.last_sent_at = now
        self.messages_sent += 1
        self.transport.write(encode_frame(DataFrame(sequence, data)))

    def unacknowledged_since(self) -> float | None:
        for sent_at, _ in self._unacked.values():
            return sent_at  # insertion order: the oldest first
        return None

    def unacknowledged_messages(self) -> list[bytes]:
        return [message for _, message in self._unacked.values()]

    def _peer_name(self) -> str:
        return id_short(self.peer_id) if self.peer_id is not None else self.remote_address

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.loseConnection()
            if self.security is not None:
                # TLS waits for the other end's close_notify; a peer that
                # never sends one is cut off after a grace period.
                self._cancel_timer()
                self._timer = self.clock.callLater(CLOSE_GRACE_SECONDS, self._abort_after_close)

    def _abort_after_close(self) -> None:
        self._timer = None
        if self.transport is not None:
            _abort(self.transport)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = self.lost = True
        self._cancel_timer()
        if not self.established:
            self._not_established(reason)
            return
        if reason.check(SSL.Error) and self.security is not None:
            # A record that fails its integrity check (a flipped bit on the
            # wire), an alert from the peer: the link ends, nothing of the
            # damaged record was delivered.
            self.security.note(
                self._source(),
                f"TLS failure, link to {self.remote_address} closed: {_tls_reason(reason)}",
            )
        self.listener.link_lost(self)

    def _not_established(self, reason: Failure) -> None:
        refusal = self._refusal
        if refusal is None and self.security is not None:
            refusal = self.security.refusal_of(self.transport)
        error: Exception
        if refusal is not None:
            error = refusal
        elif reason.check(SSL.Error):
            error = LinkRefused(f"TLS handshake failed: {_tls_reason(reason)}")
        else:
            error = ConnectionError(
                f"connection to {self.remote_address} lost before the TLS handshake: "
                f"{reason.getErrorMessage()}"
            )
        self._failed = error
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if not waiter.called:
                waiter.errback(error)


def _abort(transport: Any) -> None:
    """Drop a connection without waiting for anything (TLS and TCP transports can)."""
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()


def _tls_reason(reason: Failure) -> str:
    """OpenSSL's error as one line (its exception carries a list of tuples)."""
    value = reason.value
    parts = [str(item[2]) for item in getattr(value, "args", [[]])[0] if len(item) == 3]
    return ", ".join(parts) or reason.getErrorMessage()


class FramedLinkFactory(Factory):
    """
    Builds inbound links for a node (the protocol inside the TLS layer;
    :func:`inbound_link_factory` is what a listener is given).
    """

    def __init__(
        self,
        listener: LinkListener,
        clock: IReactorTime,
        max_message_bytes: int,
        *,
        security: LinkSecurity | None = None,
    ) -> None:
        self.listener = listener
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.security = security

    def buildProtocol(self, addr: Any) -> FramedStreamLink:
        return FramedStreamLink(
            self.listener, self.clock, self.max_message_bytes, inbound=True, security=self.security
        )


def inbound_link_factory(
    listener: LinkListener, clock: IReactorTime, max_message_bytes: int, security: LinkSecurity
) -> IProtocolFactory:
    """What an overlay listener (and the mediator's incoming connections) accept links with: TLS."""
    inner = FramedLinkFactory(listener, clock, max_message_bytes, security=security)
    return security.server_factory(inner)


class StreamConnector:
    """
    Opens outbound links with Twisted client endpoints, TLS on top.

    ``template`` turns a host and port into an endpoint string (plain TCP
    by default); ``security`` runs TLS over whatever it connects, and
    checks that a peer dialled by Node-ID proves that Node-ID.
    """

    #: Plain TCP knows only addresses.
    reaches_by_node_id = False

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        max_message_bytes: int,
        security: LinkSecurity,
        template: str = "tcp:host={host}:port={port}:timeout=" + str(CONNECT_TIMEOUT_SECONDS),
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.security = security
        self.template = template

    def connect(
        self, listener: LinkListener, host: str, port: int, peer_id: int | None = None
    ) -> Deferred[Link]:
        """
        A link to ``host:port``, fired once its handshake is done.

        With ``peer_id`` (the Node-ID expected there) a certificate naming
        another fails the connect with :class:`~p2psip.overlay.tls.LinkRefused`.
        """
        # An IPv6 host's colons would split the endpoint string: escape them.
        description = self.template.format(host=escape_field(host), port=port)
        return self._connect(listener, description, peer_id)

    def avoid_direct(self, peer_id: int) -> None:
        """Plain TCP has no other way to a peer."""

    def connect_endpoint(self, listener: LinkListener, description: str) -> Deferred[Link]:
        """Connect to a client endpoint string, e.g. a ``--bootstrap`` value (whoever is there)."""
        return self._connect(listener, description, None)

    def _connect(
        self, listener: LinkListener, description: str, peer_id: int | None
    ) -> Deferred[Link]:
        endpoint = self.security.client_endpoint(
            clientFromString(self.reactor, description), expected=peer_id
        )
        link = FramedStreamLink(
            listener, self.clock, self.max_message_bytes, inbound=False, security=self.security
        )
        connected: Deferred[Link] = connectProtocol(endpoint, link).addCallback(
            lambda _: link.when_established()
        )
        return connected
