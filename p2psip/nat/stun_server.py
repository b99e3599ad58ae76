"""
STUN Binding server over UDP and TCP (RFC 8489 sections 6.3 and 12), with
RFC 5780 behaviour-discovery support when given two addresses and two ports.

``StunResponder`` is the sans-IO core: it takes a request's bytes (or a
decoded message from a stream), the client's address and the local address
it arrived on, and says what to send back, from which local address and to
where.  It answers:

* Binding requests with XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (for RFC 3489
  clients, RFC 8489 section 12), SOFTWARE and FINGERPRINT;
* with RFC 5780 configured (RFC 5780 section 6.1): RESPONSE-ORIGIN and
  OTHER-ADDRESS in every UDP response, and CHANGE-REQUEST honoured by
  answering from the socket on the other IP and/or port.  Without the full
  four sockets (and over TCP) a CHANGE-REQUEST gets 420, as section 6
  requires;
* over UDP, RFC 5780 RESPONSE-PORT (answer to that port of the client's
  IP) and PADDING (pad the response alike), in any set-up;
* RFC 3489 Binding requests (no magic cookie) with RFC 3489's answer:
  MAPPED-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS, cookie field echoed,
  no FINGERPRINT (RFC 5389 section 12.2);
* 420 with UNKNOWN-ATTRIBUTES for unknown comprehension-required
  attributes (RFC 8489 section 6.3.1);
* 400 for requests that are STUN (header, cookie and FINGERPRINT pass) but
  are otherwise malformed, and for request methods other than Binding.

Everything else (garbage, responses, indications, a bad FINGERPRINT) is
dropped and counted; the adapters log it at debug level only, since it is
Internet noise an attacker controls.

``StunUdpServer`` is the ``DatagramProtocol`` for one UDP socket; sockets
that share a responder send for each other, which is how CHANGE-REQUEST
answers leave from another address.  ``StunUdpService`` opens the one to
four sockets (ip1/ip2 x port1/port2) and sets large socket buffers: a
Python server stalls now and then (garbage collection), and the kernel's
default 208 KiB receive buffer then overflows and loses requests.
``StunTcpServerFactory`` serves STUN over TCP with the RFC 8489 section
6.2.2 framing.
"""

from __future__ import annotations

import socket
import struct
import zlib
from typing import Callable, Iterable

from attrs import evolve, frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from p2psip.nat import stun
from p2psip.nat.stun import AttributeType, MessageClass, StunDecodeError
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger
from p2psip.util.token_bucket import TokenBuckets

Address = tuple[str, int]

DEFAULT_SOFTWARE = "p2psip"
# Several MiB like coturn (4 MiB) and Kamailio (8 MiB effective); the kernel
# caps the request at net.core.rmem_max / wmem_max unless we are root.
DEFAULT_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
DEFAULT_TCP_IDLE_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_TCP_CONNECTIONS = 1024
# STUN responses are small; nothing legitimate needs more than this.
UDP_MAX_PACKET_BYTES = 8192

# Attributes a Binding request may carry that we accept without acting on
# them: credentials (this server does not authenticate Binding, as RFC 8489
# section 12 allows) and ICE connectivity-check attributes.
_ALWAYS_UNDERSTOOD = frozenset(
    {
        AttributeType.USERNAME,
        AttributeType.MESSAGE_INTEGRITY,
        AttributeType.MESSAGE_INTEGRITY_SHA256,
        AttributeType.USERHASH,
        AttributeType.REALM,
        AttributeType.NONCE,
        AttributeType.PASSWORD_ALGORITHM,
        AttributeType.PRIORITY,
        AttributeType.USE_CANDIDATE,
    }
)
# RFC 5780 sections 7.5 and 7.6: RESPONSE-PORT and PADDING are UDP-only;
# CHANGE-REQUEST needs the four sockets as well.
_DATAGRAM_UNDERSTOOD = _ALWAYS_UNDERSTOOD | {AttributeType.RESPONSE_PORT, AttributeType.PADDING}
_DATAGRAM_UNDERSTOOD_RFC5780 = _DATAGRAM_UNDERSTOOD | {AttributeType.CHANGE_REQUEST}

