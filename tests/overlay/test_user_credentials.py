"""The user credentials a super-node signs its users' values with."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay.certificates import SelfSignedTrust
from p2psip.overlay.identity import CertificateCache, IdentityError, NodeIdentity
from p2psip.overlay.user_credentials import CredentialError, UserCredentials
from p2psip.testing import TEST_CERTIFICATE_EPOCH, enrolled_identity, user_certificate

AUTHORITY = OverlayAuthority.create("credentials.test", TEST_CERTIFICATE_EPOCH)
OTHER_CA = OverlayAuthority.create("credentials.test", TEST_CERTIFICATE_EPOCH)
ALICE = "alice@example.com"


class EnrolledCredentialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.node = enrolled_identity(AUTHORITY)
        self.certificates = CertificateCache(trust=AUTHORITY.trust(lambda: TEST_CERTIFICATE_EPOCH))
        self.certificates.add_identity(self.node)
        self.credentials = UserCredentials(self.node, self.certificates)

    def test_user_certificate_signs_with_the_node_key(self) -> None:
        """A user certificate for our key and Node-ID becomes the user's credential."""
        credential = self.credentials.add_certificate(user_certificate(AUTHORITY, self.node, ALICE))
        self.assertEqual((credential.node_id, credential.user_name), (self.node.node_id, ALICE))
        self.assertIs(self.credentials.credential_for(ALICE), credential)
        self.assertIn(credential.signer_identity().value, self.certificates)

    def test_no_credential_without_enrolment(self) -> None:
        """An enrolled ring makes none up: an unknown user has no credential."""
        self.assertIsNone(self.credentials.credential_for(ALICE))

    def test_certificate_for_another_key(self) -> None:
        """A certificate issued for another key cannot sign for us."""
        stranger = enrolled_identity(AUTHORITY, node_id=self.node.node_id)
        error = self.assertRaises(
            CredentialError,
            self.credentials.add_certificate,
            user_certificate(AUTHORITY, stranger, ALICE),
        )
        self.assertIn("key", str(error))

    def test_certificate_for_another_node_id(self) -> None:
        """Our key under another Node-ID would not match the dictionary key we write."""
        public_key = x509.load_der_x509_certificate(self.node.certificate_der).public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        der = AUTHORITY.issue(
            public_key, node_id=self.node.node_id ^ 1, user_name=ALICE, now=TEST_CERTIFICATE_EPOCH
        )
        error = self.assertRaises(CredentialError, self.credentials.add_certificate, der)
        self.assertIn("Node-ID", str(error))

    def test_certificate_without_user(self) -> None:
        """A node certificate names no user and is no user credential."""
        error = self.assertRaises(
            CredentialError, self.credentials.add_certificate, self.node.certificate_der
        )
        self.assertIn("no user", str(error))

    def test_certificate_from_another_ca(self) -> None:
        """A certificate this overlay's root did not issue is refused."""
        der = user_certificate(OTHER_CA, self.node, ALICE)
        error = self.assertRaises(CredentialError, self.credentials.add_certificate, der)
        self.assertIn("untrusted", str(error))

    def test_garbage(self) -> None:
        """Bytes that are no certificate are a CredentialError too."""
        self.assertRaises(CredentialError, self.credentials.add_certificate, b"not a certificate")


class InsecureCredentialTests(SynchronousTestCase):
    def test_self_signed_on_demand(self) -> None:
        """An insecure node makes a self-signed credential per user and keeps it."""
        node = NodeIdentity.generate()
        certificates = CertificateCache(trust=SelfSignedTrust())
        credentials = UserCredentials(node, certificates, max_self_signed=2)
        alice = credentials.credential_for(ALICE)
        assert alice is not None
        self.assertEqual((alice.node_id, alice.user_name), (node.node_id, ALICE))
        self.assertIs(credentials.credential_for(ALICE), alice)
        credentials.credential_for("bob@example.com")
        credentials.credential_for("carol@example.com")
        self.assertEqual(
            [c.user_name for c in credentials.all()], ["bob@example.com", "carol@example.com"]
        )

    def test_certificate_by_signer(self) -> None:
        """A held credential's certificate is found by its SignerIdentity; an evicted one's is not."""
        node = NodeIdentity.generate()
        credentials = UserCredentials(
            node, CertificateCache(trust=SelfSignedTrust()), max_self_signed=1
        )
        alice = credentials.credential_for(ALICE)
        assert alice is not None
        signer = alice.signer_identity().value
        self.assertEqual(credentials.certificate_for_signer(signer), alice.certificate_der)
        credentials.credential_for("bob@example.com")
        self.assertIsNone(credentials.certificate_for_signer(signer))


class WithCertificateTests(SynchronousTestCase):
    def test_mismatched_certificate(self) -> None:
        """NodeIdentity.with_certificate refuses a certificate for another key."""
        node = NodeIdentity.generate()
        other = NodeIdentity.generate()
        self.assertRaises(IdentityError, node.with_certificate, other.certificate_der)
        self.assertRaises(IdentityError, node.with_certificate, b"junk")
