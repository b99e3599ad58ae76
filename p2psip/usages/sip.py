"""
The SIP usage of RELOAD (RFC 7904): the SIP-REGISTRATION Kind's values.

RFC 7904 section 3 stores registrations with the dictionary data model: the
resource name is the AOR, the dictionary key is the Node-ID of the peer
that stored the entry, and the value is a ``SipRegistration``.  The Kind's
policy is USER-NODE-MATCH: an entry must be signed by a certificate whose
user name *matches the AOR* and whose Node-ID is the key.  Certificates
carry the user name as an rfc822Name, ``alice@example.com``, and the policy
compares hashes (the Resource-ID must be the hash of the user name, RFC 6940
s7.3.3), so the AOR ``sip:alice@example.com`` is stored under the resource
name ``alice@example.com``: the AOR without its scheme
(:func:`registration_resource_name`).  ``sip:`` and ``sips:`` AORs of one
user therefore share their registrations, as they share the certificate.

The value, in RFC 6940 presentation language (all integers big-endian)::

    enum { sip_registration_uri(1), sip_registration_route(2), (255) }
        SipRegistrationType;

    struct {
        SipRegistrationType type;          // uint8
        uint16              length;        // of what follows
        select (type) {
          case sip_registration_uri:
            opaque uri<0..2^16-1>;
          case sip_registration_route:
            opaque contact_prefs<0..2^16-1>;
            Destination destination_list<0..2^16-1>;
        };
    } SipRegistration;

``Destination`` is RELOAD's own (RFC 6940 section 6.3.2.2), so this module
reads and writes it with the forwarding header's codec
(:mod:`p2psip.overlay.message`): one definition of the structure for the
whole node.  What ``contact_prefs`` holds is the application's business
(:mod:`p2psip.sip.location` keeps its contact list there); here it is text.

Decoding is strict, as the overlay's codec is (exact lengths, no trailing
bytes, UTF-8 text), and anything malformed raises :class:`DecodeError`
and nothing else; a type this code does not know is kept undecoded, since
RFC 7904 lets the type be extended.
"""

from __future__ import annotations

from attrs import frozen

from p2psip.overlay.codec import DecodeError, Reader, Writer
from p2psip.overlay.kinds import SIP_REGISTRATION
from p2psip.overlay.message import (
    Destination,
    DestinationType,
    decode_destination,
    encode_destination,
)
from p2psip.util.ids import NODE_ID_BYTES, id_from_bytes, id_to_bytes

__all__ = [
    "MAX_DESTINATIONS",
    "SIP_APPLICATION",
    "SIP_REGISTRATION_KIND",
    "SIP_REGISTRATION_ROUTE",
    "SIP_REGISTRATION_URI",
    "DecodeError",
    "Destination",
    "SipRegistration",
    "decode_registration",
    "encode_registration",
    "key_node_id",
    "registration_key",
    "registration_resource_name",
]

#: RFC 7904 section 6.1: the SIP-REGISTRATION Kind-ID (the overlay's Kind table holds it).
SIP_REGISTRATION_KIND = SIP_REGISTRATION.kind_id
#: The RELOAD application id AppAttach uses for SIP (RFC 7904 section 5).
SIP_APPLICATION = 5060

#: SipRegistrationType values.
SIP_REGISTRATION_URI = 1
SIP_REGISTRATION_ROUTE = 2

#: A destination list longer than this in a stored value is refused: a
#: route to a SIP peer needs a few hops at most, and the cap bounds what a
#: hostile value makes us build.
MAX_DESTINATIONS = 16

_UINT16_MAX = 0xFFFF


