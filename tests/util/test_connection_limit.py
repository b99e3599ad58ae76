"""Tests for the per-source and total connection limits every stream listener shares."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.connection_limit import ConnectionLimitFactory


class Recording(Protocol):
    """Records what happens to it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.events.append(data.decode())

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append("lost")


class ConnectionLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[str] = []
        inner = Factory.forProtocol(lambda: Recording(self.events))
        self.factory = ConnectionLimitFactory(
            inner, Clock(), per_source=2, total=3, what="test", hint="--test-limit"
        )

    def connect(self, host: str, port: int = 40000) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_per_source_limit(self) -> None:
        """A third connection from one address is closed before the wrapped factory sees it."""
        self.connect("192.0.2.1")
        self.connect("192.0.2.1")
        with capturedLogs() as events:
            _, refused = self.connect("192.0.2.1")
            self.connect("192.0.2.1")
        self.assertTrue(refused.disconnecting)
        self.assertEqual(self.events, ["made", "made"])
        self.assertEqual(self.factory.refused, 2)
        warnings = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["source"], "192.0.2.x")
        self.assertIn("--test-limit", warnings[0]["hint"])

    def test_other_sources_still_served(self) -> None:
        """While one address is at its limit another is accepted."""
        self.connect("192.0.2.1")
        self.connect("192.0.2.1")
        _, transport = self.connect("192.0.2.2")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.events, ["made"] * 3)

    def test_total_limit(self) -> None:
        """Past the total every address is refused."""
        for host in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            self.connect(host)
        _, transport = self.connect("192.0.2.4")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.open_total, 3)

    def test_closed_connections_free_their_place(self) -> None:
        """A closed connection no longer counts, and the wrapped protocol hears of the close."""
        first, _ = self.connect("192.0.2.1")
        self.connect("192.0.2.1")
        first.connectionLost(None)
        _, transport = self.connect("192.0.2.1")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.events, ["made", "made", "lost", "made"])
        self.assertEqual(self.factory.open_by_source, {"192.0.2.1": 2})

    def test_data_reaches_the_wrapped_protocol(self) -> None:
        """Bytes and writes pass through the wrapper unchanged."""
        protocol, transport = self.connect("192.0.2.1")
        protocol.dataReceived(b"hello")
        protocol.write(b"back")
        self.assertEqual((self.events[-1], transport.value()), ("hello", b"back"))

    def test_bad_limits(self) -> None:
        """Limits below one connection are refused."""
        inner = Factory.forProtocol(Protocol)
        self.assertRaises(
            ValueError, ConnectionLimitFactory, inner, Clock(), 0, 1, what="x", hint="y"
        )
