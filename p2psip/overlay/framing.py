"""
RELOAD's framed-message format for stream transports (RFC 6940 s6.5.1).

Over TCP/TLS every message travels in a frame, and the receiver
acknowledges data frames so that the sender can estimate loss and RTT::

    uint8 type                       data (128)  |  ack (129)
    data:  uint32 sequence;          opaque message<0..2^24-1>
    ack:   uint32 ack_sequence;      uint32 received

An ack acknowledges ``ack_sequence`` itself, and ``received`` reports the
32 sequence numbers before it: bit ``i`` (value ``1 << i``) is set when
sequence ``ack_sequence - 1 - i`` (modulo 2**32) was received.  That is how
Wireshark's dissector reads the field ("Acked Frames"), which is the
reference this codec is checked against.

:class:`FrameDecoder` is a sans-IO stream parser: feed it bytes in any
chunking and it returns whole frames.  It rejects an unknown frame type or
a data length past its maximum as soon as those bytes arrive, before any
of the message is buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Union

from attrs import frozen

from p2psip.overlay.codec import DEFAULT_LIMITS, DecodeError

__all__ = [
    "ACK_FRAME_TYPE",
    "DATA_FRAME_TYPE",
    "AckFrame",
    "DataFrame",
    "Frame",
    "FrameDecoder",
    "acknowledged_sequences",
    "encode_frame",
    "received_mask",
]

DATA_FRAME_TYPE = 128
ACK_FRAME_TYPE = 129
MAX_FRAMED_MESSAGE_BYTES = 0xFFFFFF
_SEQUENCE_MODULUS = 1 << 32
_DATA_HEADER = struct.Struct(">BI")
_ACK = struct.Struct(">BII")


@frozen
class DataFrame:
    sequence: int
    message: bytes


@frozen
class AckFrame:
    ack_sequence: int
    received: int


Frame = Union[DataFrame, AckFrame]


def encode_frame(frame: Frame) -> bytes:
    """The wire form of a data or ack frame."""
    if isinstance(frame, DataFrame):
        if len(frame.message) > MAX_FRAMED_MESSAGE_BYTES:
            raise ValueError(f"message of {len(frame.message)} bytes does not fit a frame")
        if not 0 <= frame.sequence < _SEQUENCE_MODULUS:
            raise ValueError(f"sequence {frame.sequence} is not a uint32")
        return (
            _DATA_HEADER.pack(DATA_FRAME_TYPE, frame.sequence)
            + len(frame.message).to_bytes(3, "big")
            + frame.message
        )
    if not 0 <= frame.ack_sequence < _SEQUENCE_MODULUS or not 0 <= frame.received < (1 << 32):
        raise ValueError("ack_sequence and received are uint32 values")
    return _ACK.pack(ACK_FRAME_TYPE, frame.ack_sequence, frame.received)


def received_mask(ack_sequence: int, received: Iterable[int]) -> int:
    """
    The ``received`` field for an ack of ``ack_sequence``, given the
    sequence numbers received so far.  Only the 32 numbers before
    ``ack_sequence`` count (the arithmetic wraps at 2**32); others, and
    ``ack_sequence`` itself, are ignored.
    """
    mask = 0
    for sequence in received:
        distance = (ack_sequence - sequence) % _SEQUENCE_MODULUS
        if 1 <= distance <= 32:
            mask |= 1 << (distance - 1)
    return mask


def acknowledged_sequences(ack: AckFrame) -> list[int]:
    """The sequence numbers an ack reports as received, newest (``ack_sequence``) first."""
    earlier = [
        (ack.ack_sequence - 1 - i) % _SEQUENCE_MODULUS for i in range(32) if ack.received >> i & 1
    ]
    return [ack.ack_sequence, *earlier]


class FrameDecoder:
    """
    Splits a byte stream into frames.

    After a :class:`DecodeError` the stream is out of step and cannot be
    resynchronised; the decoder keeps failing, and the caller must close
    the connection.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_LIMITS.max_message_bytes) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._failed: DecodeError | None = None

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes from the stream; return every frame they complete."""
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        frames: list[Frame] = []
        buffer = self._buffer
        offset = 0
        try:
            while offset < len(buffer):
                frame_type = buffer[offset]
                if frame_type == ACK_FRAME_TYPE:
                    if len(buffer) - offset < _ACK.size:
                        break
                    _, ack_sequence, received = _ACK.unpack_from(buffer, offset)
                    frames.append(AckFrame(ack_sequence, received))
                    offset += _ACK.size
                elif frame_type == DATA_FRAME_TYPE:
                    if len(buffer) - offset < 8:
                        break
                    length = int.from_bytes(buffer[offset + 5 : offset + 8], "big")
                    if length > self.max_message_bytes:
                        raise DecodeError(
                            f"framed message of {length} bytes exceeds the maximum "
                            f"of {self.max_message_bytes}"
                        )
                    end = offset + 8 + length
                    if len(buffer) < end:
                        break
                    (sequence,) = struct.unpack_from(">I", buffer, offset + 1)
                    frames.append(DataFrame(sequence, bytes(buffer[offset + 8 : end])))
                    offset = end
                else:
                    raise DecodeError(f"unknown frame type {frame_type}")
        except DecodeError as e:
            self._failed = e
            self._buffer = bytearray()
            raise
        del buffer[:offset]
        return frames

    def buffered_bytes(self) -> int:
        """How many bytes of an incomplete frame are waiting for more data."""
        return len(self._buffer)