# Pieces of the fast path for a plain IPv4 Binding request.
_PLAIN_REQUEST_HEAD = struct.pack("!HHI", 0x0001, 0, stun.MAGIC_COOKIE)
_PLAIN_FINGERPRINT_REQUEST_HEAD = struct.pack("!HHI", 0x0001, 8, stun.MAGIC_COOKIE)
_FINGERPRINT_HEADER = struct.pack("!HH", AttributeType.FINGERPRINT, 4)
_SUCCESS_TYPE = stun.encode_message_type(stun.Method.BINDING, MessageClass.SUCCESS_RESPONSE)
# Attribute header, reserved byte and family of an IPv4 address attribute.
_XOR_MAPPED_V4_HEADER = struct.pack(
    "!HHBB", AttributeType.XOR_MAPPED_ADDRESS, 8, 0, stun.FAMILY_IPV4
)
_MAPPED_V4_HEADER = struct.pack("!HHBB", AttributeType.MAPPED_ADDRESS, 8, 0, stun.FAMILY_IPV4)
# Header, XOR-MAPPED-ADDRESS, MAPPED-ADDRESS; SOFTWARE and FINGERPRINT follow.
_PLAIN_SUCCESS = struct.Struct("!HHI12s6sHI6sH4s")
_PLAIN_BODY_BYTES = 2 * 12 + 8  # two address attributes and the FINGERPRINT
_FINGERPRINT_ATTRIBUTE = struct.Struct("!HHI")
_COOKIE_HIGH = stun.MAGIC_COOKIE >> 16


@frozen
class StunReply:
    """What to send: ``payload`` from local address ``source`` to ``destination``."""

    payload: bytes
    source: Address
    destination: Address


@frozen
class AlternateAddresses:
    """
    The RFC 5780 set-up: two IP addresses and two ports, four sockets.

    ``primary`` is (ip1, port1), ``alternate`` (ip2, port2); the server
    listens on every combination of the IPs and ports.
    """

    primary_ip: str
    alternate_ip: str
    primary_port: int
    alternate_port: int

    def other_ip(self, ip: str) -> str:
        return self.alternate_ip if ip == self.primary_ip else self.primary_ip

    def other_port(self, port: int) -> int:
        return self.alternate_port if port == self.primary_port else self.primary_port

    def sockets(self) -> list[Address]:
        """The four local addresses, primary first."""
        return [
            (ip, port)
            for ip in (self.primary_ip, self.alternate_ip)
            for port in (self.primary_port, self.alternate_port)
        ]


