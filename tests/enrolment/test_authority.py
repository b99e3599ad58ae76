"""
The overlay CA: what it issues is what OverlayRootTrust accepts, and nothing else is.
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import TestCase

from p2psip.enrolment.authority import (
    AuthorityError,
    OverlayAuthority,
    RequestRefused,
    load_csr,
)
from p2psip.overlay.certificates import CertificateRefused, reload_uri
from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError
from p2psip.testing import TEST_CERTIFICATE_EPOCH, enrolled_identity

NOW = TEST_CERTIFICATE_EPOCH
OVERLAY = "example.org"


def csr_for(key: ec.EllipticCurvePrivateKey, uri: str | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "me")])
    )
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class AuthorityTests(TestCase):
    def setUp(self) -> None:
        self.authority = OverlayAuthority.create(OVERLAY, NOW)
        self.trust = self.authority.trust(lambda: NOW)

    def test_issued_identity(self) -> None:
        """The Node-ID and user name come from the certificate the CA issued."""
        identity = enrolled_identity(self.authority, user_name="alice@example.org", node_id=42)
        self.assertEqual(identity.node_id, 42)
        self.assertEqual(identity.user_name, "alice@example.org")
        proved = self.trust.identify(x509.load_der_x509_certificate(identity.certificate_der))
        self.assertEqual(proved.node_ids, (42,))
        self.assertEqual(proved.user_name, "alice@example.org")

    def test_csr_claims_ignored(self) -> None:
        """A CSR that asks for a Node-ID gets a random one of the CA's choosing."""
        key = ec.generate_private_key(ec.SECP256R1())
        wanted = reload_uri(7, OVERLAY)
        der = self.authority.issue_for_csr(csr_for(key, wanted), user_name=None, now=NOW)
        identity = NodeIdentity(key, der)
        self.assertNotEqual(identity.node_id, 7)
        self.assertIsNone(identity.user_name)

    def test_other_ca_refused(self) -> None:
        other = OverlayAuthority.create(OVERLAY, NOW)
        stranger = enrolled_identity(other)
        cache = CertificateCache(trust=self.trust)
        self.assertRaises(SignatureError, cache.add, stranger.certificate_der)

    def test_self_signed_refused(self) -> None:
        cache = CertificateCache(trust=self.trust)
        self.assertRaises(SignatureError, cache.add, NodeIdentity.generate().certificate_der)

    def test_other_overlay_refused(self) -> None:
        identity = enrolled_identity(self.authority)
        trust = self.authority.trust(lambda: NOW)
        trust.overlay_name = "elsewhere.org"
        certificate = x509.load_der_x509_certificate(identity.certificate_der)
        self.assertRaises(CertificateRefused, trust.identify, certificate)

    def test_validity_period(self) -> None:
        identity = enrolled_identity(self.authority)
        certificate = x509.load_der_x509_certificate(identity.certificate_der)
        late = self.authority.trust(lambda: NOW + 2 * 365 * 24 * 3600)
        early = self.authority.trust(lambda: NOW - 2 * 24 * 3600)
        self.assertRaises(CertificateRefused, late.identify, certificate)
        self.assertRaises(CertificateRefused, early.identify, certificate)

    def test_forged_issuer_name(self) -> None:
        """A certificate that copies the root's name but not its key is refused."""
        key = ec.generate_private_key(ec.SECP256R1())
        forged = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
            .issuer_name(self.authority.root.subject)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
            .not_valid_after(datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(reload_uri(5, OVERLAY))]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        self.assertRaises(CertificateRefused, self.trust.identify, forged)

    def test_bad_csr(self) -> None:
        self.assertRaises(RequestRefused, load_csr, b"garbage")
        self.assertRaises(RequestRefused, load_csr, b"x" * 9000)
        good = bytearray(csr_for(ec.generate_private_key(ec.SECP256R1())))
        der = x509.load_pem_x509_csr(bytes(good)).public_bytes(serialization.Encoding.DER)
        flipped = bytearray(der)
        flipped[-5] ^= 1
        self.assertRaises(RequestRefused, load_csr, bytes(flipped))

    def test_files(self) -> None:
        directory = self.mktemp()

        os.mkdir(directory)
        made, created = OverlayAuthority.load_or_create(directory, OVERLAY, NOW)
        again, created_again = OverlayAuthority.load_or_create(directory, OVERLAY, NOW)
        self.assertEqual((created, created_again), (True, False))
        self.assertEqual(made.root_der, again.root_der)
        os.remove(os.path.join(directory, "ca-cert.pem"))
        self.assertRaises(AuthorityError, OverlayAuthority.load_or_create, directory, OVERLAY, NOW)
