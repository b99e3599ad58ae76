"""Tests for the overlay connector that falls back to the STUNT mediator (fake connectors, fake clock)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat.traversal import TraversalError, TraversalResult
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import FramedLinkFactory, FramedStreamLink, Link
from p2psip.overlay.mediated import MediatedConnectFailed, MediatedConnector
from p2psip.overlay.node import OverlayConfig, OverlayNode
from p2psip.testing import MemoryNetwork
from p2psip.util.ids import id_hex

PEER = 0x0123456789ABCDEF0123456789ABCDEF


class Listener:
    def __init__(self) -> None:
        #: Links the node already holds, by Node-ID.
        self.links: dict[int, Link] = {}

    def link_established(self, link: Link) -> None:
        pass

    def message_received(self, link: Link, data: bytes) -> None:
        pass

    def link_lost(self, link: Link) -> None:
        pass

    def link_for(self, peer: int) -> Link | None:
        return self.links.get(peer)


class FakeDirect:
    """Records connects; each answers with the next prepared Deferred."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []
        self.answers: list[Deferred[Link]] = []
        self.endpoints: list[str] = []

    def connect(
        self, listener: Any, host: str, port: int, peer_id: int | None = None
    ) -> Deferred[Link]:
        self.calls.append((host, port, peer_id))
        return self.answers.pop(0)

    def connect_endpoint(self, listener: Any, description: str) -> Deferred[Link]:
        self.endpoints.append(description)
        return Deferred()


class FakeClient:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.answer: Deferred[TraversalResult] | None = None

    def connect(self, peer_id: str, factory: Any) -> Deferred[TraversalResult]:
        self.requests.append((peer_id, factory))
        if self.answer is not None:
            return self.answer
        link = factory.buildProtocol(None)
        link.makeConnection(StringTransport())
        return succeed(
            TraversalResult(
                protocol=link, method="simultaneous-open", peer_id=peer_id, setup_seconds=0.1
            )
        )


class FakeTraversal:
    def __init__(self, client: FakeClient | None) -> None:
        self.client = client
        self.waiting: Deferred[Any] = Deferred()

    def when_registered(self) -> Deferred[Any]:
        return succeed(self.client) if self.client is not None else self.waiting


class MediatedConnectorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.direct = FakeDirect()
        self.client = FakeClient()
        self.traversal = FakeTraversal(self.client)
        self.connector = MediatedConnector(
            self.direct,
            self.traversal,
            self.clock,
            65536,
            direct_timeout_seconds=1.5,
            registration_wait_seconds=5,
        )
        self.listener = Listener()

    def direct_link(self) -> FramedStreamLink:
        return FramedStreamLink(self.listener, self.clock, 65536, inbound=False)

    def test_without_peer_id_only_direct(self) -> None:
        """Without a Node-ID the connector is the plain one: no mediator is asked."""
        link = self.direct_link()
        self.direct.answers.append(succeed(link))
        self.assertIs(
            self.successResultOf(self.connector.connect(self.listener, "198.51.100.7", 6084)), link
        )
        self.assertEqual(self.client.requests, [])

    def test_bootstrap_endpoints_go_direct(self) -> None:
        """Bootstrap endpoints are connected by the plain connector."""
        self.connector.connect_endpoint(self.listener, "tcp:198.51.100.10:6084")
        self.assertEqual(self.direct.endpoints, ["tcp:198.51.100.10:6084"])

    def test_direct_success_keeps_plain_path(self) -> None:
        """A candidate that answers is used as is, and its link says it was a plain connect."""
        link = self.direct_link()
        self.direct.answers.append(succeed(link))
        got = self.successResultOf(
            self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        )
        self.assertIs(got, link)
        self.assertEqual(self.direct.calls, [("10.0.1.2", 6084, PEER)])
        self.assertEqual((got.describe()["path"], got.describe()["mediated"]), ("connect", False))
        self.assertEqual(self.client.requests, [])

    def test_refused_falls_back_to_mediator(self) -> None:
        """A refused direct connect asks the mediator for the peer's Node-ID in hex; the link names the method."""
        self.direct.answers.append(fail(ConnectionRefusedError()))
        link = self.successResultOf(
            self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        )
        [(peer_id, _factory)] = self.client.requests
        self.assertEqual(peer_id, id_hex(PEER))
        self.assertFalse(link.inbound)
        self.assertEqual(link.path, "simultaneous-open")
        self.assertEqual(
            (link.describe()["path"], link.describe()["mediated"]), ("simultaneous-open", True)
        )

    def test_wrapped_connect_error_reads_as_one_line(self) -> None:
        """A connect error wrapping a Failure is reported by its message, on one line."""
        self.traversal.client = None
        self.connector.registration_wait_seconds = 1
        self.direct.answers.append(fail(ConnectError(string=Failure(ConnectionDone()))))
        d = self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        self.clock.advance(1)
        message = self.failureResultOf(d, MediatedConnectFailed).getErrorMessage()
        self.assertIn("ConnectError: Connection was closed cleanly.", message)
        self.assertNotIn("Traceback", message)
        self.assertNotIn("\n", message)

    def test_link_made_meanwhile_is_reused(self) -> None:
        """When the peer linked to us during the direct attempt, that link is used and the mediator is not asked."""
        inbound = FramedStreamLink(self.listener, self.clock, 65536, inbound=True)
        self.listener.links[PEER] = inbound
        self.direct.answers.append(fail(ConnectionRefusedError()))
        got = self.successResultOf(
            self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        )
        self.assertIs(got, inbound)
        self.assertEqual(self.client.requests, [])

    def test_direct_timeout_is_short(self) -> None:
        """A direct connect that hangs is given up after the configured timeout, then the mediator is asked."""
        self.direct.answers.append(Deferred())
        d = self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        self.assertNoResult(d)
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(d).path, "simultaneous-open")

    def test_failed_direct_is_skipped_next_time(self) -> None:
        """After a failed direct connect the next connect to that peer goes straight to the mediator."""
        self.direct.answers.append(fail(ConnectionRefusedError()))
        self.successResultOf(self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER))
        self.successResultOf(self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER))
        self.assertEqual(len(self.direct.calls), 1)
        self.assertEqual(len(self.client.requests), 2)

    def test_remembered_failures_are_bounded(self) -> None:
        """Only so many peers' failed direct connects are remembered; expired ones go first, then the oldest."""
        from p2psip.overlay import mediated

        self.patch(mediated, "MAX_REMEMBERED_PEERS", 2)
        for peer in (1, 2):
            self.direct.answers.append(fail(ConnectionRefusedError()))
            self.successResultOf(
                self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=peer)
            )
        self.clock.advance(mediated.DIRECT_RETRY_AFTER_SECONDS)
        self.direct.answers.append(fail(ConnectionRefusedError()))
        self.successResultOf(self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=3))
        self.assertEqual(set(self.connector.direct_failed_until), {3})
        for peer in (4, 5):
            self.direct.answers.append(fail(ConnectionRefusedError()))
            self.successResultOf(
                self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=peer)
            )
        self.assertEqual(set(self.connector.direct_failed_until), {4, 5})

    def test_not_registered_names_the_option(self) -> None:
        """When the mediator registration does not come, the failure names --mediator and both reasons."""
        connector = MediatedConnector(
            self.direct,
            FakeTraversal(None),
            self.clock,
            65536,
            direct_timeout_seconds=1,
            registration_wait_seconds=5,
        )
        self.direct.answers.append(fail(ConnectionRefusedError()))
        d = connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        self.clock.advance(5)
        failure = self.failureResultOf(d, MediatedConnectFailed)
        message = failure.getErrorMessage()
        self.assertIn("10.0.1.2:6084", message)
        self.assertIn("check --mediator", message)

    def test_mediator_failure_reason_kept(self) -> None:
        """The mediator's reason (e.g. relay disabled) reaches the node's failure."""
        self.client.answer = fail(TraversalError("relay disabled in mediator.ini [mediator] relay"))
        self.direct.answers.append(fail(ConnectionRefusedError()))
        d = self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        message = self.failureResultOf(d, MediatedConnectFailed).getErrorMessage()
        self.assertIn("relay disabled in mediator.ini", message)
        self.assertIn("direct connect to 10.0.1.2:6084", message)

    def test_incoming_before_node_is_refused(self) -> None:
        """Mediated connections are refused until the node's inbound factory is known."""
        self.assertIsNone(self.connector.incoming.accept(id_hex(PEER)))

    def test_incoming_needs_a_node_id(self) -> None:
        """Only IDs that look like Node-IDs get the node's inbound factory."""
        factory = FramedLinkFactory(self.listener, self.clock, 65536)
        self.connector.incoming.open(factory)
        self.assertIs(self.connector.incoming.accept(id_hex(PEER)), factory)
        for bad in ("alice", "zz" * 16, "0" * 31, "", "+" + "0" * 31, " " + "0" * 31, "0_" * 16):
            self.assertIsNone(self.connector.incoming.accept(bad), bad)
        self.connector.incoming.close()
        self.assertIsNone(self.connector.incoming.accept(id_hex(PEER)))

    def test_incoming_link_names_method(self) -> None:
        """An inbound link the mediator made says how (relayed) in its status summary."""
        link = FramedLinkFactory(self.listener, self.clock, 65536).buildProtocol(None)
        self.connector.incoming.made(
            TraversalResult(
                protocol=link, method="relayed", peer_id=id_hex(PEER), setup_seconds=0.2
            )
        )
        self.assertEqual((link.describe()["direction"], link.describe()["path"]), ("in", "relayed"))

    def test_non_link_protocol_is_not_a_link(self) -> None:
        """A mediator result that carries no link fails instead of handing the node something else."""
        self.client.answer = succeed(
            TraversalResult(protocol=Protocol(), method="direct", peer_id="x", setup_seconds=0)
        )
        self.direct.answers.append(fail(ConnectionRefusedError()))
        d = self.connector.connect(self.listener, "10.0.1.2", 6084, peer_id=PEER)
        self.failureResultOf(d, MediatedConnectFailed)


