"""The data-file helpers: atomic writes, and bounded reads of operator-edited text files."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.files import DataFileError, read_bounded_text, write_atomically


class ReadBoundedTextTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())

    def test_text_and_signature(self) -> None:
        """The text comes back, and a rewrite changes the signature."""
        write_atomically(self.path, "one\n".encode(), 0o600)
        text, first = read_bounded_text(self.path, 100, "users file")
        self.assertEqual(text, "one\n")
        write_atomically(self.path, "two\n".encode(), 0o600)
        self.assertNotEqual(read_bounded_text(self.path, 100, "users file")[1], first)

    def test_missing(self) -> None:
        self.assertRaises(FileNotFoundError, read_bounded_text, self.path, 100, "users file")

    def test_too_large(self) -> None:
        self.path.write_bytes(b"x" * 101)
        error = self.assertRaises(DataFileError, read_bounded_text, self.path, 100, "users file")
        self.assertIn("larger than 100 bytes", str(error))

    def test_not_utf8_names_the_line(self) -> None:
        self.path.write_bytes(b"fine\nbad \xff\n")
        error = self.assertRaises(DataFileError, read_bounded_text, self.path, 100, "users file")
        self.assertIn(f"{self.path}:2: not UTF-8", str(error))

    def test_unreadable(self) -> None:
        if os.geteuid() == 0:
            # root reads any file; a directory is unreadable as a file for everyone.
            self.path.mkdir()
        else:
            self.path.write_bytes(b"x")
            self.path.chmod(0)
        error = self.assertRaises(DataFileError, read_bounded_text, self.path, 100, "users file")
        self.assertIn("cannot read the users file", str(error))
