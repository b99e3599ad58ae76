"""
RELOAD Kinds: what may be stored, in which data model, and who may write it.

A Kind (RFC 6940 s7) pairs a 32-bit Kind-ID with a data model (single value,
array or dictionary, s7.2), limits from the overlay configuration (max-count
values per resource, max-size bytes per value, s11.1), limits of this
project (the longest lifetime a value may ask for, and how many values one
Node-ID may have signed in one peer's store) and an access control policy
(s7.3) that decides, from what the signer's certificate proves (its
Node-IDs and user name, :class:`~p2psip.overlay.certificates.CertifiedIdentity`),
whether a value may be written at a Resource-ID.

"Hash" below is the overlay's hash, which for CHORD-RELOAD is SHA-1
truncated to the 128 bits of a Resource-ID (RFC 6940 s10.2), the same hash
that turns a resource name into its Resource-ID.  A user name is hashed as
its UTF-8 string, exactly as a resource name is, so a user's Resource-ID is
``resource_id("alice@example.com")``.

Policies (a value that is a deletion, exists = False, is checked like any
other, so only whoever may write a value may delete it):

* USER-MATCH (s7.3.1): the Resource-ID must be the hash of the user name in
  the signer's certificate (:func:`user_match_resource`).
* NODE-MATCH (s7.3.2): the Resource-ID must be the hash of a Node-ID in the
  signer's certificate (:func:`node_match_resource`, over the Node-ID's
  16-byte wire form).
* USER-NODE-MATCH (s7.3.3), dictionaries only: the Resource-ID must be the
  hash of the certificate's user name *and* the dictionary key must be a
  Node-ID of that certificate (its 16-byte wire form).  RFC 7904 s3 gives it
  to SIP-REGISTRATION: one entry per (user, registering node).
* NODE-MULTIPLE (s7.3.4): the Resource-ID must be the hash of a Node-ID of
  the certificate followed by a 32-bit index ``i`` with
  1 <= i <= the Kind's ``node_multiple_max``.
* NODE-KEY-MATCH (this project, for ``MEDIA_RELAY``), dictionaries only:
  NODE-MATCH (s7.3.2) applied to the dictionary key rather than to the
  Resource-ID, the way USER-NODE-MATCH (s7.3.3) binds its key: the key must
  be a Node-ID of the certificate (its 16-byte wire form).  The Resource-ID
  is then free, so every super-node that relays media writes its own entry
  at one well-known resource that a Fetch reads whole, and none can write
  or delete another's.  (RFC 6940's own NODE-MATCH puts each value at the
  hash of its writer's Node-ID, where only a reader that already knows the
  Node-ID could look.)
* FIRST-SIGNER (this project, for the ``DATA`` Kind that ``p2psip put`` and
  the demo use under free-form names): any certified signer may write a
  slot nobody holds, and while that value lives (a deletion included) only
  a signer with the same Node-ID may overwrite or delete it.  The names are
  free, so there is no hash to match; what this stops is a second writer
  replacing or removing the first one's value.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from attrs import evolve, frozen

from p2psip.overlay.bodies import ArrayEntry, DataModel, DataValue, DictionaryEntry
from p2psip.overlay.certificates import CertifiedIdentity
from p2psip.util.ids import NODE_ID_BYTES, id_to_bytes, resource_id

#: Seconds in a day, the unit the Kinds' longest lifetimes are given in.
DAY_SECONDS = 24 * 3600


class AccessPolicy(enum.Enum):
    """Access control policies, by the names RFC 6940 s7.3 and s14.4 give them."""

    USER_MATCH = "USER-MATCH"
    NODE_MATCH = "NODE-MATCH"
    USER_NODE_MATCH = "USER-NODE-MATCH"
    NODE_MULTIPLE = "NODE-MULTIPLE"
    #: This project's: NODE-MATCH on the dictionary key; see the module docstring.
    NODE_KEY_MATCH = "NODE-KEY-MATCH"
    #: This project's policy for free-form names; see the module docstring.
    FIRST_SIGNER = "FIRST-SIGNER"


class AccessDenied(Exception):
    """A value's signer may not write it at this Resource-ID; ``str(error)`` says why."""


