"""
The overlay's certificate authority (RFC 6940 s11.3), sans-IO.

The bootstrap role runs it: an ECDSA P-256 key and a self-signed root
certificate (made on first start in the data directory, or supplied by the
operator), and :meth:`OverlayAuthority.issue`, which turns a certificate
signing request into a node or user certificate.  The authority, not the
requester, picks the Node-ID (uniformly at random), so no peer can put
itself where it likes on the ring; the requester only proves it holds the
key (the CSR's own signature).

A certificate it issues names the Node-ID as ``reload://<id>@<overlay>/``
and the user name as an rfc822Name, both in the subjectAltName, which is
what :class:`~p2psip.overlay.certificates.OverlayRootTrust` reads back.

Nothing here touches the network or the clock: every call that depends on
time is given ``now`` (seconds since the epoch).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from p2psip.overlay.certificates import OverlayRootTrust, reload_uri
from p2psip.util.files import DataFileError, write_atomically
from p2psip.util.ids import NODE_ID_BYTES

CA_KEY_FILE_NAME = "ca-key.pem"
CA_CERTIFICATE_FILE_NAME = "ca-cert.pem"

#: How long an issued certificate is valid by default: a year, after which
#: the holder enrols again (``p2psip enrol``).
DEFAULT_CERTIFICATE_LIFETIME = 365 * 24 * 3600
#: How long the root is valid: twenty years.
ROOT_LIFETIME = 20 * 365 * 24 * 3600
#: Issued certificates start this long before ``now``, so a verifier whose
#: clock is a little behind the CA's still accepts a fresh certificate.
CLOCK_SKEW_ALLOWANCE = 3600

#: Largest CSR read, before parsing; a P-256 CSR is about 250 bytes.
MAX_CSR_BYTES = 8192


class AuthorityError(Exception):
    """The CA's key or root cannot be used; the message names the file and the fix."""


