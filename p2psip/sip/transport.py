"""
SIP over UDP, TCP and TLS (RFC 3261 sections 18 and 26, RFC 3581, RFC 5626 s3.5.1).

The wire format is :mod:`p2psip.sip.message`'s: one message per UDP
datagram; on TCP a stream framed by Content-Length.  This module is the
Twisted shell around it:

* Listeners: ``udp:PORT[:interface=ADDR]`` (see :mod:`p2psip.util.endpoints`)
  and any Twisted stream server endpoint string (``tcp:5060``); given a TLS
  server connection creator, a stream listener runs TLS (its connections'
  Via transport is TLS, and ``local_hop("TLS")`` names it).  UDP sockets
  get several MiB of receive and send buffer, since a Python server pausing
  for garbage collection otherwise loses bursts to the kernel's default
  208 KiB buffer.
* Received requests get ``received`` (when the source address differs from
  the Via sent-by, or rport was requested) and a filled-in ``rport``
  (RFC 3581 s4) on their top Via before the controller sees them.
* Responses go back as RFC 3261 s18.2.2 and RFC 3581 s4 say: over the TCP
  connection the request came on while it is open, else to the ``received``
  address and ``rport`` port (UDP), else to the sent-by.
* TCP connections are kept in a table by remote address, so requests to a
  UA that registered over TCP reuse its connection (its NAT binding).
  New outbound ones are opened by ``stream_connector`` when one is set
  (the thin client's: straight to the address, else through the mediator
  to the node that serves there), else by a plain TCP connect; a
  connection opened for an address is also kept under that address.
* Stream listeners accept at most ``tcp_connections_per_source`` connections
  from one address and ``max_tcp_connections`` in all
  (:mod:`p2psip.util.connection_limit`); a connection silent for
  ``tcp_idle_timeout_seconds`` (CRLF keepalives count) is closed.
* A CRLFCRLF keepalive ping on TCP is answered with CRLF; on UDP a SIP
  Outbound keepalive is a STUN Binding request (RFC 5626 s4.4.2, s8), told
  apart from SIP by its first byte and magic cookie and answered from the
  same socket with the phone's reflexive address (:mod:`p2psip.nat.stun_server`).
* With ``--workers`` (:mod:`p2psip.roles.workers`) a worker has a UDP
  port of its own beside the shared one.  What it sends over UDP leaves
  from its own port, so that a UA answering to the source address (as
  SIPp, and many UAs behind symmetric NATs, do, Via or not) answers this
  worker and not whichever one the kernel picks for the shared port;
  except to an address heard on a shared port lately (a phone that
  registered or called through it), whose NAT lets in only what comes
  from the port it talks to.
* A request that does not parse is answered with the status in its
  :class:`SipParseError` when Via, From, To, Call-ID and CSeq can be found;
  broken TCP framing closes the connection.  Malformed input is logged at
  debug level only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Protocol, cast

from attrs import evolve
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, serverFromString
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.protocol import Protocol as StreamProtocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from p2psip.nat.stun import is_stun
from p2psip.nat.stun_server import StunResponder
from p2psip.sip.message import (
    MAX_HEADER_BYTES,
    MAX_MESSAGE_BYTES,
    AnyMessage,
    Request,
    Response,
    SipParseError,
    SipStreamDecoder,
    Via,
    error_response,
    make_response,
    parse_message,
)
from p2psip.sip.quick_read import RefusableRequest, read_refusable
from p2psip.sip.transaction import Hop, new_branch
from p2psip.util.connection_limit import ConnectionLimitFactory
from p2psip.util.endpoints import is_udp, parse_udp_listen_address
from p2psip.util.logs import Logger
from p2psip.util.reactor import UDPPort, UDPReactor
from p2psip.util.shared_ports import SHARED_PORT_KINDS, reuse_port_socket

UDP_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
TCP_IDLE_TIMEOUT_SECONDS = 300.0
"""
A connection with no traffic for this long is closed.  Any byte counts,
CRLF keepalives too: RFC 5626 s4.4.1 has phones send them every 95 to 120
seconds on a flow they keep.
"""
TCP_PARTIAL_MESSAGE_TIMEOUT_SECONDS = 32.0
"""A message started but not finished within this time closes the connection (RFC 4475 s3.1.2.2)."""
MAX_TCP_CONNECTIONS = 4096
"""SIP stream connections at once: inbound ones past it are refused."""
TCP_CONNECTIONS_PER_SOURCE = 32
"""Inbound SIP stream connections one remote address may hold at once."""
DEFAULT_SIP_PORT = 5060
KEEPALIVE_PONG = b"\r\n"
#: Senders a worker remembers having heard on a shared UDP port (phones it
#: answers from that port); beyond this the least recently heard is forgotten.
MAX_SHARED_PORT_SENDERS = 65536


class MessageReceiver(Protocol):
    """The controller behind every transport (normally a TransactionLayer)."""

    def message_received(self, message: AnyMessage, source: Hop) -> None:
        """A parsed message arrived from ``source``."""

    def refusing_new_requests(self) -> bool:
        """Whether new INVITEs and REGISTERs are refused now (asked for every datagram)."""

    def refusal_for(self, request: RefusableRequest, top_via: Via) -> bytes | None:
        """The stateless answer to a request read only in part, or None to parse it in full."""


#: A listener :meth:`SipTransport.listen` opened: a UDP socket or a stream server's port.
SipListeningPort = UDPPort | IListeningPort


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def stamp_received(request: Request, source_host: str, source_port: int) -> None:
    """Record where a request really came from in its top Via (RFC 3261 s18.2.1, RFC 3581 s4)."""
    via = request.via
    if not stamp_via(via, source_host, source_port):
        return
    request.headers.pop_first_value("Via")
    request.headers.prepend("Via", str(via))


def stamp_via(via: Via, source_host: str, source_port: int) -> bool:
    """Add ``received`` (and fill ``rport``) to a top Via as s18.2.1 asks; whether it changed."""
    if via.rport_requested:
        via.parameters["received"] = source_host
        via.parameters["rport"] = str(source_port)
    elif via.host.strip("[]") != source_host:
        via.parameters["received"] = source_host
    else:
        return False
    return True


def read_for_refusal(
    datagram: bytes, host: str, port: int, max_header_bytes: int
) -> tuple[RefusableRequest, Via] | None:
    """
    A new INVITE or REGISTER read in part (:mod:`p2psip.sip.quick_read`),
    with its top Via parsed and stamped with where it came from (and so
    stamped in the request's Via lines when that changed it); None to
    parse the datagram in full.
    """
    request = read_refusable(datagram, max_header_bytes)
    if request is None:
        return None
    try:
        via = Via.parse(request.vias[0])
    except SipParseError:
        return None
    if stamp_via(via, host, port):
        request = evolve(request, vias=(str(via), *request.vias[1:]))
    return request, via


def response_address(via: Via) -> tuple[str, int]:
    """
    Where a response for this Via goes when there is no connection to reuse
    (s18.2.2, RFC 3581 s4): the source the request came from.

    A Via ``maddr`` is not followed: anyone can write one, and obeying it
    would let a stranger aim our responses at a third party.
    """
    host = via.received or via.host
    port = via.rport if via.rport is not None and via.received else via.port
    return host.strip("[]"), port or DEFAULT_SIP_PORT


class SipDatagramProtocol(DatagramProtocol):
    """One UDP socket; hands datagrams to its :class:`SipTransport`."""

    log = Logger()

    def __init__(self, owner: SipTransport, shared: bool = False) -> None:
        self.owner = owner
        #: A port the host's workers share: its senders are remembered.
        self.shared = shared

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        host, port = addr[0], addr[1]
        if self.shared and self.owner.private_udp_ports:
            self.owner.heard_on_shared_port(host, port)
        if not datagram.strip(b"\r\n"):
            return  # a CRLF keepalive; UDP keepalives are STUN (RFC 5626 s4.4.2)
        if is_stun(datagram):
            # RFC 5626 s8: a SIP message starts with a letter, STUN with 0b00.
            self._answer_stun(datagram, (host, port))
            return
        refused = self.owner.refused_early(datagram, host, port)
        if refused is not None:
            if self.transport is not None:
                answer, destination = refused
                try:
                    self.transport.write(answer, destination)
                except (OSError, MessageLengthError) as e:
                    self.owner.send_errors += 1
                    self.log.debug("could not send a 503: {reason}", reason=str(e))
            return
        try:
            message = parse_message(
                datagram,
                max_message_bytes=self.owner.max_message_bytes,
                max_header_bytes=self.owner.max_header_bytes,
            )
        except SipParseError as e:
            self.log.debug(
                "malformed datagram from {host}:{port}: {reason}",
                host=host,
                port=port,
                reason=e.reason,
            )
            self.owner.malformed_received += 1
            reply = error_response(e)
            if reply is not None and self.transport is not None:
                self.owner.error_responses_sent += 1
                self.transport.write(reply, (host, port))
            return
        self.owner._deliver(message, Hop("UDP", host, port))

    def _answer_stun(self, datagram: bytes, client: tuple[str, int]) -> None:
        if self.transport is None:
            return
        local = self.transport.getHost()
        reply = self.owner.stun.answer_datagram(datagram, client, (local.host, local.port))
        if reply is None:
            self.log.debug(
                "dropped a STUN datagram from {host}: {why}",
                host=client[0],
                why=self.owner.stun.last_drop_reason,
            )
            return
        self.owner.stun_keepalives += 1
        self.transport.write(reply.payload, client)


class SipStreamProtocol(StreamProtocol):
    """One TCP connection, inbound or outbound."""

    log = Logger()

    def __init__(self, owner: SipTransport, transport_name: str = "TCP") -> None:
        self.owner = owner
        self.transport_name = transport_name
        """The Via transport name of this connection: TCP, or TLS for ``ssl:`` listeners."""
        self.decoder = SipStreamDecoder(owner.max_message_bytes, owner.max_header_bytes)
        self.remote: tuple[str, int] = ("", 0)
        #: Request methods answered 403 on this connection instead of delivered
        #: (a stream from another node carries no phone's REGISTER).
        self.refused_methods: frozenset[str] = frozenset()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._idle_timer: IDelayedCall | None = None
        self._partial_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.remote = (getattr(peer, "host", ""), getattr(peer, "port", 0))
        if len(self.owner.connections) >= self.owner.max_tcp_connections:
            self.log.warn(
                "refusing a SIP connection: {count} open already (max_tcp_connections)",
                count=len(self.owner.connections),
            )
            self.owner.connections_refused += 1
            self.transport.loseConnection()
            return
        self._idle_timer = self.owner.reactor.callLater(
            self.owner.tcp_idle_timeout_seconds, self._timed_out, "idle"
        )
        self.owner._connection_opened(self)

    def _timed_out(self, why: str) -> None:
        self.log.debug(
            "closing {why} SIP connection from {host}:{port}",
            why=why,
            host=self.remote[0],
            port=self.remote[1],
        )
        if why == "idle":
            self._idle_timer = None
        else:
            self._partial_timer = None
        assert self.transport is not None
        self.transport.loseConnection()

    def _track_partial_message(self) -> None:
        if self.decoder.buffered_bytes and self._partial_timer is None:
            self._partial_timer = self.owner.reactor.callLater(
                self.owner.tcp_partial_message_timeout_seconds, self._timed_out, "stalled"
            )
        elif not self.decoder.buffered_bytes and self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None

    def _cancel_timers(self) -> None:
        for call in (self._idle_timer, self._partial_timer):
            if call is not None and call.active():
                call.cancel()
        self._idle_timer = self._partial_timer = None

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self._idle_timer is not None:
            self._idle_timer.reset(self.owner.tcp_idle_timeout_seconds)
        try:
            messages = self.decoder.feed(data)
            self._track_partial_message()
        except SipParseError as e:
            self.log.debug(
                "malformed stream from {host}:{port}: {reason}",
                host=self.remote[0],
                port=self.remote[1],
                reason=e.reason,
            )
            self.owner.malformed_received += 1
            reply = error_response(e)
            if reply is not None:
                self.owner.error_responses_sent += 1
                self.transport.write(reply)
            self.transport.loseConnection()
            return
        pings = self.decoder.take_keepalive_pings()
        if pings:
            self.owner.keepalive_pings += pings
            self.transport.write(KEEPALIVE_PONG * pings)
        for message in messages:
            if isinstance(message, Request) and message.method in self.refused_methods:
                self.log.debug(
                    "refused a {method} from {host}:{port}: not taken over this connection",
                    method=message.method,
                    host=self.remote[0],
                    port=self.remote[1],
                )
                if message.method != "ACK":
                    refusal = make_response(
                        message, 403, f"Forbidden ({message.method} is not taken from other nodes)"
                    )
                    self.transport.write(refusal.to_bytes())
                continue
            self.owner._deliver(message, Hop(self.transport_name, self.remote[0], self.remote[1]))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self._cancel_timers()
        self.owner._connection_closed(self)
        if not self.closed.called:
            self.closed.callback(None)

    def send(self, data: bytes) -> None:
        """Write one serialised message."""
        assert self.transport is not None
        self.transport.write(data)


class StreamConnector(Protocol):
    """Opens an outbound SIP stream to ``address``, built by ``factory``; fires with its protocol."""

    def __call__(
        self, address: tuple[str, int], factory: IProtocolFactory
    ) -> defer.Deferred[IProtocol]: ...


class _StreamFactory(Factory):
    def __init__(self, owner: SipTransport, transport_name: str = "TCP") -> None:
        self.owner = owner
        self.transport_name = transport_name

    def buildProtocol(self, addr: IAddress | None) -> SipStreamProtocol:
        return SipStreamProtocol(self.owner, self.transport_name)


class SipTransport:
    """
    Every SIP listener and connection of one element, behind one controller.

    Implements the ``MessageSender`` the transaction layer needs
    (``send_request``, ``send_response``).  Set ``receiver`` (usually the
    TransactionLayer) before messages arrive.  ``reactor`` provides UDP and
    time (connection timeouts run on it), and TCP for the stream endpoints.
    """

    log = Logger()

    def __init__(
        self,
        reactor: UDPReactor,
        receiver: MessageReceiver | None = None,
        *,
        udp_buffer_bytes: int = UDP_SOCKET_BUFFER_BYTES,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_header_bytes: int = MAX_HEADER_BYTES,
        tcp_idle_timeout_seconds: float = TCP_IDLE_TIMEOUT_SECONDS,
        tcp_partial_message_timeout_seconds: float = TCP_PARTIAL_MESSAGE_TIMEOUT_SECONDS,
        max_tcp_connections: int = MAX_TCP_CONNECTIONS,
        tcp_connections_per_source: int = TCP_CONNECTIONS_PER_SOURCE,
        advertised_host: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.advertised_host = advertised_host
        self.tcp_idle_timeout_seconds = tcp_idle_timeout_seconds
        self.tcp_partial_message_timeout_seconds = tcp_partial_message_timeout_seconds
        self.max_tcp_connections = max_tcp_connections
        self.tcp_connections_per_source = tcp_connections_per_source
        #: The per-source and total limits of each stream listener.
        self.connection_limits: list[ConnectionLimitFactory] = []
        self.receiver = receiver
        self.udp_buffer_bytes = udp_buffer_bytes
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self.udp_ports: list[UDPPort] = []
        #: A worker's own UDP ports (``listen(..., private=True)``), which it sends from.
        self.private_udp_ports: list[UDPPort] = []
        #: Addresses heard on a shared UDP port, the least recent first
        #: (at most MAX_SHARED_PORT_SENDERS): sent to from that port.
        self._shared_port_senders: dict[tuple[str, int], None] = {}
        self.stream_ports: list[IListeningPort] = []
        #: Stream listeners that run TLS (``ssl:`` strings, or ``listen(..., tls=...)``).
        self.tls_ports: list[IListeningPort] = []
        self.connections: dict[tuple[str, int], SipStreamProtocol] = {}
        self._connecting: dict[tuple[str, int], list[tuple[bytes, Callable[[str], None]]]] = {}
        self._factory = _StreamFactory(self)
        #: Opens outbound stream connections (None: a plain TCP connect).
        self.stream_connector: StreamConnector | None = None
        # Counters for /status and /metrics.
        self.messages_received = 0
        self.malformed_received = 0
        #: New requests answered 503 from a partial read while overloaded.
        self.early_refusals = 0
        self.error_responses_sent = 0
        self.keepalive_pings = 0
        #: Answers STUN keepalives on the UDP listeners (SIP Outbound).
        self.stun = StunResponder(software=None)
        self.stun_keepalives = 0
        self.connections_refused = 0
        self.send_errors = 0

    def metrics(self) -> dict[str, int]:
        """The counters and the number of open TCP connections, for /status and /metrics."""
        return {
            "messages_received": self.messages_received,
            "malformed_received": self.malformed_received,
            "early_refusals": self.early_refusals,
            "error_responses_sent": self.error_responses_sent,
            "keepalive_pings": self.keepalive_pings,
            "stun_keepalives": self.stun_keepalives,
            "tcp_connections": len(set(self.connections.values())),
            "tcp_connections_refused": self.connections_refused
            + sum(limit.refused for limit in self.connection_limits),
            "send_errors": self.send_errors,
        }

    # Listening

    def listen(
        self,
        description: str,
        tls: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory | None = None,
        *,
        shared: bool = False,
        private: bool = False,
    ) -> defer.Deferred[SipListeningPort]:
        """
        Start a listener: ``udp:PORT[:interface=ADDR]`` or a stream endpoint string (``tcp:5060``).

        With ``tls`` (the SIP domain's certificate, e.g. Twisted's
        ``CertificateOptions``) the stream endpoint carries SIP over TLS.
        ``shared`` binds with ``SO_REUSEPORT`` (``udp:`` and plain ``tcp:``
        only), so the other workers of this host listen on the same port.
        ``private`` (``udp:`` only) is a worker's own port beside shared
        ones: UDP is sent from it, except to senders heard on a shared port.

        :returns: a Deferred firing with the listening port; it fails (with
            a message naming the string) when the address is bad or busy.
        """
        if shared:
            return self._listen_shared(description, tls)
        if is_udp(description):
            try:
                address = parse_udp_listen_address(description)
                port = self.reactor.listenUDP(
                    address.port,
                    SipDatagramProtocol(self),
                    interface=address.interface,
                    maxPacketSize=self.max_message_bytes,
                )
            except Exception as e:
                return defer.fail(
                    ValueError(f"cannot listen on {description!r} (check --sip): {e}")
                )
            self._size_buffers(port)
            self.udp_ports.append(port)
            if private:
                self.private_udp_ports.append(port)
            return defer.succeed(port)
        try:
            endpoint = serverFromString(self.reactor, description)
        except Exception as e:
            return defer.fail(ValueError(f"cannot listen on {description!r} (check --sip): {e}"))
        secured = tls is not None or description.strip().lower().startswith(("ssl:", "tls:"))
        factory: IProtocolFactory = _StreamFactory(self, "TLS") if secured else self._factory
        clock = cast(IReactorTime, self.reactor)  # UDPReactor includes IReactorTime's methods
        if tls is not None:
            factory = TLSMemoryBIOFactory(tls, False, factory, clock=clock)
        # The cap counts TCP connections, before any TLS handshake costs us.
        limited = ConnectionLimitFactory(
            factory,
            clock,
            self.tcp_connections_per_source,
            self.max_tcp_connections,
            what="SIP " + ("TLS" if secured else "TCP"),
            hint="--sip-connections-per-source (or --sip-max-connections)",
        )
        self.connection_limits.append(limited)
        listening: defer.Deferred[IListeningPort] = endpoint.listen(limited)

        def explain(failure: Failure) -> Failure:
            return Failure(
                ValueError(
                    f"cannot listen on {description!r} (check --sip): {failure.getErrorMessage()}"
                )
            )

        return listening.addCallbacks(self._stream_listening, explain, callbackArgs=(secured,))

    def _listen_shared(
        self,
        description: str,
        tls: IOpenSSLServerConnectionCreator | IOpenSSLContextFactory | None = None,
    ) -> defer.Deferred[SipListeningPort]:
        """A ``udp:`` or ``tcp:`` listener (TLS on top with ``tls``) that the host's workers share."""
        kind = description.strip().split(":", 1)[0].lower()
        try:
            if kind not in SHARED_PORT_KINDS or (tls is not None and kind != "tcp"):
                raise ValueError("with --workers the SIP listeners must be udp: or tcp: strings")
            address = parse_udp_listen_address("udp:" + description.strip().split(":", 1)[1])
            if address.port == 0:
                raise ValueError("with --workers give the SIP port (every worker shares it)")
            sock = reuse_port_socket(kind, address.interface, address.port)
        except (OSError, ValueError) as e:
            return defer.fail(ValueError(f"cannot listen on {description!r} (check --sip): {e}"))
        try:
            if kind == "udp":
                adopted: SipListeningPort = self.reactor.adoptDatagramPort(  # type: ignore[attr-defined]
                    sock.fileno(),
                    sock.family,
                    SipDatagramProtocol(self, shared=True),
                    self.max_message_bytes,
                )
            else:
                clock = cast(IReactorTime, self.reactor)
                factory: IProtocolFactory = self._factory
                if tls is not None:
                    factory = TLSMemoryBIOFactory(
                        tls, False, _StreamFactory(self, "TLS"), clock=clock
                    )
                limited = ConnectionLimitFactory(
                    factory,
                    clock,
                    self.tcp_connections_per_source,
                    self.max_tcp_connections,
                    what="SIP " + ("TLS" if tls is not None else "TCP"),
                    hint="--sip-connections-per-source (or --sip-max-connections)",
                )
                self.connection_limits.append(limited)
                adopted = self.reactor.adoptStreamPort(  # type: ignore[attr-defined]
                    sock.fileno(), sock.family, limited
                )
        except AttributeError:
            return defer.fail(ValueError("this reactor cannot adopt sockets: run one worker"))
        finally:
            sock.close()  # the reactor holds its own copy of the descriptor
        if kind == "udp":
            udp = cast(UDPPort, adopted)
            self._size_buffers(udp)
            self.udp_ports.append(udp)
        else:
            (self.tls_ports if tls is not None else self.stream_ports).append(
                cast(IListeningPort, adopted)
            )
        return defer.succeed(adopted)

    def _stream_listening(self, port: IListeningPort, secured: bool) -> SipListeningPort:
        (self.tls_ports if secured else self.stream_ports).append(port)
        return port

    def _size_buffers(self, port: UDPPort) -> None:
        sock = getattr(port, "socket", None)
        if sock is None or not self.udp_buffer_bytes:
            return
        for option, name in ((socket.SO_RCVBUF, "rmem_max"), (socket.SO_SNDBUF, "wmem_max")):
            sock.setsockopt(socket.SOL_SOCKET, option, self.udp_buffer_bytes)
            granted = sock.getsockopt(socket.SOL_SOCKET, option)
            if granted < self.udp_buffer_bytes:
                self.log.warn(
                    "UDP socket buffer is {granted} bytes, not {wanted}: raise sysctl net.core.{name}",
                    granted=granted,
                    wanted=self.udp_buffer_bytes,
                    name=name,
                )

    def stop(self) -> defer.Deferred[list[None]]:
        """Stop all listeners and close all connections."""
        waits: list[defer.Deferred[None]] = []
        ports: list[SipListeningPort] = [*self.udp_ports, *self.stream_ports, *self.tls_ports]
        for port in ports:
            result = port.stopListening()
            if isinstance(result, defer.Deferred):
                waits.append(result)
        self.udp_ports, self.stream_ports, self.tls_ports = [], [], []
        self.private_udp_ports = []
        self._shared_port_senders.clear()
        for connection in set(self.connections.values()):
            assert connection.transport is not None
            waits.append(connection.closed)
            connection.transport.loseConnection()
        return defer.gatherResults(waits)

    def local_hop(self, transport: str) -> Hop | None:
        """
        The address this element listens on for ``transport``, as it should appear in Via and Contact.

        The host is ``advertised_host`` when set; a wildcard bind address
        (``0.0.0.0``, ``::``) is no use to a peer, so set ``advertised_host``
        for listeners without an interface.  None when there is no such
        listener.
        """
        name = transport.upper()
        ports: list[SipListeningPort] = list(
            self.udp_ports
            if name == "UDP"
            else self.tls_ports
            if name == "TLS"
            else self.stream_ports
        )
        for port in ports:
            address = port.getHost()
            if not isinstance(address, (IPv4Address, IPv6Address)):
                continue  # a UNIX socket or the like: no host and port to advertise
            return Hop(transport.upper(), self.advertised_host or address.host, address.port)
        return None

    def make_via(self, transport: str = "UDP", branch: str | None = None) -> Via:
        """
        A Via for a request this element sends: its sent-by, a fresh branch and ``rport`` (RFC 3581).

        :raises ValueError: when there is no listener for ``transport``.
        """
        hop = self.local_hop(transport)
        if hop is None:
            raise ValueError(
                f"no SIP listener for {transport} (add --sip {transport.lower()}:PORT)"
            )
        host = f"[{hop.host}]" if ":" in hop.host else hop.host
        return Via(hop.transport, host, hop.port, {"branch": branch or new_branch(), "rport": None})

    # Receiving

    def refused_early(
        self, datagram: bytes, host: str, port: int
    ) -> tuple[bytes, tuple[str, int]] | None:
        """
        While the overload guard refuses new work, the 503 to a new INVITE
        or REGISTER datagram from a partial read, before the full parse
        (:mod:`p2psip.sip.quick_read`), and where it goes (sent back from
        the socket the request came in on); None to parse it in full.

        Refusing must cost far less than serving, or at twice the
        capacity the refusals take the CPU and most of the excess is lost
        unanswered in the socket buffer.  A quiet node pays one call here.
        """
        receiver = self.receiver
        if receiver is None or not receiver.refusing_new_requests():
            return None
        read = read_for_refusal(datagram, host, port, self.max_header_bytes)
        if read is None:
            return None
        request, via = read
        answer = receiver.refusal_for(request, via)
        if answer is None:
            return None
        self.messages_received += 1
        self.early_refusals += 1
        destination = response_address(via)
        if not _is_ip(destination[0]):
            destination = (host, port)
        return answer, destination

    def _deliver(self, message: AnyMessage, source: Hop) -> None:
        self.messages_received += 1
        if isinstance(message, Request):
            stamp_received(message, source.host, source.port)
        if self.receiver is None:
            self.log.warn("no SIP controller attached; dropping {message!r}", message=message)
            return
        try:
            self.receiver.message_received(message, source)
        except SipParseError as e:
            # A field the controller reads lazily was bad after all.
            self.log.debug("bad message from {host}: {reason}", host=source.host, reason=e.reason)
        except Exception:
            self.log.failure("while handling a message from {host}", host=source.host)

    def _connection_opened(self, connection: SipStreamProtocol) -> None:
        self.connections[connection.remote] = connection

    def _connection_closed(self, connection: SipStreamProtocol) -> None:
        for key in [k for k, c in self.connections.items() if c is connection]:
            del self.connections[key]

    # Sending

    def send_request(self, request: Request, target: Hop, on_error: Callable[[str], None]) -> None:
        """Send to ``target``: UDP from our first UDP socket; TCP over an open or a new connection."""
        self._send(request.to_bytes(), target, on_error)

    def send_response(self, response: Response, source: Hop) -> None:
        """Send a response back: the request's connection if open, else as its top Via says."""
        data = response.to_bytes()
        if source.transport.upper() == "UDP":
            host, port = response_address(response.via)
            if not _is_ip(host):
                host, port = source.host, source.port
            self._send(data, Hop("UDP", host, port), self._response_failed)
            return
        connection = self.connections.get((source.host, source.port))
        if connection is not None:
            connection.send(data)
            return
        via = response.via
        host = (via.received or via.host).strip("[]")
        self._send(
            data, Hop(source.transport, host, via.port or DEFAULT_SIP_PORT), self._response_failed
        )

    def _response_failed(self, reason: str) -> None:
        self.log.debug("could not send a response: {reason}", reason=reason)

    def _send(self, data: bytes, target: Hop, report_error: Callable[[str], None]) -> None:
        def on_error(reason: str) -> None:
            self.send_errors += 1
            report_error(reason)

        if target.transport.upper() == "UDP":
            if not self.udp_ports:
                on_error("no UDP listener to send from (add --sip udp:PORT)")
                return
            if not _is_ip(target.host):
                on_error(f"UDP target {target.host!r} is not an IP address")
                return
            host = target.host.strip("[]")
            try:
                self._udp_port_for(host, target.port).write(data, (host, target.port))
            except (OSError, MessageLengthError) as e:
                on_error(str(e))
            return
        key = (target.host.strip("[]"), target.port)
        connection = self.connections.get(key)
        if connection is not None:
            connection.send(data)
            return
        if target.transport.upper() != "TCP":
            # TODO(#3): outbound TLS needs client certificates and a trust store.
            on_error(
                f"no open {target.transport} connection to {key[0]} and outbound {target.transport} is not supported"
            )
            return
        self._connect_and_send(key, data, on_error)

    def open_connection(
        self, endpoint: IStreamClientEndpoint, transport_name: str = "TCP"
    ) -> defer.Deferred[SipStreamProtocol]:
        """
        Open a stream connection through ``endpoint`` and keep it in the table,
        so messages to its remote address go over it (a phone's TLS flow to
        its super-node: ``endpoint`` is then a ``wrapClientTLS`` one and
        ``transport_name`` is TLS).
        """
        connected = endpoint.connect(_StreamFactory(self, transport_name))

        def opened(protocol: object) -> SipStreamProtocol:
            if not isinstance(protocol, SipStreamProtocol):
                raise TypeError(f"{endpoint!r} connected {protocol!r}, not a SIP connection")
            return protocol

        return connected.addCallback(opened)

    def heard_on_shared_port(self, host: str, port: int) -> None:
        """Remember that ``host``:``port`` talks to a shared port (so we answer it from there)."""
        senders = self._shared_port_senders
        key = (host, port)
        if key in senders:
            del senders[key]  # to the newest end
        elif len(senders) >= MAX_SHARED_PORT_SENDERS:
            del senders[next(iter(senders))]
        senders[key] = None

    def _udp_port_for(self, host: str, port: int) -> UDPPort:
        """
        The UDP socket to send to ``host``:``port`` from: of the target's
        address family (IPv6 hosts contain ':'), a worker's own one unless
        the target talks to a shared port, else the first.
        """
        candidates = self.udp_ports
        if self.private_udp_ports and (host, port) not in self._shared_port_senders:
            candidates = [*self.private_udp_ports, *self.udp_ports]
        want_ipv6 = ":" in host
        for candidate in candidates:
            if (":" in candidate.getHost().host) == want_ipv6:
                return candidate
        return self.udp_ports[0]

    def _connect_and_send(
        self, key: tuple[str, int], data: bytes, on_error: Callable[[str], None]
    ) -> None:
        pending = self._connecting.get(key)
        if pending is not None:
            pending.append((data, on_error))
            return
        if not _is_ip(key[0]):
            on_error(f"TCP target {key[0]!r} is not an IP address")
            return
        self._connecting[key] = [(data, on_error)]
        d: defer.Deferred[IProtocol]
        if self.stream_connector is not None:
            d = self.stream_connector(key, self._factory)
        else:
            endpoint_class = TCP6ClientEndpoint if ":" in key[0] else TCP4ClientEndpoint
            d = endpoint_class(self.reactor, key[0], key[1]).connect(self._factory)

        def connected(connection: IProtocol) -> None:
            if not isinstance(connection, SipStreamProtocol):
                failed(Failure(TypeError(f"{connection!r} is not a SIP connection")))
                return
            # Index the connection by the address we dialled as well.
            self.connections.setdefault(key, connection)
            for queued, _ in self._connecting.pop(key, []):
                connection.send(queued)

        def failed(failure: Failure) -> None:
            for _, error_callback in self._connecting.pop(key, []):
                error_callback(failure.getErrorMessage())

        d.addCallbacks(connected, failed)


class SipListenerService(Service):
    """
    Opens a :class:`SipTransport`'s listeners when the role starts and closes them when it stops.

    A listener that cannot be opened (a busy port, a bad string) stops
    start-up with an error naming the listen string, as ``strports.service``
    does for other roles.
    """

    def __init__(self, transport: SipTransport, descriptions: list[str]) -> None:
        self.transport = transport
        self.descriptions = list(descriptions)

    def startService(self) -> None:
        super().startService()
        for description in self.descriptions:
            failures: list[Failure] = []
            self.transport.listen(description).addErrback(failures.append)
            if failures:
                failures[0].raiseException()

    def stopService(self) -> defer.Deferred[list[None]]:
        super().stopService()
        return self.transport.stop()
