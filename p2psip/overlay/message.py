"""
RELOAD messages on the wire: forwarding header, contents and security block.

RFC 6940 section 6.3 defines a message as three parts::

    ForwardingHeader (s6.3.2)
        uint32 relo_token = 0xd2454c4f     uint32 overlay (low 32 bits of SHA-1(name))
        uint16 configuration_sequence      uint8 version (10)   uint8 ttl
        uint32 fragment (0xc0000000 = unfragmented)
        uint32 length (whole message)      uint64 transaction_id
        uint32 max_response_length
        uint16 via_list_length  uint16 destination_list_length  uint16 options_length
            (all three are byte counts)
        Destination via_list[], destination_list[]; ForwardingOption options[]
    MessageContents (s6.3.3)
        uint16 message_code; opaque message_body<0..2^32-1>;
        MessageExtension extensions<0..2^32-1>
    SecurityBlock (s6.3.4)
        GenericCertificate certificates<0..2^16-1>; Signature signature

A Destination (s6.3.2.2) is ``type(1) length(1) data``: a 16-byte Node-ID,
a ResourceId (``opaque<0..2^8-1>``, so one more length byte), or an opaque
id (``opaque<0..2^8-1>``); or, when the first byte has its high bit set, a
2-byte compressed id.

The message body stays as bytes here; :mod:`p2psip.overlay.bodies` decodes
it.  Decoding is strict (booleans are 0 or 1, no trailing bytes, every
length exact), so decoding and re-encoding gives the same bytes; that is
what lets a node verify a signature over re-encoded contents, and what
lets a forwarding peer swap only the header (:func:`replace_header`).
"""

from __future__ import annotations

import functools
import hashlib
import struct
from enum import IntEnum

from attrs import frozen

from p2psip.overlay.codec import DEFAULT_LIMITS, DecodeError, Limits, Reader, Writer

__all__ = [
    "DEFAULT_TTL",
    "FRAGMENT_UNFRAGMENTED",
    "NO_SIGNATURE",
    "HEADER_FIXED_BYTES",
    "RELOAD_TOKEN",
    "RELOAD_VERSION",
    "UNSIGNED",
    "Destination",
    "DestinationType",
    "ErrorCode",
    "ForwardingHeader",
    "ForwardingOption",
    "GenericCertificate",
    "Message",
    "MessageCode",
    "MessageExtension",
    "SecurityBlock",
    "Signature",
    "SignerIdentity",
    "SignerIdentityType",
    "answer_code",
    "decode_destination",
    "decode_message",
    "decode_signed_message",
    "decode_signature",
    "decode_signer_identity",
    "encode_contents",
    "encode_destination",
    "encode_header",
    "encode_message",
    "encode_message_parts",
    "encode_signature",
    "encode_signer_identity",
    "is_request",
    "make_header",
    "message_signature_input",
    "overlay_hash",
    "peek_header",
    "peek_message",
    "PeekedMessage",
    "replace_header",
]

RELOAD_TOKEN = 0xD2454C4F
RELOAD_VERSION = 10
# High bit set "for historical reasons", next bit = last (here: only) fragment.
FRAGMENT_UNFRAGMENTED = 0xC0000000
_FRAGMENT_FLAG = 0x80000000
_FRAGMENT_LAST = 0x40000000
_FRAGMENT_OFFSET_MASK = 0x00FFFFFF
DEFAULT_TTL = 100
# Fixed part of the forwarding header, in bytes, up to options_length.
HEADER_FIXED_BYTES = 38
_OVERLAY_AND_TRANSACTION = struct.Struct(">IQ")
#: The header's fixed fields, in order, with their widths in bits.
_HEADER_FIELDS = (
    ("relo_token", 32),
    ("overlay", 32),
    ("configuration_sequence", 16),
    ("version", 8),
    ("ttl", 8),
    ("fragment", 32),
    ("length", 32),
    ("transaction_id", 64),
    ("max_response_length", 32),
    ("via_list_length", 16),
    ("destination_list_length", 16),
    ("options_length", 16),
)
_HEADER_FIXED = struct.Struct(">IIHBBIIQIHHH")
_ID_LIMIT = 1 << 128


