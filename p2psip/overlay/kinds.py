"""
RELOAD Kinds: what may be stored, in which data model, and who may write it.

A Kind (RFC 6940 s7) pairs a 32-bit Kind-ID with a data model (single value,
array or dictionary, s7.2), limits from the overlay configuration (max-count
values per resource, max-size bytes per value, s11.1) and an access control
policy (s7.3) that decides, from the signer of a StoredData value, whether
that value may be written at a Resource-ID.

Policies implemented here:

* NODE-MATCH (s7.3.2): the Resource-ID must be the hash of the signer's
  Node-ID (:func:`node_match_resource`).
* NODE-MULTIPLE (s7.3.4): the Resource-ID must be the hash of the signer's
  Node-ID followed by a 32-bit index ``i`` with 1 <= i <= the Kind's
  ``node_multiple_max``.
* ANY_SIGNER (this project, not in the RFC): any value with a valid
  signature may be written.  TODO(#5): enrolment.  USER-MATCH and
  USER-NODE-MATCH need the user name of an enrolment certificate; until
  enrolment exists the DATA and SIP-REGISTRATION Kinds use ANY_SIGNER, and
  a Kind declared with a USER-* policy refuses every write.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from attrs import frozen

from p2psip.overlay.bodies import ArrayEntry, DataModel, DataValue, DictionaryEntry
from p2psip.util.ids import NODE_ID_BYTES, id_to_bytes


class AccessPolicy(enum.Enum):
    """Access control policies, by the names RFC 6940 s7.3 and s14.4 give them."""

    USER_MATCH = "USER-MATCH"
    NODE_MATCH = "NODE-MATCH"
    USER_NODE_MATCH = "USER-NODE-MATCH"
    NODE_MULTIPLE = "NODE-MULTIPLE"
    #: Any correctly signed value; see the module docstring (TODO(#5): enrolment).
    ANY_SIGNER = "ANY-SIGNER"


class AccessDenied(Exception):
    """A value's signer may not write it at this Resource-ID; ``str(error)`` says why."""


@frozen
class Kind:
    """
    One storable Kind and its limits.

    ``max_count`` bounds the values per resource (array entries or
    dictionary keys; 1 for single values) and ``max_size`` the bytes of one
    value's payload, as the overlay configuration's ``max-count`` and
    ``max-size`` do (RFC 6940 s11.1).
    """

    kind_id: int
    name: str
    data_model: DataModel
    max_count: int
    max_size: int
    access: AccessPolicy
    #: Largest index ``i`` accepted by NODE-MULTIPLE; unused by other policies.
    node_multiple_max: int = 0


def node_match_resource(node_id: int) -> int:
    """
    The Resource-ID that NODE-MATCH lets ``node_id`` write.

    RFC 6940 s7.3.2 hashes the Node-ID with the overlay's hash; for
    CHORD-RELOAD that is SHA-1 truncated to 128 bits, taken over the
    Node-ID's 16-byte wire form.
    """
    digest = hashlib.sha1(id_to_bytes(node_id)).digest()
    return int.from_bytes(digest[:NODE_ID_BYTES], "big")


def node_multiple_resource(node_id: int, index: int) -> int:
    """The Resource-ID that NODE-MULTIPLE lets ``node_id`` write with index ``i``."""
    digest = hashlib.sha1(id_to_bytes(node_id) + index.to_bytes(4, "big")).digest()
    return int.from_bytes(digest[:NODE_ID_BYTES], "big")


def check_access(
    kind: Kind,
    resource: int,
    value: DataValue | ArrayEntry | DictionaryEntry,
    signer_node_id: int,
) -> None:
    """
    Raise :class:`AccessDenied` unless ``signer_node_id`` may write ``value``.

    The caller has already verified the signature; this only applies the
    Kind's policy to the signer it proved.
    """
    policy = kind.access
    if policy is AccessPolicy.ANY_SIGNER:
        return
    if policy is AccessPolicy.NODE_MATCH:
        if resource != node_match_resource(signer_node_id):
            raise AccessDenied("NODE-MATCH: resource is not the hash of the signer's Node-ID")
        return
    if policy is AccessPolicy.NODE_MULTIPLE:
        for index in range(1, kind.node_multiple_max + 1):
            if resource == node_multiple_resource(signer_node_id, index):
                return
        raise AccessDenied(
            "NODE-MULTIPLE: resource is not the hash of the signer's Node-ID and an index"
        )
    # TODO(#5): enrolment.  USER-MATCH and USER-NODE-MATCH need the user name
    # from an enrolment certificate, which self-signed mode does not have.
    raise AccessDenied(f"{policy.value} needs enrolment certificates, which this overlay lacks")


#: RFC 7904 s3: the SIP-REGISTRATION Kind; dictionary keyed by the
#: registering Node-ID, one entry per registering node.  RFC 7904 uses
#: USER-NODE-MATCH; this overlay uses ANY_SIGNER until enrolment (TODO(#5)).
SIP_REGISTRATION = Kind(
    kind_id=1,
    name="SIP-REGISTRATION",
    data_model=DataModel.DICTIONARY,
    max_count=16,
    max_size=1024,
    access=AccessPolicy.ANY_SIGNER,
)

#: A Kind-ID from RFC 6940's private-use range (0xf0000000 and up) for opaque
#: values that the ``p2psip put``/``get`` admin commands and the demo store.
DATA = Kind(
    kind_id=0xF0000001,
    name="DATA",
    data_model=DataModel.SINGLE_VALUE,
    max_count=1,
    max_size=4096,
    access=AccessPolicy.ANY_SIGNER,
)

DEFAULT_KINDS: Mapping[int, Kind] = MappingProxyType(
    {kind.kind_id: kind for kind in (SIP_REGISTRATION, DATA)}
)


def data_models(kinds: Mapping[int, Kind] | Iterable[Kind]) -> dict[int, DataModel]:
    """The Kind-ID -> data model map that the codec needs to decode Store/Fetch/Stat."""
    values = kinds.values() if isinstance(kinds, Mapping) else kinds
    return {kind.kind_id: kind.data_model for kind in values}
