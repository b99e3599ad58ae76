"""
What enrolment leaves in a peer's data directory.

* ``node-key.pem``: the node's ECDSA P-256 key (mode 0600), made by
  ``p2psip enrol`` if absent; it never leaves the directory.
* ``node-cert.pem``: the certificate the overlay CA issued for that key,
  naming the Node-ID the CA chose and the account's user name.
* ``overlay-root.pem``: the overlay's root certificate, the only CA the
  node trusts (``OverlayRootTrust``); pinned by fingerprint at enrolment.
* ``overlay-config.xml``: the signed configuration document fetched at
  enrolment (RFC 6940 s11.1), kept for the operator to read.
* ``user-certs/``: user certificates (:mod:`p2psip.enrolment.user_certificates`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from p2psip.overlay.identity import CERTIFICATE_FILE_NAME, KEY_FILE_NAME
from p2psip.util.files import DataFileError, write_atomically

ROOT_FILE_NAME = "overlay-root.pem"
CONFIGURATION_FILE_NAME = "overlay-config.xml"
#: A root certificate file larger than this is refused unread.
MAX_CERTIFICATE_FILE_BYTES = 64 * 1024


class NodeFileError(Exception):
    """A file of the data directory cannot be used; the message names it and the fix."""


def key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_FILE_NAME


def certificate_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / CERTIFICATE_FILE_NAME


def root_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / ROOT_FILE_NAME


def load_key(data_dir: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey | None:
    """The node key in ``data_dir``, or None when there is none yet."""
    path = key_path(data_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise NodeFileError(f"cannot read {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise NodeFileError(f"{path} is not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise NodeFileError(f"{path} must hold an ECDSA P-256 key")
    return key


def load_or_make_key(data_dir: str | os.PathLike[str]) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The node key in ``data_dir``, or a new one (not yet written); and whether it is new."""
    key = load_key(data_dir)
    if key is not None:
        return key, False
    return ec.generate_private_key(ec.SECP256R1()), True


def read_root(path: str | os.PathLike[str]) -> bytes:
    """
    The DER of a PEM (or DER) root certificate file.

    :raises NodeFileError: naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CERTIFICATE_FILE_BYTES + 1)
    except OSError as e:
        raise NodeFileError(f"cannot read the overlay root {path}: {e.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise NodeFileError(f"{path} is not a certificate ({e})") from None
    return certificate.public_bytes(serialization.Encoding.DER)


def _pem(certificate_der: bytes) -> bytes:
    return x509.load_der_x509_certificate(certificate_der).public_bytes(serialization.Encoding.PEM)


def save_node_enrolment(
    data_dir: str | os.PathLike[str],
    key: ec.EllipticCurvePrivateKey,
    certificate_der: bytes,
    root_der: bytes,
    document: bytes | None,
) -> None:
    """
    Write what enrolment brought: the key (only if absent), certificate, root and document.

    ``document`` is the configuration document fetched with it (None: none
    was fetched, as when the CA is at hand and issues directly).

    The certificate is written last, so a crash in between leaves a data
    directory that still asks for enrolment rather than one that is half
    enrolled.
    """
    directory = Path(data_dir)
    try:
        if not key_path(directory).exists():
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_atomically(key_path(directory), pem, 0o600)
        write_atomically(root_path(directory), _pem(root_der), 0o644)
        if document is not None:
            write_atomically(directory / CONFIGURATION_FILE_NAME, document, 0o644)
        write_atomically(certificate_path(directory), _pem(certificate_der), 0o644)
    except DataFileError as e:
        raise NodeFileError(str(e)) from e
