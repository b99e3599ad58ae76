"""
Tests for the Twisted layer of the traversal client, in memory.

The mediator is a fake endpoint that connects every factory to a
``StringTransport``; the tests play the broker by writing frames into the
protocols and reading what the client wrote.  The reactor is a
``MemoryUDPReactor`` and time a fake clock.  Real sockets and a real
mediator are in ``tests.integration.test_traversal_loopback``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import control_auth, control_protocol
from p2psip.nat.traversal import TraversalClient, TraversalError, TraversalResult
from p2psip.nat.traversal_relay import RelayClientProtocol
from p2psip.nat.traversal_service import TraversalService
from p2psip.testing import MemoryUDPReactor

SECRET = b"memory-secret"
MEDIATOR = IPv4Address("TCP", "192.0.2.10", 3479)
LOCAL = IPv4Address("TCP", "10.0.0.2", 40000)
CHALLENGE = {
    "type": "challenge",
    "version": 1,
    "nonce": "cd" * 16,
    "stun_tcp_port": 3478,
    "stun_udp_port": 3478,
}
WELCOME = {"type": "welcome", "id": "alice", "observed": ["198.51.100.1", 40312]}


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class MemoryMediator:
    """An IStreamClientEndpoint whose connections are StringTransports."""

    def __init__(self) -> None:
        self.protocols: list[Any] = []
        self.refuse = False

    def connect(self, factory: Any) -> Deferred[Any]:
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(MEDIATOR)
        protocol.makeConnection(StringTransport(hostAddress=LOCAL, peerAddress=MEDIATOR))
        self.protocols.append(protocol)
        return succeed(protocol)


def send(protocol: Any, *messages: dict[str, Any]) -> None:
    protocol.dataReceived(b"".join(control_protocol.encode_frame(m) for m in messages))


def written(protocol: Any) -> list[dict[str, Any]]:
    """The frames the client wrote on ``protocol``'s connection since the last call."""
    transport = protocol.transport
    frames = control_protocol.FrameDecoder().feed(transport.value())
    transport.clear()
    return frames


class ClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryUDPReactor()
        self.mediator = MemoryMediator()
        self.incoming: list[TraversalResult] = []
        self.client = TraversalClient(
            self.reactor,
            self.mediator,
            "alice",
            SECRET,
            on_incoming=self.incoming.append,
            keepalive_seconds=25,
        )

    def register(self) -> Any:
        started = self.client.start()
        [control] = self.mediator.protocols
        send(control, CHALLENGE, WELCOME)
        self.assertIs(self.successResultOf(started), self.client)
        written(control)
        return control

    def test_registers(self) -> None:
        """The client answers the challenge and is registered once welcomed."""
        started = self.client.start()
        [control] = self.mediator.protocols
        send(control, CHALLENGE)
        [hello] = written(control)
        self.assertEqual(
            hello["mac"], control_auth.compute_mac(SECRET, CHALLENGE["nonce"], "alice")
        )
        self.assertNoResult(started)
        send(control, WELCOME)
        self.successResultOf(started)
        self.assertEqual(
            (self.client.online, self.client.observed), (True, ("198.51.100.1", 40312))
        )

    def test_refused_closes_and_fails(self) -> None:
        """A refused hello fails start() with the reason and drops the connection."""
        started = self.client.start()
        [control] = self.mediator.protocols
        send(
            control, CHALLENGE, {"type": "error", "code": "auth-failed", "reason": "check --secret"}
        )
        error = self.failureResultOf(started, TraversalError).value
        self.assertEqual(error.reason, "mediator refused us: check --secret (auth-failed)")
        self.assertTrue(control.transport.disconnecting)

    def test_unreachable(self) -> None:
        """An unreachable mediator fails start() naming --mediator."""
        self.mediator.refuse = True
        error = self.failureResultOf(self.client.start(), TraversalError).value
        self.assertIn("check --mediator", error.reason)

    def test_garbage_closes_the_link(self) -> None:
        """Garbage from the mediator closes the control connection instead of raising."""
        control = self.register()
        control.dataReceived(b"\xff\xff" + b"x" * 100)
        self.assertTrue(control.transport.disconnecting)

    def test_non_hex_nonce_closes_the_link(self) -> None:
        """
        A challenge whose nonce is not hex (a hostile mediator's "\u00e9")
        closes the connection, unanswered; the MAC code never sees it.
        """
        started = self.client.start()
        [control] = self.mediator.protocols
        body = (
            b'{"nonce":"\\u00e9","stun_tcp_port":3478,"stun_udp_port":3478,'
            b'"type":"challenge","version":1}'
        )
        control.dataReceived(control_protocol.FRAME_HEADER.pack(len(body)) + body)
        self.assertTrue(control.transport.disconnecting)
        self.assertEqual(written(control), [])
        self.assertNoResult(started)

    def test_protocol_violation_closes_the_link(self) -> None:
        """A second challenge (or any message out of order) closes the control connection."""
        control = self.register()
        send(control, CHALLENGE)
        self.assertTrue(control.transport.disconnecting)

    def test_incoming_refused_without_policy(self) -> None:
        """A client that accepts nothing refuses every incoming request."""
        control = self.register()
        send(
            control, {"type": "probe", "session": "s", "peer": "mallory", "kind": "tcp", "ref": -1}
        )
        self.assertEqual(
            written(control),
            [{"type": "refuse", "session": "s", "reason": "not accepting connections"}],
        )

    def test_keepalive_until_lost(self) -> None:
        """A registered client pings on the clock and stops when the connection is lost."""
        control = self.register()
        self.reactor.advance(25)
        self.reactor.advance(25)
        self.assertEqual(written(control), [{"type": "ping"}, {"type": "ping"}])
        control.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(self.client.closed), "gone")
        self.assertFalse(self.client.online)

    def test_connect_before_start(self) -> None:
        """connect() before registration fails at once."""
        error = self.failureResultOf(self.client.connect("bob", Factory()), TraversalError).value
        self.assertIn("call start() first", error.reason)

    def test_lost_fails_connects(self) -> None:
        """A connect in progress fails when the control connection goes."""
        control = self.register()
        d = self.client.connect("bob", Factory.forProtocol(Recorder))
        self.assertEqual(
            written(control),
            [{"type": "connect", "ref": 1, "to": "bob", "kind": "tcp", "methods": []}],
        )
        control.connectionLost(Failure(Exception("reset")))
        error = self.failureResultOf(d, TraversalError).value
        self.assertEqual(error.reason, "lost the control connection to the mediator")

    def test_relayed(self) -> None:
        """A relayed connection: probes, the relay-join connection, then the peer's bytes."""

        async def probes(server: tuple[str, int], count: int) -> list[tuple[int, str, int]]:
            self.assertEqual((server, count), (("192.0.2.10", 3478), 4))
            return [(40001, "198.51.100.1", 40001)]

        self.patch(self.client, "_tcp_probes", probes)
        control = self.register()
        d = self.client.connect("bob", Factory.forProtocol(Recorder), [control_protocol.RELAYED])
        send(control, {"type": "probe", "session": "s1", "peer": "bob", "kind": "tcp", "ref": 1})
        self.assertEqual([m["type"] for m in written(control)], ["connect", "probed"])
        send(control, {"type": "relay", "session": "s1", "token": "t0k", "reason": "no luck"})
        relay = self.mediator.protocols[-1]
        self.assertIsInstance(relay, RelayClientProtocol)
        send(relay, CHALLENGE)
        self.assertEqual(
            written(relay),
            [{"type": "relay-join", "version": 1, "session": "s1", "token": "t0k"}],
        )
        relay.dataReceived(
            control_protocol.encode_frame({"type": "relay-ready", "session": "s1"}) + b"early"
        )
        send(
            control,
            {
                "type": "outcome",
                "session": "s1",
                "ok": True,
                "method": "relayed",
                "reason": "no luck",
            },
        )
        result = self.successResultOf(d)
        self.assertEqual(
            (result.method, result.peer_id, result.reason), ("relayed", "bob", "no luck")
        )
        assert isinstance(result.protocol, Recorder)
        relay.dataReceived(b" and late")
        self.assertEqual(result.protocol.data, b"early and late")

    def test_relay_broken_before_success(self) -> None:
        """A relay connection that closed before relay-ready fails the session on success."""

        async def probes(server: tuple[str, int], count: int) -> list[tuple[int, str, int]]:
            return [(40001, "198.51.100.1", 40001)]

        self.patch(self.client, "_tcp_probes", probes)
        control = self.register()
        d = self.client.connect("bob", Factory.forProtocol(Recorder))
        send(control, {"type": "probe", "session": "s1", "peer": "bob", "kind": "tcp", "ref": 1})
        send(control, {"type": "relay", "session": "s1", "token": "t", "reason": ""})
        self.mediator.protocols[-1].connectionLost(Failure(Exception("closed")))
        send(
            control,
            {"type": "outcome", "session": "s1", "ok": True, "method": "relayed", "reason": ""},
        )
        error = self.failureResultOf(d, TraversalError).value
        self.assertEqual(error.reason, "relay connection failed after the mediator set it up")


