"""Tests for Kind definitions and access control policies."""

from __future__ import annotations

import hashlib

from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.bodies import DataModel, DataValue, DictionaryEntry
from p2psip.overlay.kinds import (
    DATA,
    DEFAULT_KINDS,
    SIP_REGISTRATION,
    AccessDenied,
    AccessPolicy,
    Kind,
    check_access,
    data_models,
    node_match_resource,
    node_multiple_resource,
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


class BuiltInKindTests(SynchronousTestCase):
    def test_sip_registration(self) -> None:
        """SIP-REGISTRATION is Kind 1 with the dictionary model (RFC 7904)."""
        self.assertEqual(
            (SIP_REGISTRATION.kind_id, SIP_REGISTRATION.data_model),
            (1, DataModel.DICTIONARY),
        )
        self.assertIs(DEFAULT_KINDS[1], SIP_REGISTRATION)

    def test_data_kind_is_private_use(self) -> None:
        """DATA is a single-value Kind with a private-use Kind-ID."""
        self.assertEqual(DATA.data_model, DataModel.SINGLE_VALUE)
        self.assertGreaterEqual(DATA.kind_id, 0xF0000000)
        self.assertIs(DEFAULT_KINDS[DATA.kind_id], DATA)

    def test_data_models_for_codec(self) -> None:
        """data_models maps Kind-IDs to data models, from a mapping or a list."""
        expected = {1: DataModel.DICTIONARY, DATA.kind_id: DataModel.SINGLE_VALUE}
        self.assertEqual(data_models(DEFAULT_KINDS), expected)
        self.assertEqual(data_models([SIP_REGISTRATION, DATA]), expected)

    def test_policy_names_are_the_rfc_names(self) -> None:
        """Policies carry the names RFC 6940 s7.3 gives them."""
        self.assertEqual(
            {p.value for p in AccessPolicy},
            {"USER-MATCH", "NODE-MATCH", "USER-NODE-MATCH", "NODE-MULTIPLE", "ANY-SIGNER"},
        )


class AccessPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node_id = random_node_id()

    def test_any_signer(self) -> None:
        """ANY-SIGNER accepts any signer at any resource."""
        check_access(DATA, 12345, VALUE, self.node_id)
        entry = DictionaryEntry(key=b"k", value=VALUE)
        check_access(SIP_REGISTRATION, 54321, entry, self.node_id)

    def test_node_match_resource_is_sha1_of_node_id(self) -> None:
        """NODE-MATCH's resource is the truncated SHA-1 of the 16-byte Node-ID."""
        digest = hashlib.sha1(id_to_bytes(self.node_id)).digest()[:16]
        self.assertEqual(node_match_resource(self.node_id), int.from_bytes(digest, "big"))

    def test_node_match_accepts_own_resource(self) -> None:
        """NODE-MATCH lets a node write at the hash of its Node-ID."""
        check_access(NODE_MATCH_KIND, node_match_resource(self.node_id), VALUE, self.node_id)

    def test_node_match_refuses_other_resource(self) -> None:
        """NODE-MATCH refuses a node writing at another node's resource."""
        other = node_match_resource(random_node_id())
        error = self.assertRaises(
            AccessDenied, check_access, NODE_MATCH_KIND, other, VALUE, self.node_id
        )
        self.assertIn("NODE-MATCH", str(error))

    def test_node_multiple(self) -> None:
        """NODE-MULTIPLE accepts indices 1..max and refuses the next one."""
        kind = evolve(NODE_MATCH_KIND, access=AccessPolicy.NODE_MULTIPLE, node_multiple_max=3)
        for index in (1, 2, 3):
            resource = node_multiple_resource(self.node_id, index)
            check_access(kind, resource, VALUE, self.node_id)
        for index in (0, 4):
            resource = node_multiple_resource(self.node_id, index)
            self.assertRaises(AccessDenied, check_access, kind, resource, VALUE, self.node_id)

    def test_user_policies_need_enrolment(self) -> None:
        """USER-MATCH and USER-NODE-MATCH refuse everything until enrolment exists."""
        for policy in (AccessPolicy.USER_MATCH, AccessPolicy.USER_NODE_MATCH):
            kind = evolve(NODE_MATCH_KIND, access=policy)
            error = self.assertRaises(
                AccessDenied,
                check_access,
                kind,
                node_match_resource(self.node_id),
                VALUE,
                self.node_id,
            )
            self.assertIn("enrolment", str(error))
