"""
The MEDIA-RELAY usage: which super-nodes of the ring relay media.

A TURN-SERVICE-like Kind (RFC 6940 s10): every super-node that runs a
media relay stores one entry in the dictionary at the well-known resource
:data:`MEDIA_RELAY_RESOURCE`, keyed by its own Node-ID (the Kind's
NODE-KEY-MATCH policy lets nobody else write or delete that entry), and
re-stores it while it relays, with how many port pairs it has free.  A
super-node that needs a relay and has none reads the whole dictionary with
one Fetch.

The value, in RFC 6940 presentation language (big-endian)::

    struct {
        uint8   version;                 // 1
        opaque  media_address<0..2^8-1>; // the IPv4 address written into SDP
        uint16  free_pairs;              // RTP/RTCP port pairs free when stored
    } MediaRelayEntry;

Decoding is strict and raises only :class:`DecodeError`.
"""

from __future__ import annotations

import ipaddress

from attrs import frozen

from p2psip.overlay.codec import DecodeError, Reader, Writer
from p2psip.overlay.kinds import MEDIA_RELAY
from p2psip.util.ids import NODE_ID_BYTES, id_from_bytes

#: The resource name every relay's entry lives under.
MEDIA_RELAY_RESOURCE = "p2psip:media-relays"
MEDIA_RELAY_KIND = MEDIA_RELAY.kind_id
VERSION = 1


@frozen
class MediaRelayEntry:
    """One relaying super-node as the overlay lists it."""

    node_id: int
    media_address: str
    free_pairs: int


def encode_entry(media_address: str, free_pairs: int) -> bytes:
    writer = Writer().u8(VERSION)
    writer.opaque(1, media_address.encode("ascii"), "media_address")
    writer.u16(min(free_pairs, 0xFFFF), "free_pairs")
    return writer.getvalue()


def decode_entry(key: bytes, value: bytes) -> MediaRelayEntry:
    """:raises DecodeError: anything but one well-formed entry keyed by a Node-ID."""
    if len(key) != NODE_ID_BYTES:
        raise DecodeError("a MEDIA-RELAY key must be a Node-ID")
    reader = Reader(value)
    if reader.u8("version") != VERSION:
        raise DecodeError("unknown MEDIA-RELAY version")
    raw_address = reader.opaque(1, "media_address")
    free_pairs = reader.u16("free_pairs")
    reader.expect_end("MediaRelayEntry")
    try:
        address = str(ipaddress.IPv4Address(raw_address.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise DecodeError("MEDIA-RELAY address is no IPv4 address") from None
    return MediaRelayEntry(id_from_bytes(key), address, free_pairs)


def decode_entries(
    entries: dict[bytes, bytes], skip: bytes | None = None
) -> tuple[list[MediaRelayEntry], list[str]]:
    """Every entry that decodes (but the one keyed ``skip``), and why the others did not."""
    good: list[MediaRelayEntry] = []
    bad: list[str] = []
    for key, value in entries.items():
        if key == skip:
            continue
        try:
            good.append(decode_entry(key, value))
        except DecodeError as e:
            bad.append(str(e))
    return good, bad
