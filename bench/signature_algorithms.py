"""
What one signature and one verification cost here: ECDSA P-256 against Ed25519.

RFC 6940's ``SignatureAndHashAlgorithm`` could name Ed25519 (RFC 8422:
signature 7, hash 8 "intrinsic") instead of the ECDSA P-256 with SHA-256
every node uses now; ``docs/overlay.md`` says why it is not used, and this
script gives the figures it rests on, for the ``cryptography`` and OpenSSL
this host has.  It signs and verifies a message-sized input (300 bytes) in
a loop and prints CPU microseconds per operation (the best of five rounds,
so other work on a shared host disturbs it less).  Asserts nothing.

    .venv/bin/python bench/signature_algorithms.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

DATA = bytes(range(256)) + bytes(44)


def best_us(operation: Callable[[], object], rounds: int) -> float:
    """CPU microseconds per call, the best of five rounds of ``rounds`` calls."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(rounds):
            operation()
        best = min(best, time.process_time() - started)
    return 1e6 * best / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args()
    scheme = ec.ECDSA(hashes.SHA256())
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_public = p256.public_key()
    p256_signature = p256.sign(DATA, scheme)
    edwards = ed25519.Ed25519PrivateKey.generate()
    edwards_public = edwards.public_key()
    edwards_signature = edwards.sign(DATA)
    rows = [
        (
            "ECDSA P-256, SHA-256 (in use)",
            best_us(lambda: p256.sign(DATA, scheme), args.rounds),
            best_us(lambda: p256_public.verify(p256_signature, DATA, scheme), args.rounds),
        ),
        (
            "Ed25519",
            best_us(lambda: edwards.sign(DATA), args.rounds),
            best_us(lambda: edwards_public.verify(edwards_signature, DATA), args.rounds),
        ),
    ]
    print(f"cryptography {cryptography.__version__}, {backend.openssl_version_text()}\n")
    print("| algorithm | sign (CPU us) | verify (CPU us) |\n|---|---:|---:|")
    for name, sign, verify in rows:
        print(f"| {name} | {sign:.0f} | {verify:.0f} |")


if __name__ == "__main__":
    main()
