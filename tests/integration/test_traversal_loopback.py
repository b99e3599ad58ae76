"""
The traversal client against a real mediator on loopback (real sockets and reactor).

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

from p2psip.nat import broker, control_auth, control_protocol, mediator, stun_server
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
        self.policy = broker.BrokerPolicy()
        self.broker = broker.Broker(
            reactor,
            control_auth.Secrets(shared=SECRET),
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
    def start_client(self, client_id: str, secret: bytes | None = None, **kwargs: Any) -> Any:
        """A client with ``secret``, by default its own (derived from the mediator's)."""
        if secret is None:
            secret = control_auth.derive_client_secret(SECRET, client_id)
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
        self.assertEqual((result.method, result.peer_id), (control_protocol.DIRECT, "bob"))
        data = yield self.round_trip(result)
        self.assertEqual(data, b"hello")
        self.assertEqual([r.method for r in self.incoming], [control_protocol.DIRECT])
        self.assertEqual(self.broker.status()["successes"], {"direct": 1})

    @defer.inlineCallbacks
    def test_relayed(self) -> Any:
        """A forced relay carries the stream through the mediator and counts its bytes."""
        result = yield self.alice.connect(
            "bob", Factory.forProtocol(Recorder), [control_protocol.RELAYED]
        )
        self.assertEqual(result.method, control_protocol.RELAYED)
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
        from p2psip.nat.traversal_service import TraversalService

        carol = TraversalClient(
            reactor, self.endpoint, "carol", control_auth.derive_client_secret(SECRET, "carol")
        )
        service = TraversalService(carol, reactor, retry_seconds=(0.01,))
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
        self.assertEqual(result.method, control_protocol.UDP_PUNCH)
        assert result.protocol.transport is not None
        result.protocol.transport.write(b"hello", result.peer_address)
        data = yield got
        self.assertEqual(data, b"hello")
        yield result.protocol.transport.stopListening()
        [incoming] = self.incoming_datagrams
        yield incoming.protocol.transport.stopListening()
