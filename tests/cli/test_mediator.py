"""``p2psip mediator secret``: a client's own secret, read from the mediator's configuration."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.cli import main
from p2psip.nat.control_auth import derive_client_secret

NODE_ID = "0123456789abcdef0123456789abcdef"


class MediatorSecretTests(SynchronousTestCase):
    def run_command(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["mediator", "secret", *argv])
        return status, out.getvalue(), err.getvalue()

    def config(self, text: str) -> str:
        path = Path(self.mktemp())
        path.write_text("[mediator]\n" + text, encoding="utf-8")
        return str(path)

    def test_derived_from_the_shared_secret(self) -> None:
        """With a shared secret, the ID's derived secret is printed, alone on its line."""
        status, out, _ = self.run_command("--config", self.config("secret = master\n"), NODE_ID)
        self.assertEqual(status, 0)
        self.assertEqual(out, derive_client_secret(b"master", NODE_ID).decode() + "\n")

    def test_per_id_secret_from_the_data_dir(self) -> None:
        """An ID listed in the data dir's secrets file gets that line's secret."""
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        (data_dir / "secrets").write_text(f"{NODE_ID} own-secret\n", encoding="utf-8")
        config = self.config("secret = master\n")
        status, out, _ = self.run_command(
            "--config", config, "--mediator-data-dir", str(data_dir), NODE_ID
        )
        self.assertEqual((status, out), (0, "own-secret\n"))
        status, out, _ = self.run_command(
            "--config", config, "--mediator-data-dir", str(data_dir), "other"
        )
        self.assertEqual(out, derive_client_secret(b"master", "other").decode() + "\n")

    def test_no_secret_for_the_id(self) -> None:
        """Without a shared secret an ID missing from the secrets file has none: exit 1."""
        secrets = Path(self.mktemp())
        secrets.write_text("alice a1\n", encoding="utf-8")
        status, out, err = self.run_command(
            "--config", self.config(f"secrets-file = {secrets}\n"), "bob"
        )
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no secret for bob", err)

    def test_unusable_configuration(self) -> None:
        """A configuration without any secret is refused with the role's own message."""
        status, _, err = self.run_command("--config", self.config(""), NODE_ID)
        self.assertEqual(status, 1)
        self.assertIn("--secret", err)

    def test_bad_client_id(self) -> None:
        """An ID the mediator would refuse is refused here too."""
        status, _, err = self.run_command("--config", self.config("secret = x\n"), "has space")
        self.assertEqual(status, 1)
        self.assertIn("not a client ID", err)
