"""How a thin client opens SIP streams to other nodes: straight there, else through the mediator."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat.traversal import TraversalError, TraversalResult
from p2psip.roles.client_traversal import APP_ATTACH_PATH, SipStreams
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipStreamProtocol, SipTransport
from p2psip.testing import MemoryUDPReactor
from p2psip.util.ids import id_hex

BOB = 0x70 << 120
BOB_ADDRESS = ("10.0.2.2", 5062)


class FakeMediatorClient:
    """Records connects; answers each with a stream made by the method given."""

    def __init__(self, method: str = "simultaneous-open", error: str | None = None) -> None:
        self.method = method
        self.error = error
        self.asked: list[str] = []

    def connect(self, peer_id: str, factory: IProtocolFactory) -> Deferred[TraversalResult]:
        self.asked.append(peer_id)
        if self.error is not None:
            result: Deferred[TraversalResult] = Deferred()
            result.errback(TraversalError(self.error))
            return result
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        protocol.makeConnection(StringTransport())
        return succeed(TraversalResult(protocol, self.method, peer_id, 0.25))


class FakeRegistration:
    def __init__(self, client: FakeMediatorClient | None) -> None:
        self.client = client
        self.registered = client is not None

    def when_registered(self) -> Deferred[Any]:
        return succeed(self.client) if self.client is not None else Deferred()


class Nodes:
    def __init__(self, known: dict[tuple[str, int], int]) -> None:
        self.known = known

    def node_serving_at(self, host: str, port: int) -> int | None:
        return self.known.get((host, port))


def plain(transport: SipTransport) -> IProtocolFactory:
    """What the transport hands its stream connector: plain SIP connections."""
    return Factory.forProtocol(lambda: SipStreamProtocol(transport))


class SipStreamsTests(SynchronousTestCase):
    def make(
        self, mediator: FakeMediatorClient | None, known: dict[tuple[str, int], int] | None = None
    ) -> tuple[SipStreams, MemoryReactorClock, SipTransport]:
        reactor = MemoryReactorClock()
        streams = SipStreams(
            reactor,  # type: ignore[arg-type]
            FakeRegistration(mediator),
            Nodes({BOB_ADDRESS: BOB} if known is None else known),
            direct_timeout_seconds=2.0,
        )
        transport = SipTransport(MemoryUDPReactor())
        streams.serve(transport)
        return streams, reactor, transport

    def test_direct_connect_first(self) -> None:
        """The announced address is tried first; when it answers the mediator is not asked."""
        mediator = FakeMediatorClient()
        streams, reactor, transport = self.make(mediator)
        opened = streams.connect(BOB_ADDRESS, plain(transport))
        [(host, port, factory, *_)] = reactor.tcpClients
        self.assertEqual((host, port), BOB_ADDRESS)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        opened_protocol = self.successResultOf(opened)
        self.assertIsInstance(opened_protocol, SipStreamProtocol)
        # Another node's stream carries no REGISTER to our password-less adaptor.
        self.assertEqual(opened_protocol.refused_methods, frozenset({"REGISTER"}))
        self.assertEqual(mediator.asked, [])
        self.assertEqual(streams.status()["outgoing"], {APP_ATTACH_PATH: 1})

    def test_mediator_after_a_failed_connect(self) -> None:
        """A refused connect goes to the mediator by Node-ID; the next skips the connect for a while."""
        mediator = FakeMediatorClient("relayed")
        streams, reactor, transport = self.make(mediator)
        opened = streams.connect(BOB_ADDRESS, plain(transport))
        [(_, _, factory, *_)] = reactor.tcpClients
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIsInstance(self.successResultOf(opened), SipStreamProtocol)
        self.assertEqual(mediator.asked, [id_hex(BOB)])
        self.successResultOf(streams.connect(BOB_ADDRESS, plain(transport)))
        self.assertEqual(len(reactor.tcpClients), 1)
        status = streams.status()
        self.assertEqual(status["outgoing"], {"relayed": 2})
        self.assertEqual(status["recent"][0]["node"], id_hex(BOB))

    def test_mediated_streams_name_their_node(self) -> None:
        """The proxy learns which node a mediated stream is with, until it closes."""
        mediator = FakeMediatorClient()
        streams, _reactor, transport = self.make(mediator, {("127.0.0.1", 5062): BOB})
        protocol = self.successResultOf(streams.connect(("127.0.0.1", 5062), plain(transport)))
        assert isinstance(protocol, SipStreamProtocol)
        source = Hop("TCP", *protocol.remote)
        self.assertEqual(streams.node_of_source(source), BOB)
        self.assertIsNone(streams.node_of_source(Hop("UDP", *protocol.remote)))
        protocol.connectionLost()
        self.assertIsNone(streams.node_of_source(source))

    def test_a_silent_address_times_out(self) -> None:
        """An address that swallows the SYN is given up after direct_timeout_seconds."""
        mediator = FakeMediatorClient()
        streams, reactor, transport = self.make(mediator)
        opened = streams.connect(BOB_ADDRESS, plain(transport))
        self.assertNoResult(opened)
        reactor.advance(2.0)
        self.successResultOf(opened)
        self.assertEqual(mediator.asked, [id_hex(BOB)])

    def test_loopback_of_another_node_is_not_dialled(self) -> None:
        """127.0.0.1 announced by another node would lead back here: straight to the mediator."""
        mediator = FakeMediatorClient()
        streams, reactor, transport = self.make(mediator, {("127.0.0.1", 5062): BOB})
        self.successResultOf(streams.connect(("127.0.0.1", 5062), plain(transport)))
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(mediator.asked, [id_hex(BOB)])

    def test_unknown_address_is_only_dialled(self) -> None:
        """An address no AppAttach answer named: the connect alone, and its failure says why."""
        mediator = FakeMediatorClient()
        streams, reactor, transport = self.make(mediator, {})
        opened = streams.connect(BOB_ADDRESS, plain(transport))
        [(_, _, factory, *_)] = reactor.tcpClients
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        failure = self.failureResultOf(opened, ConnectionError)
        self.assertIn("no node is known to serve there", str(failure.value))
        self.assertEqual((mediator.asked, streams.failed), ([], 1))

    def test_mediator_failure_names_both(self) -> None:
        """When the mediator cannot connect either, the error gives both reasons."""
        mediator = FakeMediatorClient(error="peer not registered")
        streams, reactor, transport = self.make(mediator, {("127.0.0.1", 5062): BOB})
        failure = self.failureResultOf(
            streams.connect(("127.0.0.1", 5062), plain(transport)), ConnectionError
        )
        self.assertIn("loopback address of another node", str(failure.value))
        self.assertIn("mediator: peer not registered", str(failure.value))

    def test_not_logged_in(self) -> None:
        """Not logged in to the mediator within the wait: the error names --mediator."""
        streams, reactor, transport = self.make(None, {("127.0.0.1", 5062): BOB})
        opened = streams.connect(("127.0.0.1", 5062), plain(transport))
        reactor.advance(streams.registration_wait_seconds)
        failure = self.failureResultOf(opened, ConnectionError)
        self.assertIn("check --mediator and its secret", str(failure.value))

    def test_incoming_streams_are_sip(self) -> None:
        """Streams the mediator brings from a Node-ID are the adaptor's SIP connections."""
        streams, _reactor, transport = self.make(FakeMediatorClient())
        factory = streams.accept(id_hex(BOB))
        assert factory is not None
        built = factory.buildProtocol(None)
        assert isinstance(built, SipStreamProtocol)
        self.assertIs(built.owner, transport)
        self.assertEqual(built.refused_methods, frozenset({"REGISTER"}))
        self.assertIsNone(streams.accept("not-a-node-id"))
        protocol: IProtocol = SipStreamProtocol(transport)
        streams.made(TraversalResult(protocol, "simultaneous-open", id_hex(BOB), 0.1))
        self.assertEqual(streams.status()["incoming"], {"simultaneous-open": 1})

    def test_nothing_accepted_before_serving(self) -> None:
        """Before the SIP transport exists, mediated streams are refused."""
        streams = SipStreams(
            MemoryReactorClock(),  # type: ignore[arg-type]
            FakeRegistration(None),
            Nodes({}),
            direct_timeout_seconds=2.0,
        )
        self.assertIsNone(streams.accept(id_hex(BOB)))