@frozen
class SipRegistration:
    """A SIP-REGISTRATION value (RFC 7904 section 3)."""

    type: int
    uri: str = ""
    contact_prefs: str = ""
    destination_list: tuple[Destination, ...] = ()
    #: The undecoded body of a type this code does not know (RFC 7904 lets
    #: the type be extended; such values are skipped, not errors).
    unknown: bytes = b""

    @classmethod
    def route(cls, contact_prefs: str, *node_ids: int) -> SipRegistration:
        """A ``sip_registration_route`` value that routes to the peers ``node_ids``, in order."""
        return cls(
            SIP_REGISTRATION_ROUTE,
            contact_prefs=contact_prefs,
            destination_list=tuple(Destination.node(node_id) for node_id in node_ids),
        )

    @property
    def node_ids(self) -> tuple[int, ...]:
        """The Node-IDs in the destination list, in order (other destinations left out)."""
        return tuple(
            destination.value
            for destination in self.destination_list
            if destination.type == DestinationType.NODE and isinstance(destination.value, int)
        )


def registration_resource_name(aor: str) -> str:
    """
    The resource name (and certificate user name) of an AOR's registrations.

    ``sip:alice@example.com`` -> ``alice@example.com``: the scheme goes, the
    domain is lower-cased (it is case-insensitive), the user part is kept as
    it is (it is not).

    :raises ValueError: for anything but ``sip[s]:user@domain``.
    """
    scheme, colon, rest = aor.partition(":")
    user, at, domain = rest.rpartition("@")
    if not colon or scheme.lower() not in ("sip", "sips") or not at or not user or not domain:
        raise ValueError(f"{aor!r} is not an address-of-record like sip:alice@example.org")
    if any(character in domain for character in ";?>"):
        raise ValueError(f"{aor!r} carries URI parameters; give the bare address-of-record")
    return f"{user}@{domain.lower()}"


def registration_key(node_id: int) -> bytes:
    """The dictionary key of the entry the peer ``node_id`` stores: its Node-ID's wire form."""
    return id_to_bytes(node_id)


def key_node_id(key: bytes) -> int | None:
    """The Node-ID a dictionary key names, or None for a key that is not a Node-ID."""
    return id_from_bytes(key) if len(key) == NODE_ID_BYTES else None


def encode_registration(registration: SipRegistration) -> bytes:
    """
    The wire form of a SIP-REGISTRATION value.

    :raises ValueError: for a value that cannot be represented (a field
        longer than its 16-bit length allows, a malformed destination).
    """
    body = Writer()
    if registration.type == SIP_REGISTRATION_URI:
        body.opaque(2, registration.uri.encode("utf-8"), "uri")
    elif registration.type == SIP_REGISTRATION_ROUTE:
        destinations = b"".join(encode_destination(d) for d in registration.destination_list)
        body.opaque(2, registration.contact_prefs.encode("utf-8"), "contact_prefs")
        body.opaque(2, destinations, "destination_list")
    else:
        body.raw(registration.unknown)
    return (
        Writer()
        .u8(registration.type, "registration type")
        .opaque(2, body.getvalue(), "SIP-REGISTRATION value")
        .getvalue()
    )


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not UTF-8") from None


def _decode_destinations(reader: Reader) -> tuple[Destination, ...]:
    destinations: list[Destination] = []
    while not reader.at_end():
        reader.check_count(len(destinations) + 1, MAX_DESTINATIONS, "destination_list")
        destinations.append(decode_destination(reader))
    return tuple(destinations)


def decode_registration(data: bytes) -> SipRegistration:
    """
    Decode a whole SIP-REGISTRATION value.

    :raises DecodeError: for anything malformed, truncated or with trailing
        bytes; never anything else.
    """
    reader = Reader(data)
    registration_type = reader.u8("registration type")
    body = reader.vector(2, "registration body")
    reader.expect_end("the registration")
    if registration_type == SIP_REGISTRATION_URI:
        uri = _text(body.opaque(2, "uri"), "uri")
        result = SipRegistration(registration_type, uri=uri)
    elif registration_type == SIP_REGISTRATION_ROUTE:
        prefs = _text(body.opaque(2, "contact_prefs"), "contact_prefs")
        destinations = _decode_destinations(body.vector(2, "destination_list"))
        result = SipRegistration(
            registration_type, contact_prefs=prefs, destination_list=destinations
        )
    else:
        return SipRegistration(registration_type, unknown=body.raw(body.remaining()))
    body.expect_end("the registration's fields")
    return result
