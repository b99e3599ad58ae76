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
  OTHER-ADDRESS in every response, and CHANGE-REQUEST honoured by answering
  from the socket on the other IP and/or port.  Without the full four
  sockets a CHANGE-REQUEST gets 420, as section 6 requires;
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
from typing import Iterable

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

from p2psip.nat import stun
from p2psip.nat.stun import AttributeType, MessageClass, StunDecodeError

Address = tuple[str, int]

DEFAULT_SOFTWARE = "p2psip"
# Several MiB like coturn (4 MiB) and Kamailio (8 MiB effective); the kernel
# caps the request at net.core.rmem_max / wmem_max unless we are root.
DEFAULT_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
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
        self.last_drop_reason = ""

    def metrics(self) -> dict[str, int]:
        """The counters, for /status and /metrics."""
        return {
            "requests": self.requests,
            "responses": self.responses,
            "errors": self.errors,
            "dropped": self.dropped,
        }

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self.last_drop_reason = reason

    def answer_datagram(self, data: bytes, client: Address, local: Address) -> StunReply | None:
        """
        The reply to one UDP datagram, or None (then ``last_drop_reason`` says why).

        ``local`` is the address of the socket it arrived on.
        """
        try:
            request = stun.decode_message(data)
        except StunDecodeError as e:
            return self._malformed(data, client, local, e)
        return self.answer_message(request, client, local, datagram=True)

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
        if self.alternates is not None and datagram:
            understood = _ALWAYS_UNDERSTOOD | {AttributeType.CHANGE_REQUEST}
        unknown = stun.unknown_required_attributes(request, understood)
        if unknown:
            return self._error(request, 420, None, client, local, unknown=unknown)
        source = local
        other: Address | None = None
        alternates = self.alternates
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
            response_origin=source if alternates is not None else None,
            software=self.software,
        )
        self.responses += 1
        return StunReply(stun.encode_message(response), source, client)

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
        return StunReply(stun.encode_message(response), local, client)


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
    ) -> None:
        self.responder = responder if responder is not None else StunResponder()
        self.receive_buffer_bytes = receive_buffer_bytes
        self.send_buffer_bytes = send_buffer_bytes
        self.senders: dict[Address, StunUdpServer] = senders if senders is not None else {}
        self.local: Address = ("0.0.0.0", 0)
        self.granted_buffers: tuple[int, int] | None = None

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

    def startProtocol(self) -> None:  # noqa: N802 - Twisted's name
        assert self.transport is not None
        self.local = _address_of(self.transport.getHost())
        self.senders[self.local] = self
        sock = getattr(self.transport, "socket", None)
        if isinstance(sock, socket.socket):
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

    def stopProtocol(self) -> None:  # noqa: N802 - Twisted's name
        if self.senders.get(self.local) is self:
            del self.senders[self.local]

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:  # noqa: N802
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
            self.log.warn(
                "no STUN socket bound at {source} to answer a CHANGE-REQUEST; "
                "check the mediator's alternate address and port settings",
                source=reply.source,
            )
            return
        try:
            sender.transport.write(reply.payload, reply.destination)
        except OSError as e:
            # A full send buffer or an unreachable client must not stop the server.
            self.log.debug("could not answer {client}: {error}", client=addr, error=e)


class StunTcpServerProtocol(Protocol):
    """Answers STUN on one TCP connection (RFC 8489 section 6.2.2 framing)."""

    log = Logger()

    def __init__(self, responder: StunResponder, max_message_bytes: int) -> None:
        self.responder = responder
        self.decoder = stun.StunStreamDecoder(max_message_bytes)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
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
        client = _address_of(self.transport.getPeer())
        local = _address_of(self.transport.getHost())
        for message in messages:
            reply = self.responder.answer_message(message, client, local)
            if reply is not None:
                self.transport.write(reply.payload)


class StunTcpServerFactory(Factory):
    """Builds ``StunTcpServerProtocol`` for each connection, sharing one responder."""

    def __init__(
        self,
        responder: StunResponder | None = None,
        max_message_bytes: int = stun.DEFAULT_STREAM_MAX_MESSAGE_BYTES,
    ) -> None:
        self.responder = responder if responder is not None else StunResponder()
        self.max_message_bytes = max_message_bytes

    def buildProtocol(self, addr: IAddress | None) -> Protocol:  # noqa: N802 - Twisted's name
        protocol = StunTcpServerProtocol(self.responder, self.max_message_bytes)
        protocol.factory = self
        return protocol


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
    ) -> None:
        if (alternate_ip is None) != (alternate_port is None):
            raise ValueError(
                "RFC 5780 needs both an alternate IP and an alternate port; set both or neither"
            )
        if alternate_ip is not None and not interface:
            raise ValueError("RFC 5780 needs the primary IP as interface, not the wildcard address")
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
        )
        listening: IListeningPort = reactor.listenUDP(  # type: ignore[attr-defined]
            port, protocol, interface=interface, maxPacketSize=UDP_MAX_PACKET_BYTES
        )
        self.listening_ports.append(listening)
        return listening

    def startService(self) -> None:  # noqa: N802 - Twisted's name
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

    def stopService(self) -> Deferred[list[object]]:  # noqa: N802 - Twisted's name
        super().stopService()
        return self._stop_listening()

    def addresses(self) -> list[Address]:
        """The bound local addresses, primary first."""
        return [_address_of(port.getHost()) for port in self.listening_ports]
