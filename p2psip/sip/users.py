"""
The digest users file: who may register which address-of-record.

Format (UTF-8 text, one user per line; ``#`` starts a comment line)::

    # AOR                  REALM        ALGORITHM=HA1 ...              [offer=LIST]
    sip:alice@example.org  example.org  MD5=1c0e...  SHA-256=9a7b...
    sip:carol@example.org  example.org  MD5=77aa...  SHA-256=c01d...  offer=SHA-256,MD5

- ``AOR`` is a ``sip:`` or ``sips:`` URI ``user@domain``; the user part is
  the Digest username a phone sends.
- ``REALM`` is the Digest realm, normally the overlay name.
- Each ``ALGORITHM=HA1`` holds H(username:realm:password) in lower-case hex
  for ``MD5`` and ``SHA-256`` (RFC 7616 section 3.4.2).  The password itself
  is never stored; changing the realm therefore needs the password again.
- ``offer=SHA-256,MD5`` (optional) is the list this user's challenges
  offer, preferred first, instead of the server's default (MD5 alone); a
  response with an algorithm not in it is refused for this user
  (:mod:`p2psip.sip.digest_offer`).  ``p2psip users add --offer`` sets it.

The file is rewritten atomically (temporary file, fsync, rename), keeping
comments and the order of the other lines; a new file gets mode 0600, an
existing one keeps its owner, group and group read bit (at most 0640).  ``p2psip users``
edits it; the peer role reads it with ``--users FILE``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from attrs import frozen

from p2psip.sip.digest import ALGORITHMS, compute_ha1
from p2psip.sip.digest_offer import parse_algorithms
from p2psip.util.files import DataFileError, FileSignature, file_signature, read_bounded_text

#: A users file larger than this is refused rather than read into memory.
MAX_USERS_FILE_BYTES = 64 * 1024 * 1024

_AOR = re.compile(r"^(sips?):([^@:;?\s<>\"]+)@([A-Za-z0-9.\-\[\]:]+)$", re.IGNORECASE)
_REALM = re.compile(r"^[^\s\"\\]+$")
_HA1_LENGTHS = {"MD5": 32, "SHA-256": 64}
_HEX = re.compile(r"^[0-9a-f]+$")


class UsersFileError(ValueError):
    """A users file or an edit of it is wrong; the message names file and line."""


@frozen
class UserRecord:
    """One line of the users file."""

    aor: str
    username: str
    realm: str
    ha1: dict[str, str]
    #: The algorithms this user's challenges offer (empty: the server's default).
    offer: tuple[str, ...] = ()

    def usable_offer(self) -> tuple[str, ...] | None:
        """The user's offer, less algorithms the line holds no HA1 for; None when unset."""
        usable = tuple(name for name in self.offer if name in self.ha1)
        return usable or None


def split_aor(aor: str) -> tuple[str, str, str]:
    """
    ``(scheme, user, domain)`` of an AOR such as ``sip:alice@example.org``.

    The scheme and domain come back in lower case (they are case-insensitive
    in SIP URIs); the user part keeps its case.

    :raises ValueError: when ``aor`` is not ``sip[s]:user@domain``.
    """
    match = _AOR.match(aor)
    if match is None:
        raise ValueError(f"{aor!r} is not an address-of-record like sip:alice@example.org")
    scheme, user, domain = match.groups()
    return scheme.lower(), user, domain.lower()


def canonical_aor(aor: str) -> str:
    """The AOR with scheme and domain lower-cased, as the file stores it."""
    scheme, user, domain = split_aor(aor)
    return f"{scheme}:{user}@{domain}"


