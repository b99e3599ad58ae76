"""Tests for the STUN Binding server: the sans-IO responder and its UDP/TCP adapters."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import stun
from p2psip.nat.stun import AttributeType, MessageClass
from p2psip.nat.stun_server import (
    AlternateAddresses,
    StunReply,
    StunResponder,
    StunTcpServerFactory,
    StunUdpServer,
    StunUdpService,
)
from p2psip.testing import MemoryUDPReactor

CLIENT = ("198.51.100.9", 40000)
CLIENT6 = ("2001:db8::9", 40000)
LOCAL = ("192.0.2.1", 3478)
ALTERNATES = AlternateAddresses("192.0.2.1", "192.0.2.2", 3478, 3479)


def request_bytes(**kwargs: object) -> bytes:
    return stun.encode_message(stun.binding_request(**kwargs))  # type: ignore[arg-type]


def raw_request(attributes: tuple[tuple[int, bytes], ...], message_type_class: int = 0) -> bytes:
    msg = stun.StunMessage(1, MessageClass(message_type_class), b"0123456789ab", attributes)
    return stun.encode_message(msg)


class ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.responder = StunResponder(software="test")

    def answer(self, data: bytes, client: tuple[str, int] = CLIENT) -> stun.StunMessage:
        reply = self.responder.answer_datagram(data, client, LOCAL)
        assert reply is not None
        self.assertEqual((reply.source, reply.destination), (LOCAL, client))
        return stun.decode_message(reply.payload)

    def test_binding_success(self) -> None:
        """A Binding request gets both mapped addresses, SOFTWARE and FINGERPRINT, with its own ID."""
        data = request_bytes(transaction_id=b"abcdefghijkl")
        response = self.answer(data)
        self.assertEqual(response.message_class, MessageClass.SUCCESS_RESPONSE)
        self.assertEqual(response.transaction_id, b"abcdefghijkl")
        self.assertEqual(response.xor_mapped_address(), CLIENT)
        self.assertEqual(response.mapped_address(), CLIENT)
        self.assertEqual(response.software(), "test")
        self.assertEqual(response.attribute_types()[-1], AttributeType.FINGERPRINT)
        self.assertIsNone(response.other_address())
        self.assertEqual(
            self.responder.metrics(),
            {"requests": 1, "responses": 1, "errors": 0, "dropped": 0, "rate_limited": 0},
        )

    def test_ipv6_client(self) -> None:
        """An IPv6 client learns its IPv6 address."""
        self.assertEqual(self.answer(request_bytes(), CLIENT6).xor_mapped_address(), CLIENT6)

    def test_credentials_and_ice_attributes_accepted(self) -> None:
        """A request with USERNAME, PRIORITY and MESSAGE-INTEGRITY is answered, not refused."""
        msg = stun.StunMessage(
            1,
            MessageClass.REQUEST,
            b"0123456789ab",
            ((AttributeType.USERNAME, b"a:b"), (AttributeType.PRIORITY, b"\0\0\0\1")),
        )
        data = stun.encode_message(msg, integrity_key=b"k")
        self.assertEqual(self.answer(data).message_class, MessageClass.SUCCESS_RESPONSE)

    def test_unknown_required_attribute(self) -> None:
        """An unknown comprehension-required attribute gets 420 listing it; optional ones are ignored."""
        data = raw_request(((0x7777, b"x"), (0x8777, b"y"), (0x7777, b"z")))
        response = self.answer(data)
        self.assertEqual(response.message_class, MessageClass.ERROR_RESPONSE)
        self.assertEqual(response.error_code(), (420, "Unknown Attribute"))
        self.assertEqual(response.unknown_attributes(), (0x7777,))
        self.assertEqual(self.responder.errors, 1)

    def test_change_request_without_alternates(self) -> None:
        """Without RFC 5780 set-up a CHANGE-REQUEST gets 420, as RFC 5780 section 6 requires."""
        response = self.answer(request_bytes(change_ip=True))
        self.assertEqual(response.error_code(), (420, "Unknown Attribute"))
        self.assertEqual(response.unknown_attributes(), (AttributeType.CHANGE_REQUEST,))

    def test_malformed_stun_request(self) -> None:
        """A request with a sound header but an overrunning attribute gets 400 with its ID."""
        body = struct.pack("!HH", 0x8022, 200) + b"abcd"
        data = struct.pack("!HHI", 1, len(body), stun.MAGIC_COOKIE) + b"0123456789ab" + body
        response = self.answer(data)
        self.assertEqual(response.error_code(), (400, "Bad Request"))
        self.assertEqual(response.transaction_id, b"0123456789ab")

    def test_other_method(self) -> None:
        """A request for a method we do not serve gets 400."""
        msg = stun.StunMessage(0x003, MessageClass.REQUEST, b"0123456789ab")
        response = self.answer(stun.encode_message(msg))
        self.assertEqual(response.method, 0x003)
        self.assertEqual(response.error_code(), (400, "Unsupported Method"))

    def test_dropped(self) -> None:
        """Garbage, a bad FINGERPRINT, responses, indications and cookie-less non-requests get no answer."""
        bad_fingerprint = bytearray(request_bytes())
        bad_fingerprint[-1] ^= 0xFF
        classic_response = struct.pack("!HH", 0x0101, 0) + b"\x01" * 16
        inputs = [
            b"",
            b"garbage",
            b"\x80" * 100,
            bytes(bad_fingerprint),
            raw_request((), MessageClass.SUCCESS_RESPONSE),
            raw_request((), MessageClass.INDICATION),
            raw_request((), MessageClass.ERROR_RESPONSE)[:-4],
            classic_response,
            struct.pack("!HH", 1, 4) + b"\x01" * 16,
        ]
        for data in inputs:
            self.assertIsNone(self.responder.answer_datagram(data, CLIENT, LOCAL), data)
        self.assertEqual(self.responder.dropped, len(inputs))
        self.assertEqual(self.responder.requests, 0)

    def test_rfc3489_client(self) -> None:
        """A cookie-less RFC 3489 request gets MAPPED-ADDRESS and SOURCE-ADDRESS, its 16-byte ID, no FINGERPRINT."""
        data = struct.pack("!HH", 1, 0) + bytes(range(16))
        reply = self.responder.answer_datagram(data, CLIENT, LOCAL)
        assert reply is not None
        self.assertEqual(reply.payload[4:20], bytes(range(16)))
        response = stun.decode_message(reply.payload, allow_classic=True)
        self.assertTrue(response.is_classic)
        self.assertEqual(response.message_class, MessageClass.SUCCESS_RESPONSE)
        self.assertEqual(response.mapped_address(), CLIENT)
        self.assertEqual(response.response_origin(), LOCAL)
        self.assertEqual(
            response.attribute_types(),
            [AttributeType.MAPPED_ADDRESS, AttributeType.SOURCE_ADDRESS, AttributeType.SOFTWARE],
        )

    def test_rfc3489_change_request(self) -> None:
        """An RFC 3489 CHANGE-REQUEST is honoured with four sockets and names CHANGED-ADDRESS."""
        responder = StunResponder(alternates=ALTERNATES)
        request = stun.StunMessage(
            1,
            MessageClass.REQUEST,
            b"0123456789ab",
            ((AttributeType.CHANGE_REQUEST, stun.encode_change_request(True, False)),),
            magic_cookie=0x01020304,
        )
        reply = responder.answer_datagram(
            stun.encode_message(request, fingerprint=False), CLIENT, LOCAL
        )
        assert reply is not None
        self.assertEqual(reply.source, ("192.0.2.2", 3478))
        response = stun.decode_message(reply.payload, allow_classic=True)
        self.assertEqual(response.magic_cookie, 0x01020304)
        self.assertEqual(response.other_address(), ("192.0.2.2", 3479))
        self.assertEqual(response.response_origin(), ("192.0.2.2", 3478))

    def test_rfc3489_unknown_attribute(self) -> None:
        """An RFC 3489 RESPONSE-ADDRESS is refused with 420, keeping the 16-byte ID."""
        request = stun.StunMessage(
            1,
            MessageClass.REQUEST,
            b"0123456789ab",
            ((AttributeType.RESPONSE_ADDRESS, stun.encode_address(("203.0.113.1", 9))),),
            magic_cookie=7,
        )
        reply = self.responder.answer_datagram(
            stun.encode_message(request, fingerprint=False), CLIENT, LOCAL
        )
        assert reply is not None
        response = stun.decode_message(reply.payload, allow_classic=True)
        self.assertEqual((response.magic_cookie, response.transaction_id), (7, b"0123456789ab"))
        self.assertEqual(response.unknown_attributes(), (AttributeType.RESPONSE_ADDRESS,))
        self.assertEqual(reply.destination, CLIENT)

    @settings(deadline=None)
    @given(st.binary(max_size=120))
    def test_any_bytes(self, data: bytes) -> None:
        """Any datagram yields a reply or None, never an exception."""
        reply = StunResponder().answer_datagram(data, CLIENT, LOCAL)
        if reply is not None:
            stun.decode_message(reply.payload, allow_classic=True)

    @settings(deadline=None)
    @given(st.binary(max_size=80), st.integers(0, 0x3FFF))
    def test_any_body(self, body: bytes, message_type: int) -> None:
        """Any attribute bytes behind a valid header yield a decodable reply or None."""
        body = body[: len(body) // 4 * 4]
        data = struct.pack("!HHI", message_type, len(body), stun.MAGIC_COOKIE) + b"t" * 12 + body
        responder = StunResponder(alternates=ALTERNATES)
        reply = responder.answer_datagram(data, CLIENT, LOCAL)
        if reply is not None:
            stun.decode_message(reply.payload)


class FastPathTests(SynchronousTestCase):
    @settings(deadline=None)
    @given(
        st.ip_addresses(v=4).map(str),
        st.integers(0, 0xFFFF),
        st.binary(min_size=12, max_size=12),
        st.booleans(),
        st.one_of(st.none(), st.text(max_size=30)),
    )
    def test_same_bytes_as_general_path(
        self, host: str, port: int, txid: bytes, fingerprint: bool, software: str | None
    ) -> None:
        """The plain-request fast path answers byte for byte like the general encoder."""
        request = stun.binding_request(txid)
        data = stun.encode_message(request, fingerprint=fingerprint)
        reply = StunResponder(software=software).answer_datagram(data, (host, port), LOCAL)
        assert reply is not None
        expected = stun.encode_message(
            stun.binding_success(request, (host, port), software=software)
        )
        self.assertEqual(reply.payload, expected)

    def test_counts(self) -> None:
        """Fast-path answers are counted like the others."""
        responder = StunResponder()
        responder.answer_datagram(request_bytes(), CLIENT, LOCAL)
        self.assertEqual((responder.requests, responder.responses), (1, 1))

    def test_software_change(self) -> None:
        """Changing the SOFTWARE text later is reflected in fast-path answers."""
        responder = StunResponder(software="one")
        responder.answer_datagram(request_bytes(), CLIENT, LOCAL)
        responder.software = "two"
        reply = responder.answer_datagram(request_bytes(), CLIENT, LOCAL)
        assert reply is not None
        self.assertEqual(stun.decode_message(reply.payload).software(), "two")


class ResponsePortAndPaddingTests(SynchronousTestCase):
    def reply(self, attributes: tuple[tuple[int, bytes], ...], datagram: bool = True) -> StunReply:
        request = stun.StunMessage(1, MessageClass.REQUEST, b"0123456789ab", attributes)
        if datagram:
            reply = StunResponder().answer_datagram(stun.encode_message(request), CLIENT, LOCAL)
        else:
            reply = StunResponder().answer_message(request, CLIENT, LOCAL)
        assert reply is not None
        return reply

    def test_response_port(self) -> None:
        """RESPONSE-PORT sends the answer to that port of the client's IP, still naming the real mapping."""
        reply = self.reply(((AttributeType.RESPONSE_PORT, b"\x9c\x41\0\0"),))
        self.assertEqual(reply.destination, (CLIENT[0], 40001))
        self.assertEqual(stun.decode_message(reply.payload).xor_mapped_address(), CLIENT)

    def test_bad_response_port(self) -> None:
        """A RESPONSE-PORT of zero or the wrong size gets 400 to the real source."""
        for value in (b"\0\0\0\0", b"\0\1"):
            reply = self.reply(((AttributeType.RESPONSE_PORT, value),))
            self.assertEqual(reply.destination, CLIENT)
            self.assertEqual(stun.decode_message(reply.payload).error_code()[0], 400)  # type: ignore[index]

    def test_padding(self) -> None:
        """PADDING in the request is echoed with the same length."""
        reply = self.reply(((AttributeType.PADDING, b"x" * 100),))
        self.assertEqual(stun.decode_message(reply.payload).get(AttributeType.PADDING), bytes(100))

    def test_padding_with_response_port(self) -> None:
        """PADDING together with RESPONSE-PORT gets 400, as RFC 5780 section 6.1 requires."""
        reply = self.reply(
            ((AttributeType.PADDING, b"x"), (AttributeType.RESPONSE_PORT, b"\0\1\0\0"))
        )
        self.assertEqual(
            stun.decode_message(reply.payload).error_code(), (400, "PADDING with RESPONSE-PORT")
        )

    def test_stream(self) -> None:
        """Over TCP, RESPONSE-PORT is not understood: 420."""
        reply = self.reply(((AttributeType.RESPONSE_PORT, b"\0\1\0\0"),), datagram=False)
        self.assertEqual(
            stun.decode_message(reply.payload).unknown_attributes(), (AttributeType.RESPONSE_PORT,)
        )