class StunResponder:
    """
    Decides the answer to each STUN datagram or stream message (sans-IO).

    The counters are plain attributes so a status page can read them:
    ``requests`` (well-formed STUN requests seen), ``responses`` (success
    responses produced), ``errors`` (error responses produced) and
    ``dropped`` (input that got no answer).
    """

    def __init__(
        self,
        *,
        software: str | None = DEFAULT_SOFTWARE,
        alternates: AlternateAddresses | None = None,
    ) -> None:
        self.software = software
        self.alternates = alternates
        self.requests = 0
        self.responses = 0
        self.errors = 0
        self.dropped = 0
        #: Datagrams dropped unread because their source was over its rate.
        self.rate_limited = 0
        self.last_drop_reason = ""
        self._software_cache: tuple[str | None, bytes] = (None, b"")

    def metrics(self) -> dict[str, int]:
        """The counters, for /status and /metrics."""
        return {
            "requests": self.requests,
            "responses": self.responses,
            "errors": self.errors,
            "dropped": self.dropped,
            "rate_limited": self.rate_limited,
        }

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.last_drop_reason = reason

    def answer_datagram(self, data: bytes, client: Address, local: Address) -> StunReply | None:
        """
        The reply to one UDP datagram, or None (then ``last_drop_reason`` says why).

        ``local`` is the address of the socket it arrived on.
        """
        payload = self.answer_plain_binding(data, client)
        if payload is not None:
            return StunReply(payload, local, client)
        try:
            request = stun.decode_message(data)
        except StunDecodeError as e:
            if len(data) >= stun.HEADER_BYTES and data[4:8] != stun.MAGIC_COOKIE_BYTES:
                return self._classic(data, client, local, e)
            return self._malformed(data, client, local, e)
        return self.answer_message(request, client, local, datagram=True)

    def _classic(
        self, data: bytes, client: Address, local: Address, error: StunDecodeError
    ) -> StunReply | None:
        # RFC 5389 section 12.2: an RFC 3489 client is recognised by the
        # missing cookie and still gets its Binding answer.  Anything else
        # without the cookie is not STUN.
        try:
            request = stun.decode_message(data, allow_classic=True)
        except StunDecodeError:
            self._drop(str(error))
            return None
        if request.method != stun.Method.BINDING or request.message_class != MessageClass.REQUEST:
            self._drop(str(error))
            return None
        return self.answer_message(request, client, local, datagram=True)

    def answer_plain_binding(self, data: bytes, client: Address) -> bytes | None:
        """
        The answer to an attribute-less IPv4 Binding request, built directly.

        Nearly all load is this one request (optionally with FINGERPRINT);
        skipping the general decode and encode cuts the Python work per
        request from about 8 to 2 microseconds.  The answer goes back to
        ``client`` from the socket it came in on.  Gives the same bytes as
        the general path (a test checks), or None when the datagram needs
        the general path (``answer_datagram``); counts only what it answers.
        """
        if self.alternates is not None:
            return None
        if len(data) == 20:
            if data[:8] != _PLAIN_REQUEST_HEAD:
                return None
        elif (
            len(data) != 28
            or data[:8] != _PLAIN_FINGERPRINT_REQUEST_HEAD
            or data[20:24] != _FINGERPRINT_HEADER
            or (zlib.crc32(data[:20]) ^ stun.FINGERPRINT_XOR) != int.from_bytes(data[24:28], "big")
        ):
            return None
        host, port = client
        if ":" in host:
            return None
        software, tail = self._software_cache
        if software != self.software:
            tail = b""
            if self.software is not None:
                tail = stun.encode_attribute(AttributeType.SOFTWARE, stun.text_value(self.software))
            self._software_cache = (self.software, tail)
        raw = socket.inet_aton(host)
        message = (
            _PLAIN_SUCCESS.pack(
                _SUCCESS_TYPE,
                _PLAIN_BODY_BYTES + len(tail),
                stun.MAGIC_COOKIE,
                data[8:20],
                _XOR_MAPPED_V4_HEADER,
                port ^ _COOKIE_HIGH,
                int.from_bytes(raw, "big") ^ stun.MAGIC_COOKIE,
                _MAPPED_V4_HEADER,
                port,
                raw,
            )
            + tail
        )
        self.requests += 1
        self.responses += 1
        return message + _FINGERPRINT_ATTRIBUTE.pack(
            AttributeType.FINGERPRINT, 4, zlib.crc32(message) ^ stun.FINGERPRINT_XOR
        )

    def answer_stream_garbage(self, error: StunDecodeError) -> None:
        """Count a stream that had to be dropped."""
        self._drop(str(error))

    def answer_message(
        self, request: stun.StunMessage, client: Address, local: Address, *, datagram: bool = False
    ) -> StunReply | None:
        """The reply to one decoded message; CHANGE-REQUEST only works on ``datagram``s."""
        if request.message_class != MessageClass.REQUEST:
            self._drop(f"unexpected {request.message_class.name.lower()}")
            return None
        self.requests += 1
        if request.method != stun.Method.BINDING:
            return self._error(request, 400, "Unsupported Method", client, local)
        understood: Iterable[int] = _ALWAYS_UNDERSTOOD
        if datagram:
            understood = _DATAGRAM_UNDERSTOOD
            if self.alternates is not None:
                understood = _DATAGRAM_UNDERSTOOD_RFC5780
        unknown = stun.unknown_required_attributes(request, understood)
        if unknown:
            return self._error(request, 420, None, client, local, unknown=unknown)
        destination = client
        padding = request.get(AttributeType.PADDING)
        try:
            response_port = request.response_port()
        except StunDecodeError:
            return self._error(request, 400, "Malformed RESPONSE-PORT", client, local)
        if response_port is not None:
            # RFC 5780 section 6.1: PADDING and RESPONSE-PORT together are an error.
            if padding is not None:
                return self._error(request, 400, "PADDING with RESPONSE-PORT", client, local)
            destination = (client[0], response_port)
        source = local
        other: Address | None = None
        # The four-socket set-up is UDP's; a stream listener shares the
        # responder but not the sockets, so its answers name no alternates.
        alternates = self.alternates if datagram else None
        if alternates is not None:
            try:
                change_ip, change_port = request.change_request()
            except StunDecodeError:
                return self._error(request, 400, "Malformed CHANGE-REQUEST", client, local)
            ip, port = local
            other = (alternates.other_ip(ip), alternates.other_port(port))
            source = (
                alternates.other_ip(ip) if change_ip else ip,
                alternates.other_port(port) if change_port else port,
            )
        response = stun.binding_success(
            request,
            client,
            other_address=other,
            response_origin=source if alternates is not None or request.is_classic else None,
            software=self.software,
        )
        if padding is not None:
            # RFC 5780 section 6.1: pad the response like the request (the
            # client probes for fragmentation trouble this way).
            response = evolve(
                response,
                attributes=response.attributes + ((AttributeType.PADDING, bytes(len(padding))),),
            )
        self.responses += 1
        payload = stun.encode_message(response, fingerprint=not request.is_classic)
        return StunReply(payload, source, destination)

    def _malformed(
        self, data: bytes, client: Address, local: Address, error: StunDecodeError
    ) -> StunReply | None:
        # RFC 8489 section 6.3: what fails the header, cookie or FINGERPRINT
        # checks is not STUN and is dropped silently.  A request that passes
        # them but is broken inside gets a 400.
        if (
            not stun.is_stun(data)
            or isinstance(error, stun.StunFingerprintError)
            or len(data) > stun.MAX_MESSAGE_BYTES
            or struct.unpack_from("!H", data, 2)[0] + stun.HEADER_BYTES != len(data)
        ):
            self._drop(str(error))
            return None
        message_type = struct.unpack_from("!H", data)[0]
        method, message_class = stun.decode_message_type(message_type)
        if message_class != MessageClass.REQUEST:
            self._drop(str(error))
            return None
        self.requests += 1
        request = stun.StunMessage(method, message_class, data[8:20])
        return self._error(request, 400, None, client, local)

    def _error(
        self,
        request: stun.StunMessage,
        code: int,
        reason: str | None,
        client: Address,
        local: Address,
        unknown: Iterable[int] = (),
    ) -> StunReply:
        self.errors += 1
        response = stun.error_response(
            request, code, reason, unknown_attributes=unknown, software=self.software
        )
        return StunReply(
            stun.encode_message(response, fingerprint=not request.is_classic), local, client
        )


