"""
Client mode (RFC 6940 s3.2.1) on a ring of real nodes in memory: a client
attaches to the peer responsible for its Node-ID, stores and fetches
through it, is reached by Node-ID through it, never enters anyone's
tables, and attaches again when its peer dies or its id changes hands.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies
from p2psip.overlay.client import OverlayClient
from p2psip.overlay.errors import RequestFailed
from p2psip.overlay.membership import NodeState
from p2psip.overlay.message import Destination, ErrorCode, MessageCode
from p2psip.overlay.node import OverlayNode
from p2psip.web.ring_view import walk_ring
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.testing import TEST_CERTIFICATE_EPOCH
from p2psip.usages.sip import SIP_APPLICATION
from p2psip.util.ids import MAX_ID
from tests.overlay.ringsim import PORT, RingSimulation


def new_client(sim: RingSimulation, host: str = "10.200.0.1") -> OverlayClient:
    return OverlayClient(
        identity=sim.new_identity(),
        clock=sim.clock,
        connector=sim.network.connector(host, PORT),
        config=sim.config,
        rng=random.Random(sim.random.getrandbits(64)),
        trust=sim.trust,
    )


def node_by_id(sim: RingSimulation, node_id: int) -> OverlayNode:
    [node] = [n for n in sim.live() if n.node_id == node_id]
    return node


class ClientModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=11)
        self.addCleanup(self.sim.stop_all)
        self.sim.grow(5)
        self.sim.run(30)
        self.client = new_client(self.sim)
        self.addCleanup(self.client.stop)
        self.sim.wait(self.client.attach([self.sim.bootstrap_endpoint]))

    def test_attaches_to_the_owner_of_its_node_id(self) -> None:
        """The attachment peer is the peer responsible for the client's Node-ID, which lists it."""
        self.assertEqual(self.client.state, NodeState.ATTACHED)
        owner = self.sim.owner(self.client.node_id)
        self.assertEqual(self.client.attachment_peer, owner)
        self.assertEqual(node_by_id(self.sim, owner).attached_clients(), [self.client.node_id])
        # Its one link is to that peer; the bootstrap's was dropped.
        self.assertEqual(self.client.links.peers(), [owner])

    def test_stores_and_fetches_through_its_peer(self) -> None:
        """A value the client stores is at the responsible peer; it fetches what peers stored."""
        put = self.sim.wait(self.client.put("from-client", b"one"))
        self.assertEqual(put.responsible, self.sim.owner(put.resource_id))
        self.assertEqual(put.route[0], self.client.node_id)
        self.assertEqual(put.route[1], self.client.attachment_peer)
        for node in self.sim.live():
            self.assertEqual(self.sim.wait(node.get("from-client")).value, b"one")
        self.sim.wait(self.sim.live()[2].put("from-peer", b"two"))
        self.assertEqual(self.sim.wait(self.client.get("from-peer")).value, b"two")

    def test_stores_nothing_for_others(self) -> None:
        """A Store addressed to the client's Node-ID is refused with Error_Forbidden."""
        peer = self.sim.live()[0]
        store = self.sim.wait(peer.put("x", b"y"))
        del store
        body = bodies.StoreReq(self.client.node_id, 0, ()).encode()
        failure = self.failureResultOf(
            self._settled(
                peer.messenger.request(
                    Destination.node(self.client.node_id), MessageCode.STORE_REQ, body
                )
            ),
            RequestFailed,
        )
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)
        self.assertEqual(self.client.storage.store.resources(), [])

    def _settled(self, d):  # type: ignore[no-untyped-def]
        results: list[object] = []
        d.addBoth(lambda r: results.append(r) or r)
        self.sim.run_until(lambda: bool(results), limit_seconds=30, step=0.05)
        return d

    def test_reached_by_node_id(self) -> None:
        """Every peer reaches the client by Node-ID: a Ping, and AppAttach for its SIP adaptor."""
        self.client.set_application_address(SIP_APPLICATION, "192.0.2.50", 5062)
        for node in self.sim.live():
            answer = self.sim.wait(
                node.messenger.request(
                    Destination.node(self.client.node_id),
                    MessageCode.PING_REQ,
                    bodies.PingReq().encode(),
                )
            )
            self.assertEqual(answer.responder, self.client.node_id)
            self.assertEqual(
                self.sim.wait(node.resolve_application(self.client.node_id, SIP_APPLICATION)),
                ("192.0.2.50", 5062),
            )
            # The answer is remembered: a connection to that address may be made by Node-ID.
            self.assertEqual(node.node_serving_at("192.0.2.50", 5062), self.client.node_id)
        self.assertIsNone(self.sim.live()[0].node_serving_at("192.0.2.50", 5063))

    def test_never_in_tables(self) -> None:
        """After rounds of stabilisation no peer lists the client as a neighbour or finger."""
        self.sim.run(120)
        for node in self.sim.live():
            self.assertNotIn(self.client.node_id, node.topology.known_peers())
            self.assertNotIn(self.client.node_id, node.topology.fingers.values())
            self.assertNotIn(
                self.client.node_id, [peer for peer, _h, _p in node.known_peer_addresses()]
            )
        # ... and lookups of ids next to the client's end at ring members.
        near = (self.client.node_id + 1) & MAX_ID
        result = self.sim.wait(self.sim.live()[0].lookup_id(near))
        self.assertEqual(result.responsible, self.sim.owner(near))

    def test_reattaches_when_its_peer_dies(self) -> None:
        """Killing the attachment peer: the client attaches to the new owner and is reached again."""
        self.sim.wait(self.client.put("kept", b"value"))
        old = node_by_id(self.sim, self.client.attachment_peer or 0)
        self.sim.kill(old)
        waited = self.sim.run_until(
            lambda: (
                self.client.state is NodeState.ATTACHED
                and self.client.attachment_peer == self.sim.owner(self.client.node_id)
            ),
            limit_seconds=60,
            step=0.1,
        )
        self.assertLess(waited, 60)
        self.assertNotEqual(self.client.attachment_peer, old.node_id)
        self.assertIsNotNone(self.client.attacher.last_reattach_seconds)
        other = self.sim.live()[0]
        answer = self.sim.wait(
            other.messenger.request(
                Destination.node(self.client.node_id),
                MessageCode.PING_REQ,
                bodies.PingReq().encode(),
            )
        )
        self.assertEqual(answer.responder, self.client.node_id)
        self.assertEqual(self.sim.wait(self.client.get("kept")).value, b"value")

    def test_reattaches_soon_when_its_peer_vanishes(self) -> None:
        """
        A peer that vanishes without closing the link (a power cut): the
        client's first unacknowledged message finds it within the ack
        timeout, and the client attaches to the new owner.
        """
        old = node_by_id(self.sim, self.client.attachment_peer or 0)
        self.sim.crash(old)
        self.client.put("after", b"value").addErrback(lambda _: None)
        limit = self.sim.config.link_ack_timeout_seconds + 2
        self.sim.run_until(lambda: not self.client.has_link(old.node_id), limit, step=0.1)
        self.assertFalse(self.client.has_link(old.node_id))
        self.sim.run_until(
            lambda: (
                self.client.state is NodeState.ATTACHED
                and self.client.attachment_peer == self.sim.owner(self.client.node_id)
            ),
            limit_seconds=60,
            step=0.1,
        )
        self.assertEqual(self.client.attachment_peer, self.sim.owner(self.client.node_id))

    def test_observers_hear_of_every_attachment(self) -> None:
        """The role re-stores registrations on each new attachment: observers are told."""
        seen: list[int] = []
        self.client.attachment_observers.append(seen.append)
        self.sim.kill(node_by_id(self.sim, self.client.attachment_peer or 0))
        self.sim.run_until(lambda: bool(seen), limit_seconds=60, step=0.1)
        self.assertEqual(seen, [self.client.attachment_peer])

    def test_moves_when_a_new_peer_takes_its_node_id(self) -> None:
        """A peer joining between the client's id and its owner takes it over; the client moves."""
        owner = self.sim.owner(self.client.node_id)
        newcomer = self.sim.join(identity=self.sim.identity_between(self.client.node_id, owner))
        self.assertEqual(self.sim.owner(self.client.node_id), newcomer.node_id)
        self.sim.run_until(
            lambda: self.client.attachment_peer == newcomer.node_id,
            limit_seconds=3 * self.sim.config.update_interval_seconds,
        )
        self.assertEqual(newcomer.attached_clients(), [self.client.node_id])
        self.sim.run(5)
        # The old owner let the client go as soon as the newcomer took the id.
        self.assertEqual(node_by_id(self.sim, owner).attached_clients(), [])
        self.assertEqual(node_by_id(self.sim, owner).counters["clients_released"], 1)
        self.assertEqual(self.client.attacher.attachments, 2)


class ClientRefusalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=5)
        self.addCleanup(self.sim.stop_all)
        self.sim.grow(3)
        self.sim.run(20)

    def test_ring_member_cannot_attach_as_client(self) -> None:
        """A ring member's candidate-less Attach over its link is refused, and it stays a member."""
        first, second = self.sim.live()[:2]
        link = first.links.link_for(second.node_id)
        assert link is not None
        d = first.messenger.request(
            Destination.node(second.node_id),
            MessageCode.ATTACH_REQ,
            first.connectivity.client_attach_request(),
            first_link=link,
        )
        results: list[object] = []
        d.addBoth(results.append)
        self.sim.run_until(lambda: bool(results), limit_seconds=30, step=0.05)
        [failure] = results
        self.assertIsInstance(getattr(failure, "value", None), RequestFailed)
        self.assertEqual(second.attached_clients(), [])
        self.assertEqual(second.counters["clients_refused"], 1)

    def test_client_accepts_no_attach(self) -> None:
        """An Attach addressed to a client is refused: it has no listener."""
        client = new_client(self.sim)
        self.addCleanup(client.stop)
        self.sim.wait(client.attach([self.sim.bootstrap_endpoint]))
        peer = self.sim.live()[0]
        d = peer.messenger.request(
            Destination.node(client.node_id),
            MessageCode.ATTACH_REQ,
            peer.connectivity.attach_request(),
        )
        results: list[object] = []
        d.addBoth(results.append)
        self.sim.run_until(lambda: bool(results), limit_seconds=30, step=0.05)
        self.assertEqual(getattr(results[0], "value").error_code, ErrorCode.FORBIDDEN)


class EnrolledClientTests(SynchronousTestCase):
    def test_enrolled_client_attaches_and_stores(self) -> None:
        """In a ring that trusts only its CA, a client with a CA-issued certificate works."""
        sim = RingSimulation(
            seed=3, authority=OverlayAuthority.create("ring.test", TEST_CERTIFICATE_EPOCH)
        )
        self.addCleanup(sim.stop_all)
        sim.grow(3)
        sim.run(20)
        client = new_client(sim)
        self.addCleanup(client.stop)
        sim.wait(client.attach([sim.bootstrap_endpoint]))
        sim.wait(client.put("enrolled", b"v"))
        self.assertEqual(sim.wait(sim.live()[1].get("enrolled")).value, b"v")

    def test_no_bootstrap_names_the_fix(self) -> None:
        """With nobody to attach to, the failure names --bootstrap."""
        sim = RingSimulation(seed=4)
        self.addCleanup(sim.stop_all)
        client = new_client(sim)
        self.addCleanup(client.stop)
        d = client.attach(["tcp:10.99.0.1:6084"])
        results: list[object] = []
        d.addBoth(results.append)
        sim.run_until(lambda: bool(results), limit_seconds=60, step=0.5)
        self.assertIn("--bootstrap", getattr(results[0], "getErrorMessage")())


class ClientRingWalkTests(SynchronousTestCase):
    def test_walk_from_a_client(self) -> None:
        """The ring walk of the admin API works from a client: every peer once, the client not among them."""
        sim = RingSimulation(seed=9)
        self.addCleanup(sim.stop_all)
        sim.grow(4)
        sim.run(20)
        client = new_client(sim)
        self.addCleanup(client.stop)
        sim.wait(client.attach([sim.bootstrap_endpoint]))
        walked = sim.wait(walk_ring(client))
        self.assertTrue(walked["complete"])
        self.assertEqual(
            sorted(int(node["node_id"], 16) for node in walked["nodes"]), sim.sorted_ids()
        )


class ClientStopTests(SynchronousTestCase):
    def test_stop_while_attaching(self) -> None:
        """A client stopped before its attachment completes stays stopped, links closed, no timers."""
        sim = RingSimulation(seed=13)
        self.addCleanup(sim.stop_all)
        sim.grow(3)
        sim.run(20)
        client = new_client(sim)
        d = client.attach([sim.bootstrap_endpoint])
        results: list[object] = []
        d.addBoth(results.append)
        sim.clock.advance(0.0)
        client.stop()
        sim.run(10)
        self.assertEqual(client.state, NodeState.STOPPED)
        self.assertEqual(len(results), 1)
        self.assertEqual(client.links.all_links(), [])


class ResolvedAddressesTests(SynchronousTestCase):
    def test_bounded_and_newest_wins(self) -> None:
        """Answers are remembered by address, the latest node per address, the oldest forgotten first."""
        from p2psip.overlay import app_attach

        class Messenger:
            def handle(self, code: object, handler: object) -> None:
                pass

        applications = app_attach.Applications(Messenger(), None)  # type: ignore[arg-type]
        self.patch(app_attach, "MAX_RESOLVED_ADDRESSES", 2)
        applications._remember(("192.0.2.1", 5062), 1)
        applications._remember(("192.0.2.1", 5062), 2)
        applications._remember(("[2001:DB8::1]", 5062), 3)
        self.assertEqual(applications.node_at("192.0.2.1", 5062), 2)
        self.assertEqual(applications.node_at("2001:db8::1", 5062), 3)
        applications._remember(("192.0.2.3", 5062), 4)
        self.assertIsNone(applications.node_at("192.0.2.1", 5062))
        self.assertEqual(applications.node_at("192.0.2.3", 5062), 4)
