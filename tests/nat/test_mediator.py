"""Tests for the mediator's control server, relay splicing and status pages (fake transports, fake clock)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import broker, control_auth, control_protocol, mediator

SECRET = b"secret"


class ClosingTransport(StringTransport):
    """A StringTransport whose loseConnection really ends the protocol."""

    def __init__(self, protocol: Any, host: str, port: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", host, port))
        self.protocol = protocol
        self.aborted = False

    def loseConnection(self) -> None:
        if not self.disconnecting:
            super().loseConnection()
            from twisted.python.failure import Failure
            from twisted.internet.error import ConnectionDone

            self.protocol.connectionLost(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


def frames(transport: StringTransport) -> list[dict[str, Any]]:
    messages = control_protocol.FrameDecoder().feed(transport.value())
    return messages


class ControlServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = broker.Broker(self.clock, control_auth.Secrets(shared=SECRET))
        self.factory = mediator.ControlServerFactory(
            self.broker,
            self.clock,
            mediator.RelayLimits(
                max_bytes_per_session=100, rate_bytes_per_second=10, idle_timeout_seconds=30
            ),
            connections_per_minute_per_address=3,
        )

    def connect(
        self, host: str = "198.51.100.1", port: int = 4000
    ) -> tuple[mediator.ControlServerProtocol, ClosingTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = ClosingTransport(protocol, host, port)
        protocol.makeConnection(transport)
        return protocol, transport

    def login(
        self, client_id: str, port: int = 4000
    ) -> tuple[mediator.ControlServerProtocol, ClosingTransport]:
        protocol, transport = self.connect(port=port)
        nonce = frames(transport)[0]["nonce"]
        transport.clear()
        protocol.dataReceived(
            control_protocol.encode_frame(
                {
                    "type": "hello",
                    "version": 1,
                    "id": client_id,
                    "mac": control_auth.compute_mac(
                        control_auth.derive_client_secret(SECRET, client_id), nonce, client_id
                    ),
                }
            )
        )
        return protocol, transport

    def test_challenge_first(self) -> None:
        """The mediator speaks first with a challenge naming its STUN ports."""
        _, transport = self.connect()
        [challenge] = frames(transport)
        self.assertEqual((challenge["type"], challenge["stun_tcp_port"]), ("challenge", 3478))

    def test_garbage_closes_quietly(self) -> None:
        """Garbage closes the connection with only a debug-level event."""
        protocol, transport = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\xff\xffGET / HTTP/1.1\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual({e["log_level"] for e in events}, {LogLevel.debug})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_auth_timeout(self) -> None:
        """A connection that never authenticates is closed after the timeout."""
        _, transport = self.connect()
        self.clock.advance(mediator.AUTH_TIMEOUT_SECONDS)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_login_cancels_timeout(self) -> None:
        """An authenticated client stays connected past the timeout."""
        _, transport = self.login("alice")
        self.clock.advance(mediator.AUTH_TIMEOUT_SECONDS * 2)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(frames(transport)[0]["type"], "welcome")
        self.assertEqual(frames(transport)[0]["observed"], ["198.51.100.1", 4000])

    def test_control_message_flood_closes(self) -> None:
        """An address sending control messages past its rate is told so and disconnected."""
        self.factory = mediator.ControlServerFactory(
            self.broker, self.clock, messages_per_second=1, message_burst=3
        )
        protocol, transport = self.login("alice")
        transport.clear()
        ping = control_protocol.encode_frame({"type": "ping"})
        with capturedLogs() as events:
            protocol.dataReceived(ping * 5)
        replies = frames(transport)
        self.assertEqual([r["type"] for r in replies], ["pong", "pong", "error"])
        self.assertEqual(replies[-1]["code"], "busy")
        self.assertIn("control-messages-per-second", replies[-1]["reason"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.message_floods, 1)
        self.assertEqual([e["log_level"] for e in events].count(LogLevel.warn), 1)

    def test_control_messages_refill(self) -> None:
        """Messages at the allowed rate are all served."""
        self.factory = mediator.ControlServerFactory(
            self.broker, self.clock, messages_per_second=1, message_burst=2
        )
        protocol, transport = self.login("alice")
        ping = control_protocol.encode_frame({"type": "ping"})
        for _ in range(5):
            self.clock.advance(1)
            protocol.dataReceived(ping)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.message_floods, 0)

    def test_rate_limit(self) -> None:
        """Connections beyond the per-address rate are aborted before any challenge."""
        for _ in range(3):
            self.connect()
        _, transport = self.connect()
        self.assertTrue(transport.aborted)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.broker.metrics.rejected_connections, 1)
        _, other = self.connect(host="198.51.100.2")
        self.assertFalse(other.aborted)

    def test_relay_join_with_bad_token(self) -> None:
        """A relay-join for an unknown session is refused: never an open relay."""
        protocol, transport = self.connect()
        transport.clear()
        protocol.dataReceived(
            control_protocol.encode_frame(
                {"type": "relay-join", "version": 1, "session": "x", "token": "y"}
            )
        )
        self.assertEqual(frames(transport)[0]["code"], "relay-refused")
        self.assertTrue(transport.disconnecting)

    def relayed_pair(self) -> tuple[Any, Any, Any, Any]:
        alice, alice_t = self.login("alice", 4000)
        bob, bob_t = self.login("bob", 4001)
        alice.dataReceived(
            control_protocol.encode_frame(
                {"type": "connect", "ref": 1, "to": "bob", "kind": "tcp", "methods": ["relayed"]}
            )
        )
        session = frames(alice_t)[-1]["session"]
        for protocol, port in ((alice, 5000), (bob, 5001)):
            protocol.dataReceived(
                control_protocol.encode_frame(
                    {
                        "type": "probed",
                        "session": session,
                        "local_ip": "10.0.0.1",
                        "hole_port": port,
                        "observations": [[port, "198.51.100.1", port]],
                    }
                )
            )
        token = frames(alice_t)[-1]["token"]
        halves = []
        for port in (6000, 6001):
            protocol, transport = self.connect(host="198.51.100.2", port=port)
            transport.clear()
            protocol.dataReceived(
                control_protocol.encode_frame(
                    {"type": "relay-join", "version": 1, "session": session, "token": token}
                )
            )
            halves.append((protocol, transport))
        (a, a_t), (b, b_t) = halves
        self.assertEqual(frames(a_t), [{"type": "relay-ready", "session": session}])
        a_t.clear()
        b_t.clear()
        return a, a_t, b, b_t

    def test_relay_forwards_and_counts(self) -> None:
        """Once both halves joined, bytes are copied across and counted."""
        a, a_t, b, b_t = self.relayed_pair()
        a.dataReceived(b"hello")
        b.dataReceived(b"world")
        self.assertEqual((b_t.value(), a_t.value()), (b"hello", b"world"))
        self.assertEqual(self.broker.status()["relayed_bytes"], 10)
        self.assertEqual(self.broker.status()["successes"], {"relayed": 1})

    def test_relay_rate_limit_pauses(self) -> None:
        """A side that exceeds the byte rate is paused, then resumed on the clock."""
        a, a_t, b, b_t = self.relayed_pair()
        a.dataReceived(b"x" * 30)
        self.assertEqual(a_t.producerState, "paused")
        self.clock.advance(2)
        self.assertEqual(a_t.producerState, "producing")

    def test_relay_byte_limit_closes(self) -> None:
        """Passing the per-session byte limit ends both halves and frees the slots."""
        a, a_t, b, b_t = self.relayed_pair()
        a.dataReceived(b"x" * 101)
        self.assertTrue(a_t.disconnecting and b_t.disconnecting)
        self.assertEqual(self.broker.relay_counts, {})
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_relay_idle_timeout(self) -> None:
        """An idle relay is closed after the idle timeout."""
        a, a_t, b, b_t = self.relayed_pair()
        self.clock.advance(31)
        self.assertTrue(a_t.disconnecting and b_t.disconnecting)

    def test_one_side_closing_ends_relay(self) -> None:
        """When one half closes, the other is closed too."""
        a, a_t, b, b_t = self.relayed_pair()
        a_t.loseConnection()
        self.assertTrue(b_t.disconnecting)
        self.assertEqual(self.broker.relay_counts, {})


class RateLimitTests(SynchronousTestCase):
    def test_window(self) -> None:
        """An address gets `limit` connections per window, then more after the window."""
        clock = Clock()
        limit = mediator.ConnectionRateLimit(clock, 2, window_seconds=60)
        self.assertEqual([limit.admit("a") for _ in range(3)], [True, True, False])
        self.assertTrue(limit.admit("b"))
        clock.advance(60)
        self.assertTrue(limit.admit("a"))


class StunCollectorTests(SynchronousTestCase):
    def test_counters_read_when_scraped(self) -> None:
        """The responder's plain integers are exported as counters, read at each scrape."""
        counters = {"requests": 3, "responses": 2, "errors": 1, "dropped": 0}
        registry = CollectorRegistry(auto_describe=True)
        registry.register(mediator.StunCollector(lambda: counters))
        counters["requests"] += 1
        self.assertEqual(
            [
                registry.get_sample_value(f"p2psip_mediator_stun_{name}_total")
                for name in ("requests", "responses", "errors", "dropped")
            ],
            [4.0, 2.0, 1.0, 0.0],
        )
