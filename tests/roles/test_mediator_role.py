"""Tests for the p2psip-mediator role: configuration and service wiring."""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.config import ConfigError, config_from_string
from p2psip.roles import mediator as role
from p2psip.testing import MemoryUDPReactor, repository_root
from p2psip.util.endpoints import UDPListenAddress


class ConfigTests(SynchronousTestCase):
    def test_example_config_parses(self) -> None:
        """The annotated etc/mediator.ini is valid and matches the defaults it documents."""
        text = (repository_root() / "etc" / "mediator.ini").read_text()
        text = text.replace("secrets-file = /etc/p2psip/mediator-secrets", "secret = x")
        options = config_from_string(text, role.Options)
        defaults = config_from_string("[mediator]\nsecret = x\n", role.Options)
        assert isinstance(options, role.Options) and isinstance(defaults, role.Options)
        self.assertEqual(options["stun"], ["udp:3478", "tcp:3478"])
        self.assertEqual(options.config.policy, defaults.config.policy)
        self.assertEqual(options.config.relay_limits, defaults.config.relay_limits)

    def test_unknown_key(self) -> None:
        """An unknown key is an error that names the key and suggests the right one."""
        error = self.assertRaises(
            ConfigError, config_from_string, "[mediator]\nrelays = no\n", role.Options
        )
        self.assertIn("'relays'", str(error))
        self.assertIn("did you mean 'relay'", str(error))

    def test_bad_value(self) -> None:
        """A value of the wrong type names the key and what it takes."""
        error = self.assertRaises(
            ConfigError, config_from_string, "[mediator]\nrelay = maybe\n", role.Options
        )
        self.assertIn("yes or no", str(error))

    def test_relay_disabled(self) -> None:
        """relay = no reaches the broker policy, with the hint naming the setting."""
        options = config_from_string("[mediator]\nrelay = no\nsecret = x\n", role.Options)
        assert isinstance(options, role.Options)
        self.assertFalse(options.config.policy.relay_enabled)
        self.assertIn("[mediator] relay", options.config.policy.relay_config_hint)

    def test_http_allowed_hosts(self) -> None:
        """http-allowed-hosts is a list in the file, normalised, and reaches the site."""
        options = config_from_string(
            "[mediator]\nsecret = x\nhttp-allowed-hosts = Mediator.Example.org metrics.example\n",
            role.Options,
        )
        assert isinstance(options, role.Options)
        self.assertEqual(
            options.config.http_allowed_hosts, ("mediator.example.org", "metrics.example")
        )
        error = self.assertRaises(
            ConfigError,
            config_from_string,
            "[mediator]\nsecret = x\nhttp-allowed-hosts = a.example:80\n",
            role.Options,
        )
        self.assertIn("without a port", str(error))

    def test_stun_listeners(self) -> None:
        """UDP and stream listeners, IPv6 interfaces included, reach the config; bad ones are named."""
        options = config_from_string(
            "[mediator]\nsecret = x\nstun = udp:3478:interface=\\:\\: tcp:3480:interface=\\:\\:1\n",
            role.Options,
        )
        assert isinstance(options, role.Options)
        self.assertEqual(options.config.stun_udp, (UDPListenAddress(3478, "::"),))
        self.assertEqual(options.config.stun_stream, ("tcp:3480:interface=\\:\\:1",))
        self.assertEqual((options.config.stun_udp_port, options.config.stun_tcp_port), (3478, 3480))
        for bad in ("udp:x", "udp:1:backlog=2", "tcp:nope", "frob:1"):
            with self.subTest(bad=bad):
                error = self.assertRaises(
                    usage.UsageError,
                    config_from_string,
                    f"[mediator]\nsecret = x\nstun = {bad}\n",
                    role.Options,
                )
                self.assertIn("stun", str(error))


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> role.Options:
        options = role.Options()
        options.parseOptions(list(argv))
        return options

    def test_secret_required(self) -> None:
        """Without any client secret the mediator refuses to start and says which option to set."""
        error = self.assertRaises(usage.UsageError, self.parse)
        self.assertIn("--secret", str(error))

    def test_flags_win_over_config(self) -> None:
        """--control overrides the config file, which overrides the defaults."""
        path = Path(self.mktemp())
        path.write_text("[mediator]\ncontrol = tcp:4000\nhttp = tcp:4001\nsecret = x\n")
        options = self.parse("--config", str(path), "--control", "tcp:5000")
        self.assertEqual((options["control"], options["http"]), ("tcp:5000", "tcp:4001"))
        self.assertEqual(options.config.secrets.shared, b"x")

    def test_secrets_file(self) -> None:
        """Per-ID secrets come from --secrets-file; a bad line is named."""
        path = Path(self.mktemp())
        path.write_text("alice a1\n")
        self.assertEqual(
            self.parse("--secrets-file", str(path)).config.secrets.secret_for("alice"), b"a1"
        )
        path.write_text("alice\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--secrets-file", str(path))
        self.assertIn("line 1", str(error))

    def test_data_dir_secrets(self) -> None:
        """A 'secrets' file in --data-dir is used when no secret is given."""
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "secrets").write_text("bob b2\n")
        self.assertEqual(
            self.parse("--data-dir", str(folder)).config.secrets.secret_for("bob"), b"b2"
        )

    def test_bad_stun(self) -> None:
        """A malformed UDP STUN listener is a usage error."""
        self.assertRaises(usage.UsageError, self.parse, "--secret", "x", "--stun", "udp:nope")

    def test_limits_positive(self) -> None:
        """A zero limit is refused with the option's name."""
        error = self.assertRaises(
            usage.UsageError, self.parse, "--secret", "x", "--max-clients", "0"
        )
        self.assertIn("max-clients", str(error))

    def test_relay_and_message_limits(self) -> None:
        """max-relays and the control-message rate reach the broker and the control server."""
        config = self.parse(
            "--secret",
            "x",
            "--max-relays",
            "9",
            "--control-messages-per-second",
            "2.5",
            "--control-messages-burst",
            "7",
        ).config
        self.assertEqual(config.policy.max_relays, 9)
        self.assertEqual(
            (config.control_messages_per_second, config.control_messages_burst), (2.5, 7)
        )
        defaults = self.parse("--secret", "x").config
        self.assertEqual(
            (defaults.policy.max_relays, defaults.policy.max_relays_per_client), (256, 4)
        )
        for bad in (("--max-relays", "0"), ("--control-messages-per-second", "0")):
            error = self.assertRaises(usage.UsageError, self.parse, "--secret", "x", *bad)
            self.assertIn(bad[0][2:], str(error))
        role_service = role.makeService(
            self.parse("--secret", "x", "--control-messages-burst", "7"), reactor=MemoryUDPReactor()
        )
        self.assertEqual(role_service.control_factory._messages.burst, 7)

    def test_stun_rate_limit(self) -> None:
        """The STUN per-source limit is on by default, configurable, and 0 turns it off."""
        defaults = self.parse("--secret", "x").config
        self.assertEqual(
            (defaults.stun_requests_per_second, defaults.stun_request_burst), (100, 200)
        )
        for arguments, expected in (
            ((), (100.0, 200.0)),
            (("--stun-requests-per-second", "0"), None),
        ):
            reactor = MemoryUDPReactor()
            service = role.makeService(
                self.parse("--secret", "x", "--stun", "udp:13478", *arguments), reactor=reactor
            )
            service.startService()
            self.addCleanup(service.stopService)
            limit = reactor.udpPorts[13478].protocol.source_limit
            if expected is None:
                self.assertIsNone(limit)
            else:
                self.assertEqual((limit.buckets.rate_per_second, limit.buckets.burst), expected)
        error = self.assertRaises(
            usage.UsageError, self.parse, "--secret", "x", "--stun-requests-per-second", "-1"
        )
        self.assertIn("stun-requests-per-second", str(error))

    def test_stun_alternate_needs_primary_ip(self) -> None:
        """RFC 5780 needs the UDP listener bound to the primary IP; the error says how."""
        error = self.assertRaises(
            usage.UsageError, self.parse, "--secret", "x", "--stun-alternate", "192.0.2.2:3479"
        )
        self.assertIn("interface=PRIMARY_IP", str(error))
        options = self.parse(
            "--secret",
            "x",
            "--stun",
            "udp:3478:interface=192.0.2.1",
            "--stun-alternate",
            "192.0.2.2:3479",
        )
        self.assertEqual(options.config.alternate, ("192.0.2.2", 3479))
        options = self.parse(
            "--secret",
            "x",
            "--stun",
            "udp:3478:interface=2001\\:db8\\:\\:1",
            "--stun-alternate",
            "[2001:db8::2]:3479",
        )
        self.assertEqual(options.config.alternate, ("2001:db8::2", 3479))
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--secret",
            "x",
            "--stun",
            "udp:3478:interface=192.0.2.1",
            "--stun-alternate",
            "192.0.2.2",
        )
        self.assertIn("IP:PORT", str(error))

    def test_no_relay(self) -> None:
        """--relay no disables relaying."""
        self.assertFalse(self.parse("--secret", "x", "--relay", "no").config.policy.relay_enabled)