@frozen
class Kind:
    """
    One storable Kind and its limits.

    ``max_count`` bounds the values per resource (array entries or
    dictionary keys; 1 for single values) and ``max_size`` the bytes of one
    value's payload, as the overlay configuration's ``max-count`` and
    ``max-size`` do (RFC 6940 s11.1).  ``max_lifetime_seconds`` is the
    longest lifetime a value may carry (a longer one is refused, not cut),
    and also how long after its storage time a value may still be stored, so
    an old signed value cannot be replayed with a fresh lifetime.
    ``max_per_signer`` bounds the values of this Kind whose signer has one
    Node-ID, across one peer's store: the quota that keeps one certified
    peer from filling the ring.
    """

    kind_id: int
    name: str
    data_model: DataModel
    max_count: int
    max_size: int
    access: AccessPolicy
    max_lifetime_seconds: int = DAY_SECONDS
    max_per_signer: int = 1000
    #: Largest index ``i`` accepted by NODE-MULTIPLE; unused by other policies.
    node_multiple_max: int = 0


def _overlay_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.sha1(data).digest()[:NODE_ID_BYTES], "big")


def user_match_resource(user_name: str) -> int:
    """
    The Resource-ID that USER-MATCH (and USER-NODE-MATCH) let ``user_name`` write.

    RFC 6940 s7.3.1 hashes the certificate's user name with the overlay's
    hash, which is how any resource name becomes a Resource-ID.
    """
    return resource_id(user_name)


def node_match_resource(node_id: int) -> int:
    """
    The Resource-ID that NODE-MATCH lets ``node_id`` write.

    RFC 6940 s7.3.2 hashes the Node-ID with the overlay's hash, taken over
    the Node-ID's 16-byte wire form.
    """
    return _overlay_hash(id_to_bytes(node_id))


def node_multiple_resource(node_id: int, index: int) -> int:
    """The Resource-ID that NODE-MULTIPLE lets ``node_id`` write with index ``i``."""
    return _overlay_hash(id_to_bytes(node_id) + index.to_bytes(4, "big"))


def check_access(
    kind: Kind,
    resource: int,
    value: DataValue | ArrayEntry | DictionaryEntry,
    signer: CertifiedIdentity,
    holder: int | None = None,
) -> None:
    """
    Raise :class:`AccessDenied` unless ``signer`` may write ``value`` at ``resource``.

    The caller has already verified the signature; this only applies the
    Kind's policy to the identity the signer's certificate proves.
    ``holder`` is the Node-ID that signed the live value this one would
    replace (None for an empty slot), which only FIRST-SIGNER looks at.
    """
    policy = kind.access
    if policy is AccessPolicy.USER_MATCH:
        _require_user(kind, resource, signer)
        return
    if policy is AccessPolicy.NODE_MATCH:
        if not any(resource == node_match_resource(node_id) for node_id in signer.node_ids):
            raise AccessDenied("NODE-MATCH: resource is not the hash of the signer's Node-ID")
        return
    if policy is AccessPolicy.USER_NODE_MATCH:
        if not isinstance(value, DictionaryEntry):
            raise AccessDenied("USER-NODE-MATCH applies to dictionary entries only")
        _require_user(kind, resource, signer)
        if value.key not in {id_to_bytes(node_id) for node_id in signer.node_ids}:
            raise AccessDenied("USER-NODE-MATCH: the dictionary key is not the signer's Node-ID")
        return
    if policy is AccessPolicy.NODE_KEY_MATCH:
        if not isinstance(value, DictionaryEntry):
            raise AccessDenied("NODE-KEY-MATCH applies to dictionary entries only")
        if value.key not in {id_to_bytes(node_id) for node_id in signer.node_ids}:
            raise AccessDenied("NODE-KEY-MATCH: the dictionary key is not the signer's Node-ID")
        return
    if policy is AccessPolicy.NODE_MULTIPLE:
        for node_id in signer.node_ids:
            for index in range(1, kind.node_multiple_max + 1):
                if resource == node_multiple_resource(node_id, index):
                    return
        raise AccessDenied(
            "NODE-MULTIPLE: resource is not the hash of the signer's Node-ID and an index"
        )
    if policy is AccessPolicy.FIRST_SIGNER:
        if holder is not None and holder not in signer.node_ids:
            raise AccessDenied("FIRST-SIGNER: the value there belongs to another Node-ID")
        return
    raise AccessDenied(f"unknown access policy {policy.value}")


def _require_user(kind: Kind, resource: int, signer: CertifiedIdentity) -> None:
    policy = kind.access.value
    if signer.user_name is None:
        raise AccessDenied(f"{policy}: the signer's certificate names no user")
    if resource != user_match_resource(signer.user_name):
        raise AccessDenied(f"{policy}: resource is not the hash of the signer's user name")


