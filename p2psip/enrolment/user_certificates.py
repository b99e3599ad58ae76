"""
User certificates a super-node holds for the phones it registers.

An ordinary SIP phone has a password, not a certificate.  The super-node
checks the password (Digest) and then writes the user's SIP-REGISTRATION,
which USER-NODE-MATCH (RFC 7904 s3) lets only a signer whose certificate
names that user *and* the Node-ID of the dictionary key write.  So the
super-node keeps, for each user it serves, a certificate from the overlay CA
naming the user and the super-node's own Node-ID, issued for the
super-node's own key (``p2psip enrol --user``).  The private key never
leaves ``node-key.pem``; these files are certificates only.

Layout: ``DATA_DIR/user-certs/<user name>.pem``, one PEM certificate each.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from p2psip.util.files import DataFileError, write_atomically

DIRECTORY_NAME = "user-certs"

# user@domain with the characters a SIP user part and a host name use; no
# path separators, so a user name can never leave the directory.
_USER_NAME = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=%-]{1,64}@[A-Za-z0-9.-]{1,253}$")


class UserCertificateError(Exception):
    """A user certificate cannot be read or written; the message names the file."""


def valid_user_name(user_name: str) -> bool:
    """True for a ``user@domain`` name that may name a certificate file."""
    return _USER_NAME.match(user_name) is not None


class UserCertificates:
    """The ``user-certs`` directory of one super-node's data directory."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.directory = Path(data_dir) / DIRECTORY_NAME

    def path_for(self, user_name: str) -> Path:
        if not valid_user_name(user_name):
            raise UserCertificateError(f"{user_name!r} is not a user@domain name")
        return self.directory / f"{user_name.lower()}.pem"

    def save(self, user_name: str, certificate_der: bytes) -> Path:
        """Write ``user_name``'s certificate (atomically) and return its path."""
        path = self.path_for(user_name)
        pem = x509.load_der_x509_certificate(certificate_der).public_bytes(
            serialization.Encoding.PEM
        )
        try:
            self.directory.mkdir(mode=0o755, exist_ok=True)
            write_atomically(path, pem, 0o644)
        except (OSError, DataFileError) as e:
            raise UserCertificateError(f"cannot write {path}: {e}") from e
        return path

    def load_all(self) -> dict[str, bytes]:
        """Every user certificate, DER, by lower-case user name; a bad file is an error."""
        if not self.directory.is_dir():
            return {}
        found: dict[str, bytes] = {}
        for path in sorted(self.directory.glob("*.pem")):
            user_name = path.name[: -len(".pem")]
            try:
                certificate = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError) as e:
                raise UserCertificateError(
                    f"{path} is not a readable PEM certificate ({e}); enrol the user again "
                    "with `p2psip enrol --user` or remove the file"
                ) from e
            found[user_name] = certificate.public_bytes(serialization.Encoding.DER)
        return found
