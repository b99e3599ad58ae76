"""
The capture helpers: frames are cut by RELOAD's framing rule, and tshark,
handed one frame per datagram, accepts good frames and flags broken ones.
"""

from __future__ import annotations

import struct
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.message import (
    Destination,
    Message,
    MessageCode,
    SecurityBlock,
    Signature,
    SignerIdentity,
    SignerIdentityType,
    encode_message,
    make_header,
    overlay_hash,
)
from p2psip.testing import require_tool
from tests.interop.capture import (
    CaptureError,
    CutFrame,
    DecodedFrame,
    Flow,
    cut_frames,
    decode_frames,
    frame_problems,
    in_capture_order,
    write_udp_capture,
)

CLIENT = ("127.0.0.1", 40001)
SERVER = ("127.0.0.1", 40002)


def data_frame(sequence: int, message: bytes) -> bytes:
    return bytes([128]) + struct.pack(">I", sequence) + len(message).to_bytes(3, "big") + message


def ack_frame(sequence: int, received: int = 0) -> bytes:
    return bytes([129]) + struct.pack(">II", sequence, received)


def ping_request() -> bytes:
    """
    A Ping request with a certificate-hash signer, as nodes send them.  (An
    unsigned message's ``none`` identity, RFC 6940 s6.3.4, is an expert
    error to tshark 4.0, which knows only the hash identity types.)
    """
    header = make_header(overlay_hash("interop.test"), 0x1234, (Destination.node(7),))
    identity = SignerIdentity(SignerIdentityType.CERT_HASH, 4, bytes(range(32)))
    security = SecurityBlock((), Signature(4, 3, identity, b"\x30" * 70))
    return encode_message(Message(header, MessageCode.PING_REQ, b"", security=security))


def flow(
    data: bytes,
    source: tuple[str, int] = CLIENT,
    destination: tuple[str, int] = SERVER,
    number: int = 1,
) -> Flow:
    return Flow(0, source, destination, ((0, number, float(number)),), data)


class CutFramesTests(SynchronousTestCase):
    def test_mixed_frames(self) -> None:
        """An ack, a data frame and another ack in one stream come out as three frames."""
        message = ping_request()
        stream = ack_frame(1) + data_frame(2, message) + ack_frame(3)
        frames = cut_frames(flow(stream))
        self.assertEqual([f.data[0] for f in frames], [129, 128, 129])
        self.assertEqual(b"".join(f.data for f in frames), stream)
        self.assertEqual(frames[1].data[8:], message)

    def test_unknown_type(self) -> None:
        """A byte that starts no frame type is an error, not skipped."""
        self.assertRaises(CaptureError, cut_frames, flow(ack_frame(1) + b"\x01rest"))

    def test_truncated_frame(self) -> None:
        """A data frame longer than what the stream holds is an error."""
        self.assertRaises(CaptureError, cut_frames, flow(data_frame(1, ping_request())[:-1]))
        self.assertRaises(CaptureError, cut_frames, flow(b"\x80\x00\x00"))

    def test_capture_order(self) -> None:
        """Frames sort by the capture number of the segment that completed them."""
        late = cut_frames(flow(ack_frame(1), number=5))
        early = cut_frames(flow(data_frame(1, ping_request()), SERVER, CLIENT, number=2))
        self.assertEqual(in_capture_order(late + early), early + late)


class TsharkJudgesFramesTests(SynchronousTestCase):
    def decode(self, frames: list[CutFrame]) -> list[DecodedFrame]:
        tshark = require_tool("tshark")
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        write_udp_capture(path, frames)
        return decode_frames(tshark, path, [CLIENT[1], SERVER[1]])

    def test_good_frames(self) -> None:
        """A framed Ping request and its ack decode as RELOAD with nothing to complain about."""
        message = ping_request()
        frames = cut_frames(flow(data_frame(1, message))) + cut_frames(
            flow(ack_frame(1), SERVER, CLIENT, 2)
        )
        readings = self.decode(frames)
        self.assertEqual([r.frame_type for r in readings], [128, 129])
        self.assertEqual(readings[0].message_codes, (MessageCode.PING_REQ,))
        for frame, reading in zip(frames, readings):
            self.assertEqual(frame_problems(frame, reading, {MessageCode.PING_REQ}), [])

    def test_unexpected_code(self) -> None:
        """A message code outside the expected set is a problem."""
        frames = cut_frames(flow(data_frame(1, ping_request())))
        [reading] = self.decode(frames)
        self.assertEqual(len(frame_problems(frames[0], reading, {MessageCode.PING_ANS})), 1)

    def test_broken_message(self) -> None:
        """A RELOAD message whose forwarding-header length overstates it is a problem."""
        message = bytearray(ping_request())
        # The uint32 length field follows token, overlay, configuration
        # sequence, version, ttl and fragment (RFC 6940 s6.3.2).
        struct.pack_into(">I", message, 16, len(message) + 40)
        frames = cut_frames(flow(data_frame(1, bytes(message))))
        [reading] = self.decode(frames)
        self.assertNotEqual(frame_problems(frames[0], reading, {MessageCode.PING_REQ}), [])

    def test_lone_ack(self) -> None:
        """tshark reads an ack only after a data frame in the same conversation, so order matters."""
        frames = cut_frames(flow(ack_frame(1)))
        [reading] = self.decode(frames)
        self.assertNotEqual(frame_problems(frames[0], reading, set()), [])
