"""Tests for node identities and certificate-based signature verification."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from attrs import evolve
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.identity import (
    CERTIFICATE_FILE_NAME,
    HASH_ALGORITHM_SHA256,
    KEY_FILE_NAME,
    SIGNATURE_ALGORITHM_ECDSA,
    CertificateCache,
    IdentityError,
    NodeIdentity,
    SignatureError,
    certificate_hash,
)
from p2psip.overlay.message import SignerIdentity, SignerIdentityType
from p2psip.util.ids import node_id_from_key

# Generating keys costs a little; tests share a few identities.
ALICE = NodeIdentity.generate()
BOB = NodeIdentity.generate()


def _certificate_with_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(
            x509.load_der_x509_certificate(ALICE.certificate_der).not_valid_before_utc
        )
        .not_valid_after(x509.load_der_x509_certificate(ALICE.certificate_der).not_valid_after_utc)
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class NodeIdentityTests(SynchronousTestCase):
    def test_node_id_from_certificate_key(self) -> None:
        """The Node-ID is derived from the certificate's SubjectPublicKeyInfo."""
        certificate = x509.load_der_x509_certificate(ALICE.certificate_der)
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(ALICE.node_id, node_id_from_key(spki))
        self.assertNotEqual(ALICE.node_id, BOB.node_id)

    def test_signer_identity_is_certificate_hash(self) -> None:
        """The signer identity is a cert_hash with the SHA-256 of the certificate."""
        self.assertEqual(
            ALICE.signer_identity(),
            SignerIdentity(
                identity_type=SignerIdentityType.CERT_HASH,
                hash_algorithm=HASH_ALGORITHM_SHA256,
                value=certificate_hash(ALICE.certificate_der),
            ),
        )

    def test_signature_algorithms(self) -> None:
        """Signatures are labelled sha256 (4) and ecdsa (3)."""
        signature = ALICE.sign(b"data")
        self.assertEqual(
            (signature.hash_algorithm, signature.signature_algorithm),
            (4, 3),
        )
        self.assertEqual(signature.identity, ALICE.signer_identity())

    def test_certificate_must_match_key(self) -> None:
        """An identity cannot be built from a key and someone else's certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        self.assertRaises(IdentityError, NodeIdentity, key, ALICE.certificate_der)


class IdentityFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def test_save_and_load(self) -> None:
        """A saved identity loads back with the same Node-ID and certificate."""
        ALICE.save(self.directory)
        loaded = NodeIdentity.load(self.directory)
        self.assertEqual(loaded.node_id, ALICE.node_id)
        self.assertEqual(loaded.certificate_der, ALICE.certificate_der)

    def test_key_file_is_private(self) -> None:
        """The key file is readable by its owner only."""
        ALICE.save(self.directory)
        mode = stat.S_IMODE(os.stat(self.directory / KEY_FILE_NAME).st_mode)
        self.assertEqual(mode, 0o600)

    def test_load_or_create_creates_once(self) -> None:
        """The first start creates an identity, later starts load the same one."""
        with capturedLogs() as events:
            first = NodeIdentity.load_or_create(self.directory)
        second = NodeIdentity.load_or_create(self.directory)
        self.assertEqual(first.node_id, second.node_id)
        self.assertEqual([e["log_level"].name for e in events], ["info"])
        self.assertTrue((self.directory / CERTIFICATE_FILE_NAME).exists())

    def test_load_or_create_uses_given_logger(self) -> None:
        """The creation event goes to the logger the role passes in."""
        seen: list[dict[str, object]] = []
        NodeIdentity.load_or_create(self.directory, log=Logger(observer=seen.append))
        self.assertEqual(len(seen), 1)

    def test_missing_certificate_is_remade(self) -> None:
        """A key without its certificate keeps its Node-ID and gets a new certificate."""
        ALICE.save(self.directory)
        (self.directory / CERTIFICATE_FILE_NAME).unlink()
        loaded = NodeIdentity.load_or_create(self.directory)
        self.assertEqual(loaded.node_id, ALICE.node_id)
        self.assertEqual(NodeIdentity.load(self.directory).node_id, ALICE.node_id)

    def test_missing_key_is_an_error(self) -> None:
        """A certificate without its key is an error naming the key file."""
        ALICE.save(self.directory)
        (self.directory / KEY_FILE_NAME).unlink()
        error = self.assertRaises(IdentityError, NodeIdentity.load_or_create, self.directory)
        self.assertIn(KEY_FILE_NAME, str(error))

    def test_garbage_key_names_the_file(self) -> None:
        """A corrupt key file gives an error that names it and the fix."""
        ALICE.save(self.directory)
        (self.directory / KEY_FILE_NAME).write_bytes(b"not a key")
        error = self.assertRaises(IdentityError, NodeIdentity.load_or_create, self.directory)
        self.assertIn(str(self.directory / KEY_FILE_NAME), str(error))
        self.assertIn("delete", str(error))

    def test_garbage_certificate_names_the_file(self) -> None:
        """A corrupt certificate file gives an error that names it."""
        ALICE.save(self.directory)
        (self.directory / CERTIFICATE_FILE_NAME).write_bytes(b"not a certificate")
        error = self.assertRaises(IdentityError, NodeIdentity.load, self.directory)
        self.assertIn(str(self.directory / CERTIFICATE_FILE_NAME), str(error))

    def test_mismatched_certificate_names_the_file(self) -> None:
        """A certificate of another key gives an error naming the certificate file."""
        ALICE.save(self.directory)
        other = Path(self.mktemp())
        other.mkdir()
        BOB.save(other)
        (self.directory / CERTIFICATE_FILE_NAME).write_bytes(
            (other / CERTIFICATE_FILE_NAME).read_bytes()
        )
        error = self.assertRaises(IdentityError, NodeIdentity.load, self.directory)
        self.assertIn(str(self.directory / CERTIFICATE_FILE_NAME), str(error))

    def test_unreadable_key_names_the_file(self) -> None:
        """A key path that cannot be read gives an error naming it."""
        (self.directory / KEY_FILE_NAME).mkdir()
        error = self.assertRaises(IdentityError, NodeIdentity.load_or_create, self.directory)
        self.assertIn(str(self.directory / KEY_FILE_NAME), str(error))

    def test_rsa_key_is_refused(self) -> None:
        """A key file holding something other than a P-256 key is refused."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        (self.directory / KEY_FILE_NAME).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        error = self.assertRaises(IdentityError, NodeIdentity.load_or_create, self.directory)
        self.assertIn("P-256", str(error))

    def test_missing_directory_names_the_option(self) -> None:
        """A data directory that does not exist is an error naming --data-dir."""
        error = self.assertRaises(
            IdentityError, NodeIdentity.load_or_create, self.directory / "absent"
        )
        self.assertIn("--data-dir", str(error))


class CertificateCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cache = CertificateCache()

    def test_add_returns_node_id(self) -> None:
        """Adding a certificate yields the Node-ID its key implies."""
        self.assertEqual(self.cache.add(ALICE.certificate_der), ALICE.node_id)
        self.assertEqual(self.cache.add(ALICE.certificate_der), ALICE.node_id)
        self.assertEqual(len(self.cache), 1)

    def test_verify_returns_signer(self) -> None:
        """A good signature by a known certificate verifies to the signer's Node-ID."""
        self.cache.add(ALICE.certificate_der)
        self.assertEqual(self.cache.verify(ALICE.sign(b"hello"), b"hello"), ALICE.node_id)
        self.assertEqual(self.cache.node_id_for(ALICE.signer_identity()), ALICE.node_id)

    def test_tampered_data_rejected(self) -> None:
        """A signature over other data is refused."""
        self.cache.add(ALICE.certificate_der)
        error = self.assertRaises(SignatureError, self.cache.verify, ALICE.sign(b"hello"), b"hellO")
        self.assertIn("does not match", str(error))

    def test_unknown_certificate_rejected(self) -> None:
        """A signature by a certificate never seen is refused."""
        self.cache.add(ALICE.certificate_der)
        error = self.assertRaises(SignatureError, self.cache.verify, BOB.sign(b"x"), b"x")
        self.assertIn("unknown", str(error))
        self.assertIsNone(self.cache.node_id_for(BOB.signer_identity()))

    def test_borrowed_identity_rejected(self) -> None:
        """Bob's signature claiming Alice's certificate hash is refused."""
        self.cache.add(ALICE.certificate_der)
        forged = evolve(BOB.sign(b"x"), identity=ALICE.signer_identity())
        self.assertRaises(SignatureError, self.cache.verify, forged, b"x")

    def test_unsupported_algorithms_rejected(self) -> None:
        """Other hash, signature or identity types are refused with a reason."""
        self.cache.add(ALICE.certificate_der)
        good = ALICE.sign(b"x")
        for bad in (
            evolve(good, hash_algorithm=2),
            evolve(good, signature_algorithm=1),
            evolve(good, identity=evolve(good.identity, identity_type=SignerIdentityType.NONE)),
            evolve(good, identity=evolve(good.identity, hash_algorithm=2)),
        ):
            error = self.assertRaises(SignatureError, self.cache.verify, bad, b"x")
            self.assertIn("unsupported", str(error))
        self.assertEqual(
            (good.hash_algorithm, good.signature_algorithm),
            (HASH_ALGORITHM_SHA256, SIGNATURE_ALGORITHM_ECDSA),
        )

    def test_garbage_certificate_rejected(self) -> None:
        """Bytes that are not a certificate are refused."""
        self.assertRaises(SignatureError, self.cache.add, b"\x30\x03\x02\x01\x00")
        self.assertEqual(len(self.cache), 0)

    def test_oversized_certificate_rejected(self) -> None:
        """A huge certificate is refused before it is parsed."""
        error = self.assertRaises(SignatureError, self.cache.add, b"\x30" * 100_000)
        self.assertIn("exceeds", str(error))

    def test_non_p256_certificate_rejected(self) -> None:
        """Certificates with RSA or other-curve keys are refused."""
        for key in (
            rsa.generate_private_key(public_exponent=65537, key_size=1024),
            ec.generate_private_key(ec.SECP384R1()),
        ):
            self.assertRaises(SignatureError, self.cache.add, _certificate_with_key(key))

    def test_least_recently_used_forgotten(self) -> None:
        """A full cache forgets the certificate used least recently."""
        cache = CertificateCache(max_certificates=2)
        carol = NodeIdentity.generate()
        cache.add(ALICE.certificate_der)
        cache.add(BOB.certificate_der)
        cache.verify(ALICE.sign(b"x"), b"x")
        cache.add(carol.certificate_der)
        self.assertIn(certificate_hash(ALICE.certificate_der), cache)
        self.assertNotIn(certificate_hash(BOB.certificate_der), cache)
        self.assertEqual(len(cache), 2)

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=600))
    def test_random_certificates_only_signature_error(self, data: bytes) -> None:
        """Random bytes as a certificate raise only SignatureError."""
        try:
            CertificateCache().add(data)
        except SignatureError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=120), st.binary(max_size=64))
    def test_random_signatures_only_signature_error(self, value: bytes, data: bytes) -> None:
        """Random signature bytes raise only SignatureError."""
        cache = CertificateCache()
        cache.add(ALICE.certificate_der)
        forged = evolve(ALICE.sign(b""), value=value)
        self.assertRaises(SignatureError, cache.verify, forged, data)

    def test_corrupted_certificates_only_signature_error(self) -> None:
        """Every single-byte corruption of a real certificate raises only SignatureError or adds a certificate."""
        original = bytearray(ALICE.certificate_der)
        for position in range(len(original)):
            corrupted = bytearray(original)
            corrupted[position] ^= 0xFF
            try:
                CertificateCache().add(bytes(corrupted))
            except SignatureError:
                pass


class OwnSignatureShortcutTests(SynchronousTestCase):
    def test_own_fresh_signature_verifies_without_ecdsa(self) -> None:
        """A node's own fresh signature verifies; the same signature over other data does not."""
        from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError

        identity = NodeIdentity.generate()
        cache = CertificateCache()
        cache.add_identity(identity)
        signature = identity.sign(b"value")
        self.assertEqual(cache.verify(signature, b"value"), identity.node_id)
        self.assertRaises(SignatureError, cache.verify, signature, b"tampered")
        identity.recently_signed.clear()
        self.assertEqual(cache.verify(signature, b"value"), identity.node_id)
