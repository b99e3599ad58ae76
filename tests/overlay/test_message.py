"""Tests for the RELOAD message codec: forwarding header, contents, security block."""

from __future__ import annotations

import hashlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.codec import DecodeError, Limits, Reader
from p2psip.overlay.message import (
    FRAGMENT_UNFRAGMENTED,
    NO_SIGNATURE,
    RELOAD_TOKEN,
    RELOAD_VERSION,
    UNSIGNED,
    Destination,
    DestinationType,
    ErrorCode,
    ForwardingHeader,
    ForwardingOption,
    GenericCertificate,
    Message,
    MessageCode,
    MessageExtension,
    SecurityBlock,
    Signature,
    SignerIdentity,
    SignerIdentityType,
    answer_code,
    decode_message,
    decode_signature,
    encode_contents,
    encode_message,
    encode_signature,
    encode_signer_identity,
    is_request,
    make_header,
    message_signature_input,
    overlay_hash,
    peek_header,
    replace_header,
)

NODE_A = 0x0123456789ABCDEF0123456789ABCDEF
NODE_B = 0xFEDCBA9876543210FEDCBA9876543210

# -- strategies (also used by the body and framing tests) ----------------------

ids = st.integers(min_value=0, max_value=(1 << 128) - 1)
u8 = st.integers(min_value=0, max_value=0xFF)
u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
short_bytes = st.binary(max_size=24)

destinations = st.one_of(
    ids.map(Destination.node),
    ids.map(Destination.resource),
    st.binary(max_size=40).map(Destination.opaque),
    st.integers(min_value=0x8000, max_value=0xFFFF).map(Destination.compressed_id),
)

signer_identities = st.one_of(
    st.just(SignerIdentity(SignerIdentityType.NONE, 0, b"")),
    st.builds(
        SignerIdentity,
        st.sampled_from([SignerIdentityType.CERT_HASH, SignerIdentityType.CERT_HASH_NODE_ID]),
        u8,
        st.binary(max_size=32),
    ),
)

signatures = st.builds(Signature, u8, u8, signer_identities, st.binary(max_size=72))

security_blocks = st.builds(
    SecurityBlock,
    st.lists(st.builds(GenericCertificate, u8, short_bytes), max_size=3).map(tuple),
    signatures,
)

headers = st.builds(
    ForwardingHeader,
    overlay=u32,
    configuration_sequence=u16,
    version=st.just(RELOAD_VERSION),
    ttl=u8,
    fragment=st.just(FRAGMENT_UNFRAGMENTED),
    transaction_id=u64,
    max_response_length=u32,
    via_list=st.lists(destinations, max_size=4).map(tuple),
    destination_list=st.lists(destinations, min_size=1, max_size=4).map(tuple),
    options=st.lists(st.builds(ForwardingOption, u8, u8, short_bytes), max_size=2).map(tuple),
)

messages = st.builds(
    Message,
    header=headers,
    code=u16,
    body=st.binary(max_size=64),
    extensions=st.lists(
        st.builds(MessageExtension, u16, st.booleans(), short_bytes), max_size=2
    ).map(tuple),
    security=security_blocks,
)


def sample_message(**changes: object) -> Message:
    """A small, fully populated message to corrupt in hostile tests."""
    header = make_header(
        overlay_hash("example.org"),
        0x1122334455667788,
        (Destination.node(NODE_B), Destination.resource(NODE_A)),
        via_list=(Destination.node(NODE_A),),
    )
    identity = SignerIdentity(SignerIdentityType.CERT_HASH, 4, b"\x07" * 32)
    fields: dict[str, object] = dict(
        header=header,
        code=MessageCode.PING_REQ,
        body=b"\x00\x02hi",
        extensions=(MessageExtension(7, False, b"ext"),),
        security=SecurityBlock(
            (GenericCertificate(0, b"certificate"),), Signature(4, 3, identity, b"sig")
        ),
    )
    fields.update(changes)
    return Message(**fields)  # type: ignore[arg-type]