class Rfc5780ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.responder = StunResponder(alternates=ALTERNATES)

    def reply(self, data: bytes, local: tuple[str, int] = LOCAL) -> StunReply:
        reply = self.responder.answer_datagram(data, CLIENT, local)
        assert reply is not None
        return reply

    def test_plain_request(self) -> None:
        """A plain request is answered from where it arrived, with RESPONSE-ORIGIN and OTHER-ADDRESS."""
        reply = self.reply(request_bytes())
        response = stun.decode_message(reply.payload)
        self.assertEqual(reply.source, LOCAL)
        self.assertEqual(response.response_origin(), LOCAL)
        self.assertEqual(response.other_address(), ("192.0.2.2", 3479))

    def test_change_table(self) -> None:
        """CHANGE-REQUEST picks the source as in RFC 5780 section 6.1 Table 1, from any socket."""
        for local in ALTERNATES.sockets():
            ip, port = local
            other_ip = ALTERNATES.other_ip(ip)
            other_port = ALTERNATES.other_port(port)
            cases = {
                (False, False): (ip, port),
                (True, False): (other_ip, port),
                (False, True): (ip, other_port),
                (True, True): (other_ip, other_port),
            }
            for (change_ip, change_port), expected in cases.items():
                reply = self.reply(
                    request_bytes(change_ip=change_ip, change_port=change_port), local
                )
                response = stun.decode_message(reply.payload)
                self.assertEqual(reply.source, expected)
                self.assertEqual(response.response_origin(), expected)
                self.assertEqual(response.other_address(), (other_ip, other_port))
                self.assertEqual(reply.destination, CLIENT)

    def test_malformed_change_request(self) -> None:
        """A CHANGE-REQUEST of the wrong size gets 400."""
        reply = self.reply(raw_request(((AttributeType.CHANGE_REQUEST, b"\0\0"),)))
        self.assertEqual(
            stun.decode_message(reply.payload).error_code(), (400, "Malformed CHANGE-REQUEST")
        )

    def test_stream_names_no_alternates(self) -> None:
        """Over TCP the answer carries no OTHER-ADDRESS or RESPONSE-ORIGIN: the four sockets are UDP's."""
        reply = self.responder.answer_message(stun.binding_request(), CLIENT, LOCAL)
        assert reply is not None
        response = stun.decode_message(reply.payload)
        self.assertEqual(response.xor_mapped_address(), CLIENT)
        self.assertIsNone(response.other_address())
        self.assertIsNone(response.response_origin())

    def test_change_request_over_stream(self) -> None:
        """Over TCP a CHANGE-REQUEST cannot be honoured and gets 420."""
        request = stun.binding_request(change_port=True)
        reply = self.responder.answer_message(request, CLIENT, LOCAL)
        assert reply is not None
        self.assertEqual(stun.decode_message(reply.payload).error_code()[0], 420)  # type: ignore[index]


