"""Tests for UDP hole punching (fake clock, fake datagram network)."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
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
        """Garbage, malformed STUN and strangers' punch packets get no reply, settle nothing and log at debug."""
        stranger = ("203.0.113.9", 1)
        probe = self.a.stun_probe(("198.51.100.10", 3478))
        [(request_bytes, _, _)] = self.network.sent
        self.network.blocked.add(("198.51.100.2", 5000))
        punch = self.a.start_punch(("198.51.100.2", 5000), TOKEN, 4)
        sent_before = list(self.network.sent)
        garbage = [
            b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"x" * 4,
            b"junk",
            holepunch.PUNCH_MAGIC,
            holepunch.PUNCH_MAGIC + holepunch.verify_token("other") + b"1",
            # A well-formed answer to a transaction nobody started.
            stun.encode_message(stun.binding_success(stun.binding_request(), stranger)),
        ]
        with capturedLogs() as events:
            for datagram in garbage:
                self.a.datagramReceived(datagram, stranger)
        self.assertEqual(self.network.sent, sent_before)
        self.assertNoResult(probe)
        self.assertNoResult(punch)
        self.assertEqual({e["log_level"] for e in events}, {LogLevel.debug})
        # The next punch packet still says "I haven't heard you yet".
        self.clock.advance(holepunch.PUNCH_INTERVAL_SECONDS)
        self.assertEqual(self.network.sent[-1][0], holepunch.PUNCH_MAGIC + TOKEN + b"0")
        # And the real STUN answer still settles the probe.
        answer = stun.binding_success(stun.decode_message(request_bytes), ("198.51.100.1", 4000))
        self.a.datagramReceived(stun.encode_message(answer), ("198.51.100.10", 3478))
        self.assertEqual(self.successResultOf(probe), ("198.51.100.1", 4000))
        self.a.transport.stopListening()  # type: ignore[union-attr]
        self.failureResultOf(punch, holepunch.PunchFailed)
        self.assertEqual(self.clock.getDelayedCalls(), [])
