"""
The values a peer stores for the overlay, with RELOAD's Store/Fetch/Stat rules.

This is the sans-IO half of RFC 6940 s7: it takes decoded StoreReq/FetchReq/
StatReq contents (``p2psip.overlay.bodies``) and returns the answer bodies or
raises :class:`StoreError` with the RFC error code the node should send.
Nothing here reads a clock: every call takes ``now``, the node's local clock
in seconds (``IReactorTime.seconds()``).

Rules applied to a Store (s7.4.1), checked for every value of every Kind in
the request before anything changes, so a request is stored whole or not at
all:

* unknown Kind-IDs -> Error_Unknown_Kind (``StoreError.unknown_kinds`` lists
  them for the error_info);
* a value larger than the Kind's max-size, more live values than its
  max-count, or an array index at or past max-count -> Error_Data_Too_Large;
* quotas -> Error_Data_Too_Large: more values of a Kind signed by one
  Node-ID than the Kind's ``max_per_signer``, more bytes at one resource
  than ``max_bytes_per_resource``, more values in the whole store than
  ``max_values``;
* an original store (replica_number 0) whose non-zero generation_counter is
  not the current one -> Error_Generation_Counter_Too_Low
  (``StoreError.generation_counters`` holds the current counters for the
  error_info StoreAns);
* storage time must grow: in an original store, a value whose storage_time
  is not newer than the value it would replace -> Error_Data_Too_Old.  The
  identical signed value again (same storage_time, value and signature) is
  accepted: with the same lifetime it is a retransmission and changes
  nothing; with another it is a refresh (a Store resent to the peer that
  took a dead one's range over and holds a run-down replica of it, a
  restarted peer's saved copy).  A refresh only ever makes the value live
  longer, never shorter (anyone may fetch a signed value and send it back),
  is checked like any store (an original one's request signer must pass the
  Kind's policy), and the time bound below caps it;
* time bounds: a lifetime longer than the Kind's ``max_lifetime_seconds``
  -> Error_Forbidden; in an original store, a storage_time more than
  ``storage_time_skew_seconds`` ahead of our clock -> Error_Forbidden; any
  value that would live past its storage_time plus the Kind's longest
  lifetime (an old signed value replayed with a fresh lifetime) ->
  Error_Data_Too_Old.  The lifetime is not signed, so this bound is what
  keeps a replay short;
* a replica or hand-over store (replica_number 1 or more) merges instead:
  its values older than ours are skipped, the rest are applied, so a
  dictionary handed over while one of its entries was already rewritten
  at the new holder loses none of its other entries;
* a bad or unknown signature, or a signer the Kind's access policy refuses
  (:func:`~p2psip.overlay.kinds.check_access`, with what the signer's
  certificate proves) -> Error_Forbidden.  This holds for replica and
  hand-over stores too: a value is only ever stored if its original signer
  could write it, whoever passes it on.  An original StoreReq's own signer
  must pass the policy as well (s7.4.1.1).  Deletions (exists = False) are
  values like any other, so only whoever may write a value may delete it.

Each StoredData is kept exactly as signed, including deletions (exists =
False), which stay as tombstones until their lifetime ends so that an older
value cannot be stored over them.

Time: ``storage_time`` is the writer's wall clock in milliseconds since the
Unix epoch and is only ever compared with other storage_times of the same
slot.  ``lifetime`` counts, as RFC 6940 s7.4.1.1 says, from when this peer
received the value, so a value expires at ``now + lifetime`` on the local
clock, whatever the writer's clock says.  Fetch, Stat and :meth:`export`
report the lifetime that remains, which is what s7.4.1.1 asks a peer to send
on when it passes data on to a replica or a new peer.  Lifetimes travel in
whole seconds, so a value is visible only while at least one whole second of
it remains; a replica filled from :meth:`export` then answers exactly like
the peer it copies, at the export time and whole seconds after it.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Union

from attrs import evolve

from p2psip.overlay.bodies import (
    ArrayEntry,
    ArrayEntryMeta,
    DataModel,
    DataValue,
    DictionaryEntry,
    DictionaryEntryMeta,
    FetchKindResponse,
    MetaData,
    StatKindResponse,
    StoredData,
    StoredDataSpecifier,
    StoredMetaData,
    StoreKindData,
    StoreKindResponse,
    decode_stored_data,
    encode_stored_data,
    encode_stored_value,
    stored_data_signature_input,
)
from p2psip.overlay.certificates import CertifiedIdentity
from p2psip.overlay.identity import HASH_ALGORITHM_SHA256, CertificateCache, SignatureError
from p2psip.overlay.kinds import AccessDenied, Kind, check_access
from p2psip.overlay.message import ErrorCode
from p2psip.util.logs import Logger

#: The array index that means "after the last entry" (RFC 6940 s7.2.2).
APPEND_INDEX = 0xFFFFFFFF

# Where a value lives inside one Kind at one resource: None for a single
# value, the index for an array entry, the key for a dictionary entry.
_SlotKey = Union[None, int, bytes]

#: How far ahead of our clock an original store's storage_time may be: the
#: writers' clocks need only be loosely synchronised (RFC 6940 s7).
STORAGE_TIME_SKEW_SECONDS = 300.0
#: Values one peer holds at most, over every resource and Kind.
MAX_VALUES = 100_000
#: Payload and key bytes of the live values at one resource, over its Kinds.
MAX_BYTES_PER_RESOURCE = 64 * 1024

# Rounding guard when turning the float local expiry time back into whole
# seconds of remaining lifetime, so that passing a value on does not lose a
# second to floating-point error each time.
_LIFETIME_EPSILON_SECONDS = 1e-6


class StoreError(Exception):
    """
    A Store, Fetch or Stat that the node must answer with an Error response.

    ``unknown_kinds`` is set for UNKNOWN_KIND and ``generation_counters``
    (Kind-ID -> current counter) for GENERATION_COUNTER_TOO_LOW, which is
    what RFC 6940 s7.4.1.2 puts in those errors' error_info.
    """

    def __init__(
        self,
        error_code: ErrorCode,
        reason: str,
        unknown_kinds: tuple[int, ...] = (),
        generation_counters: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(error_code, reason)
        self.error_code = error_code
        self.reason = reason
        self.unknown_kinds = unknown_kinds
        self.generation_counters: Mapping[int, int] = dict(generation_counters or {})

    def __str__(self) -> str:
        return f"{self.error_code.name}: {self.reason}"


class _Slot:
    """
    One stored value: its StoredData exactly as signed, as one ``bytes``.

    A peer holds many values, each two or three times (as responsible peer
    and as replicas), and most are never fetched between refreshes; so the
    value is kept encoded (:func:`~p2psip.overlay.bodies.encode_stored_data`)
    and decoded when it is fetched, exported or stat'ed, not as the four
    nested objects and four byte strings a decoded StoredData is.  What the
    Store rules read on every store (storage time, exists, sizes) is read
    in place from the bytes.
    """

    __slots__ = ("key", "encoded", "expires_at", "signer")

    def __init__(
        self, key: _SlotKey, encoded: bytes, expires_at: float, signer: int | None
    ) -> None:
        self.key = key
        self.encoded = encoded
        self.expires_at = expires_at
        #: The Node-ID whose certificate signed the value (None when stored unverified).
        self.signer = signer

    @property
    def storage_time(self) -> int:
        return int.from_bytes(self.encoded[:8], "big")

    def data(self, model: DataModel) -> StoredData:
        return decode_stored_data(self.encoded, model)

    def value_fields(self, model: DataModel) -> tuple[bool, int, int]:
        """(exists, data value bytes, dictionary key bytes), read from the encoding."""
        encoded = self.encoded
        offset = _VALUE_OFFSET
        key_bytes = 0
        if model is DataModel.ARRAY:
            offset += 4
        elif model is DataModel.DICTIONARY:
            (key_bytes,) = _U16.unpack_from(encoded, offset)
            offset += 2 + key_bytes
        (length,) = _U32.unpack_from(encoded, offset + 1)
        return encoded[offset] == 1, length, key_bytes

    def exists(self, model: DataModel) -> bool:
        return self.value_fields(model)[0]

    def value_bytes(self, model: DataModel) -> int:
        """Data value and key bytes, what ``max_bytes_per_resource`` counts."""
        _, length, key_bytes = self.value_fields(model)
        return length + key_bytes


#: Where the StoredDataValue starts in a StoredData's contents: after the
#: uint64 storage_time and the uint32 lifetime (RFC 6940 s7).
_VALUE_OFFSET = 12
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
#: A Kind's values are a tuple searched in order up to this many, a dict beyond.
_SMALL_KIND = 8


class _KindValues:
    """
    One Kind's values at one resource and its generation counter.

    Most resources hold one value of a Kind (an AOR's registrations from
    one super-node, a user's certificate), and a dictionary costs about 250
    bytes even for one entry, so the values are held as the one slot
    itself, then as a tuple of slots (each knows its key) searched in order,
    and as a dict by key only past ``_SMALL_KIND`` of them.
    """

    __slots__ = ("kind_id", "generation", "_slots")

    def __init__(self, kind_id: int) -> None:
        self.kind_id = kind_id
        self.generation = 0
        self._slots: _Slot | tuple[_Slot, ...] | dict[_SlotKey, _Slot] = ()

    def __len__(self) -> int:
        slots = self._slots
        return 1 if isinstance(slots, _Slot) else len(slots)

    def get(self, key: _SlotKey) -> _Slot | None:
        slots = self._slots
        if isinstance(slots, _Slot):
            return slots if slots.key == key else None
        if isinstance(slots, dict):
            return slots.get(key)
        for slot in slots:
            if slot.key == key:
                return slot
        return None

    def put(self, slot: _Slot) -> None:
        """Hold ``slot``, replacing the one with the same key."""
        slots = self._slots
        if isinstance(slots, dict):
            slots[slot.key] = slot
            return
        kept = tuple(old for old in self.slots() if old.key != slot.key)
        if not kept:
            self._slots = slot
        elif len(kept) < _SMALL_KIND:
            self._slots = (*kept, slot)
        else:
            self._slots = {old.key: old for old in (*kept, slot)}

    def remove(self, key: _SlotKey) -> None:
        slots = self._slots
        if isinstance(slots, dict):
            del slots[key]
            return
        kept = tuple(old for old in self.slots() if old.key != key)
        self._slots = kept[0] if len(kept) == 1 else kept

    def slots(self) -> Iterable[_Slot]:
        slots = self._slots
        if isinstance(slots, _Slot):
            return (slots,)
        return slots.values() if isinstance(slots, dict) else slots


class _Resource:
    """
    What one Resource-ID holds: its Kinds' values.

    There are few Kinds at a resource, most often one, so ``_kinds`` is that
    one's values itself or a tuple in Kind-ID order (``kinds`` reads both).
    """

    __slots__ = ("replica_number", "version", "_kinds", "expires_at")

    def __init__(self, replica_number: int) -> None:
        self.replica_number = replica_number
        #: Set from a store-wide counter by every store that changes a value here.
        self.version = 0
        self._kinds: _KindValues | tuple[_KindValues, ...] = ()
        #: When this resource's entry in the expiry heap is due: no later than
        #: its first value's expiry (infinity until it has one).
        self.expires_at = math.inf

    @property
    def kinds(self) -> tuple[_KindValues, ...]:
        """Every Kind's values held here, in Kind-ID order."""
        kinds = self._kinds
        return (kinds,) if isinstance(kinds, _KindValues) else kinds

    def kind(self, kind_id: int) -> _KindValues | None:
        kinds = self._kinds
        if isinstance(kinds, _KindValues):
            return kinds if kinds.kind_id == kind_id else None
        for values in kinds:
            if values.kind_id == kind_id:
                return values
        return None

    def add_kind(self, kind_id: int) -> _KindValues:
        values = _KindValues(kind_id)
        self._set_kinds((*self.kinds, values))
        return values

    def remove_kind(self, kind_id: int) -> None:
        self._set_kinds(tuple(values for values in self.kinds if values.kind_id != kind_id))

    def _set_kinds(self, kinds: tuple[_KindValues, ...]) -> None:
        if len(kinds) == 1:
            self._kinds = kinds[0]
        else:
            self._kinds = tuple(sorted(kinds, key=lambda values: values.kind_id))


def _slot_key(value: DataValue | ArrayEntry | DictionaryEntry) -> _SlotKey:
    if isinstance(value, ArrayEntry):
        return value.index
    if isinstance(value, DictionaryEntry):
        return value.key
    return None


def _payload(value: DataValue | ArrayEntry | DictionaryEntry) -> DataValue:
    if isinstance(value, (ArrayEntry, DictionaryEntry)):
        return value.value
    return value


_MODEL_VALUE_TYPES: dict[DataModel, type] = {
    DataModel.SINGLE_VALUE: DataValue,
    DataModel.ARRAY: ArrayEntry,
    DataModel.DICTIONARY: DictionaryEntry,
}


def _remaining_lifetime(slot: _Slot, now: float) -> int:
    return max(0, int(slot.expires_at - now + _LIFETIME_EPSILON_SECONDS))


def _live(slot: _Slot, now: float) -> bool:
    # A value is visible while at least one whole second of its lifetime
    # remains: lifetimes travel in whole seconds, and a value passed on with
    # lifetime 0 would be dead on arrival, so a replica and the peer it
    # copies would disagree about it during its last second.
    return _remaining_lifetime(slot, now) >= 1


class DataStore:
    """
    Every value this peer holds, by Resource-ID and Kind-ID.

    ``certificates`` verifies StoredData signatures; with None, only stores
    made with ``verify=False`` succeed.  For each resource the store
    remembers the replica_number of the last store (0: we hold it as the
    responsible peer; 1, 2, ...: as that replica), so the node knows what to
    re-replicate and what to promote when the ring changes.  The quotas and
    the clock skew allowed are described in the module docstring.
    """

    log = Logger()

    def __init__(
        self,
        kinds: Mapping[int, Kind],
        certificates: CertificateCache | None = None,
        *,
        max_values: int = MAX_VALUES,
        max_bytes_per_resource: int = MAX_BYTES_PER_RESOURCE,
        storage_time_skew_seconds: float = STORAGE_TIME_SKEW_SECONDS,
    ) -> None:
        self.kinds = kinds
        self.certificates = certificates
        self.max_values = max_values
        self.max_bytes_per_resource = max_bytes_per_resource
        self.storage_time_skew_seconds = storage_time_skew_seconds
        self._resources: dict[int, _Resource] = {}
        # (when due, resource): one live entry per resource, due no later
        # than its first value's expiry (``_Resource.expires_at``); entries
        # of resources that were removed or re-timed since are skipped.
        self._expiry: list[tuple[float, int]] = []
        # Store-wide, so a resource that expired and came back never
        # repeats a version it had before.
        self._change_sequence = 0
        #: Slots held, tombstones and values past their lifetime included.
        self._slot_total = 0
        #: (Kind-ID, signer's Node-ID) -> slots held, for the per-signer quota.
        self._signer_slots: dict[tuple[int, int], int] = {}

    # -- Store --------------------------------------------------------------

    def store(
        self,
        resource: int,
        kind_data: StoreKindData,
        now: float,
        verify: bool = True,
        replica_number: int = 0,
        request_signer: CertifiedIdentity | None = None,
    ) -> StoreKindResponse:
        """Store one Kind's values; see :meth:`store_request`."""
        (response,) = self.store_request(
            resource, (kind_data,), now, verify, replica_number, request_signer
        )
        return response

    def store_request(
        self,
        resource: int,
        kind_data: Sequence[StoreKindData],
        now: float,
        verify: bool = True,
        replica_number: int = 0,
        request_signer: CertifiedIdentity | None = None,
    ) -> tuple[StoreKindResponse, ...]:
        """
        Apply a whole StoreReq atomically and return one response per Kind.

        ``replica_number`` is the StoreReq's: 0 for an original store, which
        checks and then increments the generation counter; 1 or more for a
        replica (or hand-over) store, which takes the sender's generation
        counter when it is higher than ours, so a replica answers Fetches
        like the peer it copies.  The returned StoreKindResponses have no
        replicas; the node adds the peers it replicated to.

        With ``verify``, every new value's signature is checked and its
        signer must pass the Kind's access policy; so must
        ``request_signer``, what the certificate that signed an original
        StoreReq proves, when the node passes it (RFC 6940 s7.4.1.1: for
        replica stores only the values' signers count).

        :raises StoreError: nothing was stored.
        """
        unknown = tuple(sorted({data.kind for data in kind_data if data.kind not in self.kinds}))
        if unknown:
            raise StoreError(
                ErrorCode.UNKNOWN_KIND,
                "unknown Kind-ID " + ", ".join(str(kind) for kind in unknown),
                unknown_kinds=unknown,
            )
        existing = self._resources.get(resource)
        # One plan per Kind, so that a Kind named twice in one request is
        # checked against its own earlier values too.
        plans: dict[int, KindPlan] = {}
        requested_generations: dict[int, int] = {}
        stale = False
        for data in kind_data:
            plan = plans.get(data.kind)
            if plan is None:
                values = existing.kind(data.kind) if existing is not None else None
                plan = plans[data.kind] = KindPlan(
                    self.kinds[data.kind],
                    values,
                    now,
                    merge=replica_number != 0,
                    skew_seconds=self.storage_time_skew_seconds,
                )
            if (
                replica_number == 0
                and data.generation_counter != 0
                and data.generation_counter != plan.generation
            ):
                stale = True
            requested_generations[data.kind] = max(
                data.generation_counter, requested_generations.get(data.kind, 0)
            )
            for stored in data.values:
                plan.add(stored)
        if stale:
            raise StoreError(
                ErrorCode.GENERATION_COUNTER_TOO_LOW,
                "generation counter is not the current one",
                generation_counters={kind_id: plan.generation for kind_id, plan in plans.items()},
            )
        for plan in plans.values():
            plan.check_count()
        self._check_resource_bytes(existing, plans, now)
        # The quota by the signers the values name, before any signature is
        # checked: a flood from one signer past its quota costs no ECDSA.
        claimed = {
            (kind_id, key): self._known_signer(change.stored)
            for kind_id, plan in plans.items()
            for key, change in plan.changes.items()
        }
        self._check_quotas(existing, plans, claimed)
        signers: dict[tuple[int, _SlotKey], int | None] = {}
        for plan in plans.values():
            kind_id = plan.kind.kind_id
            if verify:
                verified = self._verify(
                    resource, plan, request_signer if replica_number == 0 else None
                )
            else:
                verified = {
                    key: self._known_signer(change.stored) for key, change in plan.changes.items()
                }
            for key, signer in verified.items():
                signers[kind_id, key] = signer
        self._check_quotas(existing, plans, signers)
        return tuple(
            self._apply(
                resource, plan, requested_generations[kind_id], now, replica_number, signers
            )
            for kind_id, plan in plans.items()
        )

    def _verify(
        self, resource: int, plan: KindPlan, request_signer: CertifiedIdentity | None
    ) -> dict[_SlotKey, int | None]:
        """Check every change's signature and policy; the signer's Node-ID per slot."""
        if self.certificates is None:
            raise StoreError(ErrorCode.FORBIDDEN, "this store cannot verify signatures")
        signers: dict[_SlotKey, int | None] = {}
        for key, change in plan.changes.items():
            stored = change.stored
            signer = self._signer(resource, plan.kind.kind_id, stored)
            holder = plan.holder(key)
            try:
                check_access(plan.kind, resource, stored.value, signer, holder)
                if request_signer is not None:
                    check_access(plan.kind, resource, stored.value, request_signer, holder)
            except AccessDenied as e:
                raise StoreError(ErrorCode.FORBIDDEN, str(e)) from e
            signers[key] = signer.node_id
        return signers

    def _known_signer(self, stored: StoredData) -> int | None:
        if self.certificates is None:
            return None
        return self.certificates.node_id_for(stored.signature.identity)

    def _signer(self, resource: int, kind_id: int, stored: StoredData) -> CertifiedIdentity:
        assert self.certificates is not None
        value = stored.value
        candidates = [value]
        if isinstance(value, ArrayEntry) and value.index != APPEND_INDEX:
            # An appended entry was signed with the append index and is kept
            # (and passed on) under the index it was given.
            candidates.append(evolve(value, index=APPEND_INDEX))
        reason = ""
        for candidate in candidates:
            signed = stored_data_signature_input(
                resource,
                kind_id,
                stored.storage_time,
                encode_stored_value(candidate),
                stored.signature.identity,
            )
            try:
                return self.certificates.verify_signer(stored.signature, signed)
            except SignatureError as e:
                reason = str(e)
        raise StoreError(ErrorCode.FORBIDDEN, f"bad StoredData signature: {reason}")

    def _check_resource_bytes(
        self, existing: _Resource | None, plans: Mapping[int, KindPlan], now: float
    ) -> None:
        """The per-resource bound: live payload and key bytes over every Kind."""
        total = sum(plan.live_bytes() for plan in plans.values())
        if existing is not None:
            for values in existing.kinds:
                if values.kind_id not in plans:
                    model = self.kinds[values.kind_id].data_model
                    total += sum(
                        slot.value_bytes(model) for slot in values.slots() if _live(slot, now)
                    )
        if total > self.max_bytes_per_resource:
            raise StoreError(
                ErrorCode.DATA_TOO_LARGE,
                f"a resource holds at most {self.max_bytes_per_resource} bytes of values here",
            )

    def _check_quotas(
        self,
        existing: _Resource | None,
        plans: Mapping[int, KindPlan],
        signers: Mapping[tuple[int, _SlotKey], int | None],
    ) -> None:
        """The per-signer quota and the bound on the whole store (Error_Data_Too_Large)."""
        new_slots = 0
        added: dict[tuple[int, int], int] = {}
        for kind_id, plan in plans.items():
            values = existing.kind(kind_id) if existing is not None else None
            for key in plan.changes:
                slot = values.get(key) if values is not None else None
                if slot is None:
                    new_slots += 1
                signer = signers.get((kind_id, key))
                if signer is not None and (slot is None or slot.signer != signer):
                    added[kind_id, signer] = added.get((kind_id, signer), 0) + 1
        for (kind_id, signer), count in added.items():
            kind = self.kinds[kind_id]
            if self._signer_slots.get((kind_id, signer), 0) + count > kind.max_per_signer:
                raise StoreError(
                    ErrorCode.DATA_TOO_LARGE,
                    f"quota: one Node-ID may have at most {kind.max_per_signer} {kind.name} "
                    "values stored here",
                )
        if new_slots and self._slot_total + new_slots > self.max_values:
            raise StoreError(
                ErrorCode.DATA_TOO_LARGE, f"this peer holds at most {self.max_values} values"
            )

    def _count_slot(self, kind_id: int, slot: _Slot, delta: int) -> None:
        self._slot_total += delta
        if slot.signer is None:
            return
        key = (kind_id, slot.signer)
        count = self._signer_slots.get(key, 0) + delta
        if count > 0:
            self._signer_slots[key] = count
        else:
            self._signer_slots.pop(key, None)

    def _apply(
        self,
        resource: int,
        plan: KindPlan,
        requested_generation: int,
        now: float,
        replica_number: int,
        signers: Mapping[tuple[int, _SlotKey], int | None],
    ) -> StoreKindResponse:
        kind_id = plan.kind.kind_id
        entry = self._resources.get(resource)
        values = entry.kind(kind_id) if entry is not None else None
        if values is None:
            if not plan.changes:
                # Nothing to hold: do not create empty entries that only
                # expiry of a value would ever clean up.
                return StoreKindResponse(kind=kind_id, generation_counter=0, replicas=())
            if entry is None:
                entry = self._resources[resource] = _Resource(replica_number)
            values = entry.add_kind(kind_id)
        assert entry is not None
        entry.replica_number = replica_number
        for key, change in plan.changes.items():
            expires_at = now + change.lifetime
            old = values.get(key)
            if old is not None:
                self._count_slot(kind_id, old, -1)
            slot = _Slot(key, change.encoded, expires_at, signers.get((kind_id, key)))
            values.put(slot)
            self._count_slot(kind_id, slot, +1)
            if expires_at < entry.expires_at:
                entry.expires_at = expires_at
                heapq.heappush(self._expiry, (expires_at, resource))
        if plan.changes:
            values.generation += 1
            self._change_sequence += 1
            entry.version = self._change_sequence
        if replica_number != 0 and requested_generation > values.generation:
            values.generation = requested_generation
        return StoreKindResponse(kind=kind_id, generation_counter=values.generation, replicas=())

    # -- Fetch and Stat -----------------------------------------------------

    def fetch(
        self, resource: int, specifiers: Sequence[StoredDataSpecifier], now: float
    ) -> tuple[FetchKindResponse, ...]:
        """
        Answer a FetchReq (RFC 6940 s7.4.2): one FetchKindResponse per specifier.

        A specifier whose non-zero generation equals the current one gets no
        values (the requester has them).  Empty ``keys`` (dictionary) or
        ``indices`` (array) select every entry.  Values nobody stored are
        simply absent from ``values``; deletions are returned as the signed
        exists=False values they are.

        :raises StoreError: UNKNOWN_KIND, with ``unknown_kinds``.
        """
        responses = []
        for specifier, generation, slots in self._select(resource, specifiers, now):
            model = self.kinds[specifier.kind].data_model
            values = tuple(_passed_on(slot, model, now) for slot in slots)
            responses.append(
                FetchKindResponse(kind=specifier.kind, generation=generation, values=values)
            )
        return tuple(responses)

    def stat(
        self, resource: int, specifiers: Sequence[StoredDataSpecifier], now: float
    ) -> tuple[StatKindResponse, ...]:
        """
        Answer a StatReq (RFC 6940 s7.4.3): what Fetch would return, as metadata.

        :raises StoreError: UNKNOWN_KIND, with ``unknown_kinds``.
        """
        responses = []
        for specifier, generation, slots in self._select(resource, specifiers, now):
            model = self.kinds[specifier.kind].data_model
            values = tuple(
                stored_metadata(slot.data(model), _remaining_lifetime(slot, now)) for slot in slots
            )
            responses.append(
                StatKindResponse(kind=specifier.kind, generation=generation, values=values)
            )
        return tuple(responses)

    def _select(
        self, resource: int, specifiers: Sequence[StoredDataSpecifier], now: float
    ) -> Iterator[tuple[StoredDataSpecifier, int, list[_Slot]]]:
        unknown = tuple(sorted({s.kind for s in specifiers if s.kind not in self.kinds}))
        if unknown:
            raise StoreError(
                ErrorCode.UNKNOWN_KIND,
                "unknown Kind-ID " + ", ".join(str(kind) for kind in unknown),
                unknown_kinds=unknown,
            )
        entry = self._resources.get(resource)
        for specifier in specifiers:
            values = entry.kind(specifier.kind) if entry is not None else None
            if values is None:
                yield specifier, 0, []
                continue
            if specifier.generation != 0 and specifier.generation == values.generation:
                yield specifier, values.generation, []
                continue
            model = self.kinds[specifier.kind].data_model
            live = [slot for slot in _selected(values, model, specifier) if _live(slot, now)]
            yield specifier, values.generation, live

    # -- Expiry, replication and bookkeeping --------------------------------

    def expire(self, now: float) -> int:
        """
        Forget every value whose lifetime has ended by ``now``; return how many.

        Resources left without values are forgotten with their generation
        counters.
        """
        removed = 0
        heap = self._expiry
        while heap and heap[0][0] <= now:
            due, resource = heapq.heappop(heap)
            entry = self._resources.get(resource)
            if entry is None or entry.expires_at != due:
                continue  # removed, or re-timed since this entry was pushed
            removed += self._expire_resource(resource, entry, now)
        if len(heap) > 1024 and len(heap) > 2 * len(self._resources):
            self._rebuild_expiry()
        return removed

    def _expire_resource(self, resource: int, entry: _Resource, now: float) -> int:
        """Drop the resource's values that ended by ``now`` and re-time its heap entry."""
        removed = 0
        soonest = math.inf
        for values in entry.kinds:
            for slot in tuple(values.slots()):
                if slot.expires_at <= now:
                    values.remove(slot.key)
                    self._count_slot(values.kind_id, slot, -1)
                    removed += 1
                else:
                    soonest = min(soonest, slot.expires_at)
            if not len(values):
                entry.remove_kind(values.kind_id)
        if not entry.kinds:
            del self._resources[resource]
        else:
            entry.expires_at = soonest
            heapq.heappush(self._expiry, (soonest, resource))
        return removed

    def _rebuild_expiry(self) -> None:
        self._expiry = [(entry.expires_at, resource) for resource, entry in self._resources.items()]
        heapq.heapify(self._expiry)

    def resources(self) -> Iterable[int]:
        """Every Resource-ID with stored values (a snapshot, safe to modify the store)."""
        return list(self._resources)

    def replica_number(self, resource: int) -> int | None:
        """0 when we hold ``resource`` as responsible peer, n for replica n, None if absent."""
        entry = self._resources.get(resource)
        return None if entry is None else entry.replica_number

    def version(self, resource: int) -> int:
        """
        A number that changes whenever a store changes a value of ``resource``.

        The node compares it before and after handing data over to a new
        peer, to send again what was stored while the first copy travelled.
        Absent resources have version 0.
        """
        entry = self._resources.get(resource)
        return 0 if entry is None else entry.version

    def set_replica_number(self, resource: int, replica_number: int) -> None:
        """Record a new role for ``resource`` (0 promotes it to ours); absent ones are ignored."""
        entry = self._resources.get(resource)
        if entry is not None:
            entry.replica_number = replica_number

    def export(self, resource: int, now: float) -> tuple[StoreKindData, ...]:
        """
        Everything held at ``resource``, as StoreKindData to send on.

        Values are the signed StoredData unchanged except for the lifetime,
        which is what remains; generation counters are ours.  Storing the
        result with ``replica_number`` 1 or more into another DataStore at
        the same ``now`` makes its Fetch answers equal to ours.
        """
        entry = self._resources.get(resource)
        if entry is None:
            return ()
        exported = []
        for values in entry.kinds:  # in Kind-ID order
            model = self.kinds[values.kind_id].data_model
            live = [
                _passed_on(slot, model, now)
                for slot in sorted(values.slots(), key=_slot_order)
                if _live(slot, now)
            ]
            if live:
                exported.append(
                    StoreKindData(
                        kind=values.kind_id,
                        generation_counter=values.generation,
                        values=tuple(live),
                    )
                )
        return tuple(exported)

    def remove_resource(self, resource: int) -> None:
        """Forget a resource we are no longer responsible for nor a replica of."""
        entry = self._resources.pop(resource, None)
        if entry is None:
            return
        for values in entry.kinds:
            for slot in values.slots():
                self._count_slot(values.kind_id, slot, -1)

    def values_signed_by(self, kind_id: int, node_id: int) -> int:
        """Values of a Kind held here whose signer is ``node_id`` (what its quota counts)."""
        return self._signer_slots.get((kind_id, node_id), 0)

    @property
    def slot_count(self) -> int:
        """Every value held, tombstones and values awaiting :meth:`expire` included."""
        return self._slot_total

    def counts_per_kind(self) -> dict[str, int]:
        """
        Kind name -> number of stored values that exist (not tombstones).

        Values past their lifetime count until :meth:`expire` removes them.
        """
        counts = {kind.name: 0 for kind in self.kinds.values()}
        for entry in self._resources.values():
            for values in entry.kinds:
                kind = self.kinds[values.kind_id]
                counts[kind.name] += sum(
                    1 for slot in values.slots() if slot.exists(kind.data_model)
                )
        return counts

    def __len__(self) -> int:
        """The number of stored values that exist, over all Kinds (as :meth:`counts_per_kind`)."""
        return sum(self.counts_per_kind().values())


def _slot_order(slot: _Slot) -> tuple[int, int, bytes]:
    key = slot.key
    if isinstance(key, int):
        return (1, key, b"")
    if isinstance(key, bytes):
        return (2, 0, key)
    return (0, 0, b"")


def _selected(values: _KindValues, model: DataModel, specifier: StoredDataSpecifier) -> list[_Slot]:
    if model is DataModel.SINGLE_VALUE:
        single = values.get(None)
        return [] if single is None else [single]
    if model is DataModel.DICTIONARY:
        if not specifier.keys:
            return sorted(values.slots(), key=_slot_order)
        chosen = []
        for key in dict.fromkeys(specifier.keys):
            slot = values.get(key)
            if slot is not None:
                chosen.append(slot)
        return chosen
    entries = sorted(
        (slot for slot in values.slots() if isinstance(slot.key, int)), key=_slot_order
    )
    if specifier.indices:
        entries = [
            slot
            for slot in entries
            if any(r.first <= slot.key <= r.last for r in specifier.indices)  # type: ignore[operator]
        ]
    return entries


def _passed_on(slot: _Slot, model: DataModel, now: float) -> StoredData:
    """The stored value as Fetch and hand-over send it: with the lifetime that remains."""
    stored = slot.data(model)
    return evolve(stored, lifetime=_remaining_lifetime(slot, now))


class _Change(_Slot):
    """A value a Store would put at ``key``: decoded for the checks, encoded to be held."""

    __slots__ = ("stored",)

    def __init__(self, key: _SlotKey, stored: StoredData) -> None:
        super().__init__(key, encode_stored_data(stored), 0.0, None)
        self.stored = stored

    @property
    def lifetime(self) -> int:
        return self.stored.lifetime


class KindPlan:
    """
    The changes one StoreKindData would make, checked before any is applied.

    Public only so that type checkers can follow it; the node uses
    :class:`DataStore`.
    """

    def __init__(
        self,
        kind: Kind,
        values: _KindValues | None,
        now: float,
        merge: bool = False,
        skew_seconds: float = STORAGE_TIME_SKEW_SECONDS,
    ) -> None:
        self.kind = kind
        self.now = now
        #: Skip values older than ours instead of refusing the whole store
        #: (replica and hand-over stores: the newest signed value wins).
        self.merge = merge
        self.skew_seconds = skew_seconds
        self.generation = values.generation if values is not None else 0
        self._existing: dict[_SlotKey, _Slot] = (
            {slot.key: slot for slot in values.slots() if _live(slot, now)}
            if values is not None
            else {}
        )
        self.changes: dict[_SlotKey, _Change] = {}

    def _current(self, key: _SlotKey) -> _Slot | None:
        change = self.changes.get(key)
        return change if change is not None else self._existing.get(key)

    def _expires_at(self, key: _SlotKey) -> float:
        """When the value at ``key`` expires once the plan so far is applied."""
        if key in self.changes:
            return self.now + self.changes[key].lifetime
        slot = self._existing.get(key)
        return slot.expires_at if slot is not None else self.now

    def holder(self, key: _SlotKey) -> int | None:
        """The Node-ID that signed the live value at ``key`` (None: free, or unknown)."""
        slot = self._existing.get(key)
        return None if slot is None else slot.signer

    def _array_length(self) -> int:
        keys = [key for key in (*self._existing, *self.changes) if isinstance(key, int)]
        return max(keys) + 1 if keys else 0

    def add(self, stored: StoredData) -> None:
        """Check one StoredData against the Kind and what is stored; record the change."""
        kind = self.kind
        value = stored.value
        expected = _MODEL_VALUE_TYPES[kind.data_model]
        if not isinstance(value, expected):
            raise StoreError(
                ErrorCode.INVALID_MESSAGE,
                f"{kind.name} stores {expected.__name__} values, not {type(value).__name__}",
            )
        payload = _payload(value)
        if len(payload.value) > kind.max_size:
            raise StoreError(
                ErrorCode.DATA_TOO_LARGE,
                f"{kind.name} values are at most {kind.max_size} bytes, not {len(payload.value)}",
            )
        if isinstance(value, DictionaryEntry) and len(value.key) > kind.max_size:
            raise StoreError(
                ErrorCode.DATA_TOO_LARGE, f"{kind.name} keys are at most {kind.max_size} bytes"
            )
        if isinstance(value, ArrayEntry):
            if value.index == APPEND_INDEX:
                index = self._array_length()
                stored = evolve(stored, value=evolve(value, index=index))
            else:
                index = value.index
            if index >= kind.max_count:
                raise StoreError(
                    ErrorCode.DATA_TOO_LARGE,
                    f"{kind.name} arrays have at most {kind.max_count} entries",
                )
        self._check_times(stored)
        key = _slot_key(stored.value)
        current = self._current(key)
        change = None
        if current is not None:
            current_time = current.storage_time
            if stored.storage_time == current_time:
                change = _Change(key, stored)
                encoded, held = change.encoded, current.encoded
                if encoded == held:
                    return  # the same signed value again (a retransmission): nothing changes
                # Equal but for the lifetime (the uint32 after storage_time):
                # a refresh (a Store resent to the peer that took over a
                # range and holds a run-down replica, a restarted peer's
                # saved copy), taken only if it lives longer, so that nobody
                # who fetched a value can shorten it.
                if encoded[_VALUE_OFFSET:] == held[_VALUE_OFFSET:]:
                    if self.now + stored.lifetime > self._expires_at(key):
                        self.changes[key] = change
                    return
            if self.merge:
                if stored.storage_time <= current_time:
                    return  # we hold a newer (or the same-time) value: keep it
            elif stored.storage_time < current_time:
                raise StoreError(
                    ErrorCode.DATA_TOO_OLD,
                    f"storage_time {stored.storage_time} is older than the stored {current_time}",
                )
            elif stored.storage_time == current_time:
                raise StoreError(
                    ErrorCode.DATA_TOO_OLD,
                    f"a different value with storage_time {stored.storage_time} is stored",
                )
        self.changes[key] = change if change is not None else _Change(key, stored)

    def _check_times(self, stored: StoredData) -> None:
        """The lifetime cap, the clock skew allowed and the replay bound."""
        kind = self.kind
        if stored.lifetime > kind.max_lifetime_seconds:
            raise StoreError(
                ErrorCode.FORBIDDEN,
                f"{kind.name} values live at most {kind.max_lifetime_seconds} s, "
                f"not {stored.lifetime}",
            )
        storage_seconds = stored.storage_time / 1000
        # A replica's storage_time was checked by the responsible peer, on
        # its clock: allow for that peer's skew as well as ours.
        skew = self.skew_seconds * (2 if self.merge else 1)
        if not self.merge and storage_seconds > self.now + skew:
            raise StoreError(
                ErrorCode.FORBIDDEN,
                f"storage_time is {storage_seconds - self.now:.0f} s ahead of this peer's clock",
            )
        if self.now + stored.lifetime > storage_seconds + kind.max_lifetime_seconds + skew:
            raise StoreError(
                ErrorCode.DATA_TOO_OLD,
                f"a {kind.name} value stored at {stored.storage_time} may live until "
                f"{kind.max_lifetime_seconds} s after that, not {stored.lifetime} s from now",
            )

    def check_count(self) -> None:
        """Refuse the plan when the Kind would hold more existing values than max-count."""
        keys = set(self._existing) | set(self.changes)
        model = self.kind.data_model
        count = 0
        for key in keys:
            current = self._current(key)
            if current is not None and current.exists(model):
                count += 1
        if count > self.kind.max_count:
            raise StoreError(
                ErrorCode.DATA_TOO_LARGE,
                f"{self.kind.name} holds at most {self.kind.max_count} values per resource",
            )

    def live_bytes(self) -> int:
        """Payload and key bytes of the Kind's live values once the plan is applied."""
        model = self.kind.data_model
        total = 0
        for key in set(self._existing) | set(self.changes):
            current = self._current(key)
            if current is not None:
                total += current.value_bytes(model)
        return total


def stored_metadata(stored: StoredData, lifetime: int) -> StoredMetaData:
    """
    What Stat reports for a stored value (RFC 6940 s7.4.3).

    The outer value_length counts the whole StoredDataValue, the inner one
    the data value alone, whose SHA-256 hash lets a requester tell whether
    its copy is current without fetching it.
    """
    value = stored.value
    payload = _payload(value)
    meta = MetaData(
        exists=payload.exists,
        value_length=len(payload.value),
        hash_algorithm=HASH_ALGORITHM_SHA256,
        hash_value=hashlib.sha256(payload.value).digest(),
    )
    metadata: MetaData | ArrayEntryMeta | DictionaryEntryMeta
    if isinstance(value, ArrayEntry):
        metadata = ArrayEntryMeta(index=value.index, value=meta)
    elif isinstance(value, DictionaryEntry):
        metadata = DictionaryEntryMeta(key=value.key, value=meta)
    else:
        metadata = meta
    return StoredMetaData(
        value_length=len(encode_stored_value(value)),
        storage_time=stored.storage_time,
        lifetime=lifetime,
        metadata=metadata,
    )
