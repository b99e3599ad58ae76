"""Tests for the p2psip-mediator role: configuration and service wiring."""

from __future__ import annotations

from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles import mediator as role
from p2psip.testing import MemoryUDPReactor, repository_root


class ConfigTests(SynchronousTestCase):
    def test_example_config_parses(self) -> None:
        """The annotated etc/mediator.ini is valid and matches the defaults it documents."""
        text = (repository_root() / "etc" / "mediator.ini").read_text()
        config = role.config_from_string(text)
        self.assertEqual(config.stun, ("udp:3478", "tcp:3478"))
        self.assertEqual(config.control, "tcp:3479")
        self.assertTrue(config.policy.relay_enabled)
        self.assertEqual(config.relay_limits.rate_bytes_per_second, 1048576)

    def test_unknown_key(self) -> None:
        """An unknown key is an error that names the key and section."""
        error = self.assertRaises(ValueError, role.config_from_string, "[relay]\nenable = no\n")
        self.assertIn("'enable' in [relay]", str(error))

    def test_unknown_section(self) -> None:
        """An unknown section is an error that lists the known ones."""
        error = self.assertRaises(ValueError, role.config_from_string, "[relais]\n")
        self.assertIn("[relais]", str(error))

    def test_bad_value(self) -> None:
        """A value of the wrong type names the key and the expected type."""
        error = self.assertRaises(ValueError, role.config_from_string, "[limits]\nmax-clients = many\n")
        self.assertIn("max-clients must be an integer", str(error))

    def test_relay_disabled(self) -> None:
        """[relay] enabled = no reaches the broker policy."""
        config = role.config_from_string("[relay]\nenabled = no\n")
        self.assertFalse(config.policy.relay_enabled)

    def test_udp_description(self) -> None:
        """udp:PORT[:interface=ADDR] parses; anything else is refused."""
        self.assertEqual(role.parse_udp("udp:3478:interface=192.0.2.1"), (3478, "192.0.2.1"))
        self.assertRaises(ValueError, role.parse_udp, "udp:x")
        self.assertRaises(ValueError, role.parse_udp, "udp:1:backlog=2")


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
        config = options["resolved"]
        self.assertEqual((config.control, config.http), ("tcp:5000", "tcp:4001"))
        self.assertEqual(options["secrets"].secret_for("anyone"), b"x")

    def test_secrets_file(self) -> None:
        """Per-ID secrets come from --secrets-file; a bad line is named."""
        path = Path(self.mktemp())
        path.write_text("alice a1\n")
        self.assertEqual(self.parse("--secrets-file", str(path))["secrets"].secret_for("alice"), b"a1")
        path.write_text("alice\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--secrets-file", str(path))
        self.assertIn("line 1", str(error))

    def test_bad_stun(self) -> None:
        """A malformed UDP STUN listener is a usage error."""
        self.assertRaises(usage.UsageError, self.parse, "--secret", "x", "--stun", "udp:nope")

    def test_no_relay(self) -> None:
        """--no-relay disables relaying."""
        self.assertFalse(self.parse("--secret", "x", "--no-relay")["resolved"].policy.relay_enabled)


class MakeServiceTests(SynchronousTestCase):
    def test_listeners(self) -> None:
        """The service listens for STUN on UDP and TCP, for control, and for HTTP status."""
        options = role.Options()
        options.parseOptions(["--secret", "x", "--stun", "udp:13478", "--stun", "tcp:13478", "--control", "tcp:13479"])
        reactor = MemoryUDPReactor()
        service = role.makeService(options, reactor=reactor)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(sorted(port for port, *_ in reactor.tcpServers), [8087, 13478, 13479])
        self.assertEqual(list(reactor.udpPorts), [13478])
        self.assertEqual(service.broker.stun_tcp_port, 13478)  # type: ignore[attr-defined]
