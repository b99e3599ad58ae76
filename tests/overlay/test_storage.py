"""Tests for the sans-IO data store: RELOAD Store, Fetch and Stat rules."""

from __future__ import annotations

import hashlib

from attrs import evolve
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.bodies import (
    ArrayEntry,
    ArrayEntryMeta,
    ArrayRange,
    DataModel,
    DataValue,
    DictionaryEntry,
    DictionaryEntryMeta,
    MetaData,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    encode_stored_value,
    stored_data_signature_input,
)
from p2psip.overlay.certificates import CertifiedIdentity
from p2psip.overlay.identity import CertificateCache, NodeIdentity
from p2psip.overlay.kinds import (
    DATA,
    DEFAULT_KINDS,
    SIP_REGISTRATION,
    AccessPolicy,
    Kind,
    node_match_resource,
)
from p2psip.overlay.message import ErrorCode
from p2psip.overlay.storage import APPEND_INDEX, DataStore, StoreError
from p2psip.util.ids import id_to_bytes, resource_id

ALICE = NodeIdentity.generate()
MALLORY = NodeIdentity.generate()

LIST = Kind(
    kind_id=0xF0000002,
    name="LIST",
    data_model=DataModel.ARRAY,
    max_count=8,
    max_size=64,
    access=AccessPolicy.FIRST_SIGNER,
)
OWN = Kind(
    kind_id=0xF0000003,
    name="OWN",
    data_model=DataModel.SINGLE_VALUE,
    max_count=1,
    max_size=64,
    access=AccessPolicy.NODE_MATCH,
)
#: The rules shared by every Kind are tested on a dictionary with Kind-ID 1
#: and SIP-REGISTRATION's limits that any first signer may write; the real
#: policies have tests of their own below.
REGISTRATIONS = evolve(SIP_REGISTRATION, access=AccessPolicy.FIRST_SIGNER)
KINDS = {**DEFAULT_KINDS, 1: REGISTRATIONS, LIST.kind_id: LIST, OWN.kind_id: OWN}

RESOURCE = resource_id("sip:alice@example.org")
# storage_time is the writer's wall clock in ms; the local `now` of these
# tests starts at 0, and T0 is within the skew a store may be ahead of it.
T0 = 100_000


def signed(
    value: DataValue | ArrayEntry | DictionaryEntry,
    storage_time: int = T0,
    lifetime: int = 60,
    kind: int = DATA.kind_id,
    resource: int = RESOURCE,
    signer: NodeIdentity = ALICE,
) -> StoredData:
    """A StoredData signed by ``signer`` as RFC 6940 s7.1 says."""
    to_sign = stored_data_signature_input(
        resource, kind, storage_time, encode_stored_value(value), signer.signer_identity()
    )
    return StoredData(storage_time, lifetime, value, signer.sign(to_sign))


def single(payload: bytes, **kwargs: int) -> StoredData:
    return signed(DataValue(True, payload), **kwargs)


def entry(key: bytes, payload: bytes, **kwargs: int) -> StoredData:
    return signed(DictionaryEntry(key, DataValue(True, payload)), kind=1, **kwargs)


def element(index: int, payload: bytes, **kwargs: int) -> StoredData:
    return signed(ArrayEntry(index, DataValue(True, payload)), kind=LIST.kind_id, **kwargs)


def data_kind(*values: StoredData, generation: int = 0, kind: int = DATA.kind_id) -> StoreKindData:
    return StoreKindData(kind, generation, values)


ALL_DATA = StoredDataSpecifier(DATA.kind_id, 0)
ALL_REGISTRATIONS = StoredDataSpecifier(1, 0, data_model=DataModel.DICTIONARY)
ALL_LIST = StoredDataSpecifier(LIST.kind_id, 0, data_model=DataModel.ARRAY)


def make_store() -> DataStore:
    certificates = CertificateCache()
    certificates.add(ALICE.certificate_der)
    certificates.add(MALLORY.certificate_der)
    return DataStore(KINDS, certificates)


class StoreErrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = make_store()

    def assertStoreError(self, code: ErrorCode, *args: object) -> StoreError:
        error = self.assertRaises(StoreError, self.store.store, *args)
        self.assertEqual(error.error_code, code)
        return error

    def test_unknown_kind(self) -> None:
        """A Kind-ID the store does not know is refused with UNKNOWN_KIND naming it."""
        error = self.assertRaises(
            StoreError,
            self.store.store_request,
            RESOURCE,
            (data_kind(single(b"x")), data_kind(kind=77), data_kind(kind=78)),
            0.0,
        )
        self.assertEqual(error.error_code, ErrorCode.UNKNOWN_KIND)
        self.assertEqual(error.unknown_kinds, (77, 78))
        self.assertEqual(len(self.store), 0)

    def test_value_too_large(self) -> None:
        """A value over the Kind's max-size is refused with DATA_TOO_LARGE."""
        big = single(b"x" * (DATA.max_size + 1))
        self.assertStoreError(ErrorCode.DATA_TOO_LARGE, RESOURCE, data_kind(big), 0.0)

    def test_too_many_values(self) -> None:
        """More dictionary entries than max-count are refused with DATA_TOO_LARGE."""
        values = [entry(b"k%d" % i, b"v") for i in range(SIP_REGISTRATION.max_count + 1)]
        self.assertStoreError(ErrorCode.DATA_TOO_LARGE, RESOURCE, data_kind(*values, kind=1), 0.0)
        self.store.store(RESOURCE, data_kind(*values[:-1], kind=1), 0.0)
        self.assertStoreError(
            ErrorCode.DATA_TOO_LARGE, RESOURCE, data_kind(values[-1], kind=1), 0.0
        )

    def test_array_index_past_max_count(self) -> None:
        """An array index at or past max-count is refused with DATA_TOO_LARGE."""
        value = element(LIST.max_count, b"v")
        self.assertStoreError(
            ErrorCode.DATA_TOO_LARGE, RESOURCE, data_kind(value, kind=LIST.kind_id), 0.0
        )

    def test_older_storage_time(self) -> None:
        """A value older than the stored one is refused with DATA_TOO_OLD."""
        self.store.store(RESOURCE, data_kind(single(b"new", storage_time=T0 + 1)), 0.0)
        self.assertStoreError(ErrorCode.DATA_TOO_OLD, RESOURCE, data_kind(single(b"old")), 0.0)

    def test_same_storage_time_different_value(self) -> None:
        """A different value with the same storage_time is refused with DATA_TOO_OLD."""
        self.store.store(RESOURCE, data_kind(single(b"one")), 0.0)
        self.assertStoreError(ErrorCode.DATA_TOO_OLD, RESOURCE, data_kind(single(b"two")), 0.0)

    def test_same_value_again_changes_nothing(self) -> None:
        """Storing the identical signed value again succeeds and keeps the generation."""
        value = single(b"one")
        first = self.store.store(RESOURCE, data_kind(value), 0.0)
        again = self.store.store(RESOURCE, data_kind(value), 5.0)
        self.assertEqual(first.generation_counter, again.generation_counter)

    def test_generation_counter_mismatch(self) -> None:
        """A non-zero generation_counter that is not the current one is refused."""
        self.store.store(RESOURCE, data_kind(single(b"a")), 0.0)
        error = self.assertStoreError(
            ErrorCode.GENERATION_COUNTER_TOO_LOW,
            RESOURCE,
            data_kind(single(b"b", storage_time=T0 + 1), generation=7),
            0.0,
        )
        self.assertEqual(error.generation_counters, {DATA.kind_id: 1})

    def test_generation_counter_current(self) -> None:
        """The current generation_counter is accepted and the counter increases."""
        first = self.store.store(RESOURCE, data_kind(single(b"a")), 0.0)
        second = self.store.store(
            RESOURCE,
            data_kind(single(b"b", storage_time=T0 + 1), generation=first.generation_counter),
            0.0,
        )
        self.assertEqual((first.generation_counter, second.generation_counter), (1, 2))
        self.assertEqual((second.kind, second.replicas), (DATA.kind_id, ()))

    def test_tampered_value(self) -> None:
        """A value changed after signing is refused with FORBIDDEN."""
        value = single(b"honest")
        tampered = evolve(value, value=DataValue(True, b"forged"))
        error = self.assertStoreError(ErrorCode.FORBIDDEN, RESOURCE, data_kind(tampered), 0.0)
        self.assertIn("signature", error.reason)

    def test_tampered_storage_time(self) -> None:
        """A storage_time changed after signing is refused with FORBIDDEN."""
        tampered = evolve(single(b"v"), storage_time=T0 + 10)
        self.assertStoreError(ErrorCode.FORBIDDEN, RESOURCE, data_kind(tampered), 0.0)

    def test_value_replayed_at_other_resource(self) -> None:
        """A value signed for one resource is refused at another."""
        value = single(b"v", resource=resource_id("elsewhere"))
        self.assertStoreError(ErrorCode.FORBIDDEN, RESOURCE, data_kind(value), 0.0)

    def test_unknown_signer(self) -> None:
        """A value signed by a certificate the store never saw is refused."""
        stranger = NodeIdentity.generate()
        self.assertStoreError(
            ErrorCode.FORBIDDEN, RESOURCE, data_kind(single(b"v", signer=stranger)), 0.0
        )

    def test_access_policy(self) -> None:
        """NODE-MATCH refuses a signer writing at another node's resource."""
        resource = node_match_resource(ALICE.node_id)
        own = signed(DataValue(True, b"v"), kind=OWN.kind_id, resource=resource)
        self.store.store(resource, data_kind(own, kind=OWN.kind_id), 0.0)
        foreign = signed(
            DataValue(True, b"v"),
            kind=OWN.kind_id,
            resource=resource,
            signer=MALLORY,
            storage_time=T0 + 1,
        )
        error = self.assertStoreError(
            ErrorCode.FORBIDDEN, resource, data_kind(foreign, kind=OWN.kind_id), 0.0
        )
        self.assertIn("NODE-MATCH", error.reason)

    def test_request_signer_must_conform(self) -> None:
        """An original store relayed by a node the policy refuses is FORBIDDEN; a replica store is not."""
        resource = node_match_resource(ALICE.node_id)
        own = data_kind(
            signed(DataValue(True, b"v"), kind=OWN.kind_id, resource=resource), kind=OWN.kind_id
        )
        mallory = CertifiedIdentity((MALLORY.node_id,), None)
        self.assertStoreError(ErrorCode.FORBIDDEN, resource, own, 0.0, True, 0, mallory)
        self.store.store(resource, own, 0.0, replica_number=1, request_signer=mallory)
        self.assertEqual(len(self.store), 1)

    def test_empty_store_creates_nothing(self) -> None:
        """A store with no values answers generation 0 and leaves no empty resource behind."""
        response = self.store.store(RESOURCE, data_kind(), 0.0)
        self.assertEqual(response.generation_counter, 0)
        self.assertEqual(list(self.store.resources()), [])

    def test_no_certificate_cache(self) -> None:
        """Without a certificate cache only unverified stores succeed."""
        store = DataStore(KINDS, None)
        self.assertRaises(StoreError, store.store, RESOURCE, data_kind(single(b"v")), 0.0)
        store.store(RESOURCE, data_kind(single(b"v")), 0.0, verify=False)
        self.assertEqual(len(store), 1)

    def test_wrong_model(self) -> None:
        """A dictionary entry offered to a single-value Kind is INVALID_MESSAGE."""
        value = signed(DictionaryEntry(b"k", DataValue(True, b"v")))
        self.assertStoreError(ErrorCode.INVALID_MESSAGE, RESOURCE, data_kind(value), 0.0)

    def test_request_is_atomic(self) -> None:
        """When one Kind of a request fails, no Kind of it is stored."""
        good = data_kind(single(b"v"))
        bad = data_kind(entry(b"k", b"x" * (SIP_REGISTRATION.max_size + 1)), kind=1)
        self.assertRaises(StoreError, self.store.store_request, RESOURCE, (good, bad), 0.0)
        self.assertEqual(len(self.store), 0)
        self.assertEqual(list(self.store.resources()), [])

    def test_kind_is_atomic(self) -> None:
        """When one value of a Kind fails, the other values are not stored."""
        self.store.store(RESOURCE, data_kind(entry(b"b", b"v", storage_time=T0 + 5), kind=1), 0.0)
        request = data_kind(entry(b"a", b"v"), entry(b"b", b"old"), kind=1)
        self.assertRaises(StoreError, self.store.store, RESOURCE, request, 0.0)
        [response] = self.store.fetch(RESOURCE, [ALL_REGISTRATIONS], 0.0)
        self.assertEqual([v.value.key for v in response.values], [b"b"])

    def test_rollback_within_request(self) -> None:
        """A Kind named twice in one request cannot roll its own value back."""
        newer = data_kind(single(b"new", storage_time=T0 + 1))
        older = data_kind(single(b"old"))
        error = self.assertRaises(
            StoreError, self.store.store_request, RESOURCE, (newer, older), 0.0
        )
        self.assertEqual(error.error_code, ErrorCode.DATA_TOO_OLD)


class FetchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = make_store()

    def test_single_value(self) -> None:
        """A stored single value is fetched back, signed, with its remaining lifetime."""
        value = single(b"hello", lifetime=60)
        self.store.store(RESOURCE, data_kind(value), 100.0)
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 130.0)
        self.assertEqual(response.kind, DATA.kind_id)
        self.assertEqual(response.generation, 1)
        self.assertEqual(response.values, (evolve(value, lifetime=30),))

    def test_nothing_stored(self) -> None:
        """Fetching an empty resource gives one empty response with generation 0."""
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 0.0)
        self.assertEqual((response.generation, response.values), (0, ()))

    def test_unknown_kind(self) -> None:
        """Fetching an unknown Kind is refused with UNKNOWN_KIND."""
        error = self.assertRaises(
            StoreError, self.store.fetch, RESOURCE, [StoredDataSpecifier(99, 0)], 0.0
        )
        self.assertEqual((error.error_code, error.unknown_kinds), (ErrorCode.UNKNOWN_KIND, (99,)))
        self.assertRaises(StoreError, self.store.stat, RESOURCE, [StoredDataSpecifier(99, 0)], 0.0)

    def test_current_generation_returns_nothing(self) -> None:
        """A specifier carrying the current generation gets no values."""
        self.store.store(RESOURCE, data_kind(single(b"v")), 0.0)
        [response] = self.store.fetch(RESOURCE, [StoredDataSpecifier(DATA.kind_id, 1)], 0.0)
        self.assertEqual((response.generation, response.values), (1, ()))
        [response] = self.store.fetch(RESOURCE, [StoredDataSpecifier(DATA.kind_id, 5)], 0.0)
        self.assertEqual(len(response.values), 1)

    def test_dictionary(self) -> None:
        """Dictionary fetches return all entries, or the requested keys that exist."""
        values = [entry(b"b", b"2"), entry(b"a", b"1"), entry(b"c", b"3")]
        self.store.store(RESOURCE, data_kind(*values, kind=1), 0.0)
        [everything] = self.store.fetch(RESOURCE, [ALL_REGISTRATIONS], 0.0)
        self.assertEqual([v.value.key for v in everything.values], [b"a", b"b", b"c"])
        some = StoredDataSpecifier(1, 0, keys=(b"c", b"zz", b"a", b"c"))
        [chosen] = self.store.fetch(RESOURCE, [some], 0.0)
        self.assertEqual([v.value.key for v in chosen.values], [b"c", b"a"])

    def test_dictionary_entry_replaced(self) -> None:
        """A newer entry at a key replaces the old one and leaves the others."""
        self.store.store(RESOURCE, data_kind(entry(b"a", b"1"), entry(b"b", b"2"), kind=1), 0.0)
        self.store.store(RESOURCE, data_kind(entry(b"a", b"new", storage_time=T0 + 1), kind=1), 0.0)
        [response] = self.store.fetch(RESOURCE, [ALL_REGISTRATIONS], 0.0)
        self.assertEqual(
            [(v.value.key, v.value.value.value) for v in response.values],
            [(b"a", b"new"), (b"b", b"2")],
        )

    def test_array_ranges(self) -> None:
        """Array fetches return the stored entries inside the requested ranges."""
        values = [element(i, b"%d" % i) for i in (0, 1, 3, 5)]
        self.store.store(RESOURCE, data_kind(*values, kind=LIST.kind_id), 0.0)
        ranges = StoredDataSpecifier(
            LIST.kind_id, 0, indices=(ArrayRange(1, 3), ArrayRange(5, APPEND_INDEX))
        )
        [response] = self.store.fetch(RESOURCE, [ranges], 0.0)
        self.assertEqual([v.value.index for v in response.values], [1, 3, 5])
        [everything] = self.store.fetch(RESOURCE, [ALL_LIST], 0.0)
        self.assertEqual([v.value.index for v in everything.values], [0, 1, 3, 5])

    def test_array_append(self) -> None:
        """An entry stored at index 0xffffffff lands after the last entry."""
        self.store.store(RESOURCE, data_kind(element(0, b"a"), kind=LIST.kind_id), 0.0)
        self.store.store(RESOURCE, data_kind(element(APPEND_INDEX, b"b"), kind=LIST.kind_id), 0.0)
        self.store.store(RESOURCE, data_kind(element(APPEND_INDEX, b"c"), kind=LIST.kind_id), 0.0)
        [response] = self.store.fetch(RESOURCE, [ALL_LIST], 0.0)
        self.assertEqual(
            [(v.value.index, v.value.value.value) for v in response.values],
            [(0, b"a"), (1, b"b"), (2, b"c")],
        )

    def test_array_append_when_full(self) -> None:
        """Appending to a full array is refused with DATA_TOO_LARGE."""
        values = [element(i, b"v") for i in range(LIST.max_count)]
        self.store.store(RESOURCE, data_kind(*values, kind=LIST.kind_id), 0.0)
        error = self.assertRaises(
            StoreError,
            self.store.store,
            RESOURCE,
            data_kind(element(APPEND_INDEX, b"v"), kind=LIST.kind_id),
            0.0,
        )
        self.assertEqual(error.error_code, ErrorCode.DATA_TOO_LARGE)

    def test_stat(self) -> None:
        """Stat reports lengths, times and a SHA-256 of each value instead of the value."""
        self.store.store(RESOURCE, data_kind(single(b"hello", lifetime=60)), 0.0)
        self.store.store(RESOURCE, data_kind(entry(b"k", b"dict"), kind=1), 0.0)
        self.store.store(RESOURCE, data_kind(element(2, b"arr"), kind=LIST.kind_id), 0.0)
        [single_stat, dict_stat, array_stat] = self.store.stat(
            RESOURCE, [ALL_DATA, ALL_REGISTRATIONS, ALL_LIST], 10.0
        )
        [meta] = single_stat.values
        self.assertEqual(
            (meta.storage_time, meta.lifetime, meta.value_length),
            (T0, 50, len(encode_stored_value(DataValue(True, b"hello")))),
        )
        self.assertEqual(meta.metadata, MetaData(True, 5, 4, hashlib.sha256(b"hello").digest()))
        self.assertEqual(single_stat.generation, 1)
        [meta] = dict_stat.values
        self.assertIsInstance(meta.metadata, DictionaryEntryMeta)
        [meta] = array_stat.values
        self.assertEqual(meta.metadata.index, 2)
        self.assertIsInstance(meta.metadata, ArrayEntryMeta)


class DeletionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = make_store()
        self.store.store(RESOURCE, data_kind(entry(b"a", b"1"), entry(b"b", b"2"), kind=1), 0.0)
        tombstone = signed(
            DictionaryEntry(b"a", DataValue(False, b"")), kind=1, storage_time=T0 + 1
        )
        self.tombstone = tombstone
        self.store.store(RESOURCE, data_kind(tombstone, kind=1), 0.0)

    def test_deleted_value_reported_as_nonexistent(self) -> None:
        """A deletion is fetched as the signed exists=False value."""
        [response] = self.store.fetch(RESOURCE, [StoredDataSpecifier(1, 0, keys=(b"a",))], 0.0)
        self.assertEqual(response.values, (self.tombstone,))

    def test_deleted_value_not_counted(self) -> None:
        """Deleted values do not count as stored values."""
        self.assertEqual(self.store.counts_per_kind()["SIP-REGISTRATION"], 1)
        self.assertEqual(len(self.store), 1)

    def test_no_rollback_over_deletion(self) -> None:
        """An older value cannot be stored over a deletion."""
        error = self.assertRaises(
            StoreError, self.store.store, RESOURCE, data_kind(entry(b"a", b"1"), kind=1), 0.0
        )
        self.assertEqual(error.error_code, ErrorCode.DATA_TOO_OLD)

    def test_deletion_frees_count(self) -> None:
        """Deleted entries do not count against max-count."""
        values = [entry(b"n%d" % i, b"v") for i in range(SIP_REGISTRATION.max_count - 1)]
        self.store.store(RESOURCE, data_kind(*values, kind=1), 0.0)
        self.assertEqual(len(self.store), SIP_REGISTRATION.max_count)


class ExpiryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = make_store()

    def test_expired_values_not_returned(self) -> None:
        """A value past its lifetime is not fetched even before expire() runs."""
        self.store.store(RESOURCE, data_kind(single(b"v", lifetime=10)), 100.0)
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 110.0)
        self.assertEqual(response.values, ())
        [response] = self.store.stat(RESOURCE, [ALL_DATA], 110.0)
        self.assertEqual(response.values, ())
        self.assertEqual(self.store.export(RESOURCE, 110.0), ())

    def test_expire_removes_and_counts(self) -> None:
        """expire() removes exactly the values whose lifetime ended and returns how many."""
        self.store.store(RESOURCE, data_kind(single(b"v", lifetime=10)), 0.0)
        other = resource_id("other")
        self.store.store(other, data_kind(single(b"w", lifetime=20, resource=other)), 0.0)
        self.assertEqual(self.store.expire(9.0), 0)
        self.assertEqual(self.store.expire(10.0), 1)
        self.assertEqual(list(self.store.resources()), [other])
        self.assertEqual(self.store.expire(100.0), 1)
        self.assertEqual(len(self.store), 0)

    def test_lifetime_counts_from_receipt(self) -> None:
        """Expiry counts from when the value arrived, whatever its storage_time says."""
        ancient = single(b"v", storage_time=1000, lifetime=10)
        self.store.store(RESOURCE, data_kind(ancient), 5000.0)
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 5009.0)
        self.assertEqual([v.lifetime for v in response.values], [1])

    def test_refresh_extends_lifetime(self) -> None:
        """A newer value replaces the old one's expiry, and stale timers do nothing."""
        self.store.store(RESOURCE, data_kind(single(b"v", lifetime=10)), 0.0)
        self.store.store(RESOURCE, data_kind(single(b"v", storage_time=T0 + 1, lifetime=10)), 5.0)
        self.assertEqual(self.store.expire(12.0), 0)
        self.assertEqual(len(self.store), 1)
        self.assertEqual(self.store.expire(15.0), 1)

    def test_expired_slot_can_be_rewritten(self) -> None:
        """Once a value has expired, an older storage_time may be stored again."""
        self.store.store(RESOURCE, data_kind(single(b"v", storage_time=T0 + 9, lifetime=1)), 0.0)
        self.store.store(RESOURCE, data_kind(single(b"w")), 2.0)
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 2.0)
        self.assertEqual(response.values[0].value.value, b"w")

    def test_many_refreshes_keep_expiry_bounded(self) -> None:
        """Repeated refreshes of one value do not grow expiry bookkeeping without bound."""
        for step in range(3000):
            value = single(b"v", storage_time=T0 + step, lifetime=3600)
            self.store.store(RESOURCE, data_kind(value), float(step), verify=False)
            self.store.expire(float(step))
        self.assertLess(len(self.store._expiry), 2100)
        self.assertEqual(self.store.expire(10_000.0), 1)


class ReplicationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = make_store()
        self.store.store(RESOURCE, data_kind(single(b"v", lifetime=100)), 0.0)
        self.latest = single(b"w", storage_time=T0 + 1, lifetime=100)
        self.store.store(RESOURCE, data_kind(self.latest), 0.0)
        registrations = [entry(b"k%d" % i, b"c%d" % i) for i in range(3)]
        self.store.store(RESOURCE, data_kind(*registrations, kind=1), 0.0)
        self.store.store(RESOURCE, data_kind(element(0, b"a"), kind=LIST.kind_id), 0.0)
        self.store.store(RESOURCE, data_kind(element(APPEND_INDEX, b"b"), kind=LIST.kind_id), 0.0)
        self.specifiers = [ALL_DATA, ALL_REGISTRATIONS, ALL_LIST]

    def test_export_replay_identical(self) -> None:
        """Replaying an export into another store gives identical fetch answers."""
        exported = self.store.export(RESOURCE, 20.5)
        other = make_store()
        other.store_request(RESOURCE, exported, 20.5, replica_number=1)
        # Lifetimes travel in whole seconds, so answers match at the export
        # time and whole seconds after it.
        for now in (20.5, 50.5):
            self.assertEqual(
                other.fetch(RESOURCE, self.specifiers, now),
                self.store.fetch(RESOURCE, self.specifiers, now),
            )
        self.assertEqual(other.counts_per_kind(), self.store.counts_per_kind())

    def test_export_replay_is_idempotent(self) -> None:
        """Replaying the same export twice changes nothing the second time."""
        exported = self.store.export(RESOURCE, 0.0)
        other = make_store()
        first = other.store_request(RESOURCE, exported, 0.0, replica_number=1)
        second = other.store_request(RESOURCE, exported, 0.0, replica_number=1)
        self.assertEqual(first, second)

    def test_export_keeps_signatures(self) -> None:
        """Exported values keep their signatures and carry the remaining lifetime."""
        exported = {data.kind: data for data in self.store.export(RESOURCE, 30.0)}
        self.assertEqual(sorted(exported), [1, DATA.kind_id, LIST.kind_id])
        data = exported[DATA.kind_id]
        [value] = data.values
        # ECDSA signatures are randomised: the very signature stored comes back.
        self.assertEqual(value, evolve(self.latest, lifetime=70))
        self.assertEqual(data.generation_counter, 2)

    def test_replica_number_remembered(self) -> None:
        """The store remembers whether it holds a resource as primary or replica."""
        other = make_store()
        other.store_request(RESOURCE, self.store.export(RESOURCE, 0.0), 0.0, replica_number=2)
        self.assertEqual(other.replica_number(RESOURCE), 2)
        self.assertEqual(self.store.replica_number(RESOURCE), 0)
        self.assertIsNone(other.replica_number(resource_id("absent")))
        other.set_replica_number(RESOURCE, 0)
        self.assertEqual(other.replica_number(RESOURCE), 0)

    def test_replica_store_merges_around_newer_values(self) -> None:
        """A replica store skips the values we hold newer versions of and applies the rest."""
        other = make_store()
        newer = entry(b"k0", b"rewritten", storage_time=T0 + 5)
        other.store(RESOURCE, data_kind(newer, kind=1), 0.0)
        other.store_request(RESOURCE, self.store.export(RESOURCE, 0.0), 0.0, replica_number=1)
        [response] = other.fetch(RESOURCE, [ALL_REGISTRATIONS], 0.0)
        values = {stored.value.key: stored.value.value.value for stored in response.values}
        self.assertEqual(values, {b"k0": b"rewritten", b"k1": b"c1", b"k2": b"c2"})

    def test_original_store_of_older_value_still_refused(self) -> None:
        """Outside replication an older value is still refused whole with DATA_TOO_OLD."""
        other = make_store()
        other.store(RESOURCE, data_kind(entry(b"k0", b"new", storage_time=T0 + 5), kind=1), 0.0)
        with self.assertRaises(StoreError) as caught:
            other.store_request(RESOURCE, (data_kind(entry(b"k0", b"c0"), kind=1),), 0.0)
        self.assertEqual(caught.exception.error_code, ErrorCode.DATA_TOO_OLD)

    def test_replica_store_takes_generation(self) -> None:
        """A replica store adopts the sender's higher generation counter without checking it."""
        other = make_store()
        [response] = other.store_request(
            RESOURCE, (data_kind(single(b"v"), generation=41),), 0.0, replica_number=1
        )
        self.assertEqual(response.generation_counter, 41)

    def test_remove_resource(self) -> None:
        """A removed resource is gone from fetches and counts."""
        self.store.remove_resource(RESOURCE)
        self.store.remove_resource(RESOURCE)
        self.assertEqual(len(self.store), 0)
        self.assertEqual(list(self.store.resources()), [])
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 0.0)
        self.assertEqual(response.values, ())
        self.assertEqual(self.store.expire(1000.0), 0)

    def test_counts_per_kind(self) -> None:
        """Counts are per Kind name and include Kinds with no values."""
        self.assertEqual(
            self.store.counts_per_kind(),
            {
                "SIP-REGISTRATION": 3,
                "CERTIFICATE_BY_NODE": 0,
                "CERTIFICATE_BY_USER": 0,
                "DATA": 1,
                "LIST": 2,
                "OWN": 0,
            },
        )
        self.assertEqual(len(self.store), 6)


