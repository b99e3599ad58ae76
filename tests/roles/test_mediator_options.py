"""Tests for the mediator options of the ring roles (--mediator and its secret)."""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles import bootstrap, peer

BOOTSTRAP = ["--bootstrap", "tcp:198.51.100.10:6084"]


class MediatorOptionTests(SynchronousTestCase):
    def parse(self, *args: str) -> peer.Options:
        options = peer.Options()
        options.parseOptions([*BOOTSTRAP, *args])
        return options

    def test_no_mediator_by_default(self) -> None:
        """Without --mediator there is no secret to give and the direct timeout keeps its default."""
        options = self.parse()
        self.assertIsNone(options["mediator"])
        self.assertIsNone(options.config.mediator)
        self.assertEqual(options["direct-connect-timeout"], 2.0)

    def test_mediator_needs_a_secret(self) -> None:
        """--mediator without a secret stops the role, naming both secret options."""
        error = self.assertRaises(
            usage.UsageError, self.parse, "--mediator", "tcp:198.51.100.10:3479"
        )
        self.assertIn("--mediator-secret or --mediator-secret-file", str(error))

    def test_inline_secret(self) -> None:
        """--mediator-secret is used as the HMAC key."""
        options = self.parse("--mediator", "tcp:198.51.100.10:3479", "--mediator-secret", "s3cret")
        assert options.config.mediator is not None
        self.assertEqual(options.config.mediator.secret, b"s3cret")

    def test_secret_file_wins(self) -> None:
        """The first line of --mediator-secret-file is the secret, and it wins over --mediator-secret."""
        path = Path(self.mktemp())
        path.write_text("from-file\nignored\n", encoding="utf-8")
        options = self.parse(
            "--mediator",
            "tcp:198.51.100.10:3479",
            "--mediator-secret",
            "inline",
            "--mediator-secret-file",
            str(path),
        )
        assert options.config.mediator is not None
        self.assertEqual(options.config.mediator.secret, b"from-file")

    def test_unreadable_secret_file(self) -> None:
        """A missing secret file stops the role, naming the option and the path."""
        path = self.mktemp()
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--mediator",
            "tcp:198.51.100.10:3479",
            "--mediator-secret-file",
            path,
        )
        self.assertIn(f"--mediator-secret-file {path}", str(error))

    def test_empty_secret_file(self) -> None:
        """An empty secret file is refused rather than used as an empty key."""
        path = Path(self.mktemp())
        path.write_text("\n", encoding="utf-8")
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--mediator",
            "tcp:198.51.100.10:3479",
            "--mediator-secret-file",
            str(path),
        )
        self.assertIn("is empty", str(error))

    def test_bad_mediator_endpoint(self) -> None:
        """A mediator address that is no client endpoint string stops the role at once."""
        self.assertRaises(
            usage.UsageError, self.parse, "--mediator", "tcp:nohost", "--mediator-secret", "s"
        )

    def test_direct_timeout_positive(self) -> None:
        """The direct-connect timeout must be a positive number of seconds."""
        self.assertRaises(usage.UsageError, self.parse, "--direct-connect-timeout", "0")
        self.assertEqual(
            self.parse("--direct-connect-timeout", "0.5")["direct-connect-timeout"], 0.5
        )

    def test_bootstrap_role_takes_mediator(self) -> None:
        """The bootstrap role accepts the same mediator options."""
        options = bootstrap.Options()
        options.parseOptions(["--mediator", "tcp:198.51.100.10:3479", "--mediator-secret", "s"])
        assert options.config.mediator is not None
        self.assertEqual(options.config.mediator.secret, b"s")
        self.assertEqual(options.config.mediator.endpoint, "tcp:198.51.100.10:3479")


class MediatorWiringTests(SynchronousTestCase):
    def test_role_wires_the_mediator_client(self) -> None:
        """The built role's mediator client takes peers' links for the node and reports its status."""
        from p2psip.overlay.identity import NodeIdentity
        from p2psip.roles.super_node import RingState, make_ring_role
        from p2psip.testing import MemoryUDPReactor
        from p2psip.util.ids import id_hex

        options = peer.Options()
        options.parseOptions(
            [
                *BOOTSTRAP,
                "--data-dir",
                self.mktemp(),
                "--mediator",
                "tcp:198.51.100.10:3479",
                "--mediator-secret",
                "s",
            ]
        )
        identity = NodeIdentity.from_secret(7)
        role = make_ring_role(
            options.config, MemoryUDPReactor(), RingState(identity), freeze_gc=False
        )
        assert role.traversal is not None and role.overlay is not None
        client = role.traversal.client
        mediated = role.overlay.mediated
        assert mediated is not None
        self.assertEqual(client.accept, mediated.incoming.accept)
        self.assertEqual(client.on_incoming, mediated.incoming.made)
        self.assertIsNotNone(mediated.incoming.accept("ab" * 16))
        self.assertEqual(
            role.status()["mediator"],
            {
                "endpoint": "tcp:198.51.100.10:3479",
                "registered": False,
                "id": id_hex(identity.node_id),
                "observed": None,
            },
        )