class FakeUdpTransport:
    """A datagram transport that records writes and knows its own address."""

    def __init__(self, host: tuple[str, int]) -> None:
        self.host = host
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.written.append((packet, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.host)


class UdpServerTests(SynchronousTestCase):
    def test_replies_to_source(self) -> None:
        """A Binding request is answered to its source with its transaction ID."""
        transport = FakeUdpTransport(LOCAL)
        server = StunUdpServer()
        server.makeConnection(transport)  # type: ignore[arg-type]
        server.datagramReceived(request_bytes(transaction_id=b"T" * 12), CLIENT)
        [(reply, addr)] = transport.written
        self.assertEqual((reply[8:20], addr), (b"T" * 12, CLIENT))
        self.assertEqual((server.requests, server.responses, server.errors), (1, 1, 0))

    def test_direct_socket_path(self) -> None:
        """With a real socket's sendto, plain requests go straight to it and others take the general path."""
        transport = FakeUdpTransport(LOCAL)
        server = StunUdpServer()
        server.makeConnection(transport)  # type: ignore[arg-type]
        sent: list[tuple[bytes, tuple[str, int]]] = []
        server.sendto = lambda payload, addr: sent.append((payload, addr)) or len(payload)
        server.datagramReceived(request_bytes(transaction_id=b"T" * 12), CLIENT)
        server.datagramReceived(request_bytes(software="x"), CLIENT)
        self.assertEqual([(reply[8:20], addr) for reply, addr in sent[:1]], [(b"T" * 12, CLIENT)])
        self.assertEqual(len(sent), 2)
        self.assertEqual(transport.written, [])
        self.assertEqual(server.responses, 2)

    def test_garbage_is_dropped(self) -> None:
        """Garbage gets no reply, only a debug-level event."""
        transport = FakeUdpTransport(LOCAL)
        server = StunUdpServer()
        server.makeConnection(transport)  # type: ignore[arg-type]
        with capturedLogs() as events:
            server.datagramReceived(b"junk", CLIENT)
        self.assertEqual(transport.written, [])
        self.assertEqual([e["log_level"].name for e in events], ["debug"])
        self.assertEqual(server.dropped, 1)

    def test_change_request_leaves_from_other_socket(self) -> None:
        """With four sockets sharing a responder, a change request is sent by the other socket."""
        responder = StunResponder(alternates=ALTERNATES)
        senders: dict[tuple[str, int], StunUdpServer] = {}
        transports = {}
        for local in ALTERNATES.sockets():
            transports[local] = FakeUdpTransport(local)
            StunUdpServer(responder, senders=senders).makeConnection(transports[local])  # type: ignore[arg-type]
        senders[LOCAL].datagramReceived(request_bytes(change_ip=True, change_port=True), CLIENT)
        written = {local: t.written for local, t in transports.items() if t.written}
        self.assertEqual(list(written), [("192.0.2.2", 3479)])
        [(_, addr)] = written[("192.0.2.2", 3479)]
        self.assertEqual(addr, CLIENT)

    def test_missing_socket_is_reported(self) -> None:
        """When the socket to answer from is missing, nothing is sent and one operator warning names it."""
        transport = FakeUdpTransport(LOCAL)
        server = StunUdpServer(StunResponder(alternates=ALTERNATES))
        server.makeConnection(transport)  # type: ignore[arg-type]
        with capturedLogs() as events:
            server.datagramReceived(request_bytes(change_ip=True), CLIENT)
            server.datagramReceived(request_bytes(change_ip=True), CLIENT)
        self.assertEqual(transport.written, [])
        self.assertEqual([e["log_level"].name for e in events], ["warn", "debug"])

    def test_stop_unregisters(self) -> None:
        """A stopped socket no longer sends for the others."""
        senders: dict[tuple[str, int], StunUdpServer] = {}
        server = StunUdpServer(senders=senders)
        server.makeConnection(FakeUdpTransport(LOCAL))  # type: ignore[arg-type]
        self.assertEqual(list(senders), [LOCAL])
        server.doStop()
        self.assertEqual(senders, {})


class TcpServerTests(SynchronousTestCase):
    def connect(
        self, factory: StunTcpServerFactory | None = None
    ) -> tuple[StunTcpServerFactory, StringTransport]:
        factory = factory if factory is not None else StunTcpServerFactory()
        protocol = factory.buildProtocol(IPv4Address("TCP", *CLIENT))
        assert protocol is not None
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", *LOCAL), peerAddress=IPv4Address("TCP", *CLIENT)
        )
        protocol.makeConnection(transport)
        self.protocol = protocol
        return factory, transport

    def test_byte_at_a_time(self) -> None:
        """Two requests fed a byte at a time get two framed responses."""
        factory, transport = self.connect()
        data = request_bytes() + request_bytes()
        for byte in data:
            self.protocol.dataReceived(bytes([byte]))
        responses = stun.StunStreamDecoder().feed(transport.value())
        self.assertEqual([r.xor_mapped_address() for r in responses], [CLIENT, CLIENT])
        self.assertEqual(factory.responder.responses, 2)

    def test_garbage_closes(self) -> None:
        """A stream that is not STUN is closed without a reply, logged at debug level."""
        factory, transport = self.connect()
        with capturedLogs() as events:
            self.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertEqual([e["log_level"].name for e in events], ["debug"])
        self.assertEqual(factory.responder.dropped, 1)

    def test_oversized_closes(self) -> None:
        """A header announcing a huge message closes the connection at once."""
        factory, transport = self.connect()
        self.protocol.dataReceived(struct.pack("!HHI", 1, 0xFFFC, stun.MAGIC_COOKIE) + b"t" * 12)
        self.assertTrue(transport.disconnecting)

    @settings(deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=6), st.booleans())
    def test_any_chunks(self, chunks: list[bytes], prefix_request: bool) -> None:
        """Arbitrary stream chunks get framed answers or a closed connection, never an exception."""
        factory, transport = self.connect()
        if prefix_request:
            chunks = [request_bytes(), *chunks]
        for chunk in chunks:
            if transport.disconnecting:
                break
            self.protocol.dataReceived(chunk)
        stun.StunStreamDecoder().feed(transport.value())

    def test_idle_timeout(self) -> None:
        """A connection without a complete request for the idle time is aborted; requests restart the timer."""
        clock = Clock()
        factory, transport = self.connect(
            StunTcpServerFactory(clock=clock, idle_timeout_seconds=30)
        )
        clock.advance(20)
        self.protocol.dataReceived(request_bytes())
        clock.advance(20)
        self.assertFalse(transport.disconnected)
        self.protocol.dataReceived(request_bytes()[:5])
        clock.advance(10)
        self.assertTrue(transport.disconnected)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(factory.connections, 0)

    def test_closed_connection_cancels_timer(self) -> None:
        """A connection that closes leaves no timer behind."""
        clock = Clock()
        _, _ = self.connect(StunTcpServerFactory(clock=clock))
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_limit(self) -> None:
        """Beyond the connection limit new connections are refused until one closes."""
        factory = StunTcpServerFactory(max_connections=2)
        address = IPv4Address("TCP", *CLIENT)
        first = factory.buildProtocol(address)
        assert first is not None
        first.makeConnection(StringTransport())
        self.assertIsNotNone(factory.buildProtocol(address))
        self.assertIsNone(factory.buildProtocol(address))
        self.assertEqual(factory.refused_connections, 1)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(factory.buildProtocol(address))


