"""Tests for the overlay location service and the contact list it keeps in SIP-REGISTRATION values.

The SipRegistration codec itself is tested in ``tests/usages/test_sip.py``.
"""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from p2psip.interfaces import IOverlayStorage
from p2psip.sip.location import (
    Binding,
    LocationDecodeError,
    NoUserCredential,
    OverlayLocationService,
    bindings_from_entry,
    format_q,
)
from p2psip.usages.sip import (
    SIP_REGISTRATION_KIND,
    SIP_REGISTRATION_ROUTE,
    SIP_REGISTRATION_URI,
    DecodeError,
    Destination,
    SipRegistration,
    encode_registration,
)
from p2psip.util.ids import id_to_bytes

from .memory_storage import MemoryCredential, MemoryOverlayStorage, StorageUnavailable

AOR = "sip:alice@example.org"
#: Where RFC 7904's USER-NODE-MATCH puts alice's registrations: her user name.
RESOURCE = "alice@example.org"
NODE_A = 0x0123456789ABCDEF0123456789ABCDEF
NODE_B = 0xFEDCBA9876543210FEDCBA9876543210
NOW = 1_764_000_000.0


class ContactPrefsTests(SynchronousTestCase):
    def test_q_format(self) -> None:
        """q-values are written with at most three decimals."""
        self.assertEqual([format_q(q) for q in (1.0, 0.5, 0.125, 0.0)], ["1", "0.5", "0.125", "0"])


class EntryTests(SynchronousTestCase):
    def test_unknown_type_has_no_bindings(self) -> None:
        """A registration type this code does not know gives no bindings, and no error."""
        self.assertEqual(bindings_from_entry(AOR, id_to_bytes(NODE_A), b"\x07\x00\x02hi"), [])

    def test_route_to_key_node(self) -> None:
        """A route value without a node destination goes to the node its key names."""
        value = encode_registration(SipRegistration(SIP_REGISTRATION_ROUTE, contact_prefs="audio"))
        [binding] = bindings_from_entry(AOR, id_to_bytes(NODE_B), value)
        self.assertEqual(binding.node_id, NODE_B)
        self.assertRaises(LocationDecodeError, bindings_from_entry, AOR, b"k", value)

    def test_last_node_is_the_target(self) -> None:
        """With several node destinations the last one serves the contact."""
        value = encode_registration(
            SipRegistration.route("<sip:a@192.0.2.1>;expires-at=5", NODE_A, NODE_B)
        )
        [binding] = bindings_from_entry(AOR, b"", value)
        self.assertEqual((binding.node_id, binding.expires_at), (NODE_B, 5.0))

    @given(st.binary(max_size=200), st.binary(max_size=20))
    def test_hostile_entries_only_decode_error(self, value: bytes, key: bytes) -> None:
        """Any entry gives bindings or raises DecodeError (LocationDecodeError is one), nothing else."""
        try:
            bindings_from_entry(AOR, key, value)
        except DecodeError:
            pass

    @given(st.text(max_size=120))
    def test_hostile_contact_prefs_only_decode_error(self, prefs: str) -> None:
        """Any contact_prefs text in a well-formed value gives bindings or a LocationDecodeError."""
        value = encode_registration(SipRegistration.route(prefs, NODE_A))
        try:
            bindings_from_entry(AOR, b"", value)
        except LocationDecodeError:
            pass

    def test_foreign_uri_value(self) -> None:
        """A plain uri value from another implementation is one binding to that URI."""
        value = encode_registration(
            SipRegistration(SIP_REGISTRATION_URI, uri="sip:alice@192.0.2.1")
        )
        [binding] = bindings_from_entry(AOR, b"k", value)
        self.assertEqual(
            (binding.contact, binding.node_id, binding.expires_at),
            ("sip:alice@192.0.2.1", None, math.inf),
        )

    def test_foreign_route_value(self) -> None:
        """A route value with plain callee preferences routes the AOR to its node."""
        value = encode_registration(
            SipRegistration(
                SIP_REGISTRATION_ROUTE,
                contact_prefs="audio",
                destination_list=(Destination.node(NODE_B),),
            )
        )
        [binding] = bindings_from_entry(AOR, id_to_bytes(NODE_A), value)
        self.assertEqual((binding.contact, binding.node_id), (AOR, NODE_B))

    def test_bad_contact_prefs(self) -> None:
        """Our contact list with a missing expiry or a bad q-value is a decode error."""
        for prefs in [
            "<sip:a@b>;q=0.5",
            "<sip:a@b>;q=2;expires-at=5",
            "<sip:a@b;expires-at=5",
            "<>;expires-at=5",
        ]:
            value = encode_registration(
                SipRegistration(
                    SIP_REGISTRATION_ROUTE,
                    contact_prefs=prefs,
                    destination_list=(Destination.node(1),),
                )
            )
            self.assertRaises(LocationDecodeError, bindings_from_entry, AOR, b"", value)


class OverlayLocationServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.shared: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]] = {}
        self.storage_a = MemoryOverlayStorage(NODE_A, self.clock, self.shared)
        self.storage_b = MemoryOverlayStorage(NODE_B, self.clock, self.shared)
        self.service_a = OverlayLocationService(self.storage_a, self.clock)
        self.service_b = OverlayLocationService(self.storage_b, self.clock)

    def binding(
        self, contact: str, seconds: float, q: float = 1.0, node_id: int | None = NODE_A
    ) -> Binding:
        return Binding(aor=AOR, contact=contact, expires_at=NOW + seconds, q=q, node_id=node_id)

    def test_fake_storage_provides_interface(self) -> None:
        """The in-memory storage satisfies IOverlayStorage."""
        self.assertTrue(verifyObject(IOverlayStorage, self.storage_a))

    def test_register_then_lookup(self) -> None:
        """Contacts registered at two super-nodes are all found, best q first, with their node."""
        self.successResultOf(
            self.service_a.register(AOR, [self.binding("sip:alice@192.0.2.1:5060", 600, 0.5)])
        )
        self.successResultOf(
            self.service_b.register(
                AOR, [self.binding("sip:alice@198.51.100.9:5070;transport=tcp", 300, 0.9, NODE_B)]
            )
        )
        found = self.successResultOf(self.service_a.lookup(AOR))
        self.assertEqual(
            [(b.contact, b.q, b.node_id, b.expires_in(NOW)) for b in found],
            [
                ("sip:alice@198.51.100.9:5070;transport=tcp", 0.9, NODE_B, 300),
                ("sip:alice@192.0.2.1:5060", 0.5, NODE_A, 600),
            ],
        )

    def test_entry_key_and_lifetime(self) -> None:
        """The entry is keyed by this node's Node-ID and lives as long as its longest contact."""
        self.successResultOf(
            self.service_a.register(
                AOR, [self.binding("sip:a@192.0.2.1", 60), self.binding("sip:a@192.0.2.2", 3600)]
            )
        )
        self.assertEqual(
            self.storage_a.calls,
            [("put", RESOURCE, SIP_REGISTRATION_KIND, id_to_bytes(NODE_A), 3600)],
        )

    def test_stored_value_bytes(self) -> None:
        """The stored value is a route registration: our contact list, then this node."""
        self.successResultOf(
            self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", 60, 0.5)])
        )
        [(value, _expiry)] = self.shared[(RESOURCE, SIP_REGISTRATION_KIND)].values()
        prefs = b"<sip:a@192.0.2.1>;q=0.5;expires-at=1764000060"
        destinations = b"\x01\x10" + id_to_bytes(NODE_A)
        body = struct.pack(">H", len(prefs)) + prefs
        body += struct.pack(">H", len(destinations)) + destinations
        self.assertEqual(value, b"\x02" + struct.pack(">H", len(body)) + body)

    def test_expired_contacts_filtered(self) -> None:
        """A contact past its expiry is not returned though the entry still lives."""
        self.successResultOf(
            self.service_a.register(
                AOR, [self.binding("sip:a@192.0.2.1", 60), self.binding("sip:a@192.0.2.2", 3600)]
            )
        )
        self.clock.advance(120)
        found = self.successResultOf(self.service_b.lookup(AOR))
        self.assertEqual([b.contact for b in found], ["sip:a@192.0.2.2"])

    def test_empty_register_removes(self) -> None:
        """Registering no live contacts removes this node's entry."""
        self.successResultOf(self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", 60)]))
        self.successResultOf(self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", -1)]))
        self.assertEqual(self.successResultOf(self.service_a.lookup(AOR)), [])
        self.assertEqual(self.storage_a.calls[1][0], "remove")

    def test_malformed_entry_skipped(self) -> None:
        """A garbage entry from a hostile node is skipped with a debug event, others still found."""
        self.successResultOf(self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", 60)]))
        self.shared[(RESOURCE, SIP_REGISTRATION_KIND)][b"evil"] = (b"\x02\xff\xff", NOW + 999)
        with capturedLogs() as events:
            found = self.successResultOf(self.service_b.lookup(AOR))
        self.assertEqual([b.contact for b in found], ["sip:a@192.0.2.1"])
        self.assertEqual([e["log_level"].name for e in events], ["debug"])

    def test_overlay_failure_propagates(self) -> None:
        """An overlay failure reaches the caller as a failed Deferred."""
        self.storage_a.available = False
        self.failureResultOf(self.service_a.lookup(AOR), StorageUnavailable)
        self.failureResultOf(
            self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", 60)]), StorageUnavailable
        )

    def test_signed_with_the_users_credential(self) -> None:
        """The entry and its removal are signed with the credential for the AOR's user name."""
        signers: list[object] = []
        put, remove = self.storage_a.put_dictionary_entry, self.storage_a.remove_dictionary_entry

        def spy_put(*args: object, signer: object = None) -> object:
            signers.append(signer)
            return put(*args, signer=signer)  # type: ignore[arg-type]

        def spy_remove(*args: object, signer: object = None) -> object:
            signers.append(signer)
            return remove(*args, signer=signer)  # type: ignore[arg-type]

        self.patch(self.storage_a, "put_dictionary_entry", spy_put)
        self.patch(self.storage_a, "remove_dictionary_entry", spy_remove)
        self.successResultOf(self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", 60)]))
        self.successResultOf(self.service_a.register(AOR, []))
        self.assertEqual(signers, [MemoryCredential(RESOURCE)] * 2)

    def test_sips_aor_shares_the_users_entries(self) -> None:
        """sip: and sips: AORs of one user are one user name, so one set of registrations."""
        self.successResultOf(self.service_a.register(AOR, [self.binding("sip:a@192.0.2.1", 60)]))
        found = self.successResultOf(self.service_b.lookup("sips:alice@example.org"))
        self.assertEqual([b.contact for b in found], ["sip:a@192.0.2.1"])

    def test_aor_without_user_has_no_registrations(self) -> None:
        """An AOR with no user part names no user, so nothing is fetched and nothing found."""
        self.assertEqual(self.successResultOf(self.service_a.lookup("sip:example.org")), [])
        self.assertEqual(self.storage_a.calls, [])

    def test_missing_credential_is_refused_and_logged(self) -> None:
        """Without alice's credential nothing is stored; the operator hears how to enrol her, once."""
        storage = MemoryOverlayStorage(NODE_A, self.clock, self.shared, users={"bob@example.org"})
        service = OverlayLocationService(
            storage, self.clock, enrol_hint="p2psip enrol --user {user} --data-dir /srv/node"
        )
        with capturedLogs() as events:
            for _ in range(3):
                failure = self.failureResultOf(
                    service.register(AOR, [self.binding("sip:a@192.0.2.1", 60)]), NoUserCredential
                )
        self.assertIn("p2psip enrol --user sip:alice@example.org", failure.getErrorMessage())
        self.assertEqual(storage.calls, [])
        self.assertEqual([e["log_level"].name for e in events], ["warn"])
        self.assertIn("--data-dir /srv/node", events[0]["fix"])

    def test_contact_that_cannot_be_stored(self) -> None:
        """A contact with angle brackets or spaces is refused before anything is stored."""
        self.assertRaises(ValueError, self.service_a.register, AOR, [self.binding("sip:a@b>", 60)])
        self.assertEqual(self.storage_a.calls, [])


class RealOverlayTests(SynchronousTestCase):
    """The location service on a ring of real overlay nodes (in-memory links, fake clock)."""

    def setUp(self) -> None:
        from tests.overlay.ringsim import RingSimulation

        self.sim = RingSimulation(seed=11)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(4):
            self.sim.join()
        self.sim.run(30)

    def test_register_on_one_peer_lookup_on_another(self) -> None:
        """Contacts stored through two super-nodes are found, with their nodes, from a third."""
        nodes = self.sim.live()
        now = self.sim.clock.seconds()
        first = OverlayLocationService(nodes[0], self.sim.clock)
        second = OverlayLocationService(nodes[1], self.sim.clock)
        self.sim.wait(
            first.register(
                AOR, [Binding(AOR, "sip:alice@192.0.2.1", now + 600, 0.4, nodes[0].node_id)]
            )
        )
        self.sim.wait(
            second.register(
                AOR, [Binding(AOR, "sip:alice@192.0.2.2", now + 600, 0.8, nodes[1].node_id)]
            )
        )
        found = self.sim.wait(OverlayLocationService(nodes[3], self.sim.clock).lookup(AOR))
        self.assertEqual(
            [(b.contact, b.node_id) for b in found],
            [("sip:alice@192.0.2.2", nodes[1].node_id), ("sip:alice@192.0.2.1", nodes[0].node_id)],
        )

    def test_removal_and_expiry(self) -> None:
        """An emptied entry disappears at once; the other expires with its lifetime."""
        nodes = self.sim.live()
        now = self.sim.clock.seconds()
        first = OverlayLocationService(nodes[0], self.sim.clock)
        second = OverlayLocationService(nodes[1], self.sim.clock)
        self.sim.wait(
            first.register(
                AOR, [Binding(AOR, "sip:alice@192.0.2.1", now + 60, 1.0, nodes[0].node_id)]
            )
        )
        self.sim.wait(
            second.register(
                AOR, [Binding(AOR, "sip:alice@192.0.2.2", now + 600, 1.0, nodes[1].node_id)]
            )
        )
        self.sim.wait(second.register(AOR, []))
        reader = OverlayLocationService(nodes[2], self.sim.clock)
        self.assertEqual(
            [b.contact for b in self.sim.wait(reader.lookup(AOR))], ["sip:alice@192.0.2.1"]
        )
        self.sim.run(61)
        self.assertEqual(self.sim.wait(reader.lookup(AOR)), [])

    def test_serving_node_resolves(self) -> None:
        """The proxy's next hop, the serving node's SIP address, is found with AppAttach."""
        nodes = self.sim.live()
        nodes[1].set_application_address(5060, "198.51.100.7", 5060)
        address = self.sim.wait(nodes[3].resolve_application(nodes[1].node_id, 5060))
        self.assertEqual(tuple(address), ("198.51.100.7", 5060))