class WrongPeerTests(SynchronousTestCase):
    """A direct connect that reaches the wrong node is retried through the mediator (in-memory network)."""

    def test_candidate_leading_back_to_ourselves(self) -> None:
        """A peer whose candidate leads back to this node is reached by its Node-ID through the mediator."""
        clock = Clock()
        network = MemoryNetwork(clock, latency_seconds=0.0)
        config = OverlayConfig(overlay_name="wrong-peer.test")

        def node(host: str, connector: Any, secret: int) -> OverlayNode:
            made = OverlayNode(
                identity=NodeIdentity.from_secret(secret),
                clock=clock,
                connector=connector,
                advertised_host=host,
                advertised_port=6084,
                config=config,
            )
            network.listen(host, 6084, made)
            made.start_alone()
            return made

        class MemoryMediator:
            """Reaches the peer at its real address, as the relay would."""

            requests: list[str] = []

            def connect(self, peer_id: str, factory: Any) -> Deferred[TraversalResult]:
                self.requests.append(peer_id)
                d: Deferred[Any] = network._connect(
                    ("10.0.1.2", 6084), factory.listener, "10.0.2.2", 6084
                )
                return d.addCallback(
                    lambda link: TraversalResult(
                        protocol=link, method="relayed", peer_id=peer_id, setup_seconds=0
                    )
                )

        mediator = MemoryMediator()
        connector = MediatedConnector(
            network.connector("10.0.1.2", 6084),
            FakeTraversal(mediator),
            clock,
            65536,  # type: ignore[arg-type]
        )
        a = node("10.0.1.2", connector, 1001)
        b = node("10.0.2.2", network.connector("10.0.2.2", 6084), 2002)
        # B advertises the same private address as A has.
        a.connectivity.addresses[b.node_id] = ("10.0.1.2", 6084)
        d = a.connectivity.ensure_link(b.node_id)
        clock.advance(1)
        link = self.successResultOf(d)
        self.assertEqual((link.peer_id, link.path), (b.node_id, "relayed"))
        self.assertEqual(mediator.requests, [id_hex(b.node_id)])
        self.assertIs(a.link_for(b.node_id), link)
        self.assertIsNone(a.link_for(a.node_id))
        a.stop()
        b.stop()
        clock.advance(1)
