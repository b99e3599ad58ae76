"""
Files in a role's data directory, written so that a crash never leaves half of one.

Keys, certificates and the known-peers list are replaced whole: the new
content goes to a temporary file beside the old one, is flushed to disk,
and is renamed over it (rename is atomic on POSIX file systems).
"""

from __future__ import annotations

import os
from pathlib import Path


class DataFileError(Exception):
    """A data file cannot be written; the message names the path and what to check."""


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data`` (permissions ``mode``) in one step."""
    temporary = path.with_name(path.name + ".new")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            # os.open's mode is filtered by the umask and ignored for an
            # existing file; set it explicitly (a key must never be readable).
            os.fchmod(descriptor, mode)
            view = memoryview(data)
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError as e:
        raise DataFileError(
            f"cannot write {path}: {e.strerror}; check that the data directory is "
            "writable by the role's user and that its disk is not full"
        ) from e
