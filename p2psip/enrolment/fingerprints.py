"""
The overlay root's fingerprint: how an operator pins the CA without copying files.

A peer that enrols must know, before it sends a password anywhere, which
CA it is talking to; otherwise whoever answers first (trust on first use)
could hand it a root of their own.  The bootstrap prints the SHA-256
fingerprint of its root certificate (``p2psip ca fingerprint``), and the
operator gives it to each peer as ``--ca-fingerprint sha256:HEX``.  The
fingerprint covers the root's whole DER encoding, so it names one
certificate and therefore one key.

Sans-IO.
"""

from __future__ import annotations

import hashlib
import hmac
import re

FINGERPRINT_ALGORITHM = "sha256"

_HEX = re.compile(r"^[0-9a-f]{64}$")


def root_fingerprint(root_der: bytes) -> str:
    """``sha256:`` and the lower-case hex SHA-256 of a DER certificate."""
    return f"{FINGERPRINT_ALGORITHM}:{hashlib.sha256(root_der).hexdigest()}"


def parse_fingerprint(text: str) -> bytes:
    """
    The 32-byte digest a ``--ca-fingerprint`` value names.

    Accepts ``sha256:HEX`` with the hex in either case and optionally split
    by colons (``AB:CD:...``, as ``openssl x509 -fingerprint`` prints it).

    :raises ValueError: naming the expected form.
    """
    algorithm, colon, digits = text.strip().partition(":")
    if not colon or algorithm.lower() != FINGERPRINT_ALGORITHM:
        raise ValueError(
            f"{text!r} is not a CA fingerprint: write sha256:HEX (64 hex digits), as "
            "`p2psip ca fingerprint` prints it on the bootstrap"
        )
    digits = digits.replace(":", "").lower()
    if not _HEX.match(digits):
        raise ValueError(
            f"{text!r} is not a CA fingerprint: after sha256: come 64 hex digits "
            f"(got {len(digits)} characters)"
        )
    return bytes.fromhex(digits)


def matches_fingerprint(root_der: bytes, digest: bytes) -> bool:
    """Whether ``root_der`` is the certificate a parsed fingerprint names."""
    return hmac.compare_digest(hashlib.sha256(root_der).digest(), digest)
