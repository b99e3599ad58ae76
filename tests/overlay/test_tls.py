"""
What an overlay link's TLS accepts, without sockets: the certificate
decision (:meth:`LinkSecurity.authenticate`), the throttled warnings, and
the link's timers on a fake clock.  Handshakes over real sockets are in
``tests/integration/test_overlay_tls.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay.certificates import SelfSignedTrust
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.links import FramedStreamLink, Link, inbound_link_factory
from p2psip.overlay.message import ErrorCode
from p2psip.overlay.tls import KeyLogFile, LinkRefused, LinkSecurity
from p2psip.testing import TEST_CERTIFICATE_EPOCH, enrolled_identity
from p2psip.util.ids import node_id_from_key

OVERLAY = "tls.test"
NOW = TEST_CERTIFICATE_EPOCH + 60
YEAR = 365 * 24 * 3600


def certificate_of(identity: NodeIdentity) -> tuple[x509.Certificate, bytes]:
    return x509.load_der_x509_certificate(identity.certificate_der), identity.certificate_der


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def link_established(self, link: Link) -> None:
        self.events.append(("established", link.peer_id))

    def message_received(self, link: Link, data: bytes) -> None:
        self.events.append(("message", data))

    def link_lost(self, link: Link) -> None:
        self.events.append(("lost", link.peer_id))

    def link_for(self, peer: int) -> Link | None:
        return None


class EnrolledAuthenticationTests(SynchronousTestCase):
    """An enrolled ring (OverlayRootTrust): only this CA's certificates for this overlay, valid now."""

    def setUp(self) -> None:
        self.authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        self.clock = Clock()
        self.security = LinkSecurity(
            enrolled_identity(self.authority), self.authority.trust(lambda: NOW), self.clock
        )

    def refusal(self, identity: NodeIdentity, expected: int | None = None) -> LinkRefused:
        certificate, der = certificate_of(identity)
        return self.assertRaises(
            LinkRefused, self.security.authenticate, certificate, der, expected
        )

    def test_certificate_of_the_overlay_names_the_peer(self) -> None:
        """A certificate this CA issued proves the Node-ID in its reload:// URI."""
        peer = enrolled_identity(self.authority, node_id=0xABC)
        proved = self.security.authenticate(*certificate_of(peer), None)
        self.assertEqual((proved.node_id, proved.identity.node_ids), (0xABC, (0xABC,)))

    def test_dialled_node_id_must_be_named(self) -> None:
        """A peer dialled as Y whose certificate names X is refused with both ids in the reason."""
        peer = enrolled_identity(self.authority, node_id=0xABC)
        self.assertEqual(self.security.authenticate(*certificate_of(peer), 0xABC).node_id, 0xABC)
        refusal = self.refusal(peer, expected=0xDEF)
        self.assertIn(f"{0xABC:032x}", refusal.reason)
        self.assertIn(f"not {0xDEF:032x}", refusal.reason)
        self.assertEqual(refusal.error_code, ErrorCode.FORBIDDEN)

    def test_another_ca_is_refused(self) -> None:
        """A certificate from another CA, even for the same overlay name, proves nothing."""
        twin = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        refusal = self.refusal(enrolled_identity(twin))
        self.assertIn("signature is not the overlay CA's", str(refusal))
        self.assertIn("Error_Forbidden", str(refusal))
        stranger = OverlayAuthority.create("stranger.test", TEST_CERTIFICATE_EPOCH)
        self.assertIn(
            "not issued by this overlay's CA", self.refusal(enrolled_identity(stranger)).reason
        )

    def test_another_overlay_is_refused(self) -> None:
        """The same CA's certificate for another overlay names no Node-ID of this one."""
        other = OverlayAuthority(self.authority._key, self.authority.root_der, "other.test")
        self.assertIn(
            "no Node-ID in overlay tls.test", self.refusal(enrolled_identity(other)).reason
        )

    def test_expired_is_refused(self) -> None:
        """A certificate whose validity ended is refused."""
        old = enrolled_identity(self.authority, now=TEST_CERTIFICATE_EPOCH - 2 * YEAR)
        self.assertIn("expired", self.refusal(old).reason)

    def test_self_signed_is_refused(self) -> None:
        """A freshly made self-signed identity cannot link in an enrolled ring."""
        self.assertIn("untrusted certificate", self.refusal(NodeIdentity.generate()).reason)

    def test_key_must_be_p256(self) -> None:
        """A certificate for a P-384 key is refused before the trust policy is asked."""
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p384")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(self.authority.root.not_valid_before_utc)
            .not_valid_after(self.authority.root.not_valid_after_utc)
            .sign(key, hashes.SHA256())
        )
        der = certificate.public_bytes(serialization.Encoding.DER)
        refusal = self.assertRaises(LinkRefused, self.security.authenticate, certificate, der, None)
        self.assertIn("not ECDSA P-256", refusal.reason)


