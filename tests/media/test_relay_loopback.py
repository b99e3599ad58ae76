"""The relay on loopback UDP: latching, strangers, and ports freed after BYE and idleness."""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from p2psip.media.anchor import MediaAnchor, MediaPolicy
from p2psip.media.relay import PortPool, pair_sides
from p2psip.media.sdp import parse_sdp
from p2psip.media.sessions import RelaySessions
from p2psip.media.udp import LegProtocol, RelayService, UdpSocketOpener
from p2psip.sip.transaction import Hop
from p2psip.testing import free_port
from tests.media.messages import CALLEE_TAG, request, response, sdp
from tests.media.test_anchor import TO_NODE
from tests.media.test_relay import rtp

LOCAL = "127.0.0.1"


class Endpoint(DatagramProtocol):
    """A phone's media socket: keeps what arrives, with its source."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.received.append((datagram, addr))
        for entry in list(self._waiting):
            if len(self.received) >= entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def wait_for(self, count: int) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        if len(self.received) >= count:
            waiting.callback(None)
        else:
            self._waiting.append((count, waiting))
        return waiting.addTimeout(5, reactor)

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.write(data, to)


def port_range(pairs: int) -> tuple[int, int]:
    """A run of ports starting at one the system just handed out (busy ones are skipped)."""
    low = min(free_port(socket.SOCK_DGRAM), 65535 - 4 * pairs)
    return low, low + 2 * pairs


class RelayLoopbackTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.clock = Clock()
        low, high = port_range(16)
        self.sessions = RelaySessions(
            PortPool(low, high), UdpSocketOpener(reactor, LOCAL), idle_timeout_seconds=30
        )
        self.anchor = MediaAnchor(self.sessions, MediaPolicy.ALWAYS, LOCAL, self.clock)
        self.service = RelayService(self.sessions, self.clock, interval=5)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def endpoint(self) -> tuple[Endpoint, int]:
        protocol = Endpoint()
        port = reactor.listenUDP(0, protocol, interface=LOCAL)
        self.addCleanup(port.stopListening)
        return protocol, port.getHost().port

    def call(self, caller_sdp_port: int, callee_port: int, call_id: str) -> tuple[int, int]:
        """Offer and answer through the anchor: the relay ports the caller and callee send to."""
        invite = request("INVITE", sdp(LOCAL, caller_sdp_port), call_id=call_id)
        offer = self.anchor.request_forwarding(invite, Hop("UDP", LOCAL, 5070), TO_NODE)
        assert offer is not None
        answer = response(invite, 200, sdp(LOCAL, callee_port))
        self.anchor.response_forwarding(answer)
        [to_callee] = [parse_sdp(offer).streams[0].port]
        [to_caller] = [parse_sdp(answer.body).streams[0].port]
        return to_caller, to_callee

    @inlineCallbacks
    def test_latching_strangers_and_bye(self) -> Generator[Deferred[Any], Any, None]:
        """
        The caller sends from another port than its SDP names: the relay
        latches onto it and the callee's answer reaches that port; a
        stranger is dropped; after BYE the ports are free to bind again.
        """
        caller, caller_port = self.endpoint()
        callee, callee_port = self.endpoint()
        stranger, _ = self.endpoint()
        sdp_port = free_port(socket.SOCK_DGRAM)  # the phone's own idea; its NAT maps it elsewhere
        relay_for_caller, relay_for_callee = self.call(sdp_port, callee_port, "call-1")
        self.assertNotEqual(sdp_port, caller_port)
        caller.send(rtp(1), (LOCAL, relay_for_caller))
        yield callee.wait_for(1)
        self.assertEqual(callee.received[0], (rtp(1), (LOCAL, relay_for_callee)))
        callee.send(rtp(7), (LOCAL, relay_for_callee))
        yield caller.wait_for(1)
        self.assertEqual(caller.received[0], (rtp(7), (LOCAL, relay_for_caller)))
        stranger.send(rtp(99), (LOCAL, relay_for_caller))
        caller.send(rtp(3), (LOCAL, relay_for_caller))
        yield callee.wait_for(2)
        self.assertEqual([data for data, _ in callee.received], [rtp(1), rtp(3)])
        session = self.sessions.get("call-1")
        assert session is not None
        caller_sent = session.direction(True)
        self.assertEqual((caller_sent.packets, caller_sent.strangers, caller_sent.lost), (2, 1, 1))
        self.assertEqual(session.direction(False).packets, 1)
        self.anchor.request_forwarding(
            request("BYE", to_tag=CALLEE_TAG, cseq=2), Hop("UDP", LOCAL, 5070), []
        )
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual((len(self.sessions), self.sessions.pool.in_use), (0, 0))
        for port in (
            relay_for_caller,
            relay_for_caller + 1,
            relay_for_callee,
            relay_for_callee + 1,
        ):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind((LOCAL, port))

    @inlineCallbacks
    def test_idle_call_is_freed(self) -> Generator[Deferred[Any], Any, None]:
        """An answered call that stops sending is ended by the sweep after the idle timeout."""
        caller, _ = self.endpoint()
        callee, callee_port = self.endpoint()
        relay_for_caller, _ = self.call(free_port(socket.SOCK_DGRAM), callee_port, "call-2")
        caller.send(rtp(1), (LOCAL, relay_for_caller))
        yield callee.wait_for(1)
        self.clock.advance(5)  # the sweep sees the packet
        self.assertEqual(len(self.sessions), 1)
        self.clock.advance(30)
        self.assertEqual((len(self.sessions), self.sessions.pool.in_use), (0, 0))
        self.assertEqual(self.sessions.ended["idle"], 1)
        yield deferLater(reactor, 0, lambda: None)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCAL, relay_for_caller))


class _RefusingSocket:
    """A socket whose buffer is full: every send fails as a busy host's would."""

    def __init__(self, error: OSError) -> None:
        self.error = error
        self.sent = 0

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sent += 1
        raise self.error


class SendFailureTests(TestCase):
    def test_full_buffer_is_counted_not_raised(self) -> None:
        """EAGAIN, ENOBUFS or a refusal drop the packet and count it; an interrupted send is retried."""
        stream = pair_sides("audio", 40000, 40002)
        caller, callee = stream.caller.rtp, stream.callee.rtp
        callee.expect((LOCAL, 6000), None)
        protocol = LegProtocol(caller)
        for error in (BlockingIOError(), OSError(105, "No buffer space"), ConnectionRefusedError()):
            refusing = _RefusingSocket(error)
            protocol.partner_socket = refusing  # type: ignore[assignment]
            protocol.datagramReceived(rtp(1), (LOCAL, 5000))
            self.assertEqual(refusing.sent, 1)
        self.assertEqual(caller.send_failures, 3)
        interrupted = _RefusingSocket(InterruptedError())
        protocol.partner_socket = interrupted  # type: ignore[assignment]
        protocol.datagramReceived(rtp(2), (LOCAL, 5000))
        self.assertEqual((interrupted.sent, caller.send_failures), (2, 4))
