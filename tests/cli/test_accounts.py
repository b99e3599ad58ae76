"""``p2psip accounts add|remove|list`` and ``p2psip ca fingerprint``, run in process."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.cli import main
from p2psip.enrolment.accounts import AccountsFile, Grant
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.fingerprints import root_fingerprint
from p2psip.testing import TEST_CERTIFICATE_EPOCH


class AccountsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / "enrolment-accounts"
        self.password = self.directory / "password"
        self.password.write_text("s3cret\n")

    def run_command(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdin", io.StringIO(stdin))
        status = main(list(argv))
        return status, out.getvalue(), err.getvalue()

    def test_add_list_remove(self) -> None:
        """An added account checks with its password, lists with its grants and can be removed."""
        status, out, _ = self.run_command(
            "accounts", "add", "--file", str(self.path), "--peer", "--user",
            "--password-file", str(self.password), "ops@example.org",
        )  # fmt: skip
        self.assertEqual(
            (status, out), (0, f"added ops@example.org (may get: peer and user) in {self.path}\n")
        )
        account = AccountsFile.load(self.path).check("ops@example.org", "s3cret")
        assert account is not None
        self.assertEqual(account.grants, frozenset({Grant.PEER, Grant.USER}))
        status, out, _ = self.run_command("accounts", "list", "--file", str(self.path))
        self.assertEqual(out, "ops@example.org\tpeer,user\n")
        status, out, _ = self.run_command(
            "accounts", "remove", "--file", str(self.path), "ops@example.org"
        )
        self.assertEqual(status, 0)
        status, _, err = self.run_command(
            "accounts", "remove", "--file", str(self.path), "ops@example.org"
        )
        self.assertEqual(status, 1)
        self.assertIn("no account ops@example.org", err)

    def test_password_from_standard_input(self) -> None:
        """Without a terminal or a password file the password is the first line of standard input."""
        status, _, _ = self.run_command(
            "accounts",
            "add",
            "--file",
            str(self.path),
            "--user",
            "alice@example.org",
            stdin="wonderland\n",
        )
        self.assertEqual(status, 0)
        self.assertIsNotNone(AccountsFile.load(self.path).check("alice@example.org", "wonderland"))

    def test_default_file_in_data_dir(self) -> None:
        """Without --file the account goes to enrolment-accounts in p2psip's --data-dir."""
        status, _, _ = self.run_command(
            "--data-dir", str(self.directory), "accounts", "add", "--peer",
            "--password-file", str(self.password), "ops@example.org",
        )  # fmt: skip
        self.assertEqual(status, 0)
        self.assertEqual([a.name for a in AccountsFile.load(self.path)], ["ops@example.org"])

    def test_mistakes(self) -> None:
        """No grant, a bad name or an empty password are refused with the reason."""
        cases = [
            (["--password-file", str(self.password), "ops@example.org"], "--peer, --user or both"),
            (["--peer", "--password-file", str(self.password), "ops"], "user@domain"),
            (["--peer", "ops@example.org"], "must not be empty"),
        ]
        for extra, reason in cases:
            status, _, err = self.run_command("accounts", "add", "--file", str(self.path), *extra)
            self.assertEqual(status, 1)
            self.assertIn(reason, err)


class FingerprintCommandTests(SynchronousTestCase):
    def test_prints_the_fingerprint(self) -> None:
        """`p2psip ca fingerprint` prints the sha256 of the CA in a bootstrap's data dir."""
        directory = Path(self.mktemp())
        directory.mkdir()
        authority, _ = OverlayAuthority.load_or_create(
            directory, "example.org", TEST_CERTIFICATE_EPOCH
        )
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["ca", "fingerprint", "--data-dir", str(directory)]), 0)
        self.assertEqual(out.getvalue(), root_fingerprint(authority.root_der) + "\n")
        self.assertEqual(
            main(["ca", "fingerprint", "--ca-cert", str(directory / "ca-cert.pem")]), 0
        )
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["ca", "fingerprint", "--data-dir", str(directory / "none")]), 1)
        self.assertIn("cannot read", err.getvalue())
