"""
Tests for the traversal client against a real mediator on loopback.

Both clients and the mediator run on 127.0.0.1 in this process, so port
prediction sees "no NAT" and the broker picks the direct method; forcing
``relayed`` exercises the relay path end to end.  NAT behaviour itself is
tested in ``tests.natlab``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from p2psip.nat import mediator, stun_server
from p2psip.nat.broker import Broker, BrokerPolicy
from p2psip.nat.control_auth import Secrets
from p2psip.nat.control_protocol import DIRECT, RELAYED, UDP_PUNCH, FrameDecoder, encode_frame
from p2psip.nat.traversal import MediatedEndpoint, TraversalClient, TraversalError, TraversalResult

SECRET = b"loopback-secret"


class Recorder(Protocol):
    """Collects bytes and reports when the connection closes."""

    def __init__(self) -> None:
        self.data = b""
        self.got: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.expect = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expect and not self.got.called:
            self.got.callback(self.data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class UdpEcho(DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.write(data, addr)


class LoopbackTraversalTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        stun_port = reactor.listenTCP(0, stun_server.StunTcpServerFactory(), interface="127.0.0.1")
        self.addCleanup(stun_port.stopListening)
        stun_udp = reactor.listenUDP(0, stun_server.StunUdpServer(), interface="127.0.0.1")
        self.addCleanup(stun_udp.stopListening)
        self.policy = BrokerPolicy()
        self.broker = Broker(
            reactor,
            Secrets(shared=SECRET),
            self.policy,
            stun_tcp_port=stun_port.getHost().port,
            stun_udp_port=stun_udp.getHost().port,
        )
        self.control = mediator.ControlServerFactory(self.broker, reactor)
        control_port = reactor.listenTCP(0, self.control, interface="127.0.0.1")
        self.addCleanup(control_port.stopListening)
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", control_port.getHost().port)
        self.incoming: list[TraversalResult] = []
        self.echoes: list[Echo] = []

        def accept(peer: str) -> Any:
            if peer == "mallory":
                return None
            return Factory.forProtocol(self._echo)

        self.incoming_datagrams: list[Any] = []
        self.bob = yield self.start_client(
            "bob",
            accept=accept,
            on_incoming=self.incoming.append,
            accept_datagram=lambda peer: UdpEcho(),
            on_incoming_datagram=self.incoming_datagrams.append,
        )
        self.alice = yield self.start_client("alice")

    def _echo(self) -> Echo:
        echo = Echo()
        self.echoes.append(echo)
        return echo

    @defer.inlineCallbacks
    def start_client(self, client_id: str, secret: bytes = SECRET, **kwargs: Any) -> Any:
        client = TraversalClient(reactor, self.endpoint, client_id, secret, **kwargs)
        yield client.start()

        def stop() -> defer.Deferred[str]:
            client.stop()
            return client.closed

        self.addCleanup(stop)
        return client

    @defer.inlineCallbacks
    def round_trip(self, result: TraversalResult) -> Any:
        protocol = result.protocol
        assert isinstance(protocol, Recorder)
        protocol.expect = 5
        assert protocol.transport is not None
        protocol.transport.write(b"hello")
        data = yield protocol.got
        protocol.transport.loseConnection()
        yield protocol.lost
        for echo in self.echoes:
            yield echo.lost
        return data

    @defer.inlineCallbacks
    def test_direct(self) -> Any:
        """Without NATs the broker picks the direct method and bytes flow both ways."""
        result = yield self.alice.connect("bob", Factory.forProtocol(Recorder))
        self.assertEqual((result.method, result.peer_id), (DIRECT, "bob"))
        data = yield self.round_trip(result)
        self.assertEqual(data, b"hello")
        self.assertEqual([r.method for r in self.incoming], [DIRECT])
        self.assertEqual(self.broker.status()["successes"], {"direct": 1})

    @defer.inlineCallbacks
    def test_relayed(self) -> Any:
        """A forced relay carries the stream through the mediator and counts its bytes."""
        result = yield self.alice.connect("bob", Factory.forProtocol(Recorder), [RELAYED])
        self.assertEqual(result.method, RELAYED)
        data = yield self.round_trip(result)
        self.assertEqual(data, b"hello")
        self.assertEqual(self.broker.metrics.relayed_bytes, 10)
        self.assertEqual(self.broker.relay_counts, {})

    @defer.inlineCallbacks
    def test_endpoint(self) -> Any:
        """MediatedEndpoint is an IStreamClientEndpoint that fires with the connected protocol."""
        endpoint = MediatedEndpoint(self.alice, "bob")
        verifyObject(IStreamClientEndpoint, endpoint)
        protocol = yield endpoint.connect(Factory.forProtocol(Recorder))
        self.assertIsInstance(protocol, Recorder)
        assert endpoint.last_result is not None
        data = yield self.round_trip(endpoint.last_result)
        self.assertEqual(data, b"hello")

    @defer.inlineCallbacks
    def test_unknown_peer(self) -> Any:
        """An unregistered peer fails at once with a reason."""
        error = yield self.assertFailure(
            self.alice.connect("nobody", Factory.forProtocol(Recorder)), TraversalError
        )
        self.assertIn("not registered", error.reason)

    @defer.inlineCallbacks
    def test_refused(self) -> Any:
        """The responder's policy can refuse a peer; the initiator learns who refused."""
        mallory = yield self.start_client("mallory")
        error = yield self.assertFailure(
            mallory.connect("bob", Factory.forProtocol(Recorder)), TraversalError
        )
        self.assertIn("bob refused", error.reason)

    @defer.inlineCallbacks
    def test_wrong_secret(self) -> Any:
        """A client with the wrong secret is refused with a reason naming the option."""
        client = TraversalClient(reactor, self.endpoint, "eve", b"guess")
        error = yield self.assertFailure(client.start(), TraversalError)
        self.assertIn("--secret", error.reason)
        yield client.closed

    @defer.inlineCallbacks
    def test_service_reregisters(self) -> Any:
        """TraversalService registers again after the mediator dropped the client."""
        from p2psip.nat.traversal import TraversalService

        carol = TraversalClient(reactor, self.endpoint, "carol", SECRET)
        service = TraversalService(carol, retry_seconds=(0.01,))
        service.startService()
        self.addCleanup(service.stopService)
        yield service.when_registered()
        first_link = self.broker.clients["carol"]
        dropped = carol.closed
        first_link.close()
        yield dropped
        yield service.when_registered()
        self.assertIsNot(self.broker.clients["carol"], first_link)

    @defer.inlineCallbacks
    def test_udp_punch(self) -> Any:
        """A UDP path punched through the broker carries datagrams both ways."""
        got: defer.Deferred[bytes] = defer.Deferred()

        class Client(DatagramProtocol):
            def datagramReceived(self, data: bytes, addr: Any) -> None:
                got.callback(data)

        result = yield self.alice.connect_datagram("bob", Client())
        self.assertEqual(result.method, UDP_PUNCH)
        assert result.protocol.transport is not None
        result.protocol.transport.write(b"hello", result.peer_address)
        data = yield got
        self.assertEqual(data, b"hello")
        yield result.protocol.transport.stopListening()
        [incoming] = self.incoming_datagrams
        yield incoming.protocol.transport.stopListening()


