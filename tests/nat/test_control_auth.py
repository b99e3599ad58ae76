"""Tests for client authentication: the hello MAC, secrets and the secrets file."""

from __future__ import annotations

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
