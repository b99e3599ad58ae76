"""
STUN message codec (RFC 8489, which obsoletes RFC 5389; RFC 5780 attributes).

Sans-IO: bytes in, ``StunMessage`` values out, and back.  Nothing here knows
about sockets, reactors or clocks.

Wire format (RFC 8489 section 5), all integers big-endian::

     0                   1                   2                   3
    |0 0|     STUN Message Type     |         Message Length        |
    |                         Magic Cookie 0x2112A442               |
    |                     Transaction ID (96 bits)                  |
    |                     attributes ...                            |

* The message type interleaves a 12-bit method (M11..M0) with a 2-bit class
  (C1 C0): ``M11..M7 C1 M6..M4 C0 M3..M0`` (section 5).
* The length counts the bytes after the 20-byte header; attributes are
  padded to 4 bytes, so it is always a multiple of 4.
* Each attribute is type (16 bits), value length (16 bits, unpadded), value,
  then padding to a 4-byte boundary (section 14).  Padding content is not
  defined (RFC 5769 vectors use spaces), so it is skipped, never checked.
* Types below 0x8000 are comprehension-required: an agent that does not
  understand one must reject a request with 420 (section 6.3.1).
* MESSAGE-INTEGRITY (section 14.5) is HMAC-SHA1 over the message up to the
  attribute, with the header length rewritten to end just after it;
  MESSAGE-INTEGRITY-SHA256 (section 14.6) likewise with HMAC-SHA256, possibly
  truncated to 16..32 bytes.  FINGERPRINT (section 14.7) is the CRC-32 of
  everything before it XOR 0x5354554e and is always the last attribute.
* Addresses (section 14.1, 14.2): reserved byte, family (1 = IPv4,
  2 = IPv6), port, address.  XOR-MAPPED-ADDRESS XORs the port with the top
  16 bits of the cookie and the address with cookie || transaction ID.

Over TCP, messages are framed by their own length field (RFC 8489 section
6.2.2); ``StunStreamDecoder`` does that framing with a size cap.

Untrusted bytes only ever raise ``StunDecodeError``.  The structure is
checked in ``decode_message``; attribute values are parsed lazily by the
``StunMessage`` helpers, which raise the same error for malformed values.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import zlib
from enum import IntEnum
from typing import Iterable

from attrs import frozen

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
FINGERPRINT_XOR = 0x5354554E
HEADER_BYTES = 20
TRANSACTION_ID_BYTES = 12
# RFC 8489 section 6.1: the length field is 16 bits, so nothing larger can exist.
MAX_MESSAGE_BYTES = HEADER_BYTES + 0xFFFF
# A stream peer that announces more than this is cut off (Binding messages are
# well under 1 KiB; long-term-auth ones a few hundred bytes more).
DEFAULT_STREAM_MAX_MESSAGE_BYTES = 8192
# Real messages carry a dozen attributes at most; a 64 KiB message of empty
# attributes would otherwise become 16,000 tuples.
MAX_ATTRIBUTES = 128
MESSAGE_INTEGRITY_BYTES = 20
MESSAGE_INTEGRITY_SHA256_BYTES = 32


class StunDecodeError(ValueError):
    """Bytes that are not a well-formed STUN message (or attribute value)."""


class StunFingerprintError(StunDecodeError):
    """A FINGERPRINT that does not match: per RFC 8489 section 7.3 the data is not STUN."""


class Method(IntEnum):
    """STUN methods (RFC 8489 section 18.2; TURN's are in RFC 8656)."""

    BINDING = 0x001


class MessageClass(IntEnum):
    """The two class bits C1 C0 (RFC 8489 section 5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class AttributeType(IntEnum):
    """Attribute types (RFC 8489 section 18.3, RFC 5780 section 7, RFC 8445)."""

    MAPPED_ADDRESS = 0x0001
    RESPONSE_ADDRESS = 0x0002  # RFC 3489, deprecated
    CHANGE_REQUEST = 0x0003  # RFC 5780 section 7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489, deprecated
    CHANGED_ADDRESS = 0x0005  # RFC 3489, deprecated
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    REALM = 0x0014
    NONCE = 0x0015
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024  # RFC 8445
    USE_CANDIDATE = 0x0025  # RFC 8445
    PADDING = 0x0026  # RFC 5780 section 7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 section 7.5
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    CACHE_TIMEOUT = 0x8027  # RFC 5780 section 7.7
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029  # RFC 8445
    ICE_CONTROLLING = 0x802A  # RFC 8445
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 section 7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 section 7.4


class ErrorCode(IntEnum):
    """Error response codes used here (RFC 8489 section 14.8)."""

    TRY_ALTERNATE = 300
    BAD_REQUEST = 400
    UNAUTHENTICATED = 401
    UNKNOWN_ATTRIBUTE = 420
    STALE_NONCE = 438
    SERVER_ERROR = 500


ERROR_REASONS = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    420: "Unknown Attribute",
    438: "Stale Nonce",
    500: "Server Error",
}

# RFC 5780 section 7.2: CHANGE-REQUEST flag bits.
CHANGE_IP_FLAG = 0x04
CHANGE_PORT_FLAG = 0x02

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

# RFC 8489 section 14.3: SOFTWARE, REALM, NONCE values are limited in
# characters (763 bytes of UTF-8); we refuse to encode longer ones.
MAX_TEXT_VALUE_BYTES = 763

_HEADER = struct.Struct("!HHI12s")
_HEADER_PREFIX = struct.Struct("!HH")
_ATTRIBUTE_HEADER = struct.Struct("!HH")
_FINGERPRINT_ATTRIBUTE = struct.Struct("!HHI")
_ADDRESS_V4 = struct.Struct("!BBH4s")
_ADDRESS_V6 = struct.Struct("!BBH16s")
_COOKIE_HIGH = MAGIC_COOKIE >> 16

Address = tuple[str, int]
Attribute = tuple[int, bytes]


def encode_message_type(method: int, message_class: int) -> int:
    """Interleave a 12-bit method and the 2 class bits (RFC 8489 section 5)."""
    return (
        ((method & 0xF80) << 2)
        | ((method & 0x070) << 1)
        | (method & 0x00F)
        | ((message_class & 0b10) << 7)
        | ((message_class & 0b01) << 4)
    )


def decode_message_type(message_type: int) -> tuple[int, MessageClass]:
    """Split a 14-bit message type into (method, class)."""
    method = (
        ((message_type & 0x3E00) >> 2) | ((message_type & 0x00E0) >> 1) | (message_type & 0x000F)
    )
    message_class = ((message_type & 0x0100) >> 7) | ((message_type & 0x0010) >> 4)
    return method, MessageClass(message_class)


def _padded(length: int) -> int:
    return (length + 3) & ~3


# ---------------------------------------------------------------------------
# Address attribute values


def encode_address(address: Address) -> bytes:
    """MAPPED-ADDRESS style value (family, port, address) for an IPv4/IPv6 pair."""
    host, port = address
    if ":" in host:
        return _ADDRESS_V6.pack(0, FAMILY_IPV6, port, socket.inet_pton(socket.AF_INET6, host))
    return _ADDRESS_V4.pack(0, FAMILY_IPV4, port, socket.inet_aton(host))


def encode_xor_address(address: Address, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS style value (RFC 8489 section 14.2)."""
    host, port = address
    xport = port ^ _COOKIE_HIGH
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host)
        mask = MAGIC_COOKIE_BYTES + transaction_id
        xored = (int.from_bytes(raw, "big") ^ int.from_bytes(mask, "big")).to_bytes(16, "big")
        return _ADDRESS_V6.pack(0, FAMILY_IPV6, xport, xored)
    raw4 = int.from_bytes(socket.inet_aton(host), "big") ^ MAGIC_COOKIE
    return _ADDRESS_V4.pack(0, FAMILY_IPV4, xport, raw4.to_bytes(4, "big"))