class RequestRefused(ValueError):
    """A certificate signing request cannot be granted; ``str(error)`` says why."""


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def random_node_id(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> int:
    """A Node-ID chosen uniformly at random, never 0."""
    while True:
        node_id = int.from_bytes(random_bytes(NODE_ID_BYTES), "big")
        if node_id:
            return node_id


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """
    Parse a PEM or DER CSR from an untrusted requester and check its signature.

    :raises RequestRefused: too large, unparseable, not ECDSA P-256, or not
        signed by its own key.
    """
    if len(data) > MAX_CSR_BYTES:
        raise RequestRefused(f"CSR of {len(data)} bytes exceeds {MAX_CSR_BYTES}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
        key = csr.public_key()
        valid = csr.is_signature_valid
    except Exception as e:  # the parser raises several classes for hostile input
        raise RequestRefused(f"unreadable CSR: {type(e).__name__}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise RequestRefused("the CSR's key must be ECDSA P-256")
    if not valid:
        raise RequestRefused("the CSR is not signed by its own key")
    return csr


class OverlayAuthority:
    """The CA key and root certificate of one overlay."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, root_der: bytes, overlay_name: str) -> None:
        root = x509.load_der_x509_certificate(root_der)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        root_public = root.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if public != root_public:
            raise AuthorityError("the root certificate does not belong to the CA key")
        self._key = key
        self.root = root
        self.root_der = root_der
        self.overlay_name = overlay_name

    @classmethod
    def create(cls, overlay_name: str, now: float) -> OverlayAuthority:
        """A fresh CA key and a self-signed root for ``overlay_name``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, overlay_name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{overlay_name} overlay CA"),
            ]
        )
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW_ALLOWANCE))
            .not_valid_after(_utc(now + ROOT_LIFETIME))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, root.public_bytes(serialization.Encoding.DER), overlay_name)

    def trust(self, now: Callable[[], float]) -> OverlayRootTrust:
        """The trust policy that accepts exactly what this CA issues."""
        return OverlayRootTrust(self.root_der, self.overlay_name, now)

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        node_id: int,
        user_name: str | None,
        now: float,
        lifetime: float = DEFAULT_CERTIFICATE_LIFETIME,
    ) -> bytes:
        """
        A DER certificate binding ``public_key`` to ``node_id`` and ``user_name``.

        The certificate serves as both a TLS client and server certificate,
        since overlay links are mutually authenticated.
        """
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(reload_uri(node_id, self.overlay_name))
        ]
        if user_name is not None:
            names.append(x509.RFC822Name(user_name))
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, user_name or f"node {node_id:032x}")]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW_ALLOWANCE))
            .not_valid_after(_utc(now + lifetime))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.DER)

    def issue_server_certificate(
        self,
        public_key: ec.EllipticCurvePublicKey,
        hosts: Sequence[str],
        *,
        now: float,
        lifetime: float = DEFAULT_CERTIFICATE_LIFETIME,
    ) -> bytes:
        """
        A DER TLS server certificate for the enrolment server at ``hosts``.

        It names the hosts (IP addresses as iPAddress, names as dNSName) and
        no Node-ID, so no trust policy accepts it as a node's identity; a
        peer that pins this CA checks the enrolment server against it.
        """
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        if not names:
            raise ValueError("a server certificate needs at least one host")
        certificate = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [x509.NameAttribute(NameOID.COMMON_NAME, f"{self.overlay_name} enrolment")]
                )
            )
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(now - CLOCK_SKEW_ALLOWANCE))
            .not_valid_after(_utc(now + lifetime))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.DER)

    def sign(self, data: bytes) -> bytes:
        """An ECDSA-SHA256 signature (DER) over ``data`` with the CA key (the configuration document)."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def issue_for_csr(
        self,
        csr_data: bytes,
        *,
        user_name: str | None,
        now: float,
        node_id: int | None = None,
        lifetime: float = DEFAULT_CERTIFICATE_LIFETIME,
    ) -> bytes:
        """
        Grant a CSR: a certificate for its key with a Node-ID this CA picks.

        ``node_id`` is given only when the caller has already established
        that the requester holds that Node-ID (a super-node asking for a
        user certificate bound to its own Node-ID); otherwise a fresh random
        one is chosen.  Anything the CSR itself claims is ignored.
        """
        csr = load_csr(csr_data)
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return self.issue(
            key,
            node_id=node_id if node_id is not None else random_node_id(),
            user_name=user_name,
            now=now,
            lifetime=lifetime,
        )

    # -- files ---------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``ca-key.pem`` (mode 0600) and ``ca-cert.pem`` into ``directory``."""
        path = Path(directory)
        key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            write_atomically(path / CA_KEY_FILE_NAME, key_pem, 0o600)
            write_atomically(
                path / CA_CERTIFICATE_FILE_NAME,
                self.root.public_bytes(serialization.Encoding.PEM),
                0o644,
            )
        except DataFileError as e:
            raise AuthorityError(str(e)) from e

    @classmethod
    def load(
        cls, key_path: str | os.PathLike[str], root_path: str | os.PathLike[str], overlay_name: str
    ) -> OverlayAuthority:
        """Read a CA key and root (PEM); errors name the file and the fix."""
        key_file, root_file = Path(key_path), Path(root_path)
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except OSError as e:
            raise AuthorityError(f"cannot read the CA key {key_file}: {e.strerror}") from e
        except (ValueError, TypeError) as e:
            raise AuthorityError(
                f"{key_file} is not an unencrypted PEM private key ({e}); restore it, or "
                "remove it and the root to make a new CA (every enrolled node must then enrol again)"
            ) from e
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise AuthorityError(f"{key_file} must hold an ECDSA P-256 key")
        try:
            root = x509.load_pem_x509_certificate(root_file.read_bytes())
        except OSError as e:
            raise AuthorityError(f"cannot read the CA root {root_file}: {e.strerror}") from e
        except ValueError as e:
            raise AuthorityError(f"{root_file} is not a PEM certificate ({e})") from e
        try:
            return cls(key, root.public_bytes(serialization.Encoding.DER), overlay_name)
        except AuthorityError as e:
            raise AuthorityError(f"{root_file} does not belong to the key in {key_file}") from e

    @classmethod
    def load_or_create(
        cls, directory: str | os.PathLike[str], overlay_name: str, now: float
    ) -> tuple[OverlayAuthority, bool]:
        """
        The CA kept in a data directory, made there on first start.

        Returns the authority and whether it was just created.  A key
        without its root (or the reverse) is an error rather than a reason
        to make a new CA, which would silently disown every enrolled node.
        """
        path = Path(directory)
        key_path, root_path = path / CA_KEY_FILE_NAME, path / CA_CERTIFICATE_FILE_NAME
        if key_path.exists() or root_path.exists():
            if not (key_path.exists() and root_path.exists()):
                missing = root_path if key_path.exists() else key_path
                raise AuthorityError(
                    f"{missing} is missing while its pair exists; restore it from a backup"
                )
            return cls.load(key_path, root_path, overlay_name), False
        authority = cls.create(overlay_name, now)
        authority.save(path)
        return authority, True
