"""
Client authentication on the STUNT control connection.

The mediator speaks first with a ``challenge`` carrying a fresh random
nonce; the client answers ``hello`` with its ID and
``HMAC-SHA256(secret, "p2psip-stunt-1" NUL nonce NUL id)`` (see
``docs/mediator-protocol.md``).  The nonce is used once, so a recorded
``hello`` cannot be replayed.

Every ID has a secret of its own, so that holding one client's secret lets
nobody log in as another (and, since a new login for an ID replaces the
old one, push that client off the mediator).  The operator gives the
mediator a file of per-ID secrets, or one shared secret from which each
ID's secret is derived, ``HMAC-SHA256(shared, "p2psip-client-secret-1" NUL
id)`` in lowercase hex (:func:`derive_client_secret`; ``p2psip mediator
secret ID`` prints it), or both; a per-ID secret wins.  The shared secret
itself stays on the mediator: no client needs it, or can use it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Protocol

import attrs

MAC_LABEL = b"p2psip-stunt-1"
#: What a client's own secret is derived under, from the shared secret.
CLIENT_SECRET_LABEL = b"p2psip-client-secret-1"
NONCE_BYTES = 16
MAX_ID_CHARS = 128


def compute_mac(secret: bytes, nonce_hex: str, client_id: str) -> str:
    """The ``hello`` proof of knowing the secret, bound to nonce and ID."""
    data = MAC_LABEL + b"\0" + nonce_hex.encode("ascii") + b"\0" + client_id.encode("utf-8")
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


def derive_client_secret(shared: bytes, client_id: str) -> bytes:
    """
    The secret of ``client_id`` when the mediator has only a shared secret:
    64 lowercase hex digits (ASCII), fit for a secret file or an option.
    """
    data = CLIENT_SECRET_LABEL + b"\0" + client_id.encode("utf-8")
    return hmac.new(shared, data, hashlib.sha256).hexdigest().encode("ascii")


class SecretStore(Protocol):
    def secret_for(self, client_id: str) -> bytes | None: ...


@attrs.frozen
class Secrets:
    """
    Client secrets: per-ID secrets, a shared secret each ID's is derived
    from, or both.

    A per-ID secret wins over the derived one, so an operator can give some
    clients a secret of their choosing and revoke it without touching the
    others.
    """

    shared: bytes | None = None
    per_id: Mapping[str, bytes] = attrs.field(factory=dict)

    def secret_for(self, client_id: str) -> bytes | None:
        """The secret ``client_id`` must prove knowing; None when it has none."""
        own = self.per_id.get(client_id)
        if own is not None:
            return own
        if self.shared is None:
            return None
        return derive_client_secret(self.shared, client_id)


def parse_secrets_file(text: str) -> dict[str, bytes]:
    """
    ``ID SECRET`` per line; ``#`` starts a comment.

    :raises ValueError: naming the line, so the operator can fix the file.
    """
    secrets: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {number}: expected 'ID SECRET'")
        secrets[parts[0]] = parts[1].encode("utf-8")
    return secrets


def valid_client_id(client_id: str) -> bool:
    return 0 < len(client_id) <= MAX_ID_CHARS and client_id.isprintable() and " " not in client_id
