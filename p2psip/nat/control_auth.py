"""
Client authentication on the STUNT control connection.

The mediator speaks first with a ``challenge`` carrying a fresh random
nonce; the client answers ``hello`` with its ID and
``HMAC-SHA256(secret, "p2psip-stunt-1" NUL nonce NUL id)`` (see
``docs/mediator-protocol.md``).  The nonce is used once, so a recorded
``hello`` cannot be replayed.  Secrets come from the operator: one shared
secret, a file of per-ID secrets, or both.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Protocol

import attrs

MAC_LABEL = b"p2psip-stunt-1"
NONCE_BYTES = 16
MAX_ID_CHARS = 128


def compute_mac(secret: bytes, nonce_hex: str, client_id: str) -> str:
    """The ``hello`` proof of knowing the secret, bound to nonce and ID."""
    data = MAC_LABEL + b"\0" + nonce_hex.encode("ascii") + b"\0" + client_id.encode("utf-8")
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


class SecretStore(Protocol):
    def secret_for(self, client_id: str) -> bytes | None: ...


@attrs.frozen
class Secrets:
    """
    Client secrets: one shared secret, per-ID secrets, or both.

    A per-ID secret wins over the shared one, so an operator can give some
    users their own secret and revoke it without touching the others.
    """

    shared: bytes | None = None
    per_id: Mapping[str, bytes] = attrs.field(factory=dict)

    def secret_for(self, client_id: str) -> bytes | None:
        return self.per_id.get(client_id, self.shared)


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
