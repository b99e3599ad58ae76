"""Tests for UDP hole punching and the punched-connection check (fake clock, fake datagram network)."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import holepunch, stun

TOKEN = holepunch.verify_token("session")


class FakeNetwork:
    """Delivers datagrams between fake ports; drops what ``blocked`` says."""

    def __init__(self) -> None:
        self.ports: dict[tuple[str, int], Any] = {}
        self.blocked: set[tuple[str, int]] = set()
        self.sent: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []

    def attach(self, protocol: DatagramProtocol, address: tuple[str, int]) -> None:
        network = self

        class Transport:
            def write(self, data: bytes, to: tuple[str, int]) -> None:
                network.sent.append((data, address, to))
                target = network.ports.get(to)
                if target is not None and to not in network.blocked:
                    target.datagramReceived(data, address)

            def getHost(self) -> IPv4Address:
                return IPv4Address("UDP", *address)

            def stopListening(self) -> None:
                protocol.doStop()

        self.ports[address] = protocol
        protocol.makeConnection(Transport())  # type: ignore[arg-type]


class Recorder(DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))


class UdpPunchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.network = FakeNetwork()
        self.a = holepunch.UdpPunchProtocol(self.clock)
        self.b = holepunch.UdpPunchProtocol(self.clock)
        self.network.attach(self.a, ("198.51.100.1", 4000))
        self.network.attach(self.b, ("198.51.100.2", 5000))

    def test_both_sides_succeed(self) -> None:
        """Two sides punching at each other both learn the path works."""
        da = self.a.start_punch(("198.51.100.2", 5000), TOKEN, 4)
        db = self.b.start_punch(("198.51.100.1", 4000), TOKEN, 4)
        self.assertEqual(self.successResultOf(da), ("198.51.100.2", 5000))
        self.assertEqual(self.successResultOf(db), ("198.51.100.1", 4000))
        self.clock.advance(1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_wrong_prediction_learns_peer_reflexive_address(self) -> None:
        """A side whose prediction was wrong still succeeds by answering where the peer's packets come from."""
        da = self.a.start_punch(("198.51.100.2", 5999), TOKEN, 4)
        db = self.b.start_punch(("198.51.100.1", 4000), TOKEN, 4)
        self.assertEqual(self.successResultOf(da), ("198.51.100.2", 5000))
        self.successResultOf(db)

    def test_one_way_path_fails_at_deadline(self) -> None:
        """When only one direction gets through, both fail at the deadline and say what they heard."""
        self.network.blocked.add(("198.51.100.1", 4000))
        da = self.a.start_punch(("198.51.100.2", 5000), TOKEN, 4)
        db = self.b.start_punch(("198.51.100.1", 4000), TOKEN, 4)
        self.clock.pump([0.05] * 90)
        self.assertIn(
            "never heard the peer", str(self.failureResultOf(da, holepunch.PunchFailed).value)
        )
        self.assertIn(
            "(heard the peer)", str(self.failureResultOf(db, holepunch.PunchFailed).value)
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_session_ignored(self) -> None:
        """Punch packets with another session's token do not count."""
        da = self.a.start_punch(("198.51.100.2", 5000), TOKEN, 1)
        db = self.b.start_punch(("198.51.100.1", 4000), holepunch.verify_token("other"), 1)
        self.clock.pump([0.05] * 30)
        self.failureResultOf(da, holepunch.PunchFailed)
        self.failureResultOf(db, holepunch.PunchFailed)

    def test_attach_delivers_peer_datagrams_only(self) -> None:
        """After attach the application gets the peer's datagrams, not punch packets or strangers' packets."""
        da = self.a.start_punch(("198.51.100.2", 5000), TOKEN, 4)
        db = self.b.start_punch(("198.51.100.1", 4000), TOKEN, 4)
        peer = self.successResultOf(da)
        self.successResultOf(db)
        user = Recorder()
        self.a.attach(user, peer)
        self.a.datagramReceived(b"media", peer)
        self.a.datagramReceived(b"spoof", ("203.0.113.9", 1))
        self.a.datagramReceived(holepunch.PUNCH_MAGIC + TOKEN + b"1", peer)
        self.assertEqual(user.received, [(b"media", peer)])

    def test_stun_probe_retransmits_then_times_out(self) -> None:
        """A UDP STUN probe is retransmitted and fails with a clear error when nobody answers."""
        d = self.a.stun_probe(("198.51.100.10", 3478), timeout_seconds=1)
        self.clock.pump([0.2] * 6)
        requests = [s for s in self.network.sent if s[2] == ("198.51.100.10", 3478)]
        self.assertGreaterEqual(len(requests), 5)
        self.assertIn("no STUN answer", str(self.failureResultOf(d, holepunch.PunchFailed).value))

    def test_stun_probe_answer(self) -> None:
        """The STUN answer's mapped address is the probe's result."""
        d = self.a.stun_probe(("198.51.100.10", 3478))
        request = stun.decode_message(self.network.sent[-1][0])
        answer = stun.binding_success(request, ("198.51.100.1", 4000))
        self.a.datagramReceived(stun.encode_message(answer), ("198.51.100.10", 3478))
        self.assertEqual(self.successResultOf(d), ("198.51.100.1", 4000))
        self.a.transport.stopListening()  # type: ignore[union-attr]
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_garbage_ignored(self) -> None:
        """Garbage and malformed STUN on the punching port are dropped."""
        self.a.datagramReceived(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"x" * 4, ("203.0.113.9", 1))
        self.a.datagramReceived(b"junk", ("203.0.113.9", 1))
        self.a.datagramReceived(holepunch.PUNCH_MAGIC, ("203.0.113.9", 1))


class VerifyStreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.left, self.right = socket.socketpair()
        self.addCleanup(self.left.close)
        self.addCleanup(self.right.close)

    def readable(self) -> None:
        for reader in list(self.reactor.readers):
            reader.doRead()

    def test_token_exchange(self) -> None:
        """A connection over which both sides' tokens arrive passes the check."""
        d = holepunch.verify_stream(self.reactor, self.left, TOKEN)
        self.right.sendall(TOKEN)
        self.readable()
        self.assertIs(self.successResultOf(d), self.left)
        self.assertEqual(self.right.recv(100), TOKEN)
        self.assertEqual((self.reactor.readers, self.reactor.getDelayedCalls()), (set(), []))

    def test_wrong_token(self) -> None:
        """A far end that is not this session's peer fails the check."""
        d = holepunch.verify_stream(self.reactor, self.left, TOKEN)
        self.right.sendall(holepunch.verify_token("other"))
        self.readable()
        self.assertIn("not the peer", str(self.failureResultOf(d, holepunch.PunchFailed).value))

    def test_no_data(self) -> None:
        """A connection where no bytes come back fails after the timeout, naming the cause."""
        d = holepunch.verify_stream(self.reactor, self.left, TOKEN, timeout_seconds=1.5)
        self.reactor.advance(1.5)
        self.assertIn(
            "only the handshake", str(self.failureResultOf(d, holepunch.PunchFailed).value)
        )
        self.assertEqual(self.reactor.readers, set())
