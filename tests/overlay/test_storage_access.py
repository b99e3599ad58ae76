"""
The data store's access control, time rules and quotas, with CA-issued
certificates trusted through the overlay root (RFC 6940 s7.3, s7.4.1.1).
"""

from __future__ import annotations

import tracemalloc

from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay.bodies import (
    ArrayEntry,
    DataValue,
    DictionaryEntry,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    encode_stored_value,
    stored_data_signature_input,
)
from p2psip.overlay.certificates import CertifiedIdentity
from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError
from p2psip.overlay.kinds import (
    CERTIFICATE_BY_NODE,
    CERTIFICATE_BY_USER,
    DATA,
    DEFAULT_KINDS,
    SIP_REGISTRATION,
    node_match_resource,
    user_match_resource,
)
from p2psip.overlay.message import ErrorCode
from p2psip.overlay.storage import STORAGE_TIME_SKEW_SECONDS, DataStore, StoreError
from p2psip.testing import TEST_CERTIFICATE_EPOCH, enrolled_identity, user_certificate
from p2psip.util.ids import id_to_bytes, resource_id

OVERLAY = "access.test"
AUTHORITY = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
#: The super-node that serves alice: its node identity and alice's credential on its key.
SERVER = enrolled_identity(AUTHORITY)
ALICE = SERVER.with_certificate(user_certificate(AUTHORITY, SERVER, "alice@example.com"))
#: A peer with a valid certificate for its own Node-ID (and one for its own user).
ROGUE = enrolled_identity(AUTHORITY)
ROGUE_USER = ROGUE.with_certificate(user_certificate(AUTHORITY, ROGUE, "mallory@example.com"))
#: Mallory's certificate names alice as the user, but for her own Node-ID.
ROGUE_AS_ALICE = ROGUE.with_certificate(user_certificate(AUTHORITY, ROGUE, "alice@example.com"))

ALICE_RESOURCE = user_match_resource("alice@example.com")
SERVER_KEY = id_to_bytes(SERVER.node_id)
ROGUE_KEY = id_to_bytes(ROGUE.node_id)
#: The local clock of these tests (seconds) and a storage time in step with it (ms).
NOW = 1000.0
T = int(NOW * 1000)
ALL_REGISTRATIONS = StoredDataSpecifier(
    SIP_REGISTRATION.kind_id, 0, data_model=SIP_REGISTRATION.data_model
)


def signed(
    signer: NodeIdentity,
    value: DataValue | ArrayEntry | DictionaryEntry,
    *,
    resource: int = ALICE_RESOURCE,
    kind: int = SIP_REGISTRATION.kind_id,
    storage_time: int = T,
    lifetime: int = 3600,
) -> StoredData:
    to_sign = stored_data_signature_input(
        resource, kind, storage_time, encode_stored_value(value), signer.signer_identity()
    )
    return StoredData(storage_time, lifetime, value, signer.sign(to_sign))


def registration(
    signer: NodeIdentity, key: bytes, payload: bytes = b"contact", exists: bool = True, **kw: int
) -> StoredData:
    return signed(signer, DictionaryEntry(key, DataValue(exists, payload)), **kw)


def request(*values: StoredData, kind: int = SIP_REGISTRATION.kind_id) -> StoreKindData:
    return StoreKindData(kind, 0, values)


def proven(identity: NodeIdentity, store: DataStore) -> CertifiedIdentity:
    assert store.certificates is not None
    found = store.certificates.identity_for(identity.signer_identity())
    assert found is not None
    return found


class AccessTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.certificates = CertificateCache(trust=AUTHORITY.trust(lambda: TEST_CERTIFICATE_EPOCH))
        for identity in (SERVER, ALICE, ROGUE, ROGUE_USER, ROGUE_AS_ALICE):
            self.certificates.add(identity.certificate_der)
        self.store = DataStore(DEFAULT_KINDS, self.certificates)

    def assertRefused(self, code: ErrorCode, *args: object, **kwargs: object) -> StoreError:
        error = self.assertRaises(StoreError, self.store.store, *args, **kwargs)
        self.assertEqual(error.error_code, code, error.reason)
        return error

    def registrations(self, now: float = NOW) -> dict[bytes, bytes]:
        [response] = self.store.fetch(ALICE_RESOURCE, [ALL_REGISTRATIONS], now)
        return {
            value.value.key: value.value.value.value
            for value in response.values
            if value.value.value.exists
        }

    def store_alice(self, payload: bytes = b"alice's phone", **kw: int) -> StoredData:
        value = registration(ALICE, SERVER_KEY, payload, **kw)
        self.store.store(
            ALICE_RESOURCE, request(value), NOW, request_signer=proven(ALICE, self.store)
        )
        return value


