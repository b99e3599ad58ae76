"""
The traversal client's decisions, sans-IO: events in, actions out.

A client registers at the mediator over one control connection
(``docs/mediator-protocol.md``)::

    OFFLINE --ControlConnected--> CONNECTED --challenge/hello--> AUTHENTICATING
        --welcome--> REGISTERED --ControlLost--> OFFLINE

and then takes part in brokered sessions, its own (``connect``) and the
peers' (``probe`` with ``ref`` -1, which the accept policy may refuse).
One session runs through these phases::

    REQUESTED --probe--> PROBING --ProbesDone--> PROBED --attempt--> STARTING
    STARTING --Timeout--> PUNCHING --PunchSucceeded--> PUNCHED --outcome--> delivered
                                   --PunchFailed--> FAILED_HERE --probe--> PROBING ...
    any --relay--> RELAYING --RelayReady--> RELAY_READY --outcome--> delivered
    any --outcome(not ok)--> failed

A low-TTL connector waits in AWAITING_GO when its start time comes before
the listener's ``go``.  Whenever the broker moves on (a new ``probe``
round, the relay), the session's ``serial`` grows: the IO of the old
attempt is dropped (``DropAttempt``), and any late result of it is
answered with ``DropAttempt`` again, so an abandoned attempt neither
reports nor keeps its socket.

:class:`TraversalMachine` holds no sockets, timers or clocks: the Twisted
layer (``p2psip.nat.traversal``) feeds it events (times are passed in as
``now``) and executes the actions it returns, in order.  A mediator that
breaks the protocol fails the session concerned with a reason that says
so, or, on the connection level, gets its control connection closed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from p2psip.nat import control_auth, control_protocol
from p2psip.nat.traversal_events import (
    Action,
    Attempt,
    AttemptEvent,
    CancelTimer,
    CloseControl,
    ConnectRequested,
    ControlConnected,
    ControlLost,
    ControlMessageReceived,
    ControlUnreachable,
    DecideIncoming,
    Deliver,
    DropAttempt,
    Event,
    Fail,
    IncomingAccepted,
    IncomingDeclined,
    KeepaliveDue,
    Kind,
    Log,
    LowTtlSynSent,
    OpenRelay,
    ProbesDone,
    ProbesFailed,
    PunchFailed,
    ProtocolViolation,
    PunchSucceeded,
    Registered,
    RegistrationFailed,
    RelayFailed,
    RelayReady,
    SendControl,
    SendLowTtlSyn,
    SessionKey,
    StartKeepalive,
    StartProbes,
    StartPunch,
    StartTimer,
    StartUdpPunch,
    StopKeepalive,
    Timeout,
    Via,
)

PROBES_PER_ATTEMPT = 4
#: Control-connection pings keep NAT and firewall state for it alive.
KEEPALIVE_SECONDS = 25.0
#: Peers' sessions in progress at once; more are refused (a mediator cannot
#: make us run unbounded probes).
MAX_INCOMING_SESSIONS = 32
#: Reasons and details sent to the mediator are cut to this length.
MAX_DETAIL_CHARS = 400


class Registration(enum.Enum):
    """Where the control connection stands."""

    OFFLINE = "offline"
    CONNECTED = "connected"
    AUTHENTICATING = "authenticating"
    REGISTERED = "registered"


class Phase(enum.Enum):
    """Where one session stands (see the module docstring)."""

    REQUESTED = "requested"
    DECIDING = "deciding"
    PROBING = "probing"
    PROBED = "probed"
    REFUSED = "refused"
    STARTING = "starting"
    AWAITING_GO = "awaiting-go"
    PUNCHING = "punching"
    PUNCHED = "punched"
    FAILED_HERE = "failed-here"
    RELAYING = "relaying"
    RELAY_READY = "relay-ready"
    RELAY_BROKEN = "relay-broken"


# --- state ---------------------------------------------------------------


@attrs.define
class Session:
    """One brokered session as this client sees it."""

    key: SessionKey
    peer_id: str
    kind: Kind
    incoming: bool
    started_at: float
    phase: Phase
    session_id: str = ""
    #: Grows whenever the broker moves on; IO and results carry it.
    serial: int = 0
    attempt: Attempt | None = None
    #: A low-TTL connector's ``go`` that came before its start time.
    go_received: bool = False
    #: Where a punched UDP path's peer is.
    peer_address: tuple[str, int] | None = None
    #: The reason of an ok relayed ``outcome`` that came before relay-ready.
    relayed_outcome: str | None = None


class TraversalMachine:
    """
    The client's side of the mediator control protocol.

    :param probes: port-prediction probes per round (1..16, the most a
        ``probed`` report may carry).
    """

    def __init__(
        self,
        client_id: str,
        secret: bytes,
        probes: int = PROBES_PER_ATTEMPT,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        max_incoming: int = MAX_INCOMING_SESSIONS,
    ) -> None:
        if not 1 <= probes <= control_protocol.MAX_OBSERVATIONS:
            raise ValueError(f"probes must be 1..{control_protocol.MAX_OBSERVATIONS}, not {probes}")
        self.client_id = client_id
        self.secret = secret
        self.probes = probes
        self.keepalive_seconds = keepalive_seconds
        self.max_incoming = max_incoming
        self.registration = Registration.OFFLINE
        self.observed: tuple[str, int] | None = None
        self.stun_tcp_port = 0
        self.stun_udp_port = 0
        self.sessions: dict[SessionKey, Session] = {}
        self._by_session_id: dict[str, SessionKey] = {}
        self._registering = False
        self._incoming_keys = 0

    @property
    def registered(self) -> bool:
        return self.registration is Registration.REGISTERED

    def handle(self, event: Event) -> list[Action]:
        """Apply ``event``; returns the actions to execute, in order."""
        match event:
            case ControlMessageReceived(message, now):
                return self._message(message, now)
            case ControlConnected():
                self.registration = Registration.CONNECTED
                self._registering = True
                return []
            case ControlUnreachable(reason):
                self._registering = False
                return [
                    RegistrationFailed(f"cannot reach the mediator ({reason}): check --mediator")
                ]
            case ControlLost():
                return self._control_lost()
            case KeepaliveDue():
                return [SendControl({"type": "ping"})] if self.registered else []
            case ConnectRequested():
                return self._connect_requested(event)
            case IncomingAccepted(key) | IncomingDeclined(key):
                return self._incoming_decided(key, isinstance(event, IncomingAccepted))
        return self._io_result(event)

    # registration ---------------------------------------------------------

    def _registration_failed(self, reason: str) -> list[Action]:
        if not self._registering:
            return []
        self._registering = False
        return [RegistrationFailed(reason)]

    def _control_lost(self) -> list[Action]:
        actions: list[Action] = []
        if self.registered and self.keepalive_seconds > 0:
            actions.append(StopKeepalive())
        self.registration = Registration.OFFLINE
        actions += self._registration_failed(
            "mediator closed the control connection before welcome"
        )
        for session in list(self.sessions.values()):
            actions += self._fail(session, "lost the control connection to the mediator")
        return actions

    def _violation(self, why: str) -> list[Action]:
        """The control connection as a whole is unusable."""
        actions: list[Action] = [
            Log("warn", "mediator broke the control protocol ({why}); closing", {"why": why})
        ]
        actions += self._registration_failed(f"mediator broke the control protocol: {why}")
        return [*actions, CloseControl()]

    def _challenge(self, message: Mapping[str, Any]) -> list[Action]:
        if self.registration is not Registration.CONNECTED:
            return self._violation("a challenge after the first")
        self.registration = Registration.AUTHENTICATING
        self.stun_tcp_port = message["stun_tcp_port"]
        self.stun_udp_port = message["stun_udp_port"]
        actions: list[Action] = []
        if message["version"] != control_protocol.PROTOCOL_VERSION:
            actions.append(
                Log(
                    "warn",
                    "mediator speaks control protocol version {v}",
                    {"v": message["version"]},
                )
            )
        hello = {
            "type": "hello",
            "version": control_protocol.PROTOCOL_VERSION,
            "id": self.client_id,
            "mac": control_auth.compute_mac(self.secret, message["nonce"], self.client_id),
        }
        return [*actions, SendControl(hello)]

    def _welcome(self, message: Mapping[str, Any]) -> list[Action]:
        if self.registration is not Registration.AUTHENTICATING:
            return self._violation("welcome before hello")
        self.registration = Registration.REGISTERED
        self._registering = False
        observed = (message["observed"][0], message["observed"][1])
        self.observed = observed
        actions: list[Action] = []
        if self.keepalive_seconds > 0:
            actions.append(StartKeepalive(self.keepalive_seconds))
        return [*actions, Registered(observed)]

    def _error(self, message: Mapping[str, Any]) -> list[Action]:
        reason = f"{message['reason']} ({message['code']})"
        ref = message.get("ref")
        session = self.sessions.get(ref) if isinstance(ref, int) and ref > 0 else None
        if session is not None and session.phase is Phase.REQUESTED:
            return self._fail(session, reason)
        actions: list[Action] = [Log("warn", "mediator refused us: {reason}", {"reason": reason})]
        return actions + self._registration_failed(f"mediator refused us: {reason}")

    # control messages -----------------------------------------------------

    def _message(self, message: Mapping[str, Any], now: float) -> list[Action]:
        kind = message["type"]
        if kind == "challenge":
            return self._challenge(message)
        if kind == "welcome":
            return self._welcome(message)
        if kind == "error":
            return self._error(message)
        if kind == "pong":
            return []
        if kind not in ("probe", "attempt", "go", "relay", "outcome"):
            return self._violation(f"unexpected {kind}")
        if not self.registered:
            return self._violation(f"{kind} before welcome")
        if kind == "probe":
            return self._probe(message, now)
        key = self._by_session_id.get(message["session"])
        session = self.sessions.get(key) if key is not None else None
        if session is None:
            # Late news of a session that ended here (we refused, or failed).
            return []
        try:
            if kind == "attempt":
                return self._attempt(session, message)
            if kind == "go":
                return self._go(session)
            if kind == "relay":
                return self._relay(session, message)
            return self._outcome(session, message)
        except ProtocolViolation as e:
            return self._abandon(session, str(e))

    def _probe(self, message: Mapping[str, Any], now: float) -> list[Action]:
        key = self._by_session_id.get(message["session"])
        if key is not None:
            session = self.sessions[key]
        elif message["ref"] >= 0:
            found = self.sessions.get(message["ref"])
            if found is None or found.incoming or found.phase is not Phase.REQUESTED:
                return []
            session = found
            session.session_id = message["session"]
            self._by_session_id[session.session_id] = session.key
        else:
            return self._incoming(message, now)
        if message["peer"] != session.peer_id or message["kind"] != session.kind.value:
            return self._abandon(
                session,
                f"probe names {message['kind']} with {message['peer']}, "
                f"but the session is {session.kind.value} with {session.peer_id}",
            )
        if session.phase is Phase.DECIDING:
            return []
        return self._probe_round(session)

    def _incoming(self, message: Mapping[str, Any], now: float) -> list[Action]:
        session_id = message["session"]

        def refuse(reason: str) -> list[Action]:
            return [SendControl({"type": "refuse", "session": session_id, "reason": reason})]

        try:
            kind = Kind(message["kind"])
        except ValueError:
            return refuse(f"unknown connection kind {message['kind'][:40]}")
        if sum(1 for s in self.sessions.values() if s.incoming) >= self.max_incoming:
            return refuse(
                f"too many incoming connections in progress here (limit {self.max_incoming})"
            )
        self._incoming_keys += 1
        session = Session(
            key=-self._incoming_keys,
            peer_id=message["peer"],
            kind=kind,
            incoming=True,
            started_at=now,
            phase=Phase.DECIDING,
            session_id=session_id,
        )
        self.sessions[session.key] = session
        self._by_session_id[session_id] = session.key
        return [DecideIncoming(session.key, session.peer_id, kind)]

    def _incoming_decided(self, key: SessionKey, accepted: bool) -> list[Action]:
        session = self.sessions.get(key)
        if session is None or session.phase is not Phase.DECIDING:
            return []
        if accepted:
            return self._probe_round(session)
        self._forget(session)
        what = "datagram flows" if session.kind is Kind.UDP else "connections"
        return [
            SendControl(
                {"type": "refuse", "session": session.session_id, "reason": f"not accepting {what}"}
            )
        ]

    def _probe_round(self, session: Session) -> list[Action]:
        actions = self._leave_attempt(session)
        session.phase = Phase.PROBING
        port = self.stun_udp_port if session.kind is Kind.UDP else self.stun_tcp_port
        return [
            *actions,
            StartProbes(session.key, session.serial, session.kind, port, self.probes),
        ]

    def _attempt(self, session: Session, message: Mapping[str, Any]) -> list[Action]:
        if session.phase is not Phase.PROBED:
            raise ProtocolViolation(f"attempt while {session.phase.value}")
        session.attempt = Attempt.parse(message, session.kind)
        session.phase = Phase.STARTING
        session.go_received = False
        return [StartTimer(session.key, session.serial, session.attempt.start_in_seconds)]

    def _go(self, session: Session) -> list[Action]:
        attempt = session.attempt
        if attempt is None or (attempt.method, attempt.role) != (
            control_protocol.LOW_TTL,
            "connector",
        ):
            raise ProtocolViolation("go for a session that is no low-ttl connector here")
        # The listener's "armed" (and so our "go") can come before our own
        # start time when the two sides got their attempts at different
        # moments: remember it until then.
        if session.phase is Phase.STARTING:
            session.go_received = True
        elif session.phase is Phase.AWAITING_GO:
            session.phase = Phase.PUNCHING
            return [self._connect_only(session, attempt)]
        return []

    def _relay(self, session: Session, message: Mapping[str, Any]) -> list[Action]:
        if session.kind is Kind.UDP:
            raise ProtocolViolation("relay offered for a datagram flow")
        if session.phase in (Phase.RELAYING, Phase.RELAY_READY, Phase.RELAY_BROKEN):
            raise ProtocolViolation("a second relay for one session")
        actions = self._leave_attempt(session)
        session.phase = Phase.RELAYING
        return [
            *actions,
            OpenRelay(session.key, session.serial, session.session_id, message["token"]),
        ]

    def _outcome(self, session: Session, message: Mapping[str, Any]) -> list[Action]:
        if session.relayed_outcome is not None:
            raise ProtocolViolation("a second outcome")
        if not message["ok"]:
            return self._fail(session, message["reason"])
        method, reason = message["method"], message["reason"]
        if method == control_protocol.RELAYED:
            return self._relayed_outcome(session, reason)
        attempt = session.attempt
        if session.phase is not Phase.PUNCHED or attempt is None:
            what = "UDP path" if session.kind is Kind.UDP else "connection"
            return self._fail(session, f"mediator reported success but no local {what} exists")
        if method != attempt.method:
            return self._fail(
                session,
                f"mediator reported success via {method}, but {attempt.method} was tried here",
            )
        via = Via.DATAGRAM if session.kind is Kind.UDP else Via.SOCKET
        return self._deliver(session, via, method, reason)

    def _relayed_outcome(self, session: Session, reason: str) -> list[Action]:
        if session.phase is Phase.RELAY_READY:
            return self._deliver(session, Via.RELAY, control_protocol.RELAYED, reason)
        if session.phase is Phase.RELAYING:
            session.relayed_outcome = reason
            return []
        if session.phase is Phase.RELAY_BROKEN:
            return self._fail(session, "relay connection failed after the mediator set it up")
        return self._fail(session, "mediator reported a relayed connection but set up no relay")

    # results of the IO ------------------------------------------------------

    def _io_result(self, event: Event) -> list[Action]:
        assert isinstance(event, AttemptEvent), event
        key, serial = event.key, event.serial
        session = self.sessions.get(key)
        if session is None or session.serial != serial:
            # An abandoned attempt's result: it neither reports nor keeps
            # its socket.
            return [] if isinstance(event, Timeout) else [DropAttempt(key, serial)]
        match event:
            case ProbesDone():
                return self._probes_done(session, event)
            case ProbesFailed(reason=reason) if session.phase is Phase.PROBING:
                session.phase = Phase.REFUSED
                return [
                    Log("warn", "port prediction probes failed: {why}", {"why": reason}),
                    DropAttempt(key, serial),
                    self._refuse(session, reason),
                ]
            case Timeout() if session.phase is Phase.STARTING:
                return self._start(session)
            case LowTtlSynSent() if session.phase in (
                Phase.PUNCHING,
                Phase.PUNCHED,
                Phase.FAILED_HERE,
            ):
                return [SendControl({"type": "armed", "session": session.session_id})]
            case PunchSucceeded() | PunchFailed() if session.phase is Phase.PUNCHING:
                return self._punched(session, event)
            case RelayReady() | RelayFailed() if session.phase is Phase.RELAYING:
                return self._relay_result(session, event)
        return []

    def _probes_done(self, session: Session, event: ProbesDone) -> list[Action]:
        if session.phase is not Phase.PROBING or not event.observations:
            return [DropAttempt(session.key, session.serial)]
        session.phase = Phase.PROBED
        report = {
            "type": "probed",
            "session": session.session_id,
            "local_ip": event.local_ip,
            "hole_port": event.observations[-1][0],
            "observations": [list(o) for o in event.observations],
        }
        return [SendControl(report)]

    def _start(self, session: Session) -> list[Action]:
        attempt = session.attempt
        assert attempt is not None
        session.phase = Phase.PUNCHING
        key, serial, sid = session.key, session.serial, session.session_id
        if attempt.method == control_protocol.UDP_PUNCH:
            return [StartUdpPunch(key, serial, sid, attempt.peer, attempt.deadline_seconds)]
        if attempt.method == control_protocol.LOW_TTL and attempt.role == "listener":
            return [
                StartPunch(
                    key,
                    serial,
                    sid,
                    attempt.hole_port,
                    attempt.peer,
                    attempt.deadline_seconds,
                    listen=True,
                    connect=False,
                ),
                SendLowTtlSyn(key, serial, attempt.hole_port, attempt.peer, attempt.ttl),
            ]
        if attempt.method == control_protocol.LOW_TTL:
            if not session.go_received:
                session.phase = Phase.AWAITING_GO
                return []
            return [self._connect_only(session, attempt)]
        return [
            StartPunch(
                key,
                serial,
                sid,
                attempt.hole_port,
                attempt.peer,
                attempt.deadline_seconds,
                max_connects=attempt.max_connects,
            )
        ]

    @staticmethod
    def _connect_only(session: Session, attempt: Attempt) -> StartPunch:
        return StartPunch(
            session.key,
            session.serial,
            session.session_id,
            attempt.hole_port,
            attempt.peer,
            attempt.deadline_seconds,
            listen=False,
            connect=True,
            max_connects=attempt.max_connects,
        )

    def _punched(self, session: Session, event: PunchSucceeded | PunchFailed) -> list[Action]:
        assert session.attempt is not None
        method = session.attempt.method
        if isinstance(event, PunchFailed):
            session.phase = Phase.FAILED_HERE
            log = Log(
                "info",
                "{method} with {peer} failed here: {detail}",
                {"method": method, "peer": session.peer_id, "detail": event.detail},
            )
            return [log, self._result(session, False, event.detail)]
        detail = event.detail
        if session.kind is Kind.UDP:
            if event.peer_address is None:
                session.phase = Phase.FAILED_HERE
                return [self._result(session, False, "punched, but no peer address")]
            session.peer_address = event.peer_address
            detail = f"two-way UDP with {event.peer_address[0]}:{event.peer_address[1]}"
        session.phase = Phase.PUNCHED
        return [self._result(session, True, detail)]

    def _relay_result(self, session: Session, event: RelayReady | RelayFailed) -> list[Action]:
        if isinstance(event, RelayReady):
            session.phase = Phase.RELAY_READY
            if session.relayed_outcome is not None:
                return self._deliver(
                    session, Via.RELAY, control_protocol.RELAYED, session.relayed_outcome
                )
            return []
        session.phase = Phase.RELAY_BROKEN
        log = Log("debug", "relay join failed: {why}", {"why": event.reason})
        if session.relayed_outcome is not None:
            return [
                log,
                *self._fail(session, "relay connection failed after the mediator set it up"),
            ]
        # The broker notices the missing half and ends the session.
        return [log]

    # session plumbing -------------------------------------------------------

    def _connect_requested(self, event: ConnectRequested) -> list[Action]:
        if not self.registered:
            return [Fail(event.key, "not registered at the mediator: call start() first")]
        if event.key <= 0 or event.key in self.sessions:
            return [Fail(event.key, f"connection key {event.key} is not new")]
        session = Session(
            key=event.key,
            peer_id=event.peer_id,
            kind=event.kind,
            incoming=False,
            started_at=event.now,
            phase=Phase.REQUESTED,
        )
        self.sessions[session.key] = session
        request = {
            "type": "connect",
            "ref": event.key,
            "to": event.peer_id,
            "kind": event.kind.value,
            "methods": list(event.methods) if event.kind is Kind.TCP else [],
        }
        return [SendControl(request)]

    def _leave_attempt(self, session: Session) -> list[Action]:
        """The broker moved on: drop this serial's IO, start the next."""
        actions: list[Action] = []
        if session.phase is Phase.STARTING:
            actions.append(CancelTimer(session.key, session.serial))
        if session.serial > 0:
            actions.append(DropAttempt(session.key, session.serial))
        session.serial += 1
        session.attempt = None
        session.go_received = False
        session.peer_address = None
        return actions

    def _result(self, session: Session, ok: bool, detail: str) -> SendControl:
        assert session.attempt is not None
        return SendControl(
            {
                "type": "result",
                "session": session.session_id,
                "method": session.attempt.method,
                "ok": ok,
                "detail": detail[:MAX_DETAIL_CHARS],
            }
        )

    @staticmethod
    def _refuse(session: Session, reason: str) -> SendControl:
        return SendControl(
            {"type": "refuse", "session": session.session_id, "reason": reason[:MAX_DETAIL_CHARS]}
        )

    def _abandon(self, session: Session, why: str) -> list[Action]:
        """A message that makes no sense for this session: refuse it and fail."""
        log = Log(
            "warn",
            "mediator broke the protocol in a session with {peer}: {why}",
            {"peer": session.peer_id, "why": why},
        )
        actions: list[Action] = [log]
        if session.session_id:
            actions.append(self._refuse(session, f"protocol error: {why}"))
        return actions + self._fail(session, f"mediator broke the control protocol: {why}")

    def _deliver(self, session: Session, via: Via, method: str, reason: str) -> list[Action]:
        self._forget(session)
        return [
            Deliver(
                session.key,
                session.serial,
                via,
                method,
                reason,
                session.peer_id,
                session.started_at,
                session.peer_address,
            )
        ]

    def _fail(self, session: Session, reason: str) -> list[Action]:
        self._forget(session)
        actions: list[Action] = []
        if session.phase is Phase.STARTING:
            actions.append(CancelTimer(session.key, session.serial))
        return [*actions, Fail(session.key, reason)]

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.key, None)
        if self._by_session_id.get(session.session_id) == session.key:
            del self._by_session_id[session.session_id]
