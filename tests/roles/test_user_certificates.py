"""
A super-node's user certificates (DATA_DIR/user-certs): read when the SIP
service starts and when the directory changes, handed to the overlay node,
and named in the fix the log gives for a user without one.
"""

from __future__ import annotations

from pathlib import Path

from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.user_certificates import DIRECTORY_NAME, UserCertificates
from p2psip.overlay.identity import NodeIdentity
from p2psip.roles.super_node import RingState, make_ring_role
from p2psip.testing import TEST_CERTIFICATE_EPOCH, MemoryUDPReactor, user_certificate
from tests.roles.test_peer import parse

AUTHORITY = OverlayAuthority.create("example.org", TEST_CERTIFICATE_EPOCH)
ALICE = "alice@example.org"
BOB = "bob@example.org"


class UserCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp()).resolve()
        self.data_dir.mkdir()
        self.identity = NodeIdentity.generate()
        self.certificates = UserCertificates(self.data_dir)
        options = parse("--sip", "udp:0", "--sip-trusted-network", "--data-dir", str(self.data_dir))
        self.role = make_ring_role(
            options.config, MemoryUDPReactor(), RingState(self.identity), freeze_gc=False
        )
        assert self.role.sip is not None
        self.sip = self.role.sip
        self.node = self.role.node

    def start(self) -> None:
        self.sip.startService()
        self.addCleanup(self.sip.stopService)

    def test_loaded_at_start(self) -> None:
        """A certificate for this node's key in user-certs signs that user's registrations."""
        self.certificates.save(ALICE, user_certificate(AUTHORITY, self.identity, ALICE))
        self.start()
        credential = self.node.user_credentials.credential_for(ALICE)
        assert credential is not None
        self.assertEqual(credential.user_name, ALICE)
        self.assertEqual([c.user_name for c in self.node.user_credentials.enrolled()], [ALICE])

    def test_added_while_running(self) -> None:
        """A certificate enrolled while the role runs is read at the next refresh."""
        self.start()
        self.assertEqual(self.node.user_credentials.enrolled(), [])
        self.certificates.save(BOB, user_certificate(AUTHORITY, self.identity, BOB))
        self.sip._refresh_files()
        self.assertEqual([c.user_name for c in self.node.user_credentials.enrolled()], [BOB])

    def test_certificate_for_another_key_is_skipped(self) -> None:
        """A certificate issued for another node is not used, and the log says which file."""
        stranger = NodeIdentity.generate()
        self.certificates.save(ALICE, user_certificate(AUTHORITY, stranger, ALICE))
        self.certificates.save(BOB, user_certificate(AUTHORITY, self.identity, BOB))
        with capturedLogs() as events:
            self.start()
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn(f"{DIRECTORY_NAME}/{ALICE}.pem", warnings[0]["path"])
        self.assertEqual([c.user_name for c in self.node.user_credentials.enrolled()], [BOB])

    def test_unreadable_file_stops_the_service(self) -> None:
        """A file in user-certs that is no certificate stops the start, naming the file."""
        directory = self.data_dir / DIRECTORY_NAME
        directory.mkdir()
        (directory / f"{ALICE}.pem").write_text("not a certificate")
        error = self.assertRaises(usage.UsageError, self.sip.startService)
        self.assertIn(f"{ALICE}.pem", str(error))

    def test_enrol_hint_names_the_data_dir(self) -> None:
        """The fix the log gives for a user without a certificate names this data directory."""
        hint = self.sip.stack.location.enrol_hint.format(user=f"sip:{ALICE}")
        self.assertEqual(hint, f"p2psip enrol --user sip:{ALICE} --data-dir {self.data_dir}")
