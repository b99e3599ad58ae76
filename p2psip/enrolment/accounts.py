"""
The enrolment accounts file: who may ask the overlay CA for which certificates.

RFC 6940 s11.3 has the enrolment server check a user name and password
before it issues anything.  The bootstrap keeps its accounts in
``DATA_DIR/enrolment-accounts`` (mode 0600), one account a line::

    # NAME               GRANTS     PASSWORD HASH
    ops@example.org      peer       scrypt$16384$8$1$SALT$HASH
    alice@example.org    user       scrypt$16384$8$1$SALT$HASH

- ``NAME`` is ``user@domain``; it becomes the rfc822Name of every
  certificate issued under the account, which USER-MATCH and
  USER-NODE-MATCH compare with Resource-IDs.
- ``GRANTS`` is a comma-separated list of what the account may get:
  ``peer`` (a node certificate with a fresh Node-ID: a new super-node) and
  ``user`` (a user certificate bound to an existing super-node's Node-ID,
  which that super-node needs to write the user's SIP registrations).
- The password is stored as a salted scrypt hash (RFC 7914) with its cost
  parameters, so the parameters can be raised later without breaking old
  lines.  The password itself is never stored.

``p2psip accounts add|remove|list`` edits the file; the bootstrap re-reads
it when it changes, so accounts can be added while it runs.  The file is
rewritten atomically.  Sans-IO apart from reading and writing the file.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from attrs import frozen

from p2psip.enrolment.user_certificates import valid_user_name
from p2psip.util.files import (
    DataFileError,
    FileSignature,
    file_signature,
    read_bounded_text,
    write_atomically,
)

FILE_NAME = "enrolment-accounts"

#: scrypt cost: 2**14 blocks of 128 * r bytes (16 MiB), some tens of
#: milliseconds a check; RFC 7914's interactive-login figure.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Bounds on the parameters a file may give, so a hand-edited line cannot
#: make one check take minutes or gigabytes.
MAX_SCRYPT_N = 2**20
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
#: A larger accounts file is refused rather than read into memory.
MAX_ACCOUNTS_FILE_BYTES = 16 * 1024 * 1024
#: Longest password accepted; scrypt reads all of it.
MAX_PASSWORD_BYTES = 1024

_HEADER = "# p2psip enrolment accounts: NAME GRANTS PASSWORD-HASH (edit with `p2psip accounts`)"


class AccountsFileError(ValueError):
    """The accounts file or an edit of it is wrong; the message names file and line."""


class Grant(enum.Enum):
    """What an account may be issued."""

    #: A node certificate with a Node-ID the CA picks: a new super-node.
    PEER = "peer"
    #: A user certificate bound to the requesting super-node's Node-ID.
    USER = "user"


def parse_grants(text: str) -> frozenset[Grant]:
    """``peer``, ``user`` or ``peer,user``; raises ValueError otherwise."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    try:
        grants = frozenset(Grant(name) for name in names)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a list of grants: write peer, user or peer,user"
        ) from None
    if not grants:
        raise ValueError("an account needs at least one grant: peer, user or both")
    return grants


def _format_grants(grants: Iterable[Grant]) -> str:
    return ",".join(grant.value for grant in Grant if grant in set(grants))


@frozen
class PasswordHash:
    """A salted scrypt hash and the parameters it was made with."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def make(cls, password: str, salt: bytes | None = None) -> PasswordHash:
        salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
        return cls(
            SCRYPT_N,
            SCRYPT_R,
            SCRYPT_P,
            salt,
            _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P),
        )

    def matches(self, password: str) -> bool:
        """Whether ``password`` hashes to this digest (compared in constant time)."""
        computed = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(computed, self.digest)

    def encode(self) -> str:
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    @classmethod
    def decode(cls, text: str) -> PasswordHash:
        """Parse :meth:`encode`'s form; raises ValueError naming what is wrong."""
        fields = text.split("$")
        if len(fields) != 6 or fields[0] != "scrypt":
            raise ValueError("the password hash must be scrypt$N$r$p$SALT$HASH")
        try:
            n, r, p = int(fields[1]), int(fields[2]), int(fields[3])
            salt = base64.b64decode(fields[4], validate=True)
            digest = base64.b64decode(fields[5], validate=True)
        except ValueError:
            raise ValueError("the password hash has a malformed number or base64 field") from None
        if n < 2 or n & (n - 1) or n > MAX_SCRYPT_N:
            raise ValueError(f"scrypt N must be a power of two up to {MAX_SCRYPT_N}")
        if not 1 <= r <= MAX_SCRYPT_R or not 1 <= p <= MAX_SCRYPT_P:
            raise ValueError(f"scrypt r and p must be 1..{MAX_SCRYPT_R} and 1..{MAX_SCRYPT_P}")
        if len(salt) < 8 or len(digest) != HASH_BYTES:
            raise ValueError(f"the salt must be at least 8 bytes and the hash {HASH_BYTES}")
        return cls(n, r, p, salt, digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * 1024 * 1024,
        dklen=HASH_BYTES,
    )


#: Checked against when the account does not exist, so that a wrong name
#: takes as long to refuse as a wrong password and timing tells nothing.
_ABSENT_ACCOUNT = PasswordHash.make("no such account", salt=b"\0" * SALT_BYTES)


@frozen
class Account:
    """One line of the accounts file."""

    name: str
    grants: frozenset[Grant]
    password: PasswordHash

    def may(self, grant: Grant) -> bool:
        return grant in self.grants


