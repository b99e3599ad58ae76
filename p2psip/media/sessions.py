"""
The relay's calls: one :class:`MediaSession` per relayed call, the ports it
holds, and when it is given up.

A session is made when the proxy decides to relay a call (on its first
INVITE), gets streams as SDP arrives from either party
(:meth:`MediaSession.sdp_from`), and ends on BYE, CANCEL, a failed INVITE,
or when :meth:`RelaySessions.sweep` finds it idle: no packet on any of its
legs for ``idle_timeout_seconds`` once answered, or no answer within
``setup_timeout_seconds``.  Every end closes its sockets and gives its
ports back to the :class:`~p2psip.media.relay.PortPool`.

Sockets are opened through a :class:`SocketOpener` (the Twisted adapter in
:mod:`p2psip.media.udp`, or a fake in tests), so this module stays free
of I/O; time arrives as ``now`` arguments.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from attrs import define, field, frozen

from p2psip.media.relay import Leg, PortPool, PortsExhausted, RelayStream, pair_sides
from p2psip.media.sdp import RelayPorts, SessionDescription, is_private_address

#: How long a relayed call may stay silent before its ports are freed.
IDLE_TIMEOUT_SECONDS = 60.0
#: How long a call may ring (no answer yet) before its ports are freed; over RFC 3261's Timer C.
SETUP_TIMEOUT_SECONDS = 200.0
#: Relayed calls one signalling source may hold at once (a caller cannot take every port).
SESSIONS_PER_SOURCE = 32
#: Port pairs tried when the operating system refuses to bind one.
BIND_ATTEMPTS = 8


class Closable(Protocol):
    """What an opened pair of legs gives back: its sockets, closed on :meth:`close`."""

    def close(self) -> None: ...


class SocketOpener(Protocol):
    """Opens the UDP sockets of two partnered legs (each forwards from the other's port)."""

    def open_pair(self, first: Leg, second: Leg) -> Closable:
        """:raises OSError: a port could not be bound."""


class SessionRefused(Exception):
    """No session: the ports are used up, or the source holds too many."""


@frozen
class LegCounters:
    """One direction of one stream, as ``/status`` shows it."""

    packets: int
    bytes: int
    lost: int
    strangers: int
    #: Packets from this party the relay could not send on (full buffers).
    unsent: int = 0

    def plus(self, other: LegCounters) -> LegCounters:
        return LegCounters(
            self.packets + other.packets,
            self.bytes + other.bytes,
            self.lost + other.lost,
            self.strangers + other.strangers,
            self.unsent + other.unsent,
        )


@define(eq=False)
class MediaSession:
    """One relayed call's streams and sockets."""

    key: str
    caller_tag: str
    source_host: str
    created: float
    streams: list[RelayStream] = field(factory=list)
    #: The caller's and the callee's SIP signalling hosts, for the phones served here (else None).
    signalling: tuple[str | None, str | None] = (None, None)
    answered: bool = False
    last_active: float = 0.0
    last_packets: int = 0
    _sockets: list[Closable] = field(factory=list)
    _ports: list[int] = field(factory=list)

    def legs(self) -> Iterator[Leg]:
        for stream in self.streams:
            yield from stream.caller.legs()
            yield from stream.callee.legs()

    def packets(self) -> int:
        return sum(leg.packets for leg in self.legs())

    def direction(self, from_caller: bool) -> LegCounters:
        """What the caller (or the callee) sent through the relay, over every stream."""
        legs = [leg for stream in self.streams for leg in stream.side(from_caller).legs()]
        return LegCounters(
            packets=sum(leg.packets for leg in legs),
            bytes=sum(leg.octets for leg in legs),
            lost=sum(leg.sequence.lost for leg in legs if leg.rtp),
            strangers=sum(leg.strangers for leg in legs),
            unsent=sum(leg.send_failures for leg in legs),
        )


class RelaySessions:
    """
    Every relayed call of this super-node, with the port pool they share.

    :param opener: opens the UDP sockets of a stream.
    """

    def __init__(
        self,
        pool: PortPool,
        opener: SocketOpener,
        *,
        idle_timeout_seconds: float = IDLE_TIMEOUT_SECONDS,
        setup_timeout_seconds: float = SETUP_TIMEOUT_SECONDS,
        sessions_per_source: int = SESSIONS_PER_SOURCE,
    ) -> None:
        self.pool = pool
        self.opener = opener
        self.idle_timeout_seconds = idle_timeout_seconds
        self.setup_timeout_seconds = setup_timeout_seconds
        self.sessions_per_source = sessions_per_source
        self._sessions: dict[str, MediaSession] = {}
        self._per_source: Counter[str] = Counter()
        #: Sessions ended, by why ("bye", "cancel", "failed", "idle", "stopped").
        self.ended: Counter[str] = Counter()
        #: Totals of ended sessions by direction ("caller", "callee"), so counters never go back.
        self._finished: dict[str, LegCounters] = {
            "caller": LegCounters(0, 0, 0, 0),
            "callee": LegCounters(0, 0, 0, 0),
        }
        #: Sessions refused (ports exhausted or too many per source).
        self.refused = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[MediaSession]:
        return iter(list(self._sessions.values()))

    def get(self, key: str) -> MediaSession | None:
        return self._sessions.get(key)

    def create(self, key: str, caller_tag: str, source_host: str, now: float) -> MediaSession:
        """
        A session for a new call (the same one again for a repeated INVITE).

        :raises SessionRefused: the source already holds its share.
        """
        existing = self._sessions.get(key)
        if existing is not None:
            return existing
        if self._per_source[source_host] >= self.sessions_per_source:
            self.refused += 1
            raise SessionRefused(
                f"{self.sessions_per_source} relayed calls from one address at once"
            )
        session = MediaSession(key, caller_tag, source_host, now, last_active=now)
        self._sessions[key] = session
        self._per_source[source_host] += 1
        return session

    def sdp_from(
        self,
        session: MediaSession,
        from_caller: bool,
        description: SessionDescription,
        signalling_host: str | None,
        loopback_media: bool = False,
    ) -> list[RelayPorts | None]:
        """
        A party's SDP: point its legs at it and return, per stream, the relay
        ports the other party must send to (None for a disabled stream).

        A loopback media address is this host's own: a party signalling from
        elsewhere that names one would have the relay send the other party's
        packets to a local service, so such a leg is pointed nowhere and waits
        for the party's packets to latch it.  ``loopback_media`` allows it for
        a party whose signalling host is unknown (heard through another
        super-node): true only when the relay itself serves loopback.

        :raises SessionRefused: no port pair is left for a new stream.
        """
        ports: list[RelayPorts | None] = []
        for index, stream in enumerate(description.streams):
            if not stream.enabled:
                ports.append(None)
                continue
            while len(session.streams) <= index:
                self._add_stream(session, description.streams[len(session.streams)].media)
            relay = session.streams[index]
            side = relay.side(from_caller)
            rtp = _sendable(description.rtp_destination(stream), signalling_host, loopback_media)
            rtcp = _sendable(description.rtcp_destination(stream), signalling_host, loopback_media)
            side.rtp.expect(rtp, _latch_hosts(rtp, signalling_host))
            side.rtcp.expect(rtcp, _latch_hosts(rtcp, signalling_host))
            other = relay.side(not from_caller)
            ports.append(RelayPorts(other.rtp.port, other.rtcp.port))
        return ports

    def _add_stream(self, session: MediaSession, media: str) -> None:
        """Two port pairs for a new stream, bound; pairs another program holds are skipped."""
        failure: OSError | None = None
        for _ in range(BIND_ATTEMPTS):
            first = self._bind_pair()
            try:
                second = self._bind_pair()
            except SessionRefused:
                self.pool.release(first)
                raise
            stream = pair_sides(media, first, second)
            opened: list[Closable] = []
            try:
                opened.append(self.opener.open_pair(stream.caller.rtp, stream.callee.rtp))
                opened.append(self.opener.open_pair(stream.caller.rtcp, stream.callee.rtcp))
            except OSError as e:
                failure = e
                for sockets in opened:
                    sockets.close()
                for port in (first, second):
                    self.pool.quarantine(port)
                continue
            session.streams.append(stream)
            session._sockets.extend(opened)
            session._ports.extend((first, second))
            return
        self.refused += 1
        raise SessionRefused(f"cannot bind relay ports: {failure}")

    def _bind_pair(self) -> int:
        try:
            return self.pool.allocate()
        except PortsExhausted as e:
            self.refused += 1
            raise SessionRefused(str(e)) from None

    def end(self, key: str, why: str) -> MediaSession | None:
        """Close the session's sockets and free its ports."""
        session = self._sessions.pop(key, None)
        if session is None:
            return None
        self._per_source[session.source_host] -= 1
        if self._per_source[session.source_host] <= 0:
            del self._per_source[session.source_host]
        for sockets in session._sockets:
            sockets.close()
        for port in session._ports:
            self.pool.release(port)
        for direction in ("caller", "callee"):
            self._finished[direction] = self._finished[direction].plus(
                session.direction(direction == "caller")
            )
        self.ended[why] += 1
        return session

    def sweep(self, now: float) -> list[MediaSession]:
        """End the sessions that went silent (or never got answered) in time; return them."""
        expired = []
        for session in list(self._sessions.values()):
            packets = session.packets()
            if packets != session.last_packets:
                session.last_packets = packets
                session.last_active = now
                continue
            limit = self.idle_timeout_seconds if session.answered else self.setup_timeout_seconds
            if now - session.last_active >= limit:
                ended = self.end(session.key, "idle")
                if ended is not None:
                    expired.append(ended)
        return expired

    def stop(self) -> None:
        for session in list(self._sessions.values()):
            self.end(session.key, "stopped")

    def totals(self, from_caller: bool | None = None) -> dict[str, int]:
        """
        Packets, bytes, RTP loss, strangers and packets not sent on over
        every session, ended
        ones included: what callers sent (``from_caller``), what callees
        sent, or (None) both.
        """
        directions = (
            ("caller", "callee")
            if from_caller is None
            else ("caller" if from_caller else "callee",)
        )
        total = LegCounters(0, 0, 0, 0)
        for direction in directions:
            total = total.plus(self._finished[direction])
            for session in self._sessions.values():
                total = total.plus(session.direction(direction == "caller"))
        return {
            "packets": total.packets,
            "bytes": total.bytes,
            "lost": total.lost,
            "strangers": total.strangers,
            "unsent": total.unsent,
        }


def _sendable(
    destination: tuple[str, int] | None, signalling_host: str | None, loopback_media: bool
) -> tuple[str, int] | None:
    """``destination``, or None when it is a loopback address the party cannot mean (see ``sdp_from``)."""
    if destination is None or not _is_loopback(destination[0]):
        return destination
    if signalling_host is None:
        return destination if loopback_media else None
    return destination if _is_loopback(signalling_host) else None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _latch_hosts(
    destination: tuple[str, int] | None, signalling_host: str | None
) -> frozenset[str] | None:
    """
    Who may latch a leg: the SDP address's host and the party's signalling
    host; anyone when the SDP address is private and the signalling host
    unknown (the party is behind a NAT we only hear of through another
    super-node: its packets come from an address nobody told us).
    """
    hosts = set()
    if destination is not None:
        hosts.add(destination[0])
    if signalling_host is not None:
        hosts.add(signalling_host)
    elif destination is None or is_private_address(destination[0]):
        return None
    return frozenset(hosts)