# Hypothesis: random sequences of stores, fetches and expiry only ever raise
# StoreError.  Values are signed by a few identities (some unknown to the
# store), sometimes tampered with, at a few resources and Kinds.
SIGNERS = [ALICE, MALLORY, NodeIdentity.generate()]
RESOURCES = [RESOURCE, resource_id("bob"), node_match_resource(ALICE.node_id)]
ALL_KIND_IDS = [DATA.kind_id, 1, LIST.kind_id, OWN.kind_id, 12345]


@st.composite
def stored_values(draw: st.DrawFn, kind_id: int, resource: int) -> StoredData:
    payload = DataValue(draw(st.booleans()), draw(st.binary(max_size=80)))
    model = KINDS[kind_id].data_model if kind_id in KINDS else DataModel.SINGLE_VALUE
    value: DataValue | ArrayEntry | DictionaryEntry = payload
    if model is DataModel.ARRAY:
        index = draw(st.sampled_from([0, 1, 3, 7, 8, 100, APPEND_INDEX, 2**32 - 2]))
        value = ArrayEntry(index, payload)
    elif model is DataModel.DICTIONARY:
        value = DictionaryEntry(draw(st.binary(max_size=20)), payload)
    if draw(st.integers(0, 9)) == 0:
        value = DictionaryEntry(b"wrong-model", payload)
    stored = signed(
        value,
        storage_time=draw(st.integers(0, 5)),
        lifetime=draw(st.integers(0, 30)),
        kind=kind_id,
        resource=draw(st.sampled_from([resource, RESOURCES[0]])),
        signer=draw(st.sampled_from(SIGNERS)),
    )
    if draw(st.integers(0, 9)) == 0:
        stored = evolve(stored, storage_time=stored.storage_time + 1)
    return stored


@st.composite
def operations(draw: st.DrawFn) -> tuple[str, int, object, float, int]:
    resource = draw(st.sampled_from(RESOURCES))
    now = float(draw(st.integers(0, 60)))
    operation = draw(st.sampled_from(["store", "store", "fetch", "expire", "export"]))
    if operation == "store":
        kind_data = []
        for _ in range(draw(st.integers(1, 2))):
            kind_id = draw(st.sampled_from(ALL_KIND_IDS))
            values = draw(st.lists(stored_values(kind_id, resource), max_size=4))
            kind_data.append(StoreKindData(kind_id, draw(st.integers(0, 3)), tuple(values)))
        return operation, resource, tuple(kind_data), now, draw(st.integers(0, 2))
    if operation == "fetch":
        specifier = StoredDataSpecifier(
            draw(st.sampled_from(ALL_KIND_IDS)), draw(st.integers(0, 3))
        )
        return operation, resource, (specifier,), now, 0
    return operation, resource, None, now, 0


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(st.lists(operations(), max_size=12))
    def test_random_operations_raise_only_store_error(
        self, ops: list[tuple[str, int, object, float, int]]
    ) -> None:
        """Random stores, fetches, exports and expiry only ever raise StoreError."""
        store = make_store()
        replica = make_store()
        for operation, resource, argument, now, replica_number in ops:
            try:
                if operation == "store":
                    assert isinstance(argument, tuple)
                    store.store_request(resource, argument, now, replica_number=replica_number)
                elif operation == "fetch":
                    assert isinstance(argument, tuple)
                    store.fetch(resource, argument, now)
                    store.stat(resource, argument, now)
                elif operation == "expire":
                    store.expire(now)
                else:
                    exported = store.export(resource, now)
                    replica.store_request(resource, exported, now, replica_number=1)
            except StoreError:
                pass
            counts = store.counts_per_kind()
            for kind in KINDS.values():
                self.assertLessEqual(counts[kind.name], kind.max_count * len(RESOURCES))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(operations(), max_size=10), st.floats(0, 100))
    def test_export_replay_matches(
        self, ops: list[tuple[str, int, object, float, int]], now: float
    ) -> None:
        """After any history, every resource's export replays to identical fetch answers."""
        store = make_store()
        for operation, resource, argument, at, replica_number in ops:
            if operation == "store":
                assert isinstance(argument, tuple)
                try:
                    store.store_request(resource, argument, at, replica_number=replica_number)
                except StoreError:
                    pass
        now = max([now, *(op[3] for op in ops)])
        specifiers = [
            StoredDataSpecifier(DATA.kind_id, 0),
            StoredDataSpecifier(1, 0, data_model=DataModel.DICTIONARY),
            StoredDataSpecifier(LIST.kind_id, 0, data_model=DataModel.ARRAY),
            StoredDataSpecifier(OWN.kind_id, 0),
        ]
        for resource in store.resources():
            replica = make_store()
            replica.store_request(resource, store.export(resource, now), now, replica_number=1)
            expected = store.fetch(resource, specifiers, now)
            actual = replica.fetch(resource, specifiers, now)
            # Generations differ only for Kinds whose values have all expired,
            # which are not exported; the values must be the same.
            self.assertEqual([r.values for r in actual], [r.values for r in expected])