class UserNodeMatchTests(AccessTestCase):
    def test_alice_credential_writes_her_entry(self) -> None:
        """The super-node's credential for alice writes the entry keyed by its Node-ID."""
        self.store_alice()
        self.assertEqual(self.registrations(), {SERVER_KEY: b"alice's phone"})

    def test_rogue_cannot_overwrite(self) -> None:
        """A rogue's own certificate cannot write alice's entry, under either key."""
        self.store_alice()
        for key in (SERVER_KEY, ROGUE_KEY):
            forged = registration(ROGUE_USER, key, b"attacker", storage_time=T + 10)
            error = self.assertRefused(
                ErrorCode.FORBIDDEN,
                ALICE_RESOURCE,
                request(forged),
                NOW,
                request_signer=proven(ROGUE_USER, self.store),
            )
            self.assertIn("USER-NODE-MATCH", error.reason)
        self.assertEqual(self.registrations(), {SERVER_KEY: b"alice's phone"})

    def test_alice_name_on_another_node_cannot_take_her_servers_entry(self) -> None:
        """A certificate naming alice for another Node-ID writes only that Node-ID's key."""
        self.store_alice()
        forged = registration(ROGUE_AS_ALICE, SERVER_KEY, b"attacker", storage_time=T + 10)
        error = self.assertRefused(ErrorCode.FORBIDDEN, ALICE_RESOURCE, request(forged), NOW)
        self.assertIn("dictionary key", error.reason)

    def test_rogue_cannot_delete(self) -> None:
        """Neither exists=false nor lifetime 0 from the rogue removes alice's entry."""
        self.store_alice()
        for exists, lifetime in ((False, 3600), (True, 0), (False, 0)):
            forged = registration(
                ROGUE_USER, SERVER_KEY, b"", exists, storage_time=T + 10, lifetime=lifetime
            )
            self.assertRefused(ErrorCode.FORBIDDEN, ALICE_RESOURCE, request(forged), NOW)
        self.assertEqual(self.registrations(NOW + 1), {SERVER_KEY: b"alice's phone"})

    def test_owner_deletes(self) -> None:
        """alice's own credential deletes her entry with a tombstone."""
        self.store_alice()
        tombstone = registration(ALICE, SERVER_KEY, b"", False, storage_time=T + 10)
        self.store.store(ALICE_RESOURCE, request(tombstone), NOW)
        self.assertEqual(self.registrations(), {})

    def test_request_signer_must_be_authorised(self) -> None:
        """An original store of alice's value relayed under the rogue's signature is refused."""
        value = registration(ALICE, SERVER_KEY)
        self.assertRefused(
            ErrorCode.FORBIDDEN,
            ALICE_RESOURCE,
            request(value),
            NOW,
            request_signer=proven(ROGUE_USER, self.store),
        )

    def test_replica_keeps_the_signer_checks(self) -> None:
        """A replica or hand-over store of a forged value is refused like an original one."""
        forged = registration(ROGUE_USER, ROGUE_KEY, b"attacker")
        for replica_number in (1, 2):
            self.assertRefused(
                ErrorCode.FORBIDDEN,
                ALICE_RESOURCE,
                request(forged),
                NOW,
                replica_number=replica_number,
            )

    def test_untrusted_certificate_is_refused(self) -> None:
        """A self-signed certificate claiming alice is unknown to an enrolled overlay."""
        impostor = NodeIdentity.generate().self_signed_user("alice@example.com")
        self.assertRaises(SignatureError, self.certificates.add, impostor.certificate_der)
        forged = registration(impostor, id_to_bytes(impostor.node_id))
        error = self.assertRefused(ErrorCode.FORBIDDEN, ALICE_RESOURCE, request(forged), NOW)
        self.assertIn("unknown", error.reason)


