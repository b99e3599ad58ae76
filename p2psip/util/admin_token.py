"""
The admin API token: a random secret in the role's data directory.

A ring role makes the file ``admin-token`` (mode 0600) in its
``--data-dir`` on first start and from then on reads it; every admin API
request must carry it as ``Authorization: Bearer TOKEN``.  The ``p2psip``
command reads the same file, so whoever may read the data directory may
drive the API and nobody else (a local user, or a web page in the
operator's browser, cannot).

The file holds the token on its first line: at least
:data:`MIN_TOKEN_CHARS` visible ASCII characters, as an operator who
writes their own must know.  A file anyone may read, or a short one, is
refused with an error that names the file and the fix.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from p2psip.util.files import DataFileError, write_atomically

TOKEN_FILE_NAME = "admin-token"
MIN_TOKEN_CHARS = 32
#: Bytes read from the file: a token is one short line.
MAX_TOKEN_FILE_BYTES = 4096


class AdminTokenError(Exception):
    """The token file is unusable; the message names it and says what to do."""


def token_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where a role with this data directory keeps its token."""
    return Path(data_dir) / TOKEN_FILE_NAME


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def read_token(path: Path) -> str:
    """
    The token in ``path``.

    :raises AdminTokenError: the file is missing, unreadable, readable or
        writable by everyone, not text, or holds too short a token.
    """
    try:
        with open(path, "rb") as token_file:
            mode = os.fstat(token_file.fileno()).st_mode
            data = token_file.read(MAX_TOKEN_FILE_BYTES)
    except FileNotFoundError:
        raise AdminTokenError(f"no admin token file {path}") from None
    except OSError as error:
        raise AdminTokenError(
            f"cannot read the admin token file {path}: {error.strerror}; "
            "run as the role's user (or one of its group), or fix the file's permissions"
        ) from None
    if not stat.S_ISREG(mode):
        raise AdminTokenError(f"the admin token file {path} is not a regular file")
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise AdminTokenError(
            f"the admin token file {path} is open to every user (mode {stat.S_IMODE(mode):04o}): "
            f"run chmod 600 {path} (or 640 to share it with the role's group)"
        )
    first_line = data.split(b"\n", 1)[0].strip()
    if not all(0x21 <= byte <= 0x7E for byte in first_line):
        raise AdminTokenError(
            f"the admin token in {path} has characters other than visible ASCII: "
            "delete the file and restart the role, which writes a new one"
        )
    token = first_line.decode("ascii")
    if len(token) < MIN_TOKEN_CHARS:
        raise AdminTokenError(
            f"the admin token in {path} is too short ({len(token)} characters; "
            f"at least {MIN_TOKEN_CHARS}): delete the file and restart the role, "
            "which writes a new one"
        )
    return token


def load_or_create_token(data_dir: str | os.PathLike[str]) -> str:
    """
    The token of the role whose data directory is ``data_dir``, written
    there first (mode 0600, atomically) if the file does not exist.

    :raises AdminTokenError: see :func:`read_token`, or the file cannot be written.
    """
    path = token_path(data_dir)
    if not os.path.lexists(path):
        try:
            write_atomically(path, new_token().encode("ascii") + b"\n", 0o600)
        except DataFileError as error:
            raise AdminTokenError(str(error)) from None
    return read_token(path)