class RelayClientProtocolTests(SynchronousTestCase):
    def test_bytes_in_the_ready_segment(self) -> None:
        """Relayed bytes that arrive in the same segment as relay-ready reach the application."""
        reports: list[str | None] = []
        relay = RelayClientProtocol("s", "t", reports.append)
        relay.makeConnection(StringTransport())
        relay.dataReceived(
            control_protocol.encode_frame({"type": "relay-ready", "session": "s"})
            + b"p2psip-nat-ping\n"
        )
        self.assertEqual(reports, [None])
        user = Recorder()
        relay.attach(user)
        relay.dataReceived(b"more")
        self.assertEqual(user.data, b"p2psip-nat-ping\nmore")

    def test_refused(self) -> None:
        """A relay-join the mediator refuses is reported once, with its reason."""
        reports: list[str | None] = []
        relay = RelayClientProtocol("s", "t", reports.append)
        transport = StringTransport()
        relay.makeConnection(transport)
        send(relay, {"type": "error", "code": "relay-refused", "reason": "bad token"})
        relay.connectionLost(Failure(Exception("closed")))
        self.assertEqual(reports, ["relay refused: bad token"])
        self.assertTrue(transport.disconnecting)


class TraversalServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.reactor = MemoryUDPReactor()
        self.mediator = MemoryMediator()
        self.client = TraversalClient(self.reactor, self.mediator, "alice", SECRET)
        self.service = TraversalService(self.client, self.clock, retry_seconds=(1.0, 2.0))

    def test_retries_with_backoff_and_stops_cleanly(self) -> None:
        """An unreachable mediator is retried on the clock with growing delays; stopping cancels the retry."""
        attempts: list[float] = []

        class Refusing:
            def connect(inner, factory: Any) -> Deferred[Any]:
                attempts.append(self.clock.seconds())
                return fail(ConnectionRefusedError())

        self.client.mediator = Refusing()
        self.service.startService()
        for seconds in (1, 2, 2):
            self.clock.advance(seconds)
        self.assertEqual(attempts, [0.0, 1.0, 3.0, 5.0])
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reregisters_after_a_drop(self) -> None:
        """A registered client whose connection drops registers again after the first delay."""
        self.service.startService()
        waiting = self.service.when_registered()
        self.assertNoResult(waiting)
        send(self.mediator.protocols[0], CHALLENGE, WELCOME)
        self.assertIs(self.successResultOf(waiting), self.client)
        self.assertIs(self.successResultOf(self.service.when_registered()), self.client)
        self.mediator.protocols[0].connectionLost(Failure(Exception("reset")))
        self.assertFalse(self.service.registered)
        waiting = self.service.when_registered()
        self.clock.advance(1)
        send(self.mediator.protocols[1], CHALLENGE, WELCOME)
        self.successResultOf(waiting)
        stopped = self.service.stopService()
        self.assertTrue(self.mediator.protocols[1].transport.disconnecting)
        self.mediator.protocols[1].connectionLost(Failure(Exception("closed")))
        self.successResultOf(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refused_hello_backs_off(self) -> None:
        """A refused hello counts as a failed attempt: the delays grow."""
        self.service.startService()
        for number, seconds in enumerate((1.0, 2.0, 2.0)):
            protocol = self.mediator.protocols[number]
            send(protocol, CHALLENGE, {"type": "error", "code": "auth-failed", "reason": "no"})
            protocol.connectionLost(Failure(Exception("closed")))
            self.assertEqual(
                [c.getTime() - self.clock.seconds() for c in self.clock.getDelayedCalls()],
                [seconds],
            )
            self.clock.advance(seconds)
        self.assertEqual(len(self.mediator.protocols), 4)
        self.successResultOf(self.service.stopService())

    def test_stop_while_registering(self) -> None:
        """Stopping before welcome abandons the registration and closes the connection."""
        self.service.startService()
        waiting = self.service.when_registered()
        stopped = self.service.stopService()
        self.assertTrue(self.mediator.protocols[0].transport.disconnecting)
        self.successResultOf(stopped)
        self.assertNoResult(waiting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
