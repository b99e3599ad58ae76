"""The thin client role's options and how makeService composes it (no sockets)."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles.client import Options, makeService
from p2psip.roles.client_options import DEFAULT_SIP_LISTENERS, is_loopback_listener
from p2psip.testing import MemoryUDPReactor
from p2psip.util.admin_token import TOKEN_FILE_NAME
from tests.web.test_site import Connection, http_request


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(["--bootstrap", "tcp:127.0.0.1:6084", "--insecure", *argv])
    return options


class ClientOptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """By default the adaptor listens on UDP and TCP 5062 on loopback, without Digest."""
        config = parse().config
        self.assertEqual(config.sip.listeners, DEFAULT_SIP_LISTENERS)
        self.assertTrue(config.sip.trusted_network)
        self.assertEqual(config.http, "tcp:8088:interface=127.0.0.1")
        self.assertEqual(config.data_dir, Path("/var/lib/p2psip/client"))
        self.assertFalse(config.found_ring)

    def test_needs_bootstrap(self) -> None:
        """Without --bootstrap the role refuses to start and says what to give."""
        options = Options()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--insecure"])
        self.assertIn("--bootstrap", str(error))

    def test_exposed_listener_needs_digest(self) -> None:
        """A listener other hosts can reach needs --users or --sip-trusted-network."""
        error = self.assertRaises(usage.UsageError, parse, "--sip", "udp:5062")
        self.assertIn("--users FILE", str(error))
        self.assertIn("--sip-trusted-network", str(error))
        self.assertTrue(
            parse("--sip", "udp:5062", "--sip-trusted-network").config.sip.trusted_network
        )
        users = Path(self.mktemp())
        users.write_text("")
        config = parse("--sip", "udp:5062", "--users", str(users)).config
        self.assertFalse(config.sip.trusted_network)

    def test_media_relay(self) -> None:
        """--media-relay sends calls through super-nodes' relays: no ports of the client's own."""
        self.assertIsNone(parse().config.sip.media)
        media = parse("--media-relay", "always").config.sip.media
        assert media is not None
        self.assertEqual((media.policy, media.low_port, media.high_port), ("always", 0, 0))
        error = self.assertRaises(usage.UsageError, parse, "--media-relay", "sometimes")
        self.assertIn("never, nat-only, always", str(error))
        self.assertRaises(usage.UsageError, parse, "--media-ports", "40000-40999")

    def test_mediator(self) -> None:
        """--mediator needs the client's secret there and makes the adaptor reached over TCP."""
        self.assertIsNone(parse().config.mediator)
        self.assertEqual(parse().config.sip.peer_transport, "UDP")
        error = self.assertRaises(usage.UsageError, parse, "--mediator", "tcp:192.0.2.9:3479")
        self.assertIn("--mediator-secret", str(error))
        config = parse("--mediator", "tcp:192.0.2.9:3479", "--mediator-secret", "s3cret").config
        assert config.mediator is not None
        self.assertEqual(
            (config.mediator.endpoint, config.mediator.secret), ("tcp:192.0.2.9:3479", b"s3cret")
        )
        self.assertEqual(config.sip.peer_transport, "TCP")
        error = self.assertRaises(
            usage.UsageError,
            parse,
            "--mediator",
            "tcp:192.0.2.9:3479",
            "--mediator-secret",
            "s3cret",
            "--sip",
            "udp:5062:interface=127.0.0.1",
        )
        self.assertIn("--sip tcp:5062", str(error))

    def test_loopback_listeners(self) -> None:
        """Which listen strings count as loopback only."""
        self.assertTrue(is_loopback_listener("udp:5062:interface=127.0.0.1"))
        self.assertTrue(is_loopback_listener("tcp:5062:interface=\\:\\:1"))
        self.assertFalse(is_loopback_listener("udp:5062"))
        self.assertFalse(is_loopback_listener("tcp:5062:interface=0.0.0.0"))

    def test_no_ring_member_options(self) -> None:
        """A client has no overlay listener, successors or replicas to set."""
        for option in ("--overlay", "--successors", "--replicas", "--advertise"):
            self.assertRaises(usage.UsageError, parse, option, "1")

    def test_ini_section(self) -> None:
        """The [client] section of --config sets the same keys."""
        options = Options()
        options.use_config_text(
            "[client]\nbootstrap = tcp:192.0.2.1:6084 tcp:192.0.2.2:6084\ninsecure = yes\n"
            "sip = udp:5070:interface=127.0.0.1\nupdate-interval = 30\n"
        )
        options.parseOptions([])
        config = options.config
        self.assertEqual(config.bootstrap, ("tcp:192.0.2.1:6084", "tcp:192.0.2.2:6084"))
        self.assertEqual(config.sip.listeners, ("udp:5070:interface=127.0.0.1",))
        self.assertEqual(config.overlay.update_interval_seconds, 30.0)


