"""Tests for p2psip.sip.transport with fake transports (no sockets)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import AnyMessage, Request, Via, make_response, parse_message
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import (
    SipDatagramProtocol,
    SipListenerService,
    SipStreamProtocol,
    SipTransport,
    response_address,
    stamp_received,
)
from p2psip.testing import MemoryUDPReactor

OPTIONS = (
    b"OPTIONS sip:bob@example.org SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP phone.example.org:5062;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.org>;tag=a1\r\n"
    b"To: <sip:bob@example.org>\r\n"
    b"Call-ID: c1@phone\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)
CLIENT = ("198.51.100.7", 40000)


class FakeDatagramTransport:
    """Records datagrams written."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


class RecordingReceiver:
    """A controller that records what arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[AnyMessage, Hop]] = []

    def message_received(self, message: AnyMessage, source: Hop) -> None:
        self.received.append((message, source))

    def refusing_new_requests(self) -> bool:
        return False

    def refusal_for(self, request: object, top_via: object) -> bytes | None:
        return None


def parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


class ViaStampTests(SynchronousTestCase):
    """received and rport (RFC 3261 s18.2.1, RFC 3581)."""

    def test_rport_filled(self) -> None:
        """With rport requested, received and rport are both set."""
        request = parse_request(OPTIONS)
        stamp_received(request, *CLIENT)
        self.assertEqual((request.via.received, request.via.rport), CLIENT)
        self.assertEqual(len(request.vias), 1)

    def test_received_only_when_host_differs(self) -> None:
        """Without rport, received is added only when sent-by is not the source address."""
        request = parse_request(OPTIONS.replace(b";rport", b""))
        stamp_received(request, *CLIENT)
        self.assertEqual((request.via.received, request.via.rport), ("198.51.100.7", None))
        request = parse_request(
            OPTIONS.replace(b";rport", b"").replace(b"phone.example.org", b"198.51.100.7")
        )
        stamp_received(request, *CLIENT)
        self.assertIsNone(request.via.received)

    def test_response_address(self) -> None:
        """Responses go to received:rport, else received:sent-by port, else sent-by."""
        self.assertEqual(
            response_address(Via.parse("SIP/2.0/UDP h:5062;received=192.0.2.1;rport=4000")),
            ("192.0.2.1", 4000),
        )
        self.assertEqual(
            response_address(Via.parse("SIP/2.0/UDP h:5062;received=192.0.2.1")),
            ("192.0.2.1", 5062),
        )
        self.assertEqual(response_address(Via.parse("SIP/2.0/UDP 192.0.2.2")), ("192.0.2.2", 5060))

    def test_response_address_ignores_maddr(self) -> None:
        """A Via maddr cannot aim responses at a third party: they go back to the source."""
        via = Via.parse("SIP/2.0/UDP h:5062;maddr=198.51.100.99;received=192.0.2.1;rport=4000")
        self.assertEqual(response_address(via), ("192.0.2.1", 4000))


class DatagramTests(SynchronousTestCase):
    """The UDP adapter."""

    def setUp(self) -> None:
        self.receiver = RecordingReceiver()
        self.owner = SipTransport(MemoryUDPReactor(), self.receiver)
        self.protocol = SipDatagramProtocol(self.owner)
        self.fake = FakeDatagramTransport()
        self.protocol.transport = self.fake  # type: ignore[assignment]

    def test_request_delivered_with_rport(self) -> None:
        """A request reaches the controller with its source and a stamped Via."""
        self.protocol.datagramReceived(OPTIONS, CLIENT)
        [(message, source)] = self.receiver.received
        self.assertEqual(source, Hop("UDP", *CLIENT))
        self.assertEqual(message.via.rport, 40000)

    def test_malformed_request_answered(self) -> None:
        """A request with a bad CSeq gets 400 at its source and only a debug log event."""
        with capturedLogs() as events:
            self.protocol.datagramReceived(OPTIONS.replace(b"1 OPTIONS", b"1 INVITE"), CLIENT)
        [(reply, addr)] = self.fake.written
        self.assertEqual(addr, CLIENT)
        self.assertTrue(reply.startswith(b"SIP/2.0 400 "))
        self.assertEqual(self.receiver.received, [])
        self.assertEqual({e["log_level"] for e in events}, {LogLevel.debug})

    def test_garbage_dropped(self) -> None:
        """Garbage gets no reply."""
        with capturedLogs() as events:
            self.protocol.datagramReceived(b"\x00\xffjunk", CLIENT)
            self.protocol.datagramReceived(b"\r\n\r\n", CLIENT)
        self.assertEqual((self.fake.written, self.receiver.received), ([], []))
        self.assertEqual({e["log_level"] for e in events}, {LogLevel.debug})

    def test_controller_errors_do_not_escape(self) -> None:
        """An exception in the controller is logged, not raised into the reactor."""

        class Broken(RecordingReceiver):
            def message_received(self, message: AnyMessage, source: Hop) -> None:
                raise RuntimeError("bug")

        self.owner.receiver = Broken()
        with capturedLogs() as events:
            self.protocol.datagramReceived(OPTIONS, CLIENT)
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.flushLoggedErrors(RuntimeError)

    def test_listen_records_udp_port(self) -> None:
        """listen("udp:...") binds through listenUDP with the interface given."""
        reactor = MemoryUDPReactor()
        transport = SipTransport(reactor)
        port = self.successResultOf(transport.listen("udp:5070:interface=127.0.0.1"))
        self.assertEqual((port.port, port.interface), (5070, "127.0.0.1"))
        self.assertEqual(transport.local_hop("UDP"), Hop("UDP", "127.0.0.1", 5070))

    def test_bad_listen_string(self) -> None:
        """A bad udp: string fails the Deferred with a message naming the option."""
        failure = self.failureResultOf(
            SipTransport(MemoryUDPReactor()).listen("udp:nope"), ValueError
        )
        self.assertIn("--sip", failure.getErrorMessage())

    def test_response_to_rport(self) -> None:
        """A response goes out of the UDP socket to received:rport."""
        reactor = MemoryUDPReactor()
        transport = SipTransport(reactor)
        port = self.successResultOf(transport.listen("udp:5070"))
        port.write = lambda data, addr: self.fake.written.append((data, addr))
        request = parse_request(OPTIONS)
        stamp_received(request, *CLIENT)
        transport.send_response(make_response(request, 200), Hop("UDP", *CLIENT))
        [(data, addr)] = self.fake.written
        self.assertEqual(addr, CLIENT)
        self.assertTrue(data.startswith(b"SIP/2.0 200 OK"))


class StreamTests(SynchronousTestCase):
    """The TCP adapter."""

    def setUp(self) -> None:
        self.receiver = RecordingReceiver()
        self.reactor = MemoryUDPReactor()
        self.owner = SipTransport(self.reactor, self.receiver)
        self.protocol = SipStreamProtocol(self.owner)
        self.wire = StringTransport(peerAddress=IPv4Address("TCP", *CLIENT))
        self.protocol.makeConnection(self.wire)

    def test_messages_delivered_and_connection_indexed(self) -> None:
        """Two messages in one segment both arrive; the connection is known by remote address."""
        tcp_options = OPTIONS.replace(b"UDP", b"TCP")
        self.protocol.dataReceived(tcp_options + tcp_options.replace(b"z9hG4bKabc", b"z9hG4bKdef"))
        self.assertEqual([s for _, s in self.receiver.received], [Hop("TCP", *CLIENT)] * 2)
        self.assertIs(self.owner.connections[CLIENT], self.protocol)

    def test_keepalive_ping_answered(self) -> None:
        """CRLFCRLF is answered with CRLF (RFC 5626 s3.5.1)."""
        self.protocol.dataReceived(b"\r\n\r\n")
        self.assertEqual(self.wire.value(), b"\r\n")

    def test_broken_framing_answers_and_closes(self) -> None:
        """A negative Content-Length gets 400 and the connection is closed."""
        self.protocol.dataReceived(OPTIONS.replace(b"Content-Length: 0", b"Content-Length: -1"))
        self.assertTrue(self.wire.value().startswith(b"SIP/2.0 400 "))
        self.assertTrue(self.wire.disconnecting)

    def test_requests_and_responses_reuse_connection(self) -> None:
        """A request to the UA's address and a response to its request use the open connection."""
        self.protocol.dataReceived(OPTIONS.replace(b"UDP", b"TCP"))
        [(request, source)] = self.receiver.received
        assert isinstance(request, Request)
        self.owner.send_response(make_response(request, 200), source)
        errors: list[str] = []
        self.owner.send_request(request, Hop("TCP", *CLIENT), errors.append)
        data = self.wire.value()
        self.assertTrue(data.startswith(b"SIP/2.0 200 OK"))
        self.assertIn(b"\r\n\r\nOPTIONS sip:bob@example.org SIP/2.0", data)
        self.assertEqual(errors, [])

    def test_stream_connector_opens_new_connections(self) -> None:
        """With a stream_connector, a request to a new address goes over the connection it opens."""
        asked: list[tuple[str, int]] = []
        wire = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.99", 3479))
        pending: Deferred[IProtocol] = Deferred()

        def connector(address: tuple[str, int], factory: IProtocolFactory) -> Deferred[IProtocol]:
            asked.append(address)
            protocol = factory.buildProtocol(None)
            assert protocol is not None
            protocol.makeConnection(wire)
            return pending

        self.owner.stream_connector = connector
        request = parse_request(OPTIONS.replace(b"UDP", b"TCP"))
        errors: list[str] = []
        self.owner.send_request(request, Hop("TCP", "10.0.2.2", 5062), errors.append)
        self.owner.send_request(request, Hop("TCP", "10.0.2.2", 5062), errors.append)
        self.assertEqual(asked, [("10.0.2.2", 5062)])
        self.assertEqual(wire.value(), b"")
        [connection] = [c for c in self.owner.connections.values() if c.transport is wire]
        pending.callback(connection)
        self.assertEqual(wire.value().count(b"OPTIONS sip:bob@example.org SIP/2.0"), 2)
        # Known under the address asked for as well as under its real far end.
        self.assertIs(self.owner.connections[("10.0.2.2", 5062)], connection)
        self.assertIs(self.owner.connections[("198.51.100.99", 3479)], connection)
        self.assertEqual(errors, [])

    def test_stream_connector_failure_reported(self) -> None:
        """A connector that fails reports its reason to every request waiting for it."""
        self.owner.stream_connector = lambda address, factory: fail(ConnectionError("no path"))
        errors: list[str] = []
        request = parse_request(OPTIONS.replace(b"UDP", b"TCP"))
        self.owner.send_request(request, Hop("TCP", "10.0.2.2", 5062), errors.append)
        self.assertEqual(errors, ["no path"])

    def test_refused_methods_answered_not_delivered(self) -> None:
        """A connection's refused methods get 403 and never reach the receiver; others do."""
        self.protocol.refused_methods = frozenset({"REGISTER"})
        register = OPTIONS.replace(b"UDP", b"TCP").replace(b"OPTIONS", b"REGISTER")
        self.protocol.dataReceived(register)
        self.assertTrue(self.wire.value().startswith(b"SIP/2.0 403 "))
        self.assertEqual(self.receiver.received, [])
        self.protocol.dataReceived(OPTIONS.replace(b"UDP", b"TCP"))
        self.assertEqual(len(self.receiver.received), 1)

    def test_closed_connection_forgotten(self) -> None:
        """A lost connection leaves the table."""
        self.protocol.connectionLost()
        self.assertEqual(self.owner.connections, {})

    def test_udp_without_listener_is_an_error(self) -> None:
        """Sending over UDP with no UDP socket reports an error naming the option."""
        errors: list[str] = []
        self.owner.send_request(parse_request(OPTIONS), Hop("UDP", *CLIENT), errors.append)
        self.assertIn("--sip udp:PORT", errors[0])

    def test_idle_connection_closed(self) -> None:
        """A connection silent for 300 s is closed; traffic (a CRLF keepalive too) postpones that."""
        self.reactor.advance(250)
        self.protocol.dataReceived(b"\r\n\r\n")
        self.reactor.advance(250)
        self.assertFalse(self.wire.disconnecting)
        self.reactor.advance(50)
        self.assertTrue(self.wire.disconnecting)

    def test_stalled_message_closes_connection(self) -> None:
        """Half a message that is never finished closes the connection after 32 s (RFC 4475 s3.1.2.2)."""
        self.protocol.dataReceived(OPTIONS[:50])
        self.reactor.advance(31)
        self.assertFalse(self.wire.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(self.wire.disconnecting)

    def test_finished_message_stops_stall_timer(self) -> None:
        """Once the message is complete the stall timer is gone."""
        self.protocol.dataReceived(OPTIONS[:50])
        self.protocol.dataReceived(OPTIONS[50:])
        self.reactor.advance(100)
        self.assertFalse(self.wire.disconnecting)

    def test_timers_cancelled_on_close(self) -> None:
        """A closed connection leaves no delayed calls behind."""
        self.protocol.dataReceived(OPTIONS[:50])
        self.protocol.connectionLost()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connection_cap(self) -> None:
        """Connections over max_tcp_connections are refused."""
        self.owner.max_tcp_connections = 1
        extra = SipStreamProtocol(self.owner)
        wire = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.8", 1))
        with capturedLogs() as events:
            extra.makeConnection(wire)
        self.assertTrue(wire.disconnecting)
        self.assertEqual(list(self.owner.connections), [CLIENT])
        self.assertEqual([e["log_level"] for e in events], [LogLevel.warn])


class ListenerServiceTests(SynchronousTestCase):
    """SipListenerService opens listeners on start and closes them on stop."""

    def test_start_and_stop(self) -> None:
        """UDP and TCP listeners open at startService and close at stopService."""
        reactor = MemoryUDPReactor()
        transport = SipTransport(reactor)
        service = SipListenerService(transport, ["udp:5060", "tcp:5060"])
        self.assertEqual((reactor.udpPorts, reactor.tcpServers), ({}, []))
        service.startService()
        self.assertEqual(
            (list(reactor.udpPorts), [s[0] for s in reactor.tcpServers]), ([5060], [5060])
        )
        self.successResultOf(service.stopService())
        self.assertFalse(reactor.udpPorts[5060].listening)

    def test_bad_listener_stops_startup(self) -> None:
        """A bad listen string raises at startService, naming the option."""
        service = SipListenerService(SipTransport(MemoryUDPReactor()), ["tcp:notaport"])
        error = self.assertRaises(ValueError, service.startService)
        self.assertIn("--sip", str(error))


class LocalAddressTests(SynchronousTestCase):
    """What this element puts in its own Via."""

    def test_make_via(self) -> None:
        """make_via names the listener (or the advertised host) with a fresh branch and rport."""
        transport = SipTransport(MemoryUDPReactor(), advertised_host="203.0.113.5")
        self.successResultOf(transport.listen("udp:5070"))
        via = transport.make_via("UDP")
        self.assertEqual(
            (via.transport, via.host, via.port, via.rport_requested),
            ("UDP", "203.0.113.5", 5070, True),
        )
        self.assertTrue((via.branch or "").startswith("z9hG4bK"))
        self.assertNotEqual(via.branch, transport.make_via("UDP").branch)

    def test_make_via_without_listener(self) -> None:
        """Without a listener for the transport, make_via says which option to add."""
        error = self.assertRaises(ValueError, SipTransport(MemoryUDPReactor()).make_via, "TCP")
        self.assertIn("--sip tcp:PORT", str(error))


class HostileInputTests(SynchronousTestCase):
    """Random input never escapes the protocols and is logged at debug level only."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.binary(max_size=300)
            | st.sampled_from([OPTIONS, OPTIONS[:60], b"\r\n\r\n", b"\r\n"]),
            max_size=8,
        )
    )
    def test_random_datagrams_and_segments(self, chunks: list[bytes]) -> None:
        """Datagrams and TCP segments of random bytes raise nothing and log nothing above debug."""
        receiver = RecordingReceiver()
        owner = SipTransport(MemoryUDPReactor(), receiver)
        datagrams = SipDatagramProtocol(owner)
        datagrams.transport = FakeDatagramTransport()  # type: ignore[assignment]
        stream = SipStreamProtocol(owner)
        stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", *CLIENT)))
        with capturedLogs() as events:
            for chunk in chunks:
                datagrams.datagramReceived(chunk, CLIENT)
                stream.dataReceived(chunk)
        self.assertEqual({e["log_level"] for e in events} - {LogLevel.debug}, set())


class MetricsTests(SynchronousTestCase):
    """Counters for /status and /metrics."""

    def test_transport_counters(self) -> None:
        """Messages, malformed input, error responses, pings and send errors are counted."""
        owner = SipTransport(MemoryUDPReactor(), RecordingReceiver())
        datagrams = SipDatagramProtocol(owner)
        datagrams.transport = FakeDatagramTransport()  # type: ignore[assignment]
        datagrams.datagramReceived(OPTIONS, CLIENT)
        datagrams.datagramReceived(OPTIONS.replace(b"1 OPTIONS", b"1 INVITE"), CLIENT)
        stream = SipStreamProtocol(owner)
        stream.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", *CLIENT)))
        stream.dataReceived(b"\r\n\r\n")
        owner.send_request(parse_request(OPTIONS), Hop("UDP", *CLIENT), lambda reason: None)
        self.assertEqual(
            owner.metrics(),
            {
                "messages_received": 1,
                "malformed_received": 1,
                "early_refusals": 0,
                "error_responses_sent": 1,
                "keepalive_pings": 1,
                "stun_keepalives": 0,
                "tcp_connections": 1,
                "tcp_connections_refused": 0,
                "send_errors": 1,
            },
        )


class TLSTargetTests(SynchronousTestCase):
    """TLS is inbound only for now."""

    def test_outbound_tls_is_an_error(self) -> None:
        """A request to a TLS target with no open connection fails instead of going out in clear text."""
        reactor = MemoryUDPReactor()
        transport = SipTransport(reactor)
        errors: list[str] = []
        transport.send_request(parse_request(OPTIONS), Hop("TLS", *CLIENT), errors.append)
        self.assertIn("outbound TLS is not supported", errors[0])
        self.assertEqual(reactor.tcpClients, [])

    def test_inbound_tls_connection_named_tls(self) -> None:
        """Messages on a connection from an ssl: listener come from a TLS hop."""
        receiver = RecordingReceiver()
        protocol = SipStreamProtocol(SipTransport(MemoryUDPReactor(), receiver), "TLS")
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", *CLIENT)))
        protocol.dataReceived(OPTIONS.replace(b"UDP", b"TLS"))
        self.assertEqual(receiver.received[0][1], Hop("TLS", *CLIENT))