class UdpServiceTests(SynchronousTestCase):
    def test_single_socket(self) -> None:
        """Without alternates the service opens one socket with the packet size limit."""
        reactor = MemoryUDPReactor()
        service = StunUdpService(3478, interface="192.0.2.1", reactor=reactor)
        service.startService()
        self.assertEqual(list(reactor.udpPorts), [3478])
        self.assertIsNone(service.responder.alternates)
        service.stopService()
        self.assertFalse(reactor.udpPorts[3478].listening)

    def test_four_sockets(self) -> None:
        """With an alternate IP and port the service opens the four RFC 5780 sockets and tells the responder."""
        reactor = MemoryUDPReactor()
        service = StunUdpService(
            3478,
            interface="192.0.2.1",
            alternate_ip="192.0.2.2",
            alternate_port=3479,
            reactor=reactor,
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.responder.alternates, ALTERNATES)
        self.assertEqual(len(service.listening_ports), 4)

    def test_alternates_must_differ(self) -> None:
        """An alternate IP or port equal to the primary one is refused."""
        self.assertRaises(
            ValueError,
            StunUdpService,
            3478,
            interface="192.0.2.1",
            alternate_ip="192.0.2.1",
            alternate_port=3479,
        )
        self.assertRaises(
            ValueError,
            StunUdpService,
            3478,
            interface="192.0.2.1",
            alternate_ip="192.0.2.2",
            alternate_port=3478,
        )

    def test_half_configured(self) -> None:
        """An alternate IP without an alternate port is refused with a message naming both."""
        error = self.assertRaises(
            ValueError, StunUdpService, 3478, interface="192.0.2.1", alternate_ip="192.0.2.2"
        )
        self.assertIn("alternate port", str(error))


