"""
The vocabulary of the traversal session machine (``p2psip.nat.traversal_session``).

Events are named after what happened (``ProbesDone``, ``PunchFailed``,
``ControlMessageReceived``); the Twisted layer (``p2psip.nat.traversal``)
feeds them in.  Actions say what to do (``SendControl``, ``StartPunch``,
``Deliver``); the layer executes them in order.  All are frozen values, so
tests compare whole lists.  Every IO the layer starts for a session carries
the session's ``key`` and ``serial`` and reports back with both.
:class:`Attempt` is the broker's ``attempt`` message, checked before any
of its values reaches a socket.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from p2psip.nat import control_protocol

#: Outgoing sessions carry the ``ref`` the layer chose (positive); peers'
#: sessions are keyed by negative numbers the machine picks.
SessionKey = int


class Kind(str, enum.Enum):
    """What a session makes: a TCP stream or a UDP path."""

    TCP = "tcp"
    UDP = "udp"


class Via(enum.Enum):
    """What a delivered session hands to the application."""

    SOCKET = "socket"
    RELAY = "relay"
    DATAGRAM = "datagram"


_ROLES = {
    control_protocol.DIRECT: ("initiator", "responder"),
    control_protocol.SIMULTANEOUS_OPEN: ("initiator", "responder"),
    control_protocol.LOW_TTL: ("listener", "connector"),
    control_protocol.UDP_PUNCH: ("initiator", "responder"),
}
_PUNCHED_METHODS = {
    Kind.TCP: (
        control_protocol.DIRECT,
        control_protocol.SIMULTANEOUS_OPEN,
        control_protocol.LOW_TTL,
    ),
    Kind.UDP: (control_protocol.UDP_PUNCH,),
}


class ProtocolViolation(Exception):
    """The mediator sent something the protocol does not allow here."""


@attrs.frozen
class Attempt:
    """The broker's ``attempt`` message, checked."""

    method: str
    role: str
    peer: tuple[str, int]
    hole_port: int
    start_in_seconds: float
    deadline_seconds: float
    ttl: int
    max_connects: int | None

    @classmethod
    def parse(cls, message: Mapping[str, Any], kind: Kind) -> Attempt:
        """:raises ProtocolViolation: for a method, role or value this session cannot use."""
        method, role = message["method"], message["role"]
        if method not in _PUNCHED_METHODS[kind]:
            raise ProtocolViolation(f"attempt with method {method!r} for a {kind.value} session")
        if role not in _ROLES[method]:
            raise ProtocolViolation(f"attempt with role {role!r} for {method}")
        host, port = message["peer_endpoint"]
        if not 0 < port <= 65535 or not 0 <= message["hole_port"] <= 65535:
            raise ProtocolViolation("attempt with a port outside 1..65535")
        if (
            method == control_protocol.LOW_TTL
            and role == "listener"
            and not 0 < message["ttl"] < 256
        ):
            raise ProtocolViolation(f"low-ttl attempt with TTL {message['ttl']}")
        if message["deadline_seconds"] <= 0:
            raise ProtocolViolation("attempt without time to run")
        retries = message.get("connect_retries", -1)
        valid = isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0
        return cls(
            method=method,
            role=role,
            peer=(host, port),
            hole_port=message["hole_port"],
            start_in_seconds=message["start_in_seconds"],
            deadline_seconds=message["deadline_seconds"],
            ttl=message["ttl"],
            max_connects=retries + 1 if valid else None,
        )


# --- events (what happened) ------------------------------------------------


@attrs.frozen
class ControlConnected:
    """The control connection to the mediator is up (the challenge comes next)."""


@attrs.frozen
class ControlUnreachable:
    """The control connection could not be made."""

    reason: str


@attrs.frozen
class ControlMessageReceived:
    """A validated control message (``control_protocol.FrameDecoder``) arrived at ``now``."""

    message: Mapping[str, Any]
    now: float = 0.0


@attrs.frozen
class ControlLost:
    """The control connection closed."""

    reason: str


@attrs.frozen
class KeepaliveDue:
    """Time for the next ping."""


@attrs.frozen
class ConnectRequested:
    """The application asked for a connection to ``peer_id``; ``key`` becomes its ``ref``."""

    key: SessionKey
    peer_id: str
    kind: Kind
    methods: tuple[str, ...] = ()
    now: float = 0.0


@attrs.frozen
class IncomingAccepted:
    """The accept policy took a peer's request (answers ``DecideIncoming``)."""

    key: SessionKey


@attrs.frozen
class IncomingDeclined:
    """The accept policy refused a peer's request."""

    key: SessionKey


@attrs.frozen
class AttemptEvent:
    """What became of IO started for ``serial`` of session ``key``."""

    key: SessionKey
    serial: int


@attrs.frozen
class ProbesDone(AttemptEvent):
    """Port prediction finished: ``(local_port, mapped_host, mapped_port)`` per probe."""

    local_ip: str
    observations: tuple[tuple[int, str, int], ...]


