"""The peer role's options, its secrets and how makeService composes it (no sockets)."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.kinds import CERTIFICATE_BY_USER, SIP_REGISTRATION
from p2psip.roles.peer import Options, makeService
from p2psip.util.admin_token import TOKEN_FILE_NAME
from tests.sip.tls_certificate import write_sip_certificate
from tests.web.test_site import Connection, http_request
from p2psip.testing import MemoryUDPReactor
from p2psip.roles.sip_service import (
    NONCE_SECRET_FILE,
    load_or_create_secret,
)

DOMAIN = "example.org"


def parse(*argv: str) -> Options:
    """Peer options; --insecure, since these tests are not about certificates (test_ring_security is)."""
    options = Options()
    options.find_default_address = lambda family: "192.0.2.61"  # type: ignore[method-assign]
    options.parseOptions(["--bootstrap", "tcp:127.0.0.1:6084", "--insecure", *argv])
    return options


class PeerOptionsTests(SynchronousTestCase):
    """--sip, --users and --sip-trusted-network."""

    def test_no_sip_by_default(self) -> None:
        """Without --sip the peer has no SIP listeners and needs no users file."""
        self.assertEqual(parse()["sip"], [])

    def test_sip_repeatable(self) -> None:
        """--sip may be given for UDP and TCP."""
        options = parse("--sip", "udp:5060", "--sip", "tcp:5060", "--users", "users")
        self.assertEqual(options["sip"], ["udp:5060", "tcp:5060"])

    def test_sip_needs_users_or_trust(self) -> None:
        """--sip without --users is refused, naming both ways out."""
        error = self.assertRaises(usage.UsageError, parse, "--sip", "udp:5060")
        self.assertIn("--users FILE", str(error))
        self.assertIn("--sip-trusted-network", str(error))

    def test_trusted_network_flag(self) -> None:
        """--sip-trusted-network switches authentication off explicitly."""
        options = parse("--sip", "udp:5060", "--sip-trusted-network")
        self.assertTrue(options["sip-trusted-network"])

    def test_bad_udp_listener(self) -> None:
        """A malformed udp: listener is a usage error naming the syntax."""
        error = self.assertRaises(
            usage.UsageError, parse, "--sip", "udp:x", "--sip-trusted-network"
        )
        self.assertIn("udp:PORT", str(error))

    def test_ini_keys(self) -> None:
        """The INI file sets sip (a list), users and the trusted-network flag."""
        options = Options()
        options.use_config_text(
            "[peer]\nbootstrap = tcp:127.0.0.1:6084\nsip = udp:5060 tcp:5060\n"
            "users = /etc/p2psip/users\nsip-trusted-network = no\n"
        )
        options.parseOptions([])
        self.assertEqual(
            (options["sip"], options["users"]), (["udp:5060", "tcp:5060"], "/etc/p2psip/users")
        )
        self.assertFalse(options["sip-trusted-network"])

    def test_sip_rate_limit(self) -> None:
        """The request limit defaults to 50 a second, burst 100; 0 turns it off; bad values stop the role."""
        config = parse("--sip", "udp:5060", "--sip-trusted-network").config.sip
        assert config is not None
        self.assertEqual((config.rate_limit_per_second, config.rate_limit_burst), (50.0, 100))
        config = parse(
            "--sip", "udp:5060", "--sip-trusted-network", "--sip-rate-limit", "0"
        ).config.sip
        assert config is not None
        self.assertEqual(config.rate_limit_per_second, 0.0)
        for bad in (("--sip-rate-limit", "-1"), ("--sip-rate-burst", "0")):
            self.assertRaises(
                usage.UsageError, parse, "--sip", "udp:5060", "--sip-trusted-network", *bad
            )

    def test_sip_rate_limit_wired(self) -> None:
        """The proxy gets the configured limit, and none with --sip-rate-limit 0."""
        sip = ["--sip", "udp:0", "--sip-trusted-network", "--data-dir"]
        limited = makeService(
            parse(*sip, self.mktemp(), "--sip-rate-limit", "7"), MemoryUDPReactor()
        )
        unlimited = makeService(
            parse(*sip, self.mktemp(), "--sip-rate-limit", "0"), MemoryUDPReactor()
        )
        assert limited.sip is not None and unlimited.sip is not None
        limit = limited.sip.proxy.rate_limit
        assert limit is not None
        self.assertEqual((limit.requests_per_second, limit.burst), (7.0, 100))
        self.assertIsNone(unlimited.sip.proxy.rate_limit)

    def test_registrations_per_signer_wired(self) -> None:
        """The node's SIP-REGISTRATION and user-certificate quotas are the option's (default 10,000)."""
        plain = makeService(parse("--data-dir", self.mktemp()), MemoryUDPReactor())
        raised = makeService(
            parse("--data-dir", self.mktemp(), "--registrations-per-signer", "250000"),
            MemoryUDPReactor(),
        )
        for role, quota in ((plain, 10_000), (raised, 250_000)):
            for kind in (SIP_REGISTRATION, CERTIFICATE_BY_USER):
                self.assertEqual(role.node.kinds[kind.kind_id].max_per_signer, quota)
        self.assertEqual(raised.node.config.registrations_per_signer, 250_000)
        with self.assertRaises(usage.UsageError):
            parse("--registrations-per-signer", "0")

    def test_stream_limits_wired(self) -> None:
        """SIP stream and overlay listeners get the idle timeout and connection limits asked for."""
        role = makeService(
            parse(
                "--sip",
                "tcp:0",
                "--sip-trusted-network",
                "--data-dir",
                self.mktemp(),
                "--sip-idle-timeout",
                "120",
                "--sip-connections-per-source",
                "4",
                "--sip-max-connections",
                "50",
                "--overlay-connections-per-source",
                "7",
            ),
            MemoryUDPReactor(),
        )
        assert role.sip is not None and role.overlay is not None
        transport = role.sip.transport
        self.assertEqual(
            (
                transport.tcp_idle_timeout_seconds,
                transport.tcp_connections_per_source,
                transport.max_tcp_connections,
            ),
            (120.0, 4, 50),
        )
        self.assertEqual(role.overlay.factory.per_source, 7)  # type: ignore[attr-defined]
        defaults = parse("--sip", "tcp:0", "--sip-trusted-network").config.sip
        assert defaults is not None
        self.assertEqual(
            (
                defaults.idle_timeout_seconds,
                defaults.connections_per_source,
                defaults.max_connections,
            ),
            (300.0, 32, 4096),
        )

    def test_http_allowed_hosts(self) -> None:
        """--http-allowed-hosts repeats on the command line, lists in the file, and is checked."""
        options = parse("--http-allowed-hosts", "A.example", "--http-allowed-hosts", "b.example")
        self.assertEqual(options.config.http_allowed_hosts, ("a.example", "b.example"))
        options = Options()
        options.use_config_text(
            "[peer]\nbootstrap = tcp:127.0.0.1:6084\nhttp-allowed-hosts = p.example\n  ::1\n"
        )
        options.parseOptions([])
        self.assertEqual(options.config.http_allowed_hosts, ("p.example", "::1"))
        self.assertEqual(parse().config.http_allowed_hosts, ())
        error = self.assertRaises(usage.UsageError, parse, "--http-allowed-hosts", "x y")
        self.assertIn("--http-allowed-hosts", str(error))

    def test_make_service_composes_in_order(self) -> None:
        """The role's children start in order: overlay, SIP (with --sip), then HTTP."""
        data_dir = ["--data-dir", self.mktemp()]
        reactor = MemoryUDPReactor()
        with_sip = makeService(parse("--sip", "udp:0", "--sip-trusted-network", *data_dir), reactor)
        without = makeService(parse(*data_dir), reactor)
        self.assertEqual(
            [type(s).__name__ for s in with_sip],
            [
                "StateFlusher",
                "ValuePersistence",
                "OverlayService",
                "SipService",
                "_HttpListenerService",
            ],
        )
        self.assertEqual(
            [type(s).__name__ for s in without],
            ["StateFlusher", "ValuePersistence", "OverlayService", "_HttpListenerService"],
        )
        self.assertFalse(with_sip.running)

    def test_overlay_port_taken_stops_the_role(self) -> None:
        """
        An overlay listener that cannot open is a critical error naming
        --overlay, and the role stops, instead of serving SIP with no ring.
        """
        reactor = MemoryUDPReactor()
        role = makeService(parse("--data-dir", self.mktemp()), reactor)
        overlay = next(s for s in role if type(s).__name__ == "OverlayService")

        class TakenPort:
            def listen(self, factory: object) -> Deferred[object]:
                return fail(CannotListenError("127.0.0.1", 5070, OSError(98, "in use")))

        overlay.endpoint = TakenPort()
        with capturedLogs() as events:
            overlay.startService()
        [critical] = [e for e in events if e["log_level"] is LogLevel.critical]
        self.assertIn("--overlay", critical["log_format"])
        self.assertFalse(reactor.hasStopped)
        for hook, args, kwargs in reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.assertTrue(reactor.hasStopped)

    def test_config_is_frozen(self) -> None:
        """The options are validated into one frozen configuration object."""
        import attrs

        options = parse("--sip", "udp:5060", "--sip-trusted-network", "--advertise", "192.0.2.5")
        config = options.config
        self.assertEqual(
            (config.role, config.found_ring, config.advertised_host), ("peer", False, "192.0.2.5")
        )
        assert config.sip is not None
        self.assertEqual(config.sip.peer_transport, "UDP")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, config, "role", "x")

    def test_ipv6_listeners(self) -> None:
        """IPv6 interfaces in endpoint strings are understood (escaped colons)."""
        options = parse(
            "--overlay",
            "tcp:6084:interface=\\:\\:1",
            "--sip",
            "udp:5060:interface=\\:\\:",
            "--sip-trusted-network",
        )
        self.assertEqual(options.config.advertised_host, "::1")
        assert options.config.sip is not None
        self.assertIsNone(options.config.sip.listen_interface)