class SourceRateLimitTests(SynchronousTestCase):
    """A source over its STUN rate is dropped unread; other sources are still answered."""

    def setUp(self) -> None:
        self.reactor = MemoryUDPReactor()
        self.service = StunUdpService(
            3478,
            interface="192.0.2.1",
            reactor=self.reactor,
            requests_per_second=10,
            request_burst=20,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.protocol = self.reactor.udpPorts[3478].protocol
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

        def sendto(data: bytes, address: tuple[str, int]) -> int:
            self.sent.append((data, address))
            return len(data)

        self.protocol.sendto = sendto

    def send(self, source: tuple[str, int], count: int) -> int:
        before = len(self.sent)
        for _ in range(count):
            request = raw_request(())
            self.protocol.datagramReceived(request, source)
        return len(self.sent) - before

    def test_flood_from_one_source(self) -> None:
        attacker, neighbour = ("198.51.100.7", 4000), ("198.51.100.8", 4000)
        self.assertEqual(self.send(attacker, 100), 20)
        self.assertEqual(self.service.responder.rate_limited, 80)
        self.assertEqual(self.send(neighbour, 5), 5)
        self.reactor.advance(1.0)
        self.assertEqual(self.send(attacker, 100), 10)

    def test_flood_is_logged_once_a_minute(self) -> None:
        with capturedLogs() as events:
            self.send(("198.51.100.7", 4000), 500)
        warnings = [e for e in events if "are dropped" in str(e.get("log_format", ""))]
        self.assertEqual(len(warnings), 1)

    def test_no_limit_by_default(self) -> None:
        """The service without a limit (load tests) answers everything."""
        service = StunUdpService(3479, interface="192.0.2.1", reactor=self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNone(self.reactor.udpPorts[3479].protocol.source_limit)
