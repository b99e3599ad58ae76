"""
HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 7616, RFC 8760).

Wire format, as this module speaks it:

- Challenge (401 response), one ``WWW-Authenticate`` header per algorithm,
  the preferred one first (RFC 8760 section 2.4)::

      WWW-Authenticate: Digest realm="example.org", nonce="...", opaque="...",
          algorithm=SHA-256, qop="auth"[, stale=TRUE]

- Credentials (the retried request)::

      Authorization: Digest username="alice", realm="example.org",
          nonce="...", uri="sip:example.org", response="<hex>",
          algorithm=SHA-256, cnonce="...", nc=00000001, qop=auth

- ``response = H(H(A1) ":" nonce ":" nc ":" cnonce ":" qop ":" H(A2))`` with
  ``A1 = username:realm:password`` and ``A2 = method:digest-uri``; without
  ``qop`` (RFC 2069 clients, still allowed by RFC 3261 section 22.4) it is
  ``H(H(A1) ":" nonce ":" H(A2))``; this module refuses that form (the
  client is challenged again), since without a nonce-count a captured
  response could be replayed for the nonce's lifetime.  Only ``H(A1)`` (the "HA1") is ever
  stored, so the users file never holds a password.

The nonce is stateless and verifiable (RFC 7616 section 3.3 suggests a
time stamp plus a keyed hash): ``base64url(timestamp || random || HMAC)``,
so any restart or a second super-node sharing the secret accepts it, and an
expired one produces ``stale=TRUE`` instead of a password prompt.

Answers never reveal whether a user exists: an unknown user is checked
against a throw-away HA1 with exactly the same hashing, and gets the same
verdict as a wrong password.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from p2psip.sip.digest_offer import (
    DEFAULT_ALGORITHMS,
    KNOWN_ALGORITHMS,
    ClientRule,
    DigestOffer,
    UserOffers,
)

#: Algorithms this module can check, strongest first (RFC 8760).  What a
#: challenge offers is :mod:`p2psip.sip.digest_offer`'s choice: MD5 alone
#: by default, SHA-256 per user or per known client.
ALGORITHMS: tuple[str, ...] = KNOWN_ALGORITHMS

_HASHES: Mapping[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}

#: How long a nonce is accepted before the client is told ``stale=TRUE``.
NONCE_LIFETIME_SECONDS = 300

#: Limits on untrusted credentials, checked before anything is parsed.
MAX_AUTHORIZATION_LENGTH = 4096
MAX_PARAMETERS = 32

#: How many nonces remember their highest nonce-count (replay protection).
NONCE_COUNT_CACHE_SIZE = 4096

_NONCE_RANDOM_BYTES = 8
_NONCE_MAC_BYTES = 16
_NONCE_BYTES = 8 + _NONCE_RANDOM_BYTES + _NONCE_MAC_BYTES
_NONCE_TEXT_LENGTH = len(base64.urlsafe_b64encode(b"\0" * _NONCE_BYTES).rstrip(b"="))

_TOKEN_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class DigestParseError(ValueError):
    """An Authorization header that is not well-formed Digest credentials."""


def digest_hash(algorithm: str, text: str) -> str:
    """Lower-case hex digest of ``text`` (UTF-8) with the named algorithm."""
    return _HASHES[algorithm](text.encode("utf-8"))


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(A1): what the users file stores instead of the password."""
    return digest_hash(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest a client sends for these values (RFC 7616 s3.4.1)."""
    ha2 = digest_hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return digest_hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    return digest_hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@frozen
class DigestCredentials:
    """The parameters of one ``Authorization: Digest ...`` header value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None
    opaque: str | None


def parse_digest_parameters(text: str) -> dict[str, str]:
    """
    Split ``name=value, name="quoted, value"`` into a dict (lower-case names).

    Commas and escaped quotes inside quoted strings belong to the value.
    Anything else unexpected is a :class:`DigestParseError`.
    """
    if len(text) > MAX_AUTHORIZATION_LENGTH:
        raise DigestParseError(f"credentials longer than {MAX_AUTHORIZATION_LENGTH} characters")
    params: dict[str, str] = {}
    position, end = 0, len(text)
    while True:
        while position < end and text[position] in " \t\r\n,":
            position += 1
        if position >= end:
            return params
        start = position
        while position < end and text[position] in _TOKEN_CHARACTERS:
            position += 1
        name = text[start:position].lower()
        if not name:
            raise DigestParseError(f"expected a parameter name at offset {start}")
        while position < end and text[position] in " \t":
            position += 1
        if position >= end or text[position] != "=":
            raise DigestParseError(f"parameter {name!r} has no '=' value")
        position += 1
        while position < end and text[position] in " \t":
            position += 1
        if position < end and text[position] == '"':
            position += 1
            pieces: list[str] = []
            while True:
                if position >= end:
                    raise DigestParseError(f"unterminated quoted value of {name!r}")
                character = text[position]
                if character == "\\":
                    if position + 1 >= end:
                        raise DigestParseError(f"dangling escape in {name!r}")
                    pieces.append(text[position + 1])
                    position += 2
                elif character == '"':
                    position += 1
                    break
                else:
                    pieces.append(character)
                    position += 1
            value = "".join(pieces)
        else:
            start = position
            while position < end and text[position] in _TOKEN_CHARACTERS:
                position += 1
            value = text[start:position]
            if not value:
                raise DigestParseError(f"parameter {name!r} has an empty value")
        if name in params:
            raise DigestParseError(f"parameter {name!r} appears twice")
        if len(params) >= MAX_PARAMETERS:
            raise DigestParseError(f"more than {MAX_PARAMETERS} parameters")
        params[name] = value
        while position < end and text[position] in " \t\r\n":
            position += 1
        if position < end and text[position] != ",":
            raise DigestParseError(f"expected ',' after parameter {name!r}")


def parse_authorization(value: str) -> DigestCredentials:
    """
    Parse one Authorization (or Proxy-Authorization) header value.

    :raises DigestParseError: for another scheme, missing required
        parameters, or anything malformed.
    """
    if len(value) > MAX_AUTHORIZATION_LENGTH:
        raise DigestParseError(f"credentials longer than {MAX_AUTHORIZATION_LENGTH} characters")
    stripped = value.strip()
    scheme, _, rest = stripped.partition(" ")
    if scheme.lower() != "digest":
        raise DigestParseError("not Digest credentials")
    params = parse_digest_parameters(rest)
    missing = [
        name for name in ("username", "realm", "nonce", "uri", "response") if name not in params
    ]
    if missing:
        raise DigestParseError(f"missing {', '.join(missing)}")
    qop = params.get("qop")
    if qop is not None and ("nc" not in params or "cnonce" not in params):
        raise DigestParseError("qop without nc and cnonce")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"],
        algorithm=params.get("algorithm", "MD5"),
        qop=qop,
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
    )


