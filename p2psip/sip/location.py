"""
The location service on the overlay: SIP registrations stored in the DHT.

RFC 7904 section 3 defines the SIP-REGISTRATION kind (Kind-ID 1), stored
with the RELOAD dictionary data model: the resource name is the AOR, the
dictionary key is the Node-ID of the node that stored the entry (here: the
super-node serving the user agent), and the value is a ``SipRegistration``
(RFC 6940 presentation language, all integers big-endian)::

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

A ``Destination`` (RFC 6940 section 6.3.2.2) is ``uint8 type, uint8 length,
data`` with type node(1) and a 16-byte Node-ID, resource(2) or
opaque_id_type(3) with an ``opaque<0..2^8-1>``; a first bit of 1 marks a
two-byte compressed id.

This node writes ``sip_registration_route`` values: ``destination_list`` is
the serving super-node's Node-ID, so a caller's proxy reaches it with
AppAttach (``IOverlayStorage.resolve_application(node_id, 5060)``) and hands
it the request, and ``contact_prefs`` carries every contact that super-node
holds for the AOR in Contact-header syntax, so a lookup also learns contact
URIs, q-values and expiry without another round trip::

    <sip:alice@192.0.2.7:5062>;q=0.5;expires-at=1764000000, <sip:...>;...

``expires-at`` is the absolute expiry in POSIX seconds: the entry is read
long after it was written, and RELOAD already requires loosely synchronised
clocks for its storage times (RFC 6940 section 7).  Values written by other
implementations (a ``uri`` value, or a route without our contact list) are
still understood, as one binding each.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from typing import cast

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from p2psip.interfaces import IOverlayStorage
from p2psip.util.ids import NODE_ID_BYTES, id_from_bytes, id_to_bytes

#: RFC 7904 section 6.1: the SIP-REGISTRATION Kind-ID.
SIP_REGISTRATION_KIND = 1
#: The RELOAD application id AppAttach uses for SIP (RFC 7904 section 5).
SIP_APPLICATION = 5060

SIP_REGISTRATION_URI = 1
SIP_REGISTRATION_ROUTE = 2

DESTINATION_NODE = 1
DESTINATION_RESOURCE = 2
DESTINATION_OPAQUE = 3

#: Limits applied to values read from the overlay before anything is built.
MAX_CONTACTS_PER_ENTRY = 64
MAX_DESTINATIONS = 16

_UINT16_MAX = 0xFFFF
_EXPIRES_AT = re.compile(r"^[0-9]{1,12}$")
_QVALUE = re.compile(r"^(0(\.[0-9]{0,3})?|1(\.0{0,3})?)$")


class LocationDecodeError(ValueError):
    """A SIP-REGISTRATION value that is not well-formed."""


@frozen
class Destination:
    """One element of a RELOAD destination list."""

    type: int
    data: bytes

    @classmethod
    def node(cls, node_id: int) -> Destination:
        """A destination naming a node by its Node-ID."""
        return cls(DESTINATION_NODE, id_to_bytes(node_id))

    @property
    def node_id(self) -> int | None:
        """The Node-ID for a node destination, else None."""
        if self.type == DESTINATION_NODE:
            return id_from_bytes(self.data)
        return None


@frozen
class SipRegistration:
    """A decoded SIP-REGISTRATION value (RFC 7904 section 3)."""

    type: int
    uri: str = ""
    contact_prefs: str = ""
    destination_list: tuple[Destination, ...] = ()
    #: The undecoded body of a type this code does not know (RFC 7904 lets
    #: the type be extended; such values are skipped, not errors).
    unknown: bytes = b""


def _opaque16(data: bytes) -> bytes:
    if len(data) > _UINT16_MAX:
        raise ValueError("opaque field longer than 65535 bytes")
    return struct.pack(">H", len(data)) + data


def encode_destination(destination: Destination) -> bytes:
    """The wire form of one Destination."""
    if destination.type == DESTINATION_NODE:
        if len(destination.data) != NODE_ID_BYTES:
            raise ValueError("a node destination holds a 16-byte Node-ID")
        return struct.pack(">BB", DESTINATION_NODE, NODE_ID_BYTES) + destination.data
    if destination.type in (DESTINATION_RESOURCE, DESTINATION_OPAQUE):
        if len(destination.data) > 0xFF - 1:
            raise ValueError("resource or opaque destination longer than 254 bytes")
        body = struct.pack(">B", len(destination.data)) + destination.data
        return struct.pack(">BB", destination.type, len(body)) + body
    raise ValueError(f"cannot encode destination type {destination.type}")


def encode_registration(registration: SipRegistration) -> bytes:
    """The wire form of a SIP-REGISTRATION value."""
    if registration.type == SIP_REGISTRATION_URI:
        body = _opaque16(registration.uri.encode("utf-8"))
    elif registration.type == SIP_REGISTRATION_ROUTE:
        destinations = b"".join(encode_destination(d) for d in registration.destination_list)
        body = _opaque16(registration.contact_prefs.encode("utf-8")) + _opaque16(destinations)
    else:
        body = registration.unknown
    if len(body) > _UINT16_MAX:
        raise ValueError("SIP-REGISTRATION value longer than 65535 bytes")
    return struct.pack(">BH", registration.type, len(body)) + body


class _Reader:
    """Bounds-checked cursor over untrusted bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, count: int, what: str) -> bytes:
        if count > len(self.data) - self.position:
            raise LocationDecodeError(
                f"{what}: needs {count} bytes, {len(self.data) - self.position} left"
            )
        piece = self.data[self.position : self.position + count]
        self.position += count
        return piece

    def uint8(self, what: str) -> int:
        return self.take(1, what)[0]

    def uint16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def at_end(self) -> bool:
        return self.position == len(self.data)


