"""Tests for the SIP usage's RELOAD structures (RFC 7904 SipRegistration) and their codec."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import message
from p2psip.overlay.kinds import DEFAULT_KINDS, user_match_resource
from p2psip.usages.sip import (
    MAX_DESTINATIONS,
    SIP_REGISTRATION_KIND,
    SIP_REGISTRATION_ROUTE,
    SIP_REGISTRATION_URI,
    DecodeError,
    Destination,
    SipRegistration,
    decode_registration,
    encode_registration,
    key_node_id,
    registration_key,
    registration_resource_name,
)
from p2psip.util.ids import id_to_bytes, resource_id
from tests.overlay.test_message import destinations

NODE_A = 0x0123456789ABCDEF0123456789ABCDEF
NODE_B = 0xFEDCBA9876543210FEDCBA9876543210

node_ids = st.integers(min_value=0, max_value=(1 << 128) - 1)
registrations = st.one_of(
    st.builds(SipRegistration, st.just(SIP_REGISTRATION_URI), uri=st.text(max_size=100)),
    st.builds(
        SipRegistration,
        st.just(SIP_REGISTRATION_ROUTE),
        contact_prefs=st.text(max_size=200),
        destination_list=st.lists(destinations, max_size=5).map(tuple),
    ),
    st.builds(
        SipRegistration,
        st.integers(min_value=3, max_value=255),
        unknown=st.binary(max_size=40),
    ),
)


def route_value(prefs: bytes, destination_list: bytes) -> bytes:
    """A route registration built by hand from its two length-prefixed fields."""
    body = struct.pack(">H", len(prefs)) + prefs
    body += struct.pack(">H", len(destination_list)) + destination_list
    return b"\x02" + struct.pack(">H", len(body)) + body


class WireFormTests(SynchronousTestCase):
    def test_uri(self) -> None:
        """A uri registration is type 1, a length, and a length-prefixed URI."""
        wire = encode_registration(SipRegistration(SIP_REGISTRATION_URI, uri="sip:a@b"))
        self.assertEqual(wire, b"\x01\x00\x09\x00\x07sip:a@b")

    def test_route(self) -> None:
        """A route registration carries contact_prefs then a list of node destinations."""
        registration = SipRegistration.route("x", NODE_A)
        wire = encode_registration(registration)
        self.assertEqual(wire, route_value(b"x", b"\x01\x10" + id_to_bytes(NODE_A)))
        self.assertEqual(decode_registration(wire), registration)

    def test_other_destinations(self) -> None:
        """Resource, opaque and compressed destinations are RELOAD's own Destination bytes."""
        listed = (
            Destination.resource(NODE_B),
            Destination.opaque(b"op"),
            Destination.compressed_id(0x8123),
        )
        wire = encode_registration(SipRegistration(SIP_REGISTRATION_ROUTE, destination_list=listed))
        expected = b"\x02\x11\x10" + id_to_bytes(NODE_B) + b"\x03\x03\x02op" + b"\x81\x23"
        self.assertEqual(wire, route_value(b"", expected))
        self.assertEqual(decode_registration(wire).destination_list, listed)

    def test_one_destination_codec(self) -> None:
        """The usage's Destination is the overlay's, so the node has one codec for it."""
        self.assertIs(Destination, message.Destination)

    def test_kind(self) -> None:
        """SIP-REGISTRATION is Kind 1, a dictionary in the overlay's Kind table."""
        kind = DEFAULT_KINDS[SIP_REGISTRATION_KIND]
        self.assertEqual((kind.kind_id, kind.name), (1, "SIP-REGISTRATION"))

    def test_dictionary_key(self) -> None:
        """The dictionary key is the storing peer's Node-ID; other keys name no node."""
        self.assertEqual(registration_key(NODE_A), id_to_bytes(NODE_A))
        self.assertEqual(key_node_id(registration_key(NODE_B)), NODE_B)
        self.assertEqual([key_node_id(b""), key_node_id(b"k" * 15)], [None, None])

    def test_node_ids(self) -> None:
        """node_ids lists the node destinations in order and skips the others."""
        registration = SipRegistration(
            SIP_REGISTRATION_ROUTE,
            destination_list=(
                Destination.node(NODE_B),
                Destination.resource(NODE_A),
                Destination.node(NODE_A),
            ),
        )
        self.assertEqual(registration.node_ids, (NODE_B, NODE_A))

    def test_unknown_type_kept(self) -> None:
        """An unknown registration type decodes with its body kept aside, and re-encodes."""
        registration = decode_registration(b"\x07\x00\x02hi")
        self.assertEqual((registration.type, registration.unknown), (7, b"hi"))
        self.assertEqual(encode_registration(registration), b"\x07\x00\x02hi")

    def test_unrepresentable_values(self) -> None:
        """A value too long for its 16-bit lengths, or a bad type, is a ValueError on encode."""
        for registration in [
            SipRegistration(SIP_REGISTRATION_URI, uri="u" * 65536),
            SipRegistration(SIP_REGISTRATION_ROUTE, contact_prefs="p" * 65534),
            SipRegistration(256),
        ]:
            self.assertRaises(ValueError, encode_registration, registration)


