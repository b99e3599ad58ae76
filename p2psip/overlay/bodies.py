"""
RELOAD message bodies (the ``message_body`` of MessageContents).

Each body is a frozen attrs class with ``encode()`` and a ``decode()``
classmethod, and a ``CODE`` naming its message code.  Wire formats, from
RFC 6940 (every ``<..>`` vector is prefixed by its *byte* length, in 1, 2
or 4 bytes for ``2^8-1``, ``2^16-1`` and ``2^32-1``):

- Join (s6.4.2.2.1): JoinReq = NodeId joining_peer_id, opaque
  overlay_specific<2^16-1>; JoinAns = opaque overlay_specific<2^16-1>.
- Leave (s6.4.2.3.1): LeaveReq = NodeId leaving_peer_id, opaque
  overlay_specific<2^16-1>; LeaveAns is empty.  CHORD-RELOAD (s9.8) puts a
  ChordLeaveData in overlay_specific: uint8 type, NodeId list<2^16-1>.
- Update (s6.4.2.4, CHORD-RELOAD s9.5): the body *is* a ChordUpdate:
  uint32 uptime, uint8 type, then nothing (peer_ready), predecessors and
  successors (neighbors) or those plus fingers (full), each a NodeId
  list<2^16-1>.  UpdateAns is empty.
- RouteQuery (s6.4.2.5): RouteQueryReq = Boolean send_update, Destination,
  opaque overlay_specific<2^16-1>; the answer is CHORD-RELOAD's
  ChordRouteQueryAns (s9.4) = NodeId next_peer.
- Probe (s6.4.2.6): ProbeReq = uint8 requested_info<2^8-1>; ProbeAns =
  ProbeInformation probe_info<2^16-1>, each uint8 type, uint8 length,
  uint32 value.
- Ping (s6.4.2.7): PingReq = opaque padding<2^16-1>; PingAns = uint64
  response_id, uint64 time.
- Store (s7.4.1): StoreReq = ResourceId resource (opaque<2^8-1>), uint8
  replica_number, StoreKindData kind_data<2^32-1>; StoreKindData = uint32
  kind, uint64 generation_counter, StoredData values<2^32-1>; StoreAns =
  StoreKindResponse<2^16-1>, each uint32 kind, uint64 generation_counter,
  NodeId replicas<2^16-1>.
- StoredData (s7.1): uint32 length, uint64 storage_time, uint32 lifetime,
  StoredDataValue (a DataValue, ArrayEntry or DictionaryEntry by the kind's
  data model), Signature.
- Fetch (s7.4.2): FetchReq = ResourceId, StoredDataSpecifier
  specifiers<2^16-1>; a specifier is uint32 kind, uint64 generation,
  uint16 length, then ArrayRange indices<2^16-1> (array), DictionaryKey
  keys<2^16-1> (dictionary) or nothing (single value).  FetchAns =
  FetchKindResponse<2^32-1>, each uint32 kind, uint64 generation,
  StoredData values<2^32-1>.
- Stat (s7.4.3): StatReq as FetchReq; StatAns = StatKindResponse<2^32-1>,
  each uint32 kind, uint64 generation, StoredMetaData values<2^32-1>;
  StoredMetaData = uint32 length, uint64 storage_time, uint32 lifetime,
  MetaData (Boolean exists, uint32 value_length, uint8 hash_algorithm,
  opaque hash_value<2^8-1>) behind an index or key as for StoredData.
- Find (s7.4.4): FindReq = ResourceId, KindId kinds<2^8-1>;
  FindAns = FindKindData results<2^16-1>, each uint32 kind, ResourceId.
- Attach (s6.5.1): ufrag<2^8-1>, password<2^8-1>, role<2^8-1>,
  IceCandidate candidates<2^16-1>, Boolean send_update, the same for the
  request and the answer.  An IceCandidate is IpAddressPort (uint8 type,
  uint8 length, 4- or 16-byte address, uint16 port), uint8 overlay_link,
  opaque foundation<2^8-1>, uint32 priority, uint8 type, a related
  IpAddressPort unless the type is host, IceExtension extensions<2^16-1>.
- AppAttach (s6.5.2): ufrag, password, uint16 application, role,
  candidates (no send_update).
- Error (s6.3.3.1): uint16 error_code, opaque error_info<2^16-1> (UTF-8
  text, or a structure for some codes).

Store, Fetch and Stat need the data model of every kind they mention; a
decoder that meets kinds it does not know still checks the whole body and
then raises :class:`~p2psip.overlay.codec.UnknownKindError` naming all of
them, so the node can answer Error_Unknown_Kind.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from typing import Any, ClassVar, TypeVar, Union

from attrs import field, frozen

from p2psip.overlay.codec import (
    DEFAULT_LIMITS,
    DecodeError,
    Limits,
    Reader,
    UnknownKindError,
    Writer,
)
from p2psip.overlay.message import (
    Destination,
    ErrorCode,
    MessageCode,
    Signature,
    SignerIdentity,
    SignerIdentityType,
    decode_destination,
    decode_signature,
    encode_destination,
    encode_signature,
    encode_signer_identity,
)

__all__ = [
    "BODY_TYPES",
    "AddressType",
    "AppAttachAns",
    "AppAttachReq",
    "AttachAns",
    "AttachReq",
    "CandidateType",
    "FindAns",
    "FindKindData",
    "FindReq",
    "IceCandidate",
    "IceExtension",
    "IpAddressPort",
    "OverlayLinkType",
    "ArrayEntry",
    "ArrayEntryMeta",
    "ArrayRange",
    "Body",
    "ChordLeaveData",
    "ChordLeaveType",
    "ChordUpdateType",
    "DataModel",
    "DataValue",
    "DictionaryEntry",
    "DictionaryEntryMeta",
    "ErrorResponse",
    "FetchAns",
    "FetchKindResponse",
    "FetchReq",
    "JoinAns",
    "JoinReq",
    "LeaveAns",
    "LeaveReq",
    "MetaData",
    "PingAns",
    "PingReq",
    "ProbeAns",
    "ProbeInformation",
    "ProbeInformationType",
    "ProbeReq",
    "RouteQueryAns",
    "RouteQueryReq",
    "StatAns",
    "StatKindResponse",
    "StatReq",
    "StoreAns",
    "StoreKindData",
    "StoreKindResponse",
    "StoreReq",
    "StoredData",
    "StoredDataSpecifier",
    "StoredMetaData",
    "UpdateAns",
    "UpdateReq",
    "decode_body",
    "decode_unknown_kinds",
    "encode_stored_value",
    "encode_unknown_kinds",
    "stored_data_signature_input",
    "with_replica_number",
]

DataModels = Mapping[int, "DataModel"]
_T = TypeVar("_T")


class DataModel(IntEnum):
    SINGLE_VALUE = 1
    ARRAY = 2
    DICTIONARY = 3


# -- helpers ------------------------------------------------------------------


def _read_items(
    reader: Reader, width_bytes: int, what: str, read_item: Callable[[Reader], _T]
) -> tuple[_T, ...]:
    """Decode a vector of structures, counting items against the list limit."""
    inner = reader.vector(width_bytes, what)
    items: list[_T] = []
    limit = reader.limits.max_list_items
    while not inner.at_end():
        inner.check_count(len(items) + 1, limit, what)
        items.append(read_item(inner))
    return tuple(items)


def _write_items(
    writer: Writer,
    width_bytes: int,
    items: Iterable[_T],
    write_item: Callable[[Writer, _T], object],
    what: str,
) -> None:
    inner = Writer()
    for item in items:
        write_item(inner, item)
    writer.opaque(width_bytes, inner.getvalue(), what)


def _read_node_id(reader: Reader) -> int:
    return reader.id128("node id")


def _write_node_id(writer: Writer, node_id: int) -> None:
    writer.id128(node_id, "node id")


def _write_resource(writer: Writer, resource: int) -> None:
    # ResourceId is opaque<0..2^8-1>; CHORD-RELOAD's are always 16 bytes.
    writer.u8(16).id128(resource, "resource id")


def _read_resource(reader: Reader) -> int:
    resource = reader.opaque(1, "resource id")
    if len(resource) != 16:
        raise DecodeError(f"resource id of {len(resource)} bytes, expected 16")
    return int.from_bytes(resource, "big")


def _decoder(data: bytes, limits: Limits) -> Reader:
    if len(data) > limits.max_message_bytes:
        raise DecodeError(f"body of {len(data)} bytes exceeds the message limit")
    return Reader(data, limits=limits)


def _model_of(kind: int, data_models: DataModels | None) -> DataModel | None:
    if data_models is None:
        return None
    return data_models.get(kind)


# -- Join / Leave ---------------------------------------------------------------


@frozen
class JoinReq:
    CODE: ClassVar[MessageCode] = MessageCode.JOIN_REQ
    joining_peer_id: int
    overlay_specific: bytes = b""

    def encode(self) -> bytes:
        writer = Writer().id128(self.joining_peer_id, "joining_peer_id")
        return writer.opaque(2, self.overlay_specific, "overlay_specific").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> JoinReq:
        reader = _decoder(data, limits)
        result = cls(reader.id128("joining_peer_id"), reader.opaque(2, "overlay_specific"))
        reader.expect_end("JoinReq")
        return result


@frozen
class JoinAns:
    CODE: ClassVar[MessageCode] = MessageCode.JOIN_ANS
    overlay_specific: bytes = b""

    def encode(self) -> bytes:
        return Writer().opaque(2, self.overlay_specific, "overlay_specific").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> JoinAns:
        reader = _decoder(data, limits)
        result = cls(reader.opaque(2, "overlay_specific"))
        reader.expect_end("JoinAns")
        return result


@frozen
class LeaveReq:
    CODE: ClassVar[MessageCode] = MessageCode.LEAVE_REQ
    leaving_peer_id: int
    overlay_specific: bytes = b""

    def encode(self) -> bytes:
        writer = Writer().id128(self.leaving_peer_id, "leaving_peer_id")
        return writer.opaque(2, self.overlay_specific, "overlay_specific").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> LeaveReq:
        reader = _decoder(data, limits)
        result = cls(reader.id128("leaving_peer_id"), reader.opaque(2, "overlay_specific"))
        reader.expect_end("LeaveReq")
        return result


class _EmptyBody:
    """Answers that carry nothing (LeaveAns, UpdateAns)."""

    CODE: ClassVar[MessageCode]

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> Any:
        if data:
            raise DecodeError(f"{cls.__name__} must be empty, got {len(data)} bytes")
        return cls()


@frozen
class LeaveAns(_EmptyBody):
    CODE: ClassVar[MessageCode] = MessageCode.LEAVE_ANS


class ChordLeaveType(IntEnum):
    FROM_SUCCESSOR = 1
    FROM_PREDECESSOR = 2


@frozen
class ChordLeaveData:
    """
    CHORD-RELOAD's LeaveReq overlay_specific data (RFC 6940 s9.8).

    A leaving peer tells its predecessor (FROM_SUCCESSOR: the Leave comes
    from the receiver's successor) its successor list, and its successor
    (FROM_PREDECESSOR) its predecessor list, so both can repair their
    neighbour tables without waiting for failure detection.
    """

    type: ChordLeaveType
    node_ids: tuple[int, ...]

    def encode(self) -> bytes:
        writer = Writer().u8(self.type, "leave type")
        _write_items(writer, 2, self.node_ids, _write_node_id, "leave node ids")
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> ChordLeaveData:
        reader = _decoder(data, limits)
        leave_type = reader.u8("leave type")
        if leave_type not in (ChordLeaveType.FROM_SUCCESSOR, ChordLeaveType.FROM_PREDECESSOR):
            raise DecodeError(f"unknown ChordLeaveType {leave_type}")
        node_ids = _read_items(reader, 2, "leave node ids", _read_node_id)
        reader.expect_end("ChordLeaveData")
        return cls(ChordLeaveType(leave_type), node_ids)


# -- Update ---------------------------------------------------------------------


class ChordUpdateType(IntEnum):
    PEER_READY = 1
    NEIGHBORS = 2
    FULL = 3


@frozen
class UpdateReq:
    """CHORD-RELOAD's ChordUpdate, which is the whole UpdateReq body."""

    CODE: ClassVar[MessageCode] = MessageCode.UPDATE_REQ
    uptime: int
    type: ChordUpdateType
    predecessors: tuple[int, ...] = ()
    successors: tuple[int, ...] = ()
    fingers: tuple[int, ...] = ()

    def encode(self) -> bytes:
        writer = Writer().u32(self.uptime, "uptime").u8(self.type, "update type")
        if self.type == ChordUpdateType.PEER_READY:
            if self.predecessors or self.successors or self.fingers:
                raise ValueError("a peer_ready update carries no node lists")
            return writer.getvalue()
        _write_items(writer, 2, self.predecessors, _write_node_id, "predecessors")
        _write_items(writer, 2, self.successors, _write_node_id, "successors")
        if self.type == ChordUpdateType.NEIGHBORS:
            if self.fingers:
                raise ValueError("a neighbors update carries no fingers")
        elif self.type == ChordUpdateType.FULL:
            _write_items(writer, 2, self.fingers, _write_node_id, "fingers")
        else:
            raise ValueError(f"unknown ChordUpdateType {self.type!r}")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> UpdateReq:
        reader = _decoder(data, limits)
        uptime = reader.u32("uptime")
        update_type = reader.u8("update type")
        if update_type not in (
            ChordUpdateType.PEER_READY,
            ChordUpdateType.NEIGHBORS,
            ChordUpdateType.FULL,
        ):
            raise DecodeError(f"unknown ChordUpdateType {update_type}")
        predecessors: tuple[int, ...] = ()
        successors: tuple[int, ...] = ()
        fingers: tuple[int, ...] = ()
        if update_type != ChordUpdateType.PEER_READY:
            predecessors = _read_items(reader, 2, "predecessors", _read_node_id)
            successors = _read_items(reader, 2, "successors", _read_node_id)
        if update_type == ChordUpdateType.FULL:
            fingers = _read_items(reader, 2, "fingers", _read_node_id)
        reader.expect_end("ChordUpdate")
        return cls(uptime, ChordUpdateType(update_type), predecessors, successors, fingers)


@frozen
class UpdateAns(_EmptyBody):
    CODE: ClassVar[MessageCode] = MessageCode.UPDATE_ANS


# -- RouteQuery -------------------------------------------------------------------


@frozen
class RouteQueryReq:
    CODE: ClassVar[MessageCode] = MessageCode.ROUTE_QUERY_REQ
    send_update: bool
    destination: Destination
    overlay_specific: bytes = b""

    def encode(self) -> bytes:
        writer = Writer().boolean(self.send_update).raw(encode_destination(self.destination))
        return writer.opaque(2, self.overlay_specific, "overlay_specific").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> RouteQueryReq:
        reader = _decoder(data, limits)
        send_update = reader.boolean("send_update")
        destination = decode_destination(reader)
        overlay_specific = reader.opaque(2, "overlay_specific")
        reader.expect_end("RouteQueryReq")
        return cls(send_update, destination, overlay_specific)


@frozen
class RouteQueryAns:
    """CHORD-RELOAD's ChordRouteQueryAns: the peer the query would go to next."""

    CODE: ClassVar[MessageCode] = MessageCode.ROUTE_QUERY_ANS
    next_peer: int

    def encode(self) -> bytes:
        return Writer().id128(self.next_peer, "next_peer").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> RouteQueryAns:
        reader = _decoder(data, limits)
        result = cls(reader.id128("next_peer"))
        reader.expect_end("RouteQueryAns")
        return result


# -- Ping / Probe ---------------------------------------------------------------------


@frozen
class PingReq:
    CODE: ClassVar[MessageCode] = MessageCode.PING_REQ
    padding: bytes = b""

    def encode(self) -> bytes:
        return Writer().opaque(2, self.padding, "padding").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> PingReq:
        reader = _decoder(data, limits)
        result = cls(reader.opaque(2, "padding"))
        reader.expect_end("PingReq")
        return result


@frozen
class PingAns:
    """``time`` is milliseconds since the Unix epoch, as the RFC says."""

    CODE: ClassVar[MessageCode] = MessageCode.PING_ANS
    response_id: int
    time: int

    def encode(self) -> bytes:
        return Writer().u64(self.response_id, "response_id").u64(self.time, "time").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> PingAns:
        reader = _decoder(data, limits)
        result = cls(reader.u64("response_id"), reader.u64("time"))
        reader.expect_end("PingAns")
        return result


class ProbeInformationType(IntEnum):
    RESPONSIBLE_SET = 1
    NUM_RESOURCES = 2
    UPTIME = 3


def _probe_type(value: int) -> int:
    # Unknown types are kept as plain ints so they survive a round trip.
    try:
        return ProbeInformationType(value)
    except ValueError:
        return value


@frozen
class ProbeReq:
    CODE: ClassVar[MessageCode] = MessageCode.PROBE_REQ
    requested_info: tuple[int, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_items(
            writer, 1, self.requested_info, lambda w, t: w.u8(t, "probe type"), "requested_info"
        )
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> ProbeReq:
        reader = _decoder(data, limits)
        requested = _read_items(
            reader, 1, "requested_info", lambda r: _probe_type(r.u8("probe type"))
        )
        reader.expect_end("ProbeReq")
        return cls(requested)


@frozen
class ProbeInformation:
    """Every defined probe value is a uint32 (responsible ppb, count, seconds)."""

    type: int
    value: int


def _write_probe_information(writer: Writer, info: ProbeInformation) -> None:
    writer.u8(info.type, "probe type").u8(4).u32(info.value, "probe value")


def _read_probe_information(reader: Reader) -> ProbeInformation:
    info_type = reader.u8("probe type")
    data = reader.fixed(reader.u8("probe length"), "probe information")
    value = data.u32("probe value")
    data.expect_end("probe information")
    return ProbeInformation(_probe_type(info_type), value)


@frozen
class ProbeAns:
    CODE: ClassVar[MessageCode] = MessageCode.PROBE_ANS
    probe_info: tuple[ProbeInformation, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_items(writer, 2, self.probe_info, _write_probe_information, "probe_info")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> ProbeAns:
        reader = _decoder(data, limits)
        info = _read_items(reader, 2, "probe_info", _read_probe_information)
        reader.expect_end("ProbeAns")
        return cls(info)


# -- Stored data ------------------------------------------------------------------------


@frozen
class DataValue:
    exists: bool
    value: bytes


@frozen
class ArrayEntry:
    index: int
    value: DataValue


@frozen
class DictionaryEntry:
    key: bytes
    value: DataValue


StoredValue = Union[DataValue, ArrayEntry, DictionaryEntry]


def _write_data_value(writer: Writer, value: DataValue) -> None:
    writer.boolean(value.exists).opaque(4, value.value, "data value")


def _read_data_value(reader: Reader) -> DataValue:
    exists = reader.boolean("exists")
    return DataValue(exists, reader.opaque(4, "data value"))


def _write_stored_value(writer: Writer, value: StoredValue) -> None:
    if isinstance(value, DataValue):
        _write_data_value(writer, value)
    elif isinstance(value, ArrayEntry):
        writer.u32(value.index, "array index")
        _write_data_value(writer, value.value)
    elif isinstance(value, DictionaryEntry):
        writer.opaque(2, value.key, "dictionary key")
        _write_data_value(writer, value.value)
    else:
        raise ValueError(f"not a stored value: {value!r}")


def _read_stored_value(reader: Reader, model: DataModel) -> StoredValue:
    if model == DataModel.SINGLE_VALUE:
        return _read_data_value(reader)
    if model == DataModel.ARRAY:
        index = reader.u32("array index")
        return ArrayEntry(index, _read_data_value(reader))
    key = reader.opaque(2, "dictionary key")
    return DictionaryEntry(key, _read_data_value(reader))


def encode_stored_value(value: StoredValue) -> bytes:
    """The StoredDataValue bytes, as covered by the StoredData signature."""
    writer = Writer()
    _write_stored_value(writer, value)
    return writer.getvalue()


def stored_data_signature_input(
    resource_id: int, kind: int, storage_time: int, value_bytes: bytes, identity: SignerIdentity
) -> bytes:
    """
    What a StoredData signature covers (RFC 6940 s7.1):
    resource_id || kind || storage_time || StoredDataValue || SignerIdentity,
    with the Resource-ID as its 16 bytes, kind as uint32 and storage_time as
    uint64.  Binding the resource and kind stops a stored value being
    replayed under another name.
    """
    writer = Writer().id128(resource_id, "resource id").u32(kind, "kind")
    writer.u64(storage_time, "storage_time").raw(value_bytes)
    return writer.raw(encode_signer_identity(identity)).getvalue()


@frozen
class StoredData:
    """One stored value with its signature; the uint32 length is computed."""

    storage_time: int
    lifetime: int
    value: StoredValue
    signature: Signature


def _write_stored_data(writer: Writer, stored: StoredData) -> None:
    inner = Writer().u64(stored.storage_time, "storage_time").u32(stored.lifetime, "lifetime")
    _write_stored_value(inner, stored.value)
    inner.raw(encode_signature(stored.signature))
    writer.opaque(4, inner.getvalue(), "StoredData")


def _read_stored_data(reader: Reader, model: DataModel) -> StoredData:
    inner = reader.vector(4, "StoredData")
    storage_time = inner.u64("storage_time")
    lifetime = inner.u32("lifetime")
    value = _read_stored_value(inner, model)
    signature = decode_signature(inner)
    inner.expect_end("StoredData")
    return StoredData(storage_time, lifetime, value, signature)


#: storage_time and lifetime; a SignerIdentity's type, length, hash
#: algorithm and hash length (RFC 6940 s6.3.4, s7).
_STORED_HEAD = struct.Struct(">QI")
_HASH_IDENTITY_HEAD = struct.Struct(">BHBB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_HASH_IDENTITIES = (SignerIdentityType.CERT_HASH, SignerIdentityType.CERT_HASH_NODE_ID)


def encode_stored_data(stored: StoredData) -> bytes:
    """
    A StoredData's contents (without its uint32 length), as signed and sent.

    A peer holds each stored value in this form, one ``bytes`` object, and
    reads it back with :func:`decode_stored_data` when it is fetched or
    passed on.  Both run for every stored copy, so the usual layout (a
    cert_hash signer) is packed by hand; anything else, or a field too long
    for its length prefix, goes through the general writer and its errors.
    """
    value, signature = stored.value, stored.signature
    identity = signature.identity
    if isinstance(value, DictionaryEntry):
        fits = len(value.key) <= 0xFFFF
        prefix = _U16.pack(len(value.key)) + value.key if fits else b""
        payload = value.value
    elif isinstance(value, ArrayEntry):
        prefix, payload, fits = _U32.pack(value.index), value.value, True
    else:
        prefix, payload, fits = b"", value, True
    if (
        fits
        and identity.identity_type in _HASH_IDENTITIES
        and len(identity.value) <= 0xFF
        and len(signature.value) <= 0xFFFF
        and len(payload.value) <= 0xFFFFFFFF
    ):
        try:
            return b"".join(
                (
                    _STORED_HEAD.pack(stored.storage_time, stored.lifetime),
                    prefix,
                    b"\x01" if payload.exists else b"\x00",
                    _U32.pack(len(payload.value)),
                    payload.value,
                    bytes((signature.hash_algorithm, signature.signature_algorithm)),
                    _HASH_IDENTITY_HEAD.pack(
                        identity.identity_type,
                        2 + len(identity.value),
                        identity.hash_algorithm,
                        len(identity.value),
                    ),
                    identity.value,
                    _U16.pack(len(signature.value)),
                    signature.value,
                )
            )
        except (struct.error, ValueError):
            pass  # a number out of range: the writer names it
    inner = Writer().u64(stored.storage_time, "storage_time").u32(stored.lifetime, "lifetime")
    _write_stored_value(inner, value)
    return inner.raw(encode_signature(signature)).getvalue()


def decode_stored_data(data: bytes, model: DataModel) -> StoredData:
    """
    The StoredData whose contents :func:`encode_stored_data` made.

    :raises DecodeError: ``data`` is not one StoredData of ``model``.
    """
    try:
        return _unpack_stored_data(data, model)
    except (struct.error, IndexError, ValueError):
        pass  # not the usual layout, or damaged: the reader says what is wrong
    reader = Reader(data)
    storage_time = reader.u64("storage_time")
    lifetime = reader.u32("lifetime")
    value = _read_stored_value(reader, model)
    signature = decode_signature(reader)
    reader.expect_end("StoredData")
    return StoredData(storage_time, lifetime, value, signature)


def _unpack_stored_data(data: bytes, model: DataModel) -> StoredData:
    """The usual layout read by hand; anything unexpected raises ValueError."""
    storage_time, lifetime = _STORED_HEAD.unpack_from(data)
    offset = _STORED_HEAD.size
    key = b""
    index = 0
    if model is DataModel.DICTIONARY:
        (length,) = _U16.unpack_from(data, offset)
        key = data[offset + 2 : offset + 2 + length]
        offset += 2 + length
    elif model is DataModel.ARRAY:
        (index,) = _U32.unpack_from(data, offset)
        offset += 4
    exists = data[offset]
    (length,) = _U32.unpack_from(data, offset + 1)
    offset += 5
    payload = data[offset : offset + length]
    offset += length
    hash_algorithm, signature_algorithm = data[offset], data[offset + 1]
    identity_type, identity_length, identity_hash, hash_length = _HASH_IDENTITY_HEAD.unpack_from(
        data, offset + 2
    )
    offset += 2 + _HASH_IDENTITY_HEAD.size
    if (
        exists > 1
        or len(payload) != length
        or identity_type not in _HASH_IDENTITIES
        or identity_length != 2 + hash_length
    ):
        raise ValueError("not the usual layout")
    hash_value = data[offset : offset + hash_length]
    offset += hash_length
    (length,) = _U16.unpack_from(data, offset)
    signature_value = data[offset + 2 : offset + 2 + length]
    if len(hash_value) != hash_length or offset + 2 + length != len(data):
        raise ValueError("not the usual layout")
    data_value = DataValue(exists == 1, payload)
    value: StoredValue = data_value
    if model is DataModel.DICTIONARY:
        value = DictionaryEntry(key, data_value)
    elif model is DataModel.ARRAY:
        value = ArrayEntry(index, data_value)
    identity = SignerIdentity(SignerIdentityType(identity_type), identity_hash, hash_value)
    return StoredData(
        storage_time,
        lifetime,
        value,
        Signature(hash_algorithm, signature_algorithm, identity, signature_value),
    )


def _read_stored_data_list(reader: Reader, model: DataModel | None) -> tuple[StoredData, ...]:
    if model is None:
        reader.vector(4, "values")  # skipped: the kind is unknown
        return ()
    return _read_items(reader, 4, "values", lambda r: _read_stored_data(r, model))


# -- Store ---------------------------------------------------------------------------------


@frozen
class StoreKindData:
    kind: int
    generation_counter: int
    values: tuple[StoredData, ...]


def _write_store_kind_data(writer: Writer, kind_data: StoreKindData) -> None:
    writer.u32(kind_data.kind, "kind").u64(kind_data.generation_counter, "generation_counter")
    _write_items(writer, 4, kind_data.values, _write_stored_data, "values")


@frozen
class StoreReq:
    CODE: ClassVar[MessageCode] = MessageCode.STORE_REQ
    resource: int
    replica_number: int
    kind_data: tuple[StoreKindData, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_resource(writer, self.resource)
        writer.u8(self.replica_number, "replica_number")
        _write_items(writer, 4, self.kind_data, _write_store_kind_data, "kind_data")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> StoreReq:
        reader = _decoder(data, limits)
        resource = _read_resource(reader)
        replica_number = reader.u8("replica_number")
        unknown: list[int] = []

        def read_kind_data(item: Reader) -> StoreKindData:
            kind = item.u32("kind")
            generation = item.u64("generation_counter")
            model = _model_of(kind, data_models)
            if model is None:
                unknown.append(kind)
            return StoreKindData(kind, generation, _read_stored_data_list(item, model))

        kind_data = _read_items(reader, 4, "kind_data", read_kind_data)
        reader.expect_end("StoreReq")
        if unknown:
            raise UnknownKindError(unknown)
        return cls(resource, replica_number, kind_data)


def with_replica_number(body: bytes, replica_number: int) -> bytes:
    """
    An encoded StoreReq with another ``replica_number``.

    A responsible peer copies a Store to its successors unchanged but for
    that one byte (RFC 6940 s10.4), so it patches the bytes it received (or
    encoded once) instead of encoding the values again per replica.
    """
    if not 0 <= replica_number <= 0xFF:
        raise ValueError(f"replica_number {replica_number} does not fit in a byte")
    if not body:
        raise ValueError("not a StoreReq body: empty")
    position = 1 + body[0]
    if position >= len(body):
        raise ValueError("not a StoreReq body: it ends inside its resource")
    return b"".join((body[:position], bytes((replica_number,)), body[position + 1 :]))


@frozen
class StoreKindResponse:
    kind: int
    generation_counter: int
    replicas: tuple[int, ...]


def _write_store_kind_response(writer: Writer, response: StoreKindResponse) -> None:
    writer.u32(response.kind, "kind").u64(response.generation_counter, "generation_counter")
    _write_items(writer, 2, response.replicas, _write_node_id, "replicas")


def _read_store_kind_response(reader: Reader) -> StoreKindResponse:
    kind = reader.u32("kind")
    generation = reader.u64("generation_counter")
    return StoreKindResponse(kind, generation, _read_items(reader, 2, "replicas", _read_node_id))


@frozen
class StoreAns:
    CODE: ClassVar[MessageCode] = MessageCode.STORE_ANS
    kind_responses: tuple[StoreKindResponse, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_items(writer, 2, self.kind_responses, _write_store_kind_response, "kind_responses")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> StoreAns:
        reader = _decoder(data, limits)
        responses = _read_items(reader, 2, "kind_responses", _read_store_kind_response)
        reader.expect_end("StoreAns")
        return cls(responses)


# -- Fetch / Stat requests -----------------------------------------------------------------


@frozen
class ArrayRange:
    """Inclusive range of array indices; ``last`` 0xffffffff means the end."""

    first: int
    last: int


@frozen
class StoredDataSpecifier:
    """
    Which values of one kind to fetch.  ``data_model`` says whether
    ``indices`` (array), ``keys`` (dictionary) or neither (single value) go
    on the wire; when it is None it is inferred from which list is set, so
    pass it for an array or dictionary fetch of *all* entries.
    """

    kind: int
    generation: int
    indices: tuple[ArrayRange, ...] = ()
    keys: tuple[bytes, ...] = ()
    data_model: DataModel | None = None

    def model(self) -> DataModel:
        if self.data_model is not None:
            return self.data_model
        if self.indices and self.keys:
            raise ValueError("a specifier has indices or keys, not both")
        if self.indices:
            return DataModel.ARRAY
        if self.keys:
            return DataModel.DICTIONARY
        return DataModel.SINGLE_VALUE


def _write_specifier(writer: Writer, specifier: StoredDataSpecifier) -> None:
    model = specifier.model()
    inner = Writer()
    if model == DataModel.ARRAY:
        if specifier.keys:
            raise ValueError("an array specifier has no keys")
        _write_items(
            inner,
            2,
            specifier.indices,
            lambda w, r: w.u32(r.first, "first").u32(r.last, "last"),
            "indices",
        )
    elif model == DataModel.DICTIONARY:
        if specifier.indices:
            raise ValueError("a dictionary specifier has no indices")
        _write_items(inner, 2, specifier.keys, lambda w, k: w.opaque(2, k, "key"), "keys")
    elif specifier.indices or specifier.keys:
        raise ValueError("a single-value specifier has no indices or keys")
    writer.u32(specifier.kind, "kind").u64(specifier.generation, "generation")
    writer.opaque(2, inner.getvalue(), "model_specifier")


def _read_specifier(reader: Reader, data_models: DataModels | None) -> StoredDataSpecifier | int:
    """The specifier, or the bare kind when its data model is unknown."""
    kind = reader.u32("kind")
    generation = reader.u64("generation")
    inner = reader.vector(2, "model_specifier")
    model = _model_of(kind, data_models)
    if model is None:
        return kind
    indices: tuple[ArrayRange, ...] = ()
    keys: tuple[bytes, ...] = ()
    if model == DataModel.ARRAY:
        indices = _read_items(
            inner, 2, "indices", lambda r: ArrayRange(r.u32("first"), r.u32("last"))
        )
    elif model == DataModel.DICTIONARY:
        keys = _read_items(inner, 2, "keys", lambda r: r.opaque(2, "key"))
    inner.expect_end("StoredDataSpecifier")
    return StoredDataSpecifier(kind, generation, indices, keys, model)


class _ResourceSpecifiers:
    """The shared wire form of FetchReq and StatReq."""

    resource: int
    specifiers: tuple[StoredDataSpecifier, ...]

    def __init__(self, resource: int, specifiers: tuple[StoredDataSpecifier, ...]) -> None:
        raise NotImplementedError  # attrs generates the real one in subclasses

    def encode(self) -> bytes:
        writer = Writer()
        _write_resource(writer, self.resource)
        _write_items(writer, 2, self.specifiers, _write_specifier, "specifiers")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> Any:
        reader = _decoder(data, limits)
        resource = _read_resource(reader)
        items = _read_items(reader, 2, "specifiers", lambda r: _read_specifier(r, data_models))
        reader.expect_end(cls.__name__)
        unknown = [item for item in items if isinstance(item, int)]
        if unknown:
            raise UnknownKindError(unknown)
        specifiers = tuple(item for item in items if isinstance(item, StoredDataSpecifier))
        return cls(resource, specifiers)


@frozen
class FetchReq(_ResourceSpecifiers):
    CODE: ClassVar[MessageCode] = MessageCode.FETCH_REQ
    resource: int
    specifiers: tuple[StoredDataSpecifier, ...]


@frozen
class StatReq(_ResourceSpecifiers):
    """Same wire form as FetchReq; asks for metadata instead of values."""

    CODE: ClassVar[MessageCode] = MessageCode.STAT_REQ
    resource: int
    specifiers: tuple[StoredDataSpecifier, ...]


# -- Fetch / Stat answers ------------------------------------------------------------------


@frozen
class FetchKindResponse:
    kind: int
    generation: int
    values: tuple[StoredData, ...]


def _write_fetch_kind_response(writer: Writer, response: FetchKindResponse) -> None:
    writer.u32(response.kind, "kind").u64(response.generation, "generation")
    _write_items(writer, 4, response.values, _write_stored_data, "values")


@frozen
class FetchAns:
    CODE: ClassVar[MessageCode] = MessageCode.FETCH_ANS
    kind_responses: tuple[FetchKindResponse, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_items(writer, 4, self.kind_responses, _write_fetch_kind_response, "kind_responses")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> FetchAns:
        reader = _decoder(data, limits)
        unknown: list[int] = []

        def read_one(item: Reader) -> FetchKindResponse:
            kind = item.u32("kind")
            generation = item.u64("generation")
            model = _model_of(kind, data_models)
            if model is None:
                unknown.append(kind)
            return FetchKindResponse(kind, generation, _read_stored_data_list(item, model))

        responses = _read_items(reader, 4, "kind_responses", read_one)
        reader.expect_end("FetchAns")
        if unknown:
            raise UnknownKindError(unknown)
        return cls(responses)


@frozen
class MetaData:
    """What Stat reports instead of a value: its size and a hash of it."""

    exists: bool
    value_length: int
    hash_algorithm: int
    hash_value: bytes


@frozen
class ArrayEntryMeta:
    index: int
    value: MetaData


@frozen
class DictionaryEntryMeta:
    key: bytes
    value: MetaData


MetaDataValue = Union[MetaData, ArrayEntryMeta, DictionaryEntryMeta]


@frozen
class StoredMetaData:
    """
    Stat's counterpart of StoredData.

    RFC 6940 s7.4.3 calls its leading uint32 ``value_length``; Wireshark's
    dissector reads it, like StoredData's ``length``, as the byte length of
    the rest of the structure, so that is what is computed and sent.  The
    ``value_length`` attribute is kept so callers can pass it, but it is
    not sent and takes no part in equality; decoding fills it with the
    number read.  The stored value's own size is in ``metadata``.
    """

    storage_time: int
    lifetime: int
    metadata: MetaDataValue
    value_length: int = field(default=0, eq=False)


def _write_metadata(writer: Writer, meta: MetaData) -> None:
    writer.boolean(meta.exists).u32(meta.value_length, "value_length")
    writer.u8(meta.hash_algorithm, "hash_algorithm").opaque(1, meta.hash_value, "hash_value")


def _read_metadata(reader: Reader) -> MetaData:
    exists = reader.boolean("exists")
    value_length = reader.u32("value_length")
    hash_algorithm = reader.u8("hash_algorithm")
    return MetaData(exists, value_length, hash_algorithm, reader.opaque(1, "hash_value"))


def _write_stored_metadata(writer: Writer, stored: StoredMetaData) -> None:
    inner = Writer().u64(stored.storage_time, "storage_time").u32(stored.lifetime, "lifetime")
    meta = stored.metadata
    if isinstance(meta, MetaData):
        _write_metadata(inner, meta)
    elif isinstance(meta, ArrayEntryMeta):
        inner.u32(meta.index, "array index")
        _write_metadata(inner, meta.value)
    elif isinstance(meta, DictionaryEntryMeta):
        inner.opaque(2, meta.key, "dictionary key")
        _write_metadata(inner, meta.value)
    else:
        raise ValueError(f"not metadata: {meta!r}")
    writer.opaque(4, inner.getvalue(), "StoredMetaData")


def _read_stored_metadata(reader: Reader, model: DataModel) -> StoredMetaData:
    inner = reader.vector(4, "StoredMetaData")
    inner_start = inner.offset
    storage_time = inner.u64("storage_time")
    lifetime = inner.u32("lifetime")
    meta: MetaDataValue
    if model == DataModel.SINGLE_VALUE:
        meta = _read_metadata(inner)
    elif model == DataModel.ARRAY:
        index = inner.u32("array index")
        meta = ArrayEntryMeta(index, _read_metadata(inner))
    else:
        key = inner.opaque(2, "dictionary key")
        meta = DictionaryEntryMeta(key, _read_metadata(inner))
    inner.expect_end("StoredMetaData")
    return StoredMetaData(storage_time, lifetime, meta, inner.end - inner_start)


@frozen
class StatKindResponse:
    kind: int
    generation: int
    values: tuple[StoredMetaData, ...]


def _write_stat_kind_response(writer: Writer, response: StatKindResponse) -> None:
    writer.u32(response.kind, "kind").u64(response.generation, "generation")
    _write_items(writer, 4, response.values, _write_stored_metadata, "values")


@frozen
class StatAns:
    CODE: ClassVar[MessageCode] = MessageCode.STAT_ANS
    kind_responses: tuple[StatKindResponse, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_items(writer, 4, self.kind_responses, _write_stat_kind_response, "kind_responses")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> StatAns:
        reader = _decoder(data, limits)
        unknown: list[int] = []

        def read_one(item: Reader) -> StatKindResponse:
            kind = item.u32("kind")
            generation = item.u64("generation")
            model = _model_of(kind, data_models)
            if model is None:
                unknown.append(kind)
                item.vector(4, "values")
                return StatKindResponse(kind, generation, ())
            values = _read_items(item, 4, "values", lambda r: _read_stored_metadata(r, model))
            return StatKindResponse(kind, generation, values)

        responses = _read_items(reader, 4, "kind_responses", read_one)
        reader.expect_end("StatAns")
        if unknown:
            raise UnknownKindError(unknown)
        return cls(responses)


# -- Find ---------------------------------------------------------------------------------------


@frozen
class FindReq:
    CODE: ClassVar[MessageCode] = MessageCode.FIND_REQ
    resource: int
    kinds: tuple[int, ...]

    def encode(self) -> bytes:
        writer = Writer()
        _write_resource(writer, self.resource)
        _write_items(writer, 1, self.kinds, lambda w, k: w.u32(k, "kind"), "kinds")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> FindReq:
        reader = _decoder(data, limits)
        resource = _read_resource(reader)
        kinds = _read_items(reader, 1, "kinds", lambda r: r.u32("kind"))
        reader.expect_end("FindReq")
        return cls(resource, kinds)


@frozen
class FindKindData:
    """The closest Resource-ID at or after the requested one that holds ``kind``; 0 if none."""

    kind: int
    closest: int


@frozen
class FindAns:
    CODE: ClassVar[MessageCode] = MessageCode.FIND_ANS
    results: tuple[FindKindData, ...]

    def encode(self) -> bytes:
        def write_one(writer: Writer, item: FindKindData) -> None:
            writer.u32(item.kind, "kind")
            _write_resource(writer, item.closest)

        writer = Writer()
        _write_items(writer, 2, self.results, write_one, "results")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> FindAns:
        reader = _decoder(data, limits)
        results = _read_items(
            reader, 2, "results", lambda r: FindKindData(r.u32("kind"), _read_resource(r))
        )
        reader.expect_end("FindAns")
        return cls(results)


# -- Attach / AppAttach ---------------------------------------------------------------------------


class AddressType(IntEnum):
    IPV4 = 1
    IPV6 = 2


class OverlayLinkType(IntEnum):
    DTLS_UDP_SR = 1
    DTLS_UDP_SR_NO_ICE = 3
    TLS_TCP_FH_NO_ICE = 4


class CandidateType(IntEnum):
    HOST = 1
    SERVER_REFLEXIVE = 2
    PEER_REFLEXIVE = 3
    RELAYED = 4


@frozen
class IpAddressPort:
    """An address and port; IPv4 or IPv6 is taken from the address text."""

    host: str
    port: int


def _write_address(writer: Writer, address: IpAddressPort) -> None:
    parsed = ipaddress.ip_address(address.host)
    if parsed.version == 4:
        writer.u8(AddressType.IPV4).u8(6)
    else:
        writer.u8(AddressType.IPV6).u8(18)
    writer.raw(parsed.packed).u16(address.port, "port")


def _read_address(reader: Reader) -> IpAddressPort:
    address_type = reader.u8("address type")
    inner = reader.fixed(reader.u8("address length"), "IpAddressPort")
    if address_type == AddressType.IPV4:
        host = str(ipaddress.IPv4Address(inner.raw(4, "IPv4 address")))
    elif address_type == AddressType.IPV6:
        host = str(ipaddress.IPv6Address(inner.raw(16, "IPv6 address")))
    else:
        raise DecodeError(f"unknown address type {address_type}")
    port = inner.u16("port")
    inner.expect_end("IpAddressPort")
    return IpAddressPort(host, port)


@frozen
class IceExtension:
    name: bytes
    value: bytes


@frozen
class IceCandidate:
    """
    A transport candidate (RFC 6940 s6.5.1.1).  ``related`` is the base
    address that reflexive and relayed candidates carry, None for host ones.
    """

    address: IpAddressPort
    overlay_link: int
    foundation: bytes
    priority: int
    type: int
    related: IpAddressPort | None = None
    extensions: tuple[IceExtension, ...] = ()


def _write_candidate(writer: Writer, candidate: IceCandidate) -> None:
    _write_address(writer, candidate.address)
    writer.u8(candidate.overlay_link, "overlay_link")
    writer.opaque(1, candidate.foundation, "foundation")
    writer.u32(candidate.priority, "priority").u8(candidate.type, "candidate type")
    if candidate.type == CandidateType.HOST:
        if candidate.related is not None:
            raise ValueError("a host candidate has no related address")
    else:
        if candidate.related is None:
            raise ValueError("reflexive and relayed candidates need a related address")
        _write_address(writer, candidate.related)
    _write_items(
        writer,
        2,
        candidate.extensions,
        lambda w, e: w.opaque(2, e.name, "extension name").opaque(2, e.value, "extension value"),
        "ice extensions",
    )


def _read_candidate(reader: Reader) -> IceCandidate:
    address = _read_address(reader)
    overlay_link = reader.u8("overlay_link")
    foundation = reader.opaque(1, "foundation")
    priority = reader.u32("priority")
    candidate_type = reader.u8("candidate type")
    related: IpAddressPort | None = None
    if candidate_type in (
        CandidateType.SERVER_REFLEXIVE,
        CandidateType.PEER_REFLEXIVE,
        CandidateType.RELAYED,
    ):
        related = _read_address(reader)
    elif candidate_type != CandidateType.HOST:
        raise DecodeError(f"unknown candidate type {candidate_type}")
    extensions = _read_items(
        reader,
        2,
        "ice extensions",
        lambda r: IceExtension(r.opaque(2, "extension name"), r.opaque(2, "extension value")),
    )
    return IceCandidate(
        address, overlay_link, foundation, priority, candidate_type, related, extensions
    )


class _AttachBody:
    """AttachReq and AttachAns share one structure (RFC 6940 s6.5.1)."""

    ufrag: bytes
    password: bytes
    role: bytes
    candidates: tuple[IceCandidate, ...]
    send_update: bool

    def __init__(
        self,
        ufrag: bytes,
        password: bytes,
        role: bytes,
        candidates: tuple[IceCandidate, ...],
        send_update: bool = False,
    ) -> None:
        raise NotImplementedError  # attrs generates the real one in subclasses

    def encode(self) -> bytes:
        writer = Writer().opaque(1, self.ufrag, "ufrag").opaque(1, self.password, "password")
        writer.opaque(1, self.role, "role")
        _write_items(writer, 2, self.candidates, _write_candidate, "candidates")
        return writer.boolean(self.send_update).getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> Any:
        reader = _decoder(data, limits)
        ufrag = reader.opaque(1, "ufrag")
        password = reader.opaque(1, "password")
        role = reader.opaque(1, "role")
        candidates = _read_items(reader, 2, "candidates", _read_candidate)
        send_update = reader.boolean("send_update")
        reader.expect_end(cls.__name__)
        return cls(ufrag, password, role, candidates, send_update)


@frozen
class AttachReq(_AttachBody):
    """Ask a peer to open a direct link; ``role`` is b"active" or b"passive"."""

    CODE: ClassVar[MessageCode] = MessageCode.ATTACH_REQ
    ufrag: bytes
    password: bytes
    role: bytes
    candidates: tuple[IceCandidate, ...]
    send_update: bool = False


@frozen
class AttachAns(_AttachBody):
    CODE: ClassVar[MessageCode] = MessageCode.ATTACH_ANS
    ufrag: bytes
    password: bytes
    role: bytes
    candidates: tuple[IceCandidate, ...]
    send_update: bool = False


class _AppAttachBody:
    """AppAttachReq and AppAttachAns share one structure (RFC 6940 s6.5.2)."""

    ufrag: bytes
    password: bytes
    application: int
    role: bytes
    candidates: tuple[IceCandidate, ...]

    def __init__(
        self,
        ufrag: bytes,
        password: bytes,
        application: int,
        role: bytes,
        candidates: tuple[IceCandidate, ...],
    ) -> None:
        raise NotImplementedError  # attrs generates the real one in subclasses

    def encode(self) -> bytes:
        writer = Writer().opaque(1, self.ufrag, "ufrag").opaque(1, self.password, "password")
        writer.u16(self.application, "application").opaque(1, self.role, "role")
        _write_items(writer, 2, self.candidates, _write_candidate, "candidates")
        return writer.getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> Any:
        reader = _decoder(data, limits)
        ufrag = reader.opaque(1, "ufrag")
        password = reader.opaque(1, "password")
        application = reader.u16("application")
        role = reader.opaque(1, "role")
        candidates = _read_items(reader, 2, "candidates", _read_candidate)
        reader.expect_end(cls.__name__)
        return cls(ufrag, password, application, role, candidates)


@frozen
class AppAttachReq(_AppAttachBody):
    """Open an application connection; ``application`` 5060 means SIP."""

    CODE: ClassVar[MessageCode] = MessageCode.APP_ATTACH_REQ
    ufrag: bytes
    password: bytes
    application: int
    role: bytes
    candidates: tuple[IceCandidate, ...]


@frozen
class AppAttachAns(_AppAttachBody):
    CODE: ClassVar[MessageCode] = MessageCode.APP_ATTACH_ANS
    ufrag: bytes
    password: bytes
    application: int
    role: bytes
    candidates: tuple[IceCandidate, ...]


# -- Error ------------------------------------------------------------------------------------


# Error codes whose error_info is a structure, not text (RFC 6940 s6.3.3.1,
# s7.4.1.2): a KindId list and a StoreAns.
_STRUCTURED_ERROR_CODES = frozenset({ErrorCode.UNKNOWN_KIND, ErrorCode.GENERATION_COUNTER_TOO_LOW})


@frozen
class ErrorResponse:
    """
    An Error answer.  On the wire (RFC 6940 s6.3.3.1) it is only
    ``uint16 error_code, opaque error_info<0..2^16-1>``; error_info is UTF-8
    text unless the code gives it a structure (Error_Unknown_Kind: a kind
    list, Error_Generation_Counter_Too_Low: a StoreAns).

    ``reason_phrase`` is the text form: it is sent as error_info when
    ``error_info`` is empty, and a decoded text error_info lands in it.  When
    both are set, ``error_info`` is sent and the phrase stays local (it is
    still worth logging).
    """

    CODE: ClassVar[MessageCode] = MessageCode.ERROR
    error_code: int
    reason_phrase: str = ""
    error_info: bytes = b""

    def wire_info(self) -> bytes:
        """The error_info bytes that go on the wire."""
        return self.error_info or self.reason_phrase.encode("utf-8")

    def encode(self) -> bytes:
        writer = Writer().u16(self.error_code, "error_code")
        return writer.opaque(2, self.wire_info(), "error_info").getvalue()

    @classmethod
    def decode(
        cls, data: bytes, limits: Limits = DEFAULT_LIMITS, data_models: DataModels | None = None
    ) -> ErrorResponse:
        reader = _decoder(data, limits)
        error_code = reader.u16("error_code")
        error_info = reader.opaque(2, "error_info")
        reader.expect_end("ErrorResponse")
        if error_code in _STRUCTURED_ERROR_CODES:
            return cls(error_code, "", error_info)
        try:
            return cls(error_code, error_info.decode("utf-8"), b"")
        except UnicodeDecodeError:
            # Not text after all: keep the bytes so nothing is lost.
            return cls(error_code, "", error_info)


def encode_unknown_kinds(kinds: Iterable[int]) -> bytes:
    """Error_Unknown_Kind's error_info: KindId unknown_kinds<0..2^8-1>."""
    writer = Writer()
    _write_items(writer, 1, kinds, lambda w, k: w.u32(k, "kind"), "unknown_kinds")
    return writer.getvalue()


def decode_unknown_kinds(data: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[int, ...]:
    """The kinds named in an Error_Unknown_Kind answer."""
    reader = _decoder(data, limits)
    kinds = _read_items(reader, 1, "unknown_kinds", lambda r: r.u32("kind"))
    reader.expect_end("unknown kinds")
    return kinds


# -- Dispatch ---------------------------------------------------------------------------------

Body = Union[
    AttachReq,
    AttachAns,
    AppAttachReq,
    AppAttachAns,
    FindReq,
    FindAns,
    JoinReq,
    JoinAns,
    LeaveReq,
    LeaveAns,
    UpdateReq,
    UpdateAns,
    RouteQueryReq,
    RouteQueryAns,
    PingReq,
    PingAns,
    ProbeReq,
    ProbeAns,
    StoreReq,
    StoreAns,
    FetchReq,
    FetchAns,
    StatReq,
    StatAns,
    ErrorResponse,
]

BODY_TYPES: dict[MessageCode, type] = {
    body_type.CODE: body_type
    for body_type in (
        AttachReq,
        AttachAns,
        AppAttachReq,
        AppAttachAns,
        FindReq,
        FindAns,
        JoinReq,
        JoinAns,
        LeaveReq,
        LeaveAns,
        UpdateReq,
        UpdateAns,
        RouteQueryReq,
        RouteQueryAns,
        PingReq,
        PingAns,
        ProbeReq,
        ProbeAns,
        StoreReq,
        StoreAns,
        FetchReq,
        FetchAns,
        StatReq,
        StatAns,
        ErrorResponse,
    )
}


def decode_body(
    code: int,
    data: bytes,
    limits: Limits = DEFAULT_LIMITS,
    data_models: DataModels | None = None,
) -> Body:
    """
    Decode a message body by its message code.

    :raises DecodeError: for a code without a body class here, or bad bytes.
    :raises UnknownKindError: when Store/Fetch/Stat name kinds missing from
        ``data_models``.
    """
    try:
        body_type: Any = BODY_TYPES[MessageCode(code)]
    except (ValueError, KeyError):
        raise DecodeError(f"no body decoder for message code {code}") from None
    result: Body = body_type.decode(data, limits, data_models)
    return result
