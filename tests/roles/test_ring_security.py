"""
Secure by default: what the ring roles need to start (certificates from
the overlay CA), what the bootstrap makes (the CA, its own certificate,
the enrolment server), and how loudly ``--insecure`` says what it is.
Options and makeService on a memory reactor; no sockets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.address import IPv4Address
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.configuration import read_configuration
from p2psip.enrolment.fingerprints import root_fingerprint
from p2psip.enrolment.node_files import save_node_enrolment
from p2psip.enrolment.server import EnrolmentServer
from p2psip.overlay.certificates import OverlayRootTrust, SelfSignedTrust
from p2psip.overlay.identity import NodeIdentity
from p2psip.roles import bootstrap, peer
from p2psip.roles.enrolment_service import FirstEnrolment
from p2psip.roles.super_node import RingRole
from p2psip.testing import TEST_CERTIFICATE_EPOCH, MemoryUDPReactor
from p2psip.web.page import render_page
from tests.web.test_site import Connection, http_request

OVERLAY = "secure.test"


#: The address the roles' default-route lookup gives in these tests.
HOST_ADDRESS = "192.0.2.60"


def reactor_at_epoch() -> MemoryUDPReactor:
    reactor = MemoryUDPReactor()
    reactor.advance(TEST_CERTIFICATE_EPOCH)
    return reactor


class SecurityTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = reactor_at_epoch()

    def data_dir(self) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        return directory

    def options(self, role: Any, data_dir: Path, *argv: str) -> Any:
        options = role.Options()
        # The default overlay listener binds every interface: the node
        # advertises the default-route interface's address, this one here.
        options.find_default_address = lambda family: HOST_ADDRESS
        extra = ["--bootstrap", "tcp:192.0.2.1:6084"] if role is peer else []
        options.parseOptions(
            ["--overlay-name", OVERLAY, "--data-dir", str(data_dir), *extra, *argv]
        )
        return options

    def build(self, role: Any, data_dir: Path, *argv: str) -> Any:
        return role.makeService(self.options(role, data_dir, *argv), self.reactor)

    def enrolled_data_dir(self, authority: OverlayAuthority, node_id: int = 0xABC) -> Path:
        """A peer's data dir as ``p2psip enrol`` leaves it."""
        directory = self.data_dir()
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = authority.issue(
            key.public_key(),
            node_id=node_id,
            user_name="ops@secure.test",
            now=TEST_CERTIFICATE_EPOCH,
        )
        save_node_enrolment(directory, key, certificate, authority.root_der, b"<overlay/>")
        return directory