#: RFC 7904 s3: the SIP-REGISTRATION Kind; a dictionary keyed by the
#: registering Node-ID, one entry per registering node, at the Resource-ID
#: of the user's name (``p2psip.usages.sip.registration_resource_name``).
#: A day is the registrar's longest registration.
SIP_REGISTRATION = Kind(
    kind_id=1,
    name="SIP-REGISTRATION",
    data_model=DataModel.DICTIONARY,
    max_count=16,
    max_size=1024,
    access=AccessPolicy.USER_NODE_MATCH,
    max_lifetime_seconds=DAY_SECONDS,
    # A super-node signs the registrations of every user it serves with
    # its own Node-ID (under each user's certificate), so its quota must
    # hold all of them in a small ring; --registrations-per-signer sets it
    # per node (with_registration_quota).
    max_per_signer=10_000,
)

#: RFC 6940 s8 (Kind-ID 3): a node's own certificate at the hash of its
#: Node-ID, so that a verifier that never met it can fetch it.
CERTIFICATE_BY_NODE = Kind(
    kind_id=3,
    name="CERTIFICATE_BY_NODE",
    data_model=DataModel.ARRAY,
    max_count=4,
    max_size=4096,
    access=AccessPolicy.NODE_MATCH,
    max_lifetime_seconds=DAY_SECONDS,
    max_per_signer=4,
)

#: RFC 6940 s8 (Kind-ID 16): certificates naming a user, at the hash of the
#: user name; every super-node that holds one for the user stores it there.
CERTIFICATE_BY_USER = Kind(
    kind_id=16,
    name="CERTIFICATE_BY_USER",
    data_model=DataModel.ARRAY,
    max_count=16,
    max_size=4096,
    access=AccessPolicy.USER_MATCH,
    max_lifetime_seconds=DAY_SECONDS,
    max_per_signer=10_000,
)

#: A Kind-ID from RFC 6940's private-use range (0xf0000000 and up) for opaque
#: values that the ``p2psip put``/``get`` admin commands and the demo store.
DATA = Kind(
    kind_id=0xF0000001,
    name="DATA",
    data_model=DataModel.SINGLE_VALUE,
    max_count=1,
    max_size=4096,
    access=AccessPolicy.FIRST_SIGNER,
    max_lifetime_seconds=7 * DAY_SECONDS,
    max_per_signer=1000,
)

#: The media relays of the ring (a TURN-SERVICE-like Kind, RFC 6940 s10):
#: one dictionary at the well-known resource ``p2psip.usages.media_relay.
#: MEDIA_RELAY_RESOURCE``, one entry per relaying super-node keyed by its
#: Node-ID (NODE-KEY-MATCH), re-stored while it relays.
MEDIA_RELAY = Kind(
    kind_id=0xF0000002,
    name="MEDIA-RELAY",
    data_model=DataModel.DICTIONARY,
    max_count=256,
    max_size=256,
    access=AccessPolicy.NODE_KEY_MATCH,
    max_lifetime_seconds=DAY_SECONDS,
    max_per_signer=1,
)

#: The Kinds whose values are certificates, and so can verify themselves.
CERTIFICATE_KINDS = (CERTIFICATE_BY_NODE, CERTIFICATE_BY_USER)

DEFAULT_KINDS: Mapping[int, Kind] = MappingProxyType(
    {
        kind.kind_id: kind
        for kind in (SIP_REGISTRATION, CERTIFICATE_BY_NODE, CERTIFICATE_BY_USER, DATA, MEDIA_RELAY)
    }
)


def certificate_kind_for(kind: Kind) -> Kind | None:
    """
    Where a signer's certificate for a value of ``kind`` is kept, at the
    same Resource-ID: the user's certificates for the USER-* policies, the
    node's for NODE-MATCH; None when the Resource-ID names nobody.
    """
    if kind.access in (AccessPolicy.USER_MATCH, AccessPolicy.USER_NODE_MATCH):
        return CERTIFICATE_BY_USER
    if kind.access is AccessPolicy.NODE_MATCH:
        return CERTIFICATE_BY_NODE
    return None


def data_models(kinds: Mapping[int, Kind] | Iterable[Kind]) -> dict[int, DataModel]:
    """The Kind-ID -> data model map that the codec needs to decode Store/Fetch/Stat."""
    values = kinds.values() if isinstance(kinds, Mapping) else kinds
    return {kind.kind_id: kind.data_model for kind in values}


def with_registration_quota(kinds: dict[int, Kind], quota: int) -> dict[int, Kind]:
    """
    ``kinds`` with SIP-REGISTRATION's and CERTIFICATE_BY_USER's per-signer
    quota set to ``quota`` (``OverlayConfig.registrations_per_signer``: a
    super-node stores one of each per phone it serves, signed with its
    Node-ID).
    """
    for kind in (SIP_REGISTRATION, CERTIFICATE_BY_USER):
        current = kinds.get(kind.kind_id)
        if current is not None and current.max_per_signer != quota:
            kinds[kind.kind_id] = evolve(current, max_per_signer=quota)
    return kinds
