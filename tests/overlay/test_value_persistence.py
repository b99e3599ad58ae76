"""The DHT values a peer holds, kept across its restarts (p2psip.overlay.value_persistence)."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.node import OverlayNode
from p2psip.overlay.value_persistence import SECTION, ValuePersistence
from p2psip.util.ids import id_hex, resource_id
from p2psip.util.state_db import StateDatabase

from .ringsim import RingSimulation


class ValuePersistenceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation()
        self.addCleanup(self.sim.stop_all)
        directory = Path(self.mktemp())
        directory.mkdir()
        self.database = StateDatabase.open(directory / "state.sqlite3")
        self.addCleanup(self.database.close)

    def persistence(self, node: OverlayNode) -> ValuePersistence:
        values = ValuePersistence(
            self.database,
            node.storage,
            node.membership,
            node.certificates,
            self.sim.clock,
            node.config.limits,
        )
        values.startService()
        self.addCleanup(values.stopService)
        return values

    def save_and_crash(self, lifetime: int = 600) -> OverlayNode:
        """A ring of one stores a value, saves it, and dies."""
        node = self.sim.found()
        values = self.persistence(node)
        self.sim.wait(node.put("greeting", b"hello", lifetime))
        values.stage_changes()
        self.database.flush()
        self.assertEqual(len(self.database.load(SECTION)), 1)
        self.sim.kill(node)
        return node

    def restart(self, old: OverlayNode) -> tuple[OverlayNode, ValuePersistence]:
        node = self.sim._new_node(old.identity, old.advertised_host)
        values = self.persistence(node)
        node.start_alone()
        self.sim.nodes.append(node)
        return node, values

    def test_values_come_back_after_a_restart(self) -> None:
        """The restarted peer, alone, answers a Fetch for the value it held, signature checked."""
        node, values = self.restart(self.save_and_crash())
        self.assertEqual((values.restored, values.left_out), (1, 0))
        result = self.sim.wait(node.get("greeting"))
        self.assertEqual((result.found, result.value), (True, b"hello"))

    def test_lifetimes_count_the_time_down(self) -> None:
        """A value whose lifetime ran out while the peer was down is not restored, and its row goes."""
        old = self.save_and_crash(lifetime=60)
        self.sim.clock.advance(61)
        node, values = self.restart(old)
        self.assertEqual((values.restored, values.left_out), (0, 0))
        self.assertFalse(self.sim.wait(node.get("greeting")).found)
        self.database.flush()
        self.assertEqual(self.database.load(SECTION), {})

    def test_damaged_or_forged_rows_are_left_out(self) -> None:
        """A row that does not decode, or whose signature no longer holds, is counted and skipped."""
        old = self.save_and_crash()
        [(key, row)] = self.database.load(SECTION).items()
        self.database.stage(SECTION, "00" * 16, b"\x00")
        # The value's last byte is inside its signature.
        self.database.stage(SECTION, key, row[:-1] + bytes([row[-1] ^ 1]))
        self.database.flush()
        _node, values = self.restart(old)
        self.assertEqual((values.restored, values.left_out), (0, 2))

    def test_rows_follow_the_store(self) -> None:
        """Only changed resources are staged, and a resource that went loses its row."""
        node = self.sim.found()
        values = self.persistence(node)
        self.sim.wait(node.put("greeting", b"hello", 60))
        values.stage_changes()
        self.assertEqual(self.database.staged, 1)
        self.database.flush()
        values.stage_changes()
        self.assertEqual(self.database.staged, 0)
        key = id_hex(resource_id("greeting"))
        self.assertIn(key, self.database.load(SECTION))
        self.sim.clock.advance(61)
        node.storage.maintain()
        values.stage_changes()
        self.database.flush()
        self.assertNotIn(key, self.database.load(SECTION))
