"""
The RTP/RTCP relay's decisions, without sockets (RFC 3550, RFC 4961).

A relayed call has, per media stream, two *sides*: the one facing the
caller and the one facing the callee.  Each side owns two UDP ports of the
relay, an even one for RTP and the next one for RTCP (RFC 3550 s11), and
each port is a :class:`Leg`.  The caller is told (in the rewritten SDP of
the callee) to send to the caller-side ports; what arrives there leaves
from the callee-side port of the same kind towards the callee, and the
other way round.  Sending from the port the party sends to is what makes
the relay *symmetric* (RFC 4961): a phone behind a NAT receives media from
the address its NAT opened for it.

A leg first sends to the address the party's SDP names.  The first packet
it receives from an acceptable source *latches* it: from then on it sends
there and drops packets from any other source ("strangers").  Acceptable
before latching are sources at the SDP address's host or at the host the
party's SIP signalling came from; when neither is known to be reachable
(a private SDP address of a party whose signalling we never saw) the first
source latches.  A new SDP from the party unlatches its legs, so a phone
that moves (re-INVITE with a new address) is followed.

Counters per leg: packets and bytes received and forwarded, strangers
dropped, and for RTP the loss the sender's sequence numbers show (RFC 3550
appendix A.3: expected minus received, from the highest sequence number
seen, with wrap-around).

:class:`PortPool` hands out the even/odd port pairs from the configured
range.  Per-packet work is a few attribute reads and one comparison:
:meth:`Leg.received` returns the address to forward to, and the Twisted
adapter (:mod:`p2psip.media.udp`) writes the datagram from the partner
leg's port.
"""

from __future__ import annotations

from collections.abc import Iterator

from attrs import define, field

#: RTP's fixed header is 12 bytes, version 2 in the top two bits (RFC 3550 s5.1).
RTP_HEADER_BYTES = 12
#: A sequence-number jump larger than this is a restart, not loss (RFC 3550 A.1 MAX_DROPOUT).
MAX_DROPOUT = 3000


class PortsExhausted(Exception):
    """No free port pair is left in the configured range."""


class PortPool:
    """
    The relay's even/odd port pairs between ``low`` and ``high`` (inclusive).

    A pair is taken by :meth:`allocate` and given back by :meth:`release`;
    a pair the operating system refused to bind is kept out for a while
    with :meth:`quarantine` (another program holds it).
    """

    def __init__(self, low: int, high: int) -> None:
        first = low + (low % 2)
        if (low, high) != (0, 0) and first + 1 > high:
            raise ValueError(f"port range {low}-{high} holds no even/odd pair")
        self.low = low
        self.high = high
        #: 0-0 is an empty pool: a super-node that relays only through others.
        self._free: list[int] = list(range(first, high, 2)) if high else []
        self._free.reverse()
        self._taken: set[int] = set()

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._taken)

    @property
    def in_use(self) -> int:
        return len(self._taken)

    def allocate(self) -> int:
        """The even (RTP) port of a free pair; the RTCP port is the next one."""
        if not self._free:
            raise PortsExhausted(f"all {self.capacity} port pairs of {self.low}-{self.high} in use")
        port = self._free.pop()
        self._taken.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self._taken:
            self._taken.remove(port)
            # Reused last: a late packet for a finished call must not reach the next one.
            self._free.insert(0, port)

    def quarantine(self, port: int) -> None:
        """The pair could not be bound: never hand it out again in this process."""
        self._taken.discard(port)


@define(eq=False)
class SequenceTracker:
    """RFC 3550 appendix A.3: packets expected versus received from one sender."""

    base: int = -1
    highest: int = 0
    cycles: int = 0
    received: int = 0

    def saw(self, sequence: int) -> None:
        self.received += 1
        if self.base < 0:
            self.base = self.highest = sequence
            return
        delta = (sequence - self.highest) & 0xFFFF
        if 0 < delta < MAX_DROPOUT:
            if sequence < self.highest:
                self.cycles += 1 << 16
            self.highest = sequence
        elif delta >= 0x10000 - MAX_DROPOUT or delta == 0:
            pass  # duplicate or reordered: counted as received only
        else:
            # A big jump: the sender restarted its sequence; start over from here.
            self.base = self.highest = sequence
            self.cycles = 0
            self.received = 1

    @property
    def expected(self) -> int:
        if self.base < 0:
            return 0
        return self.cycles + self.highest - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)


@define(eq=False)
class Leg:
    """
    One relay port: it faces one party and forwards to its partner's party.

    ``peer`` is where this leg sends (the party's SDP address, then the
    latched source); ``partner`` is the leg facing the other party, from
    whose port what arrives here is sent.
    """

    port: int
    rtp: bool
    peer: tuple[str, int] | None = None
    #: The address the party's latest SDP named.
    signalled: tuple[str, int] | None = None
    #: Hosts whose packets may latch the leg; None: any source may.
    latch_hosts: frozenset[str] | None = None
    latched: bool = False
    partner: Leg | None = None
    packets: int = 0
    octets: int = 0
    strangers: int = 0
    #: Packets that arrived before the other party's address was known.
    unroutable: int = 0
    #: Packets the partner's socket would not send (full buffer, refused).
    send_failures: int = 0
    sequence: SequenceTracker = field(factory=SequenceTracker)

    def expect(
        self, destination: tuple[str, int] | None, latch_hosts: frozenset[str] | None
    ) -> None:
        """
        The party's SDP: send there until a packet latches the leg again.

        The same address again (a retransmitted 2xx, a re-INVITE that keeps
        the media where it was, a forked copy) keeps the latch.
        """
        if destination == self.signalled and latch_hosts == self.latch_hosts:
            return
        self.signalled = destination
        self.peer = destination
        self.latch_hosts = latch_hosts
        self.latched = False

    def received(self, data: bytes, source: tuple[str, int]) -> tuple[str, int] | None:
        """
        A datagram arrived at this leg's port: where to forward it (from the
        partner's port), or None to drop it.
        """
        if self.latched:
            if source != self.peer:
                self.strangers += 1
                return None
        else:
            hosts = self.latch_hosts
            if hosts is not None and source[0] not in hosts:
                self.strangers += 1
                return None
            self.peer = source
            self.latched = True
        self.packets += 1
        self.octets += len(data)
        if self.rtp and len(data) >= RTP_HEADER_BYTES and data[0] >> 6 == 2:
            self.sequence.saw((data[2] << 8) | data[3])
        partner = self.partner
        destination = partner.peer if partner is not None else None
        if destination is None:
            self.unroutable += 1
        return destination


@define(eq=False)
class Side:
    """The RTP and RTCP legs of one stream facing one party."""

    rtp: Leg
    rtcp: Leg

    def legs(self) -> Iterator[Leg]:
        yield self.rtp
        yield self.rtcp


@define(eq=False)
class RelayStream:
    """One media stream: the side facing the caller and the side facing the callee."""

    media: str
    caller: Side
    callee: Side

    def side(self, caller: bool) -> Side:
        return self.caller if caller else self.callee


def pair_sides(media: str, caller_port: int, callee_port: int) -> RelayStream:
    """Legs for one stream at two allocated pairs, each RTP and RTCP leg partnered across."""
    caller = Side(Leg(caller_port, True), Leg(caller_port + 1, False))
    callee = Side(Leg(callee_port, True), Leg(callee_port + 1, False))
    caller.rtp.partner, callee.rtp.partner = callee.rtp, caller.rtp
    caller.rtcp.partner, callee.rtcp.partner = callee.rtcp, caller.rtcp
    return RelayStream(media, caller, callee)