class SipTlsOptionsTests(SynchronousTestCase):
    """--sip-tls with --sip-tls-certificate and --sip-tls-key."""

    def setUp(self) -> None:
        self.certificate, self.key = write_sip_certificate(Path(self.mktemp()))

    def tls(self, *extra: str) -> Options:
        return parse(
            "--sip",
            "udp:5060",
            "--sip-trusted-network",
            "--sip-tls",
            "tcp:5061",
            *extra,
        )

    def test_listener_with_its_credentials(self) -> None:
        """A TLS listener with a matching certificate and key reaches the frozen config."""
        options = self.tls(
            "--sip-tls-certificate", str(self.certificate), "--sip-tls-key", str(self.key)
        )
        sip = options.config.sip
        assert sip is not None and sip.tls is not None
        self.assertEqual((sip.listeners, sip.tls_listeners), (("udp:5060",), ("tcp:5061",)))
        self.assertEqual(sip.tls.certificates_pem, self.certificate.read_bytes())
        self.assertEqual(sip.peer_transport, "UDP")

    def test_missing_credentials_are_named(self) -> None:
        """Without the certificate or key the error names the missing option."""
        error = self.assertRaises(usage.UsageError, self.tls)
        self.assertIn("--sip-tls-certificate and --sip-tls-key", str(error))
        error = self.assertRaises(
            usage.UsageError, self.tls, "--sip-tls-certificate", str(self.certificate)
        )
        self.assertIn("--sip-tls needs --sip-tls-key", str(error))

    def test_unreadable_file_is_named(self) -> None:
        """A certificate file that cannot be read stops the role naming the option and the path."""
        missing = str(self.certificate) + ".gone"
        error = self.assertRaises(
            usage.UsageError,
            self.tls,
            "--sip-tls-certificate",
            missing,
            "--sip-tls-key",
            str(self.key),
        )
        self.assertIn(f"cannot read --sip-tls-certificate {missing}", str(error))

    def test_not_pem_and_wrong_key(self) -> None:
        """A key file that is no PEM, or another certificate's key, is refused naming --sip-tls-key."""
        garbage = Path(self.mktemp())
        garbage.write_text("not a key")
        error = self.assertRaises(
            usage.UsageError,
            self.tls,
            "--sip-tls-certificate",
            str(self.certificate),
            "--sip-tls-key",
            str(garbage),
        )
        self.assertIn("--sip-tls-key", str(error))
        _, other_key = write_sip_certificate(Path(self.mktemp()))
        error = self.assertRaises(
            usage.UsageError,
            self.tls,
            "--sip-tls-certificate",
            str(self.certificate),
            "--sip-tls-key",
            str(other_key),
        )
        self.assertIn("is not the key of the first certificate", str(error))

    def test_tls_alone_is_refused(self) -> None:
        """--sip-tls needs a --sip listener: other super-nodes do not speak TLS to us."""
        error = self.assertRaises(
            usage.UsageError,
            parse,
            "--sip-tls",
            "tcp:5061",
            "--sip-tls-certificate",
            str(self.certificate),
            "--sip-tls-key",
            str(self.key),
        )
        self.assertIn("give a --sip listener too", str(error))

    def test_ini_keys(self) -> None:
        """The INI file takes sip-tls (repeatable) and the two file keys."""
        options = Options()
        options.use_config_text(
            "[peer]\nbootstrap = tcp:127.0.0.1:6084\nsip = udp:5060\nsip-trusted-network = yes\n"
            "sip-tls = tcp:5061 tcp:5062:interface=127.0.0.1\n"
            f"sip-tls-certificate = {self.certificate}\nsip-tls-key = {self.key}\n",
            "peer.ini",
        )
        options.parseOptions([])
        assert options.config.sip is not None
        self.assertEqual(
            options.config.sip.tls_listeners, ("tcp:5061", "tcp:5062:interface=127.0.0.1")
        )


