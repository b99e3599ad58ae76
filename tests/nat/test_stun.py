"""Tests for the STUN codec: RFC 5769 / RFC 8489 vectors, round trips, hostile input."""

from __future__ import annotations

import struct
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import stun
from p2psip.nat.stun import AttributeType, MessageClass, StunDecodeError
from p2psip.testing import shared_path

SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LONG_TERM_REALM = "example.org"
LONG_TERM_PASSWORD = "TheMatrIX"  # after SASLprep / OpaqueString
RFC5769_TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
LONG_TERM_TXID = bytes.fromhex("78ad3433c6ad72c029da412e")


def vector(folder: str, name: str) -> bytes:
    """The bytes of one shared test vector."""
    return shared_path("testdata", folder, name).read_bytes()


class Rfc5769VectorTests(SynchronousTestCase):
    def test_request_decodes(self) -> None:
        """The s2.1 request decodes to a Binding request with its six attributes."""
        msg = stun.decode_message(vector("stun-rfc5769", "sample-request.bin"))
        self.assertEqual(
            (msg.method, msg.message_class), (stun.Method.BINDING, MessageClass.REQUEST)
        )
        self.assertEqual(msg.transaction_id, RFC5769_TXID)
        self.assertEqual(
            msg.attribute_types(),
            [0x8022, 0x0024, 0x8029, 0x0006, 0x0008, 0x8028],
        )
        self.assertEqual(msg.software(), "STUN test client")
        self.assertEqual(msg.get(AttributeType.USERNAME), b"evtj:h6vY")
        self.assertEqual(msg.get(AttributeType.PRIORITY), bytes.fromhex("6e0001ff"))

    def test_request_short_term_integrity(self) -> None:
        """The s2.1 MESSAGE-INTEGRITY verifies with the short-term password and not otherwise."""
        data = vector("stun-rfc5769", "sample-request.bin")
        self.assertTrue(stun.verify_integrity(data, stun.short_term_key(SHORT_TERM_PASSWORD)))
        self.assertFalse(stun.verify_integrity(data, b"wrong"))

    def test_ipv4_response(self) -> None:
        """The s2.2 response gives 192.0.2.1:32853 and its integrity verifies."""
        data = vector("stun-rfc5769", "sample-ipv4-response.bin")
        msg = stun.decode_message(data)
        self.assertEqual(msg.message_class, MessageClass.SUCCESS_RESPONSE)
        self.assertEqual(msg.xor_mapped_address(), ("192.0.2.1", 32853))
        self.assertEqual(msg.software(), "test vector")
        self.assertTrue(stun.verify_integrity(data, stun.short_term_key(SHORT_TERM_PASSWORD)))

    def test_ipv6_response(self) -> None:
        """The s2.3 response gives the stated IPv6 address and its integrity verifies."""
        data = vector("stun-rfc5769", "sample-ipv6-response.bin")
        msg = stun.decode_message(data)
        self.assertEqual(msg.xor_mapped_address(), ("2001:db8:1234:5678:11:2233:4455:6677", 32853))
        self.assertTrue(stun.verify_integrity(data, stun.short_term_key(SHORT_TERM_PASSWORD)))

    def test_long_term_key(self) -> None:
        """The s2.4 long-term key is MD5(username:realm:password) as the RFC states."""
        key = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)
        self.assertEqual(key.hex(), "e8ca7ad59d5eb0518e312911d2dab2a9")

    def test_long_term_request_integrity(self) -> None:
        """The s2.4 MESSAGE-INTEGRITY verifies with the long-term key and not the short-term one."""
        data = vector("stun-rfc5769", "sample-request-long-term-auth.bin")
        key = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)
        self.assertTrue(stun.verify_integrity(data, key))
        self.assertFalse(stun.verify_integrity(data, stun.short_term_key(SHORT_TERM_PASSWORD)))

    def test_long_term_request_encodes_bit_exact(self) -> None:
        """Encoding the s2.4 attributes with the long-term key reproduces the vector byte for byte."""
        data = vector("stun-rfc5769", "sample-request-long-term-auth.bin")
        msg = stun.decode_message(data)
        unsigned = stun.StunMessage(
            msg.method,
            msg.message_class,
            msg.transaction_id,
            tuple(a for a in msg.attributes if a[0] != AttributeType.MESSAGE_INTEGRITY),
        )
        key = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)
        self.assertEqual(stun.encode_message(unsigned, integrity_key=key, fingerprint=False), data)

    def test_fingerprint_checked(self) -> None:
        """The vectors' FINGERPRINTs pass, and changing a covered padding byte fails them."""
        for name in ["sample-request.bin", "sample-ipv4-response.bin", "sample-ipv6-response.bin"]:
            data = vector("stun-rfc5769", name)
            self.assertEqual(stun.decode_message(data).attribute_types()[-1], 0x8028)
            tampered = bytearray(data)
            tampered[35] ^= 0x01  # inside the SOFTWARE value or its padding
            self.assertRaises(StunDecodeError, stun.decode_message, bytes(tampered))

    def test_xor_address_encoding(self) -> None:
        """Our XOR-MAPPED-ADDRESS encoding equals the vectors' for IPv4 and IPv6."""
        for name, address in [
            ("sample-ipv4-response.bin", ("192.0.2.1", 32853)),
            ("sample-ipv6-response.bin", ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
        ]:
            msg = stun.decode_message(vector("stun-rfc5769", name))
            self.assertEqual(
                stun.encode_xor_address(address, RFC5769_TXID),
                msg.get(AttributeType.XOR_MAPPED_ADDRESS),
            )


class Rfc8489VectorTests(SynchronousTestCase):
    NAME = "b1-long-term-sha256-userhash-erratum6268.bin"

    def test_sha256_integrity(self) -> None:
        """The B.1 MESSAGE-INTEGRITY-SHA256 verifies with the SHA-256 long-term key only."""
        data = vector("stun-rfc8489", self.NAME)
        good = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD, "sha256")
        self.assertTrue(stun.verify_integrity(data, good))
        md5 = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD)
        self.assertFalse(stun.verify_integrity(data, md5))

    def test_userhash(self) -> None:
        """USERHASH in B.1 is SHA-256 of username:realm."""
        msg = stun.decode_message(vector("stun-rfc8489", self.NAME))
        self.assertEqual(
            msg.get(AttributeType.USERHASH), stun.userhash(LONG_TERM_USERNAME, LONG_TERM_REALM)
        )

    def test_encodes_bit_exact(self) -> None:
        """Encoding the B.1 attributes with the SHA-256 key reproduces the vector byte for byte."""
        data = vector("stun-rfc8489", self.NAME)
        msg = stun.decode_message(data)
        unsigned = stun.StunMessage(
            msg.method,
            msg.message_class,
            msg.transaction_id,
            tuple(a for a in msg.attributes if a[0] != AttributeType.MESSAGE_INTEGRITY_SHA256),
        )
        key = stun.long_term_key(LONG_TERM_USERNAME, LONG_TERM_REALM, LONG_TERM_PASSWORD, "sha256")
        self.assertEqual(
            stun.encode_message(unsigned, integrity_sha256_key=key, fingerprint=False), data
        )