def decode_address(value: bytes) -> Address:
    """Parse a MAPPED-ADDRESS style value; ``StunDecodeError`` when malformed."""
    if len(value) == 8:
        _, family, port, raw = _ADDRESS_V4.unpack(value)
        if family == FAMILY_IPV4:
            return socket.inet_ntoa(raw), port
    elif len(value) == 20:
        _, family, port, raw = _ADDRESS_V6.unpack(value)
        if family == FAMILY_IPV6:
            return socket.inet_ntop(socket.AF_INET6, raw), port
    raise StunDecodeError(f"bad address attribute ({len(value)} bytes)")


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    """Parse an XOR-MAPPED-ADDRESS style value; ``StunDecodeError`` when malformed."""
    if len(value) == 8:
        _, family, xport, raw = _ADDRESS_V4.unpack(value)
        if family == FAMILY_IPV4:
            host = (int.from_bytes(raw, "big") ^ MAGIC_COOKIE).to_bytes(4, "big")
            return socket.inet_ntoa(host), xport ^ _COOKIE_HIGH
    elif len(value) == 20:
        _, family, xport, raw = _ADDRESS_V6.unpack(value)
        if family == FAMILY_IPV6:
            mask = int.from_bytes(MAGIC_COOKIE_BYTES + transaction_id, "big")
            host6 = (int.from_bytes(raw, "big") ^ mask).to_bytes(16, "big")
            return socket.inet_ntop(socket.AF_INET6, host6), xport ^ _COOKIE_HIGH
    raise StunDecodeError(f"bad XOR address attribute ({len(value)} bytes)")