class AccountsFile:
    """The accounts in memory: checks for the enrolment server, edits for the CLI."""

    def __init__(self, path: Path, lines: list[str] | None = None) -> None:
        self.path = path
        self._lines: list[str] = []
        self._accounts: dict[str, Account] = {}
        self._signature: FileSignature | None = None
        for number, line in enumerate(lines or [], start=1):
            self._lines.append(line)
            account = self._parse_line(line, number)
            if account is not None:
                if account.name in self._accounts:
                    raise AccountsFileError(f"{path}:{number}: {account.name} is listed twice")
                self._accounts[account.name] = account

    @classmethod
    def load(cls, path: Path | str, missing_ok: bool = False) -> AccountsFile:
        """
        Read an accounts file.

        :param missing_ok: treat an absent file as empty (``accounts add``
            and a bootstrap that has no accounts yet).
        :raises AccountsFileError: naming the file (and line) on any problem.
        """
        path = Path(path)
        try:
            text, signature = read_bounded_text(path, MAX_ACCOUNTS_FILE_BYTES, "accounts file")
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise AccountsFileError(
                f"{path}: accounts file not found; create it with "
                f"`p2psip accounts add --file {path} --peer NAME`"
            ) from None
        except DataFileError as e:
            raise AccountsFileError(str(e)) from None
        loaded = cls(path, text.splitlines())
        loaded._signature = signature
        return loaded

    def refresh(self) -> bool:
        """
        Re-read the file if it changed on disk; True when it did.

        A missing file means no accounts.  A broken new version leaves the
        old accounts in force and raises (once per version).

        :raises AccountsFileError: naming the file and line of the problem.
        """
        try:
            signature: FileSignature | None = file_signature(os.stat(self.path))
        except FileNotFoundError:
            signature = None
        except OSError as e:
            raise AccountsFileError(
                f"{self.path}: cannot read the accounts file: {e.strerror}"
            ) from None
        if signature == self._signature:
            return False
        self._signature = signature
        fresh = AccountsFile.load(self.path, missing_ok=True)
        self._lines, self._accounts = fresh._lines, fresh._accounts
        self._signature = fresh._signature
        return True

    def __iter__(self) -> Iterator[Account]:
        return iter(list(self._accounts.values()))

    def __len__(self) -> int:
        return len(self._accounts)

    def get(self, name: str) -> Account | None:
        return self._accounts.get(name)

    def check(self, name: str, password: str) -> Account | None:
        """
        The account if ``password`` is its password, else None.

        An unknown name costs one scrypt computation like a known one, so
        the time of the answer does not tell which names exist.
        """
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            return None
        account = self._accounts.get(name)
        if account is None:
            _ABSENT_ACCOUNT.matches(password)
            return None
        return account if account.password.matches(password) else None

    def set_account(self, name: str, password: str, grants: Iterable[Grant]) -> Account:
        """
        Add the account, or change its password and grants.

        :raises AccountsFileError: for a name that is not ``user@domain``,
            an empty or overlong password, or no grants.
        """
        if not valid_user_name(name):
            raise AccountsFileError(
                f"{name!r} is not an account name: write user@domain, e.g. alice@example.org"
            )
        if not password:
            raise AccountsFileError("the password must not be empty")
        if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            raise AccountsFileError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
        granted = frozenset(grants)
        if not granted:
            raise AccountsFileError("an account needs at least one grant: peer, user or both")
        account = Account(name, granted, PasswordHash.make(password))
        line = f"{name} {_format_grants(granted)} {account.password.encode()}"
        if name in self._accounts:
            self._lines[self._line_index(name)] = line
        else:
            if not self._lines:
                self._lines.append(_HEADER)
            self._lines.append(line)
        self._accounts[name] = account
        return account

    def remove(self, name: str) -> bool:
        """Forget an account; False when there was none of that name."""
        if self._accounts.pop(name, None) is None:
            return False
        del self._lines[self._line_index(name)]
        return True

    def save(self) -> None:
        """Write the file atomically with mode 0600 (it holds password hashes)."""
        lines = self._lines or [_HEADER]
        try:
            write_atomically(
                self.path, "".join(line + "\n" for line in lines).encode("utf-8"), 0o600
            )
        except DataFileError as e:
            raise AccountsFileError(str(e)) from e
        self._signature = file_signature(os.stat(self.path))

    def _line_index(self, name: str) -> int:
        for index, line in enumerate(self._lines):
            fields = line.split()
            if fields and fields[0] == name:
                return index
        raise AssertionError(f"{name} has an account but no line")

    def _parse_line(self, line: str, number: int) -> Account | None:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            return None
        where = f"{self.path}:{number}"
        if len(fields) != 3:
            raise AccountsFileError(
                f"{where}: expected 'NAME GRANTS PASSWORD-HASH', got {len(fields)} fields"
            )
        name, grants_text, hash_text = fields
        if not valid_user_name(name):
            raise AccountsFileError(f"{where}: {name!r} is not a user@domain account name")
        try:
            grants = parse_grants(grants_text)
            password = PasswordHash.decode(hash_text)
        except ValueError as e:
            raise AccountsFileError(f"{where}: {e}") from None
        return Account(name, grants, password)


def accounts_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where a bootstrap with this data directory keeps its accounts."""
    return Path(data_dir) / FILE_NAME