class MessageTypeTests(SynchronousTestCase):
    def test_known_types(self) -> None:
        """Binding request/indication/success/error are 0x0001/0x0011/0x0101/0x0111."""
        expected = {
            MessageClass.REQUEST: 0x0001,
            MessageClass.INDICATION: 0x0011,
            MessageClass.SUCCESS_RESPONSE: 0x0101,
            MessageClass.ERROR_RESPONSE: 0x0111,
        }
        for message_class, value in expected.items():
            self.assertEqual(stun.encode_message_type(1, message_class), value)
            self.assertEqual(stun.decode_message_type(value), (1, message_class))

    @settings(deadline=None)
    @given(st.integers(0, 0xFFF), st.sampled_from(list(MessageClass)))
    def test_round_trip(self, method: int, message_class: MessageClass) -> None:
        """Every method and class survives the bit interleaving."""
        encoded = stun.encode_message_type(method, message_class)
        self.assertLess(encoded, 0x4000)
        self.assertEqual(stun.decode_message_type(encoded), (method, message_class))


class BindingTests(SynchronousTestCase):
    def test_request_with_change(self) -> None:
        """A change request carries CHANGE-REQUEST with both flags and SOFTWARE."""
        request = stun.binding_request(change_ip=True, change_port=True, software="p2psip")
        decoded = stun.decode_message(stun.encode_message(request))
        self.assertEqual(decoded.change_request(), (True, True))
        self.assertEqual(decoded.software(), "p2psip")
        self.assertEqual(len(decoded.transaction_id), 12)
        self.assertEqual(decoded.attribute_types()[-1], AttributeType.FINGERPRINT)

    def test_plain_request_has_no_change_request(self) -> None:
        """A plain Binding request is a bare header plus FINGERPRINT."""
        data = stun.encode_message(stun.binding_request(b"x" * 12))
        self.assertEqual(len(data), 28)
        self.assertEqual(stun.decode_message(data).change_request(), (False, False))

    def test_success_carries_addresses(self) -> None:
        """A success response carries the mapped, origin and other addresses."""
        request = stun.binding_request()
        response = stun.binding_success(
            request,
            ("198.51.100.7", 4000),
            other_address=("203.0.113.2", 3479),
            response_origin=("203.0.113.1", 3478),
            software="p2psip",
        )
        decoded = stun.decode_message(stun.encode_message(response))
        self.assertEqual(decoded.transaction_id, request.transaction_id)
        self.assertEqual(decoded.xor_mapped_address(), ("198.51.100.7", 4000))
        self.assertEqual(decoded.mapped_address(), ("198.51.100.7", 4000))
        self.assertEqual(decoded.other_address(), ("203.0.113.2", 3479))
        self.assertEqual(decoded.response_origin(), ("203.0.113.1", 3478))

    def test_ipv6_success(self) -> None:
        """IPv6 mapped addresses round-trip through both address attributes."""
        response = stun.binding_success(stun.binding_request(), ("2001:db8::1", 5))
        decoded = stun.decode_message(stun.encode_message(response))
        self.assertEqual(decoded.xor_mapped_address(), ("2001:db8::1", 5))
        self.assertEqual(decoded.mapped_address(), ("2001:db8::1", 5))

    def test_error_response(self) -> None:
        """A 420 lists the unknown attributes and reads back as (420, reason)."""
        response = stun.error_response(
            stun.binding_request(), 420, unknown_attributes=[0x7777, 0x10]
        )
        decoded = stun.decode_message(stun.encode_message(response))
        self.assertEqual(decoded.message_class, MessageClass.ERROR_RESPONSE)
        self.assertEqual(decoded.error_code(), (420, "Unknown Attribute"))
        self.assertEqual(decoded.unknown_attributes(), (0x7777, 0x10))

    def test_unknown_required_attributes(self) -> None:
        """Only comprehension-required types outside the understood set are reported."""
        msg = stun.StunMessage(
            1,
            MessageClass.REQUEST,
            b"t" * 12,
            ((0x7777, b""), (0x8888, b""), (0x0003, b"\0\0\0\0")),
        )
        self.assertEqual(stun.unknown_required_attributes(msg, {0x0003}), [0x7777])

    def test_is_stun(self) -> None:
        """The demux check accepts STUN and rejects RTP-like and short data."""
        self.assertTrue(stun.is_stun(stun.encode_message(stun.binding_request())))
        self.assertFalse(stun.is_stun(b"\x80" + b"\x00" * 30))
        self.assertFalse(stun.is_stun(b"\x00\x01\x00\x00\x21\x12\xa4"))


