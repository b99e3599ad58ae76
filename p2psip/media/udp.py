"""
The relay's Twisted side: one UDP socket per leg, and the periodic sweep.

:class:`UdpSocketOpener` binds the two partnered legs of
:func:`p2psip.media.relay.pair_sides` on the relay interface; each
socket's :class:`LegProtocol` asks its leg where a datagram goes and
writes it from the partner's socket, which is what makes the relay
symmetric.  That is the whole per-packet path: one method call and one
``write``.

:class:`RelayService` runs :meth:`p2psip.media.sessions.RelaySessions.sweep`
on the injected clock and closes every socket when the role stops.
"""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from p2psip.media.relay import Leg
from p2psip.media.sessions import RelaySessions
from p2psip.util.reactor import UDPReactor

#: The largest datagram relayed (RTP over Ethernet stays well under it).
MAX_DATAGRAM_BYTES = 2048
#: Socket buffers for the relay ports, so a burst of 200 calls fits.
SOCKET_BUFFER_BYTES = 1 << 18


class LegProtocol(DatagramProtocol):
    """
    One relay port: what arrives goes out of the partner leg's socket.

    The datagram is sent with the partner socket's own ``sendto``: the
    destination is an IPv4 address the leg took from a received packet or
    a parsed SDP, so the checks ``IListeningPort.write`` makes of every
    address (a third of the relay's CPU per packet) prove nothing here,
    and a full socket buffer (EAGAIN, ENOBUFS) drops the packet, counted,
    instead of raising into the reactor's log once per packet.
    """

    def __init__(self, leg: Leg) -> None:
        self.leg = leg
        self.partner: LegProtocol | None = None
        #: The partner's socket, set once both ports are bound.
        self.partner_socket: socket.socket | None = None

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        destination = self.leg.received(datagram, addr)
        if destination is None:
            return
        handle = self.partner_socket
        if handle is None:
            return
        try:
            handle.sendto(datagram, destination)
        except InterruptedError:
            self._send_again(handle, datagram, destination)
        except OSError:
            # Full buffers, an ICMP-refused destination, a closed socket: RTP
            # is loss-tolerant, and the receiving side counts the gap.
            self.leg.send_failures += 1

    def _send_again(
        self, handle: socket.socket, datagram: bytes, destination: tuple[str, int]
    ) -> None:
        try:
            handle.sendto(datagram, destination)
        except OSError:
            self.leg.send_failures += 1

    def doStop(self) -> None:
        if self.partner is not None:
            self.partner.partner_socket = None
        super().doStop()


class _OpenedPair:
    def __init__(self, ports: list[object]) -> None:
        self._ports = ports

    def close(self) -> None:
        for port in self._ports:
            port.stopListening()  # type: ignore[attr-defined]
        self._ports = []


class UdpSocketOpener:
    """Binds legs' ports on ``interface`` (the relay address, or all interfaces)."""

    def __init__(self, reactor: UDPReactor, interface: str = "") -> None:
        self.reactor = reactor
        self.interface = interface

    def open_pair(self, first: Leg, second: Leg) -> _OpenedPair:
        protocols = [LegProtocol(first), LegProtocol(second)]
        protocols[0].partner, protocols[1].partner = protocols[1], protocols[0]
        opened: list[object] = []
        try:
            for protocol in protocols:
                port = self.reactor.listenUDP(
                    protocol.leg.port,
                    protocol,
                    interface=self.interface,
                    maxPacketSize=MAX_DATAGRAM_BYTES,
                )
                _size_buffers(port)
                opened.append(port)
        except CannotListenError as e:
            _OpenedPair(opened).close()
            raise OSError(str(e.socketError)) from None
        for protocol, partner_port in zip(protocols, reversed(opened)):
            protocol.partner_socket = getattr(partner_port, "socket", None)
        return _OpenedPair(opened)


def _size_buffers(port: object) -> None:
    handle = getattr(port, "socket", None)
    if handle is None:
        return
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            handle.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            pass


class RelayService(Service):
    """Sweeps idle sessions every ``interval`` seconds; frees every port on stop."""

    log = Logger()

    def __init__(self, sessions: RelaySessions, clock: IReactorTime, interval: float = 5.0) -> None:
        self.sessions = sessions
        self.clock = clock
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock
        self.interval = interval

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def _sweep(self) -> None:
        for session in self.sessions.sweep(self.clock.seconds()):
            self.log.info(
                "freed the relay ports of a call silent for {seconds:g} s",
                seconds=self.sessions.idle_timeout_seconds
                if session.answered
                else self.sessions.setup_timeout_seconds,
            )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self.sessions.stop()