def _decode_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise LocationDecodeError(f"{what} is not UTF-8") from None


def decode_destinations(data: bytes) -> tuple[Destination, ...]:
    """Decode a destination list's contents (without its length prefix)."""
    reader = _Reader(data)
    destinations: list[Destination] = []
    while not reader.at_end():
        if len(destinations) >= MAX_DESTINATIONS:
            raise LocationDecodeError(f"more than {MAX_DESTINATIONS} destinations")
        first = reader.uint8("destination type")
        if first & 0x80:
            # A compressed id: two bytes in all, top bit set (RFC 6940 s6.3.2.2).
            destinations.append(
                Destination(first, bytes([first]) + reader.take(1, "compressed id"))
            )
            continue
        length = reader.uint8("destination length")
        body = reader.take(length, "destination data")
        if first == DESTINATION_NODE:
            if length != NODE_ID_BYTES:
                raise LocationDecodeError(
                    f"node destination of {length} bytes, not {NODE_ID_BYTES}"
                )
            destinations.append(Destination(first, body))
        elif first in (DESTINATION_RESOURCE, DESTINATION_OPAQUE):
            inner = _Reader(body)
            value = inner.take(inner.uint8("opaque length"), "opaque id")
            if not inner.at_end():
                raise LocationDecodeError("trailing bytes in a destination")
            destinations.append(Destination(first, value))
        else:
            raise LocationDecodeError(f"unknown destination type {first}")
    return tuple(destinations)