def _header(length: int, message_type: int = 1, cookie: int = stun.MAGIC_COOKIE) -> bytes:
    return struct.pack("!HHI", message_type, length, cookie) + b"T" * 12


class HostileInputTests(SynchronousTestCase):
    def assertRejected(self, data: bytes) -> None:
        self.assertRaises(StunDecodeError, stun.decode_message, data)

    def test_short(self) -> None:
        """Fewer than 20 bytes are rejected."""
        for size in range(20):
            self.assertRejected(_header(0)[:size])

    def test_bad_leading_bits(self) -> None:
        """A message type with either top bit set is rejected."""
        self.assertRejected(_header(0, message_type=0x8001))
        self.assertRejected(_header(0, message_type=0x4001))

    def test_no_cookie(self) -> None:
        """An RFC 3489 style header without the magic cookie is rejected unless classic is allowed."""
        self.assertRejected(_header(0, cookie=0x12345678))
        msg = stun.decode_message(_header(0, cookie=0x12345678), allow_classic=True)
        self.assertTrue(msg.is_classic)
        self.assertEqual(msg.magic_cookie, 0x12345678)
        self.assertEqual(stun.encode_message(msg, fingerprint=False), _header(0, cookie=0x12345678))

    def test_length_mismatch(self) -> None:
        """A length field that disagrees with the bytes present is rejected both ways."""
        self.assertRejected(_header(4))
        self.assertRejected(_header(0) + b"\0\0\0\0")
        self.assertRejected(_header(0xFFFC) + b"\0" * 8)

    def test_unaligned_length(self) -> None:
        """A length that is not a multiple of 4 is rejected."""
        self.assertRejected(_header(2) + b"\0\0")

    def test_attribute_overrun(self) -> None:
        """An attribute whose length runs past the message is rejected."""
        self.assertRejected(_header(8) + struct.pack("!HH", 0x8022, 0xFFFF) + b"abcd")
        self.assertRejected(_header(8) + struct.pack("!HH", 0x8022, 5) + b"abcd")

    def test_bad_fingerprint(self) -> None:
        """A wrong FINGERPRINT, or one that is not last, is rejected."""
        data = bytearray(stun.encode_message(stun.binding_request()))
        data[-1] ^= 1
        self.assertRejected(bytes(data))
        good = stun.encode_message(stun.binding_request(software="x"))
        moved = stun.decode_message(good)
        reordered = stun.StunMessage(
            moved.method, moved.message_class, moved.transaction_id, moved.attributes[::-1]
        )
        self.assertRejected(stun.encode_message(reordered, fingerprint=False))

    def test_too_many_attributes(self) -> None:
        """More attributes than any real message has are rejected."""
        body = struct.pack("!HH", 0x8022, 0) * (stun.MAX_ATTRIBUTES + 1)
        self.assertRejected(_header(len(body)) + body)
        body = struct.pack("!HH", 0x8022, 0) * stun.MAX_ATTRIBUTES
        self.assertEqual(
            len(stun.decode_message(_header(len(body)) + body).attributes), stun.MAX_ATTRIBUTES
        )

    def test_oversized(self) -> None:
        """Data longer than any STUN message is rejected without parsing."""
        self.assertRejected(_header(0xFFFC) + b"\0" * 0x10000)

    def test_bad_attribute_values(self) -> None:
        """Malformed address, error-code and change-request values raise only StunDecodeError."""
        cases = [
            (AttributeType.XOR_MAPPED_ADDRESS, b"\0\x01\0", "xor_mapped_address"),
            (AttributeType.XOR_MAPPED_ADDRESS, b"\0\x03\0\0\0\0\0\0", "xor_mapped_address"),
            (AttributeType.MAPPED_ADDRESS, b"\0\x02" + b"\0" * 6, "mapped_address"),
            (AttributeType.OTHER_ADDRESS, b"", "other_address"),
            (AttributeType.RESPONSE_ORIGIN, b"\0" * 20, "response_origin"),
            (AttributeType.ERROR_CODE, b"\0\0", "error_code"),
            (AttributeType.ERROR_CODE, b"\0\0\x09\x00", "error_code"),
            (AttributeType.UNKNOWN_ATTRIBUTES, b"\0", "unknown_attributes"),
            (AttributeType.CHANGE_REQUEST, b"\0", "change_request"),
            (AttributeType.RESPONSE_PORT, b"\0", "response_port"),
        ]
        for attr_type, value, helper in cases:
            msg = stun.decode_message(
                stun.encode_message(
                    stun.StunMessage(1, MessageClass.REQUEST, b"t" * 12, ((attr_type, value),))
                )
            )
            self.assertRaises(StunDecodeError, getattr(msg, helper))

    def test_integrity_on_garbage(self) -> None:
        """verify_integrity answers False for garbage and for unsigned messages."""
        self.assertFalse(stun.verify_integrity(b"garbage", b"k"))
        self.assertFalse(stun.verify_integrity(stun.encode_message(stun.binding_request()), b"k"))

    @settings(deadline=None)
    @given(st.binary(max_size=200))
    def test_garbage_raises_only_decode_error(self, data: bytes) -> None:
        """Arbitrary bytes either decode or raise StunDecodeError."""
        try:
            stun.decode_message(data)
        except StunDecodeError:
            pass

    @settings(deadline=None)
    @given(st.binary(max_size=120), st.integers(0, 0xFFFF))
    def test_valid_header_garbage_body(self, body: bytes, message_type: int) -> None:
        """A correct header over arbitrary attribute bytes decodes or raises StunDecodeError, and helpers too."""
        data = _header(len(body), message_type & 0x3FFF) + body
        try:
            msg = stun.decode_message(data)
        except StunDecodeError:
            return
        for helper in (
            msg.xor_mapped_address,
            msg.mapped_address,
            msg.other_address,
            msg.response_origin,
            msg.error_code,
            msg.unknown_attributes,
            msg.change_request,
            msg.response_port,
            msg.software,
        ):
            try:
                helper()
            except StunDecodeError:
                pass
        stun.verify_integrity(data, b"key")

    @settings(deadline=None)
    @given(st.binary(min_size=20, max_size=100), st.data())
    def test_mutated_message(self, _seed: bytes, data: st.DataObject) -> None:
        """Flipping bytes of a valid signed message never raises anything but StunDecodeError."""
        original = bytearray(
            stun.encode_message(
                stun.binding_success(stun.binding_request(), ("192.0.2.1", 9), software="s"),
                integrity_key=b"k",
            )
        )
        for _ in range(data.draw(st.integers(1, 4))):
            index = data.draw(st.integers(0, len(original) - 1))
            original[index] = data.draw(st.integers(0, 255))
        try:
            stun.decode_message(bytes(original))
        except StunDecodeError:
            pass
        stun.verify_integrity(bytes(original), b"k")