class CertificateKindTests(AccessTestCase):
    def test_node_stores_its_own_certificate(self) -> None:
        """CERTIFICATE_BY_NODE: at the hash of the signer's Node-ID only."""
        resource = node_match_resource(SERVER.node_id)
        own = signed(
            SERVER,
            ArrayEntry(0, DataValue(True, SERVER.certificate_der)),
            resource=resource,
            kind=CERTIFICATE_BY_NODE.kind_id,
        )
        self.store.store(resource, request(own, kind=CERTIFICATE_BY_NODE.kind_id), NOW)
        forged = signed(
            ROGUE,
            ArrayEntry(1, DataValue(True, ROGUE.certificate_der)),
            resource=resource,
            kind=CERTIFICATE_BY_NODE.kind_id,
        )
        self.assertRefused(
            ErrorCode.FORBIDDEN, resource, request(forged, kind=CERTIFICATE_BY_NODE.kind_id), NOW
        )

    def test_user_certificates_at_the_users_resource(self) -> None:
        """CERTIFICATE_BY_USER: any credential naming alice, nobody else's."""
        mine = signed(
            ALICE,
            ArrayEntry(3, DataValue(True, ALICE.certificate_der)),
            kind=CERTIFICATE_BY_USER.kind_id,
        )
        self.store.store(ALICE_RESOURCE, request(mine, kind=CERTIFICATE_BY_USER.kind_id), NOW)
        forged = signed(
            ROGUE_USER,
            ArrayEntry(3, DataValue(True, ROGUE_USER.certificate_der)),
            kind=CERTIFICATE_BY_USER.kind_id,
            storage_time=T + 10,
        )
        self.assertRefused(
            ErrorCode.FORBIDDEN,
            ALICE_RESOURCE,
            request(forged, kind=CERTIFICATE_BY_USER.kind_id),
            NOW,
        )


class FirstSignerTests(AccessTestCase):
    resource = resource_id("shared-name")

    def data(self, signer: NodeIdentity, payload: bytes, **kw: int) -> StoredData:
        return signed(
            signer, DataValue(True, payload), resource=self.resource, kind=DATA.kind_id, **kw
        )

    def test_first_writer_keeps_the_name(self) -> None:
        """While the first signer's DATA value lives, nobody else overwrites or deletes it."""
        self.store.store(
            self.resource, request(self.data(SERVER, b"first"), kind=DATA.kind_id), NOW
        )
        for value in (
            self.data(ROGUE, b"second", storage_time=T + 10),
            signed(
                ROGUE,
                DataValue(False, b""),
                resource=self.resource,
                kind=DATA.kind_id,
                storage_time=T + 10,
            ),
        ):
            self.assertRefused(
                ErrorCode.FORBIDDEN, self.resource, request(value, kind=DATA.kind_id), NOW
            )
        self.store.store(
            self.resource,
            request(self.data(SERVER, b"update", storage_time=T + 20), kind=DATA.kind_id),
            NOW,
        )
        [response] = self.store.fetch(self.resource, [StoredDataSpecifier(DATA.kind_id, 0)], NOW)
        self.assertEqual(response.values[0].value.value, b"update")

    def test_free_again_once_expired(self) -> None:
        """Once the value's lifetime is over, the name is anyone's."""
        first = self.data(SERVER, b"first", lifetime=60)
        self.store.store(self.resource, request(first, kind=DATA.kind_id), NOW)
        later = NOW + 120
        taken = self.data(ROGUE, b"mine now", storage_time=int(later * 1000))
        self.store.store(self.resource, request(taken, kind=DATA.kind_id), later)


