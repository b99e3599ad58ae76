"""Tests for client authentication: the hello MAC, secrets and the secrets file."""

from __future__ import annotations

import hashlib
import hmac

from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import control_auth


class SecretsFileTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """ID SECRET lines with comments parse to a dict."""
        self.assertEqual(
            control_auth.parse_secrets_file("# users\nalice a1\n\nbob b2 # note\n"),
            {"alice": b"a1", "bob": b"b2"},
        )

    def test_bad_line(self) -> None:
        """A malformed line is reported with its number."""
        error = self.assertRaises(ValueError, control_auth.parse_secrets_file, "alice a1\nbob\n")
        self.assertIn("line 2", str(error))


class MacTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """The MAC is HMAC-SHA256 over label, nonce and ID joined by NUL, as the protocol document says."""
        expected = hmac.new(
            b"s3cret", b"p2psip-stunt-1\x00" + b"00ff" + b"\x00alice", hashlib.sha256
        ).hexdigest()
        self.assertEqual(control_auth.compute_mac(b"s3cret", "00ff", "alice"), expected)

    def test_bound_to_nonce_and_id(self) -> None:
        """Another nonce or another ID gives another MAC."""
        mac = control_auth.compute_mac(b"s3cret", "00ff", "alice")
        self.assertNotEqual(mac, control_auth.compute_mac(b"s3cret", "00fe", "alice"))
        self.assertNotEqual(mac, control_auth.compute_mac(b"s3cret", "00ff", "alicf"))


class SecretsTests(SynchronousTestCase):
    def test_per_id_wins(self) -> None:
        """A per-ID secret wins over the derived one; others get theirs derived, or none."""
        secrets = control_auth.Secrets(shared=b"shared", per_id={"carol": b"own"})
        self.assertEqual(
            (secrets.secret_for("carol"), secrets.secret_for("bob")),
            (b"own", control_auth.derive_client_secret(b"shared", "bob")),
        )
        self.assertIsNone(control_auth.Secrets(per_id={"carol": b"own"}).secret_for("bob"))

    def test_derived_secrets(self) -> None:
        """Each ID's secret is HMAC-SHA256(shared, label NUL id) in hex: its own, never the shared one."""
        expected = hmac.new(
            b"shared", b"p2psip-client-secret-1\x00alice", hashlib.sha256
        ).hexdigest()
        alice = control_auth.derive_client_secret(b"shared", "alice")
        self.assertEqual(alice, expected.encode("ascii"))
        self.assertNotEqual(alice, control_auth.derive_client_secret(b"shared", "bob"))
        self.assertNotEqual(alice, control_auth.derive_client_secret(b"other", "alice"))
        self.assertNotIn(b"shared", control_auth.Secrets(shared=b"shared").secret_for("x") or b"")

    def test_client_ids(self) -> None:
        """IDs are 1 to 128 printable characters without spaces."""
        good = ["alice", "a" * control_auth.MAX_ID_CHARS, "bob@example.org"]
        bad = ["", "a" * (control_auth.MAX_ID_CHARS + 1), "al ice", "bob\n", "\x00"]
        self.assertEqual([control_auth.valid_client_id(i) for i in good], [True] * len(good))
        self.assertEqual([control_auth.valid_client_id(i) for i in bad], [False] * len(bad))