class PeerStartTests(SecurityTestCase):
    def test_refuses_without_certificate(self) -> None:
        """A peer with no certificate and no --insecure does not start; the error names both fixes."""
        error = self.assertRaises(usage.UsageError, self.build, peer, self.data_dir())
        message = str(error)
        self.assertIn("cannot join a secure ring", message)
        self.assertIn("p2psip enrol --data-dir", message)
        self.assertIn("--insecure", message)

    def test_refuses_self_signed_certificate(self) -> None:
        """A key and self-signed certificate from an --insecure run do not pass for an enrolled node."""
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        directory = self.data_dir()
        NodeIdentity.generate().save(directory)
        (directory / "overlay-root.pem").write_bytes(
            authority.root.public_bytes(serialization.Encoding.PEM)
        )
        with capturedLogs() as events:
            error = self.assertRaises(usage.UsageError, self.build, peer, directory)
        self.assertIn("no node certificate from that root", str(error))
        [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertIn("not issued by this overlay's CA", warning["why"])

    def test_enrolled_peer(self) -> None:
        """With the files enrolment writes, the peer's node believes the overlay root only."""
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        role = self.build(peer, self.enrolled_data_dir(authority, node_id=0xABC))
        assert isinstance(role, RingRole)
        self.assertEqual(role.node.node_id, 0xABC)
        trust = role.node.certificates.trust
        assert isinstance(trust, OverlayRootTrust)
        self.assertEqual(trust.root_der, authority.root_der)
        status = role.status()
        self.assertIs(status["insecure"], False)
        self.assertEqual(
            status["security"],
            {
                "mode": "enrolled",
                "overlay_root": root_fingerprint(authority.root_der),
                "user_name": "ops@secure.test",
            },
        )
        self.assertIsNone(role.enrolment)

    def test_overlay_root_option(self) -> None:
        """--overlay-root names the root when the data dir has none."""
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        directory = self.enrolled_data_dir(authority)
        root = directory.parent / "root.pem"
        os.rename(directory / "overlay-root.pem", root)
        self.assertRaises(usage.UsageError, self.build, peer, directory)
        role = self.build(peer, directory, "--overlay-root", str(root))
        self.assertIsInstance(role.node.certificates.trust, OverlayRootTrust)

    def test_other_overlay(self) -> None:
        """A certificate for another overlay name is not usable here."""
        authority = OverlayAuthority.create("other.test", TEST_CERTIFICATE_EPOCH)
        error = self.assertRaises(
            usage.UsageError, self.build, peer, self.enrolled_data_dir(authority)
        )
        self.assertIn("--insecure", str(error))

    def test_enrols_on_start_when_told(self) -> None:
        """Given --enrol-url and friends but no certificate, makeService returns the enrolling service."""
        password = self.data_dir() / "password"
        password.write_text("secret\n")
        service = self.build(
            peer,
            self.data_dir(),
            "--enrol-url",
            "https://192.0.2.1:8443/enrol",
            "--enrol-user",
            "ops@secure.test",
            "--enrol-password-file",
            str(password),
            "--ca-fingerprint",
            "sha256:" + "ab" * 32,
        )
        self.assertIsInstance(service, FirstEnrolment)
        self.assertEqual(service.enrol.password, "secret")
        self.assertNotIn("secret", repr(service.enrol))

    def test_fingerprint_must_match_stored_root(self) -> None:
        """A data dir enrolled in another overlay is refused when the given fingerprint differs."""
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        password = self.data_dir() / "password"
        password.write_text("secret\n")
        error = self.assertRaises(
            usage.UsageError,
            self.build,
            peer,
            self.enrolled_data_dir(authority),
            "--enrol-url",
            "https://192.0.2.1:8443/enrol",
            "--enrol-user",
            "ops@secure.test",
            "--enrol-password-file",
            str(password),
            "--ca-fingerprint",
            "sha256:" + "ab" * 32,
        )
        self.assertIn("another overlay", str(error))


class BootstrapStartTests(SecurityTestCase):
    def test_runs_the_ca(self) -> None:
        """The founding bootstrap makes its CA, issues itself a certificate and serves enrolment."""
        directory = self.data_dir()
        with capturedLogs() as events:
            role = self.build(bootstrap, directory, "--enrol-listen", "ssl:18443")
        assert isinstance(role, RingRole)
        self.assertEqual(os.stat(directory / "ca-key.pem").st_mode & 0o777, 0o600)
        authority = OverlayAuthority.load(
            directory / "ca-key.pem", directory / "ca-cert.pem", OVERLAY
        )
        trust = role.node.certificates.trust
        assert isinstance(trust, OverlayRootTrust)
        self.assertEqual(trust.root_der, authority.root_der)
        proved = trust.identify(x509.load_der_x509_certificate(role.node.identity.certificate_der))
        self.assertEqual(proved.node_id, role.node.node_id)
        fingerprint = root_fingerprint(authority.root_der)
        self.assertTrue(any(e.get("fingerprint") == fingerprint for e in events))
        assert isinstance(role.enrolment, EnrolmentServer)
        self.assertEqual(
            [type(s).__name__ for s in role],
            [
                "StateFlusher",
                "ValuePersistence",
                "EnrolmentServer",
                "OverlayService",
                "_HttpListenerService",
            ],
        )
        role.startService()
        self.addCleanup(role.stopService)
        self.assertIn(18443, [port for port, *_ in self.reactor.tcpServers])

        again = self.build(bootstrap, directory, "--enrol-listen", "ssl:18443")
        self.assertEqual(again.node.node_id, role.node.node_id)  # same CA, same certificate

    def test_configuration_document(self) -> None:
        """The enrolment server's document describes this ring and is signed by its CA."""
        directory = self.data_dir()
        role = self.build(
            bootstrap, directory, "--enrol-listen", "ssl:18443", "--ping-interval", "7"
        )
        role.startService()
        self.addCleanup(role.stopService)
        assert role.enrolment is not None
        site = role.enrolment.site
        connection = Connection(site, IPv4Address("TCP", "127.0.0.1", 18443))
        connection.send(
            http_request("GET", "/.well-known/reload-config", host="127.0.0.1:18443", token=None)
        )
        response = connection.response()
        self.assertEqual(response.code, 200)
        trust = role.node.certificates.trust
        assert isinstance(trust, OverlayRootTrust)
        configuration = read_configuration(
            response.body, trust.root_der, self.reactor.seconds(), OVERLAY
        )
        self.assertEqual(configuration.chord_ping_interval_seconds, 7)
        self.assertEqual(configuration.enrolment_servers, (f"https://{HOST_ADDRESS}:18443/enrol",))
        self.assertEqual([kind.kind_id for kind in configuration.kinds], sorted(role.node.kinds))

    def test_enrolment_url_names_the_listener(self) -> None:
        """An enrolment listener on one interface is announced there; advertise, when set, wins."""
        for extra, host in (
            ((), "127.0.0.1"),
            (("--advertise", "bootstrap.example.org"), "bootstrap.example.org"),
        ):
            role = self.build(
                bootstrap,
                self.data_dir(),
                "--enrol-listen",
                "ssl:18443:interface=127.0.0.1",
                *extra,
            )
            role.startService()
            self.addCleanup(role.stopService)
            assert role.enrolment is not None
            self.assertEqual(str(role.enrolment.url), f"https://{host}:18443/enrol")

    def test_reissues_for_an_insecure_key(self) -> None:
        """A key left by an --insecure run keeps its key and gets a CA certificate instead."""
        directory = self.data_dir()
        old = NodeIdentity.generate()
        old.save(directory)
        role = self.build(bootstrap, directory)
        self.assertNotEqual(role.node.node_id, old.node_id)
        self.assertEqual(
            x509.load_der_x509_certificate(role.node.identity.certificate_der).public_key(),
            x509.load_der_x509_certificate(old.certificate_der).public_key(),
        )

    def test_second_bootstrap_needs_the_ca(self) -> None:
        """A bootstrap that joins others without a copy of the CA refuses, naming the files."""
        error = self.assertRaises(
            usage.UsageError,
            self.build,
            bootstrap,
            self.data_dir(),
            "--bootstrap",
            "tcp:192.0.2.1:6084",
        )
        self.assertIn("ca-key.pem", str(error))
        self.assertIn("--ca-key", str(error))

    def test_operator_supplied_ca(self) -> None:
        """--ca-key and --ca-cert name a CA kept elsewhere; a joining bootstrap may use it."""
        shared = self.data_dir()
        authority, _ = OverlayAuthority.load_or_create(shared, OVERLAY, TEST_CERTIFICATE_EPOCH)
        role = self.build(
            bootstrap,
            self.data_dir(),
            "--bootstrap",
            "tcp:192.0.2.1:6084",
            "--ca-key",
            str(shared / "ca-key.pem"),
            "--ca-cert",
            str(shared / "ca-cert.pem"),
        )
        self.assertEqual(role.node.certificates.trust.root_der, authority.root_der)


class InsecureTests(SecurityTestCase):
    def test_visible_everywhere(self) -> None:
        """--insecure logs a critical line at start and shows in /status, over HTTP too."""
        role = self.build(peer, self.data_dir(), "--insecure", "--http", "tcp:18085")
        self.assertIsInstance(role.node.certificates.trust, SelfSignedTrust)
        with capturedLogs() as events:
            role.startService()
        self.addCleanup(role.stopService)
        critical = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertIn("INSECURE", critical[0]["log_format"])
        [site] = [factory for port, factory, *_ in self.reactor.tcpServers if port == 18085]
        connection = Connection(site, IPv4Address("TCP", "127.0.0.1", 18085))
        connection.send(http_request("GET", "/status", host="127.0.0.1:18085", token=None))
        status = json.loads(connection.response().body)
        self.assertIs(status["insecure"], True)
        self.assertEqual(status["security"]["mode"], "insecure")
        self.assertEqual(next(iter(status)), "insecure")  # first, where nobody misses it

    def test_page_banner(self) -> None:
        """The status page carries the banner, shown by the script when status says insecure."""
        page = render_page("p2psip peer", ring_page=True).decode()
        self.assertIn('<div id="insecure" hidden>INSECURE RING (--insecure)', page)
        self.assertIn("status.insecure === true", page)

    def test_enrolled_certificate_refused(self) -> None:
        """--insecure with an enrolled certificate in the data dir stops instead of ignoring it."""
        authority = OverlayAuthority.create(OVERLAY, TEST_CERTIFICATE_EPOCH)
        error = self.assertRaises(
            usage.UsageError, self.build, peer, self.enrolled_data_dir(authority), "--insecure"
        )
        self.assertIn("start without --insecure", str(error))

    def test_no_ca_on_insecure_bootstrap(self) -> None:
        """An --insecure bootstrap makes no CA and serves no enrolment."""
        directory = self.data_dir()
        role = self.build(bootstrap, directory, "--insecure")
        self.assertIsNone(role.enrolment)
        self.assertFalse((directory / "ca-key.pem").exists())


class SecurityOptionTests(SecurityTestCase):
    def password_file(self) -> str:
        path = self.data_dir() / "password"
        path.write_text("pw\n")
        return str(path)

    def refused(self, role: Any, *argv: str) -> str:
        return str(self.assertRaises(usage.UsageError, self.options, role, self.data_dir(), *argv))

    def test_insecure_excludes_enrolment(self) -> None:
        """--insecure with enrolment or CA options is a contradiction, named."""
        self.assertIn(
            "--enrol-url", self.refused(peer, "--insecure", "--enrol-url", "https://x/enrol")
        )
        self.assertIn("--ca-key", self.refused(bootstrap, "--insecure", "--ca-key", "k"))

    def test_enrolment_needs_everything(self) -> None:
        """Enrolling on start needs the user, the password file and a pinned CA."""
        url = ["--enrol-url", "https://192.0.2.1:8443/enrol"]
        self.assertIn("--enrol-user", self.refused(peer, *url))
        pinned = "--enrol-password-file"
        message = self.refused(peer, *url, "--enrol-user", "a@b.c", pinned, self.password_file())
        self.assertIn("--ca-fingerprint sha256:HEX", message)
        message = self.refused(
            peer, *url, "--enrol-user", "a@b.c", pinned, "/nonexistent", "--overlay-root", "r"
        )
        self.assertIn("cannot read --enrol-password-file", message)
        message = self.refused(
            peer,
            *url,
            "--enrol-user",
            "a@b.c",
            pinned,
            self.password_file(),
            "--ca-fingerprint",
            "md5:00",
        )
        self.assertIn("sha256:HEX", message)
        self.assertIn("https://", self.refused(peer, "--enrol-url", "http://192.0.2.1/enrol"))

    def test_bootstrap_options(self) -> None:
        """--enrol-listen takes ssl:PORT only; --ca-key and --ca-cert go together."""
        self.assertIn("ssl:PORT", self.refused(bootstrap, "--enrol-listen", "tcp:8443"))
        self.assertIn(
            "privateKey", self.refused(bootstrap, "--enrol-listen", "ssl:8443:privateKey=k.pem")
        )
        self.assertIn("go together", self.refused(bootstrap, "--ca-key", "k.pem"))
        options = self.options(
            bootstrap, self.data_dir(), "--enrol-listen", "ssl:8443:interface=\\:\\:1"
        )
        assert options.config.security.authority is not None
        self.assertEqual(
            options.config.security.authority.enrol_listen, "ssl:8443:interface=\\:\\:1"
        )