class MakeServiceTests(SynchronousTestCase):
    def test_listeners(self) -> None:
        """The service listens for STUN on UDP and TCP, for control, and for HTTP status."""
        options = role.Options()
        options.parseOptions(
            [
                "--secret",
                "x",
                "--stun",
                "udp:13478",
                "--stun",
                "tcp:13478",
                "--control",
                "tcp:13479",
            ]
        )
        reactor = MemoryUDPReactor()
        service = role.makeService(options, reactor=reactor)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [8087, 13478, 13479])
        self.assertEqual(list(reactor.udpPorts), [13478])
        self.assertEqual(service.broker.stun_tcp_port, 13478)

    def test_idle_stun_tcp_connections_close(self) -> None:
        """A STUN-over-TCP connection that sends nothing is closed after the idle timeout."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from p2psip.nat.stun_server import DEFAULT_TCP_IDLE_TIMEOUT_SECONDS

        options = role.Options()
        options.parseOptions(["--secret", "x", "--stun", "tcp:13478"])
        reactor = MemoryUDPReactor()
        service = role.makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [factory] = [f for port, f, *_ in reactor.tcpServers if port == 13478]
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        reactor.advance(DEFAULT_TCP_IDLE_TIMEOUT_SECONDS + 1)
        self.assertTrue(transport.disconnecting)

    def test_status_and_metrics(self) -> None:
        """The HTTP site serves the broker's numbers on /status and /metrics."""
        from twisted.web.test.requesthelper import DummyRequest

        options = role.Options()
        options.parseOptions(["--secret", "x"])
        reactor = MemoryUDPReactor()
        service = role.makeService(options, reactor=reactor)
        service.startService()
        self.addCleanup(service.stopService)
        broker = service.broker
        broker.metrics.attempted("relayed")
        broker.metrics.relayed(1234)
        listener = [factory for port, factory, *_ in reactor.tcpServers if port == 8087][0]
        site = listener.wrappedFactory  # behind the per-source connection limit
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(
            b"host", [b"127.0.0.1:80"]
        )  # DummyRequest's own address
        body = site.getResourceFor(request).render(request)
        text = body.decode() if isinstance(body, bytes) else b"".join(request.written).decode()
        self.assertIn('p2psip_mediator_attempts_total{method="relayed"} 1.0\n', text)
        self.assertIn("p2psip_mediator_relayed_bytes_total 1234.0\n", text)
        self.assertIn("p2psip_mediator_clients_online 0.0\n", text)
        self.assertIn("p2psip_mediator_stun_requests_total 0.0\n", text)
        request = DummyRequest([b"status"])
        request.requestHeaders.setRawHeaders(b"host", [b"localhost:80"])
        site.getResourceFor(request).render(request)
        self.assertIn(b'"relayed_bytes": 1234', b"".join(request.written))
