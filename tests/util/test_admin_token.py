"""The admin token file in a role's data directory."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.admin_token import (
    MIN_TOKEN_CHARS,
    TOKEN_FILE_NAME,
    AdminTokenError,
    load_or_create_token,
    read_token,
)


class AdminTokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.path = self.directory / TOKEN_FILE_NAME

    def write(self, text: str, mode: int = 0o600) -> None:
        self.path.write_text(text, encoding="latin-1")
        self.path.chmod(mode)

    def test_created_on_first_start(self) -> None:
        """The first start writes a random token, mode 0600 whatever the umask, and nothing else."""
        old_umask = os.umask(0)
        self.addCleanup(os.umask, old_umask)
        token = load_or_create_token(self.directory)
        self.assertGreaterEqual(len(token), MIN_TOKEN_CHARS)
        self.assertEqual(self.path.read_text(), token + "\n")
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(self.directory), [TOKEN_FILE_NAME])

    def test_kept_across_starts(self) -> None:
        """Later starts read the same token; another directory gets another one."""
        token = load_or_create_token(self.directory)
        self.assertEqual(load_or_create_token(self.directory), token)
        other = Path(self.mktemp())
        other.mkdir()
        self.assertNotEqual(load_or_create_token(other), token)

    def test_operator_token(self) -> None:
        """A token the operator wrote is used as it is (first line, whitespace stripped)."""
        self.write("  " + "A" * 40 + "  \nsecond line\n", 0o640)
        self.assertEqual(load_or_create_token(self.directory), "A" * 40)

    def test_open_to_everyone_refused(self) -> None:
        """A token file others may read or write is refused with the chmod that fixes it."""
        for mode in (0o644, 0o602, 0o666):
            self.write("x" * 43, mode)
            error = self.assertRaises(AdminTokenError, load_or_create_token, self.directory)
            self.assertIn(str(self.path), str(error))
            self.assertIn(f"chmod 600 {self.path}", str(error))
            self.assertIn(f"mode {mode:04o}", str(error))

    def test_short_token_refused(self) -> None:
        """A token shorter than the minimum, or empty, is refused, saying how to get a new one."""
        for text in ("", "\n", "x" * (MIN_TOKEN_CHARS - 1)):
            self.write(text)
            error = self.assertRaises(AdminTokenError, read_token, self.path)
            self.assertIn(str(self.path), str(error))
            self.assertIn("too short", str(error))
            self.assertIn("delete the file and restart the role", str(error))

    def test_not_visible_ascii_refused(self) -> None:
        """A token with spaces, control characters or bytes above ASCII cannot be a header value."""
        for text in ("x" * 20 + " " + "x" * 20, "x" * 40 + "\x00", "\xe9" * 40):
            self.write(text)
            error = self.assertRaises(AdminTokenError, read_token, self.path)
            self.assertIn("visible ASCII", str(error))

    def test_missing_and_not_a_file(self) -> None:
        """read_token names a missing file; a directory in its place is refused."""
        error = self.assertRaises(AdminTokenError, read_token, self.path)
        self.assertIn(f"no admin token file {self.path}", str(error))
        self.path.mkdir(mode=0o700)
        error = self.assertRaises(AdminTokenError, load_or_create_token, self.directory)
        self.assertIn(str(self.path), str(error))

    def test_unwritable_directory(self) -> None:
        """A data directory the role may not write is an error naming the file."""
        if os.geteuid() == 0:
            # root writes anywhere; a missing directory fails the same way.
            directory = self.directory / "missing"
        else:
            directory = self.directory
            directory.chmod(0o500)
            self.addCleanup(directory.chmod, 0o700)
        error = self.assertRaises(AdminTokenError, load_or_create_token, directory)
        self.assertIn(str(directory / TOKEN_FILE_NAME), str(error))