class ConstantsTests(SynchronousTestCase):
    def test_codes(self) -> None:
        """Message and error codes match the IANA registries of RFC 6940 s14.8 and s14.9."""
        self.assertEqual(MessageCode.ROUTE_QUERY_REQ, 21)
        self.assertEqual(MessageCode.CONFIG_UPDATE_ANS, 34)
        self.assertEqual(ErrorCode.INVALID_MESSAGE, 20)
        self.assertEqual(ErrorCode.UNKNOWN_KIND, 12)

    def test_request_answer(self) -> None:
        """Requests are odd, answers are request + 1, and the error code is no request."""
        self.assertTrue(is_request(MessageCode.PING_REQ))
        self.assertFalse(is_request(MessageCode.PING_ANS))
        self.assertFalse(is_request(MessageCode.ERROR))
        self.assertEqual(answer_code(MessageCode.STORE_REQ), MessageCode.STORE_ANS)
        self.assertRaises(ValueError, answer_code, MessageCode.STORE_ANS)

    def test_overlay_hash(self) -> None:
        """The overlay field is the low-order 32 bits of SHA-1 of the overlay name."""
        digest = hashlib.sha1(b"example.org").digest()
        self.assertEqual(overlay_hash("example.org"), struct.unpack(">I", digest[16:])[0])


class HeaderLayoutTests(SynchronousTestCase):
    def test_fixed_fields(self) -> None:
        """The fixed header fields sit at the offsets RFC 6940 s6.3.2 gives them."""
        message = sample_message()
        data = encode_message(message)
        (token, overlay, config, version, ttl, fragment, length, txid, max_response) = (
            struct.unpack_from(">IIHBBIIQI", data)
        )
        self.assertEqual(
            (token, overlay, config, version, ttl, fragment, length, txid, max_response),
            (
                RELOAD_TOKEN,
                overlay_hash("example.org"),
                0,
                RELOAD_VERSION,
                100,
                FRAGMENT_UNFRAGMENTED,
                len(data),
                0x1122334455667788,
                0,
            ),
        )
        via_length, destination_length, options_length = struct.unpack_from(">HHH", data, 32)
        # via: one node (2 + 16); destinations: node (18) + resource (2 + 1 + 16).
        self.assertEqual((via_length, destination_length, options_length), (18, 37, 0))

    def test_destination_forms(self) -> None:
        """Each destination form has the RFC's bytes, including the resource id length."""
        header = make_header(
            1,
            2,
            (
                Destination.node(1),
                Destination.resource(2),
                Destination.opaque(b"ab"),
                Destination.compressed_id(0x8001),
            ),
        )
        data = encode_message(Message(header, MessageCode.PING_REQ, b""))
        destination_bytes = data[38 : 38 + struct.unpack_from(">H", data, 34)[0]]
        self.assertEqual(
            destination_bytes,
            b"\x01\x10"
            + (1).to_bytes(16, "big")
            + b"\x02\x11\x10"
            + (2).to_bytes(16, "big")
            + b"\x03\x03\x02ab"
            + b"\x80\x01",
        )

    def test_unsigned_security_block(self) -> None:
        """An unsigned message ends with no certificates and an empty 'none' signature."""
        data = encode_message(Message(make_header(1, 2, (Destination.node(3),)), 23, b""))
        # certificates<0> | hash 0 | sig 0 | identity none, length 0 | signature<0>
        self.assertTrue(data.endswith(b"\x00\x00" + b"\x00\x00" + b"\x03\x00\x00" + b"\x00\x00"))

    def test_contents_layout(self) -> None:
        """MessageContents is code, uint32-prefixed body, uint32-prefixed extensions."""
        contents = encode_contents(23, b"xy", (MessageExtension(5, True, b"e"),))
        self.assertEqual(
            contents,
            b"\x00\x17"
            + b"\x00\x00\x00\x02xy"
            + b"\x00\x00\x00\x08"
            + b"\x00\x05\x01\x00\x00\x00\x01e",
        )

    def test_signer_identity(self) -> None:
        """A SignerIdentity is type, uint16 length, hash algorithm and a uint8-prefixed hash."""
        identity = SignerIdentity(SignerIdentityType.CERT_HASH, 4, b"ab")
        self.assertEqual(encode_signer_identity(identity), b"\x01\x00\x04\x04\x02ab")
        none = SignerIdentity(SignerIdentityType.NONE, 0, b"")
        self.assertEqual(encode_signer_identity(none), b"\x03\x00\x00")
        bad = SignerIdentity(SignerIdentityType.NONE, 4, b"x")
        self.assertRaises(ValueError, encode_signer_identity, bad)

    def test_signature_input(self) -> None:
        """The signed bytes are overlay, transaction id, contents, then signer identity."""
        identity = SignerIdentity(SignerIdentityType.CERT_HASH, 4, b"h")
        contents = encode_contents(23, b"", ())
        self.assertEqual(
            message_signature_input(0xAABBCCDD, 9, contents, identity),
            b"\xaa\xbb\xcc\xdd" + (9).to_bytes(8, "big") + contents + b"\x01\x00\x03\x04\x01h",
        )