class Verdict(enum.Enum):
    """What the server should answer to a request carrying credentials."""

    #: The credentials are right: process the request.
    ACCEPTED = "accepted"
    #: Right password but an expired (or replayed) nonce: 401 with stale=TRUE.
    STALE = "stale"
    #: Credentials we cannot use (other realm, unknown algorithm, forged
    #: nonce): a fresh 401 challenge.
    CHALLENGE = "challenge"
    #: Wrong password or unknown user: 403 Forbidden.
    REJECTED = "rejected"
    #: The digest-uri does not match the Request-URI: 400 (RFC 7616 s3.4.6).
    MALFORMED = "malformed"


class HA1Source(Protocol):
    """The user lookup the authenticator needs (``p2psip.sip.users.UsersFile``)."""

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        """The stored H(A1) for this user, or None when there is none."""


class _NonceState(enum.Enum):
    FRESH = "fresh"
    EXPIRED = "expired"
    INVALID = "invalid"


class DigestAuthenticator:
    """
    Issue challenges and check credentials for one realm.

    Stateless apart from a bounded nonce-count cache: the nonce carries its
    own issue time and a MAC under ``secret``.
    """

    def __init__(
        self,
        realm: str,
        secret: bytes,
        clock: IReactorTime,
        users: HA1Source,
        nonce_lifetime_seconds: float = NONCE_LIFETIME_SECONDS,
        random_bytes: Callable[[int], bytes] = os.urandom,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        *,
        clients: Sequence[ClientRule] = (),
        offers: UserOffers | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        unknown = [name for name in algorithms if name not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(
                f"digest algorithms must be some of {', '.join(ALGORITHMS)}, not {unknown}"
            )
        # The default offer; users and known clients may get another
        # (p2psip.sip.digest_offer says why MD5 alone is the default).
        self.algorithms = tuple(algorithms)
        self.offer = DigestOffer(self.algorithms, tuple(clients))
        #: Per-user offers (the users file), or None.
        self.offers = offers
        self.realm = realm
        self._secret = secret
        self._clock = clock
        self._users = users
        self._nonce_lifetime_seconds = nonce_lifetime_seconds
        self._random_bytes = random_bytes
        self._opaque = hmac.new(secret, b"opaque:" + realm.encode("utf-8"), "sha256").hexdigest()[
            :16
        ]
        #: nonce -> (highest nonce-count seen, issue time), least recently used first.
        self._highest_nonce_counts: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._dropped_issued_up_to = -1
        # Unknown users are checked against this, so they cost the same work.
        self._decoy_ha1 = {
            algorithm: digest_hash(algorithm, random_bytes(16).hex()) for algorithm in ALGORITHMS
        }

    def new_nonce(self) -> str:
        """A nonce that :meth:`verify` will recognise until it expires."""
        issued = struct.pack(">Q", int(self._clock.seconds()))
        salt = self._random_bytes(_NONCE_RANDOM_BYTES)
        mac = self._nonce_mac(issued + salt)
        return base64.urlsafe_b64encode(issued + salt + mac).rstrip(b"=").decode("ascii")

    def challenges(
        self, stale: bool = False, *, aor: str | None = None, user_agent: str | None = None
    ) -> list[str]:
        """
        ``WWW-Authenticate`` values, one per algorithm, preferred first: the
        algorithms offered to ``aor``'s user from a client that says it is
        ``user_agent``.
        """
        nonce = self.new_nonce()
        realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
        suffix = ", stale=TRUE" if stale else ""
        return [
            f'Digest realm="{realm}", nonce="{nonce}", opaque="{self._opaque}", '
            f'algorithm={algorithm}, qop="auth"{suffix}'
            for algorithm in self.offer.offered(self.offers, aor, user_agent)
        ]

    def verify(self, credentials: DigestCredentials, method: str, request_uri: str) -> Verdict:
        """Judge credentials sent with a request of ``method`` to ``request_uri``."""
        algorithm = _canonical_algorithm(credentials.algorithm)
        if (
            algorithm is None
            or algorithm not in self.offer.accepted(self.offers, credentials.username, self.realm)
            or credentials.realm != self.realm
            # Without qop=auth there is no nonce-count, so nothing would stop
            # a captured response from being replayed while its nonce lives.
            or credentials.qop != "auth"
        ):
            return Verdict.CHALLENGE
        nonce_state, issued = self._nonce_state(credentials.nonce)
        if nonce_state is _NonceState.INVALID:
            return Verdict.CHALLENGE
        if credentials.uri != request_uri:
            return Verdict.MALFORMED
        nonce_count = _parse_nonce_count(credentials.nc)
        if nonce_count is None:
            return Verdict.MALFORMED
        stored = self._users.ha1(credentials.username, credentials.realm, algorithm)
        ha1 = stored if stored is not None else self._decoy_ha1[algorithm]
        expected = compute_response(
            algorithm,
            ha1,
            credentials.nonce,
            method,
            credentials.uri,
            credentials.qop,
            credentials.nc,
            credentials.cnonce,
        )
        response = credentials.response.lower()
        matches = response.isascii() and hmac.compare_digest(expected, response)
        if not matches or stored is None:
            return Verdict.REJECTED
        if nonce_state is _NonceState.EXPIRED:
            return Verdict.STALE
        if not self._advance_nonce_count(credentials.nonce, nonce_count, issued):
            return Verdict.STALE
        return Verdict.ACCEPTED

    def _nonce_mac(self, data: bytes) -> bytes:
        message = self.realm.encode("utf-8") + b"\0" + data
        return hmac.new(self._secret, message, "sha256").digest()[:_NONCE_MAC_BYTES]

    def _nonce_state(self, nonce: str) -> tuple[_NonceState, int]:
        """Whether ``nonce`` is ours and fresh, and when it was issued (0 if not ours)."""
        if len(nonce) != _NONCE_TEXT_LENGTH:
            return _NonceState.INVALID, 0
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return _NonceState.INVALID, 0
        if len(raw) != _NONCE_BYTES:
            return _NonceState.INVALID, 0
        signed, mac = raw[:-_NONCE_MAC_BYTES], raw[-_NONCE_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._nonce_mac(signed)):
            return _NonceState.INVALID, 0
        (issued,) = struct.unpack(">Q", signed[:8])
        age = self._clock.seconds() - issued
        if age < -1 or age > self._nonce_lifetime_seconds:
            return _NonceState.EXPIRED, issued
        return _NonceState.FRESH, issued

    def _advance_nonce_count(self, nonce: str, nonce_count: int, issued: int) -> bool:
        """
        False for a replayed (not increasing) nonce-count.

        A nonce dropped from the bounded cache could be replayed from
        nonce-count 1 again; so every nonce issued no later than the newest
        one ever dropped counts as stale when it is not in the cache (the
        client is simply given a fresh nonce).
        """
        known = self._highest_nonce_counts.get(nonce)
        if known is None and issued <= self._dropped_issued_up_to:
            return False
        if known is not None and nonce_count <= known[0]:
            return False
        self._highest_nonce_counts[nonce] = (nonce_count, issued)
        self._highest_nonce_counts.move_to_end(nonce)
        while len(self._highest_nonce_counts) > NONCE_COUNT_CACHE_SIZE:
            _, (_, dropped_issued) = self._highest_nonce_counts.popitem(last=False)
            self._dropped_issued_up_to = max(self._dropped_issued_up_to, dropped_issued)
        return True


def _canonical_algorithm(name: str) -> str | None:
    for algorithm in ALGORITHMS:
        if name.upper() == algorithm:
            return algorithm
    return None


def _parse_nonce_count(text: str | None) -> int | None:
    if text is None or len(text) != 8 or not set(text) <= _HEX_DIGITS:
        return None
    return int(text, 16)
