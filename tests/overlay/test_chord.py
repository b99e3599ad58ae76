"""
Chord maintenance and joining, step by step on a small in-memory ring:
which endpoint a newcomer joins through, when a peer is listed, and
what a joining peer answers.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies
from p2psip.overlay.errors import NotConnected, RequestFailed
from p2psip.overlay.joining import DuplicateNodeId
from p2psip.overlay.membership import Event, NodeState
from p2psip.overlay.message import Destination, ErrorCode, MessageCode
from p2psip.overlay.node import OverlayNode
from tests.overlay.ringsim import RingSimulation


class JoiningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=41)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)

    def test_next_endpoint_after_one_that_does_not_answer(self) -> None:
        """An endpoint nobody listens on is skipped; the join goes through the next one."""
        dead = "tcp:10.99.0.1:6084"
        newcomer = self.sim._new_node()
        through = self.sim.wait(newcomer.join([dead, self.sim.endpoint(self.sim.nodes[1])]))
        self.assertEqual(through, self.sim.nodes[1].node_id)
        self.assertEqual(newcomer.state, NodeState.JOINED)

    def test_no_endpoint_answers(self) -> None:
        """With every endpoint dead the join fails naming each one and the option to check."""
        newcomer = self.sim._new_node()
        d = newcomer.join(["tcp:10.99.0.1:6084", "tcp:10.99.0.2:6084"])
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertIsInstance(failure.value, NotConnected)
        message = failure.getErrorMessage()
        self.assertIn("10.99.0.1", message)
        self.assertIn("10.99.0.2", message)
        self.assertIn("--bootstrap", message)
        self.assertEqual(newcomer.state, NodeState.STOPPED)

    def test_same_node_id_twice_is_refused(self) -> None:
        """A second node with a member's key learns that its Node-ID is in use."""
        twin = OverlayNode(
            identity=self.sim.nodes[1].identity,
            clock=self.sim.clock,
            connector=self.sim.network.connector("10.98.0.1", 6084),
            advertised_host="10.98.0.1",
            advertised_port=6084,
            config=self.sim.config,
        )
        self.sim.network.listen("10.98.0.1", 6084, twin)
        self.addCleanup(twin.stop)
        # Reach the ring through the member the twin does not share its id with.
        d = twin.join([self.sim.endpoint(self.sim.nodes[0])])
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertIsInstance(failure.value, DuplicateNodeId)
        self.assertIn("--data-dir", failure.getErrorMessage())
        # The member keeps its place and its links.
        self.sim.run(5)
        self.assertTrue(self.sim.consistent())
        self.assertEqual(self.sim.nodes[0].counters["duplicate_node_ids"], 1)


class MembershipOfOthersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=42)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(2):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)

    def test_joining_peer_answers_updates_in_progress(self) -> None:
        """A peer that is joining answers an Update from anyone but its admitting peer with Error_In_Progress."""
        joining = self.sim._new_node()
        joining.membership.happened(Event.JOIN_STARTED)
        member = self.sim.live()[0]
        link = self.sim.wait(member.connectivity.connect_endpoint(self.sim.endpoint(joining)))
        d = member.messenger.request(
            Destination.node(joining.node_id),
            MessageCode.UPDATE_REQ,
            member.chord.neighbours_update(),
            first_link=link,
        )
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertIsInstance(failure.value, RequestFailed)
        self.assertEqual(failure.value.error_code, ErrorCode.IN_PROGRESS)

    def test_update_over_its_own_link_brings_a_failed_peer_back(self) -> None:
        """A peer we had declared failed is listed again as soon as it sends us an Update itself."""
        member, other = self.sim.live()[0], self.sim.live()[1]
        member.chord.peer_failed(other.node_id)
        self.assertIn(other.node_id, member.chord.recently_failed)
        self.assertNotIn(other.node_id, member.topology.neighbours())
        other.chord.send_updates(only=[member.node_id])
        self.sim.run(1)
        self.assertNotIn(other.node_id, member.chord.recently_failed)
        self.assertIn(other.node_id, member.topology.neighbours())

    def test_join_refused_for_someone_elses_id(self) -> None:
        """Join must name the signer's own Node-ID: Error_Forbidden otherwise."""
        asker, target = self.sim.live()[1], self.sim.live()[0]
        body = bodies.JoinReq(target.node_id ^ 1).encode()
        d = asker.messenger.request(Destination.node(target.node_id), MessageCode.JOIN_REQ, body)
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)

    def test_neighbour_observers_hear_of_changes(self) -> None:
        """The neighbour observers are called after a newcomer changes a member's table."""
        calls: list[int] = []
        member = self.sim.live()[0]
        member.neighbour_observers.append(lambda: calls.append(1))
        self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)
        self.assertGreaterEqual(len(calls), 1)


class HearsayTests(SynchronousTestCase):
    """What an Update names can make a member contact a table's worth of peers, not more."""

    def setUp(self) -> None:
        self.sim = RingSimulation(seed=43)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(2):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)

    def test_update_naming_a_thousand_made_up_peers(self) -> None:
        """Updates listing 1,000 peers that do not exist make a member try a table's worth of them."""
        member, neighbour = self.sim.live()[0], self.sim.live()[1]
        made_up = tuple((member.node_id + 1 + index * 2**100) % 2**128 for index in range(1000))
        sent: list[str] = []
        request = member.messenger.request

        def counting(destination: Destination, code: int, *args: object, **kw: object) -> object:
            sent.append(MessageCode(code).name)
            return request(destination, code, *args, **kw)  # type: ignore[arg-type]

        member.messenger.request = counting  # type: ignore[method-assign]
        update = bodies.UpdateReq(
            uptime=1,
            type=bodies.ChordUpdateType.NEIGHBORS,
            predecessors=(),
            successors=made_up,
            fingers=(),
        )
        table = self.sim.config.successors + self.sim.config.predecessors
        attaches = []
        for _ in range(3):
            neighbour.messenger.request(
                Destination.node(member.node_id),
                MessageCode.UPDATE_REQ,
                update.encode(),
                first_link=neighbour.links.link_for(member.node_id),
            )
            self.sim.run(1)
            attaches.append(sent.count("ATTACH_REQ"))
        # A table's worth at once, then what the budget refills: a table
        # every half update interval.
        refill = table / (self.sim.config.update_interval_seconds / 2)
        self.assertLessEqual(attaches[0], table)
        self.assertLessEqual(attaches[-1], table + int(2 * refill) + 1)
        self.assertLessEqual(len(sent), 2 * table)
        self.assertGreater(member.counters["hearsay_not_followed"], 0)
        self.assertTrue(self.sim.consistent())
        self.assertFalse(set(made_up) & member.topology.known_peers())
