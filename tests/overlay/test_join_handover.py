"""
Joins after failures, restarts with the same Node-ID, and the data of the
ranges that move: no value may be answered "not found" while a copy of it
lives in the ring.

Each test builds a small ring on the fake clock, stores values, and then
places newcomers at chosen points of the ring (keys are ground until the
Node-ID lands in the wanted arc), including ranges that wrap around zero.
After every step every value must be fetchable from every live peer.
"""

from __future__ import annotations

import hashlib

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.node import NodeState, OverlayNode
from p2psip.testing import MemoryNetwork
from p2psip.util.ids import MAX_ID, between_right_inclusive, id_short, resource_id
from tests.overlay.ringsim import RingSimulation

SEED_VALUES = 40


def name_in(start: int, end: int, prefix: str) -> str:
    """A resource name whose Resource-ID lies in (start, end]."""
    for index in range(1_000_000):
        name = f"{prefix}-{index}"
        if between_right_inclusive(resource_id(name), start, end):
            return name
    raise AssertionError("no name found for that arc")


class RingWithData:
    """A ring of a bootstrap and four peers holding values, with the checks the tests share."""

    def __init__(self, test: SynchronousTestCase, seed: int, latency_seconds: float = 0.0) -> None:
        self.test = test
        self.sim = RingSimulation(seed=seed)
        self.sim.network = MemoryNetwork(self.sim.clock, latency_seconds=latency_seconds)
        test.addCleanup(self.sim.stop_all)
        self.values: dict[str, bytes] = {}
        self.sim.found()
        for _ in range(4):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 120)
        for index in range(SEED_VALUES):
            self.put(f"value-{index}")

    def put(self, name: str, through: OverlayNode | None = None) -> None:
        node = through or self.sim.live()[1]
        value = hashlib.sha256(name.encode()).hexdigest().encode()
        self.sim.wait(node.put(name, value))
        self.values[name] = value

    def settle(self) -> None:
        """Let failure detection and stabilisation run until the ring is consistent."""
        self.sim.run_until(self.sim.consistent, 600)
        # A few more rounds for re-replication after the neighbour tables changed.
        self.sim.run(2 * self.sim.config.update_interval_seconds)

    def assert_every_value_everywhere(self) -> None:
        """Every stored value is fetched, with its content, through every live peer."""
        missing = []
        for node in self.sim.live():
            for name, value in self.values.items():
                got = self.sim.wait(node.get(name))
                if got.value != value:
                    missing.append(
                        f"{name} ({id_short(resource_id(name))}) via {id_short(node.node_id)}: "
                        f"answered by {id_short(got.responsible)}, found={got.found}"
                    )
        self.test.assertEqual(missing, [])

    def sorted_ids(self) -> list[int]:
        return self.sim.sorted_ids()