class SelfSignedAuthenticationTests(SynchronousTestCase):
    """An --insecure ring (SelfSignedTrust): the Node-ID is the hash of the key."""

    def test_node_id_is_the_key_hash(self) -> None:
        """A self-signed certificate proves the Node-ID derived from its key."""
        security = LinkSecurity(NodeIdentity.generate(), SelfSignedTrust(), Clock())
        peer = NodeIdentity.generate()
        certificate, der = certificate_of(peer)
        proved = security.authenticate(certificate, der, None)
        key = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertEqual(proved.node_id, node_id_from_key(key))
        self.assertEqual(proved.node_id, peer.node_id)

    def test_reload_uri_is_not_believed(self) -> None:
        """A CA-style certificate's reload:// URI does not choose the Node-ID in self-signed mode."""
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        peer = enrolled_identity(authority, node_id=0xABC)
        security = LinkSecurity(NodeIdentity.generate(), SelfSignedTrust(), Clock())
        certificate, der = certificate_of(peer)
        self.assertNotEqual(security.authenticate(certificate, der, None).node_id, 0xABC)
        self.assertRaises(LinkRefused, security.authenticate, certificate, der, 0xABC)


class RefusalLogTests(SynchronousTestCase):
    def test_one_warning_per_source_a_minute(self) -> None:
        """A flood of refusals from one address writes one warning a minute, then the count."""
        clock = Clock()
        security = LinkSecurity(NodeIdentity.generate(), SelfSignedTrust(), clock)
        with capturedLogs() as events:
            for _ in range(50):
                security.note("192.0.2.7", "refused: untrusted certificate (Error_Forbidden)")
            security.note("198.51.100.1", "refused: untrusted certificate (Error_Forbidden)")
            clock.advance(61)
            security.note("192.0.2.7", "refused: untrusted certificate (Error_Forbidden)")
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(
            [(e["source"], e["held_back"]) for e in warnings],
            [("192.0.2.7", 0), ("198.51.100.1", 0), ("192.0.2.7", 49)],
        )
        self.assertIn("Error_Forbidden", warnings[0]["why"])


class KeyLogFileTests(SynchronousTestCase):
    def test_made_at_the_first_secret_private_and_appended(self) -> None:
        """The key log is created only when a secret arrives, mode 0600, one line per secret."""
        path = Path(self.mktemp())
        key_log = KeyLogFile(path)
        self.addCleanup(key_log.close)
        self.assertFalse(path.exists())
        key_log(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 00 11")
        key_log(b"SERVER_HANDSHAKE_TRAFFIC_SECRET 00 22")
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        self.assertEqual(
            path.read_bytes(),
            b"CLIENT_HANDSHAKE_TRAFFIC_SECRET 00 11\nSERVER_HANDSHAKE_TRAFFIC_SECRET 00 22\n",
        )


class LinkTimerTests(SynchronousTestCase):
    """The link's handshake timeout and close grace, on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.listener = Listener()
        self.security = LinkSecurity(
            NodeIdentity.generate(), SelfSignedTrust(), self.clock, handshake_timeout_seconds=3
        )

    def test_silent_connection_times_out(self) -> None:
        """A connection that never completes its handshake is aborted, with a throttled warning."""
        factory = inbound_link_factory(self.listener, self.clock, 65536, self.security)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        link = protocol.wrappedProtocol
        assert isinstance(link, FramedStreamLink)
        waiting = link.when_established()
        with capturedLogs() as events:
            self.clock.advance(3)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(ConnectionError("aborted"))  # type: ignore[arg-type]
        refusal = self.failureResultOf(waiting, LinkRefused).value
        self.assertEqual(refusal.error_code, ErrorCode.REQUEST_TIMEOUT)
        self.assertEqual(self.listener.events, [])
        self.assertIn("no TLS handshake within 3 s", events[-1]["why"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel_aborts(self) -> None:
        """Cancelling the wait for a link (a connect timeout) aborts its connection."""
        link = FramedStreamLink(self.listener, self.clock, 65536, False, security=self.security)
        transport = StringTransport()
        link.makeConnection(transport)
        waiting = link.when_established()
        waiting.cancel()
        self.failureResultOf(waiting)
        self.assertTrue(transport.disconnecting)

    def test_closed_link_is_cut_after_grace(self) -> None:
        """A TLS link whose peer never answers close_notify is aborted after the grace period."""

        class Aborting(StringTransport):
            aborted = False

            def abortConnection(self) -> None:
                self.aborted = True

        link = FramedStreamLink(self.listener, self.clock, 65536, False, security=self.security)
        transport = Aborting()
        link.makeConnection(transport)
        link.close()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.aborted)
        self.clock.advance(5)
        self.assertTrue(transport.aborted)
        link.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
