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


#: What changes when a file is rewritten (an atomic rename gives a new inode):
#: (inode, size, modification time in ns).
FileSignature = tuple[int, int, int]


def file_signature(status: os.stat_result) -> FileSignature:
    """The :data:`FileSignature` of a ``stat`` result, to notice edits cheaply."""
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def read_bounded_text(path: Path, max_bytes: int, what: str) -> tuple[str, FileSignature]:
    """
    The UTF-8 text of an operator-edited file, and its signature.

    Users and accounts files are read by long-running roles and re-read
    when they change; reading at most ``max_bytes`` bounds what a mistaken
    (or hostile) file can cost.  ``what`` names the file in errors
    ("users file").

    :raises FileNotFoundError: the file does not exist (callers decide
        whether that means empty).
    :raises DataFileError: unreadable, too large, or not UTF-8; the message
        names the path (and line).
    """
    try:
        with path.open("rb") as stream:
            signature = file_signature(os.fstat(stream.fileno()))
            data = stream.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DataFileError(f"{path}: cannot read the {what}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise DataFileError(f"{path}: larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8"), signature
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFileError(f"{path}:{line}: not UTF-8 text") from None
