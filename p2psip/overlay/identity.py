"""
Node identity in self-signed mode, and verification of other nodes' signatures.

RFC 6940 section 13.4 lets an overlay run without an enrolment server: each
node makes its own key pair and a self-signed certificate, and its Node-ID is
derived from the public key, so a Node-ID cannot be chosen without grinding
keys.  Here the key is ECDSA on P-256 and the Node-ID is the first 128 bits of
SHA-256 over the DER SubjectPublicKeyInfo (``p2psip.util.ids.node_id_from_key``).

Signatures are RELOAD ``Signature`` structures (RFC 6940 s6.3.4): a TLS
SignatureAndHashAlgorithm (hash sha256 = 4, signature ecdsa = 3), a
SignerIdentity of type ``cert_hash`` carrying the SHA-256 hash of the
signer's DER certificate, and the DER-encoded ECDSA signature.  Whoever
verifies looks the certificate up by that hash, so certificates travel
separately (in the message security block, or in Join) and are remembered in a
:class:`CertificateCache`.

With enrolment certificates (``p2psip.overlay.certificates``) the Node-ID
and user name come from the certificate's subjectAltName, and which
certificates are believed at all is the cache's :class:`TrustPolicy`: the
overlay root by default, self-signed only in ``--insecure`` rings.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

from p2psip.overlay.certificates import (
    CertificateRefused,
    CertifiedIdentity,
    SelfSignedTrust,
    TrustPolicy,
    claims,
)
from p2psip.overlay.message import Signature, SignerIdentity, SignerIdentityType
from p2psip.util.files import DataFileError, write_atomically
from p2psip.util.ids import id_hex, node_id_from_key

#: TLS HashAlgorithm code points (RFC 5246 s7.4.1.4.1) used in RELOAD.
HASH_ALGORITHM_SHA256 = 4
#: TLS SignatureAlgorithm code point for ECDSA (RFC 5246 s7.4.1.4.1).
SIGNATURE_ALGORITHM_ECDSA = 3

KEY_FILE_NAME = "node-key.pem"
CERTIFICATE_FILE_NAME = "node-cert.pem"

#: Certificates larger than this are refused before parsing; a P-256
#: self-signed certificate is about 400 bytes.
MAX_CERTIFICATE_BYTES = 16384
#: How many certificates a cache remembers before forgetting the least
#: recently used; bounds memory when strangers flood us with certificates.
DEFAULT_CACHE_CERTIFICATES = 4096

# A certificate is valid "forever" (RFC 5280 s4.1.2.5: 99991231235959Z means
# no well-defined expiration) so that making one never reads the clock; the
# Node-ID binding, not the validity period, is what self-signed mode checks.
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)


#: The order of the P-256 group (SEC 2), the range of its private keys.
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


#: The one signature scheme (ECDSA with SHA-256), made once: building it
#: per signature or verification was a measurable share of their cost.
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())

#: How many of its own latest signatures a node remembers (see NodeIdentity.sign).
RECENTLY_SIGNED_MEMORY = 256


class IdentityError(Exception):
    """The node's key or certificate file cannot be used; the message names the file."""


class SignatureError(ValueError):
    """A signature or certificate is not acceptable; ``str(error)`` says why."""


def certificate_hash(certificate_der: bytes) -> bytes:
    """The SHA-256 hash that a ``cert_hash`` SignerIdentity carries."""
    return hashlib.sha256(certificate_der).digest()