def decode_registration(data: bytes) -> SipRegistration:
    """
    Decode a whole SIP-REGISTRATION value.

    :raises LocationDecodeError: for anything malformed, truncated or with
        trailing bytes; never anything else.
    """
    reader = _Reader(data)
    registration_type = reader.uint8("registration type")
    length = reader.uint16("registration length")
    body = reader.take(length, "registration body")
    if not reader.at_end():
        raise LocationDecodeError("trailing bytes after the registration")
    inner = _Reader(body)
    if registration_type == SIP_REGISTRATION_URI:
        uri = _decode_text(inner.take(inner.uint16("uri length"), "uri"), "uri")
        result = SipRegistration(registration_type, uri=uri)
    elif registration_type == SIP_REGISTRATION_ROUTE:
        prefs = _decode_text(
            inner.take(inner.uint16("contact_prefs length"), "contact_prefs"), "contact_prefs"
        )
        destinations = decode_destinations(
            inner.take(inner.uint16("destination_list length"), "destination_list")
        )
        result = SipRegistration(
            registration_type, contact_prefs=prefs, destination_list=destinations
        )
    else:
        return SipRegistration(registration_type, unknown=body)
    if not inner.at_end():
        raise LocationDecodeError("trailing bytes inside the registration")
    return result


@frozen
class Binding:
    """
    One contact of an AOR, as the proxy needs it.

    ``node_id`` is the super-node that serves the contact (None for a plain
    ``uri`` registration that names the contact directly); ``expires_at`` is
    absolute POSIX time (``math.inf`` when only the overlay lifetime limits
    it).
    """

    aor: str
    contact: str
    expires_at: float
    q: float = 1.0
    node_id: int | None = None

    def expires_in(self, now: float) -> int:
        """Whole seconds left, for a Contact ``expires`` parameter."""
        if math.isinf(self.expires_at):
            return _UINT16_MAX
        return max(0, int(math.ceil(self.expires_at - now)))


def format_q(q: float) -> str:
    """A q-value as RFC 3261 writes it: at most three decimals."""
    text = f"{q:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def encode_contact_prefs(bindings: Sequence[Binding]) -> str:
    """The contact list this node stores in ``contact_prefs``."""
    entries = []
    for binding in bindings:
        if any(character in binding.contact for character in '<>" \t\r\n'):
            raise ValueError(f"contact {binding.contact!r} cannot be written inside <>")
        if math.isinf(binding.expires_at):
            raise ValueError("a stored binding needs a finite expiry")
        entries.append(
            f"<{binding.contact}>;q={format_q(binding.q)};expires-at={int(math.ceil(binding.expires_at))}"
        )
    return ", ".join(entries)


def _split_contacts(text: str) -> list[str]:
    """Split at commas outside <> (URIs in angle brackets may hold commas)."""
    pieces: list[str] = []
    depth = 0
    start = 0
    for index, character in enumerate(text):
        if character == "<":
            depth += 1
        elif character == ">":
            depth -= 1
        elif character == "," and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    return [piece.strip() for piece in pieces]


def decode_contact_prefs(text: str, aor: str, node_id: int | None) -> list[Binding] | None:
    """
    Bindings from our ``contact_prefs`` format, or None when ``text`` is
    something else (another implementation's callee preferences).
    """
    if not text.startswith("<"):
        return None
    pieces = _split_contacts(text)
    if len(pieces) > MAX_CONTACTS_PER_ENTRY:
        raise LocationDecodeError(f"more than {MAX_CONTACTS_PER_ENTRY} contacts in one entry")
    bindings = []
    for piece in pieces:
        if not piece.startswith("<") or ">" not in piece:
            raise LocationDecodeError("contact entry is not <uri>;params")
        closing = piece.index(">")
        contact = piece[1:closing]
        if not contact or "<" in contact:
            raise LocationDecodeError("empty or nested contact URI")
        params: dict[str, str] = {}
        for parameter in piece[closing + 1 :].split(";")[1:]:
            name, _, value = parameter.strip().partition("=")
            params[name.lower()] = value
        expires_at = params.get("expires-at", "")
        q = params.get("q", "1")
        if not _EXPIRES_AT.match(expires_at):
            raise LocationDecodeError("contact entry without a valid expires-at")
        if not _QVALUE.match(q):
            raise LocationDecodeError(f"invalid q-value {q!r}")
        bindings.append(
            Binding(
                aor=aor, contact=contact, expires_at=float(expires_at), q=float(q), node_id=node_id
            )
        )
    return bindings


