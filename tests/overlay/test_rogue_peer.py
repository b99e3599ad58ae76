"""
A rogue peer in an enrolled ring cannot hijack, pin, delete or replay a
user's SIP registration, nor fill the ring (RFC 6940 s7.3, s7.4.1.1; RFC
7904 s3).

The ring runs on one fake clock with certificates from one overlay CA.  The
rogue is a full member: it holds a valid certificate for its own Node-ID
(and one for its own user), signs everything correctly and uses the real
store path of its node; it only asks for what it should not get.  After
every attack alice's binding is intact and the SIP location service still
finds her phone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay import bodies
from p2psip.overlay.errors import RequestFailed
from p2psip.overlay.kinds import DATA, SIP_REGISTRATION, user_match_resource
from p2psip.overlay.message import Destination, ErrorCode, MessageCode
from p2psip.overlay.node import OverlayNode
from p2psip.sip.location import Binding, NoUserCredential, OverlayLocationService
from p2psip.testing import TEST_CERTIFICATE_EPOCH, user_certificate
from p2psip.usages.sip import SipRegistration, encode_registration, registration_key
from tests.overlay.ringsim import RingSimulation

AOR = "sip:alice@example.com"
USER = "alice@example.com"
ALICE_RESOURCE = user_match_resource(USER)
PHONE = "sip:alice@192.0.2.10:5060"


class RoguePeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.authority = OverlayAuthority.create("rogue.test", TEST_CERTIFICATE_EPOCH)
        self.sim = RingSimulation(seed=23, authority=self.authority)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(5):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 120)
        nodes = self.sim.live()
        self.owner = self.node_for(ALICE_RESOURCE)
        others = [node for node in nodes if node is not self.owner]
        #: alice's super-node, with the user certificate the CA issued for its key.
        self.server = others[0]
        self.server.add_user_certificate(
            user_certificate(self.authority, self.server.identity, USER)
        )
        #: A member with a valid certificate for its own Node-ID and its own user.
        self.rogue = others[1]
        self.rogue_user = self.rogue.add_user_certificate(
            user_certificate(self.authority, self.rogue.identity, "mallory@example.com")
        )
        self.reader = others[2]
        self.location = OverlayLocationService(self.server, self.sim.clock)
        self.register_alice()

    def node_for(self, resource: int) -> OverlayNode:
        owner = self.sim.owner(resource)
        return next(node for node in self.sim.live() if node.node_id == owner)

    def register_alice(self, contact: str = PHONE, seconds: float = 3600) -> None:
        expires_at = self.sim.clock.seconds() + seconds
        binding = Binding(AOR, contact, expires_at, 1.0, self.server.node_id)
        self.sim.wait(self.location.register(AOR, [binding]))

    def assert_alice_intact(self, contact: str = PHONE) -> None:
        """Her entry is the server's alone, and a lookup from another peer finds her phone."""
        entries = self.sim.wait(self.reader.get_dictionary(USER, SIP_REGISTRATION.kind_id))
        self.assertEqual(list(entries), [registration_key(self.server.node_id)])
        found = self.sim.wait(OverlayLocationService(self.reader, self.sim.clock).lookup(AOR))
        self.assertEqual([(b.contact, b.node_id) for b in found], [(contact, self.server.node_id)])

    def refused(self, deferred: Deferred[Any]) -> ErrorCode:
        """The RFC error code the request failed with (it must fail)."""
        outcome: list[Any] = []
        deferred.addBoth(outcome.append)
        self.sim.run_until(lambda: bool(outcome), 60, 0.05)
        [failure] = outcome
        self.assertIsInstance(failure, Failure)
        self.assertIsInstance(failure.value, RequestFailed)
        return ErrorCode(failure.value.error_code)

    def rogue_value(self) -> bytes:
        route = SipRegistration.route(
            f"<sip:alice@203.0.113.66>;expires-at={2**32}", self.rogue.node_id
        )
        return encode_registration(route)

    def send_store(self, stored: bodies.StoredData, replica_number: int = 0) -> Deferred[Any]:
        """The rogue's own signed StoreReq carrying ``stored``, to alice's responsible peer."""
        kind_data = bodies.StoreKindData(SIP_REGISTRATION.kind_id, 0, (stored,))
        body = bodies.StoreReq(ALICE_RESOURCE, replica_number, (kind_data,)).encode()
        return self.rogue.messenger.request(
            Destination.resource(ALICE_RESOURCE), MessageCode.STORE_REQ, body
        )

    def test_overwrite_is_forbidden(self) -> None:
        """The rogue's store of alice's entry, under her server's key or its own, is Error_Forbidden."""
        for key in (registration_key(self.server.node_id), registration_key(self.rogue.node_id)):
            for signer in (None, self.rogue_user):
                put = self.rogue.put_dictionary_entry(
                    USER, SIP_REGISTRATION.kind_id, key, self.rogue_value(), 3600, signer=signer
                )
                self.assertEqual(self.refused(put), ErrorCode.FORBIDDEN)
        self.assert_alice_intact()

    def test_pinned_overwrite_is_forbidden(self) -> None:
        """Maximum storage time and lifetime: refused; alice can still re-register and be found."""
        entry = bodies.DictionaryEntry(
            registration_key(self.server.node_id), bodies.DataValue(True, self.rogue_value())
        )
        for storage_time, lifetime in ((2**64 - 1, 2**32 - 1), (2**64 - 1, 3600)):
            to_sign = bodies.stored_data_signature_input(
                ALICE_RESOURCE,
                SIP_REGISTRATION.kind_id,
                storage_time,
                bodies.encode_stored_value(entry),
                self.rogue.identity.signer_identity(),
            )
            pinned = bodies.StoredData(
                storage_time, lifetime, entry, self.rogue.identity.sign(to_sign)
            )
            self.assertEqual(self.refused(self.send_store(pinned)), ErrorCode.FORBIDDEN)
        self.sim.run(5)
        self.register_alice("sip:alice@192.0.2.11:5060")
        self.assert_alice_intact("sip:alice@192.0.2.11:5060")

    def test_delete_is_forbidden(self) -> None:
        """exists=false and lifetime 0 from the rogue are Error_Forbidden; alice stays reachable."""
        key = registration_key(self.server.node_id)
        removed = self.rogue.remove_dictionary_entry(USER, SIP_REGISTRATION.kind_id, key)
        self.assertEqual(self.refused(removed), ErrorCode.FORBIDDEN)
        removed = self.rogue.remove_dictionary_entry(
            USER, SIP_REGISTRATION.kind_id, key, signer=self.rogue_user
        )
        self.assertEqual(self.refused(removed), ErrorCode.FORBIDDEN)
        zero = self.rogue.put_dictionary_entry(
            USER, SIP_REGISTRATION.kind_id, key, self.rogue_value(), 0
        )
        self.assertEqual(self.refused(zero), ErrorCode.FORBIDDEN)
        self.assert_alice_intact()

    def test_replay_is_too_old(self) -> None:
        """
        alice's old signed value replayed with a new lifetime is Data_Too_Old;
        her current one is a refresh only its writer may send: Forbidden.
        """
        _, [old] = self.sim.wait(self.rogue.fetch_values(ALICE_RESOURCE, SIP_REGISTRATION.kind_id))
        self.sim.run(5)
        self.register_alice("sip:alice@192.0.2.11:5060")
        _, [current] = self.sim.wait(
            self.rogue.fetch_values(ALICE_RESOURCE, SIP_REGISTRATION.kind_id)
        )
        for value, refusal in ((old, ErrorCode.DATA_TOO_OLD), (current, ErrorCode.FORBIDDEN)):
            replay = bodies.StoredData(
                value.storage_time,
                SIP_REGISTRATION.max_lifetime_seconds,
                value.value,
                value.signature,
            )
            self.assertEqual(self.refused(self.send_store(replay)), refusal)
        self.assert_alice_intact("sip:alice@192.0.2.11:5060")

    def test_replay_after_alice_unregisters_is_too_old(self) -> None:
        """Once alice's phone unregisters, her last value replayed does not bring it back."""
        _, [last] = self.sim.wait(self.rogue.fetch_values(ALICE_RESOURCE, SIP_REGISTRATION.kind_id))
        self.sim.run(5)
        self.sim.wait(self.location.register(AOR, []))
        replay = bodies.StoredData(last.storage_time, 3600, last.value, last.signature)
        self.assertEqual(self.refused(self.send_store(replay)), ErrorCode.DATA_TOO_OLD)
        found = self.sim.wait(OverlayLocationService(self.reader, self.sim.clock).lookup(AOR))
        self.assertEqual(found, [])

    def test_replica_store_of_a_forgery_is_forbidden(self) -> None:
        """A forged value pushed as a replica (or hand-over) Store is refused too."""
        entry = bodies.DictionaryEntry(
            registration_key(self.rogue.node_id), bodies.DataValue(True, self.rogue_value())
        )
        forged = self.rogue.storage._stored_data(
            ALICE_RESOURCE, SIP_REGISTRATION.kind_id, entry, 3600, self.rogue_user
        )
        kind_data = bodies.StoreKindData(SIP_REGISTRATION.kind_id, 0, (forged,))
        body = bodies.StoreReq(ALICE_RESOURCE, 1, (kind_data,)).encode()
        for target in self.sim.live():
            if target is self.rogue:
                continue
            sent = self.rogue.messenger.request(
                Destination.node(target.node_id), MessageCode.STORE_REQ, body
            )
            self.assertEqual(self.refused(sent), ErrorCode.FORBIDDEN)
        self.assert_alice_intact()

    def test_store_flood_hits_the_quota(self) -> None:
        """20,000 stores from the rogue: refused past its quota everywhere, alice unharmed."""
        outcomes: dict[object, int] = {}

        def count(result: object) -> None:
            if isinstance(result, RequestFailed):
                outcome: object = ErrorCode(result.error_code)
            else:
                outcome = "stored"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        batch = 500
        with capturedLogs() as events:
            for start in range(0, 20_000, batch):
                puts = [
                    self.rogue.put(f"flood-{index}", b"x" * 4000, 3600).addCallbacks(
                        count, lambda failure: count(failure.value)
                    )
                    for index in range(start, start + batch)
                ]
                self.sim.wait(DeferredList(puts))
        refusals = [e for e in events if "refused a Store" in e.get("log_format", "")]
        # Each peer says so at warn level, once a minute (of simulated time) for the rogue.
        self.assertTrue(refusals)
        self.assertEqual({e["log_level"].name for e in refusals}, {"warn"})
        self.assertLessEqual(len(refusals), 2 * len(self.sim.live()))
        self.assertEqual({e["code"] for e in refusals}, {"DATA_TOO_LARGE"})
        stored = outcomes.pop("stored", 0)
        self.assertEqual(list(outcomes), [ErrorCode.DATA_TOO_LARGE])
        self.assertEqual(stored + outcomes[ErrorCode.DATA_TOO_LARGE], 20_000)
        for node in self.sim.live():
            held = node.storage.store.values_signed_by(DATA.kind_id, self.rogue.node_id)
            self.assertLessEqual(held, DATA.max_per_signer)
            self.assertLessEqual(node.storage.store.slot_count, DATA.max_per_signer + 50)
        # Every peer holds the rogue's values up to its quota, and no further.
        self.assertLessEqual(stored, len(self.sim.live()) * DATA.max_per_signer)
        self.assert_alice_intact()
        # An honest peer still stores.
        self.sim.wait(self.reader.put("honest", b"v"))
        self.assertEqual(self.sim.wait(self.server.get("honest")).value, b"v")

    def test_rogue_registers_only_its_own_user(self) -> None:
        """The rogue's credential for its own user writes that user's entry, and only that."""
        mallory = OverlayLocationService(self.rogue, self.sim.clock)
        binding = Binding(
            "sip:mallory@example.com",
            "sip:mallory@203.0.113.66",
            self.sim.clock.seconds() + 600,
            1.0,
            self.rogue.node_id,
        )
        self.sim.wait(mallory.register("sip:mallory@example.com", [binding]))
        found = self.sim.wait(
            OverlayLocationService(self.reader, self.sim.clock).lookup("sip:mallory@example.com")
        )
        self.assertEqual([b.contact for b in found], ["sip:mallory@203.0.113.66"])
        # Its registrar has no credential for alice, so it cannot even try.
        self.failureResultOf(mallory.register(AOR, [binding]), NoUserCredential)
        self.assert_alice_intact()