class TimeRuleTests(AccessTestCase):
    def test_replay_of_an_old_value(self) -> None:
        """alice's older value replayed (with a fresh lifetime) is Error_Data_Too_Old."""
        old = self.store_alice(b"old phone")
        self.store_alice(b"new phone", storage_time=T + 1000)
        replay = StoredData(old.storage_time, 86400, old.value, old.signature)
        self.assertRefused(ErrorCode.DATA_TOO_OLD, ALICE_RESOURCE, request(replay), NOW + 5)
        self.assertEqual(self.registrations(NOW + 5), {SERVER_KEY: b"new phone"})

    def test_current_value_again_with_a_longer_lifetime_is_a_refresh(self) -> None:
        """
        The current signed value again with a longer lifetime (a Store resent
        to the peer holding a run-down replica) is taken: it lives longer.
        """
        current = self.store_alice(lifetime=60)
        longer = StoredData(current.storage_time, 600, current.value, current.signature)
        self.store.store(
            ALICE_RESOURCE, request(longer), NOW + 30, request_signer=proven(ALICE, self.store)
        )
        self.assertEqual(self.registrations(NOW + 600), {SERVER_KEY: b"alice's phone"})
        self.assertEqual(self.registrations(NOW + 631), {})

    def test_current_value_again_never_shortens_it(self) -> None:
        """The same value with a shorter lifetime is accepted and changes nothing (the same lifetime neither)."""
        current = self.store_alice(lifetime=600)
        for lifetime in (600, 1):
            again = StoredData(current.storage_time, lifetime, current.value, current.signature)
            self.store.store(
                ALICE_RESOURCE, request(again), NOW + 1, request_signer=proven(ALICE, self.store)
            )
        self.assertEqual(self.registrations(NOW + 599), {SERVER_KEY: b"alice's phone"})
        self.assertEqual(self.registrations(NOW + 601), {})

    def test_refresh_by_another_signer_is_refused(self) -> None:
        """Someone who fetched alice's value cannot keep it alive: its request signer fails the policy."""
        current = self.store_alice(lifetime=60)
        longer = StoredData(current.storage_time, 600, current.value, current.signature)
        self.assertRefused(
            ErrorCode.FORBIDDEN,
            ALICE_RESOURCE,
            request(longer),
            NOW + 30,
            request_signer=proven(ROGUE_USER, self.store),
        )
        self.assertEqual(self.registrations(NOW + 61), {})

    def test_refresh_cannot_outlive_the_storage_time_bound(self) -> None:
        """A refresh is held to the replay bound: at most the Kind's longest lifetime after storage_time."""
        current = self.store_alice(lifetime=3600)
        later = NOW + STORAGE_TIME_SKEW_SECONDS + 100
        longest = SIP_REGISTRATION.max_lifetime_seconds
        longer = StoredData(current.storage_time, longest, current.value, current.signature)
        error = self.assertRefused(
            ErrorCode.DATA_TOO_OLD,
            ALICE_RESOURCE,
            request(longer),
            later,
            request_signer=proven(ALICE, self.store),
        )
        self.assertIn("may live until", error.reason)

    def test_replay_after_deletion(self) -> None:
        """A value replayed over its owner's tombstone is Error_Data_Too_Old."""
        old = self.store_alice()
        tombstone = registration(
            ALICE,
            SERVER_KEY,
            b"",
            False,
            storage_time=T + 10,
            lifetime=SIP_REGISTRATION.max_lifetime_seconds,
        )
        self.store.store(ALICE_RESOURCE, request(tombstone), NOW)
        replay = StoredData(old.storage_time, 3600, old.value, old.signature)
        self.assertRefused(ErrorCode.DATA_TOO_OLD, ALICE_RESOURCE, request(replay), NOW + 100)

    def test_replay_cannot_outlive_its_storage_time(self) -> None:
        """An old value stored again gets at most the Kind's longest lifetime after its storage time."""
        old = registration(ALICE, SERVER_KEY, lifetime=3600)
        later = NOW + SIP_REGISTRATION.max_lifetime_seconds - 100
        replay = StoredData(old.storage_time, 3600, old.value, old.signature)
        error = self.assertRefused(ErrorCode.DATA_TOO_OLD, ALICE_RESOURCE, request(replay), later)
        self.assertIn("may live until", error.reason)
        short = StoredData(old.storage_time, 60, old.value, old.signature)
        self.store.store(ALICE_RESOURCE, request(short), later)

    def test_lifetime_beyond_the_kinds_maximum(self) -> None:
        """A lifetime beyond the Kind's maximum is refused, not cut (Error_Forbidden)."""
        too_long = registration(
            ALICE, SERVER_KEY, lifetime=SIP_REGISTRATION.max_lifetime_seconds + 1
        )
        error = self.assertRefused(ErrorCode.FORBIDDEN, ALICE_RESOURCE, request(too_long), NOW)
        self.assertIn("live at most", error.reason)

    def test_pinned_value_is_refused(self) -> None:
        """The largest storage time and lifetime are refused, even from alice's own credential."""
        pinned = registration(ALICE, SERVER_KEY, storage_time=2**64 - 1, lifetime=2**32 - 1)
        self.assertRefused(ErrorCode.FORBIDDEN, ALICE_RESOURCE, request(pinned), NOW)
        ahead = registration(
            ALICE, SERVER_KEY, storage_time=T + int((STORAGE_TIME_SKEW_SECONDS + 10) * 1000)
        )
        error = self.assertRefused(ErrorCode.FORBIDDEN, ALICE_RESOURCE, request(ahead), NOW)
        self.assertIn("ahead", error.reason)
        within = registration(ALICE, SERVER_KEY, storage_time=T + 60_000)
        self.store.store(ALICE_RESOURCE, request(within), NOW)

    def test_replica_store_lifetime_is_bounded_too(self) -> None:
        """A replica store cannot stretch a value's life past the bound either."""
        old = registration(ALICE, SERVER_KEY, lifetime=3600)
        later = NOW + SIP_REGISTRATION.max_lifetime_seconds
        stretched = StoredData(old.storage_time, 86400, old.value, old.signature)
        self.assertRefused(
            ErrorCode.DATA_TOO_OLD, ALICE_RESOURCE, request(stretched), later, replica_number=1
        )