class SignatureBindingTests(SynchronousTestCase):
    def test_key_is_signed(self) -> None:
        """Changing a dictionary key after signing is refused."""
        store = make_store()
        value = entry(id_to_bytes(ALICE.node_id), b"contact")
        moved = evolve(value, value=evolve(value.value, key=b"other"))
        error = self.assertRaises(StoreError, store.store, RESOURCE, data_kind(moved, kind=1), 0.0)
        self.assertEqual(error.error_code, ErrorCode.FORBIDDEN)


class CompactHoldingTests(SynchronousTestCase):
    """
    Values are held encoded, one slot alone, a few in a tuple, many in a
    dict, and a resource's Kinds alone or in a tuple: every shape answers
    alike.
    """

    def setUp(self) -> None:
        self.store = make_store()

    def test_many_entries_of_one_kind(self) -> None:
        """Past the few a tuple holds, entries are still found, replaced, expired and ordered."""
        keys = [bytes([k]) for k in range(12, 0, -1)]
        for number, key in enumerate(keys):
            lifetime = 10 if number % 2 else 60
            self.store.store(RESOURCE, data_kind(entry(key, b"v", lifetime=lifetime), kind=1), 0.0)
        self.store.store(
            RESOURCE, data_kind(entry(keys[0], b"w", storage_time=T0 + 1), kind=1), 0.0
        )
        [everything] = self.store.fetch(RESOURCE, [ALL_REGISTRATIONS], 0.0)
        self.assertEqual([v.value.key for v in everything.values], sorted(keys))
        self.assertEqual(everything.values[-1].value.value.value, b"w")
        self.assertEqual(self.store.expire(10.0), 6)
        [left] = self.store.fetch(RESOURCE, [ALL_REGISTRATIONS], 10.0)
        self.assertEqual([v.value.key for v in left.values], sorted(keys[0::2]))
        [one] = self.store.fetch(
            RESOURCE,
            [StoredDataSpecifier(1, 0, keys=(keys[2],), data_model=DataModel.DICTIONARY)],
            10.0,
        )
        self.assertEqual([v.value.key for v in one.values], [keys[2]])

    def test_kinds_come_and_go_at_one_resource(self) -> None:
        """A second Kind joins the first; when one expires the other stays, exported in Kind-ID order."""
        self.store.store(RESOURCE, data_kind(element(0, b"a", lifetime=60), kind=LIST.kind_id), 0.0)
        self.store.store(RESOURCE, data_kind(single(b"d", lifetime=10)), 0.0)
        exported = self.store.export(RESOURCE, 0.0)
        self.assertEqual([kd.kind for kd in exported], sorted([DATA.kind_id, LIST.kind_id]))
        self.assertEqual(self.store.expire(10.0), 1)
        [left] = self.store.export(RESOURCE, 10.0)
        self.assertEqual(left.kind, LIST.kind_id)
        self.assertEqual(self.store.expire(60.0), 1)
        self.assertEqual(list(self.store.resources()), [])

    def test_values_come_back_as_signed(self) -> None:
        """What Fetch returns is the stored value itself but for the lifetime that remains."""
        stored = single(b"payload", lifetime=60)
        self.store.store(RESOURCE, data_kind(stored), 0.0)
        [response] = self.store.fetch(RESOURCE, [ALL_DATA], 20.0)
        self.assertEqual(response.values, (evolve(stored, lifetime=40),))

    def test_appended_entry_keeps_its_index(self) -> None:
        """An appended array entry is held under the index it was given, and still verifies."""
        self.store.store(RESOURCE, data_kind(element(0, b"a"), kind=LIST.kind_id), 0.0)
        self.store.store(
            RESOURCE,
            data_kind(element(APPEND_INDEX, b"b", storage_time=T0 + 1), kind=LIST.kind_id),
            0.0,
        )
        [response] = self.store.fetch(RESOURCE, [ALL_LIST], 0.0)
        self.assertEqual([v.value.index for v in response.values], [0, 1])
        replica = make_store()
        replica.store_request(RESOURCE, self.store.export(RESOURCE, 0.0), 0.0, replica_number=1)
        self.assertEqual(replica.fetch(RESOURCE, [ALL_LIST], 0.0), (response,))
