"""
Ring tests: many real nodes on one fake clock with in-memory links.

They check the CHORD-RELOAD invariants that matter to users: after joins
converge every peer knows its true successor and predecessor, every lookup
ends at the peer that owns the id, and abrupt failures of peers lose no
stored value once the ring has repaired.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.ids import resource_id
from tests.overlay.ringsim import RingSimulation


class SmallRingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=7)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(5):
            self.sim.join()
        self.sim.run(30)

    def test_neighbours_converge(self) -> None:
        """Every peer's successor and predecessor are the true ones."""
        ring = self.sim.sorted_ids()
        for node in self.sim.live():
            index = ring.index(node.node_id)
            self.assertEqual(node.topology.successor, ring[(index + 1) % len(ring)])
            self.assertEqual(node.topology.predecessor, ring[index - 1])

    def test_put_get_from_every_peer(self) -> None:
        """A value stored through one peer is fetched through every other."""
        first = self.sim.live()[0]
        put = self.sim.wait(first.put("alice", b"sip:alice@192.0.2.1"))
        self.assertEqual(put.responsible, self.sim.owner(put.resource_id))
        for node in self.sim.live():
            got = self.sim.wait(node.get("alice"))
            self.assertTrue(got.found)
            self.assertEqual(got.value, b"sip:alice@192.0.2.1")

    def test_find_owner_walks_the_ring(self) -> None:
        """Asking for the owner of (peer + 1) from peer to peer visits every peer once."""
        start = self.sim.live()[0]
        seen, current = [start.node_id], start.node_id
        while True:
            owner, _address = self.sim.wait(start.find_owner((current + 1) % 2**128))
            if owner == start.node_id:
                break
            seen.append(owner)
            current = owner
        ring = self.sim.sorted_ids()
        index = ring.index(start.node_id)
        self.assertEqual(seen, ring[index:] + ring[:index])

    def test_missing_value(self) -> None:
        """Fetching a name nobody stored reports not found."""
        got = self.sim.wait(self.sim.live()[2].get("nobody"))
        self.assertFalse(got.found)

    def test_graceful_leave_keeps_data(self) -> None:
        """A peer that leaves hands its data on; the rest still find it."""
        nodes = self.sim.live()
        for i in range(20):
            self.sim.wait(nodes[i % len(nodes)].put(f"key{i}", b"v%d" % i))
        leaving = nodes[3]
        self.sim.wait(leaving.leave())
        self.sim.nodes.remove(leaving)
        self.sim.run(30)
        for i in range(20):
            got = self.sim.wait(self.sim.live()[0].get(f"key{i}"))
            self.assertEqual(got.value, b"v%d" % i)
        ring = self.sim.sorted_ids()
        for node in self.sim.live():
            self.assertEqual(
                node.topology.successor, ring[(ring.index(node.node_id) + 1) % len(ring)]
            )


class LargeRingTests(SynchronousTestCase):
    """
    Forty peers; a fifth of them crash in four waves; nothing is lost.

    Forty peers give every Chord structure its full shape (three levels of
    fingers, lookups of two and more hops, successor lists that never
    cover the ring) at a fraction of the cost of a hundred, which
    ``bench/ring_simulation.py`` runs and times.  Each wave is given the
    time it needs to repair, up to a limit, rather than a fixed wait.
    """

    PEERS = 40
    VALUES = 2 * PEERS
    LOOKUPS = 100
    WAVES = 4
    #: Each wave crashes one ring-adjacent pair: a fifth of the ring in all.
    WAVE_SIZE = PEERS // 20
    #: Simulated seconds a wave may take to repair: detection (two ping
    #: intervals and a request timeout), then Updates and re-replication.
    REPAIR_LIMIT_SECONDS = 120.0

    def assertNeighboursExact(self, sim: RingSimulation) -> None:
        ring = sim.sorted_ids()
        wrong = [
            node.node_id
            for node in sim.live()
            if node.topology.successor != ring[(ring.index(node.node_id) + 1) % len(ring)]
            or node.topology.predecessor != ring[ring.index(node.node_id) - 1]
        ]
        self.assertEqual(wrong, [])

    def test_ring_converges_routes_and_survives_crash_waves(self) -> None:
        """After convergence lookups are exact; after a fifth crash in waves, every value survives."""
        sim = RingSimulation(seed=2026)
        self.addCleanup(sim.stop_all)
        sim.grow(self.PEERS)
        sim.run_until(sim.consistent, 120)
        self.assertEqual(len(sim.sorted_ids()), self.PEERS)
        self.assertNeighboursExact(sim)

        lookups = sim.random_lookups(self.LOOKUPS)
        self.assertEqual(
            [result.responsible for _, result in lookups],
            [sim.owner(target) for target, _ in lookups],
        )
        # Routing goes through fingers, not just successor by successor.
        self.assertGreater(max(result.hops for _, result in lookups), 1)

        names = [f"user{i}" for i in range(self.VALUES)]
        for name in names:
            origin = sim.random.choice(sim.live())
            sim.wait(origin.put(name, name.encode()))
        resources = [resource_id(name) for name in names]
        sim.run_until(lambda: sim.replicated(resources), self.REPAIR_LIMIT_SECONDS)

        for _wave in range(self.WAVES):
            for node in sim.pick_wave(self.WAVE_SIZE):
                sim.crash(node)
            sim.run_until(lambda: sim.repaired(resources), self.REPAIR_LIMIT_SECONDS)

        self.assertEqual(len(sim.sorted_ids()), self.PEERS - self.WAVES * self.WAVE_SIZE)
        self.assertNeighboursExact(sim)
        lost = []
        for name in names:
            got = sim.wait(sim.random.choice(sim.live()).get(name))
            if got.value != name.encode():
                lost.append(name)
        self.assertEqual(lost, [])