class UsersFile:
    """
    The users file in memory: lookups for the authenticator, edits for the CLI.

    Implements :class:`p2psip.sip.digest.HA1Source`.
    """

    def __init__(self, path: Path, lines: list[str] | None = None) -> None:
        self.path = path
        self._lines: list[str] = []
        self._records: dict[str, UserRecord] = {}
        self._by_credentials: dict[tuple[str, str], UserRecord] = {}
        self._signature: FileSignature | None = None
        for number, line in enumerate(lines or [], start=1):
            self._lines.append(line)
            record = self._parse_line(line, number)
            if record is not None:
                self._add_record(record, number)

    @classmethod
    def load(cls, path: Path | str, missing_ok: bool = False) -> UsersFile:
        """
        Read a users file.

        :param missing_ok: treat an absent file as empty (for ``users add``).
        :raises UsersFileError: naming the file (and line) on any problem.
        """
        path = Path(path)
        try:
            text, signature = read_bounded_text(path, MAX_USERS_FILE_BYTES, "users file")
        except FileNotFoundError:
            if missing_ok:
                return cls(path)
            raise UsersFileError(
                f"{path}: users file not found; create it with `p2psip users add --file {path} AOR`"
            ) from None
        except DataFileError as e:
            raise UsersFileError(str(e)) from None
        loaded = cls(path, text.splitlines())
        loaded._signature = signature
        return loaded

    def refresh(self) -> bool:
        """
        Re-read the file if it changed on disk (``p2psip users add`` while
        the peer runs); True when it did.

        The object stays the same, so the authenticator and registrar that
        hold it see the new users at once.  A broken new file leaves the old
        users in force.

        :raises UsersFileError: naming the file and line of the problem.
        """
        try:
            signature = file_signature(os.stat(self.path))
        except OSError as e:
            raise UsersFileError(f"{self.path}: cannot read users file: {e.strerror}") from None
        if signature == self._signature:
            return False
        # Remember this version even if it is broken: it is reported once,
        # not at every refresh, and the next edit is read again.
        self._signature = signature
        fresh = UsersFile.load(self.path)
        self._lines, self._records, self._by_credentials = (
            fresh._lines,
            fresh._records,
            fresh._by_credentials,
        )
        self._signature = fresh._signature
        return True

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        """The stored H(A1) for a Digest username in ``realm``, or None."""
        record = self._by_credentials.get((username, realm))
        if record is None:
            return None
        return record.ha1.get(algorithm)

    def aor_for(self, username: str, realm: str) -> str | None:
        """The AOR a Digest username may register, or None for strangers."""
        record = self._by_credentials.get((username, realm))
        return None if record is None else record.aor

    def record(self, aor: str) -> UserRecord | None:
        """The user with this AOR, or None (also for a malformed AOR)."""
        canonical = _safe_canonical(aor)
        return None if canonical is None else self._records.get(canonical)

    def offer_for_aor(self, aor: str) -> tuple[str, ...] | None:
        """The algorithms this AOR's user is offered (``offer=``), or None for the server's choice."""
        record = self.record(aor)
        return None if record is None else record.usable_offer()

    def offer_for_user(self, username: str, realm: str) -> tuple[str, ...] | None:
        """The same for a Digest user name in ``realm``."""
        record = self._by_credentials.get((username, realm))
        return None if record is None else record.usable_offer()

    def users(self) -> list[UserRecord]:
        """Every user, in file order."""
        return list(self._records.values())

    def __iter__(self) -> Iterator[UserRecord]:
        return iter(self.users())

    def set_password(
        self,
        aor: str,
        password: str,
        realm: str | None = None,
        offer: tuple[str, ...] | None = None,
    ) -> UserRecord:
        """
        Add the user, or change its password (and realm).

        :param realm: Digest realm; defaults to the AOR's domain.
        :param offer: the algorithms this user's challenges offer; None keeps
            the user's current offer, ``()`` returns it to the server's default.
        :raises UsersFileError: for a malformed AOR or realm, or an empty
            password.
        """
        try:
            scheme, user, domain = split_aor(aor)
        except ValueError as e:
            raise UsersFileError(str(e)) from None
        realm = domain if realm is None else realm
        if not _REALM.match(realm):
            raise UsersFileError(
                f"realm {realm!r} must be non-empty, without spaces, quotes or backslashes"
            )
        if not password:
            raise UsersFileError("the password must not be empty")
        aor = f"{scheme}:{user}@{domain}"
        if offer is None:
            previous = self._records.get(aor)
            offer = previous.offer if previous is not None else ()
        record = UserRecord(
            aor=aor,
            username=user,
            realm=realm,
            ha1={
                algorithm: compute_ha1(algorithm, user, realm, password) for algorithm in ALGORITHMS
            },
            offer=tuple(offer),
        )
        clash = self._by_credentials.get((user, realm))
        if clash is not None and clash.aor != aor:
            raise UsersFileError(
                f"{self.path}: username {user!r} in realm {realm!r} already belongs to {clash.aor}"
            )
        line = _format_record(record)
        old = self._records.get(aor)
        if old is None:
            if not self._lines:
                self._lines.append(_HEADER.rstrip("\n"))
            self._lines.append(line)
        else:
            del self._by_credentials[(old.username, old.realm)]
            self._lines[self._line_index(aor)] = line
        self._records[aor] = record
        self._by_credentials[(user, realm)] = record
        return record

    def remove(self, aor: str) -> bool:
        """Forget a user; False when there was no such user."""
        try:
            aor = canonical_aor(aor)
        except ValueError as e:
            raise UsersFileError(str(e)) from None
        record = self._records.pop(aor, None)
        if record is None:
            return False
        del self._lines[self._line_index(aor)]
        del self._by_credentials[(record.username, record.realm)]
        return True

    def save(self) -> None:
        """
        Write the file atomically: a new file gets mode 0600.

        Rewriting an existing file keeps its owner and group, and its group
        read bit (so a ``root:p2psip`` file with mode 0640 stays readable by
        the peer), but never more than 0640.
        """
        directory = self.path.parent
        text = "".join(line + "\n" for line in self._lines)
        if not self._lines:
            text = _HEADER
        mode, owner = 0o600, None
        try:
            existing = os.stat(self.path)
        except FileNotFoundError:
            pass
        else:
            mode = 0o600 | (existing.st_mode & 0o040)
            owner = (existing.st_uid, existing.st_gid)
        handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            os.fchmod(handle, mode)
            if owner is not None and owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(handle, *owner)
                except PermissionError:
                    pass  # not root: the file becomes ours, as any edit would make it
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        directory_handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)

    def _line_index(self, aor: str) -> int:
        for index, line in enumerate(self._lines):
            fields = line.split()
            if fields and not fields[0].startswith("#") and _safe_canonical(fields[0]) == aor:
                return index
        raise AssertionError(f"{aor} has a record but no line")

    def _parse_line(self, line: str, number: int) -> UserRecord | None:
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            return None
        where = f"{self.path}:{number}"
        if len(fields) < 3:
            raise UsersFileError(
                f"{where}: expected 'AOR REALM ALGORITHM=HA1 ...', got {len(fields)} fields"
            )
        try:
            scheme, user, domain = split_aor(fields[0])
        except ValueError as e:
            raise UsersFileError(f"{where}: {e}") from None
        realm = fields[1]
        if not _REALM.match(realm):
            raise UsersFileError(f"{where}: realm {realm!r} has quotes or backslashes")
        ha1: dict[str, str] = {}
        offer: tuple[str, ...] = ()
        for field in fields[2:]:
            if field.lower().startswith("offer="):
                try:
                    offer = parse_algorithms(field.partition("=")[2])
                except ValueError as e:
                    raise UsersFileError(f"{where}: {e}") from None
                continue
            algorithm, equals, digest_hex = field.partition("=")
            canonical = next((known for known in ALGORITHMS if known == algorithm.upper()), None)
            if not equals or canonical is None:
                raise UsersFileError(
                    f"{where}: {field!r} is not ALGORITHM=HA1 with ALGORITHM one of {', '.join(ALGORITHMS)}"
                )
            digest_hex = digest_hex.lower()
            if len(digest_hex) != _HA1_LENGTHS[canonical] or not _HEX.match(digest_hex):
                raise UsersFileError(
                    f"{where}: the {canonical} HA1 must be {_HA1_LENGTHS[canonical]} hex digits"
                )
            if canonical in ha1:
                raise UsersFileError(f"{where}: {canonical} given twice")
            ha1[canonical] = digest_hex
        if not ha1:
            raise UsersFileError(f"{where}: no ALGORITHM=HA1 field")
        return UserRecord(
            aor=f"{scheme}:{user}@{domain}", username=user, realm=realm, ha1=ha1, offer=offer
        )

    def _add_record(self, record: UserRecord, number: int) -> None:
        where = f"{self.path}:{number}"
        if record.aor in self._records:
            raise UsersFileError(f"{where}: {record.aor} is listed twice")
        if (record.username, record.realm) in self._by_credentials:
            raise UsersFileError(
                f"{where}: username {record.username!r} in realm {record.realm!r} is listed twice"
            )
        self._records[record.aor] = record
        self._by_credentials[(record.username, record.realm)] = record


_HEADER = "# p2psip users file: AOR REALM ALGORITHM=HA1 ... (edit with `p2psip users`)\n"


def _format_record(record: UserRecord) -> str:
    digests = " ".join(f"{algorithm}={record.ha1[algorithm]}" for algorithm in ALGORITHMS)
    offer = f" offer={','.join(record.offer)}" if record.offer else ""
    return f"{record.aor} {record.realm} {digests}{offer}"


def _safe_canonical(aor: str) -> str | None:
    try:
        return canonical_aor(aor)
    except ValueError:
        return None