class RoundTripTests(SynchronousTestCase):
    def test_sample(self) -> None:
        """A populated message survives encode and decode unchanged."""
        message = sample_message()
        self.assertEqual(decode_message(encode_message(message)), message)

    def test_defaults(self) -> None:
        """A message with default extensions and security block round-trips."""
        message = Message(make_header(1, 2, (Destination.node(3),)), MessageCode.JOIN_REQ, b"")
        self.assertEqual(decode_message(encode_message(message)), message)
        self.assertEqual(message.security, UNSIGNED)

    def test_signature_helpers(self) -> None:
        """encode_signature and decode_signature are inverse."""
        signature = Signature(
            4, 3, SignerIdentity(SignerIdentityType.CERT_HASH_NODE_ID, 4, b"x"), b"v"
        )
        self.assertEqual(decode_signature(Reader(encode_signature(signature))), signature)
        self.assertEqual(decode_signature(Reader(encode_signature(NO_SIGNATURE))), NO_SIGNATURE)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(messages)
    def test_any_message(self, message: Message) -> None:
        """Any message round-trips, and re-encoding its decoding gives the same bytes."""
        data = encode_message(message)
        decoded = decode_message(data)
        self.assertEqual(decoded, message)
        self.assertEqual(encode_message(decoded), data)
        self.assertEqual(peek_header(data), message.header)

    @settings(max_examples=100, deadline=None)
    @given(messages, headers)
    def test_replace_header(self, message: Message, header: ForwardingHeader) -> None:
        """Replacing the header keeps contents and security and fixes the length."""
        data = encode_message(message)
        replaced = replace_header(data, header)
        self.assertEqual(
            decode_message(replaced),
            Message(header, message.code, message.body, message.extensions, message.security),
        )


class ForwardingTests(SynchronousTestCase):
    def test_push_via(self) -> None:
        """A forwarding peer can pop a destination and push a via without touching the rest."""
        message = sample_message()
        data = encode_message(message)
        old = peek_header(data)
        new = ForwardingHeader(
            old.overlay,
            old.configuration_sequence,
            old.version,
            old.ttl - 1,
            old.fragment,
            old.transaction_id,
            old.max_response_length,
            old.via_list + (Destination.node(NODE_B),),
            old.destination_list[1:],
            old.options,
        )
        replaced = replace_header(data, new)
        self.assertEqual(replaced[-40:], data[-40:])
        self.assertEqual(peek_header(replaced), new)
        self.assertEqual(decode_message(replaced).body, message.body)

    def test_encode_needs_destination(self) -> None:
        """Encoding a header without destinations is a programming error."""
        header = make_header(1, 2, ())
        self.assertRaises(ValueError, encode_message, Message(header, 23, b""))

    def test_encode_range_checked(self) -> None:
        """Values that do not fit their field are rejected when encoding."""
        header = make_header(1, 1 << 64, (Destination.node(1),))
        self.assertRaises(ValueError, encode_message, Message(header, 23, b""))


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


class HostileInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data = encode_message(sample_message())

    def test_wrong_token(self) -> None:
        """A message that does not start with the RELOAD token is refused."""
        self.assertRaises(DecodeError, decode_message, _patch(self.data, 0, b"\x00"))

    def test_wrong_version(self) -> None:
        """A message of another protocol version is refused."""
        self.assertRaises(DecodeError, decode_message, _patch(self.data, 10, b"\x01"))

    def test_length_past_buffer(self) -> None:
        """A length field larger than the bytes received is refused."""
        patched = _patch(self.data, 16, struct.pack(">I", len(self.data) + 1))
        self.assertRaises(DecodeError, decode_message, patched)

    def test_length_short(self) -> None:
        """A length field smaller than the bytes received is refused."""
        patched = _patch(self.data, 16, struct.pack(">I", len(self.data) - 1))
        self.assertRaises(DecodeError, decode_message, patched)

    def test_length_past_limit(self) -> None:
        """A message larger than the configured limit is refused before it is parsed."""
        limits = Limits(max_message_bytes=len(self.data) - 1)
        self.assertRaises(DecodeError, decode_message, self.data, limits)
        self.assertRaises(DecodeError, peek_header, self.data, limits)

    def test_huge_length(self) -> None:
        """A 2**32-1 length field is refused."""
        patched = _patch(self.data, 16, b"\xff\xff\xff\xff")
        self.assertRaises(DecodeError, decode_message, patched)

    def test_fragment_refused(self) -> None:
        """A fragment (not the whole message) is refused: there is no reassembly."""
        patched = _patch(self.data, 12, struct.pack(">I", 0x80000000))
        self.assertRaises(DecodeError, decode_message, patched)

    def test_trailing_bytes(self) -> None:
        """Bytes after the security block are refused even when length counts them."""
        data = self.data + b"\x00"
        data = _patch(data, 16, struct.pack(">I", len(data)))
        self.assertRaises(DecodeError, decode_message, data)

    def test_too_many_vias(self) -> None:
        """A via list longer than the limit is refused."""
        header = make_header(
            1, 2, (Destination.node(1),), via_list=tuple(Destination.node(i) for i in range(5))
        )
        data = encode_message(Message(header, 23, b""))
        self.assertRaises(DecodeError, decode_message, data, Limits(max_via=4))
        self.assertEqual(len(decode_message(data, Limits(max_via=5)).header.via_list), 5)

    def test_too_many_destinations(self) -> None:
        """A destination list longer than the limit is refused."""
        header = make_header(1, 2, tuple(Destination.node(i) for i in range(3)))
        data = encode_message(Message(header, 23, b""))
        self.assertRaises(DecodeError, decode_message, data, Limits(max_destinations=2))

    def test_too_many_certificates(self) -> None:
        """More certificates than the limit are refused."""
        certificates = tuple(GenericCertificate(0, b"c") for _ in range(3))
        data = encode_message(sample_message(security=SecurityBlock(certificates, NO_SIGNATURE)))
        self.assertRaises(DecodeError, decode_message, data, Limits(max_certificates=2))

    def test_huge_body_length(self) -> None:
        """A 2**32-1 body length is refused without allocating."""
        header = make_header(1, 2, (Destination.node(1),))
        data = encode_message(Message(header, 23, b""))
        offset = 38 + 18 + 2  # header with one node destination, then message_code
        self.assertRaises(DecodeError, decode_message, _patch(data, offset, b"\xff\xff\xff\xff"))

    def test_huge_extensions_length(self) -> None:
        """A 2**32-1 extensions length is refused."""
        header = make_header(1, 2, (Destination.node(1),))
        data = encode_message(Message(header, 23, b""))
        offset = 38 + 18 + 2 + 4  # ... message_code, body<0>
        self.assertRaises(DecodeError, decode_message, _patch(data, offset, b"\xff\xff\xff\xff"))

    def test_huge_certificates_length(self) -> None:
        """A 2**16-1 certificates length past the end is refused."""
        header = make_header(1, 2, (Destination.node(1),))
        data = encode_message(Message(header, 23, b""))
        offset = 38 + 18 + 2 + 4 + 4  # ... extensions<0>
        self.assertRaises(DecodeError, decode_message, _patch(data, offset, b"\xff\xff"))

    def test_unknown_message_code(self) -> None:
        """An unassigned message code still decodes, so the node can answer it with an error."""
        data = encode_message(Message(make_header(1, 2, (Destination.node(1),)), 0x7777, b"x"))
        self.assertEqual(decode_message(data).code, 0x7777)

    def test_empty_destinations(self) -> None:
        """A header whose destination list is empty is refused."""
        header = make_header(1, 2, (Destination.node(1),))
        data = encode_message(Message(header, 23, b""))
        stripped = data[:34] + b"\x00\x00" + data[36:38] + data[56:]
        stripped = _patch(stripped, 16, struct.pack(">I", len(stripped)))
        self.assertRaises(DecodeError, decode_message, stripped)

    def test_unknown_destination_type(self) -> None:
        """A destination of an unassigned type is refused."""
        self.assertRaises(DecodeError, decode_message, _patch(self.data, 38, b"\x07"))

    def test_bad_boolean(self) -> None:
        """A Boolean other than 0 or 1 is refused so that re-encoding is exact."""
        header = make_header(1, 2, (Destination.node(1),))
        message = Message(header, 23, b"", (MessageExtension(1, True, b""),))
        data = encode_message(message)
        offset = 38 + 18 + 2 + 4 + 4 + 2  # ... body<0>, extensions length, type
        self.assertEqual(data[offset], 1)
        self.assertRaises(DecodeError, decode_message, _patch(data, offset, b"\x02"))

    def test_empty_and_short(self) -> None:
        """Empty input and every prefix of a message are refused."""
        for end in range(len(self.data)):
            self.assertRaises(DecodeError, decode_message, self.data[:end])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage(self, data: bytes) -> None:
        """Random bytes raise nothing but DecodeError."""
        try:
            decode_message(data)
        except DecodeError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=160))
    def test_garbage_after_token(self, tail: bytes) -> None:
        """Random bytes behind a valid token and length raise nothing but DecodeError."""
        data = (
            struct.pack(
                ">IIHBBII",
                RELOAD_TOKEN,
                1,
                0,
                RELOAD_VERSION,
                100,
                FRAGMENT_UNFRAGMENTED,
                20 + len(tail),
            )
            + tail
        )
        try:
            decode_message(data)
        except DecodeError:
            pass

    @settings(max_examples=150, deadline=None)
    @given(messages, st.data())
    def test_truncation(self, message: Message, data: st.DataObject) -> None:
        """Any truncation of a valid message raises DecodeError."""
        encoded = encode_message(message)
        end = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        self.assertRaises(DecodeError, decode_message, encoded[:end])

    @settings(max_examples=300, deadline=None)
    @given(messages, st.data())
    def test_corruption(self, message: Message, data: st.DataObject) -> None:
        """Changing one byte of a valid message raises nothing but DecodeError."""
        encoded = encode_message(message)
        offset = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        value = data.draw(st.integers(min_value=0, max_value=255))
        corrupted = _patch(encoded, offset, bytes([value]))
        try:
            decoded = decode_message(corrupted)
        except DecodeError:
            return
        # Whatever still decodes must re-encode to the very same bytes.
        self.assertEqual(encode_message(decoded), corrupted)

    def test_destination_type_enum(self) -> None:
        """Destination types carry the RFC values."""
        self.assertEqual(
            [DestinationType.NODE, DestinationType.RESOURCE, DestinationType.OPAQUE_ID], [1, 2, 3]
        )
