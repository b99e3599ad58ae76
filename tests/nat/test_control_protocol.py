"""Tests for the STUNT control protocol codec: framing and message validation."""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import control_protocol


class FramingTests(SynchronousTestCase):
    def test_round_trip_one_byte_at_a_time(self) -> None:
        """Frames fed one byte at a time decode to the messages that were encoded."""
        messages = [{"type": "ping"}, {"type": "armed", "session": "abc"}]
        data = b"".join(control_protocol.encode_frame(m) for m in messages)
        decoder = control_protocol.FrameDecoder()
        out = []
        for i in range(len(data)):
            out += decoder.feed(data[i : i + 1])
        self.assertEqual(out, messages)

    def test_oversized_length_rejected_before_buffering(self) -> None:
        """A length above the limit is an error as soon as the header arrives."""
        decoder = control_protocol.FrameDecoder()
        self.assertRaises(
            control_protocol.StuntDecodeError,
            decoder.feed,
            struct.pack("!H", control_protocol.MAX_FRAME_BYTES + 1),
        )

    def test_zero_length_rejected(self) -> None:
        """An empty frame is malformed."""
        self.assertRaises(
            control_protocol.StuntDecodeError, control_protocol.FrameDecoder().feed, b"\x00\x00"
        )

    def test_decoder_stays_broken(self) -> None:
        """After an error the stream has lost its framing and keeps failing."""
        decoder = control_protocol.FrameDecoder()
        self.assertRaises(control_protocol.StuntDecodeError, decoder.feed, b"\x00\x03abc")
        self.assertRaises(
            control_protocol.StuntDecodeError,
            decoder.feed,
            control_protocol.encode_frame({"type": "ping"}),
        )

    def test_wrong_field_type(self) -> None:
        """A known field of the wrong type is a decode error, not a crash later."""
        body = json.dumps(
            {"type": "result", "session": "s", "method": "m", "ok": "yes", "detail": ""}
        )
        self.assertRaises(
            control_protocol.StuntDecodeError, control_protocol.decode_frame_body, body.encode()
        )

    def test_bad_endpoint(self) -> None:
        """An endpoint with an out-of-range port is rejected."""
        body = {"type": "welcome", "id": "a", "observed": ["1.2.3.4", 70000]}
        self.assertRaises(
            control_protocol.StuntDecodeError,
            control_protocol.decode_frame_body,
            json.dumps(body).encode(),
        )

    def test_too_many_observations(self) -> None:
        """A probe report cannot make the broker process unbounded lists."""
        body = {
            "type": "probed",
            "session": "s",
            "local_ip": "10.0.0.1",
            "hole_port": 1,
            "observations": [[1, "1.2.3.4", 1]] * (control_protocol.MAX_OBSERVATIONS + 1),
        }
        self.assertRaises(
            control_protocol.StuntDecodeError,
            control_protocol.decode_frame_body,
            json.dumps(body).encode(),
        )

    def test_deep_nesting(self) -> None:
        """Deeply nested JSON is a decode error, not a RecursionError."""
        body = b"[" * 5000 + b"]" * 5000
        self.assertRaises(
            control_protocol.StuntDecodeError, control_protocol.decode_frame_body, body
        )

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage_raises_only_decode_error(self, data: bytes) -> None:
        """Arbitrary bytes decode to messages or raise StuntDecodeError, nothing else."""
        try:
            control_protocol.FrameDecoder().feed(data)
        except control_protocol.StuntDecodeError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False)
            | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=20,
        ),
        st.sampled_from(sorted(control_protocol._FIELD_TYPES)),
    )
    def test_json_of_any_shape(self, value: Any, kind: str) -> None:
        """Any JSON value, even with a real type name, validates or raises StuntDecodeError."""
        if isinstance(value, dict):
            value["type"] = kind
        try:
            control_protocol.validate_message(value)
        except control_protocol.StuntDecodeError:
            pass


class StopAfterTests(SynchronousTestCase):
    def test_raw_bytes_after_stop_frame(self) -> None:
        """Bytes after a stop frame stay buffered undecoded, even when they are not frames."""
        decoder = control_protocol.FrameDecoder()
        data = (
            control_protocol.encode_frame({"type": "relay-ready", "session": "s"})
            + b"p2psip raw bytes"
        )
        messages = decoder.feed(data, stop_after=lambda m: m["type"] == "relay-ready")
        self.assertEqual(messages, [{"type": "relay-ready", "session": "s"}])
        self.assertEqual(decoder.take_remainder(), b"p2psip raw bytes")