attribute_values = st.lists(
    st.tuples(
        st.integers(0, 0xFFFF).filter(
            lambda t: (
                t
                not in (
                    AttributeType.FINGERPRINT,
                    AttributeType.MESSAGE_INTEGRITY,
                    AttributeType.MESSAGE_INTEGRITY_SHA256,
                )
            )
        ),
        st.binary(max_size=40),
    ),
    max_size=6,
)


class RoundTripTests(SynchronousTestCase):
    @given(
        st.integers(0, 0xFFF),
        st.sampled_from(list(MessageClass)),
        st.binary(min_size=12, max_size=12),
        attribute_values,
        st.booleans(),
    )
    @settings(max_examples=200, deadline=None)
    def test_encode_decode(
        self,
        method: int,
        message_class: MessageClass,
        transaction_id: bytes,
        attributes: list[tuple[int, bytes]],
        fingerprint: bool,
    ) -> None:
        """decode(encode(m)) is m, plus FINGERPRINT when one was asked for."""
        msg = stun.StunMessage(method, message_class, transaction_id, tuple(attributes))
        decoded = stun.decode_message(stun.encode_message(msg, fingerprint=fingerprint))
        self.assertEqual(decoded.attributes[: len(attributes)], msg.attributes)
        self.assertEqual(
            (decoded.method, decoded.message_class, decoded.transaction_id),
            (method, message_class, transaction_id),
        )
        self.assertEqual(len(decoded.attributes), len(attributes) + fingerprint)

    @settings(deadline=None)
    @given(attribute_values, st.binary(min_size=1, max_size=32))
    def test_signed_verifies(self, attributes: list[tuple[int, bytes]], key: bytes) -> None:
        """A message signed with a key verifies with it (both algorithms) and not with another."""
        msg = stun.StunMessage(1, MessageClass.REQUEST, b"0123456789ab", tuple(attributes))
        data = stun.encode_message(msg, integrity_key=key, integrity_sha256_key=key)
        self.assertTrue(stun.verify_integrity(data, key))
        self.assertFalse(stun.verify_integrity(data, key + b"x"))

    @settings(deadline=None)
    @given(
        st.one_of(
            st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 0xFFFF)),
            st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 0xFFFF)),
        ),
        st.binary(min_size=12, max_size=12),
    )
    def test_addresses(self, address: tuple[str, int], transaction_id: bytes) -> None:
        """IPv4 and IPv6 addresses survive both address encodings."""
        host, port = address
        for decoded_host, decoded_port in [
            stun.decode_address(stun.encode_address(address)),
            stun.decode_xor_address(
                stun.encode_xor_address(address, transaction_id), transaction_id
            ),
        ]:
            self.assertEqual(ip_address(decoded_host), ip_address(host))
            self.assertEqual(decoded_port, port)


