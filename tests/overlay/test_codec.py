"""Tests for the bounds-checked Reader and the Writer under every RELOAD structure."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    Limits,
    Reader,
    UnknownKindError,
    Writer,
)


class LimitsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """The default limits are the documented ones."""
        self.assertEqual(
            DEFAULT_LIMITS,
            Limits(
                max_message_bytes=1_048_576,
                max_list_items=1024,
                max_via=64,
                max_destinations=64,
                max_certificates=8,
            ),
        )

    def test_unknown_kind_error(self) -> None:
        """UnknownKindError is a DecodeError that names the kinds."""
        error = UnknownKindError([4, 5])
        self.assertIsInstance(error, DecodeError)
        self.assertIsInstance(error, ValueError)
        self.assertEqual(error.kinds, (4, 5))


class ReaderTests(SynchronousTestCase):
    def test_integers(self) -> None:
        """Integers are read big-endian at each width."""
        reader = Reader(bytes(range(1, 20)))
        self.assertEqual(reader.u8(), 0x01)
        self.assertEqual(reader.u16(), 0x0203)
        self.assertEqual(reader.u24(), 0x040506)
        self.assertEqual(reader.u32(), 0x0708090A)
        self.assertEqual(reader.u64(), 0x0B0C0D0E0F101112)
        self.assertEqual(reader.remaining(), 1)

    def test_short_integer(self) -> None:
        """Reading past the end raises DecodeError and consumes nothing."""
        reader = Reader(b"\x00\x01\x02")
        self.assertRaises(DecodeError, reader.u32)
        self.assertEqual(reader.offset, 0)

    def test_opaque_widths(self) -> None:
        """Opaque vectors use 1, 2, 3 or 4 length bytes."""
        for width in (1, 2, 3, 4):
            data = (3).to_bytes(width, "big") + b"abc"
            reader = Reader(data)
            self.assertEqual(reader.opaque(width), b"abc")
            reader.expect_end("test")

    def test_opaque_past_end(self) -> None:
        """A vector length longer than the remaining bytes raises before slicing."""
        self.assertRaises(DecodeError, Reader(b"\x05abc").opaque, 1)
        self.assertRaises(DecodeError, Reader(b"\xff\xff\xff\xff").opaque, 4)

    def test_opaque_past_limit(self) -> None:
        """A vector longer than the message limit raises even if the bytes are there."""
        reader = Reader(b"\x00\x04abcd", limits=Limits(max_message_bytes=3))
        self.assertRaises(DecodeError, reader.opaque, 2)

    def test_vector_is_bounded(self) -> None:
        """A nested reader cannot read past its vector into the next field."""
        reader = Reader(b"\x00\x02ab\xff")
        inner = reader.vector(2)
        self.assertEqual(inner.raw(2), b"ab")
        self.assertRaises(DecodeError, inner.u8)
        self.assertEqual(reader.u8(), 0xFF)

    def test_boolean(self) -> None:
        """Booleans are exactly 0 or 1."""
        self.assertFalse(Reader(b"\x00").boolean())
        self.assertTrue(Reader(b"\x01").boolean())
        self.assertRaises(DecodeError, Reader(b"\x02").boolean)

    def test_trailing(self) -> None:
        """expect_end refuses leftover bytes."""
        reader = Reader(b"\x00\x00")
        reader.u8()
        self.assertRaises(DecodeError, reader.expect_end, "test")

    def test_count(self) -> None:
        """check_count refuses a count past the limit."""
        reader = Reader(b"")
        reader.check_count(3, 3, "list")
        self.assertRaises(DecodeError, reader.check_count, 4, 3, "list")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=40), st.lists(st.sampled_from("b1234o"), max_size=12))
    def test_any_read_sequence(self, data: bytes, operations: list[str]) -> None:
        """Any sequence of reads over any bytes raises nothing but DecodeError."""
        reader = Reader(data)
        try:
            for operation in operations:
                if operation == "b":
                    reader.boolean()
                elif operation == "o":
                    reader.opaque(2)
                else:
                    getattr(reader, {"1": "u8", "2": "u16", "3": "u32", "4": "u64"}[operation])()
        except DecodeError:
            pass
        self.assertLessEqual(reader.offset, len(data))


class WriterTests(SynchronousTestCase):
    def test_integers(self) -> None:
        """Integers are written big-endian at each width."""
        writer = Writer().u8(1).u16(0x0203).u24(0x040506).u32(0x0708090A).u64(1)
        self.assertEqual(writer.getvalue(), bytes(range(1, 11)) + b"\x00" * 7 + b"\x01")

    def test_out_of_range(self) -> None:
        """Values that do not fit raise ValueError."""
        self.assertRaises(ValueError, Writer().u8, 256)
        self.assertRaises(ValueError, Writer().u16, -1)
        self.assertRaises(ValueError, Writer().id128, 1 << 128)
        self.assertRaises(ValueError, Writer().opaque, 1, b"x" * 256)

    @given(st.integers(1, 4), st.binary(max_size=300))
    def test_opaque_round_trip(self, width: int, data: bytes) -> None:
        """Reader.opaque reads what Writer.opaque wrote."""
        if len(data) >= 1 << (8 * width):
            self.assertRaises(ValueError, Writer().opaque, width, data)
            return
        reader = Reader(Writer().opaque(width, data).getvalue())
        self.assertEqual(reader.opaque(width), data)
        reader.expect_end("test")

    @given(st.integers(min_value=0, max_value=(1 << 128) - 1))
    def test_id_round_trip(self, value: int) -> None:
        """128-bit identifiers round-trip through 16 bytes."""
        data = Writer().id128(value).getvalue()
        self.assertEqual(len(data), 16)
        self.assertEqual(Reader(data).id128(), value)
