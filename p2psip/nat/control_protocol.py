"""
The STUNT control protocol's messages on the wire, sans-IO.

Clients behind NATs keep one TCP control connection to the mediator (the
broker in ``p2psip.nat.broker`` drives the sessions; the full protocol is
in ``docs/mediator-protocol.md``).  This module is the codec both ends use.

Framing: every control message is one frame, a 2-byte big-endian length
followed by that many bytes of a UTF-8 JSON object with a string ``type``.
Frames longer than ``MAX_FRAME_BYTES`` are a decode error, checked before
anything is buffered beyond the 2-byte header.

Messages: each ``type`` has a fixed set of typed fields (``_FIELD_TYPES``);
``validate_message`` rejects anything missing or mistyped, so the broker
and the client only ever see well-formed messages.  The connection methods
a session may try (``DIRECT`` ... ``UDP_PUNCH``) are names on the wire too.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8192
FRAME_HEADER = struct.Struct("!H")
MAX_OBSERVATIONS = 16

#: Connection methods, in the order the broker tries them.
DIRECT = "direct"
SIMULTANEOUS_OPEN = "simultaneous-open"
LOW_TTL = "low-ttl"
RELAYED = "relayed"
UDP_PUNCH = "udp-punch"
TCP_METHODS = (DIRECT, SIMULTANEOUS_OPEN, LOW_TTL, RELAYED)


class StuntDecodeError(ValueError):
    """A control frame is malformed; the only error decoding raises."""


_FIELD_TYPES: dict[str, dict[str, Any]] = {
    # client -> mediator
    "hello": {"version": int, "id": str, "mac": str},
    "relay-join": {"version": int, "session": str, "token": str},
    "connect": {"ref": int, "to": str, "kind": str, "methods": list},
    "probed": {"session": str, "local_ip": str, "hole_port": int, "observations": list},
    "refuse": {"session": str, "reason": str},
    "armed": {"session": str},
    "result": {"session": str, "method": str, "ok": bool, "detail": str},
    "ping": {},
    # mediator -> client
    "challenge": {"version": int, "nonce": str, "stun_tcp_port": int, "stun_udp_port": int},
    "welcome": {"id": str, "observed": list},
    "error": {"code": str, "reason": str},
    "probe": {"session": str, "peer": str, "kind": str, "ref": int},
    "attempt": {
        "session": str,
        "method": str,
        "role": str,
        "peer_endpoint": list,
        "hole_port": int,
        "start_in_seconds": float,
        "deadline_seconds": float,
        "ttl": int,
    },
    "go": {"session": str},
    "relay": {"session": str, "token": str, "reason": str},
    "relay-ready": {"session": str},
    "outcome": {"session": str, "ok": bool, "method": str, "reason": str},
    "pong": {},
}


def _check_endpoint(value: Any) -> None:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or len(value[0]) > 64
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
        or not 0 <= value[1] <= 65535
    ):
        raise StuntDecodeError("endpoint must be [host, port]")


def validate_message(message: Any) -> dict[str, Any]:
    """
    Check a decoded JSON value against the message schema.

    Unknown extra fields are allowed (newer minor revisions may add them);
    missing or mistyped known fields are errors.
    """
    if not isinstance(message, dict):
        raise StuntDecodeError("a frame must hold a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in _FIELD_TYPES:
        raise StuntDecodeError("unknown message type")
    for name, expected in _FIELD_TYPES[kind].items():
        if name not in message:
            raise StuntDecodeError(f"{kind}: missing field {name}")
        value = message[name]
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and 0 <= value < 3600
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and -1 <= value < 2**32
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise StuntDecodeError(f"{kind}: field {name} has the wrong type")
        if expected is str and len(value) > 512:
            raise StuntDecodeError(f"{kind}: field {name} is too long")
    for name in ("peer_endpoint", "observed"):
        if name in _FIELD_TYPES[kind]:
            _check_endpoint(message[name])
    if kind == "probed":
        observations = message["observations"]
        if len(observations) > MAX_OBSERVATIONS:
            raise StuntDecodeError("probed: too many observations")
        for item in observations:
            if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], int):
                raise StuntDecodeError("probed: observation must be [local_port, host, port]")
            _check_endpoint(item[1:])
    if kind == "challenge" and not _is_hex(message["nonce"]):
        # The client MACs the nonce as ASCII: anything else is no nonce of ours.
        raise StuntDecodeError("challenge: nonce must be hex digits")
    if kind == "connect":
        if len(message["methods"]) > 8 or not all(isinstance(m, str) for m in message["methods"]):
            raise StuntDecodeError("connect: methods must be a short list of names")
    return message


def _is_hex(text: str) -> bool:
    return bool(text) and text.isascii() and all(c in "0123456789abcdefABCDEF" for c in text)


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame: 2-byte length, compact JSON."""
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError("control message too large")
    return FRAME_HEADER.pack(len(body)) + body


def decode_frame_body(body: bytes) -> dict[str, Any]:
    """Decode and validate the JSON body of one frame."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StuntDecodeError(f"frame is not UTF-8 JSON: {e.__class__.__name__}") from None
    return validate_message(value)


class FrameDecoder:
    """
    Stream decoder: ``feed(data) -> list[dict]``.

    After a decode error the decoder stays broken (every later ``feed``
    raises too): the stream has lost its framing and must be closed.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._broken = False

    def feed(
        self, data: bytes, stop_after: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """
        Decode the complete frames in the buffer.

        ``stop_after`` ends decoding after the first message it accepts and
        leaves the rest buffered (``take_remainder``): after ``relay-ready``
        the stream carries raw bytes, not frames.
        """
        if self._broken:
            raise StuntDecodeError("stream already failed to decode")
        self._buffer += data
        messages = []
        try:
            while len(self._buffer) >= FRAME_HEADER.size:
                (length,) = FRAME_HEADER.unpack_from(self._buffer)
                if length == 0 or length > self._max:
                    raise StuntDecodeError(f"frame length {length} outside 1..{self._max}")
                end = FRAME_HEADER.size + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[FRAME_HEADER.size : end])
                del self._buffer[:end]
                message = decode_frame_body(body)
                messages.append(message)
                if stop_after is not None and stop_after(message):
                    break
        except StuntDecodeError:
            self._broken = True
            raise
        return messages

    def take_remainder(self) -> bytes:
        """Bytes after the last frame (a relay-join connection turns raw)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest
