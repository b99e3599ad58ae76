"""
A whole CHORD-RELOAD ring on one fake clock, for the ring tests.

Every node is a real :class:`OverlayNode` with its own key; links are
in-memory (:class:`p2psip.testing.MemoryNetwork`) but carry the real
encoded, signed RELOAD messages.
"""

from __future__ import annotations

import bisect
import random
from typing import Any

from twisted.internet.defer import Deferred
from p2psip.testing import HeapClock

from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.node import NodeState, OverlayConfig, OverlayNode
from p2psip.testing import MemoryNetwork

PORT = 6084
SIMULATION_CONFIG = OverlayConfig(
    overlay_name="ring.test",
    update_interval_seconds=10.0,
    ping_interval_seconds=4.0,
    request_timeout_seconds=5.0,
    join_timeout_seconds=30.0,
)


class RingSimulation:
    def __init__(self, config: OverlayConfig = SIMULATION_CONFIG, seed: int = 1) -> None:
        self.clock = HeapClock()
        self.network = MemoryNetwork(self.clock, latency_seconds=0.0)
        self.config = config
        self.random = random.Random(seed)
        self.nodes: list[OverlayNode] = []
        self.crashed: list[OverlayNode] = []
        self._next_address = 1

    def _new_node(self) -> OverlayNode:
        index = self._next_address
        self._next_address += 1
        host = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
        node = OverlayNode(
            identity=NodeIdentity.from_secret(self.random.getrandbits(256)),
            clock=self.clock,
            connector=self.network.connector(host, PORT),
            advertised_host=host,
            advertised_port=PORT,
            config=self.config,
            rng=random.Random(self.random.getrandbits(64)),
        )
        self.network.listen(host, PORT, node)
        return node

    @property
    def bootstrap_endpoint(self) -> str:
        first = self.nodes[0]
        return f"tcp:{first.advertised_host}:{PORT}"

    def found(self) -> OverlayNode:
        node = self._new_node()
        node.start_alone()
        self.nodes.append(node)
        return node

    def wait(self, deferred: Deferred[Any], limit_seconds: float = 120.0, step: float = 0.05) -> Any:
        results: list[Any] = []
        deferred.addBoth(results.append)
        waited = 0.0
        while not results and waited < limit_seconds:
            self.clock.advance(step)
            waited += step
        if not results:
            raise AssertionError(f"no result after {limit_seconds} simulated seconds")
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def join(self, settle_seconds: float = 1.0) -> OverlayNode:
        """Add a peer through the bootstrap, then let the ring settle a moment."""
        node = self._new_node()
        self.wait(node.join([self.bootstrap_endpoint]))
        self.nodes.append(node)
        self.run(settle_seconds)
        return node

    def run(self, seconds: float, step: float = 0.5) -> None:
        elapsed = 0.0
        while elapsed < seconds:
            self.clock.advance(step)
            elapsed += step

    def live(self) -> list[OverlayNode]:
        return [n for n in self.nodes if n.state == NodeState.JOINED]

    def sorted_ids(self) -> list[int]:
        return sorted(n.node_id for n in self.live())

    def owner(self, target: int) -> int:
        ring = self.sorted_ids()
        index = bisect.bisect_left(ring, target)
        return ring[index % len(ring)]

    def crash(self, node: OverlayNode) -> None:
        """Make a node vanish without a word, as a power cut would."""
        self.network.crash(node.advertised_host, PORT)
        node.stop()
        self.nodes.remove(node)
        self.crashed.append(node)

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()
        self.clock.advance(1)