class ClientServiceTests(SynchronousTestCase):
    def make(self) -> tuple[object, MemoryUDPReactor, Path]:
        data_dir = Path(self.mktemp())
        reactor = MemoryUDPReactor()
        role = makeService(
            parse("--data-dir", str(data_dir), "--sip", "udp:0:interface=127.0.0.1"), reactor
        )
        return role, reactor, data_dir

    def test_composes_in_order(self) -> None:
        """State database, attachment, SIP adaptor, then HTTP; nothing runs before startService."""
        role, _reactor, _data_dir = self.make()
        self.assertEqual(
            [type(s).__name__ for s in role],  # type: ignore[attr-defined]
            ["StateFlusher", "ClientOverlayService", "SipService", "_HttpListenerService"],
        )

    def test_mediator_client_first(self) -> None:
        """With --mediator the mediator client starts first and /status says whether it is logged in."""
        data_dir = Path(self.mktemp())
        reactor = MemoryUDPReactor()
        options = parse(
            "--data-dir",
            str(data_dir),
            "--sip",
            "tcp:0:interface=127.0.0.1",
            "--mediator",
            "tcp:192.0.2.9:3479",
            "--mediator-secret",
            "s3cret",
        )
        role = makeService(options, reactor)
        self.assertEqual(
            [type(s).__name__ for s in role],  # type: ignore[attr-defined]
            [
                "StateFlusher",
                "TraversalService",
                "ClientOverlayService",
                "SipService",
                "_HttpListenerService",
            ],
        )
        status = role.status()  # type: ignore[attr-defined]
        self.assertEqual(status["mediator"]["registered"], False)
        self.assertEqual(status["mediator"]["id"], status["node_id"])
        self.assertEqual(status["sip"]["paths"]["outgoing"], {})
        sip = role.sip  # type: ignore[attr-defined]
        self.assertIsNotNone(sip.transport.stream_connector)

    def test_status_and_metrics(self) -> None:
        """/status is JSON naming the state and attachment; /metrics parses as Prometheus text."""
        role, reactor, data_dir = self.make()
        role.startService()  # type: ignore[attr-defined]
        self.addCleanup(role.stopService)  # type: ignore[attr-defined]
        [site] = [factory for port, factory, *_ in reactor.tcpServers if port == 8088]
        token = (data_dir / TOKEN_FILE_NAME).read_text().strip()

        def get(path: str) -> bytes:
            connection = Connection(site, IPv4Address("TCP", "127.0.0.1", 8088))
            connection.send(http_request("GET", path, host="127.0.0.1:8088", token=token))
            response = connection.response()
            self.assertEqual(response.code, 200 if path != "/api/get?name=x" else 503)
            return bytes(response.body)

        status = json.loads(get("/status"))
        self.assertEqual((status["role"], status["state"]), ("client", "attaching"))
        self.assertIsNone(status["attachment"]["peer"])
        self.assertEqual(status["calls"]["started"], 0)
        self.assertEqual(status["sip"]["registered"], [])
        names = {family.name for family in text_string_to_metric_families(get("/metrics").decode())}
        self.assertIn("p2psip_overlay_links", names)
        self.assertIn("p2psip_overlay_request_seconds", names)
        get("/api/get?name=x")  # not attached yet: 503

    def test_loopback_adaptor_for_a_remote_ring_is_warned_about(self) -> None:
        """Attached to a peer on another host while announcing 127.0.0.1: one warning naming the fix."""
        role, _reactor, _data_dir = self.make()
        role.startService()  # type: ignore[attr-defined]
        self.addCleanup(role.stopService)  # type: ignore[attr-defined]

        class RemoteLink:
            remote_address = "192.0.2.1:6084"

        role.client.attacher.link = RemoteLink()  # type: ignore[attr-defined]
        with capturedLogs() as events:
            role.warn_if_unreachable()  # type: ignore[attr-defined]
            role.warn_if_unreachable()  # type: ignore[attr-defined]
        warnings = [e for e in events if "loopback address" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.assertIn("--sip-advertise", warnings[0]["log_format"])
        role.client.attacher.link = None  # type: ignore[attr-defined]
