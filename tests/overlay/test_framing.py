"""Tests for RELOAD's framed-message format over streams (RFC 6940 s6.5.1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.codec import DecodeError
from p2psip.overlay.framing import (
    AckFrame,
    DataFrame,
    Frame,
    FrameDecoder,
    acknowledged_sequences,
    encode_frame,
    received_mask,
)

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(DataFrame, u32, st.binary(max_size=64)),
    st.builds(AckFrame, u32, u32),
)


class EncodingTests(SynchronousTestCase):
    def test_data_layout(self) -> None:
        """A data frame is type 128, uint32 sequence, uint24 length, message."""
        self.assertEqual(encode_frame(DataFrame(1, b"abc")), b"\x80\x00\x00\x00\x01\x00\x00\x03abc")

    def test_ack_layout(self) -> None:
        """An ack frame is type 129, uint32 ack_sequence, uint32 received."""
        self.assertEqual(
            encode_frame(AckFrame(2, 0x80000001)), b"\x81\x00\x00\x00\x02\x80\x00\x00\x01"
        )

    def test_too_large(self) -> None:
        """A message that does not fit the uint24 length is a programming error."""
        self.assertRaises(ValueError, encode_frame, DataFrame(1, b"\x00" * (1 << 24)))


class DecoderTests(SynchronousTestCase):
    def test_one_byte_at_a_time(self) -> None:
        """Frames fed one byte at a time come out whole and in order."""
        sent: list[Frame] = [
            DataFrame(1, b"hello"),
            AckFrame(1, 1),
            DataFrame(2, b""),
            DataFrame(3, b"x" * 300),
        ]
        stream = b"".join(encode_frame(frame) for frame in sent)
        decoder = FrameDecoder()
        received: list[Frame] = []
        for i in range(len(stream)):
            received.extend(decoder.feed(stream[i : i + 1]))
        self.assertEqual(received, sent)
        self.assertEqual(decoder.buffered_bytes(), 0)

    def test_all_at_once(self) -> None:
        """Several frames in one chunk all come out."""
        sent: list[Frame] = [AckFrame(5, 3), DataFrame(6, b"m")]
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(b"".join(encode_frame(f) for f in sent)), sent)

    def test_unknown_type(self) -> None:
        """An unknown frame type raises DecodeError at its first byte."""
        self.assertRaises(DecodeError, FrameDecoder().feed, b"\x7f")

    def test_length_over_maximum(self) -> None:
        """A data length past the maximum raises before the message arrives."""
        decoder = FrameDecoder(max_message_bytes=100)
        self.assertEqual(decoder.feed(b"\x80\x00\x00\x00\x01\x00\x00"), [])
        self.assertRaises(DecodeError, decoder.feed, b"\x65")

    def test_huge_length(self) -> None:
        """The largest uint24 length is past the default maximum and refused with nothing buffered."""
        decoder = FrameDecoder()
        self.assertRaises(DecodeError, decoder.feed, b"\x80\x00\x00\x00\x01\xff\xff\xff")
        self.assertEqual(decoder.buffered_bytes(), 0)

    def test_failure_is_sticky(self) -> None:
        """After an error the decoder refuses further input."""
        decoder = FrameDecoder()
        self.assertRaises(DecodeError, decoder.feed, b"\x00")
        self.assertRaises(DecodeError, decoder.feed, encode_frame(AckFrame(1, 1)))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(frames, max_size=6), st.data())
    def test_any_chunking(self, sent: list[Frame], data: st.DataObject) -> None:
        """Any split of a stream of frames decodes to the same frames."""
        stream = b"".join(encode_frame(frame) for frame in sent)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        decoder = FrameDecoder()
        received: list[Frame] = []
        start = 0
        for cut in cuts + [len(stream)]:
            received.extend(decoder.feed(stream[start:cut]))
            start = cut
        self.assertEqual(received, sent)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_garbage(self, data: bytes) -> None:
        """Random bytes raise nothing but DecodeError."""
        try:
            FrameDecoder(max_message_bytes=32).feed(data)
        except DecodeError:
            pass


class ReceivedMaskTests(SynchronousTestCase):
    def test_bits(self) -> None:
        """Bit i is set when sequence ack_sequence - 1 - i was received."""
        self.assertEqual(received_mask(10, [9, 8, 6]), 0b1011)
        self.assertEqual(received_mask(10, [10, 11, 10 - 33]), 0)
        self.assertEqual(received_mask(40, [8]), 1 << 31)

    def test_wraps(self) -> None:
        """The mask wraps around at 2**32."""
        self.assertEqual(received_mask(1, [0xFFFFFFFF, 0]), 0b11)
        self.assertEqual(acknowledged_sequences(AckFrame(1, 0b11)), [1, 0, 0xFFFFFFFF])

    @given(u32, st.sets(st.integers(min_value=1, max_value=32)))
    def test_inverse(self, ack_sequence: int, distances: set[int]) -> None:
        """acknowledged_sequences inverts received_mask."""
        received = [(ack_sequence - d) % (1 << 32) for d in distances]
        mask = received_mask(ack_sequence, received)
        self.assertEqual(
            sorted(acknowledged_sequences(AckFrame(ack_sequence, mask))),
            sorted(received + [ack_sequence]),
        )
