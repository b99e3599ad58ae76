"""Tests for the CHORD-RELOAD neighbour and finger tables."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.topology import ChordTopology
from p2psip.util.ids import MAX_ID, between_right_inclusive


def owner(ring: list[int], target: int) -> int:
    """The peer of a sorted ring that owns target: the first at or after it."""
    for peer in ring:
        if peer >= target:
            return peer
    return ring[0]


class NeighbourTableTests(SynchronousTestCase):
    def test_alone_owns_everything(self) -> None:
        """A peer with no neighbours is responsible for every id."""
        topology = ChordTopology(100)
        self.assertTrue(topology.is_alone())
        self.assertTrue(topology.is_responsible(5))
        self.assertIsNone(topology.next_hop(5))

    def test_lists_are_sorted_by_ring_distance(self) -> None:
        """Successors go clockwise and predecessors counter-clockwise, capped."""
        topology = ChordTopology(100, successor_count=2, predecessor_count=2)
        topology.add_peers([50, 150, 120, 10, 90])
        self.assertEqual(topology.successors, [120, 150])
        self.assertEqual(topology.predecessors, [90, 50])

    def test_who_may_own_an_id(self) -> None:
        """Only a node with no known node between the id and it may own the id, across zero too."""
        topology = ChordTopology(100, successor_count=2, predecessor_count=2)
        topology.add_peers([50, 150, 200])
        topology.set_finger(3, 400)
        self.assertTrue(topology.may_be_responsible(120, 150))
        self.assertTrue(topology.may_be_responsible(160, 170))  # a node we do not know
        self.assertTrue(topology.may_be_responsible(150, 150))
        self.assertFalse(topology.may_be_responsible(120, 200))  # 150 comes first
        self.assertEqual(topology.closer_known_node(120, 200), 150)
        self.assertFalse(topology.may_be_responsible(60, 150))  # we come first
        self.assertTrue(topology.may_be_responsible(450, 10))  # wraps: nothing in (450, 10)
        self.assertFalse(topology.may_be_responsible(450, 60))  # 50 lies in (450, 60)

    def test_best_of_a_long_list_fits_the_table(self) -> None:
        """Of many offered peers only those that would make the table are chosen, at most its size."""
        topology = ChordTopology(1000, successor_count=2, predecessor_count=2)
        topology.add_peers([900, 1100])
        offered = range(1001, 2001)
        # The two closest after us; and, the ring being mostly empty, the
        # last of them is our second predecessor counter-clockwise.
        self.assertEqual(topology.best_of(offered), [1001, 1002, 2000])
        topology.add_peers([950, 1200])
        self.assertEqual(topology.best_of([900, 5000]), [])
        self.assertEqual(topology.best_of([960, 1150, 1300]), [1150, 960])

    def test_wraps_around(self) -> None:
        """Neighbour lists wrap across zero."""
        topology = ChordTopology(MAX_ID - 5, successor_count=2, predecessor_count=1)
        topology.add_peers([3, MAX_ID - 9, 7])
        self.assertEqual(topology.successors, [3, 7])
        self.assertEqual(topology.predecessors, [MAX_ID - 9])

    def test_responsibility_interval(self) -> None:
        """A peer owns (predecessor, self]."""
        topology = ChordTopology(100)
        topology.add_peers([50, 150])
        self.assertTrue(topology.is_responsible(100))
        self.assertTrue(topology.is_responsible(51))
        self.assertFalse(topology.is_responsible(50))
        self.assertFalse(topology.is_responsible(101))

    def test_joining_peer_owns_nothing(self) -> None:
        """A peer that knows successors but no predecessor yet is still joining."""
        topology = ChordTopology(100)
        topology.successors = [150]
        self.assertFalse(topology.is_responsible(100))

    def test_remove_peer(self) -> None:
        """A removed peer disappears from neighbours and fingers."""
        topology = ChordTopology(100)
        topology.add_peers([50, 150])
        topology.set_finger(120, 150)
        self.assertTrue(topology.remove_peer(150))
        self.assertNotIn(150, topology.successors)
        self.assertEqual(topology.fingers, {})
        self.assertFalse(topology.remove_peer(999))

    def test_next_hop_prefers_owner_in_successors(self) -> None:
        """A target inside the successor span goes straight to its owner."""
        topology = ChordTopology(100)
        topology.add_peers([150, 200, 300])
        self.assertEqual(topology.next_hop(160), 200)
        self.assertEqual(topology.next_hop(150), 150)

    def test_next_hop_skips_unusable(self) -> None:
        """Peers without a usable link are not chosen."""
        topology = ChordTopology(100)
        topology.add_peers([150, 200, 300])
        self.assertEqual(topology.next_hop(160, usable=lambda p: p != 200), 300)

    def test_finger_repair_stops_at_successor_span(self) -> None:
        """Finger slots covered by the successor list are not looked up."""
        topology = ChordTopology(0)
        topology.add_peers([2**120])
        indices = topology.finger_indices_to_repair()
        self.assertEqual(indices[0], 127)
        self.assertEqual(indices[-1], 121)


class RoutingConvergenceTests(SynchronousTestCase):
    @settings(max_examples=30, deadline=None)
    @given(st.integers(min_value=2, max_value=60), st.integers(min_value=0, max_value=2**32))
    def test_greedy_routing_reaches_owner(self, size: int, seed: int) -> None:
        """With correct neighbour and finger tables every lookup ends at the owner."""
        rng = random.Random(seed)
        ring = sorted({rng.getrandbits(128) for _ in range(size)})
        tables = {}
        for index, peer in enumerate(ring):
            topology = ChordTopology(peer)
            topology.add_peers(ring[(index + k) % len(ring)] for k in range(-4, 5))
            for finger in topology.finger_indices_to_repair():
                topology.set_finger(finger, owner(ring, topology.finger_target(finger)))
            tables[peer] = topology
        for _ in range(20):
            target = rng.getrandbits(128)
            current, hops = ring[rng.randrange(len(ring))], 0
            while (hop := tables[current].next_hop(target)) is not None:
                # Never past the owner: every hop strictly closes the distance.
                self.assertTrue(between_right_inclusive(hop, current, owner(ring, target)))
                current, hops = hop, hops + 1
                self.assertLess(hops, 2 * len(ring))
            self.assertEqual(current, owner(ring, target))
