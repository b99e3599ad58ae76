"""
Node-level behaviour that the ring tests do not single out: hostile or
misdirected input, RELOAD error answers, and the status document.
"""

from __future__ import annotations

from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies
from p2psip.overlay.errors import RequestFailed
from p2psip.overlay.message import Destination, ErrorCode, MessageCode
from p2psip.testing import MemoryLink
from p2psip.util.ids import id_hex
from p2psip.web.overlay_status import overlay_status
from tests.overlay.ringsim import SIMULATION_CONFIG, RingSimulation


class HostileInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=11)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        self.sim.join()
        self.sim.join()
        self.sim.run(15)
        self.node = self.sim.live()[0]
        self.link = MemoryLink(self.sim.network, self.node, "192.0.2.99:1", inbound=True)

    def test_garbage_is_counted_not_raised(self) -> None:
        """Random bytes on a link are dropped and counted; the node keeps working."""
        for junk in (b"", b"\x00" * 3, b"\xd2\x45\x4c\x4f" + b"\xff" * 60, bytes(range(256)) * 8):
            self.node.message_received(self.link, junk)
        self.assertGreaterEqual(self.node.counters.get("malformed_messages", 0), 4)
        self.sim.wait(self.node.put("still-works", b"yes"))
        self.assertEqual(self.sim.wait(self.sim.live()[1].get("still-works")).value, b"yes")

    def test_other_overlay_is_dropped(self) -> None:
        """A valid message for another overlay name is dropped, not answered."""
        other = RingSimulation(evolve(SIMULATION_CONFIG, overlay_name="someone-else.test"), seed=12)
        stranger = other.found()
        data = stranger.messenger.encode(
            MessageCode.PING_REQ,
            bodies.PingReq().encode(),
            (Destination.node(self.node.node_id),),
            7,
        )
        self.node.message_received(self.link, data)
        self.assertEqual(self.node.counters.get("wrong_overlay"), 1)
        stranger.stop()

    def test_unsupported_method_gets_error(self) -> None:
        """A request with a method we do not serve is answered with a RELOAD Error."""
        asker, target = self.sim.live()[1], self.node
        d = asker.messenger.request(
            Destination.node(target.node_id), MessageCode.FIND_REQ, b"\x00" * 16 + b"\x00"
        )
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertIsInstance(failure.value, RequestFailed)
        self.assertEqual(failure.value.error_code, ErrorCode.INVALID_MESSAGE)

    def test_join_under_someone_elses_id_is_refused(self) -> None:
        """Join must name the signer's own Node-ID."""
        asker, target = self.sim.live()[1], self.node
        body = bodies.JoinReq(target.node_id ^ 1).encode()
        d = asker.messenger.request(Destination.node(target.node_id), MessageCode.JOIN_REQ, body)
        [failure] = self.sim.wait(d.addErrback(lambda f: [f]))
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)


class StatusTests(SynchronousTestCase):
    def test_status_document(self) -> None:
        """Status shows the node, its neighbours, storage per kind and links."""
        sim = RingSimulation(seed=13)
        self.addCleanup(sim.stop_all)
        sim.found()
        sim.join()
        sim.run(15)
        node = sim.live()[0]
        sim.wait(node.put("status-test", b"v"))
        status = overlay_status(node)
        self.assertEqual(status["node_id"], id_hex(node.node_id))
        self.assertEqual(status["state"], "joined")
        self.assertEqual(len(status["successors"]), 1)
        self.assertTrue(status["connections"])
        self.assertIn("DATA", status["storage"]["values_per_kind"])