def _public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _self_signed_certificate(
    key: ec.EllipticCurvePrivateKey, node_id: int, user_name: str | None = None
) -> bytes:
    # The Node-ID in the subject is for people reading the certificate;
    # verifiers always derive it again from the key.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, id_hex(node_id))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(node_id or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
    )
    if user_name is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(user_name)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class NodeIdentity:
    """
    This node's key pair, certificate and the Node-ID they imply.

    Everything the node signs (message security blocks, StoredData values)
    goes through :meth:`sign`, so the key never leaves this object.
    """

    log = Logger()

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, certificate_der: bytes) -> None:
        certificate = x509.load_der_x509_certificate(certificate_der)
        public_der = _public_key_der(private_key.public_key())
        if _certificate_key_der(certificate) != public_der:
            raise IdentityError("the certificate does not belong to the private key")
        self._private_key = private_key
        self.certificate_der = certificate_der
        #: signature value -> SHA-256 of what it signed, for the last few signatures
        self.recently_signed: dict[bytes, bytes] = {}
        node_ids, user_name = claims(certificate)
        #: The Node-ID the certificate names (enrolled), else the key's (self-signed).
        self.node_id: int = node_ids[0][0] if node_ids else node_id_from_key(public_der)
        #: The certificate's rfc822Name user name, if it has one.
        self.user_name: str | None = user_name
        self._identity = SignerIdentity(
            identity_type=SignerIdentityType.CERT_HASH,
            hash_algorithm=HASH_ALGORITHM_SHA256,
            value=certificate_hash(certificate_der),
        )

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh key, its self-signed certificate and so a fresh Node-ID."""
        key = ec.generate_private_key(ec.SECP256R1())
        node_id = node_id_from_key(_public_key_der(key.public_key()))
        return cls(key, _self_signed_certificate(key, node_id))

    @classmethod
    def from_secret(cls, secret: int) -> NodeIdentity:
        """
        The identity whose private key is ``secret`` (a P-256 scalar).

        For reproducible simulations and benchmarks only: a real node's key
        must come from :meth:`generate`.
        """
        key = ec.derive_private_key(secret % (_P256_ORDER - 1) + 1, ec.SECP256R1())
        node_id = node_id_from_key(_public_key_der(key.public_key()))
        return cls(key, _self_signed_certificate(key, node_id))

    def self_signed_user(self, user_name: str) -> NodeIdentity:
        """
        This key with a self-signed certificate that claims ``user_name``.

        Only meaningful in ``--insecure`` rings, where
        :class:`~p2psip.overlay.certificates.SelfSignedTrust` takes a
        certificate's user name at its word; enrolled rings get user
        certificates from the CA instead.
        """
        der = _self_signed_certificate(self._private_key, self.node_id, user_name)
        return self._sibling(der)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """
        The key itself, for the TLS handshake of overlay links
        (:mod:`p2psip.overlay.tls`); everything else signs through :meth:`sign`.
        """
        return self._private_key

    def with_certificate(self, certificate_der: bytes) -> NodeIdentity:
        """
        This key with another certificate issued for it: a user certificate
        the overlay CA made for this node's key (``p2psip enrol --user``).

        :raises IdentityError: the certificate is for another key or unreadable.
        """
        try:
            return self._sibling(certificate_der)
        except ValueError as e:
            raise IdentityError(f"unreadable certificate: {e}") from e

    def _sibling(self, certificate_der: bytes) -> NodeIdentity:
        # One memory of recent signatures per key, not per certificate: a
        # super-node holds a credential for each of thousands of users, and
        # RECENTLY_SIGNED_MEMORY each would be a bound in name only.
        sibling = NodeIdentity(self._private_key, certificate_der)
        sibling.recently_signed = self.recently_signed
        return sibling

    def signer_identity(self) -> SignerIdentity:
        """The SignerIdentity (cert_hash, SHA-256) that names this node's certificate."""
        return self._identity

    def sign(self, data: bytes) -> Signature:
        """A RELOAD Signature (sha256, ecdsa) over ``data`` made with this node's key."""
        value = self._private_key.sign(data, _ECDSA_SHA256)
        # Remember what we just signed: a node stores its own values right
        # after signing them (a registrar that is also the responsible
        # peer), and checking its own fresh signature again would cost an
        # ECDSA verification per REGISTER for nothing.
        recent = self.recently_signed
        recent[value] = hashlib.sha256(data).digest()
        if len(recent) > RECENTLY_SIGNED_MEMORY:
            del recent[next(iter(recent))]
        return Signature(
            hash_algorithm=HASH_ALGORITHM_SHA256,
            signature_algorithm=SIGNATURE_ALGORITHM_ECDSA,
            identity=self._identity,
            value=value,
        )

    def save(self, directory: str | os.PathLike[str]) -> None:
        """
        Write ``node-key.pem`` (mode 0600) and ``node-cert.pem`` into ``directory``.

        Each file is written under a temporary name and renamed, so a crash
        never leaves half a key behind.
        """
        path = Path(directory)
        key_pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        certificate_pem = x509.load_der_x509_certificate(self.certificate_der).public_bytes(
            serialization.Encoding.PEM
        )
        _write_atomically(path / KEY_FILE_NAME, key_pem, 0o600)
        _write_atomically(path / CERTIFICATE_FILE_NAME, certificate_pem, 0o644)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> NodeIdentity:
        """Read the identity that :meth:`save` wrote; errors name the file and the fix."""
        path = Path(directory)
        key_path = path / KEY_FILE_NAME
        certificate_path = path / CERTIFICATE_FILE_NAME
        key = _load_key(key_path, certificate_path)
        certificate_pem = _read(certificate_path)
        try:
            certificate = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError as e:
            raise IdentityError(
                f"{certificate_path} is not a PEM certificate ({e}); delete it to have "
                f"a new one made for the key in {key_path}"
            ) from e
        try:
            return cls(key, certificate.public_bytes(serialization.Encoding.DER))
        except IdentityError as e:
            raise IdentityError(
                f"{certificate_path} does not belong to the key in {key_path}; delete "
                f"{certificate_path} to have a new one made for that key"
            ) from e

    @classmethod
    def load_or_create(
        cls, directory: str | os.PathLike[str], log: Logger | None = None
    ) -> NodeIdentity:
        """
        The identity stored in a role's data directory, made on first start.

        A key without a certificate gets a new certificate (the Node-ID stays
        the same); a certificate without its key is an error, because making
        a new key would silently change the Node-ID.
        """
        log = log if log is not None else cls.log
        path = Path(directory)
        key_path = path / KEY_FILE_NAME
        certificate_path = path / CERTIFICATE_FILE_NAME
        if not path.is_dir():
            raise IdentityError(
                f"data directory {path} does not exist; create it or set --data-dir"
            )
        if key_path.exists() and not certificate_path.exists():
            key = _load_key(key_path, certificate_path)
            node_id = node_id_from_key(_public_key_der(key.public_key()))
            identity = cls(key, _self_signed_certificate(key, node_id))
            _write_atomically(
                certificate_path,
                x509.load_der_x509_certificate(identity.certificate_der).public_bytes(
                    serialization.Encoding.PEM
                ),
                0o644,
            )
            log.info(
                "made a new certificate {path} for node {node_id}",
                path=str(certificate_path),
                node_id=id_hex(identity.node_id),
            )
            return identity
        if certificate_path.exists() and not key_path.exists():
            raise IdentityError(
                f"{certificate_path} exists but its key {key_path} is missing; restore "
                f"the key, or delete {certificate_path} to start with a new Node-ID"
            )
        if key_path.exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        log.info(
            "created node identity {node_id} in {path}",
            node_id=id_hex(identity.node_id),
            path=str(path),
        )
        return identity


