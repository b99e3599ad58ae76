"""
Soak regression: a ring's background work leaves nothing to the cycle collector.

The soak (``bench/soak.py --memory-report``) showed every node of an idle
ring leaving about a hundred objects in reference cycles each couple of
minutes: closures of the json module's pure-Python indenting encoder,
which the known-peers file was written with.  Each is small, but with the
servers' collector thresholds (:mod:`p2psip.util.gc_tuning`) cycles wait
long for a collection, and work that repeats forever must not make any.
These tests run the work on a fake clock with the collector off and count
what only it could free; they measure neither time nor RSS.
"""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import peer_cache

from .ringsim import SIMULATION_CONFIG, RingSimulation

#: Simulated seconds of background work: many pings, Updates and saves.
QUIET_SECONDS = 240


def left_in_cycles() -> Counter[str]:
    """Objects only the cycle collector could free (collected here, then counted by type)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return Counter(type(thing).__qualname__ for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


class BackgroundCyclesTests(SynchronousTestCase):
    def setUp(self) -> None:
        was_enabled = gc.isenabled()
        self.addCleanup(lambda: gc.enable() if was_enabled else None)

    def test_known_peers_file_written_without_cycles(self) -> None:
        """Saving the known peers (once per update interval, forever) leaves no cycle."""
        directory = Path(self.mktemp())
        directory.mkdir()
        peers = [peer_cache.KnownPeer(n, f"192.0.2.{n}", 6084) for n in range(1, 9)]
        gc.collect()
        gc.disable()
        left_in_cycles()
        for _ in range(20):
            peer_cache.save(directory, peers)
        self.assertEqual(left_in_cycles(), Counter())
        self.assertEqual(peer_cache.load(directory), peers)

    def test_ring_maintenance_leaves_no_cycles(self) -> None:
        """Minutes of pings, Updates and known-peer saves on a ring of three leave no cycle."""
        ring = RingSimulation(seed=5)
        ring.grow(3)
        ring.run(60)
        self.addCleanup(ring.stop_all)
        directory = Path(self.mktemp())
        directory.mkdir()
        gc.collect()
        gc.disable()
        left_in_cycles()
        interval = SIMULATION_CONFIG.update_interval_seconds
        for _ in range(int(QUIET_SECONDS / interval)):
            ring.run(interval)
            for node in ring.live():
                peers = [peer_cache.KnownPeer(*entry) for entry in node.known_peer_addresses()]
                peer_cache.save(directory, peers)
        self.assertEqual(len(ring.live()), 3)
        self.assertEqual(left_in_cycles(), Counter())
