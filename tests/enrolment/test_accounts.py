"""The enrolment accounts file: scrypt hashes, grants, atomic rewrites and re-reading."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.accounts import (
    AccountsFile,
    AccountsFileError,
    Grant,
    PasswordHash,
    parse_grants,
)


class AccountsFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = directory / "enrolment-accounts"

    def test_round_trip(self) -> None:
        """A saved account reloads with its grants, and only its password matches."""
        accounts = AccountsFile.load(self.path, missing_ok=True)
        accounts.set_account("ops@example.org", "s3cret", [Grant.PEER])
        accounts.set_account("alice@example.org", "wonderland", [Grant.USER, Grant.PEER])
        accounts.save()
        loaded = AccountsFile.load(self.path)
        self.assertEqual([a.name for a in loaded], ["ops@example.org", "alice@example.org"])
        alice = loaded.check("alice@example.org", "wonderland")
        assert alice is not None
        self.assertEqual(alice.grants, frozenset({Grant.USER, Grant.PEER}))
        self.assertIsNone(loaded.check("alice@example.org", "s3cret"))
        self.assertIsNone(loaded.check("nobody@example.org", "wonderland"))

    def test_file_holds_no_password(self) -> None:
        """The file is mode 0600 and holds a salted scrypt hash, never the password."""
        accounts = AccountsFile.load(self.path, missing_ok=True)
        accounts.set_account("ops@example.org", "s3cret", [Grant.PEER])
        accounts.set_account("bob@example.org", "s3cret", [Grant.PEER])
        accounts.save()
        text = self.path.read_text()
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertNotIn("s3cret", text)
        ops, bob = (line.split()[2] for line in text.splitlines()[1:])
        self.assertTrue(ops.startswith("scrypt$16384$8$1$"))
        self.assertNotEqual(ops, bob)  # a salt of its own each

    def test_change_and_remove(self) -> None:
        """Adding again changes password and grants in place; remove forgets the account."""
        accounts = AccountsFile.load(self.path, missing_ok=True)
        accounts.set_account("ops@example.org", "one", [Grant.PEER])
        accounts.set_account("ops@example.org", "two", [Grant.USER])
        self.assertEqual(len(accounts), 1)
        changed = accounts.check("ops@example.org", "two")
        assert changed is not None
        self.assertEqual(changed.grants, frozenset({Grant.USER}))
        self.assertTrue(accounts.remove("ops@example.org"))
        self.assertFalse(accounts.remove("ops@example.org"))
        accounts.save()
        self.assertEqual(list(AccountsFile.load(self.path)), [])

    def test_bad_edits(self) -> None:
        """Names must be user@domain, passwords non-empty, and some grant given."""
        accounts = AccountsFile.load(self.path, missing_ok=True)
        for name, password, grants in (
            ("ops", "x", [Grant.PEER]),
            ("../x@example.org", "x", [Grant.PEER]),
            ("ops@example.org", "", [Grant.PEER]),
            ("ops@example.org", "x", []),
        ):
            self.assertRaises(AccountsFileError, accounts.set_account, name, password, grants)

    def test_refresh(self) -> None:
        """A running server sees an account added by another writer; a broken file keeps the old ones."""
        server = AccountsFile.load(self.path, missing_ok=True)
        self.assertFalse(server.refresh())
        editor = AccountsFile.load(self.path, missing_ok=True)
        editor.set_account("ops@example.org", "pw", [Grant.PEER])
        editor.save()
        self.assertTrue(server.refresh())
        self.assertIsNotNone(server.check("ops@example.org", "pw"))
        self.path.write_text("ops@example.org peer not-a-hash\n")
        error = self.assertRaises(AccountsFileError, server.refresh)
        self.assertIn(f"{self.path}:1", str(error))
        self.assertIsNotNone(server.check("ops@example.org", "pw"))

    def test_malformed_lines(self) -> None:
        """Each malformed line is an error naming the file and line."""
        good = PasswordHash.make("pw").encode()
        for text in (
            "ops@example.org peer\n",
            f"ops@example.org admin {good}\n",
            f"ops peer {good}\n",
            f"ops@example.org peer {good}\nops@example.org user {good}\n",
            "ops@example.org peer scrypt$3$8$1$AAAAAAAAAAA=$AAAA\n",
            f"ops@example.org peer {good.replace('16384', str(2**24))}\n",
        ):
            self.path.write_text(text)
            error = self.assertRaises(AccountsFileError, AccountsFile.load, self.path)
            self.assertIn(str(self.path), str(error))

    def test_missing_file(self) -> None:
        """A missing file is an error naming the command that makes it, unless missing is fine."""
        error = self.assertRaises(AccountsFileError, AccountsFile.load, self.path)
        self.assertIn("p2psip accounts add", str(error))
        self.assertEqual(len(AccountsFile.load(self.path, missing_ok=True)), 0)

    def test_grants(self) -> None:
        """Grants are peer, user or both; anything else is an error."""
        self.assertEqual(parse_grants("peer, USER"), frozenset({Grant.PEER, Grant.USER}))
        self.assertRaises(ValueError, parse_grants, "")
        self.assertRaises(ValueError, parse_grants, "admin")