class RelayClientProtocolTests(TestCase):
    def test_bytes_in_the_ready_segment(self) -> None:
        """Relayed bytes that arrive in the same segment as relay-ready reach the application."""
        from twisted.internet.testing import StringTransport

        from p2psip.nat.traversal import _RelayClientProtocol

        ready: defer.Deferred[None] = defer.Deferred()
        relay = _RelayClientProtocol("s", "t", ready)
        relay.makeConnection(StringTransport())
        relay.dataReceived(
            encode_frame({"type": "relay-ready", "session": "s"}) + b"p2psip-nat-ping\n"
        )
        self.successResultOf(ready)
        user = Recorder()
        relay.attach(user)
        relay.dataReceived(b"more")
        self.assertEqual(user.data, b"p2psip-nat-ping\nmore")


class HostileMediatorTests(TestCase):
    """What a broken or hostile mediator can do to a client."""

    def client_with_transport(self) -> tuple[TraversalClient, Any, Any]:
        from twisted.internet.testing import StringTransport

        from p2psip.nat.traversal import _ControlClientProtocol

        client = TraversalClient(reactor, None, "alice", SECRET)  # type: ignore[arg-type]
        protocol = _ControlClientProtocol(client)
        transport = StringTransport()
        protocol.makeConnection(transport)
        client.control = protocol
        return client, protocol, transport

    def test_garbage_closes_the_link(self) -> None:
        """Garbage from the mediator closes the control connection instead of raising."""
        client, protocol, transport = self.client_with_transport()
        protocol.dataReceived(b"\xff\xff" + b"x" * 100)
        self.assertTrue(transport.disconnecting)

    def test_unknown_ref_and_session_ignored(self) -> None:
        """Messages about sessions the client never had are ignored."""
        client, protocol, transport = self.client_with_transport()
        client.online = True
        for message in (
            {"type": "outcome", "session": "nope", "ok": True, "method": "direct", "reason": ""},
            {"type": "go", "session": "nope"},
            {"type": "relay", "session": "nope", "token": "t", "reason": ""},
            {"type": "probe", "session": "s", "peer": "bob", "kind": "tcp", "ref": 99},
        ):
            protocol.dataReceived(encode_frame(message))
        self.assertFalse(transport.disconnecting)

    def test_incoming_refused_without_policy(self) -> None:
        """A client that accepts nothing refuses every incoming request."""
        client, protocol, transport = self.client_with_transport()
        protocol.dataReceived(
            encode_frame(
                {"type": "probe", "session": "s", "peer": "mallory", "kind": "tcp", "ref": -1}
            )
        )
        [refusal] = FrameDecoder().feed(transport.value())
        self.assertEqual((refusal["type"], refusal["session"]), ("refuse", "s"))


