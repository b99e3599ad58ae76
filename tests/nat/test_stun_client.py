"""Tests for the STUN Binding client: retransmission on a fake clock, matching, TCP."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from p2psip.nat import stun
from p2psip.nat.stun_client import (
    RetransmissionSchedule,
    StunErrorResponse,
    StunProtocolError,
    StunTimeoutError,
    StunUdpClient,
    tcp_binding,
    tcp_mapped_address,
)
from p2psip.nat.stun_server import StunResponder

SERVER = ("192.0.2.1", 3478)
LOCAL = ("10.0.0.2", 5000)
MAPPED = ("198.51.100.9", 40000)


class FakeUdpTransport:
    def __init__(self, host: tuple[str, int]) -> None:
        self.host = host
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.written.append((packet, addr))

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", *self.host)


class ScheduleTests(SynchronousTestCase):
    def test_rfc_example(self) -> None:
        """With RTO 500 ms the sends are at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and failure at 39.5 s."""
        schedule = RetransmissionSchedule()
        self.assertEqual(schedule.send_times(), [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        self.assertEqual(schedule.timeout_seconds(), 39.5)


class UdpClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = FakeUdpTransport(LOCAL)
        self.client = StunUdpClient(self.clock)
        self.client.makeConnection(self.transport)  # type: ignore[arg-type]

    def answer(self, index: int = 0, *, client: tuple[str, int] = MAPPED, source=SERVER) -> None:  # type: ignore[no-untyped-def]
        """Let a real responder answer the index-th written request."""
        request, _ = self.transport.written[index]
        reply = StunResponder().answer_datagram(request, client, SERVER)
        assert reply is not None
        self.client.datagramReceived(reply.payload, source)

    def test_mapped_address(self) -> None:
        """The mapped address of the response is the Deferred's result."""
        d = self.client.mapped_address(SERVER)
        self.assertEqual(self.transport.written[0][1], SERVER)
        self.answer()
        self.assertEqual(self.successResultOf(d), MAPPED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_result_details(self) -> None:
        """The full result names the server that answered and our local address."""
        d = self.client.binding(SERVER)
        self.answer(source=("192.0.2.2", 3479))
        result = self.successResultOf(d)
        self.assertEqual((result.server, result.local), (("192.0.2.2", 3479), LOCAL))

    def test_retransmission_schedule(self) -> None:
        """Retransmissions follow RFC 5389 s7.2.1 on the clock, then the Deferred times out."""
        d = self.client.mapped_address(SERVER)
        send_times = []
        seen = 0
        for _ in range(400):
            if len(self.transport.written) > seen:
                send_times.append(self.clock.seconds())
                seen = len(self.transport.written)
            if d.called:
                break
            self.clock.advance(0.125)
        self.assertEqual(send_times, [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        failure = self.failureResultOf(d, StunTimeoutError)
        self.assertEqual(self.clock.seconds(), 39.5)
        self.assertIn("--mediator", str(failure.value))
        self.assertEqual(len({packet for packet, _ in self.transport.written}), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_late_answer_to_retransmission(self) -> None:
        """An answer after some retransmissions completes it; later duplicates are ignored."""
        d = self.client.mapped_address(SERVER)
        self.clock.advance(2)
        self.assertEqual(len(self.transport.written), 3)
        self.answer(0)
        self.answer(2)
        self.assertEqual(self.successResultOf(d), MAPPED)
        self.assertEqual(self.client.unmatched, 1)

    def test_error_response(self) -> None:
        """An error response fails the Deferred with its code and reason."""
        d = self.client.binding(SERVER, change_ip=True)
        self.answer()  # a plain responder refuses CHANGE-REQUEST
        failure = self.failureResultOf(d, StunErrorResponse)
        self.assertEqual(failure.value.code, 420)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_response_without_address(self) -> None:
        """A success response without any mapped address is a protocol error."""
        d = self.client.binding(SERVER)
        request = stun.decode_message(self.transport.written[0][0])
        empty = stun.StunMessage(1, stun.MessageClass.SUCCESS_RESPONSE, request.transaction_id)
        self.client.datagramReceived(stun.encode_message(empty), SERVER)
        self.failureResultOf(d, StunProtocolError)

    def test_unrelated_datagrams_ignored(self) -> None:
        """Garbage, requests and unknown transaction IDs leave the transaction pending."""
        d = self.client.binding(SERVER)
        self.client.datagramReceived(b"garbage", SERVER)
        self.client.datagramReceived(stun.encode_message(stun.binding_request()), SERVER)
        other = stun.binding_success(stun.binding_request(), MAPPED)
        self.client.datagramReceived(stun.encode_message(other), SERVER)
        self.assertNoResult(d)
        self.assertEqual(self.client.unmatched, 3)
        d.cancel()
        self.failureResultOf(d)

    def test_cancel(self) -> None:
        """Cancelling stops the retransmissions and leaves no timer."""
        d = self.client.binding(SERVER)
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.client.pending, 0)

    def test_concurrent(self) -> None:
        """Two transactions run at once and each gets its own answer."""
        first = self.client.mapped_address(SERVER)
        second = self.client.mapped_address(("192.0.2.5", 3478))
        self.answer(1, client=("198.51.100.1", 1))
        self.answer(0, client=("198.51.100.2", 2))
        self.assertEqual(self.successResultOf(first), ("198.51.100.2", 2))
        self.assertEqual(self.successResultOf(second), ("198.51.100.1", 1))

    def test_stop_fails_pending(self) -> None:
        """Closing the socket fails pending transactions instead of leaving them hanging."""
        d = self.client.binding(SERVER)
        self.client.doStop()
        self.failureResultOf(d, StunTimeoutError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    @settings(deadline=None)
    @given(st.binary(max_size=100))
    def test_any_datagram(self, data: bytes) -> None:
        """Any datagram is absorbed without an exception."""
        self.client.datagramReceived(data, SERVER)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects to a StringTransport at once (or fails), recording the protocol."""

    def __init__(self, error: Exception | None = None, hang: bool = False) -> None:
        self.error = error
        self.hang = hang
        self.protocol: Protocol | None = None
        self.transport: StringTransport | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[Protocol]:
        if self.error is not None:
            return fail(self.error)
        if self.hang:
            return Deferred()
        protocol = factory.buildProtocol(IPv4Address("TCP", *SERVER))
        assert isinstance(protocol, Protocol)
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", *LOCAL), peerAddress=IPv4Address("TCP", *SERVER)
        )
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return succeed(protocol)


class TcpClientTests(SynchronousTestCase):
    def test_binding(self) -> None:
        """A response split across reads is reassembled; the connection is then closed."""
        clock = Clock()
        endpoint = FakeEndpoint()
        d = tcp_binding(endpoint, clock)
        assert endpoint.transport is not None and endpoint.protocol is not None
        [request] = stun.StunStreamDecoder().feed(endpoint.transport.value())
        reply = StunResponder().answer_message(request, MAPPED, SERVER)
        assert reply is not None
        endpoint.protocol.dataReceived(reply.payload[:7])
        self.assertNoResult(d)
        endpoint.protocol.dataReceived(reply.payload[7:])
        result = self.successResultOf(d)
        self.assertEqual((result.mapped, result.local), (MAPPED, LOCAL))
        self.assertTrue(endpoint.transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_mapped_address(self) -> None:
        """tcp_mapped_address gives just the address."""
        endpoint = FakeEndpoint()
        d = tcp_mapped_address(endpoint, Clock())
        assert endpoint.transport is not None and endpoint.protocol is not None
        [request] = stun.StunStreamDecoder().feed(endpoint.transport.value())
        reply = StunResponder().answer_message(request, MAPPED, SERVER)
        assert reply is not None
        endpoint.protocol.dataReceived(reply.payload)
        self.assertEqual(self.successResultOf(d), MAPPED)

    def test_timeout(self) -> None:
        """Silence for Ti fails with StunTimeoutError and aborts the connection."""
        clock = Clock()
        endpoint = FakeEndpoint()
        d = tcp_binding(endpoint, clock)
        clock.advance(39.4)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, StunTimeoutError)
        assert endpoint.transport is not None
        self.assertTrue(endpoint.transport.disconnected)

    def test_timeout_while_connecting(self) -> None:
        """A connection attempt that hangs is cancelled at the timeout."""
        clock = Clock()
        d = tcp_binding(FakeEndpoint(hang=True), clock, timeout_seconds=5)
        clock.advance(5)
        self.failureResultOf(d, StunTimeoutError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_refused(self) -> None:
        """A failed connection fails the Deferred with that error and leaves no timer."""
        clock = Clock()
        d = tcp_binding(FakeEndpoint(error=ConnectionRefusedError()), clock)
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_closed_early(self) -> None:
        """A server that hangs up without answering is a protocol error."""
        clock = Clock()
        endpoint = FakeEndpoint()
        d = tcp_binding(endpoint, clock)
        assert endpoint.protocol is not None
        endpoint.protocol.connectionLost(Failure(ConnectionError()))
        self.failureResultOf(d, StunProtocolError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_garbage_stream(self) -> None:
        """A server that sends garbage is a protocol error."""
        endpoint = FakeEndpoint()
        d = tcp_binding(endpoint, Clock())
        assert endpoint.protocol is not None
        endpoint.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.failureResultOf(d, StunProtocolError)