def overlay_hash(name: str) -> int:
    """The header's ``overlay`` field: low-order 32 bits of SHA-1 of the name (s6.3.2)."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[-4:], "big")


class MessageCode(IntEnum):
    """Message codes, RFC 6940 s14.8: requests are odd, answers are request + 1."""

    PROBE_REQ = 1
    PROBE_ANS = 2
    ATTACH_REQ = 3
    ATTACH_ANS = 4
    STORE_REQ = 7
    STORE_ANS = 8
    FETCH_REQ = 9
    FETCH_ANS = 10
    FIND_REQ = 13
    FIND_ANS = 14
    JOIN_REQ = 15
    JOIN_ANS = 16
    LEAVE_REQ = 17
    LEAVE_ANS = 18
    UPDATE_REQ = 19
    UPDATE_ANS = 20
    ROUTE_QUERY_REQ = 21
    ROUTE_QUERY_ANS = 22
    PING_REQ = 23
    PING_ANS = 24
    STAT_REQ = 25
    STAT_ANS = 26
    APP_ATTACH_REQ = 29
    APP_ATTACH_ANS = 30
    CONFIG_UPDATE_REQ = 33
    CONFIG_UPDATE_ANS = 34
    ERROR = 0xFFFF


def is_request(code: int) -> bool:
    """Requests have odd codes; 0xffff (error) is odd but is an answer."""
    return code != MessageCode.ERROR and code % 2 == 1


def answer_code(request_code: int) -> int:
    """The code of the answer to a request."""
    if not is_request(request_code):
        raise ValueError(f"message code {request_code} is not a request")
    return request_code + 1


class ErrorCode(IntEnum):
    """Error codes carried in ErrorResponse, RFC 6940 s14.9."""

    FORBIDDEN = 2
    NOT_FOUND = 3
    REQUEST_TIMEOUT = 4
    GENERATION_COUNTER_TOO_LOW = 5
    INCOMPATIBLE_WITH_OVERLAY = 6
    UNSUPPORTED_FORWARDING_OPTION = 7
    DATA_TOO_LARGE = 8
    DATA_TOO_OLD = 9
    TTL_EXCEEDED = 10
    MESSAGE_TOO_LARGE = 11
    UNKNOWN_KIND = 12
    UNKNOWN_EXTENSION = 13
    RESPONSE_TOO_LARGE = 14
    CONFIG_TOO_OLD = 15
    CONFIG_TOO_NEW = 16
    IN_PROGRESS = 17
    EXP_A = 18
    EXP_B = 19
    INVALID_MESSAGE = 20


class DestinationType(IntEnum):
    NODE = 1
    RESOURCE = 2
    OPAQUE_ID = 3


@frozen
class Destination:
    """
    One hop of a via or destination list.

    ``value`` is an int for NODE and RESOURCE (16-byte ids) and bytes for
    OPAQUE_ID.  ``compressed`` marks the 2-byte form (s6.3.2.2) whose first
    byte has its high bit set; its ``value`` is those two bytes.
    """

    type: DestinationType
    value: int | bytes
    compressed: bool = False

    @classmethod
    def node(cls, node_id: int) -> Destination:
        return cls(DestinationType.NODE, node_id)

    @classmethod
    def resource(cls, resource_id: int) -> Destination:
        return cls(DestinationType.RESOURCE, resource_id)

    @classmethod
    def opaque(cls, opaque_id: bytes) -> Destination:
        return cls(DestinationType.OPAQUE_ID, opaque_id)

    @classmethod
    def compressed_id(cls, value: int) -> Destination:
        """The 2-byte compressed form; ``value`` must have bit 15 set."""
        if not 0x8000 <= value <= 0xFFFF:
            raise ValueError(f"compressed destination {value:#x} needs its high bit set")
        return cls(DestinationType.OPAQUE_ID, value.to_bytes(2, "big"), compressed=True)


@frozen
class ForwardingOption:
    type: int
    flags: int
    value: bytes


@frozen
class ForwardingHeader:
    overlay: int
    configuration_sequence: int
    version: int
    ttl: int
    fragment: int
    transaction_id: int
    max_response_length: int
    via_list: tuple[Destination, ...]
    destination_list: tuple[Destination, ...]
    options: tuple[ForwardingOption, ...]


def make_header(
    overlay: int,
    transaction_id: int,
    destination_list: tuple[Destination, ...],
    *,
    configuration_sequence: int = 0,
    ttl: int = DEFAULT_TTL,
    max_response_length: int = 0,
    via_list: tuple[Destination, ...] = (),
    options: tuple[ForwardingOption, ...] = (),
) -> ForwardingHeader:
    """A header for a new, unfragmented message of this protocol version."""
    return ForwardingHeader(
        overlay=overlay,
        configuration_sequence=configuration_sequence,
        version=RELOAD_VERSION,
        ttl=ttl,
        fragment=FRAGMENT_UNFRAGMENTED,
        transaction_id=transaction_id,
        max_response_length=max_response_length,
        via_list=via_list,
        destination_list=destination_list,
        options=options,
    )


@frozen
class MessageExtension:
    type: int
    critical: bool
    contents: bytes


@frozen
class GenericCertificate:
    type: int
    certificate: bytes


class SignerIdentityType(IntEnum):
    CERT_HASH = 1
    CERT_HASH_NODE_ID = 2
    NONE = 3


@frozen
class SignerIdentity:
    """Who signed: a hash of their certificate (empty ``value`` for NONE)."""

    identity_type: SignerIdentityType
    hash_algorithm: int
    value: bytes


@frozen
class Signature:
    """
    A Signature (s6.3.4): TLS SignatureAndHashAlgorithm (hash sha256=4,
    signature ecdsa=3, rsa=1), signer identity and signature bytes.
    """

    hash_algorithm: int
    signature_algorithm: int
    identity: SignerIdentity
    value: bytes


@frozen
class SecurityBlock:
    certificates: tuple[GenericCertificate, ...]
    signature: Signature


# An unsigned message still carries a Signature structure: hash "none" (0),
# signature "anonymous" (0), identity none, empty value.
NO_SIGNATURE = Signature(0, 0, SignerIdentity(SignerIdentityType.NONE, 0, b""), b"")
UNSIGNED = SecurityBlock((), NO_SIGNATURE)


@frozen
class Message:
    header: ForwardingHeader
    code: int
    body: bytes
    extensions: tuple[MessageExtension, ...] = ()
    security: SecurityBlock = UNSIGNED


# -- Destinations -----------------------------------------------------------


_NODE_DESTINATION_PREFIX = bytes((DestinationType.NODE, 16))


def _encode_destination(writer: Writer, destination: Destination) -> None:
    value = destination.value
    if destination.compressed:
        if (
            destination.type != DestinationType.OPAQUE_ID
            or not isinstance(value, bytes)
            or len(value) != 2
            or not value[0] & 0x80
        ):
            raise ValueError("a compressed destination is two bytes with the high bit set")
        writer.raw(value)
        return
    if destination.type == DestinationType.NODE:
        if not isinstance(value, int):
            raise ValueError("a NODE destination needs an int Node-ID")
        writer.u8(DestinationType.NODE).u8(16).id128(value, "destination node id")
    elif destination.type == DestinationType.RESOURCE:
        if not isinstance(value, int):
            raise ValueError("a RESOURCE destination needs an int Resource-ID")
        writer.u8(DestinationType.RESOURCE).u8(17).u8(16).id128(value, "destination resource id")
    elif destination.type == DestinationType.OPAQUE_ID:
        if not isinstance(value, bytes) or len(value) > 254:
            raise ValueError("an OPAQUE_ID destination needs at most 254 bytes")
        writer.u8(DestinationType.OPAQUE_ID).u8(1 + len(value)).opaque(1, value)
    else:
        raise ValueError(f"unknown destination type {destination.type!r}")


def _decode_destination(reader: Reader) -> Destination:
    start = reader.offset
    raw = reader.data
    if start + 18 <= reader.end and raw[start] == DestinationType.NODE and raw[start + 1] == 16:
        # The common case, a Node-ID, read in one step.
        reader.offset = start + 18
        return Destination(DestinationType.NODE, int.from_bytes(raw[start + 2 : start + 18], "big"))
    first = reader.u8("destination type")
    if first & 0x80:
        second = reader.u8("compressed destination")
        return Destination(DestinationType.OPAQUE_ID, bytes((first, second)), compressed=True)
    length = reader.u8("destination length")
    data = reader.fixed(length, "destination data")
    result: Destination
    if first == DestinationType.NODE:
        result = Destination(DestinationType.NODE, data.id128("destination node id"))
    elif first == DestinationType.RESOURCE:
        resource = data.opaque(1, "destination resource id")
        if len(resource) != 16:
            raise DecodeError(f"resource id of {len(resource)} bytes, expected 16")
        result = Destination(DestinationType.RESOURCE, int.from_bytes(resource, "big"))
    elif first == DestinationType.OPAQUE_ID:
        result = Destination(DestinationType.OPAQUE_ID, data.opaque(1, "destination opaque id"))
    else:
        raise DecodeError(f"unknown destination type {first}")
    data.expect_end("destination")
    return result


def encode_destination(destination: Destination) -> bytes:
    """One Destination structure (also used inside RouteQueryReq)."""
    writer = Writer()
    _encode_destination(writer, destination)
    return writer.getvalue()


def decode_destination(reader: Reader) -> Destination:
    """Read one Destination structure from ``reader``."""
    return _decode_destination(reader)


def _encode_destination_list(destinations: tuple[Destination, ...], what: str) -> bytes:
    if not destinations:
        return b""
    parts = []
    for destination in destinations:
        value = destination.value
        if (
            destination.type == DestinationType.NODE
            and not destination.compressed
            and isinstance(value, int)
            and 0 <= value < _ID_LIMIT
        ):
            parts.append(_NODE_DESTINATION_PREFIX + value.to_bytes(16, "big"))
        else:
            writer = Writer()
            _encode_destination(writer, destination)
            parts.append(writer.getvalue())
    encoded = b"".join(parts)
    if len(encoded) > 0xFFFF:
        raise ValueError(f"{what} is longer than 65535 bytes")
    return encoded


def _decode_destination_list(reader: Reader, limit: int, what: str) -> tuple[Destination, ...]:
    result: list[Destination] = []
    while not reader.at_end():
        reader.check_count(len(result) + 1, limit, what)
        result.append(_decode_destination(reader))
    return tuple(result)


# -- Forwarding header --------------------------------------------------------


def _encode_options(options: tuple[ForwardingOption, ...]) -> bytes:
    writer = Writer()
    for option in options:
        writer.u8(option.type, "option type").u8(option.flags, "option flags")
        writer.opaque(2, option.value, "option value")
    if len(writer) > 0xFFFF:
        raise ValueError("forwarding options are longer than 65535 bytes")
    return writer.getvalue()


def encode_header(header: ForwardingHeader, rest_length: int) -> bytes:
    """
    The forwarding header of a message whose contents and security block
    take ``rest_length`` bytes (the header's ``length`` covers both).
    """
    if not header.destination_list:
        raise ValueError("a message needs at least one destination")
    via = _encode_destination_list(header.via_list, "via list")
    destinations = _encode_destination_list(header.destination_list, "destination list")
    options = _encode_options(header.options) if header.options else b""
    total = HEADER_FIXED_BYTES + len(via) + len(destinations) + len(options) + rest_length
    fields = (
        RELOAD_TOKEN,
        header.overlay,
        header.configuration_sequence,
        header.version,
        header.ttl,
        header.fragment,
        total,
        header.transaction_id,
        header.max_response_length,
        len(via),
        len(destinations),
        len(options),
    )
    try:
        fixed = _HEADER_FIXED.pack(*fields)
    except struct.error:
        # Say which field does not fit, as the Writer would.
        writer = Writer()
        for (name, width), value in zip(_HEADER_FIELDS, fields):
            getattr(writer, f"u{width}")(value, name)
        raise AssertionError("unreachable: a header field did not fit") from None
    return b"".join((fixed, via, destinations, options))


def _decode_header(data: bytes, limits: Limits) -> tuple[ForwardingHeader, Reader]:
    """The header and a reader positioned just after it, over the whole message."""
    if len(data) > limits.max_message_bytes:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit")
    if len(data) < HEADER_FIXED_BYTES:
        # Decoded field by field only to name the field that is cut off.
        short = Reader(data, limits=limits)
        for name, width in _HEADER_FIELDS:
            if name == "relo_token" and len(data) >= 4 and short.u32(name) != RELOAD_TOKEN:
                raise DecodeError(
                    f"not a RELOAD message (token {int.from_bytes(data[:4], 'big'):#010x})"
                )
            if name != "relo_token":
                getattr(short, f"u{width}")(name)
        raise AssertionError("unreachable: a short header decoded")
    (
        token,
        overlay,
        configuration_sequence,
        version,
        ttl,
        fragment,
        length,
        transaction_id,
        max_response_length,
        via_length,
        destination_length,
        options_length,
    ) = _HEADER_FIXED.unpack_from(data)
    if token != RELOAD_TOKEN:
        raise DecodeError(f"not a RELOAD message (token {token:#010x})")
    if version != RELOAD_VERSION:
        raise DecodeError(f"unsupported RELOAD version {version}")
    if length > limits.max_message_bytes:
        raise DecodeError(f"message length {length} exceeds the limit")
    if length != len(data):
        raise DecodeError(f"length field says {length} bytes but the message has {len(data)}")
    reader = Reader(data, HEADER_FIXED_BYTES, limits=limits)
    via_list = _decode_destination_list(
        reader.fixed(via_length, "via list"), limits.max_via, "via list"
    )
    destination_list = _decode_destination_list(
        reader.fixed(destination_length, "destination list"),
        limits.max_destinations,
        "destination list",
    )
    if not destination_list:
        raise DecodeError("empty destination list")
    options_reader = reader.fixed(options_length, "forwarding options")
    options: list[ForwardingOption] = []
    while not options_reader.at_end():
        reader.check_count(len(options) + 1, limits.max_list_items, "forwarding options")
        option_type = options_reader.u8("option type")
        flags = options_reader.u8("option flags")
        options.append(
            ForwardingOption(option_type, flags, options_reader.opaque(2, "option value"))
        )
    header = ForwardingHeader(
        overlay=overlay,
        configuration_sequence=configuration_sequence,
        version=version,
        ttl=ttl,
        fragment=fragment,
        transaction_id=transaction_id,
        max_response_length=max_response_length,
        via_list=via_list,
        destination_list=destination_list,
        options=tuple(options),
    )
    return header, reader


def peek_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> ForwardingHeader:
    """
    Decode only the forwarding header, as a peer that forwards the message
    needs; the contents and security block are not looked at.
    """
    return _decode_header(data, limits)[0]


def replace_header(
    data: bytes, header: ForwardingHeader, contents_offset: int | None = None
) -> bytes:
    """
    The message with a new forwarding header in front of its unchanged
    contents and security block, with ``length`` fixed up.

    Forwarding peers push or pop vias and destinations this way without
    re-encoding the signed part of the message.  ``contents_offset`` (from
    :func:`peek_message`) saves decoding the old header once more.
    """
    if contents_offset is None:
        limits = Limits(max_message_bytes=max(len(data), DEFAULT_LIMITS.max_message_bytes))
        contents_offset = _decode_header(data, limits)[1].offset
    rest = data[contents_offset:]
    return encode_header(header, len(rest)) + rest


# -- Contents -----------------------------------------------------------------


def encode_contents(code: int, body: bytes, extensions: tuple[MessageExtension, ...] = ()) -> bytes:
    """The MessageContents bytes (code, body, extensions), as signed."""
    extension_writer = Writer()
    for extension in extensions:
        extension_writer.u16(extension.type, "extension type").boolean(extension.critical)
        extension_writer.opaque(4, extension.contents, "extension contents")
    writer = Writer()
    writer.u16(code, "message_code")
    writer.opaque(4, body, "message body")
    writer.opaque(4, extension_writer.getvalue(), "extensions")
    return writer.getvalue()


def _decode_extensions(reader: Reader) -> tuple[MessageExtension, ...]:
    result: list[MessageExtension] = []
    while not reader.at_end():
        reader.check_count(len(result) + 1, reader.limits.max_list_items, "extensions")
        extension_type = reader.u16("extension type")
        critical = reader.boolean("extension critical flag")
        result.append(
            MessageExtension(extension_type, critical, reader.opaque(4, "extension contents"))
        )
    return tuple(result)


# -- Security block -----------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def encode_signer_identity(identity: SignerIdentity) -> bytes:
    """
    A SignerIdentity: type, uint16 length, then hash algorithm and hash.

    Every signature input and security block holds one, and a node signs
    with a handful of identities: the encodings are remembered (bounded).
    """
    inner = Writer()
    if identity.identity_type in (
        SignerIdentityType.CERT_HASH,
        SignerIdentityType.CERT_HASH_NODE_ID,
    ):
        inner.u8(identity.hash_algorithm, "identity hash algorithm")
        inner.opaque(1, identity.value, "certificate hash")
    elif identity.identity_type != SignerIdentityType.NONE:
        raise ValueError(f"unknown signer identity type {identity.identity_type!r}")
    elif identity.hash_algorithm or identity.value:
        raise ValueError("a 'none' signer identity carries no hash algorithm or value")
    writer = Writer()
    writer.u8(identity.identity_type).opaque(2, inner.getvalue(), "signer identity")
    return writer.getvalue()


def decode_signer_identity(reader: Reader) -> SignerIdentity:
    """Read one SignerIdentity."""
    identity_type = reader.u8("signer identity type")
    inner = reader.vector(2, "signer identity")
    if identity_type == SignerIdentityType.NONE:
        inner.expect_end("signer identity none")
        return SignerIdentity(SignerIdentityType.NONE, 0, b"")
    if identity_type not in (SignerIdentityType.CERT_HASH, SignerIdentityType.CERT_HASH_NODE_ID):
        raise DecodeError(f"unknown signer identity type {identity_type}")
    hash_algorithm = inner.u8("identity hash algorithm")
    value = inner.opaque(1, "certificate hash")
    inner.expect_end("signer identity")
    return SignerIdentity(SignerIdentityType(identity_type), hash_algorithm, value)


def encode_signature(signature: Signature) -> bytes:
    """A Signature structure (s6.3.4), also used in StoredData (s7.1)."""
    writer = Writer()
    writer.u8(signature.hash_algorithm, "hash algorithm")
    writer.u8(signature.signature_algorithm, "signature algorithm")
    writer.raw(encode_signer_identity(signature.identity))
    writer.opaque(2, signature.value, "signature value")
    return writer.getvalue()


def decode_signature(reader: Reader) -> Signature:
    """Read one Signature structure."""
    hash_algorithm = reader.u8("hash algorithm")
    signature_algorithm = reader.u8("signature algorithm")
    identity = decode_signer_identity(reader)
    value = reader.opaque(2, "signature value")
    return Signature(hash_algorithm, signature_algorithm, identity, value)


def _encode_security_block(security: SecurityBlock) -> bytes:
    certificates = Writer()
    for certificate in security.certificates:
        certificates.u8(certificate.type, "certificate type")
        certificates.opaque(2, certificate.certificate, "certificate")
    writer = Writer()
    writer.opaque(2, certificates.getvalue(), "certificates")
    writer.raw(encode_signature(security.signature))
    return writer.getvalue()


def _decode_security_block(reader: Reader) -> tuple[SecurityBlock, bytes]:
    """The security block, and its signer identity's bytes as they came (for the signature input)."""
    certificate_reader = reader.vector(2, "certificates")
    certificates: list[GenericCertificate] = []
    while not certificate_reader.at_end():
        reader.check_count(len(certificates) + 1, reader.limits.max_certificates, "certificates")
        certificate_type = certificate_reader.u8("certificate type")
        certificates.append(
            GenericCertificate(certificate_type, certificate_reader.opaque(2, "certificate"))
        )
    hash_algorithm = reader.u8("hash algorithm")
    signature_algorithm = reader.u8("signature algorithm")
    identity_start = reader.offset
    identity = decode_signer_identity(reader)
    identity_bytes = reader.data[identity_start : reader.offset]
    value = reader.opaque(2, "signature value")
    signature = Signature(hash_algorithm, signature_algorithm, identity, value)
    return SecurityBlock(tuple(certificates), signature), identity_bytes


def message_signature_input(
    overlay: int, transaction_id: int, contents: bytes, identity: SignerIdentity
) -> bytes:
    """
    The bytes a message signature covers (s6.3.4):
    overlay || transaction_id || MessageContents || SignerIdentity.

    The header is left out because forwarding peers change it.
    """
    return _signature_input(overlay, transaction_id, contents, encode_signer_identity(identity))


def _signature_input(
    overlay: int, transaction_id: int, contents: bytes, identity_bytes: bytes
) -> bytes:
    if not 0 <= overlay <= 0xFFFFFFFF or not 0 <= transaction_id <= 0xFFFFFFFFFFFFFFFF:
        raise ValueError("overlay or transaction_id out of range")
    return b"".join(
        (_OVERLAY_AND_TRANSACTION.pack(overlay, transaction_id), contents, identity_bytes)
    )


# -- Whole messages -------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """The wire form of a whole message; ``length`` is computed."""
    contents = encode_contents(message.code, message.body, message.extensions)
    return encode_message_parts(message.header, contents, message.security)


def encode_message_parts(
    header: ForwardingHeader, contents: bytes, security: SecurityBlock
) -> bytes:
    """
    A whole message from its header, its encoded MessageContents (the
    bytes its sender just signed) and its security block.
    """
    rest = contents + _encode_security_block(security)
    return encode_header(header, len(rest)) + rest


@frozen
class PeekedMessage:
    """
    What a node reads of a message before deciding where it goes: the
    forwarding header, the message code, and where the contents start (so
    neither forwarding nor the full decode reads the header again).
    """

    header: ForwardingHeader
    code: int
    contents_offset: int


def peek_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> PeekedMessage:
    """
    The forwarding header and the message code, without decoding the rest.

    A forwarding peer needs to know whether it carries a request or an
    answer (answers retrace the request's path link by link; requests are
    routed by the ring) but must not pay for a full decode.
    """
    header, reader = _decode_header(data, limits)
    offset = reader.offset
    return PeekedMessage(header, reader.u16("message_code"), offset)


def decode_signed_message(
    data: bytes, limits: Limits = DEFAULT_LIMITS, peeked: PeekedMessage | None = None
) -> tuple[Message, bytes]:
    """
    Decode a whole, unfragmented message; also the bytes its signature covers.

    The signature input is sliced from ``data`` (the decoding is strict, so
    these are the bytes re-encoding would give), not built again.
    ``peeked`` is :func:`peek_message`'s result for ``data``, if already
    taken: the header is then not decoded a second time.

    :raises DecodeError: for anything that is not exactly one valid message,
        including a fragment (this implementation does not reassemble).
    """
    if peeked is None:
        header, reader = _decode_header(data, limits)
    else:
        header = peeked.header
        reader = Reader(data, peeked.contents_offset, limits=limits)
    fragment = header.fragment
    if (
        not fragment & _FRAGMENT_FLAG
        or not fragment & _FRAGMENT_LAST
        or (fragment & _FRAGMENT_OFFSET_MASK)
    ):
        raise DecodeError(f"fragmented message ({fragment:#010x}) is not supported")
    contents_start = reader.offset
    code = reader.u16("message_code")
    body = reader.opaque(4, "message body")
    extensions = _decode_extensions(reader.vector(4, "extensions"))
    contents = data[contents_start : reader.offset]
    security, identity_bytes = _decode_security_block(reader)
    reader.expect_end("message")
    signed = _signature_input(header.overlay, header.transaction_id, contents, identity_bytes)
    return Message(header, code, body, extensions, security), signed


def decode_message(
    data: bytes, limits: Limits = DEFAULT_LIMITS, peeked: PeekedMessage | None = None
) -> Message:
    """Decode a whole, unfragmented message; see :func:`decode_signed_message`."""
    return decode_signed_message(data, limits, peeked)[0]


def peek_code(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[ForwardingHeader, int]:
    """The forwarding header and the message code; see :func:`peek_message`."""
    peeked = peek_message(data, limits)
    return peeked.header, peeked.code