def _load_key(key_path: Path, certificate_path: Path) -> ec.EllipticCurvePrivateKey:
    key_pem = _read(key_path)
    fix = (
        f"restore it from a backup, or delete {key_path} and {certificate_path} "
        "to start with a new Node-ID"
    )
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise IdentityError(f"{key_path} is not an unencrypted PEM private key ({e}); {fix}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError(f"{key_path} must hold an ECDSA P-256 key; {fix}")
    return key


def _certificate_key_der(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise IdentityError(
            f"cannot read {path}: {e.strerror}; check its permissions and the owner "
            "the role runs as"
        ) from e


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    try:
        write_atomically(path, data, mode)
    except DataFileError as e:
        raise IdentityError(str(e)) from e


class _KnownCertificate:
    __slots__ = ("public_key", "identity", "node_id", "der")

    def __init__(
        self, public_key: ec.EllipticCurvePublicKey, identity: CertifiedIdentity, der: bytes
    ) -> None:
        self.public_key = public_key
        self.identity = identity
        self.node_id = identity.node_id
        self.der = der


class CertificateCache:
    """
    Certificates seen in security blocks and Join, indexed by their SHA-256 hash.

    A StoredData or message signature names its signer only by certificate
    hash, so the verifier must have met the certificate before.  Parsed
    public keys are kept so that verifying many signatures by one node parses
    its certificate once.  At most ``max_certificates`` are remembered; the
    least recently used is forgotten first.

    Only certificates ``trust`` accepts are remembered, so a signature by
    anyone else fails as "unknown certificate" wherever it is checked.
    """

    def __init__(
        self,
        max_certificates: int = DEFAULT_CACHE_CERTIFICATES,
        trust: TrustPolicy | None = None,
    ) -> None:
        self.trust: TrustPolicy = trust if trust is not None else SelfSignedTrust()
        self._max_certificates = max_certificates
        self._known: OrderedDict[bytes, _KnownCertificate] = OrderedDict()
        #: certificate hash -> the local identity (node or user credential) it names
        self._local: dict[bytes, NodeIdentity] = {}

    def __len__(self) -> int:
        return len(self._known)

    @property
    def max_certificates(self) -> int:
        """How many certificates are remembered at most (the oldest used go first)."""
        return self._max_certificates

    def __contains__(self, certificate_hash_value: object) -> bool:
        return certificate_hash_value in self._known

    def add(self, certificate_der: bytes) -> int:
        """
        Remember a DER certificate and return the Node-ID it proves.

        :raises SignatureError: the certificate is too large, does not parse,
            its key is not ECDSA P-256, or the trust policy refuses it.
        """
        return self.identify(certificate_der).node_id

    def identify(self, certificate_der: bytes) -> CertifiedIdentity:
        """Remember a DER certificate and return everything it proves; see :meth:`add`."""
        digest = certificate_hash(certificate_der)
        known = self._known.get(digest)
        if known is not None:
            self._known.move_to_end(digest)
            return known.identity
        if len(certificate_der) > MAX_CERTIFICATE_BYTES:
            raise SignatureError(
                f"certificate of {len(certificate_der)} bytes exceeds {MAX_CERTIFICATE_BYTES}"
            )
        try:
            certificate = x509.load_der_x509_certificate(certificate_der)
            public_key = certificate.public_key()
        except Exception as e:
            # These bytes come from any peer.  Besides ValueError, the parser
            # raises its own classes (InvalidVersion for a version field out
            # of range, UnsupportedAlgorithm, ...): all of them mean the same
            # thing here, a certificate we cannot use.
            raise SignatureError(f"unparseable certificate: {type(e).__name__}: {e}") from e
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise SignatureError("certificate key is not ECDSA P-256")
        try:
            identity = self.trust.identify(certificate)
        except CertificateRefused as e:
            raise SignatureError(f"untrusted certificate: {e}") from e
        except Exception as e:  # the parser's own errors, from hostile extensions
            raise SignatureError(f"unreadable certificate: {type(e).__name__}: {e}") from e
        self._known[digest] = _KnownCertificate(public_key, identity, certificate_der)
        while len(self._known) > self._max_certificates:
            self._known.popitem(last=False)
        return identity

    def add_identity(self, identity: NodeIdentity) -> int:
        """
        Remember the local identity: its certificate, and that signatures it
        made itself a moment ago need no second ECDSA check.
        """
        self._local[identity.signer_identity().value] = identity
        return self.add(identity.certificate_der)

    def certificate_for(self, certificate_hash_value: bytes) -> bytes | None:
        """
        The DER certificate with this hash, if known.

        A peer that replicates or hands over stored values sends their
        signers' certificates along, so the receiver can verify values
        stored by peers it has never heard from.
        """
        known = self._known.get(certificate_hash_value)
        return None if known is None else known.der

    def node_id_for(self, identity: SignerIdentity) -> int | None:
        """The Node-ID of a known cert_hash signer, or None when the certificate is unknown."""
        if (
            identity.identity_type != SignerIdentityType.CERT_HASH
            or identity.hash_algorithm != HASH_ALGORITHM_SHA256
        ):
            return None
        known = self._known.get(identity.value)
        return None if known is None else known.node_id

    def identity_for(self, identity: SignerIdentity) -> CertifiedIdentity | None:
        """What a known cert_hash signer's certificate proves, or None when unknown."""
        if (
            identity.identity_type != SignerIdentityType.CERT_HASH
            or identity.hash_algorithm != HASH_ALGORITHM_SHA256
        ):
            return None
        known = self._known.get(identity.value)
        return None if known is None else known.identity

    def verify(self, signature: Signature, data: bytes) -> int:
        """Check ``signature`` over ``data`` and return the signer's Node-ID; see :meth:`verify_signer`."""
        return self.verify_signer(signature, data).node_id

    def verify_signer(self, signature: Signature, data: bytes) -> CertifiedIdentity:
        """
        Check ``signature`` over ``data`` and return what the signer's certificate proves.

        :raises SignatureError: with the reason (unsupported algorithm or
            identity type, unknown certificate, or a bad signature).
        """
        if signature.hash_algorithm != HASH_ALGORITHM_SHA256:
            raise SignatureError(f"unsupported hash algorithm {signature.hash_algorithm}")
        if signature.signature_algorithm != SIGNATURE_ALGORITHM_ECDSA:
            raise SignatureError(f"unsupported signature algorithm {signature.signature_algorithm}")
        identity = signature.identity
        if identity.identity_type != SignerIdentityType.CERT_HASH:
            raise SignatureError(f"unsupported signer identity type {identity.identity_type}")
        if identity.hash_algorithm != HASH_ALGORITHM_SHA256:
            raise SignatureError(
                f"unsupported certificate hash algorithm {identity.hash_algorithm}"
            )
        known = self._known.get(identity.value)
        if known is None:
            raise SignatureError("signer's certificate is unknown")
        self._known.move_to_end(identity.value)
        local = self._local.get(identity.value)
        if local is not None:
            digest = local.recently_signed.get(signature.value)
            if digest is not None and digest == hashlib.sha256(data).digest():
                return known.identity
        try:
            known.public_key.verify(signature.value, data, _ECDSA_SHA256)
        except (InvalidSignature, ValueError) as e:
            raise SignatureError("signature does not match the data") from e
        return known.identity