class StreamDecoderTests(SynchronousTestCase):
    def test_byte_at_a_time(self) -> None:
        """Messages fed one byte at a time come out whole, in order."""
        first = stun.encode_message(stun.binding_request(software="one"))
        second = stun.encode_message(stun.binding_request(software="two"))
        decoder = stun.StunStreamDecoder()
        out = []
        for byte in first + second:
            out.extend(decoder.feed(bytes([byte])))
        self.assertEqual([m.software() for m in out], ["one", "two"])
        self.assertEqual(decoder.buffered_bytes, 0)

    def test_several_in_one_chunk(self) -> None:
        """Several messages in one chunk all come out."""
        data = b"".join(stun.encode_message(stun.binding_request()) for _ in range(3))
        self.assertEqual(len(stun.StunStreamDecoder().feed(data)), 3)

    def test_oversized_announced(self) -> None:
        """A header announcing more than the cap fails at once, before the body arrives."""
        decoder = stun.StunStreamDecoder(max_message_bytes=100)
        self.assertRaises(StunDecodeError, decoder.feed, _header(0xFFFC))
        self.assertEqual(decoder.buffered_bytes, 0)

    def test_not_stun(self) -> None:
        """A non-STUN stream fails, and stays failed."""
        decoder = stun.StunStreamDecoder()
        self.assertRaises(StunDecodeError, decoder.feed, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRaises(
            StunDecodeError, decoder.feed, stun.encode_message(stun.binding_request())
        )

    @settings(deadline=None)
    @given(st.lists(st.binary(max_size=64), max_size=8))
    def test_garbage_stream(self, chunks: list[bytes]) -> None:
        """Arbitrary chunks either yield messages or raise StunDecodeError, and never buffer past the cap."""
        decoder = stun.StunStreamDecoder(max_message_bytes=256)
        for chunk in chunks:
            try:
                decoder.feed(chunk)
            except StunDecodeError:
                return
            self.assertLessEqual(decoder.buffered_bytes, 256 + 64)
