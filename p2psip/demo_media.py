"""
The demo phones' media: one RTP stream each way for a second.

Each phone has an :class:`RtpEndpoint`, a UDP socket on 127.0.0.1 whose
port its SDP names; once the call is up it sends 20 ms PCMU packets (RFC
3550 header, payload type 0, 160 bytes of mu-law silence) to the address
the other side's SDP gave, which is the super-node relay's port after the
relay rewrote it, and counts what comes back.  The relay latches onto the
first packet from each side (RFC 4961 symmetric RTP), so both phones
send from the port they announced.
"""

from __future__ import annotations

import os
import struct

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from p2psip.media.sdp import SdpError, parse_sdp
from p2psip.util.reactor import UDPPort, UDPReactor

#: 8000 Hz PCMU, 20 ms a packet.
PACKET_SECONDS = 0.02
SAMPLES_PER_PACKET = 160
_SILENCE = b"\xff" * SAMPLES_PER_PACKET


def sdp_destination(body: bytes) -> tuple[str, int]:
    """Where the SDP's first audio stream wants its RTP."""
    try:
        description = parse_sdp(body)
    except SdpError as error:
        raise SystemExit(f"unreadable SDP from the other phone: {error.reason}") from None
    for stream in description.streams:
        destination = description.rtp_destination(stream)
        if destination is not None:
            return destination
    raise SystemExit("the other phone's SDP names no RTP destination")


class RtpEndpoint(DatagramProtocol):
    """A phone's RTP socket: sends a PCMU stream, counts the packets received."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.sent = 0
        self.received = 0
        self._ssrc = struct.unpack("!I", os.urandom(4))[0]
        self._port: UDPPort | None = None

    def listen(self, reactor: UDPReactor) -> int:
        """Bind on 127.0.0.1 (a port the OS picks); the port."""
        self._port = reactor.listenUDP(0, self, interface="127.0.0.1")
        address = self._port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if len(datagram) >= 12 and datagram[0] >> 6 == 2:
            self.received += 1

    def _packet(self) -> bytes:
        sequence = self.sent & 0xFFFF
        timestamp = (self.sent * SAMPLES_PER_PACKET) & 0xFFFFFFFF
        header = struct.pack("!BBHII", 0x80, 0, sequence, timestamp, self._ssrc)
        return header + _SILENCE

    def send_for(self, destination: tuple[str, int], seconds: float) -> Deferred[None]:
        """Send a packet every 20 ms to ``destination`` for ``seconds``; fires when done."""
        remaining = [int(seconds / PACKET_SECONDS)]
        done: Deferred[None] = Deferred()

        def one() -> None:
            if self.transport is None or remaining[0] <= 0:
                sending.stop()
                done.callback(None)
                return
            self.transport.write(self._packet(), destination)
            self.sent += 1
            remaining[0] -= 1

        sending = task.LoopingCall(one)
        sending.clock = self.clock
        sending.start(PACKET_SECONDS)
        return done

    def close(self) -> None:
        if self._port is not None:
            self._port.stopListening()
            self._port = None


async def stream_both_ways(
    clock: IReactorTime,
    caller: RtpEndpoint,
    caller_destination: tuple[str, int],
    callee: RtpEndpoint,
    callee_destination: tuple[str, int],
    seconds: float,
) -> None:
    """Both phones send for ``seconds``; returns after the last packets had time to arrive."""
    sending = [
        caller.send_for(caller_destination, seconds),
        callee.send_for(callee_destination, seconds),
    ]
    for done in sending:
        await done
    await task.deferLater(clock, 0.1, lambda: None)


__all__ = ["RtpEndpoint", "sdp_destination", "stream_both_ways"]
