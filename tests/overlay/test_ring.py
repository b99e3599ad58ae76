"""
Ring tests: many real nodes on one fake clock with in-memory links.

They check the CHORD-RELOAD invariants that matter to users: after joins
converge every peer knows its true successor and predecessor, every lookup
ends at the peer that owns the id, and abrupt failures of peers lose no
stored value once the ring has repaired.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

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
    """A hundred peers; a fifth of them crash; nothing is lost."""

    PEERS = 100
    VALUES = 200

    def test_hundred_peers_converge_route_and_survive_failures(self) -> None:
        """After convergence lookups are exact; after 20% crash, every value survives."""
        sim = RingSimulation(seed=2026)
        self.addCleanup(sim.stop_all)
        sim.found()
        for _ in range(self.PEERS - 1):
            sim.join()
        sim.run(60)

        ring = sim.sorted_ids()
        self.assertEqual(len(ring), self.PEERS)
        for node in sim.live():
            index = ring.index(node.node_id)
            self.assertEqual(node.topology.successor, ring[(index + 1) % len(ring)])
            self.assertEqual(node.topology.predecessor, ring[index - 1])

        for _ in range(100):
            origin = sim.random.choice(sim.live())
            target = sim.random.getrandbits(128)
            result = sim.wait(origin.lookup_id(target))
            self.assertEqual(result.responsible, sim.owner(target))

        for i in range(self.VALUES):
            origin = sim.random.choice(sim.live())
            sim.wait(origin.put(f"user{i}", b"value %d" % i))

        # Four waves of abrupt crashes, 5% of the ring each.  Within a wave no
        # three ring-adjacent peers die together: with two replicas that is
        # the loss the ring is built to survive between repairs.
        for _wave in range(4):
            ring = sim.sorted_ids()
            victims: set[int] = set()
            while len(victims) < self.PEERS // 20:
                candidate = sim.random.randrange(len(ring))
                window = [(candidate + k) % len(ring) for k in range(-2, 3)]
                marks = [ring[i] in victims or i == candidate for i in window]
                if any(all(marks[j : j + 3]) for j in range(3)):
                    continue
                victims.add(ring[candidate])
            for node in [n for n in sim.nodes if n.node_id in victims]:
                sim.crash(node)
            sim.run(45)

        ring = sim.sorted_ids()
        self.assertEqual(len(ring), self.PEERS - 4 * (self.PEERS // 20))
        for node in sim.live():
            index = ring.index(node.node_id)
            self.assertEqual(node.topology.successor, ring[(index + 1) % len(ring)])
            self.assertEqual(node.topology.predecessor, ring[index - 1])
        lost = []
        for i in range(self.VALUES):
            origin = sim.random.choice(sim.live())
            got = sim.wait(origin.get(f"user{i}"))
            if got.value != b"value %d" % i:
                lost.append(i)
        self.assertEqual(lost, [])