def bindings_from_entry(aor: str, key: bytes, value: bytes) -> list[Binding]:
    """
    Every binding one dictionary entry describes (expired ones included).

    :raises LocationDecodeError: for a malformed value.
    """
    registration = decode_registration(value)
    if registration.type == SIP_REGISTRATION_URI:
        return [Binding(aor=aor, contact=registration.uri, expires_at=math.inf)]
    if registration.type != SIP_REGISTRATION_ROUTE:
        return []
    node_ids = [d.node_id for d in registration.destination_list if d.node_id is not None]
    if node_ids:
        node_id: int | None = node_ids[-1]
    elif len(key) == NODE_ID_BYTES:
        node_id = id_from_bytes(key)
    else:
        raise LocationDecodeError("route registration without a node to route to")
    bindings = decode_contact_prefs(registration.contact_prefs, aor, node_id)
    if bindings is None:
        # Someone else's route value: send the request for the AOR to that node.
        return [Binding(aor=aor, contact=aor, expires_at=math.inf, node_id=node_id)]
    return bindings


class OverlayLocationService:
    """
    AOR bindings kept in the overlay's SIP-REGISTRATION dictionaries.

    Each super-node owns one entry per AOR (keyed by its Node-ID) listing
    the contacts it serves; :meth:`register` replaces that entry and
    :meth:`lookup` merges every node's entry.  AORs are used as resource
    names exactly as given, so callers pass canonical ones
    (``p2psip.sip.users.canonical_aor``).
    """

    log = Logger()

    def __init__(self, storage: IOverlayStorage, clock: IReactorTime) -> None:
        self.storage = storage
        self.clock = clock

    @property
    def local_node_id(self) -> int:
        node_id: int = self.storage.local_node_id
        return node_id

    def register(self, aor: str, contacts: Sequence[Binding]) -> Deferred[None]:
        """
        Store the contacts this node serves for ``aor`` (all of them).

        The entry lives until the last contact expires; an empty list removes
        the entry.  :returns: a Deferred that fires when the overlay accepted
        the store (or fails with the overlay's error).
        """
        now = self.clock.seconds()
        live = [binding for binding in contacts if binding.expires_at > now]
        key = id_to_bytes(self.local_node_id)
        if not live:
            return cast(
                "Deferred[None]",
                self.storage.remove_dictionary_entry(aor, SIP_REGISTRATION_KIND, key),
            )
        registration = SipRegistration(
            SIP_REGISTRATION_ROUTE,
            contact_prefs=encode_contact_prefs(live),
            destination_list=(Destination.node(self.local_node_id),),
        )
        lifetime_seconds = int(math.ceil(max(binding.expires_at for binding in live) - now))
        return cast(
            "Deferred[None]",
            self.storage.put_dictionary_entry(
                aor, SIP_REGISTRATION_KIND, key, encode_registration(registration), lifetime_seconds
            ),
        )

    def lookup(self, aor: str) -> Deferred[list[Binding]]:
        """
        Every live binding of ``aor`` across all super-nodes, best q first.

        Malformed entries (another node's bug or an attack) are skipped and
        logged at debug level.
        """
        fetched = cast(
            "Deferred[dict[bytes, bytes]]", self.storage.get_dictionary(aor, SIP_REGISTRATION_KIND)
        )
        return fetched.addCallback(self._live_bindings, aor)

    def _live_bindings(self, entries: dict[bytes, bytes], aor: str) -> list[Binding]:
        now = self.clock.seconds()
        bindings: list[Binding] = []
        for key, value in entries.items():
            try:
                bindings.extend(bindings_from_entry(aor, key, value))
            except LocationDecodeError as e:
                self.log.debug("skipped a malformed registration entry: {why}", why=str(e))
        live = [binding for binding in bindings if binding.expires_at > now]
        live.sort(key=lambda binding: -binding.q)
        return live