class ResourceNameTests(SynchronousTestCase):
    def test_aor_to_user_name(self) -> None:
        """An AOR's registrations live under its user name, the certificate's rfc822Name."""
        self.assertEqual(registration_resource_name("sip:alice@example.com"), "alice@example.com")
        self.assertEqual(
            resource_id(registration_resource_name("sip:alice@example.com")),
            user_match_resource("alice@example.com"),
        )

    def test_sip_and_sips_share_a_user(self) -> None:
        """The scheme goes and the domain is lower-cased; the user part keeps its case."""
        self.assertEqual(registration_resource_name("SIPS:Alice@Example.COM"), "Alice@example.com")

    def test_not_an_aor(self) -> None:
        """Anything but sip[s]:user@domain is a ValueError."""
        for text in (
            "alice@example.com",
            "tel:+15551234",
            "sip:example.com",
            "sip:@example.com",
            "sip:alice@",
            "sip:alice@example.com;transport=tcp",
        ):
            self.assertRaises(ValueError, registration_resource_name, text)


class RoundTripTests(SynchronousTestCase):
    @given(registrations)
    def test_round_trip(self, registration: SipRegistration) -> None:
        """Every encodable registration decodes back to itself."""
        self.assertEqual(decode_registration(encode_registration(registration)), registration)

    @given(st.lists(node_ids, max_size=MAX_DESTINATIONS), st.text(max_size=50))
    def test_route_round_trip(self, nodes: list[int], prefs: str) -> None:
        """A route to any peers keeps them in order."""
        registration = SipRegistration.route(prefs, *nodes)
        decoded = decode_registration(encode_registration(registration))
        self.assertEqual((decoded.node_ids, decoded.contact_prefs), (tuple(nodes), prefs))


class HostileInputTests(SynchronousTestCase):
    @given(st.binary(max_size=300))
    def test_random_bytes(self, data: bytes) -> None:
        """Arbitrary bytes raise only DecodeError, and what decodes re-encodes to the same bytes."""
        try:
            registration = decode_registration(data)
        except DecodeError:
            return
        self.assertEqual(encode_registration(registration), data)

    @given(registrations, st.data())
    def test_mutations(self, registration: SipRegistration, data: st.DataObject) -> None:
        """A valid value with one byte changed decodes strictly or raises only DecodeError."""
        wire = bytearray(encode_registration(registration))
        index = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
        wire[index] = data.draw(st.integers(min_value=0, max_value=255))
        try:
            decoded = decode_registration(bytes(wire))
        except DecodeError:
            return
        self.assertEqual(encode_registration(decoded), bytes(wire))

    @given(registrations, st.data())
    def test_truncation(self, registration: SipRegistration, data: st.DataObject) -> None:
        """Every strict prefix of a valid value is a DecodeError."""
        wire = encode_registration(registration)
        cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
        self.assertRaises(DecodeError, decode_registration, wire[:cut])

    def test_hostile_values(self) -> None:
        """Oversized lengths, trailing bytes, bad text and bad destinations are DecodeErrors."""
        for hostile in [
            b"\x02\xff\xff",
            b"\x01\x00\x02\xff\xff",
            b"\x01\x00\x02\x00\x00junk",
            b"\x02\x00\x06\x00\x00\x00\x02\x01\x05",
            b"\x02\x00\x08\x00\x00\x00\x04\x09\x02ab",
            b"\x01\x00\x03\x00\x01\xff",
            b"\x02\x00\x05\x00\x00\x00\x01\x01",
            route_value(b"", b"\x01\x11" + b"\x00" * 17),
            route_value(b"", b"\x02\x05\x04abcd"),
            route_value(b"\xc3\x28", b""),
            route_value(b"", b"") + b"\x00",
            b"\x01\x00\x03\x00\x00x",
        ]:
            self.assertRaises(DecodeError, decode_registration, hostile)

    def test_destination_limit(self) -> None:
        """More than MAX_DESTINATIONS destinations is refused before any more are built."""
        node = b"\x01\x10" + id_to_bytes(NODE_A)
        decode_registration(route_value(b"", node * MAX_DESTINATIONS))
        self.assertRaises(
            DecodeError, decode_registration, route_value(b"", node * (MAX_DESTINATIONS + 1))
        )
