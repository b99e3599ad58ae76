"""
Overlay links over real TLS on loopback: who may link, what the link's
peer is, what a damaged record does, and rings and mediated links on top.

Everything listens on port 0 of 127.0.0.1 in this process; certificates
come from an :class:`OverlayAuthority` made in the test (or are
self-signed where that is the point).  Every listener and link is closed
in the test's cleanup, and the cleanup waits until the connections are
gone, so no TLS close timer is left on the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.nat import broker, control_auth, control_protocol, mediator, stun_server
from p2psip.nat.traversal import TraversalClient
from p2psip.nat.traversal_service import TraversalService
from p2psip.overlay.certificates import SelfSignedTrust, TrustPolicy
from p2psip.overlay.errors import OverlayError
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import FramedStreamLink, Link, StreamConnector, inbound_link_factory
from p2psip.overlay.mediated import MediatedConnector, MediatedIncoming
from p2psip.overlay.node import OverlayConfig, OverlayNode
from p2psip.overlay.tls import LinkRefused, LinkSecurity, unwrapped
from p2psip.testing import TEST_CERTIFICATE_EPOCH, enrolled_identity, free_port
from p2psip.util.ids import id_hex

OVERLAY = "tls-ring.test"
MAX_BYTES = 65536
#: The trust's clock: shortly after the test certificates were issued.
NOW = TEST_CERTIFICATE_EPOCH + 60
CONFIG = OverlayConfig(
    overlay_name=OVERLAY,
    update_interval_seconds=1.0,
    ping_interval_seconds=5.0,
    request_timeout_seconds=5.0,
)
MEDIATOR_SECRET = b"tls-loopback-secret"


@inlineCallbacks
def eventually(
    condition: Callable[[], bool], what: str, timeout_seconds: float = 15.0
) -> Generator[Deferred[Any], Any, None]:
    """Poll ``condition`` on the real reactor until it holds."""
    waited = 0.0
    while not condition():
        if waited > timeout_seconds:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


class Recorder:
    """A LinkListener that keeps what its links report."""

    def __init__(self) -> None:
        self.established: list[Link] = []
        self.messages: list[tuple[Link, bytes]] = []
        self.lost: list[Link] = []

    def link_established(self, link: Link) -> None:
        self.established.append(link)

    def message_received(self, link: Link, data: bytes) -> None:
        self.messages.append((link, data))

    def link_lost(self, link: Link) -> None:
        self.lost.append(link)

    def link_for(self, peer: int) -> Link | None:
        return next((link for link in self.established if link.peer_id == peer), None)


class FlippingServer(portforward.ProxyServer):
    """Relays a TCP stream; when told, flips one bit of the next chunk from the client."""

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        assert isinstance(factory, FlippingRelay)
        if factory.flip_next and len(data) > 12:
            factory.flip_next = False
            # Past the 5-byte record header: a byte of ciphertext or tag.
            data = data[:10] + bytes([data[10] ^ 0x01]) + data[11:]
            factory.flipped += 1
        super().dataReceived(data)


class FlippingRelay(portforward.ProxyFactory):
    protocol = FlippingServer

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.flip_next = False
        self.flipped = 0


class LoopbackTestCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.links: list[FramedStreamLink] = []
        self.authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        self.trust = self.authority.trust(lambda: NOW)

    def security(self, identity: NodeIdentity, trust: TrustPolicy | None = None) -> LinkSecurity:
        return LinkSecurity(identity, trust or self.trust, reactor)

    def listen(self, factory: Any) -> int:
        port: IListeningPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    def listen_links(self, security: LinkSecurity, listener: Recorder) -> int:
        factory = inbound_link_factory(listener, reactor, MAX_BYTES, security)
        original = factory.wrappedFactory.buildProtocol

        def build(addr: Any) -> Any:
            link = original(addr)
            self.links.append(link)
            return link

        factory.wrappedFactory.buildProtocol = build  # type: ignore[method-assign]
        return self.listen(factory)

    def connector(self, security: LinkSecurity) -> StreamConnector:
        return StreamConnector(reactor, reactor, MAX_BYTES, security)

    @inlineCallbacks
    def close_links(self, links: list[Any]) -> Generator[Deferred[Any], Any, None]:
        """Close every link and wait until its connection is gone."""
        for link in links:
            link.close()
        yield eventually(
            lambda: all(link.lost or link.transport is None for link in links),
            "the links' connections to close",
        )


def warnings_of(security: LinkSecurity, events: list[dict[str, Any]]) -> list[str]:
    """The warnings ``security`` logged, as their reasons."""
    return [
        e["why"] for e in events if e["log_level"] == LogLevel.warn and e["log_source"] is security
    ]


class TlsLinkTests(LoopbackTestCase):
    """One link at a time between two LinkSecurity ends."""

    @inlineCallbacks
    def connect(
        self, client: LinkSecurity, port: int, expected: int | None
    ) -> Generator[Deferred[Any], Any, Link]:
        listener = Recorder()
        attempt = self.connector(client).connect(listener, "127.0.0.1", port, peer_id=expected)
        link = yield attempt
        assert isinstance(link, FramedStreamLink)
        self.links.append(link)
        return link

    @inlineCallbacks
    def test_handshake_names_both_ends(self) -> Generator[Deferred[Any], Any, None]:
        """After the handshake each end's link is filed under the Node-ID the other's certificate names."""
        server_identity = enrolled_identity(self.authority, node_id=0x5E)
        client_identity = enrolled_identity(self.authority, node_id=0xC1)
        server = Recorder()
        port = self.listen_links(self.security(server_identity), server)
        self.addCleanup(self.close_links, self.links)
        link = yield self.connect(self.security(client_identity), port, expected=0x5E)
        yield eventually(lambda: bool(server.established), "the server's link")
        [inbound] = server.established
        self.assertEqual((link.peer_id, inbound.peer_id), (0x5E, 0xC1))
        self.assertEqual(
            (link.describe()["transport"], inbound.describe()["transport"]), ("tls",) * 2
        )
        link.send(b"over tls")
        yield eventually(lambda: bool(server.messages), "the message")
        self.assertEqual(server.messages, [(inbound, b"over tls")])

    @inlineCallbacks
    def test_dialled_as_another_node_is_refused(self) -> Generator[Deferred[Any], Any, None]:
        """A peer dialled as Y whose certificate proves X fails the connect, with a logged reason."""
        server = Recorder()
        port = self.listen_links(
            self.security(enrolled_identity(self.authority, node_id=0xA)), server
        )
        self.addCleanup(self.close_links, self.links)
        with capturedLogs() as events:
            error = yield self.assertFailure(
                self.connect(self.security(enrolled_identity(self.authority)), port, 0xB),
                LinkRefused,
            )
        self.assertIn(f"proves Node-ID {0xA:032x}, not {0xB:032x}", str(error))
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("refused", warning["why"])
        self.assertIn("Error_Forbidden", warning["why"])
        yield eventually(lambda: all(link.lost for link in self.links), "the server side to close")
        self.assertEqual(server.established, [])

    @inlineCallbacks
    def test_certificate_of_another_ca_cannot_link(self) -> Generator[Deferred[Any], Any, None]:
        """A client whose certificate comes from another CA is refused by the listener, which logs why."""
        server = Recorder()
        listening = self.security(enrolled_identity(self.authority))
        port = self.listen_links(listening, server)
        self.addCleanup(self.close_links, self.links)
        stranger = OverlayAuthority.create("elsewhere.test", TEST_CERTIFICATE_EPOCH)
        # The rogue knows the real root (so it accepts the listener), but
        # its own certificate is the stranger's.
        rogue = self.security(enrolled_identity(stranger))
        with capturedLogs() as events:
            attempt = self.connector(rogue).connect(Recorder(), "127.0.0.1", port)
            # TLS 1.3 lets the client finish its handshake before the server
            # has judged its certificate: the link may come up, then it ends.
            try:
                link = yield attempt
                self.links.append(link)  # type: ignore[arg-type]
            except Exception:
                pass
            yield eventually(lambda: bool(warnings_of(listening, events)), "the refusal")
        [warning] = [e for e in events if e["log_source"] is listening]
        self.assertIn("not issued by this overlay's CA", warning["why"])
        self.assertIn("Error_Forbidden", warning["why"])
        self.assertEqual(warning["source"], "127.0.0.1")
        yield eventually(lambda: all(link.lost for link in self.links), "the links to end")
        self.assertEqual(server.established, [])

    @inlineCallbacks
    def test_self_signed_cannot_link_into_an_enrolled_ring(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """A freshly made self-signed key is no credential where the overlay root is the trust."""
        server = Recorder()
        listening = self.security(enrolled_identity(self.authority))
        port = self.listen_links(listening, server)
        self.addCleanup(self.close_links, self.links)
        rogue = self.security(NodeIdentity.generate(), SelfSignedTrust())
        with capturedLogs() as events:
            try:
                link = yield self.connector(rogue).connect(Recorder(), "127.0.0.1", port)
                self.links.append(link)  # type: ignore[arg-type]
            except Exception:
                pass
            yield eventually(lambda: bool(warnings_of(listening, events)), "the refusal")
        [why] = warnings_of(listening, events)
        self.assertIn("untrusted certificate", why)
        yield eventually(lambda: all(link.lost for link in self.links), "the links to end")
        self.assertEqual(server.established, [])

    @inlineCallbacks
    def test_flipped_byte_ends_the_link(self) -> Generator[Deferred[Any], Any, None]:
        """One flipped bit inside the TLS stream ends the link; the damaged message is never delivered."""
        server_identity = enrolled_identity(self.authority)
        server = Recorder()
        port = self.listen_links(self.security(server_identity), server)
        relay = FlippingRelay("127.0.0.1", port)
        relay_port = self.listen(relay)
        self.addCleanup(self.close_links, self.links)
        link = yield self.connect(
            self.security(enrolled_identity(self.authority)), relay_port, server_identity.node_id
        )
        yield eventually(lambda: bool(server.established), "the server's link")
        link.send(b"intact")
        yield eventually(lambda: bool(server.messages), "the first message")
        with capturedLogs() as events:
            relay.flip_next = True
            link.send(b"this message is damaged on the way")
            yield eventually(lambda: bool(server.lost), "the damaged link to end")
        self.assertEqual(relay.flipped, 1)
        self.assertEqual([data for _, data in server.messages], [b"intact"])
        warnings = [e["why"] for e in events if e["log_level"] == LogLevel.warn]
        self.assertTrue(any("TLS failure" in why for why in warnings), warnings)
        yield eventually(lambda: link.lost, "the client side to end")


class TlsRingTests(LoopbackTestCase):
    """OverlayNodes with CA certificates on real TLS listeners."""

    def setUp(self) -> None:
        super().setUp()
        self.nodes: list[OverlayNode] = []
        self.securities: dict[int, LinkSecurity] = {}

    @inlineCallbacks
    def start_node(
        self,
        identity: NodeIdentity,
        bootstrap: str | None,
        trust: TrustPolicy | None = None,
        link_trust: TrustPolicy | None = None,
    ) -> Generator[Deferred[Any], Any, OverlayNode]:
        trust = trust or self.trust
        security = self.security(identity, link_trust or trust)
        node = OverlayNode(
            identity=identity,
            clock=reactor,
            connector=self.connector(security),
            advertised_host="127.0.0.1",
            advertised_port=0,
            config=CONFIG,
            trust=trust,
        )
        port = self.listen(inbound_link_factory(node, reactor, MAX_BYTES, security))
        node.set_advertised_address("127.0.0.1", port)
        self.nodes.append(node)
        self.securities[node.node_id] = security
        if bootstrap is None:
            node.start_alone()
        else:
            yield node.join([bootstrap])
        return node

    @inlineCallbacks
    def stop_nodes(self) -> Generator[Deferred[Any], Any, None]:
        links = [link for node in self.nodes for link in node.all_links()]
        for node in self.nodes:
            node.stop()
        yield self.close_links(links)

    @inlineCallbacks
    def test_enrolled_ring_stores_and_fetches(self) -> Generator[Deferred[Any], Any, None]:
        """Three CA-enrolled nodes form a ring over TLS; a value stored through one is fetched through all."""
        self.addCleanup(self.stop_nodes)
        first = yield self.start_node(enrolled_identity(self.authority), None)
        bootstrap = f"tcp:127.0.0.1:{first.advertised_port}"
        for _ in range(2):
            yield self.start_node(enrolled_identity(self.authority), bootstrap)
        ids = sorted(node.node_id for node in self.nodes)
        yield eventually(
            lambda: all(
                node.topology.successor == ids[(ids.index(node.node_id) + 1) % 3]
                for node in self.nodes
            ),
            "the ring to converge",
        )
        links = [link for node in self.nodes for link in node.all_links()]
        self.assertTrue(links)
        self.assertTrue(all(link.tls and link.peer_id in ids for link in links))
        yield self.nodes[1].put("alice@tls-ring.test", b"sip:alice@127.0.0.1:5062", 600)
        for node in self.nodes:
            got = yield node.get("alice@tls-ring.test")
            self.assertEqual(got.value, b"sip:alice@127.0.0.1:5062")

    @inlineCallbacks
    def test_node_of_another_ca_cannot_join(self) -> Generator[Deferred[Any], Any, None]:
        """A node holding another CA's certificate gets no link, stores nothing, and the bootstrap logs why."""
        self.addCleanup(self.stop_nodes)
        first = yield self.start_node(enrolled_identity(self.authority), None)
        stranger = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        with capturedLogs() as events:
            # Its links trust the real root, so only the bootstrap's check stops it.
            rogue = enrolled_identity(stranger)
            joining = self.start_node(
                rogue,
                f"tcp:127.0.0.1:{first.advertised_port}",
                trust=stranger.trust(lambda: NOW),
                link_trust=self.trust,
            )
            yield self.assertFailure(joining, OverlayError, ConnectionError)
        refusals = warnings_of(self.securities[first.node_id], events)
        self.assertTrue(refusals)
        self.assertIn("signature is not the overlay CA's", refusals[0])
        # Nothing the rogue signed is held, in any Kind.
        self.assertEqual(
            [k for k in first.kinds if first.storage.store.values_signed_by(k, rogue.node_id)], []
        )
        self.assertEqual([link for link in first.all_links() if not link.closed], [])

    @inlineCallbacks
    def test_node_dialled_under_another_node_id_is_refused(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """An Attach-style connect to Y that reaches X's listener fails, and no link is filed under Y."""
        self.addCleanup(self.stop_nodes)
        first = yield self.start_node(enrolled_identity(self.authority), None)
        second = yield self.start_node(
            enrolled_identity(self.authority), f"tcp:127.0.0.1:{first.advertised_port}"
        )
        claimed = 0x0123456789ABCDEF0123456789ABCDEF
        # As if an Attach answer for Y had named X's listener.
        first.connectivity.addresses[claimed] = ("127.0.0.1", second.advertised_port)
        with capturedLogs() as events:
            error = yield self.assertFailure(first.connectivity.ensure_link(claimed), LinkRefused)
        self.assertIn(f"proves Node-ID {second.node_id:032x}, not {claimed:032x}", str(error))
        self.assertTrue(warnings_of(self.securities[first.node_id], events))
        self.assertEqual(first.links_to(claimed), [])
        self.assertTrue(first.has_link(second.node_id))


class MediatedTlsTests(LoopbackTestCase):
    """Links the mediator makes (a punched socket, the relay) carry TLS end to end."""

    @inlineCallbacks
    def setUp(self) -> Generator[Deferred[Any], Any, None]:
        super().setUp()
        stun_port = self.listen(stun_server.StunTcpServerFactory())
        stun_udp = reactor.listenUDP(0, stun_server.StunUdpServer(), interface="127.0.0.1")
        self.addCleanup(stun_udp.stopListening)
        self.broker = broker.Broker(
            reactor,
            control_auth.Secrets(shared=MEDIATOR_SECRET),
            broker.BrokerPolicy(),
            stun_tcp_port=stun_port,
            stun_udp_port=stun_udp.getHost().port,
        )
        control = self.listen(mediator.ControlServerFactory(self.broker, reactor))
        self.mediator = TCP4ClientEndpoint(reactor, "127.0.0.1", control)
        self.alice_identity = enrolled_identity(self.authority)
        self.bob_identity = enrolled_identity(self.authority)
        self.alice_security = self.security(self.alice_identity)
        self.bob_security = self.security(self.bob_identity)
        self.alice, self.bob = Recorder(), Recorder()
        incoming = MediatedIncoming()
        factory = inbound_link_factory(self.bob, reactor, MAX_BYTES, self.bob_security)
        incoming.open(factory)
        self.bob_client, _ = yield self.register(self.bob_identity, incoming)
        self.alice_client, self.alice_service = yield self.register(
            self.alice_identity, MediatedIncoming()
        )

    @inlineCallbacks
    def register(
        self, identity: NodeIdentity, incoming: MediatedIncoming
    ) -> Generator[Deferred[Any], Any, tuple[TraversalClient, TraversalService]]:
        client = TraversalClient(
            reactor,
            self.mediator,
            id_hex(identity.node_id),
            control_auth.derive_client_secret(MEDIATOR_SECRET, id_hex(identity.node_id)),
            accept=incoming.accept,
            on_incoming=incoming.made,
        )
        service = TraversalService(client, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.when_registered()
        return client, service

    @inlineCallbacks
    def check_link(self, link: Link, path: str) -> Generator[Deferred[Any], Any, None]:
        assert isinstance(link, FramedStreamLink)
        self.links.append(link)
        yield eventually(lambda: bool(self.bob.established), "Bob's end of the link")
        [inbound] = self.bob.established
        assert isinstance(inbound, FramedStreamLink)
        self.links.append(inbound)
        self.assertEqual(
            (link.peer_id, link.tls, link.path), (self.bob_identity.node_id, True, path)
        )
        self.assertEqual((inbound.peer_id, inbound.tls), (self.alice_identity.node_id, True))
        link.send(b"through the mediator")
        yield eventually(lambda: bool(self.bob.messages), "the message")
        self.assertEqual(self.bob.messages, [(inbound, b"through the mediator")])

    @inlineCallbacks
    def test_direct_connect_failure_falls_back_to_a_tls_link(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """With the candidate unreachable, the mediator's connection runs the TLS handshake end to end."""
        self.addCleanup(self.close_links, self.links)
        connector = MediatedConnector(
            self.connector(self.alice_security),
            self.alice_service,
            reactor,
            MAX_BYTES,
            direct_timeout_seconds=2,
            security=self.alice_security,
        )
        # Nothing listens there: the direct attempt is refused.
        link = yield connector.connect(
            self.alice, "127.0.0.1", free_port(), peer_id=self.bob_identity.node_id
        )
        yield self.check_link(link, control_protocol.DIRECT)

    @inlineCallbacks
    def test_relayed_link_runs_tls_end_to_end(self) -> Generator[Deferred[Any], Any, None]:
        """Over the mediator's relay the two nodes still authenticate each other; the relay sees only TLS."""
        self.addCleanup(self.close_links, self.links)
        alice = self.alice_security
        factory = alice.client_factory(
            Factory.forProtocol(
                lambda: FramedStreamLink(self.alice, reactor, MAX_BYTES, False, security=alice)
            ),
            expected=self.bob_identity.node_id,
        )
        result = yield self.alice_client.connect(
            id_hex(self.bob_identity.node_id), factory, [control_protocol.RELAYED]
        )
        self.assertEqual(result.method, control_protocol.RELAYED)
        link = unwrapped(result.protocol)
        link.path = result.method
        yield link.when_established()
        yield self.check_link(link, control_protocol.RELAYED)
        # Handshakes, the message and its ack: far more than the plaintext.
        self.assertGreater(self.broker.metrics.relayed_bytes, 1000)
