"""
The location service on the overlay: SIP registrations stored in the DHT.

RFC 7904 section 3 defines the SIP-REGISTRATION kind (Kind-ID 1), stored
with the RELOAD dictionary data model: the resource name is the AOR's user
name (``alice@example.com`` for ``sip:alice@example.com``,
:func:`~p2psip.usages.sip.registration_resource_name`), the dictionary key
is the Node-ID of the node that stored the entry (here: the super-node
serving the user agent), and the value is a ``SipRegistration``, whose wire
format :mod:`p2psip.usages.sip` reads and writes.

Phones have passwords, the overlay wants certificates: the registrar checks
the phone's password, and this service then writes the entry signed with
the user's credential that the super-node holds (a certificate naming the
user and the super-node's Node-ID, for the super-node's own key), which is
what the Kind's USER-NODE-MATCH policy asks for.  A super-node without a
credential for the user refuses the registration (:class:`NoUserCredential`)
and tells its operator, once a minute per user, how to enrol the user.

This node writes ``sip_registration_route`` values: ``destination_list`` is
the serving super-node's Node-ID, so a caller's proxy reaches it with
AppAttach (``IOverlayStorage.resolve_application(node_id, 5060)``) and hands
it the request, and ``contact_prefs`` carries every contact that super-node
holds for the AOR in Contact-header syntax, so a lookup also learns contact
URIs, q-values and expiry without another round trip::

    <sip:alice@192.0.2.7:5062>;q=0.5;expires-at=1764000000, <sip:...>;...

A phone that any caller's super-node may reach itself (a public address,
no NAT: :mod:`p2psip.sip.direct_contacts`) is marked ``;direct``, so calls
to it cross one super-node instead of two.  A binding registered with SIP
Outbound (RFC 5626) adds
``;instance=urn:uuid:...;reg-id=1``, so that a caller's proxy sends each
request to one flow of the phone (:mod:`p2psip.sip.outbound`) even when
it registered through several super-nodes; readers that do not know the
parameters ignore them.

``expires-at`` is the absolute expiry in POSIX seconds: the entry is read
long after it was written, and RELOAD already requires loosely synchronised
clocks for its storage times (RFC 6940 section 7).  Values written by other
implementations (a ``uri`` value, or a route without our contact list) are
still understood, as one binding each.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import cast

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from p2psip.interfaces import IOverlayStorage
from p2psip.sip.outbound import valid_instance
from p2psip.usages.sip import (
    SIP_APPLICATION,
    SIP_REGISTRATION_KIND,
    SIP_REGISTRATION_ROUTE,
    SIP_REGISTRATION_URI,
    DecodeError,
    SipRegistration,
    decode_registration,
    encode_registration,
    key_node_id,
    registration_key,
    registration_resource_name,
)
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

# SIP_APPLICATION and SIP_REGISTRATION_KIND are the usage's
# (p2psip.usages.sip); they stay importable from here for the roles.
__all__ = [
    "SIP_APPLICATION",
    "SIP_REGISTRATION_KIND",
    "Binding",
    "LocationDecodeError",
    "NoUserCredential",
    "OverlayLocationService",
    "bindings_from_entry",
    "decode_contact_prefs",
    "encode_contact_prefs",
    "format_q",
]

#: Limits applied to values read from the overlay before anything is built.
MAX_CONTACTS_PER_ENTRY = 64

#: How the operator is told to enrol a user; ``{user}`` is the AOR.
DEFAULT_ENROL_HINT = "p2psip enrol --user {user} --data-dir DATA_DIR"


class NoUserCredential(Exception):
    """
    This super-node holds no credential to sign a user's registration with.

    The message is for the operator: it names the user and the fix.
    """

    def __init__(self, aor: str, fix: str) -> None:
        super().__init__(f"no certificate for {aor} on this super-node; enrol the user: {fix}")
        self.aor = aor
        self.fix = fix


_UINT16_MAX = 0xFFFF
_EXPIRES_AT = re.compile(r"^[0-9]{1,12}$")
_REG_ID = re.compile(r"^[1-9][0-9]{0,8}$")
_QVALUE = re.compile(r"^(0(\.[0-9]{0,3})?|1(\.0{0,3})?)$")


class LocationDecodeError(DecodeError):
    """
    Our contact list inside a SIP-REGISTRATION value is malformed.

    The RELOAD structure around it is checked by :mod:`p2psip.usages.sip`,
    which raises the DecodeError this refines; catch DecodeError for both.
    """


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
    #: SIP Outbound: the phone's instance and this flow's reg-id (both or neither).
    instance: str | None = None
    reg_id: int | None = None
    #: The serving node says a caller's node may send to ``contact`` itself
    #: (:mod:`p2psip.sip.direct_contacts`); written as ``;direct``.
    direct: bool = False

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
        entry = f"<{binding.contact}>;q={format_q(binding.q)};expires-at={int(math.ceil(binding.expires_at))}"
        if binding.instance is not None and binding.reg_id is not None:
            if not valid_instance(binding.instance):
                raise ValueError(f"instance {binding.instance!r} cannot be stored")
            entry += f";instance={binding.instance};reg-id={binding.reg_id}"
        elif binding.direct:
            entry += ";direct"
        entries.append(entry)
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
        instance: str | None = params.get("instance")
        reg_id_text = params.get("reg-id", "")
        reg_id = int(reg_id_text) if _REG_ID.match(reg_id_text) else None
        if instance is None or reg_id is None or not valid_instance(instance):
            instance = reg_id = None  # not ours, or damaged: an ordinary binding
        bindings.append(
            Binding(
                aor=aor,
                contact=contact,
                expires_at=float(expires_at),
                q=float(q),
                node_id=node_id,
                instance=instance,
                reg_id=reg_id,
                # Anything that looks like a flow is reached through its node.
                direct="direct" in params and "instance" not in params and "reg-id" not in params,
            )
        )
    return bindings


def bindings_from_entry(aor: str, key: bytes, value: bytes) -> list[Binding]:
    """
    Every binding one dictionary entry describes (expired ones included).

    The node to route to is the last Node-ID of the destination list (the
    ones before it are the way there), else the node the key names.

    :raises DecodeError: for a malformed value (:class:`LocationDecodeError`
        when the fault is in our contact list).
    """
    registration = decode_registration(value)
    if registration.type == SIP_REGISTRATION_URI:
        return [Binding(aor=aor, contact=registration.uri, expires_at=math.inf)]
    if registration.type != SIP_REGISTRATION_ROUTE:
        return []
    node_ids = registration.node_ids
    node_id = node_ids[-1] if node_ids else key_node_id(key)
    if node_id is None:
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

    def __init__(
        self,
        storage: IOverlayStorage,
        clock: IReactorTime,
        enrol_hint: str = DEFAULT_ENROL_HINT,
    ) -> None:
        self.storage = storage
        self.clock = clock
        #: The operator's fix for a missing credential, with ``{user}`` for the AOR.
        self.enrol_hint = enrol_hint
        self._missing_log = LogThrottle(clock)

    @property
    def local_node_id(self) -> int:
        node_id: int = self.storage.local_node_id
        return node_id

    def register(self, aor: str, contacts: Sequence[Binding]) -> Deferred[None]:
        """
        Store the contacts this node serves for ``aor`` (all of them).

        The entry lives until the last contact expires; an empty list removes
        the entry.  Both are signed with the user's credential.
        :returns: a Deferred that fires when the overlay accepted the store,
            or fails with the overlay's error, or with
            :class:`NoUserCredential`.
        """
        now = self.clock.seconds()
        live = [binding for binding in contacts if binding.expires_at > now]
        key = registration_key(self.local_node_id)
        try:
            resource_name = registration_resource_name(aor)
        except ValueError as e:
            return fail(e)
        credential = self.storage.user_credential(resource_name)
        if credential is None:
            return fail(self._missing(aor))
        if not live:
            return cast(
                "Deferred[None]",
                self.storage.remove_dictionary_entry(
                    resource_name, SIP_REGISTRATION_KIND, key, signer=credential
                ),
            )
        registration = SipRegistration.route(encode_contact_prefs(live), self.local_node_id)
        lifetime_seconds = int(math.ceil(max(binding.expires_at for binding in live) - now))
        return cast(
            "Deferred[None]",
            self.storage.put_dictionary_entry(
                resource_name,
                SIP_REGISTRATION_KIND,
                key,
                encode_registration(registration),
                lifetime_seconds,
                signer=credential,
            ),
        )

    def _missing(self, aor: str) -> NoUserCredential:
        error = NoUserCredential(aor, self.enrol_hint.format(user=aor))
        held_back = self._missing_log.admit(aor)
        if held_back is not None:
            self.log.warn(
                "refused to register {aor}: this super-node holds no certificate for the user, "
                "so the overlay would refuse its registration; enrol the user: {fix} "
                "({held_back} more REGISTERs for it since the last line)",
                aor=aor,
                fix=error.fix,
                held_back=held_back,
            )
        return error

    def lookup(self, aor: str) -> Deferred[list[Binding]]:
        """
        Every live binding of ``aor`` across all super-nodes, best q first.

        Malformed entries (another node's bug or an attack) are skipped and
        logged at debug level.
        """
        try:
            resource_name = registration_resource_name(aor)
        except ValueError:
            return succeed([])  # no user part: nobody can have registered it
        fetched = cast(
            "Deferred[dict[bytes, bytes]]",
            self.storage.get_dictionary(resource_name, SIP_REGISTRATION_KIND),
        )
        return fetched.addCallback(self._live_bindings, aor)

    def _live_bindings(self, entries: dict[bytes, bytes], aor: str) -> list[Binding]:
        now = self.clock.seconds()
        bindings: list[Binding] = []
        for key, value in entries.items():
            try:
                bindings.extend(bindings_from_entry(aor, key, value))
            except DecodeError as e:
                self.log.debug("skipped a malformed registration entry: {why}", why=str(e))
        live = [binding for binding in bindings if binding.expires_at > now]
        live.sort(key=lambda binding: -binding.q)
        return live
