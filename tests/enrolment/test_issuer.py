"""
The enrolment server's decisions: who gets which certificate, and who is
refused (with which status) or throttled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.accounts import AccountsFile, Grant
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.issuer import CertificateIssuer, EnrolmentRefused, Issued
from p2psip.enrolment.requests import EnrolmentRequest
from p2psip.overlay.certificates import reload_uri
from p2psip.overlay.identity import NodeIdentity
from p2psip.sip.login_throttle import LoginThrottle
from p2psip.testing import TEST_CERTIFICATE_EPOCH, enrolled_identity

OVERLAY = "example.org"


def csr(key: ec.EllipticCurvePrivateKey, asks_for: int | None = None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "me")])
    )
    if asks_for is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(reload_uri(asks_for, OVERLAY))]
            ),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class IssuerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(TEST_CERTIFICATE_EPOCH)
        self.authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        directory = Path(self.mktemp())
        directory.mkdir()
        self.accounts = AccountsFile.load(directory / "accounts", missing_ok=True)
        self.accounts.set_account("ops@example.org", "ops-pw", [Grant.PEER])
        self.accounts.set_account("alice@example.org", "alice-pw", [Grant.USER])
        self.throttle = LoginThrottle(self.clock, failures_per_source=3, failures_per_user=5)
        self.issuer = CertificateIssuer(self.authority, self.accounts, self.clock, self.throttle)
        self.trust = self.authority.trust(self.clock.seconds)

    def proved(self, der: bytes) -> tuple[int, str | None]:
        identity = self.trust.identify(x509.load_der_x509_certificate(der))
        return identity.node_id, identity.user_name

    def granted(self, request: EnrolmentRequest, source: str | None = None) -> Issued:
        issued: Issued = self.successResultOf(self.issuer.grant(request, source))
        return issued

    def refused(self, request: EnrolmentRequest, source: str = "192.0.2.7") -> EnrolmentRefused:
        failure = self.failureResultOf(self.issuer.grant(request, source), EnrolmentRefused)
        refusal = failure.value
        assert isinstance(refusal, EnrolmentRefused)
        return refusal

    def test_node_certificate(self) -> None:
        """A peer account gets a certificate for its key with a random Node-ID and its name."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.granted(EnrolmentRequest("ops@example.org", "ops-pw", csr(key)), "192.0.2.7")
        self.assertEqual(self.proved(issued.certificate), (issued.node_id, "ops@example.org"))
        NodeIdentity(key, issued.certificate)  # the certificate is for this key
        again = self.granted(EnrolmentRequest("ops@example.org", "ops-pw", csr(key)), None)
        self.assertNotEqual(again.node_id, issued.node_id)

    def test_requested_node_id_ignored(self) -> None:
        """A CSR naming a Node-ID does not get it: the CA chooses."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self.granted(
            EnrolmentRequest("ops@example.org", "ops-pw", csr(key, asks_for=42)), None
        )
        self.assertNotEqual(issued.node_id, 42)
        self.assertEqual(self.proved(issued.certificate)[0], issued.node_id)

    def test_wrong_password_and_throttle(self) -> None:
        """Wrong passwords are 403 and counted; past the limit even the right one is 429, unchecked."""
        key = ec.generate_private_key(ec.SECP256R1())
        wrong = EnrolmentRequest("ops@example.org", "guess", csr(key))
        statuses = [self.refused(wrong).status for _ in range(3)]
        right = EnrolmentRequest("ops@example.org", "ops-pw", csr(key))
        throttled = self.refused(right)
        self.assertEqual(statuses + [throttled.status], [403, 403, 403, 429])
        self.assertIn("too many failed logins", throttled.message)
        self.granted(right, "198.51.100.1")  # another source is not held back
        self.clock.advance(60)
        self.granted(right, "192.0.2.7")

    def test_unknown_account_like_wrong_password(self) -> None:
        """An unknown account gets the same answer as a wrong password."""
        key = ec.generate_private_key(ec.SECP256R1())
        unknown = self.refused(EnrolmentRequest("mallory@example.org", "ops-pw", csr(key)))
        wrong = self.refused(EnrolmentRequest("ops@example.org", "nope", csr(key)))
        self.assertEqual((unknown.status, unknown.message), (wrong.status, wrong.message))

    def test_grants(self) -> None:
        """A user-only account gets no node certificate; a peer-only account no user certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        refusal = self.refused(EnrolmentRequest("alice@example.org", "alice-pw", csr(key)))
        self.assertEqual(refusal.status, 403)
        self.assertIn("'peer' grant", refusal.message)
        node = enrolled_identity(self.authority)
        refusal = self.refused(
            EnrolmentRequest(
                "ops@example.org", "ops-pw", csr(key), node_certificate=node.certificate_der
            )
        )
        self.assertIn("'user' grant", refusal.message)

    def test_user_certificate_bound_to_super_node(self) -> None:
        """A super-node's CSR with its certificate gets alice's certificate with its own Node-ID."""
        key = ec.generate_private_key(ec.SECP256R1())
        node = NodeIdentity(
            key,
            self.authority.issue(
                key.public_key(),
                node_id=0x1234,
                user_name="ops@example.org",
                now=TEST_CERTIFICATE_EPOCH,
            ),
        )
        issued = self.granted(
            EnrolmentRequest(
                "alice@example.org", "alice-pw", csr(key), node_certificate=node.certificate_der
            ),
            None,
        )
        self.assertEqual(self.proved(issued.certificate), (0x1234, "alice@example.org"))
        self.assertTrue(issued.user_certificate)

    def test_user_certificate_needs_the_nodes_key(self) -> None:
        """Someone else's node certificate, with a CSR for another key, gets nothing."""
        victim = enrolled_identity(self.authority, node_id=0x1234)
        thief = ec.generate_private_key(ec.SECP256R1())
        refusal = self.refused(
            EnrolmentRequest(
                "alice@example.org", "alice-pw", csr(thief), node_certificate=victim.certificate_der
            )
        )
        self.assertEqual(refusal.status, 403)
        self.assertIn("key of the node certificate", refusal.message)

    def test_user_certificate_needs_our_ca(self) -> None:
        """A self-signed or foreign node certificate proves no Node-ID here."""
        for node in (
            NodeIdentity.generate(),
            enrolled_identity(OverlayAuthority.create(OVERLAY, 0)),
        ):
            refusal = self.refused(
                EnrolmentRequest(
                    "alice@example.org",
                    "alice-pw",
                    csr(ec.generate_private_key(ec.SECP256R1())),
                    node_certificate=node.certificate_der,
                )
            )
            self.assertEqual(refusal.status, 403)
            self.assertIn("not usable here", refusal.message)

    def test_bad_csr(self) -> None:
        """A CSR that does not parse is 400 (after the password, so it leaks nothing)."""
        refusal = self.refused(EnrolmentRequest("ops@example.org", "ops-pw", b"junk"))
        self.assertEqual(refusal.status, 400)

    def test_checks_in_flight_bounded(self) -> None:
        """While the allowed password checks run, another request is 503, unchecked; then served."""
        pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []

        def later(check: Callable[[], Any]) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, check))
            return d

        issuer = CertificateIssuer(
            self.authority, self.accounts, self.clock, self.throttle, later, max_checks_in_flight=1
        )
        key = ec.generate_private_key(ec.SECP256R1())
        request = EnrolmentRequest("ops@example.org", "ops-pw", csr(key))
        first = issuer.grant(request, None)
        busy = self.failureResultOf(issuer.grant(request, None), EnrolmentRefused).value
        self.assertEqual(getattr(busy, "status", None), 503)
        [(d, check)] = pending
        d.callback(check())
        self.successResultOf(first)
        self.assertEqual(issuer.checks_in_flight, 0)
        later_grant = issuer.grant(request, None)
        pending[1][0].callback(pending[1][1]())
        self.successResultOf(later_grant)