@attrs.frozen
class ProbesFailed(AttemptEvent):
    reason: str


@attrs.frozen
class Timeout(AttemptEvent):
    """The timer of ``StartTimer`` fired: an attempt's start time has come."""


@attrs.frozen
class LowTtlSynSent(AttemptEvent):
    """The low-TTL SYN went out (``what`` says what became of it, for the log)."""

    what: str


@attrs.frozen
class PunchSucceeded(AttemptEvent):
    """
    This side's attempt worked: a verified TCP connection (``detail`` is
    "connected" or "accepted") or a two-way UDP path to ``peer_address``.
    """

    detail: str
    peer_address: tuple[str, int] | None = None


@attrs.frozen
class PunchFailed(AttemptEvent):
    detail: str


@attrs.frozen
class RelayReady(AttemptEvent):
    """Both halves joined the relay; the relay connection carries the peer's bytes."""


@attrs.frozen
class RelayFailed(AttemptEvent):
    reason: str


Event = (
    ControlConnected
    | ControlUnreachable
    | ControlMessageReceived
    | ControlLost
    | KeepaliveDue
    | ConnectRequested
    | IncomingAccepted
    | IncomingDeclined
    | ProbesDone
    | ProbesFailed
    | Timeout
    | LowTtlSynSent
    | PunchSucceeded
    | PunchFailed
    | RelayReady
    | RelayFailed
)


# --- actions (what to do) ----------------------------------------------------


@attrs.frozen
class SendControl:
    message: dict[str, Any]


@attrs.frozen
class CloseControl:
    """Drop the control connection (the mediator broke the protocol)."""


@attrs.frozen
class Registered:
    observed: tuple[str, int]


@attrs.frozen
class RegistrationFailed:
    reason: str


@attrs.frozen
class StartKeepalive:
    """Feed ``KeepaliveDue`` every ``seconds`` until ``StopKeepalive``."""

    seconds: float


@attrs.frozen
class StopKeepalive:
    pass


@attrs.frozen
class DecideIncoming:
    """Ask the accept policy; answer with ``IncomingAccepted`` or ``IncomingDeclined``."""

    key: SessionKey
    peer_id: str
    kind: Kind


@attrs.frozen
class StartProbes:
    """
    ``count`` STUN Bindings from fresh local ports to the mediator's STUN
    port; for UDP the last probe's port is kept for the punch.
    """

    key: SessionKey
    serial: int
    kind: Kind
    stun_port: int
    count: int


@attrs.frozen
class StartTimer:
    """Feed ``Timeout(key, serial)`` after ``seconds``."""

    key: SessionKey
    serial: int
    seconds: float


@attrs.frozen
class CancelTimer:
    key: SessionKey
    serial: int


@attrs.frozen
class StartPunch:
    """
    Listen on and/or connect from ``local_port`` to ``peer`` until the
    deadline, then verify the connection with the session's token.
    """

    key: SessionKey
    serial: int
    session_id: str
    local_port: int
    peer: tuple[str, int]
    deadline_seconds: float
    listen: bool = True
    connect: bool = True
    max_connects: int | None = None


@attrs.frozen
class SendLowTtlSyn:
    key: SessionKey
    serial: int
    local_port: int
    peer: tuple[str, int]
    ttl: int


@attrs.frozen
class StartUdpPunch:
    """Punch from the UDP port the probes of this serial kept."""

    key: SessionKey
    serial: int
    session_id: str
    peer: tuple[str, int]
    deadline_seconds: float


@attrs.frozen
class OpenRelay:
    """Open a relay-join connection to the mediator's control port."""

    key: SessionKey
    serial: int
    session_id: str
    token: str


@attrs.frozen
class DropAttempt:
    """Release the sockets, ports, punches and relay of this serial (if any are left)."""

    key: SessionKey
    serial: int


@attrs.frozen
class Deliver:
    """
    The session worked: hand what ``via`` names (of this serial) to the
    application, release everything else of the session.
    """

    key: SessionKey
    serial: int
    via: Via
    method: str
    reason: str
    peer_id: str
    started_at: float
    peer_address: tuple[str, int] | None = None


@attrs.frozen
class Fail:
    """The session failed: release all it holds and tell the application why."""

    key: SessionKey
    reason: str


@attrs.frozen
class Log:
    """An event for the operator's log (``text`` is a ``twisted.logger`` format)."""

    level: Literal["debug", "info", "warn"]
    text: str
    fields: Mapping[str, object] = attrs.field(factory=dict)


Action = (
    SendControl
    | CloseControl
    | Registered
    | RegistrationFailed
    | StartKeepalive
    | StopKeepalive
    | DecideIncoming
    | StartProbes
    | StartTimer
    | CancelTimer
    | StartPunch
    | SendLowTtlSyn
    | StartUdpPunch
    | OpenRelay
    | DropAttempt
    | Deliver
    | Fail
    | Log
)