# ---------------------------------------------------------------------------
# Other attribute values


def encode_error_code(code: int, reason: str | None = None) -> bytes:
    """ERROR-CODE value: class (hundreds) and number, then a UTF-8 reason."""
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} outside 300..699")
    text = (reason if reason is not None else ERROR_REASONS.get(code, "")).encode("utf-8")
    return struct.pack("!HBB", 0, code // 100, code % 100) + text[:MAX_TEXT_VALUE_BYTES]


def decode_error_code(value: bytes) -> tuple[int, str]:
    """Parse ERROR-CODE into (code, reason)."""
    if len(value) < 4:
        raise StunDecodeError("ERROR-CODE shorter than 4 bytes")
    error_class = value[2] & 0x07
    number = value[3]
    if not 3 <= error_class <= 6 or number > 99:
        raise StunDecodeError(f"ERROR-CODE class {error_class} number {number} out of range")
    return error_class * 100 + number, value[4:].decode("utf-8", "replace")


def encode_unknown_attributes(types: Iterable[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES value: a list of 16-bit types."""
    listed = list(types)
    return struct.pack(f"!{len(listed)}H", *listed)


def decode_unknown_attributes(value: bytes) -> tuple[int, ...]:
    """Parse UNKNOWN-ATTRIBUTES into its list of types."""
    if len(value) % 2:
        raise StunDecodeError("UNKNOWN-ATTRIBUTES length is odd")
    return struct.unpack(f"!{len(value) // 2}H", value)


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    """CHANGE-REQUEST value (RFC 5780 section 7.2)."""
    return struct.pack(
        "!I", (CHANGE_IP_FLAG if change_ip else 0) | (CHANGE_PORT_FLAG if change_port else 0)
    )


def decode_change_request(value: bytes) -> tuple[bool, bool]:
    """Parse CHANGE-REQUEST into (change_ip, change_port)."""
    if len(value) != 4:
        raise StunDecodeError("CHANGE-REQUEST is not 4 bytes")
    flags = value[3]
    return bool(flags & CHANGE_IP_FLAG), bool(flags & CHANGE_PORT_FLAG)


def decode_response_port(value: bytes) -> int:
    """Parse RESPONSE-PORT (RFC 5780 section 7.5): a port and 2 bytes of padding."""
    if len(value) != 4:
        raise StunDecodeError("RESPONSE-PORT is not 4 bytes")
    port: int = struct.unpack_from("!H", value)[0]
    if port == 0:
        raise StunDecodeError("RESPONSE-PORT is zero")
    return port


def text_value(value: str) -> bytes:
    """The UTF-8 value of a SOFTWARE/REALM/NONCE attribute, refusing overlong text."""
    raw = value.encode("utf-8")
    if len(raw) > MAX_TEXT_VALUE_BYTES:
        raise ValueError(f"text attribute longer than {MAX_TEXT_VALUE_BYTES} bytes")
    return raw


# ---------------------------------------------------------------------------
# Messages


@frozen
class StunMessage:
    """
    One STUN message as on the wire.

    ``attributes`` keeps every attribute, in wire order and including
    MESSAGE-INTEGRITY and FINGERPRINT, as (type, unpadded value).  Values
    stay bytes so that unknown attributes survive untouched; the helper
    methods parse the common ones and raise ``StunDecodeError`` for
    malformed values.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...] = ()
    # RFC 3489 messages have no cookie: these four bytes are then the first
    # part of a 128-bit transaction ID and must be echoed (RFC 5389 s12.2).
    magic_cookie: int = MAGIC_COOKIE

    @property
    def is_classic(self) -> bool:
        """Whether this is an RFC 3489 message (no magic cookie)."""
        return self.magic_cookie != MAGIC_COOKIE

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of this type, or None."""
        for found_type, value in self.attributes:
            if found_type == attr_type:
                return value
        return None

    def attribute_types(self) -> list[int]:
        """The types of all attributes, in wire order."""
        return [found_type for found_type, _ in self.attributes]

    def xor_mapped_address(self) -> Address | None:
        """The XOR-MAPPED-ADDRESS as (host, port), or None."""
        value = self.get(AttributeType.XOR_MAPPED_ADDRESS)
        return None if value is None else decode_xor_address(value, self.transaction_id)

    def mapped_address(self) -> Address | None:
        """The MAPPED-ADDRESS as (host, port), or None."""
        value = self.get(AttributeType.MAPPED_ADDRESS)
        return None if value is None else decode_address(value)

    def reflexive_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 3489 servers), else None."""
        return self.xor_mapped_address() or self.mapped_address()

    def other_address(self) -> Address | None:
        """RFC 5780 OTHER-ADDRESS (or RFC 3489 CHANGED-ADDRESS), or None."""
        value = self.get(AttributeType.OTHER_ADDRESS)
        if value is None:
            value = self.get(AttributeType.CHANGED_ADDRESS)
        return None if value is None else decode_address(value)

    def response_origin(self) -> Address | None:
        """RFC 5780 RESPONSE-ORIGIN (or RFC 3489 SOURCE-ADDRESS), or None."""
        value = self.get(AttributeType.RESPONSE_ORIGIN)
        if value is None:
            value = self.get(AttributeType.SOURCE_ADDRESS)
        return None if value is None else decode_address(value)

    def error_code(self) -> tuple[int, str] | None:
        """The ERROR-CODE as (code, reason), or None."""
        value = self.get(AttributeType.ERROR_CODE)
        return None if value is None else decode_error_code(value)

    def unknown_attributes(self) -> tuple[int, ...]:
        """The types listed in UNKNOWN-ATTRIBUTES (empty when absent)."""
        value = self.get(AttributeType.UNKNOWN_ATTRIBUTES)
        return () if value is None else decode_unknown_attributes(value)

    def change_request(self) -> tuple[bool, bool]:
        """CHANGE-REQUEST flags as (change_ip, change_port); both False when absent."""
        value = self.get(AttributeType.CHANGE_REQUEST)
        return (False, False) if value is None else decode_change_request(value)

    def response_port(self) -> int | None:
        """The RFC 5780 RESPONSE-PORT, or None."""
        value = self.get(AttributeType.RESPONSE_PORT)
        return None if value is None else decode_response_port(value)

    def software(self) -> str | None:
        """The SOFTWARE description, or None."""
        value = self.get(AttributeType.SOFTWARE)
        return None if value is None else value.decode("utf-8", "replace")


def new_transaction_id() -> bytes:
    """A fresh, cryptographically random 96-bit transaction ID (RFC 8489 section 5)."""
    return os.urandom(TRANSACTION_ID_BYTES)


def is_stun(data: bytes) -> bool:
    """
    Cheap demultiplexing test: could these bytes be an RFC 5389+ STUN message?

    Checks the two leading zero bits and the magic cookie (RFC 8489 section
    5); ``decode_message`` still has the final say.
    """
    return len(data) >= HEADER_BYTES and data[0] < 0x40 and data[4:8] == MAGIC_COOKIE_BYTES


def _walk_attributes(data: bytes, end: int) -> list[tuple[int, int, int]]:
    """(type, value offset, value length) for each attribute in data[20:end]."""
    found = []
    offset = HEADER_BYTES
    unpack = _ATTRIBUTE_HEADER.unpack_from
    while offset < end:
        if end - offset < 4:
            raise StunDecodeError("truncated attribute header")
        attr_type, length = unpack(data, offset)
        start = offset + 4
        if start + length > end:
            raise StunDecodeError(f"attribute 0x{attr_type:04x} length {length} overruns message")
        found.append((attr_type, start, length))
        if len(found) > MAX_ATTRIBUTES:
            raise StunDecodeError(f"more than {MAX_ATTRIBUTES} attributes")
        offset = start + _padded(length)
    if offset != end:
        raise StunDecodeError("last attribute padding overruns message")
    return found


def decode_message(data: bytes, *, allow_classic: bool = False) -> StunMessage:
    """
    Parse one complete STUN message (a whole UDP datagram or one TCP frame).

    Validates the header (leading zero bits, magic cookie, length a multiple
    of 4 and equal to the bytes present), every attribute's length against
    the message, and FINGERPRINT when present (it must then be last and
    correct).  Integrity is checked separately with ``verify_integrity``
    since only the caller knows the key.  With ``allow_classic``, RFC 3489
    messages (any cookie value) are accepted and keep their cookie field in
    ``magic_cookie``.
    """
    size = len(data)
    if size < HEADER_BYTES:
        raise StunDecodeError(f"{size} bytes is shorter than a STUN header")
    if size > MAX_MESSAGE_BYTES:
        raise StunDecodeError(f"{size} bytes is longer than any STUN message")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunDecodeError("leading bits are not zero")
    if cookie != MAGIC_COOKIE and not allow_classic:
        raise StunDecodeError("magic cookie missing (RFC 3489 message or not STUN)")
    if length & 3:
        raise StunDecodeError(f"length {length} is not a multiple of 4")
    if HEADER_BYTES + length != size:
        raise StunDecodeError(
            f"length field {length} but {size - HEADER_BYTES} bytes follow the header"
        )
    attributes = []
    walked = _walk_attributes(data, size)
    for index, (attr_type, start, value_length) in enumerate(walked):
        if attr_type == AttributeType.FINGERPRINT:
            if index != len(walked) - 1:
                raise StunDecodeError("FINGERPRINT is not the last attribute")
            if value_length != 4:
                raise StunDecodeError("FINGERPRINT is not 4 bytes")
            (sent,) = struct.unpack_from("!I", data, start)
            if sent != (zlib.crc32(data[: start - 4]) ^ FINGERPRINT_XOR):
                raise StunFingerprintError("FINGERPRINT does not match")
        attributes.append((attr_type, data[start : start + value_length]))
    method, message_class = decode_message_type(message_type)
    return StunMessage(method, message_class, transaction_id, tuple(attributes), cookie)


def _fingerprint_attribute(prefix: bytes | bytearray) -> bytes:
    crc = zlib.crc32(prefix) ^ FINGERPRINT_XOR
    return _FINGERPRINT_ATTRIBUTE.pack(AttributeType.FINGERPRINT, 4, crc)


def encode_attribute(attr_type: int, value: bytes) -> bytes:
    """One attribute on the wire: type, length, value and zero padding."""
    if len(value) > 0xFFFF:
        raise ValueError(f"attribute 0x{attr_type:04x} longer than 65535 bytes")
    return _ATTRIBUTE_HEADER.pack(attr_type, len(value)) + value + bytes(-len(value) % 4)


def _set_length(buffer: bytearray, body_length: int) -> None:
    struct.pack_into("!H", buffer, 2, body_length)


def encode_message(
    msg: StunMessage,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = True,
) -> bytes:
    """
    The wire bytes of ``msg``, optionally signed and fingerprinted.

    The attributes of ``msg`` are written as they are (padded with zeros).
    With ``integrity_key``, MESSAGE-INTEGRITY (HMAC-SHA1) is appended; with
    ``integrity_sha256_key``, MESSAGE-INTEGRITY-SHA256 after it; with
    ``fingerprint``, FINGERPRINT last (RFC 8489 sections 14.5-14.7).  Keys
    come from ``short_term_key`` or ``long_term_key``.
    """
    if len(msg.transaction_id) != TRANSACTION_ID_BYTES:
        raise ValueError("transaction ID must be 12 bytes")
    buffer = bytearray(
        _HEADER.pack(
            encode_message_type(msg.method, msg.message_class),
            0,
            msg.magic_cookie,
            msg.transaction_id,
        )
    )
    pack_attribute = _ATTRIBUTE_HEADER.pack
    for attr_type, value in msg.attributes:
        length = len(value)
        if length > 0xFFFF:
            raise ValueError(f"attribute 0x{attr_type:04x} longer than 65535 bytes")
        buffer += pack_attribute(attr_type, length)
        buffer += value
        if length & 3:
            buffer += b"\x00" * (4 - (length & 3))
    if integrity_key is not None:
        _set_length(buffer, len(buffer) - HEADER_BYTES + 4 + MESSAGE_INTEGRITY_BYTES)
        mac = hmac.digest(integrity_key, bytes(buffer), "sha1")
        buffer += pack_attribute(AttributeType.MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_BYTES) + mac
    if integrity_sha256_key is not None:
        _set_length(buffer, len(buffer) - HEADER_BYTES + 4 + MESSAGE_INTEGRITY_SHA256_BYTES)
        mac = hmac.digest(integrity_sha256_key, bytes(buffer), "sha256")
        buffer += (
            pack_attribute(AttributeType.MESSAGE_INTEGRITY_SHA256, MESSAGE_INTEGRITY_SHA256_BYTES)
            + mac
        )
    if fingerprint:
        _set_length(buffer, len(buffer) - HEADER_BYTES + 8)
        buffer += _fingerprint_attribute(buffer)
    else:
        _set_length(buffer, len(buffer) - HEADER_BYTES)
    if len(buffer) > MAX_MESSAGE_BYTES:
        raise ValueError("STUN message longer than 65555 bytes")
    return bytes(buffer)


def verify_integrity(data: bytes, key: bytes) -> bool:
    """
    Whether the message integrity of ``data`` verifies with ``key``.

    Checks MESSAGE-INTEGRITY (HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 (any
    allowed truncation), whichever are present; False when neither is
    present, when any present one fails, or when ``data`` is not STUN.
    """
    try:
        decode_message(data)
    except StunDecodeError:
        return False
    checked = False
    for attr_type, start, length in _walk_attributes(data, len(data)):
        if attr_type == AttributeType.MESSAGE_INTEGRITY:
            if length != MESSAGE_INTEGRITY_BYTES:
                return False
            algorithm = "sha1"
        elif attr_type == AttributeType.MESSAGE_INTEGRITY_SHA256:
            # RFC 8489 section 14.6: 16 to 32 bytes, a multiple of 4.
            if length < 16 or length > 32 or length & 3:
                return False
            algorithm = "sha256"
        else:
            continue
        prefix = bytearray(data[: start - 4])
        _set_length(prefix, start + length - HEADER_BYTES)
        expected = hmac.digest(key, bytes(prefix), algorithm)[:length]
        if not hmac.compare_digest(expected, data[start : start + length]):
            return False
        checked = True
    return checked


def short_term_key(password: str) -> bytes:
    """The HMAC key of a short-term credential (RFC 8489 section 9.1.1)."""
    # OpaqueString (RFC 8265) processing is left to the caller; plain ASCII
    # passwords are unchanged by it.
    return password.encode("utf-8")


def long_term_key(username: str, realm: str, password: str, algorithm: str = "md5") -> bytes:
    """
    The HMAC key of a long-term credential (RFC 8489 section 9.2.2).

    ``algorithm`` is "md5" (RFC 5389, PASSWORD-ALGORITHM 0x0001) or "sha256"
    (0x0002).  SASLprep/OpaqueString is the caller's job.
    """
    material = f"{username}:{realm}:{password}".encode("utf-8")
    if algorithm == "md5":
        return hashlib.md5(material, usedforsecurity=False).digest()
    if algorithm == "sha256":
        return hashlib.sha256(material).digest()
    raise ValueError(f"unknown password algorithm {algorithm!r}")


def userhash(username: str, realm: str) -> bytes:
    """The USERHASH value (RFC 8489 section 14.4)."""
    return hashlib.sha256(f"{username}:{realm}".encode("utf-8")).digest()


# ---------------------------------------------------------------------------
# Building Binding messages


def binding_request(
    transaction_id: bytes | None = None,
    *,
    change_ip: bool = False,
    change_port: bool = False,
    software: str | None = None,
) -> StunMessage:
    """A Binding request, with RFC 5780 CHANGE-REQUEST when asked to change."""
    attributes: list[Attribute] = []
    if change_ip or change_port:
        attributes.append(
            (AttributeType.CHANGE_REQUEST, encode_change_request(change_ip, change_port))
        )
    if software is not None:
        attributes.append((AttributeType.SOFTWARE, text_value(software)))
    return StunMessage(
        Method.BINDING,
        MessageClass.REQUEST,
        transaction_id if transaction_id is not None else new_transaction_id(),
        tuple(attributes),
    )


def binding_success(
    request: StunMessage,
    mapped: Address,
    *,
    other_address: Address | None = None,
    response_origin: Address | None = None,
    software: str | None = None,
) -> StunMessage:
    """
    The success response to a Binding request.

    It carries XOR-MAPPED-ADDRESS and, for clients that only know RFC 3489's
    attribute, MAPPED-ADDRESS (RFC 8489 section 12); RESPONSE-ORIGIN and
    OTHER-ADDRESS when the server does RFC 5780 behaviour discovery.  An
    RFC 3489 request (no cookie) gets RFC 3489's answer instead: its cookie
    field echoed, MAPPED-ADDRESS, SOURCE-ADDRESS and CHANGED-ADDRESS (RFC
    5389 section 12.2).
    """
    if request.is_classic:
        classic: list[Attribute] = [(AttributeType.MAPPED_ADDRESS, encode_address(mapped))]
        if response_origin is not None:
            classic.append((AttributeType.SOURCE_ADDRESS, encode_address(response_origin)))
        if other_address is not None:
            classic.append((AttributeType.CHANGED_ADDRESS, encode_address(other_address)))
        if software is not None:
            classic.append((AttributeType.SOFTWARE, text_value(software)))
        return StunMessage(
            request.method,
            MessageClass.SUCCESS_RESPONSE,
            request.transaction_id,
            tuple(classic),
            request.magic_cookie,
        )
    attributes: list[Attribute] = [
        (AttributeType.XOR_MAPPED_ADDRESS, encode_xor_address(mapped, request.transaction_id)),
        (AttributeType.MAPPED_ADDRESS, encode_address(mapped)),
    ]
    if response_origin is not None:
        attributes.append((AttributeType.RESPONSE_ORIGIN, encode_address(response_origin)))
    if other_address is not None:
        attributes.append((AttributeType.OTHER_ADDRESS, encode_address(other_address)))
    if software is not None:
        attributes.append((AttributeType.SOFTWARE, text_value(software)))
    return StunMessage(
        request.method, MessageClass.SUCCESS_RESPONSE, request.transaction_id, tuple(attributes)
    )


def error_response(
    request: StunMessage,
    code: int,
    reason: str | None = None,
    *,
    unknown_attributes: Iterable[int] = (),
    software: str | None = None,
) -> StunMessage:
    """An error response to ``request`` (with UNKNOWN-ATTRIBUTES for 420)."""
    attributes: list[Attribute] = [(AttributeType.ERROR_CODE, encode_error_code(code, reason))]
    unknown = list(unknown_attributes)
    if unknown:
        attributes.append((AttributeType.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown)))
    if software is not None:
        attributes.append((AttributeType.SOFTWARE, text_value(software)))
    return StunMessage(
        request.method,
        MessageClass.ERROR_RESPONSE,
        request.transaction_id,
        tuple(attributes),
        request.magic_cookie,
    )


def unknown_required_attributes(msg: StunMessage, understood: Iterable[int]) -> list[int]:
    """
    The comprehension-required types (< 0x8000) in ``msg`` not in ``understood``.

    A request with any of these gets a 420 listing them (RFC 8489 section 6.3.1).
    """
    known = set(understood)
    unknown: list[int] = []
    for attr_type, _ in msg.attributes:
        if attr_type < 0x8000 and attr_type not in known and attr_type not in unknown:
            unknown.append(attr_type)
    return unknown


# ---------------------------------------------------------------------------
# Stream framing


class StunStreamDecoder:
    """
    Splits a TCP byte stream into STUN messages (RFC 8489 section 6.2.2).

    Each message's own length field frames it.  A header that is not STUN,
    or announces more than ``max_message_bytes``, raises
    ``StunDecodeError`` before anything is buffered beyond the header; the
    stream cannot be resynchronised after that, so the decoder stays failed
    and the caller should drop the connection.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_STREAM_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = min(max_message_bytes, MAX_MESSAGE_BYTES)
        self._buffer = bytearray()
        self._failure: StunDecodeError | None = None

    def feed(self, data: bytes) -> list[StunMessage]:
        """Add received bytes; return the messages completed by them."""
        if self._failure is not None:
            raise self._failure
        self._buffer += data
        messages = []
        buffer = self._buffer
        while len(buffer) >= HEADER_BYTES:
            message_type, length = _HEADER_PREFIX.unpack_from(buffer)
            total = HEADER_BYTES + length
            if message_type & 0xC000 or buffer[4:8] != MAGIC_COOKIE_BYTES:
                self._failure = StunDecodeError("stream data is not a STUN message")
            elif length & 3:
                self._failure = StunDecodeError(f"length {length} is not a multiple of 4")
            elif total > self.max_message_bytes:
                self._failure = StunDecodeError(
                    f"message of {total} bytes exceeds the {self.max_message_bytes}-byte limit"
                )
            if self._failure is not None:
                buffer.clear()
                raise self._failure
            if len(buffer) < total:
                break
            frame = bytes(buffer[:total])
            del buffer[:total]
            try:
                messages.append(decode_message(frame))
            except StunDecodeError as e:
                self._failure = e
                buffer.clear()
                raise
        return messages

    @property
    def buffered_bytes(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return len(self._buffer)
