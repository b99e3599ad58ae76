"""Links between real nodes on an in-memory network: connect, hello, keepalive, failure reports."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.errors import UnexpectedPeer
from tests.overlay.ringsim import PORT, RingSimulation


class ConnectivityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=21)
        self.addCleanup(self.sim.stop_all)
        self.first = self.sim.found()
        self.second = self.sim.join()
        self.third = self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)

    def test_callers_waiting_for_one_connect_each_get_the_link(self) -> None:
        """Two callers of ensure_link for the same peer both get the link, whatever the first chains on."""
        lonely = self.sim._new_node()
        lonely.start_alone()
        self.sim.nodes.append(lonely)
        connectivity = self.first.connectivity
        connectivity.addresses[lonely.node_id] = (lonely.advertised_host, PORT)
        first = connectivity.ensure_link(lonely.node_id)
        first.addCallback(lambda link: "the first caller's own result")
        second = connectivity.ensure_link(lonely.node_id)
        self.sim.run(1)
        self.assertEqual(self.successResultOf(first), "the first caller's own result")
        link = self.successResultOf(second)
        self.assertEqual(link.peer_id, lonely.node_id)

    def test_hello_names_an_unexpected_peer(self) -> None:
        """A candidate that leads to another node than the one meant fails with UnexpectedPeer."""
        connectivity = self.first.connectivity
        connectivity.addresses[0x1234] = (self.second.advertised_host, PORT)
        d = connectivity.ensure_link(0x1234)
        self.sim.run(1)
        self.assertIn(
            self.second.node_id.to_bytes(16, "big").hex()[:8],
            self.failureResultOf(d, UnexpectedPeer).getErrorMessage(),
        )

    def test_silent_peer_is_reported_once(self) -> None:
        """A peer whose links go silent is pinged, its links closed, and its failure reported once."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        self.sim.crash(self.second)
        config = self.sim.config
        self.sim.run(2 * config.ping_interval_seconds + 2 * config.request_timeout_seconds)
        self.assertEqual(failures, [self.second.node_id])
        self.assertFalse(self.first.has_link(self.second.node_id))

    def test_live_peer_answering_its_check_refuses_the_answers_held_for_it(self) -> None:
        """A suspected peer that answers the Ping lies between for real: its held answers stay refused."""
        refused: list[int] = []
        messenger = self.first.messenger
        original = messenger.refuse_held_answers

        def recording(peer: int) -> None:
            refused.append(peer)
            original(peer)

        self.patch(messenger, "refuse_held_answers", recording)
        self.first.connectivity.suspect(self.second.node_id)
        self.sim.run(1)
        self.assertEqual(refused, [self.second.node_id])
        self.assertTrue(self.first.has_link(self.second.node_id))

    def test_closed_link_of_a_peer_with_another_link_is_no_failure(self) -> None:
        """Losing one of two links to a live peer reports nothing and keeps the peer."""
        failures: list[int] = []
        self.first.connectivity.failure_observers.append(failures.append)
        peer = self.second.node_id
        extra = self.sim.network.connector(self.first.advertised_host, PORT)
        d = extra.connect(self.first, self.second.advertised_host, PORT)
        self.sim.run(0.5)
        link = self.successResultOf(d)
        self.sim.wait(self.first.connectivity.hello(link, expected=peer))
        self.assertEqual(len(self.first.links_to(peer)), 2)
        link.close()
        self.sim.run(1)
        self.assertEqual(failures, [])
        self.assertIn(peer, self.first.topology.neighbours())

    def test_addresses_of_peers_that_linked_to_us_are_learned(self) -> None:
        """After a stabilisation round every neighbour's listener address is known."""
        self.sim.run(2 * self.sim.config.update_interval_seconds)
        for node in self.sim.live():
            for peer in node.topology.neighbours():
                self.assertIsNotNone(node.peer_address(peer), (node.node_id, peer))
        known = {peer for peer, _, _ in self.first.known_peer_addresses()}
        self.assertEqual(known, {self.second.node_id, self.third.node_id})

    def test_unidentified_links_are_closed(self) -> None:
        """A connection that never says who it is is closed after the request timeout."""
        from p2psip.testing import MemoryLink

        stranger = MemoryLink(self.sim.network, self.first, "192.0.2.9:1", inbound=True)
        self.first.link_established(stranger)
        self.sim.run(
            self.sim.config.request_timeout_seconds + self.sim.config.ping_interval_seconds
        )
        self.assertTrue(stranger.closed)