class KeepaliveTests(TestCase):
    def test_ping_every_interval_until_lost(self) -> None:
        """A registered client pings on the clock and stops when the connection is lost."""
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from p2psip.nat.traversal import _ControlClientProtocol

        clock = Clock()
        client = TraversalClient(clock, None, "alice", SECRET, keepalive_seconds=25)  # type: ignore[arg-type]
        protocol = _ControlClientProtocol(client)
        transport = StringTransport()
        protocol.makeConnection(transport)
        client.control = protocol
        protocol.dataReceived(
            encode_frame({"type": "welcome", "id": "alice", "observed": ["192.0.2.1", 1]})
        )
        clock.advance(25)
        clock.advance(25)
        self.assertEqual(
            [m["type"] for m in FrameDecoder().feed(transport.value())], ["ping", "ping"]
        )
        protocol.connectionLost(Failure(Exception("gone")))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(client.closed), "gone")


class TraversalServiceTests(TestCase):
    def test_retries_with_backoff_and_stops_cleanly(self) -> None:
        """An unreachable mediator is retried on the clock with growing delays; stopping cancels the retry."""
        from twisted.internet.error import ConnectionRefusedError
        from twisted.internet.task import Clock

        from p2psip.nat.traversal import TraversalService

        attempts: list[float] = []
        clock = Clock()

        class Refusing:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                attempts.append(clock.seconds())
                return defer.fail(ConnectionRefusedError())

        client = TraversalClient(clock, Refusing(), "alice", SECRET)  # type: ignore[arg-type]
        service = TraversalService(client, retry_seconds=(1.0, 2.0))
        service.startService()
        clock.advance(1)
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(attempts, [0.0, 1.0, 3.0, 5.0])
        self.assertIsNone(service.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])


class LowTtlOrderingTests(TestCase):
    def test_go_before_own_start(self) -> None:
        """A connector told to go before its own start time still connects once that time comes."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from p2psip.nat.traversal import _ControlClientProtocol, _Session

        clock = MemoryReactorClock()
        client = TraversalClient(clock, None, "bob", SECRET)  # type: ignore[arg-type]
        protocol = _ControlClientProtocol(client)
        protocol.makeConnection(StringTransport())
        client.control = protocol
        session = _Session(
            "alice", Factory.forProtocol(Recorder), 0.0, incoming=True, session_id="s"
        )
        client._sessions["s"] = session
        attempt = {
            "type": "attempt",
            "session": "s",
            "method": "low-ttl",
            "role": "connector",
            "peer_endpoint": ["127.0.0.1", 9],
            "hole_port": 0,
            "start_in_seconds": 0.1,
            "deadline_seconds": 1.0,
            "ttl": 2,
        }
        protocol.dataReceived(encode_frame(attempt) + encode_frame({"type": "go", "session": "s"}))
        self.assertIsNone(session.punch)
        clock.advance(0.1)
        self.assertIsNotNone(session.punch)
        client._drop_attempt(session)
        self.assertEqual(clock.writers, set())