class AdminTokenTests(SynchronousTestCase):
    """The role makes its admin token in --data-dir and its API asks for it."""

    def test_token_made_and_required(self) -> None:
        """makeService writes admin-token (0600); the API refuses requests without it, takes it with."""
        data_dir = Path(self.mktemp())
        reactor = MemoryUDPReactor()
        service = makeService(parse("--data-dir", str(data_dir)), reactor)
        path = data_dir / TOKEN_FILE_NAME
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        token = path.read_text().strip()
        service.startService()
        self.addCleanup(service.stopService)
        [site] = [factory for port, factory, *_ in reactor.tcpServers if port == 8085]

        def code(token: str | None) -> int:
            connection = Connection(site, IPv4Address("TCP", "127.0.0.1", 8085))
            connection.send(
                http_request("GET", "/api/get?name=x", host="127.0.0.1:8085", token=token)
            )
            return connection.response().code

        self.assertEqual(code(None), 401)
        self.assertEqual(code("0" * len(token)), 401)
        self.assertEqual(code(token), 503)  # past the token: the node is not in a ring

    def test_bad_token_file_stops_the_role(self) -> None:
        """A world-readable token file stops the role with the file and the fix."""
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        path = data_dir / TOKEN_FILE_NAME
        path.write_text("x" * 43)
        path.chmod(0o644)
        error = self.assertRaises(
            usage.UsageError, makeService, parse("--data-dir", str(data_dir)), MemoryUDPReactor()
        )
        self.assertIn(f"chmod 600 {path}", str(error))


class SecretTests(SynchronousTestCase):
    """The nonce secret in the data directory."""

    def test_created_once(self) -> None:
        """The secret is created with mode 0600 and read back unchanged."""
        directory = self.mktemp()
        os.makedirs(directory)
        first = load_or_create_secret(directory)
        self.assertEqual(len(first), 32)
        self.assertEqual(load_or_create_secret(directory), first)
        self.assertEqual(os.stat(os.path.join(directory, NONCE_SECRET_FILE)).st_mode & 0o777, 0o600)

    def test_short_secret_refused(self) -> None:
        """A truncated secret file is an error naming the file."""
        directory = self.mktemp()
        os.makedirs(directory)
        Path(directory, NONCE_SECRET_FILE).write_bytes(b"short")
        error = self.assertRaises(ValueError, load_or_create_secret, directory)
        self.assertIn(NONCE_SECRET_FILE, str(error))
