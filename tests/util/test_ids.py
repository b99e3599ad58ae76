"""Tests for ring identifiers and interval arithmetic."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util import ids

node_ids = st.integers(min_value=0, max_value=ids.MAX_ID)


class ResourceIdTests(SynchronousTestCase):
    def test_sha1_prefix(self) -> None:
        """The Resource-ID is the first 128 bits of the SHA-1 of the name."""
        # SHA-1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
        self.assertEqual(ids.resource_id("abc"), 0xA9993E364706816ABA3E25717850C26C)

    def test_bytes_round_trip(self) -> None:
        """Wire form and int form convert both ways."""
        value = ids.resource_id("sip:alice@example.org")
        self.assertEqual(ids.id_from_bytes(ids.id_to_bytes(value)), value)

    def test_wrong_length_rejected(self) -> None:
        """A wire id of the wrong length is a ValueError."""
        self.assertRaises(ValueError, ids.id_from_bytes, b"\x00" * 15)


class IntervalTests(SynchronousTestCase):
    def test_wraps_around_zero(self) -> None:
        """An interval that crosses zero contains the ids on both sides."""
        start, end = ids.MAX_ID - 10, 10
        self.assertTrue(ids.between(ids.MAX_ID, start, end))
        self.assertTrue(ids.between(0, start, end))
        self.assertTrue(ids.between(9, start, end))
        self.assertFalse(ids.between(10, start, end))
        self.assertTrue(ids.between_right_inclusive(10, start, end))
        self.assertFalse(ids.between(start, start, end))

    def test_single_node_ring(self) -> None:
        """With start == end the open interval is everything but that point."""
        self.assertTrue(ids.between(5, 7, 7))
        self.assertFalse(ids.between(7, 7, 7))
        self.assertTrue(ids.between_right_inclusive(7, 7, 7))

    @given(node_ids, node_ids, node_ids)
    def test_partition(self, x: int, a: int, b: int) -> None:
        """For a != b, (a, b] and (b, a] split the ring exactly."""
        if a == b:
            return
        self.assertNotEqual(
            ids.between_right_inclusive(x, a, b), ids.between_right_inclusive(x, b, a)
        )

    @given(node_ids, st.integers(min_value=0, max_value=127))
    def test_finger_target(self, node: int, index: int) -> None:
        """Finger targets lie 2**index clockwise of the node."""
        self.assertEqual(ids.clockwise(node, ids.finger_target(node, index)), 1 << index)


class NodeIdFromHexTests(SynchronousTestCase):
    def test_full_hex_form_only(self) -> None:
        """32 hex digits give the Node-ID; anything int() would also take does not."""
        self.assertEqual(ids.node_id_from_hex("0" * 31 + "F"), 15)
        self.assertEqual(ids.node_id_from_hex(ids.id_hex(ids.MAX_ID)), ids.MAX_ID)
        for bad in (
            "",
            "0" * 31,
            "0" * 33,
            "+" + "0" * 31,
            " " + "0" * 31,
            "0_" * 16,
            "0x" + "0" * 30,
        ):
            self.assertIsNone(ids.node_id_from_hex(bad), bad)