class QuotaTests(AccessTestCase):
    def test_per_signer_quota(self) -> None:
        """One Node-ID's DATA values beyond its quota are Error_Data_Too_Large; others still store."""
        quota = DATA.max_per_signer
        for index in range(quota):
            resource = resource_id(f"rogue-{index}")
            value = signed(ROGUE, DataValue(True, b"x"), resource=resource, kind=DATA.kind_id)
            self.store.store(resource, request(value, kind=DATA.kind_id), NOW)
        resource = resource_id("rogue-over")
        value = signed(ROGUE, DataValue(True, b"x"), resource=resource, kind=DATA.kind_id)
        error = self.assertRefused(
            ErrorCode.DATA_TOO_LARGE, resource, request(value, kind=DATA.kind_id), NOW
        )
        self.assertIn("quota", error.reason)
        self.assertEqual(self.store.values_signed_by(DATA.kind_id, ROGUE.node_id), quota)
        honest = signed(SERVER, DataValue(True, b"x"), resource=resource, kind=DATA.kind_id)
        self.store.store(resource, request(honest, kind=DATA.kind_id), NOW)

    def test_quota_is_freed_by_expiry(self) -> None:
        """Expired values no longer count against their signer's quota."""
        resource = resource_id("short")
        value = signed(
            ROGUE, DataValue(True, b"x"), resource=resource, kind=DATA.kind_id, lifetime=10
        )
        self.store.store(resource, request(value, kind=DATA.kind_id), NOW)
        self.assertEqual(self.store.values_signed_by(DATA.kind_id, ROGUE.node_id), 1)
        self.store.expire(NOW + 11)
        self.assertEqual(self.store.values_signed_by(DATA.kind_id, ROGUE.node_id), 0)
        self.assertEqual(self.store.slot_count, 0)

    def test_per_resource_bound(self) -> None:
        """More bytes at one resource than the store allows is Error_Data_Too_Large."""
        store = DataStore(DEFAULT_KINDS, self.certificates, max_bytes_per_resource=1500)
        first = registration(ALICE, SERVER_KEY, b"x" * 1000)
        store.store(ALICE_RESOURCE, request(first), NOW)
        certificate = signed(
            ALICE,
            ArrayEntry(0, DataValue(True, b"y" * 1000)),
            kind=CERTIFICATE_BY_USER.kind_id,
        )
        error = self.assertRaises(
            StoreError,
            store.store,
            ALICE_RESOURCE,
            request(certificate, kind=CERTIFICATE_BY_USER.kind_id),
            NOW,
        )
        self.assertEqual(error.error_code, ErrorCode.DATA_TOO_LARGE)

    def test_whole_store_bound(self) -> None:
        """A store full to its bound refuses new values with Error_Data_Too_Large."""
        store = DataStore(DEFAULT_KINDS, self.certificates, max_values=3)
        for index, signer in enumerate((SERVER, ROGUE, SERVER)):
            resource = resource_id(f"full-{index}")
            value = signed(signer, DataValue(True, b"x"), resource=resource, kind=DATA.kind_id)
            store.store(resource, request(value, kind=DATA.kind_id), NOW)
        resource = resource_id("full-over")
        value = signed(SERVER, DataValue(True, b"x"), resource=resource, kind=DATA.kind_id)
        error = self.assertRaises(
            StoreError, store.store, resource, request(value, kind=DATA.kind_id), NOW
        )
        self.assertEqual(error.error_code, ErrorCode.DATA_TOO_LARGE)

    def test_twenty_thousand_stores_from_one_signer(self) -> None:
        """20,000 DATA stores from one rogue: all past the quota refused, memory bounded."""
        store = DataStore(DEFAULT_KINDS, self.certificates)
        payload = DataValue(True, b"x" * 4000)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        outcomes: dict[object, int] = {}
        baseline = 0
        for index in range(20_000):
            resource = resource_id(f"flood-{index}")
            value = signed(ROGUE, payload, resource=resource, kind=DATA.kind_id)
            try:
                store.store(resource, request(value, kind=DATA.kind_id), NOW)
                outcome: object = "stored"
            except StoreError as error:
                outcome = error.error_code
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if index == DATA.max_per_signer + 100:
                baseline, _ = tracemalloc.get_traced_memory()
        current, _ = tracemalloc.get_traced_memory()
        self.assertEqual(
            outcomes,
            {"stored": DATA.max_per_signer, ErrorCode.DATA_TOO_LARGE: 20_000 - DATA.max_per_signer},
        )
        self.assertEqual(store.slot_count, DATA.max_per_signer)
        # The refused stores after the quota filled left nothing behind.
        self.assertLess(current - baseline, 64 * 1024)