def _address_of(host: IAddress) -> Address:
    return (host.host, host.port)  # type: ignore[attr-defined]


def set_socket_buffers(sock: socket.socket, receive_bytes: int, send_bytes: int) -> tuple[int, int]:
    """
    Ask for large socket buffers; returns what the kernel granted.

    Without privileges the kernel silently caps the request at
    net.core.rmem_max/wmem_max; callers log the granted sizes so an
    operator sees when a sysctl is needed.
    """
    # The *FORCE variants (Linux, root only) ignore the sysctl caps.
    settings = [
        (socket.SO_RCVBUF, getattr(socket, "SO_RCVBUFFORCE", None), receive_bytes),
        (socket.SO_SNDBUF, getattr(socket, "SO_SNDBUFFORCE", None), send_bytes),
    ]
    for option, forced, wanted in settings:
        if wanted <= 0:
            continue
        try:
            if forced is None:
                raise OSError("no forced variant")
            sock.setsockopt(socket.SOL_SOCKET, forced, wanted)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, option, wanted)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )


class StunUdpServer(DatagramProtocol):
    """
    Answers STUN on one UDP socket.

    Several instances may share one ``StunResponder`` (and its
    ``senders`` table) so that an RFC 5780 CHANGE-REQUEST answer leaves
    from the socket on the other IP or port.
    """

    log = Logger()

    def __init__(
        self,
        responder: StunResponder | None = None,
        *,
        receive_buffer_bytes: int = DEFAULT_SOCKET_BUFFER_BYTES,
        send_buffer_bytes: int = DEFAULT_SOCKET_BUFFER_BYTES,
        senders: dict[Address, StunUdpServer] | None = None,
        source_limit: SourceRateLimit | None = None,
    ) -> None:
        self.responder = responder if responder is not None else StunResponder()
        self.source_limit = source_limit
        self.receive_buffer_bytes = receive_buffer_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.senders: dict[Address, StunUdpServer] = senders if senders is not None else {}
        self.local: Address = ("0.0.0.0", 0)
        self.granted_buffers: tuple[int, int] | None = None
        # The socket's own sendto, when the transport has a real socket:
        # udp.Port.write re-validates the address (three string parses) on
        # every datagram, which costs more than building the response, and
        # our destinations all come from recvfrom on this socket family.
        self.sendto: Callable[[bytes, Address], int] | None = None
        self._warned_missing_sender = False

    # The counters live on the responder; these read them for status pages.
    @property
    def requests(self) -> int:
        return self.responder.requests

    @property
    def responses(self) -> int:
        return self.responder.responses

    @property
    def errors(self) -> int:
        return self.responder.errors

    @property
    def dropped(self) -> int:
        return self.responder.dropped

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.local = _address_of(self.transport.getHost())
        self.senders[self.local] = self
        sock = getattr(self.transport, "socket", None)
        if isinstance(sock, socket.socket):
            self.sendto = sock.sendto
            self.granted_buffers = set_socket_buffers(
                sock, self.receive_buffer_bytes, self.send_buffer_bytes
            )
            if self.receive_buffer_bytes and self.granted_buffers[0] < self.receive_buffer_bytes:
                self.log.warn(
                    "STUN socket {local} got a {granted}-byte receive buffer instead of "
                    "{wanted}; raise net.core.rmem_max (sysctl) or run as root to avoid "
                    "losing requests under load",
                    local=self.local,
                    granted=self.granted_buffers[0],
                    wanted=self.receive_buffer_bytes,
                )

    def stopProtocol(self) -> None:
        self.sendto = None
        if self.senders.get(self.local) is self:
            del self.senders[self.local]

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        limit = self.source_limit
        if limit is not None and not limit.admit(addr[0]):
            self.responder.rate_limited += 1
            return
        sendto = self.sendto
        if sendto is not None:
            # The per-packet path of a loaded server: no reply object, no lookups.
            payload = self.responder.answer_plain_binding(datagram, addr)
            if payload is not None:
                try:
                    sendto(payload, addr)
                except OSError as e:
                    self.log.debug("could not answer {client}: {error}", client=addr, error=e)
                return
        reply = self.responder.answer_datagram(datagram, addr, self.local)
        if reply is None:
            self.log.debug(
                "dropped datagram from {client}: {why}",
                client=addr,
                why=self.responder.last_drop_reason,
            )
            return
        sender = self if reply.source == self.local else self.senders.get(reply.source)
        if sender is None or sender.transport is None:
            # Warn once; after that the same misconfiguration, triggered by
            # every client's CHANGE-REQUEST, must not flood the log.
            emit = self.log.debug if self._warned_missing_sender else self.log.warn
            self._warned_missing_sender = True
            emit(
                "no STUN socket bound at {source} to answer a CHANGE-REQUEST; "
                "check the mediator's alternate address and port settings",
                source=reply.source,
            )
            return
        try:
            if sender.sendto is not None:
                sender.sendto(reply.payload, reply.destination)
            else:
                sender.transport.write(reply.payload, reply.destination)
        except OSError as e:
            # A full send buffer or an unreachable client must not stop the server.
            self.log.debug("could not answer {client}: {error}", client=addr, error=e)


