"""
A whole CHORD-RELOAD ring on one fake clock, for the ring tests.

Every node is a real :class:`OverlayNode` with its own key; links are
in-memory (:class:`p2psip.testing.MemoryNetwork`) but carry the real
encoded, signed RELOAD messages.

Besides the building blocks (join, crash, run) it holds the steps of the
ring scenario that ``tests/overlay/test_ring.py`` checks at a few dozen
peers and ``bench/ring_simulation.py`` measures at a hundred: grow the
ring, random lookups, crash waves, and the "fully re-replicated" condition
a repaired ring reaches.
"""

from __future__ import annotations

import bisect
import random
from typing import Any

from twisted.internet.defer import Deferred

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay.certificates import TrustPolicy
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.node import NodeState, OperationResult, OverlayConfig, OverlayNode
from p2psip.testing import TEST_CERTIFICATE_EPOCH, HeapClock, MemoryNetwork, enrolled_identity
from p2psip.util.ids import between

PORT = 6084
SIMULATION_CONFIG = OverlayConfig(
    overlay_name="ring.test",
    update_interval_seconds=10.0,
    ping_interval_seconds=4.0,
    request_timeout_seconds=5.0,
    join_timeout_seconds=30.0,
)


class RingSimulation:
    """
    A ring on one fake clock.  With an ``authority`` every node is enrolled:
    its certificate (and Node-ID) comes from that CA, and every node trusts
    only what the CA issued (:class:`~p2psip.overlay.certificates.OverlayRootTrust`,
    its validity checked on the simulated clock, which starts at the time
    the test certificates are issued); without one the ring is insecure
    (self-signed certificates).
    """

    def __init__(
        self,
        config: OverlayConfig = SIMULATION_CONFIG,
        seed: int = 1,
        authority: OverlayAuthority | None = None,
    ) -> None:
        self.clock = HeapClock()
        self.network = MemoryNetwork(self.clock, latency_seconds=0.0)
        self.config = config
        self.random = random.Random(seed)
        self.nodes: list[OverlayNode] = []
        self.crashed: list[OverlayNode] = []
        self._next_address = 1
        self.authority = authority
        self.trust: TrustPolicy | None = None
        if authority is not None:
            self.trust = authority.trust(lambda: TEST_CERTIFICATE_EPOCH + self.clock.seconds())

    def new_identity(self) -> NodeIdentity:
        """A fresh node key: enrolled with a Node-ID from the seeded generator, or self-signed."""
        if self.authority is not None:
            return enrolled_identity(self.authority, node_id=self.random.getrandbits(128) or 1)
        return NodeIdentity.from_secret(self.random.getrandbits(256))

    def _new_node(
        self, identity: NodeIdentity | None = None, host: str | None = None
    ) -> OverlayNode:
        if host is None:
            index = self._next_address
            self._next_address += 1
            host = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
        node = OverlayNode(
            identity=identity or self.new_identity(),
            clock=self.clock,
            connector=self.network.connector(host, PORT),
            advertised_host=host,
            advertised_port=PORT,
            config=self.config,
            rng=random.Random(self.random.getrandbits(64)),
            trust=self.trust,
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

    def wait(
        self, deferred: Deferred[Any], limit_seconds: float = 120.0, step: float = 0.05
    ) -> Any:
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

    def identity_between(self, start: int, end: int) -> NodeIdentity:
        """
        A key whose Node-ID lies in the ring interval (start, end).

        Node-IDs come from keys, so a test that needs a peer at a chosen
        place grinds keys from the simulation's seeded generator until one
        lands there: deterministic, and cheap for arcs of a few percent.
        """
        if self.authority is not None:
            # The CA chooses Node-IDs: ask it for one in the arc.
            width = (end - start - 1) % (1 << 128)
            node_id = (start + 1 + self.random.randrange(max(width, 1))) % (1 << 128)
            return enrolled_identity(self.authority, node_id=node_id)
        for _ in range(100_000):
            identity = NodeIdentity.from_secret(self.random.getrandbits(256))
            if between(identity.node_id, start, end):
                return identity
        raise AssertionError("no key found for that arc; make it wider")

    def join(
        self,
        settle_seconds: float = 1.0,
        identity: NodeIdentity | None = None,
        via: list[str] | None = None,
    ) -> OverlayNode:
        """Add a peer (through the bootstrap unless ``via`` names endpoints), then let the ring settle."""
        node = self._new_node(identity)
        self.wait(node.join(via or [self.bootstrap_endpoint]))
        self.nodes.append(node)
        self.run(settle_seconds)
        return node

    @staticmethod
    def endpoint(node: OverlayNode) -> str:
        return f"tcp:{node.advertised_host}:{PORT}"

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

    def kill(self, node: OverlayNode) -> None:
        """End a node's process abruptly (SIGKILL): its links close, so peers notice at once."""
        self.network.kill(node.advertised_host, PORT)
        node.stop()
        self.nodes.remove(node)
        self.crashed.append(node)

    def restart(self, old: OverlayNode, via: list[str], settle_seconds: float = 1.0) -> OverlayNode:
        """
        Start a dead node again with the same key at the same address (the
        same data directory), joining through ``via``: as a role does, its
        ``--bootstrap`` endpoints then the peers it knew.
        """
        node = self._new_node(old.identity, old.advertised_host)
        self.wait(node.join(via))
        self.nodes.append(node)
        self.run(settle_seconds)
        return node

    def run_until(self, condition: Any, limit_seconds: float = 300.0, step: float = 0.5) -> float:
        """Advance the clock until ``condition()`` holds; returns the simulated seconds it took."""
        waited = 0.0
        while not condition():
            if waited >= limit_seconds:
                raise AssertionError(
                    f"condition not reached after {limit_seconds} simulated seconds"
                )
            self.clock.advance(step)
            waited += step
        return waited

    def consistent(self) -> bool:
        """Every live peer's first successor and predecessor are the true ones."""
        ring = self.sorted_ids()
        if len(ring) != len(self.nodes):
            return False
        for node in self.live():
            index = ring.index(node.node_id)
            if len(ring) == 1:
                continue
            if node.topology.successor != ring[(index + 1) % len(ring)]:
                return False
            if node.topology.predecessor != ring[index - 1]:
                return False
        return True

    # -- the ring scenario ----------------------------------------------------

    def grow(self, peers: int) -> None:
        """Found the ring and join peers one after another until it has ``peers`` members."""
        self.found()
        for _ in range(peers - 1):
            self.join()

    def random_lookups(self, count: int) -> list[tuple[int, OperationResult]]:
        """``count`` lookups of random ids from random live peers, with the id each looked for."""
        results = []
        for _ in range(count):
            origin = self.random.choice(self.live())
            target = self.random.getrandbits(128)
            results.append((target, self.wait(origin.lookup_id(target))))
        return results

    def holders(self, resource: int) -> set[int]:
        """The live peers whose store holds a value of ``resource``."""
        return {n.node_id for n in self.live() if resource in set(n.storage.store.resources())}

    def replicated(self, resources: list[int]) -> bool:
        """
        True when every resource sits on its responsible peer and on the
        ``config.replicas`` peers after it: the state a repaired ring
        reaches, and the one in which it survives the next failures.
        """
        if not self.consistent():
            return False
        ring = self.sorted_ids()
        copies = min(len(ring), self.config.replicas + 1)
        held: dict[int, set[int]] = {}
        for node in self.live():
            for resource in node.storage.store.resources():
                held.setdefault(resource, set()).add(node.node_id)
        for resource in resources:
            index = ring.index(self.owner(resource))
            wanted = {ring[(index + k) % len(ring)] for k in range(copies)}
            if not wanted <= held.get(resource, set()):
                return False
        return True

    def crashes_forgotten(self) -> bool:
        """
        True when no live peer still has a crashed peer in its routing
        table or among its links: until then a request routed through a
        stale finger waits out its timeout instead of reaching its target.
        """
        dead = {n.node_id for n in self.crashed} - {n.node_id for n in self.live()}
        return not any(
            dead & (n.topology.known_peers() | set(n.links.peers())) for n in self.live()
        )

    def repaired(self, resources: list[int]) -> bool:
        """The ring after failures is whole again: neighbours exact, values re-replicated, the dead forgotten."""
        return self.replicated(resources) and self.crashes_forgotten()

    def pick_wave(self, count: int) -> list[OverlayNode]:
        """
        ``count`` (at least two) live peers to crash together.

        The wave always holds two ring-adjacent peers, so some values lose
        their responsible peer and its first replica at once; the others
        are random.  No three ring-adjacent peers are chosen: with two
        replicas that is the loss the ring is built to survive between
        repairs.
        """
        ring = self.sorted_ids()
        if not 2 <= count <= len(ring) // 3:
            raise ValueError(f"cannot pick {count} victims from a ring of {len(ring)}")
        first = self.random.randrange(len(ring))
        chosen = {first, (first + 1) % len(ring)}
        while len(chosen) < count:
            candidate = self.random.randrange(len(ring))
            window = [(candidate + k) % len(ring) for k in range(-2, 3)]
            marks = [i in chosen or i == candidate for i in window]
            if any(all(marks[j : j + 3]) for j in range(3)):
                continue
            chosen.add(candidate)
        victims = {ring[i] for i in chosen}
        return [n for n in self.nodes if n.node_id in victims]

    def stop_all(self) -> None:
        for node in self.nodes:
            node.stop()
        self.clock.advance(1)
