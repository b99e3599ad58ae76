"""Tests for Kind definitions and access control policies."""

from __future__ import annotations

import hashlib

from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.bodies import ArrayEntry, DataModel, DataValue, DictionaryEntry
from p2psip.overlay.certificates import CertifiedIdentity
from p2psip.overlay.kinds import (
    MEDIA_RELAY,
    CERTIFICATE_BY_NODE,
    CERTIFICATE_BY_USER,
    DATA,
    DEFAULT_KINDS,
    SIP_REGISTRATION,
    AccessDenied,
    AccessPolicy,
    Kind,
    certificate_kind_for,
    check_access,
    data_models,
    node_match_resource,
    node_multiple_resource,
    user_match_resource,
)
from p2psip.util.ids import id_to_bytes, random_node_id

VALUE = DataValue(exists=True, value=b"v")

NODE_MATCH_KIND = Kind(
    kind_id=0xF0000010,
    name="NODE-THING",
    data_model=DataModel.SINGLE_VALUE,
    max_count=1,
    max_size=100,
    access=AccessPolicy.NODE_MATCH,
)


ALICE = "alice@example.com"


def identity(node_id: int, user_name: str | None = None) -> CertifiedIdentity:
    return CertifiedIdentity((node_id,), user_name)


class BuiltInKindTests(SynchronousTestCase):
    def test_sip_registration(self) -> None:
        """SIP-REGISTRATION is Kind 1, a dictionary under USER-NODE-MATCH (RFC 7904 s3)."""
        self.assertEqual(
            (SIP_REGISTRATION.kind_id, SIP_REGISTRATION.data_model, SIP_REGISTRATION.access),
            (1, DataModel.DICTIONARY, AccessPolicy.USER_NODE_MATCH),
        )
        self.assertIs(DEFAULT_KINDS[1], SIP_REGISTRATION)

    def test_certificate_kinds(self) -> None:
        """CERTIFICATE_BY_NODE (3) and CERTIFICATE_BY_USER (16) are arrays (RFC 6940 s8)."""
        self.assertEqual(
            [
                (k.kind_id, k.data_model, k.access)
                for k in (CERTIFICATE_BY_NODE, CERTIFICATE_BY_USER)
            ],
            [
                (3, DataModel.ARRAY, AccessPolicy.NODE_MATCH),
                (16, DataModel.ARRAY, AccessPolicy.USER_MATCH),
            ],
        )
        self.assertIs(DEFAULT_KINDS[3], CERTIFICATE_BY_NODE)
        self.assertIs(DEFAULT_KINDS[16], CERTIFICATE_BY_USER)

    def test_data_kind_is_private_use(self) -> None:
        """DATA is a single-value Kind with a private-use Kind-ID, owned by its first signer."""
        self.assertEqual(DATA.data_model, DataModel.SINGLE_VALUE)
        self.assertEqual(DATA.access, AccessPolicy.FIRST_SIGNER)
        self.assertGreaterEqual(DATA.kind_id, 0xF0000000)
        self.assertIs(DEFAULT_KINDS[DATA.kind_id], DATA)

    def test_every_kind_has_bounded_lifetimes_and_quotas(self) -> None:
        """No Kind lets a value live more than a week, and every Kind has a per-signer quota."""
        for kind in DEFAULT_KINDS.values():
            self.assertLessEqual(kind.max_lifetime_seconds, 7 * 24 * 3600, kind.name)
            self.assertGreater(kind.max_per_signer, 0, kind.name)
        self.assertEqual(SIP_REGISTRATION.max_lifetime_seconds, 24 * 3600)

    def test_data_models_for_codec(self) -> None:
        """data_models maps Kind-IDs to data models, from a mapping or a list."""
        expected = {
            1: DataModel.DICTIONARY,
            3: DataModel.ARRAY,
            16: DataModel.ARRAY,
            DATA.kind_id: DataModel.SINGLE_VALUE,
            MEDIA_RELAY.kind_id: DataModel.DICTIONARY,
        }
        self.assertEqual(data_models(DEFAULT_KINDS), expected)
        self.assertEqual(
            data_models(
                [SIP_REGISTRATION, CERTIFICATE_BY_NODE, CERTIFICATE_BY_USER, DATA, MEDIA_RELAY]
            ),
            expected,
        )

    def test_policy_names_are_the_rfc_names(self) -> None:
        """Policies carry the names RFC 6940 s7.3 gives them, plus this project's two."""
        self.assertEqual(
            {p.value for p in AccessPolicy},
            {
                "USER-MATCH",
                "NODE-MATCH",
                "USER-NODE-MATCH",
                "NODE-MULTIPLE",
                "NODE-KEY-MATCH",
                "FIRST-SIGNER",
            },
        )

    def test_certificates_are_kept_where_the_policy_points(self) -> None:
        """USER-* Kinds find their signers' certificates by user, NODE-MATCH by node."""
        self.assertIs(certificate_kind_for(SIP_REGISTRATION), CERTIFICATE_BY_USER)
        self.assertIs(certificate_kind_for(NODE_MATCH_KIND), CERTIFICATE_BY_NODE)
        self.assertIsNone(certificate_kind_for(DATA))


class AccessPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node_id = random_node_id()
        self.signer = identity(self.node_id)

    def test_node_match_resource_is_sha1_of_node_id(self) -> None:
        """NODE-MATCH's resource is the truncated SHA-1 of the 16-byte Node-ID."""
        digest = hashlib.sha1(id_to_bytes(self.node_id)).digest()[:16]
        self.assertEqual(node_match_resource(self.node_id), int.from_bytes(digest, "big"))

    def test_user_match_resource_is_sha1_of_the_user_name(self) -> None:
        """USER-MATCH's resource is the overlay hash of the user name's UTF-8 string."""
        digest = hashlib.sha1(ALICE.encode("utf-8")).digest()[:16]
        self.assertEqual(user_match_resource(ALICE), int.from_bytes(digest, "big"))

    def test_node_match_accepts_own_resource(self) -> None:
        """NODE-MATCH lets a node write at the hash of its Node-ID (any of its certificate's)."""
        check_access(NODE_MATCH_KIND, node_match_resource(self.node_id), VALUE, self.signer)
        second = CertifiedIdentity((random_node_id(), self.node_id), None)
        check_access(NODE_MATCH_KIND, node_match_resource(self.node_id), VALUE, second)

    def test_node_match_refuses_other_resource(self) -> None:
        """NODE-MATCH refuses a node writing at another node's resource."""
        other = node_match_resource(random_node_id())
        error = self.assertRaises(
            AccessDenied, check_access, NODE_MATCH_KIND, other, VALUE, self.signer
        )
        self.assertIn("NODE-MATCH", str(error))

    def test_node_multiple(self) -> None:
        """NODE-MULTIPLE accepts indices 1..max and refuses the next one."""
        kind = evolve(NODE_MATCH_KIND, access=AccessPolicy.NODE_MULTIPLE, node_multiple_max=3)
        for index in (1, 2, 3):
            resource = node_multiple_resource(self.node_id, index)
            check_access(kind, resource, VALUE, self.signer)
        for index in (0, 4):
            resource = node_multiple_resource(self.node_id, index)
            self.assertRaises(AccessDenied, check_access, kind, resource, VALUE, self.signer)

    def test_user_match(self) -> None:
        """USER-MATCH takes the user's own resource and refuses another's, or no user at all."""
        alice = identity(self.node_id, ALICE)
        entry = ArrayEntry(0, VALUE)
        check_access(CERTIFICATE_BY_USER, user_match_resource(ALICE), entry, alice)
        bob_resource = user_match_resource("bob@example.com")
        error = self.assertRaises(
            AccessDenied, check_access, CERTIFICATE_BY_USER, bob_resource, entry, alice
        )
        self.assertIn("user name", str(error))
        error = self.assertRaises(
            AccessDenied,
            check_access,
            CERTIFICATE_BY_USER,
            user_match_resource(ALICE),
            entry,
            self.signer,
        )
        self.assertIn("names no user", str(error))

    def test_user_node_match(self) -> None:
        """USER-NODE-MATCH needs the user's resource and the signer's Node-ID as the key."""
        alice = identity(self.node_id, ALICE)
        resource = user_match_resource(ALICE)
        own = DictionaryEntry(id_to_bytes(self.node_id), VALUE)
        check_access(SIP_REGISTRATION, resource, own, alice)
        foreign_key = DictionaryEntry(id_to_bytes(random_node_id()), VALUE)
        error = self.assertRaises(
            AccessDenied, check_access, SIP_REGISTRATION, resource, foreign_key, alice
        )
        self.assertIn("dictionary key", str(error))
        mallory = identity(random_node_id(), "mallory@example.com")
        mallory_entry = DictionaryEntry(id_to_bytes(mallory.node_id), VALUE)
        self.assertRaises(
            AccessDenied, check_access, SIP_REGISTRATION, resource, mallory_entry, mallory
        )

    def test_node_key_match(self) -> None:
        """NODE-KEY-MATCH: any resource, but only the signer's own Node-ID as the key."""
        relay = identity(self.node_id)
        own = DictionaryEntry(id_to_bytes(self.node_id), VALUE)
        check_access(MEDIA_RELAY, 12345, own, relay)
        mallory = identity(random_node_id())
        self.assertRaises(AccessDenied, check_access, MEDIA_RELAY, 12345, own, mallory)
        tombstone = DictionaryEntry(id_to_bytes(self.node_id), DataValue(False, b""))
        self.assertRaises(AccessDenied, check_access, MEDIA_RELAY, 12345, tombstone, mallory)
        self.assertRaises(AccessDenied, check_access, MEDIA_RELAY, 12345, VALUE, relay)

    def test_deletions_are_checked_like_values(self) -> None:
        """A tombstone (exists=False) passes the same policy: nobody else may delete."""
        mallory = identity(random_node_id(), "mallory@example.com")
        tombstone = DictionaryEntry(id_to_bytes(mallory.node_id), DataValue(False, b""))
        self.assertRaises(
            AccessDenied,
            check_access,
            SIP_REGISTRATION,
            user_match_resource(ALICE),
            tombstone,
            mallory,
        )

    def test_user_node_match_needs_a_dictionary(self) -> None:
        """USER-NODE-MATCH on a Kind that is not a dictionary refuses every value."""
        kind = evolve(NODE_MATCH_KIND, access=AccessPolicy.USER_NODE_MATCH)
        alice = identity(self.node_id, ALICE)
        self.assertRaises(
            AccessDenied, check_access, kind, user_match_resource(ALICE), VALUE, alice
        )

    def test_first_signer(self) -> None:
        """FIRST-SIGNER: a free slot takes anyone; a held one only its holder's Node-ID."""
        mallory = identity(random_node_id())
        check_access(DATA, 12345, VALUE, mallory)
        check_access(DATA, 12345, VALUE, self.signer, holder=self.node_id)
        error = self.assertRaises(
            AccessDenied, check_access, DATA, 12345, VALUE, mallory, self.node_id
        )
        self.assertIn("FIRST-SIGNER", str(error))