class StunTcpServerProtocol(Protocol):
    """Answers STUN on one TCP connection (RFC 8489 section 6.2.2 framing)."""

    log = Logger()

    def __init__(
        self,
        responder: StunResponder,
        max_message_bytes: int,
        clock: IReactorTime | None = None,
        idle_timeout_seconds: float = 0,
    ) -> None:
        self.responder = responder
        self.decoder = stun.StunStreamDecoder(max_message_bytes)
        self.clock = clock
        self.idle_timeout_seconds = idle_timeout_seconds
        self._idle_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._restart_idle_timer()

    def _restart_idle_timer(self) -> None:
        if self.clock is None or self.idle_timeout_seconds <= 0:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.idle_timeout_seconds)
        else:
            self._idle_timer = self.clock.callLater(self.idle_timeout_seconds, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        assert self.transport is not None
        self.log.debug(
            "closing idle STUN connection from {client}",
            client=_address_of(self.transport.getPeer()),
        )
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            messages = self.decoder.feed(data)
        except StunDecodeError as e:
            self.responder.answer_stream_garbage(e)
            self.log.debug(
                "closing STUN connection from {client}: {why}",
                client=_address_of(self.transport.getPeer()),
                why=e,
            )
            self.transport.loseConnection()
            return
        if not messages:
            return
        self._restart_idle_timer()
        client = _address_of(self.transport.getPeer())
        local = _address_of(self.transport.getHost())
        for message in messages:
            reply = self.responder.answer_message(message, client, local)
            if reply is not None:
                self.transport.write(reply.payload)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()
        self._idle_timer = None
        factory = self.factory
        if isinstance(factory, StunTcpServerFactory):
            factory.connections -= 1


class StunTcpServerFactory(Factory):
    """
    Builds ``StunTcpServerProtocol`` for each connection, sharing one responder.

    With a ``clock``, a connection that completes no request for
    ``idle_timeout_seconds`` is closed (RFC 8489 section 6.2.2 asks servers
    to keep connections open for at least 10 s).  Beyond
    ``max_connections`` open connections new ones are refused, so a
    connection flood costs bounded memory.
    """

    log = Logger()

    def __init__(
        self,
        responder: StunResponder | None = None,
        max_message_bytes: int = stun.DEFAULT_STREAM_MAX_MESSAGE_BYTES,
        *,
        clock: IReactorTime | None = None,
        idle_timeout_seconds: float = DEFAULT_TCP_IDLE_TIMEOUT_SECONDS,
        max_connections: int = DEFAULT_MAX_TCP_CONNECTIONS,
    ) -> None:
        self.responder = responder if responder is not None else StunResponder()
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.idle_timeout_seconds = idle_timeout_seconds
        self.max_connections = max_connections
        self.connections = 0
        self.refused_connections = 0

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.connections >= self.max_connections:
            self.refused_connections += 1
            self.log.debug(
                "refused STUN connection from {client}: {limit} connections open",
                client=addr,
                limit=self.max_connections,
            )
            return None
        self.connections += 1
        protocol = StunTcpServerProtocol(
            self.responder, self.max_message_bytes, self.clock, self.idle_timeout_seconds
        )
        protocol.factory = self
        return protocol


class SourceRateLimit:
    """
    How many STUN datagrams one source address may have answered per second.

    A STUN answer is as large as the request and goes wherever the
    request's source address says, so a server that answers everything is a
    reflector for floods with forged sources.  Over its rate a source's
    datagrams are dropped unread (no error answer, which would reflect just
    as well), counted as ``rate_limited`` and logged at warn at most once a
    minute per source.  One table is shared by all of a service's sockets.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, requests_per_second: float, burst: int) -> None:
        self.clock = clock
        self.buckets = TokenBuckets(requests_per_second, burst)
        self.log_throttle = LogThrottle(clock)

    def admit(self, source: str) -> bool:
        if self.buckets.take(source, self.clock.seconds()):
            return True
        held_back = self.log_throttle.admit(source)
        if held_back is not None:
            self.log.warn(
                "STUN requests from {source} over {rate:g}/s (burst {burst:g}) are dropped"
                "{more}; raise stun-requests-per-second if this is a legitimate client",
                source=source,
                rate=self.buckets.rate_per_second,
                burst=self.buckets.burst,
                more=f" ({held_back} more since the last line)" if held_back else "",
            )
        return False


class StunUdpService(Service):
    """
    Listens for STUN on one UDP socket, or on four for RFC 5780.

    With ``alternate_ip`` and ``alternate_port`` set, sockets are opened on
    (ip, port) for both IPs and both ports and the responder is told the
    set-up once the ports are known (port 0 binds a free port, which tests
    use).  The socket on the alternate IP reuses the primary port number,
    as RFC 5780 section 6 requires the same ports on both addresses.
    """

    log = Logger()

    def __init__(
        self,
        port: int,
        *,
        interface: str = "",
        alternate_ip: str | None = None,
        alternate_port: int | None = None,
        responder: StunResponder | None = None,
        reactor: object = None,
        receive_buffer_bytes: int = DEFAULT_SOCKET_BUFFER_BYTES,
        send_buffer_bytes: int = DEFAULT_SOCKET_BUFFER_BYTES,
        requests_per_second: float = 0,
        request_burst: int = 0,
    ) -> None:
        """
        ``requests_per_second`` (with ``request_burst``) limits each source
        address (see :class:`SourceRateLimit`); 0, the default here, answers
        everything, as a load test from one address needs.  The mediator
        role sets a limit by default.
        """
        if (alternate_ip is None) != (alternate_port is None):
            raise ValueError(
                "RFC 5780 needs both an alternate IP and an alternate port; set both or neither"
            )
        if alternate_ip is not None and not interface:
            raise ValueError("RFC 5780 needs the primary IP as interface, not the wildcard address")
        if alternate_ip is not None and (
            alternate_ip == interface or (port and alternate_port == port)
        ):
            raise ValueError(
                "the alternate IP and port must differ from the primary ones (RFC 5780)"
            )
        self.port = port
        self.interface = interface
        self.alternate_ip = alternate_ip
        self.alternate_port = alternate_port
        self.responder = responder if responder is not None else StunResponder()
        self.reactor = reactor
        self.receive_buffer_bytes = receive_buffer_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.senders: dict[Address, StunUdpServer] = {}
        self.listening_ports: list[IListeningPort] = []
        self.requests_per_second = requests_per_second
        self.request_burst = request_burst
        self._source_limit: SourceRateLimit | None = None

    def _limit(self, reactor: object) -> SourceRateLimit | None:
        if self.requests_per_second <= 0:
            return None
        if self._source_limit is None:
            assert IReactorTime.providedBy(reactor)
            self._source_limit = SourceRateLimit(
                reactor,
                self.requests_per_second,
                max(1, self.request_burst),
            )
        return self._source_limit

    def _listen(self, port: int, interface: str) -> IListeningPort:
        reactor = self.reactor
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        protocol = StunUdpServer(
            self.responder,
            receive_buffer_bytes=self.receive_buffer_bytes,
            send_buffer_bytes=self.send_buffer_bytes,
            senders=self.senders,
            source_limit=self._limit(reactor),
        )
        listening: IListeningPort = reactor.listenUDP(  # type: ignore[attr-defined]
            port, protocol, interface=interface, maxPacketSize=UDP_MAX_PACKET_BYTES
        )
        self.listening_ports.append(listening)
        return listening

    def startService(self) -> None:
        super().startService()
        try:
            primary = self._listen(self.port, self.interface)
            if self.alternate_ip is None or self.alternate_port is None:
                return
            port1 = primary.getHost().port  # type: ignore[attr-defined]
            port2 = self._listen(self.alternate_port, self.interface).getHost().port  # type: ignore[attr-defined]
            self._listen(port1, self.alternate_ip)
            self._listen(port2, self.alternate_ip)
            self.responder.alternates = AlternateAddresses(
                self.interface, self.alternate_ip, port1, port2
            )
        except BaseException:
            self._stop_listening()
            raise

    def _stop_listening(self) -> Deferred[list[object]]:
        stopped: list[Deferred[object]] = [
            maybeDeferred(port.stopListening) for port in self.listening_ports
        ]
        self.listening_ports = []
        return gatherResults(stopped)

    def stopService(self) -> Deferred[list[object]]:
        super().stopService()
        return self._stop_listening()

    def addresses(self) -> list[Address]:
        """The bound local addresses, primary first."""
        return [_address_of(port.getHost()) for port in self.listening_ports]
