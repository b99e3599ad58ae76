"""
Fuzz the mediator's STUNT control protocol (``p2psip.nat.control_protocol``).

The first byte picks the mode:

0. one frame body for ``decode_frame_body`` (UTF-8 JSON, then
   ``validate_message``).  Only :class:`StuntDecodeError` may escape; a
   message that validates re-encodes to a frame that decodes to an equal
   message (JSON's NaN, which equals nothing, excepted).
1. a control stream, after one byte of chunk size, for ``FrameDecoder``:
   only :class:`StuntDecodeError` may escape, the chunked stream gives the
   messages the whole stream gives, and ``take_remainder`` holds what is
   left after a ``relay-ready`` (where the stream turns raw).

Seeds: one valid message of every type, and a relay-ready followed by raw bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from fuzz.common import HarnessFailure, instrumented, main, mode, same_when_chunked

with instrumented():
    from p2psip.nat.control_protocol import (
        FrameDecoder,
        StuntDecodeError,
        decode_frame_body,
        encode_frame,
    )


def has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(has_nan(v) for v in value)
    return False


def body(data: bytes) -> None:
    try:
        message = decode_frame_body(data)
    except StuntDecodeError:
        return
    try:
        frame = encode_frame(message)
    except ValueError:
        return  # compact re-encoding longer than a frame: only possible for our own messages
    [again] = FrameDecoder().feed(frame)
    if again != message and not has_nan(message):
        raise HarnessFailure(f"message changed on a round trip: {message!r} -> {again!r}")


def relay_ready(message: dict[str, Any]) -> bool:
    return message.get("type") == "relay-ready"


def stream(data: bytes) -> None:
    def feed(pieces: list[bytes]) -> tuple[str, bytes] | StuntDecodeError:
        decoder = FrameDecoder()
        found: list[dict[str, Any]] = []
        raw = b""
        try:
            for piece in pieces:
                if found and relay_ready(found[-1]):
                    raw += piece  # the stream is raw now: a caller stops feeding the decoder
                else:
                    found += decoder.feed(piece, stop_after=relay_ready)
        except StuntDecodeError as e:
            return e
        # json.dumps, not ==, so that NaN (which equals nothing) compares equal to itself.
        return json.dumps(found), decoder.take_remainder() + raw

    same_when_chunked(feed, data, StuntDecodeError)


def test_one_input(data: bytes) -> None:
    selector, payload = mode(data, 2)
    if selector == 0:
        body(payload)
    else:
        stream(payload)


SAMPLES: list[dict[str, Any]] = [
    {"type": "hello", "version": 1, "id": "peer-a", "mac": "00ff"},
    {"type": "relay-join", "version": 1, "session": "s1", "token": "t"},
    {"type": "connect", "ref": 1, "to": "peer-b", "kind": "tcp", "methods": ["direct", "relayed"]},
    {
        "type": "probed",
        "session": "s1",
        "local_ip": "10.0.0.2",
        "hole_port": 40000,
        "observations": [[40000, "198.51.100.1", 50000]],
    },
    {"type": "refuse", "session": "s1", "reason": "busy"},
    {"type": "armed", "session": "s1"},
    {"type": "result", "session": "s1", "method": "low-ttl", "ok": True, "detail": ""},
    {"type": "ping"},
    {"type": "challenge", "version": 1, "nonce": "n", "stun_tcp_port": 3479, "stun_udp_port": 3478},
    {"type": "welcome", "id": "peer-a", "observed": ["198.51.100.1", 50000]},
    {"type": "error", "code": "auth", "reason": "bad mac"},
    {"type": "probe", "session": "s1", "peer": "peer-b", "kind": "tcp", "ref": 1},
    {
        "type": "attempt",
        "session": "s1",
        "method": "simultaneous-open",
        "role": "active",
        "peer_endpoint": ["198.51.100.2", 40001],
        "hole_port": 40000,
        "start_in_seconds": 0.5,
        "deadline_seconds": 5,
        "ttl": -1,
    },
    {"type": "go", "session": "s1"},
    {"type": "relay", "session": "s1", "token": "t", "reason": "symmetric NAT"},
    {"type": "relay-ready", "session": "s1"},
    {"type": "outcome", "session": "s1", "ok": False, "method": "relayed", "reason": "timeout"},
    {"type": "pong", "extra": [1, 2.5, None, {"nested": "\u00e9"}]},
]


def seeds() -> Iterator[bytes]:
    for message in SAMPLES:
        frame = encode_frame(message)
        yield b"\x00" + frame[2:]
        yield b"\x01\x00" + frame + encode_frame({"type": "ping"})
    frames = b"".join(encode_frame(m) for m in SAMPLES)
    yield b"\x01\x05" + frames
    yield b"\x01\x00" + encode_frame(SAMPLES[1]) + encode_frame(SAMPLES[15]) + b"raw bytes"


if __name__ == "__main__":
    main(test_one_input, seeds)
