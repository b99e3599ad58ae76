"""
Identifiers on the CHORD-RELOAD ring and the interval arithmetic over them.

RFC 6940 section 10.2: Node-IDs and Resource-IDs are 128-bit numbers on a
circle of size 2**128; the Resource-ID of a name is the first 128 bits of
its SHA-1 hash.  All ring arithmetic in the project goes through this module
so that the wrap-around at zero is handled in exactly one place.

Identifiers are plain ``int`` values inside the program (cheap to compare,
hash and subtract) and 16 big-endian bytes on the wire.
"""

from __future__ import annotations

import hashlib
import os

NODE_ID_BITS = 128
NODE_ID_BYTES = NODE_ID_BITS // 8
RING_SIZE = 1 << NODE_ID_BITS
MAX_ID = RING_SIZE - 1

NodeId = int
ResourceId = int


def resource_id(name: str | bytes) -> ResourceId:
    """The Resource-ID for a resource name (SHA-1, first 128 bits)."""
    if isinstance(name, str):
        name = name.encode("utf-8")
    return int.from_bytes(hashlib.sha1(name).digest()[:NODE_ID_BYTES], "big")


def node_id_from_key(public_key_der: bytes) -> NodeId:
    """
    A Node-ID bound to a public key, for self-signed mode (RFC 6940 s13.4).

    A node that owns no enrolment certificate derives its Node-ID from its
    own key, so nobody can pick the place on the ring they want to attack
    without first grinding keys.
    """
    return int.from_bytes(hashlib.sha256(public_key_der).digest()[:NODE_ID_BYTES], "big")


def random_node_id() -> NodeId:
    """A uniformly random Node-ID (tests and simulations)."""
    return int.from_bytes(os.urandom(NODE_ID_BYTES), "big")


def id_to_bytes(value: int) -> bytes:
    """The 16-byte wire form of an identifier."""
    return value.to_bytes(NODE_ID_BYTES, "big")


def id_from_bytes(data: bytes) -> int:
    """An identifier from its 16-byte wire form."""
    if len(data) != NODE_ID_BYTES:
        raise ValueError(f"identifier must be {NODE_ID_BYTES} bytes, not {len(data)}")
    return int.from_bytes(data, "big")


def id_hex(value: int) -> str:
    """The full hexadecimal form used in status pages and the CLI."""
    return f"{value:032x}"


def id_short(value: int) -> str:
    """A short prefix for log lines; enough to tell nodes apart by eye."""
    return f"{value:032x}"[:8]


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def node_id_from_hex(text: str) -> int | None:
    """
    The Node-ID a stranger names in its full hexadecimal form, or None.

    Exactly 32 hex digits: ``int(text, 16)`` alone would also take signs,
    spaces, underscores and a ``0x`` prefix.
    """
    if len(text) != 2 * NODE_ID_BYTES or not _HEX_DIGITS.issuperset(text):
        return None
    return int(text, 16)


def parse_id(text: str) -> int:
    """Parse a hexadecimal identifier as shown by :func:`id_hex`."""
    value = int(text, 16)
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"identifier out of range: {text}")
    return value


def clockwise(start: int, end: int) -> int:
    """Distance going clockwise (increasing ids) from ``start`` to ``end``."""
    return (end - start) % RING_SIZE


def between(x: int, start: int, end: int) -> bool:
    """
    True when ``x`` lies in the open ring interval (start, end).

    When start == end the interval is the whole ring except that point,
    which is what a one-node ring needs.
    """
    if start == end:
        return x != start
    return 0 < clockwise(start, x) < clockwise(start, end)


def between_right_inclusive(x: int, start: int, end: int) -> bool:
    """
    True when ``x`` lies in the half-open ring interval (start, end].

    This is the responsibility test of Chord: a peer with predecessor P is
    responsible for (P, self].  When start == end the interval is the whole
    ring.
    """
    if start == end:
        return True
    return 0 < clockwise(start, x) <= clockwise(start, end)


def finger_target(node: int, index: int) -> int:
    """The id the finger ``index`` of ``node`` points at: node + 2**index."""
    return (node + (1 << index)) % RING_SIZE