class NewcomerHandOverTests(SynchronousTestCase):
    """A peer joining after a failure takes its range with its data."""

    def setUp(self) -> None:
        self.ring = RingWithData(self, seed=8)
        self.sim = self.ring.sim
        # The bootstrap dies; newcomers join through the peers that remain.
        self.sim.crash(self.sim.nodes[0])
        self.ring.settle()
        self.ring.assert_every_value_everywhere()

    def join_in_arc(self, predecessor: int, successor: int) -> OverlayNode:
        """
        Grind a newcomer into the last part of (predecessor, successor), put
        values on both sides of it first, and join it through a live peer.
        """
        span = (successor - predecessor) % (MAX_ID + 1)
        start = (predecessor + span // 2) % (MAX_ID + 1)
        identity = self.sim.identity_between(start, successor)
        newcomer_id = identity.node_id
        # Values the newcomer will own (its range is (predecessor, newcomer])...
        self.ring.put(name_in(predecessor, newcomer_id, "theirs"))
        # ... and values its successor keeps.
        self.ring.put(name_in(newcomer_id, successor, "kept"))
        via = self.sim.live()[-1]
        return self.sim.join(identity=identity, via=[self.sim.endpoint(via)])

    def test_range_wraps_around_zero(self) -> None:
        """A newcomer whose range wraps around zero receives it whole before answering for it."""
        ring = self.ring.sorted_ids()
        # Just below the lowest peer: its range (highest peer, newcomer] crosses zero.
        identity = self.sim.identity_between((ring[0] - ring[0] // 3) % (MAX_ID + 1), ring[0])
        for prefix in ("before-zero", "after-zero"):
            start, end = (ring[-1], MAX_ID) if prefix == "before-zero" else (0, identity.node_id)
            self.ring.put(name_in(start, end, prefix))
        newcomer = self.sim.join(identity=identity, via=[self.sim.endpoint(self.sim.live()[1])])
        self.assertEqual(newcomer.topology.predecessor, ring[-1])
        for name in self.ring.values:
            resource = resource_id(name)
            if between_right_inclusive(resource, ring[-1], newcomer.node_id):
                got = self.sim.wait(self.sim.live()[0].get(name))
                self.assertEqual((got.responsible, got.found), (newcomer.node_id, True), name)
        self.ring.assert_every_value_everywhere()

    def test_range_inside_the_ring(self) -> None:
        """A newcomer between two peers (no wrap) receives its range whole."""
        ring = self.ring.sorted_ids()
        self.join_in_arc(ring[1], ring[2])
        self.ring.settle()
        self.ring.assert_every_value_everywhere()

    def test_joins_into_the_arcs_of_failed_peers(self) -> None:
        """Peers crash, the ring repairs, and newcomers join into their old arcs."""
        ring = self.ring.sorted_ids()
        for victim_id in (ring[0], ring[2]):
            victim = next(node for node in self.sim.live() if node.node_id == victim_id)
            self.sim.crash(victim)
        self.ring.settle()
        self.ring.assert_every_value_everywhere()
        survivors = self.ring.sorted_ids()
        for index in range(len(survivors)):
            self.join_in_arc(survivors[index - 1], survivors[index])
            self.ring.settle()
            self.ring.assert_every_value_everywhere()

    def test_values_stored_while_the_newcomer_is_admitted(self) -> None:
        """A value stored at the admitting peer during the hand-over reaches the newcomer too."""
        ring = RingWithData(self, seed=11, latency_seconds=0.02)
        sim = ring.sim
        ids = ring.sorted_ids()
        identity = sim.identity_between(ids[1], ids[2])
        writer = next(node for node in sim.live() if node.node_id not in (ids[1], ids[2]))
        for index in range(20):
            ring.put(name_in(ids[1], identity.node_id, f"early-{index}"), writer)
        newcomer = sim._new_node(identity)
        joining = newcomer.join([sim.endpoint(writer)])
        done: list[object] = []
        joining.addBoth(done.append)
        failed: list[object] = []
        index = 0
        while not done:
            # Keep writing into the newcomer's range the whole time it joins.
            name = name_in(ids[1], identity.node_id, f"during-{index}")
            ring.values[name] = name.encode()
            writer.put(name, name.encode()).addErrback(failed.append)
            index += 1
            sim.run(0.05, step=0.01)
        self.assertEqual(done, [writer.node_id])
        sim.nodes.append(newcomer)
        ring.settle()
        self.assertGreater(index, 3)
        self.assertEqual(failed, [])
        ring.assert_every_value_everywhere()

    def test_predecessor_fails_while_the_newcomer_links(self) -> None:
        """
        The admitting peer's predecessor fails unnoticed and a newcomer is
        admitted with a table that still names it.  Once the admitting
        peer drops the dead peer it routes that range to the newcomer,
        which must answer for it while its own connect to the dead peer
        is still waiting (it used to bounce every such request back as
        unroutable for a whole request timeout), with the range's values.
        """
        ring = self.ring.sorted_ids()
        first, doomed_id, admitting_id = ring[0], ring[1], ring[2]
        by_id = {node.node_id: node for node in self.sim.live()}
        name = name_in(first, doomed_id, "doomed")
        self.ring.put(name)
        self.sim.crash(by_id[doomed_id])
        newcomer = self.sim._new_node(self.sim.identity_between(doomed_id, admitting_id))
        newcomer.join([self.sim.endpoint(by_id[first])])
        self.sim.run_until(lambda: newcomer.state is NodeState.ADMITTED, 10, step=0.05)
        self.assertEqual(newcomer.topology.predecessor, doomed_id)
        admitting = by_id[admitting_id]
        # Another peer has found the dead one silent: the admitting peer's
        # Ping to it goes unanswered and it closes the link.
        admitting.connectivity.suspect(doomed_id)
        self.sim.run_until(lambda: doomed_id not in admitting.topology.neighbours(), 30, 0.1)
        self.sim.run(0.5, step=0.1)
        # Still linking (the Attach to the dead peer has not timed out), yet
        # the range up to the next live predecessor is the newcomer's.
        self.assertIs(newcomer.state, NodeState.ADMITTED)
        self.assertEqual(newcomer.topology.predecessor, first)
        # The admitting peer routes the range to the newcomer (peers that
        # still list the dead one wait for their own links to tell them).
        asker = admitting
        got = self.sim.wait(asker.lookup_id(resource_id(name)), limit_seconds=3)
        self.assertEqual(got.responsible, newcomer.node_id)
        fetched = self.sim.wait(asker.get(name), limit_seconds=3)
        self.assertEqual((fetched.found, fetched.value), (True, self.ring.values[name]))
        # The dead peer's values came from the admitting peer's replicas.
        self.assertEqual(admitting.counters["grown_ranges_handed_over"], 1)
        self.sim.nodes.append(newcomer)
        self.ring.settle()
        self.ring.assert_every_value_everywhere()


class RestartTests(SynchronousTestCase):
    """A peer that comes back with its Node-ID resumes its place, without the bootstrap."""

    def setUp(self) -> None:
        self.ring = RingWithData(self, seed=9)
        self.sim = self.ring.sim
        self.bootstrap = self.sim.nodes[0]
        self.bootstrap_endpoint = self.sim.endpoint(self.bootstrap)
        self.sim.crash(self.bootstrap)
        self.ring.settle()

    def known_endpoints(self, node: OverlayNode) -> list[str]:
        """What the role passes on a restart: --bootstrap first, then the peers it knew."""
        return [self.bootstrap_endpoint] + [
            f"tcp:{host}:{port}" for _, host, port in node.known_peer_addresses()
        ]

    def test_killed_peer_rejoins_through_known_peers(self) -> None:
        """SIGKILL, restart with the same key: it rejoins through a peer it knew, and says which."""
        victim = self.sim.live()[2]
        endpoints = self.known_endpoints(victim)
        self.assertGreater(len(endpoints), 1)
        self.sim.kill(victim)
        self.sim.run(3)
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        restarted = self.sim.restart(victim, endpoints)
        self.assertEqual(restarted.node_id, victim.node_id)
        self.assertEqual(restarted.state, NodeState.JOINED)
        joined = [
            e
            for e in events
            if str(e.get("log_format", "")).startswith("node {node} joined the ring through")
        ]
        self.assertEqual(len(joined), 1)
        self.assertNotEqual(joined[0]["endpoint"], self.bootstrap_endpoint)
        self.ring.settle()
        self.ring.assert_every_value_everywhere()

    def test_power_cut_peer_comes_back_before_it_is_missed(self) -> None:
        """A peer back before the others noticed it died replaces its old links and place."""
        victim = self.sim.live()[1]
        endpoints = self.known_endpoints(victim)
        self.sim.crash(victim)
        # Well inside the keepalive's failure detection: the others still list it.
        self.sim.run(1)
        self.assertTrue(
            any(victim.node_id in node.topology.neighbours() for node in self.sim.live())
        )
        restarted = self.sim.restart(victim, endpoints)
        self.assertEqual(restarted.state, NodeState.JOINED)
        self.ring.settle()
        self.ring.assert_every_value_everywhere()
        for node in self.sim.live():
            for link in node.links_to(victim.node_id):
                self.assertFalse(link.severed, "a link to the old incarnation is still in use")

    def test_peer_that_cannot_rejoin_is_not_listed(self) -> None:
        """A restarted peer that is not admitted again is not taken back into anyone's tables."""
        victim = self.sim.live()[2]
        self.sim.crash(victim)
        # Back at once (its links died silently), but knowing only the dead
        # bootstrap it never gets in.  Peers that hear of it from the stale
        # tables of others, before everyone noticed the crash, can reach it.
        lonely = self.sim._new_node(victim.identity, victim.advertised_host)
        failures: list[object] = []
        lonely.join([self.bootstrap_endpoint]).addErrback(failures.append)
        self.sim.run(6 * self.sim.config.update_interval_seconds)
        self.assertEqual(len(failures), 1)
        for node in self.sim.live():
            self.assertNotIn(victim.node_id, node.topology.known_peers())
        self.assertTrue(self.sim.consistent())
        self.ring.assert_every_value_everywhere()


class ChurnSequenceTests(SynchronousTestCase):
    """Failures, joins and restarts mixed; after each step every value is everywhere."""

    def test_churn_sequence(self) -> None:
        """Crash, wrap-around join, SIGKILL and restart, power cut and restart, leave, join."""
        ring = RingWithData(self, seed=12)
        sim = ring.sim

        def step_crash(index: int) -> None:
            sim.crash(sim.live()[index])

        def step_join_wrapping() -> None:
            ids = ring.sorted_ids()
            identity = sim.identity_between((ids[0] - ids[0] // 2) % (MAX_ID + 1), ids[0])
            # A fresh name each time: DATA values belong to their first writer.
            ring.put(name_in(ids[-1], MAX_ID, f"churn-wrap-{len(ring.values)}"))
            sim.join(identity=identity, via=[sim.endpoint(sim.live()[-1])])

        def step_restart(index: int, how: str) -> None:
            victim = sim.live()[index]
            endpoints = [sim.endpoint(sim.live()[0])] + [
                f"tcp:{host}:{port}" for _, host, port in victim.known_peer_addresses()
            ]
            (sim.kill if how == "kill" else sim.crash)(victim)
            sim.run(2)
            sim.restart(victim, endpoints)

        def step_leave(index: int) -> None:
            leaving = sim.live()[index]
            sim.wait(leaving.leave())
            sim.nodes.remove(leaving)

        def step_join() -> None:
            sim.join(via=[sim.endpoint(sim.live()[0])])

        steps = [
            lambda: step_crash(0),
            step_join_wrapping,
            lambda: step_restart(1, "kill"),
            lambda: step_restart(2, "crash"),
            step_join,
            lambda: step_leave(3),
            lambda: step_crash(1),
            step_join_wrapping,
        ]
        for number, step in enumerate(steps):
            step()
            ring.settle()
            for index in range(3):
                ring.put(f"churn-{number}-{index}")
            ring.assert_every_value_everywhere()
