"""
Asking another member for its tables: a RouteQuery with ``send_update``
answered by a full Update (RFC 6940 s9.7.4.2, s10.4), on a small ring on
one fake clock.
"""

from __future__ import annotations

from attrs import evolve
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies, chord
from p2psip.overlay.errors import OverlayError, RequestTimeout
from p2psip.overlay.message import Destination, MessageCode
from p2psip.overlay.peer_tables import (
    MAX_PENDING_QUERIES,
    NoSuchMember,
    PeerTables,
    TooManyQueries,
)
from tests.overlay.ringsim import SIMULATION_CONFIG, RingSimulation

#: Short neighbour lists, so that eight members need fingers beyond them.
SMALL_TABLES = evolve(SIMULATION_CONFIG, successors=2, predecessors=2)


class PeerTablesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(SMALL_TABLES, seed=61)
        self.addCleanup(self.sim.stop_all)
        self.sim.grow(8)
        self.sim.run_until(self.sim.consistent, 120)
        # Let the finger repair run so the tables hold fingers too.
        self.sim.run(3 * self.sim.config.update_interval_seconds)

    def test_a_member_reports_its_own_tables(self) -> None:
        """Asking a far member gives exactly what its topology holds."""
        asker, target = self.sim.nodes[0], self.sim.nodes[3]
        tables = self.sim.wait(asker.peer_tables(target.node_id))
        self.assertIsInstance(tables, PeerTables)
        self.assertEqual(tables.peer, target.node_id)
        self.assertEqual(list(tables.successors), target.topology.successors)
        self.assertEqual(list(tables.predecessors), target.topology.predecessors)
        self.assertEqual(set(tables.fingers), set(target.topology.fingers.values()))
        self.assertTrue(tables.fingers, "eight members, two successors: fingers beyond them")

    def test_own_tables_need_no_message(self) -> None:
        node = self.sim.nodes[2]
        pending = len(node.messenger.transactions)
        tables = self.successResultOf(node.peer_tables(node.node_id))
        self.assertEqual(list(tables.successors), node.topology.successors)
        self.assertEqual(set(tables.fingers), set(node.topology.fingers.values()))
        self.assertEqual(len(node.messenger.transactions), pending)

    def test_a_recent_answer_is_reused(self) -> None:
        """A second ask within the answer's age sends nothing and gives the same tables."""
        asker, target = self.sim.nodes[1], self.sim.nodes[4]
        first = self.sim.wait(asker.peer_tables(target.node_id))
        pending_before = len(asker.messenger.transactions)
        second = asker.peer_tables(target.node_id)
        self.assertIs(self.successResultOf(second), first)
        self.assertEqual(len(asker.messenger.transactions), pending_before)

    def test_a_peer_that_sends_no_update_times_out(self) -> None:
        """A peer that ignores send_update (here: it is muted) gives a timeout naming it."""
        asker, target = self.sim.nodes[0], self.sim.nodes[2]
        target.chord._send_full_update = lambda requester: None  # type: ignore[method-assign]
        d = asker.peer_tables(target.node_id)
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertIsInstance(failure.value, RequestTimeout)
        self.assertIn("sent no Update", failure.getErrorMessage())

    def test_no_member_with_that_id(self) -> None:
        """An id no member has is answered by its owner: a clear error at once, not a timeout."""
        asker, owner = self.sim.nodes[0], self.sim.nodes[3]
        missing = (owner.node_id - 1) % (1 << 128)
        d = asker.peer_tables(missing)
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]), limit_seconds=2)
        self.assertIsInstance(failure.value, NoSuchMember)
        self.assertIn(f"{missing:032x}", failure.getErrorMessage())

    def test_responder_bounds_full_updates_per_requester(self) -> None:
        """Two RouteQueries in the same second get one full Update."""
        asker, target = self.sim.nodes[0], self.sim.nodes[3]
        received: list[int] = []
        asker.chord.full_update_observers.append(lambda signer, update: received.append(signer))
        query = bodies.RouteQueryReq(True, Destination.node(target.node_id)).encode()
        for _ in range(2):
            asker.messenger.request(
                Destination.node(target.node_id), MessageCode.ROUTE_QUERY_REQ, query
            )
        self.sim.run(chord.FULL_UPDATE_INTERVAL_SECONDS / 2, step=0.05)
        self.assertEqual(received, [target.node_id])
        self.assertEqual(target.counters["full_updates_sent"], 1)
        self.assertEqual(target.counters["full_updates_held_back"], 1)

    def test_too_many_requesters_are_ignored_and_warned(self) -> None:
        """Past the requester limit send_update is ignored, counted, and warned once."""
        target = self.sim.nodes[3]
        self.patch(chord, "MAX_FULL_UPDATE_REQUESTERS", 2)
        with capturedLogs() as events:
            for requester in (11, 12, 13, 14):
                target.chord._send_full_update(requester)
        self.assertEqual(target.counters["full_updates_held_back"], 2)
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("send_update", warning["log_format"])

    def test_asking_too_many_peers_at_once_is_refused(self) -> None:
        asker = self.sim.nodes[0]
        query = asker.peer_tables_query
        asked = [query.ask(peer) for peer in range(1, MAX_PENDING_QUERIES + 1)]
        refused = query.ask(MAX_PENDING_QUERIES + 1)
        self.failureResultOf(refused, TooManyQueries)
        asker.stop()
        for d in asked:
            self.failureResultOf(d, OverlayError)
