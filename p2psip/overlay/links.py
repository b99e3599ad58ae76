"""
Links: the connections that carry RELOAD messages between two nodes.

Over TCP (and TLS, which is only another endpoint string) RELOAD messages
travel in the framed-message format of RFC 6940 s6.5.1: every message is
wrapped in a data frame with a per-link sequence number, and the receiver
answers each data frame with an ack frame.  On a reliable stream the acks
are not needed for retransmission, but they tell the sender that the peer
is still reading, which feeds the round-trip estimate shown on the status
page and failure detection.

A :class:`Link` is what the node sees: ``send(message_bytes)``,
``close()``, the remote peer's Node-ID once known, and activity
timestamps.  The node learns the Node-ID from the first message on the
link that has an empty via list (it can only come from the link's other
end) and a valid signature.
"""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from p2psip.overlay.codec import DecodeError
from p2psip.overlay.framing import AckFrame, DataFrame, FrameDecoder, encode_frame, received_mask
from p2psip.util.endpoints import escape_field

CONNECT_TIMEOUT_SECONDS = 10


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

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for the status page."""
        from p2psip.util.ids import id_hex

        return {
            "peer": id_hex(self.peer_id) if self.peer_id is not None else None,
            "address": self.remote_address,
            "direction": "in" if self.inbound else "out",
            "path": self.path,
            "mediated": self.path != "connect",
            "sent": self.messages_sent,
            "received": self.messages_received,
            "rtt_ms": round(self.rtt_seconds * 1000, 3) if self.rtt_seconds is not None else None,
        }


class FramedStreamLink(Protocol, Link):
    """RELOAD framed messages over a stream transport (TCP or TLS)."""

    log = Logger()

    def __init__(
        self,
        listener: LinkListener,
        clock: IReactorTime,
        max_message_bytes: int,
        inbound: bool,
    ) -> None:
        self.listener = listener
        self.clock = clock
        self.inbound = inbound
        self.decoder = FrameDecoder(max_message_bytes)
        self.peer_id = None
        self.remote_address = "?"
        self.created_at = self.last_received_at = self.last_sent_at = clock.seconds()
        self.messages_sent = self.messages_received = 0
        self.rtt_seconds = None
        self.closed = False
        self._next_sequence = 1
        self._unacked_sent_at: dict[int, float] = {}
        self._received_sequences: list[int] = []

    def connectionMade(self) -> None:
        # RELOAD messages are small and answered at once; Nagle's algorithm
        # meeting the peer's delayed ACKs would add ~40 ms to every hop.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.remote_address = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.listener.link_established(self)

    def dataReceived(self, data: bytes) -> None:
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
                sent_at = self._unacked_sent_at.pop(frame.ack_sequence, None)
                if sent_at is not None:
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
        if self.closed or self.transport is None:
            return
        sequence = self._next_sequence
        self._next_sequence = (sequence + 1) & 0xFFFFFFFF or 1
        now = self.clock.seconds()
        if len(self._unacked_sent_at) < 256:
            self._unacked_sent_at[sequence] = now
        self.last_sent_at = now
        self.messages_sent += 1
        self.transport.write(encode_frame(DataFrame(sequence, data)))

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.closed = True
        self.listener.link_lost(self)


class FramedLinkFactory(Factory):
    """Accepts inbound links for a node."""

    def __init__(self, listener: LinkListener, clock: IReactorTime, max_message_bytes: int) -> None:
        self.listener = listener
        self.clock = clock
        self.max_message_bytes = max_message_bytes

    def buildProtocol(self, addr: Any) -> FramedStreamLink:
        return FramedStreamLink(self.listener, self.clock, self.max_message_bytes, inbound=True)


class StreamConnector:
    """
    Opens outbound links with Twisted client endpoints.

    ``template`` turns a host and port into an endpoint string; the default
    is plain TCP, and TLS is a different template (a configuration change).
    """

    #: Plain TCP knows only addresses.
    reaches_by_node_id = False

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        max_message_bytes: int,
        template: str = "tcp:host={host}:port={port}:timeout=" + str(CONNECT_TIMEOUT_SECONDS),
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.template = template

    def connect(
        self, listener: LinkListener, host: str, port: int, peer_id: int | None = None
    ) -> Deferred[Link]:
        """A link to ``host:port``; ``peer_id`` (the Node-ID expected there) is not needed for plain TCP."""
        # An IPv6 host's colons would split the endpoint string: escape them.
        description = self.template.format(host=escape_field(host), port=port)
        endpoint = clientFromString(self.reactor, description)
        link = FramedStreamLink(listener, self.clock, self.max_message_bytes, inbound=False)
        connected: Deferred[Link] = connectProtocol(endpoint, link).addCallback(lambda _: link)
        return connected

    def avoid_direct(self, peer_id: int) -> None:
        """Plain TCP has no other way to a peer."""

    def connect_endpoint(self, listener: LinkListener, description: str) -> Deferred[Link]:
        """Connect to a client endpoint string, e.g. a ``--bootstrap`` value."""
        endpoint = clientFromString(self.reactor, description)
        link = FramedStreamLink(listener, self.clock, self.max_message_bytes, inbound=False)
        connected: Deferred[Link] = connectProtocol(endpoint, link).addCallback(lambda _: link)
        return connected
