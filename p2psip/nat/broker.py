"""
The STUNT broker: registration and connection brokering, sans-IO.

After ``welcome`` (``p2psip.nat.control_auth``) a client may ask
``connect`` to another registered ID; the broker asks both sides to
``probe`` (TCP Binding requests from fresh local ports to the mediator's
STUN TCP port, the port prediction of the STUNT paper, Guha and Francis,
IMC 2005), collects ``probed`` reports, classifies both NATs
(``p2psip.nat.port_allocation``), and sends each side an ``attempt`` with
the method, the peer's predicted endpoint and a start delay.  Sides report
``result``; the broker moves on to the next method (direct,
simultaneous-open, low-ttl, then the relay) and ends with an ``outcome``
to both.  The messages are in ``p2psip.nat.control_protocol`` and
``docs/mediator-protocol.md``.

Everything here takes an injected clock and "links" (objects with
``send(message)`` and ``close()``), so tests drive the whole broker without
sockets.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime

from p2psip.nat.broker_metrics import BrokerCollector, Metrics
from p2psip.nat.control_auth import (
    MAX_ID_CHARS,
    NONCE_BYTES,
    SecretStore,
    compute_mac,
    valid_client_id,
)
from p2psip.nat.control_protocol import (
    DIRECT,
    LOW_TTL,
    PROTOCOL_VERSION,
    RELAYED,
    TCP_METHODS,
    UDP_PUNCH,
)
from p2psip.nat.port_allocation import (
    UNKNOWN_NAT,
    Observation,
    PortAllocationKind,
    ProbedNat,
    classify_observations,
    predict_endpoint,
)
from p2psip.util.logs import Logger


class Link(Protocol):
    """A client's control connection as the broker sees it."""

    def send(self, message: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


@attrs.frozen
class BrokerPolicy:
    """The operator's limits (``mediator.ini``)."""

    relay_enabled: bool = True
    low_ttl_enabled: bool = True
    max_clients: int = 1000
    max_sessions_per_client: int = 8
    max_relays_per_client: int = 4
    #: Relayed sessions at once, from everyone: with the per-client limit,
    #: no client can take every relay slot.
    max_relays: int = 256
    probe_timeout_seconds: float = 5.0
    attempt_start_seconds: float = 0.1
    attempt_deadline_seconds: float = 4.0
    low_ttl: int = 2
    relay_config_hint: str = "mediator.ini [mediator] relay (or --relay yes)"


@attrs.define
class _Side:
    client_id: str
    link: Link
    probe: dict[str, Any] | None = None
    nat: ProbedNat | None = None
    result: dict[str, Any] | None = None


@attrs.define
class BrokeredSession:
    """One connection being brokered between an initiator and a responder."""

    session_id: str
    kind: str
    ref: int
    initiator: _Side
    responder: _Side
    methods: list[str]
    started_at: float
    method: str = ""
    relay_token: str = ""
    reasons: list[str] = attrs.field(factory=list)
    timer: Any = None
    #: True while an attempt's results are awaited (not while re-probing).
    attempting: bool = False

    def sides(self) -> tuple[_Side, _Side]:
        return (self.initiator, self.responder)


class Broker:
    """
    Registration and connection brokering; one per mediator.

    The broker never touches sockets: control links hand it decoded
    messages and it answers through ``link.send``.  Timeouts run on the
    injected clock.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        secrets: SecretStore,
        policy: BrokerPolicy | None = None,
        stun_tcp_port: int = 3478,
        stun_udp_port: int = 3478,
        random_bytes: Callable[[int], bytes] = os.urandom,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.clock = clock
        self.secrets = secrets
        self.policy = policy or BrokerPolicy()
        self.stun_tcp_port = stun_tcp_port
        self.stun_udp_port = stun_udp_port
        self._random = random_bytes
        self.clients: dict[str, Link] = {}
        self._ids: dict[int, str] = {}
        self._nonces: dict[int, str] = {}
        self._observed: dict[int, tuple[str, int]] = {}
        self.sessions: dict[str, BrokeredSession] = {}
        self.relay_counts: dict[str, int] = {}
        self.metrics = Metrics(registry)
        self.metrics.registry.register(BrokerCollector(self))

    # links -------------------------------------------------------------

    def link_opened(self, link: Link, observed: tuple[str, int]) -> None:
        """A control connection arrived: challenge it."""
        nonce = self._random(NONCE_BYTES).hex()
        self._nonces[id(link)] = nonce
        self._observed[id(link)] = observed
        link.send(
            {
                "type": "challenge",
                "version": PROTOCOL_VERSION,
                "nonce": nonce,
                "stun_tcp_port": self.stun_tcp_port,
                "stun_udp_port": self.stun_udp_port,
            }
        )

    def link_closed(self, link: Link) -> None:
        self._nonces.pop(id(link), None)
        self._observed.pop(id(link), None)
        client_id = self._ids.pop(id(link), None)
        if client_id is None or self.clients.get(client_id) is not link:
            return
        del self.clients[client_id]
        self.log.info("client {client_id} went offline", client_id=client_id)
        for session in list(self.sessions.values()):
            if any(side.link is link for side in session.sides()):
                self._finish(session, False, f"{client_id} disconnected from the mediator")

    def client_id_of(self, link: Link) -> str | None:
        return self._ids.get(id(link))

    def message_received(self, link: Link, message: dict[str, Any]) -> None:
        """Dispatch one validated control message from ``link``."""
        kind = message["type"]
        client_id = self._ids.get(id(link))
        if client_id is None:
            if kind == "hello":
                self._hello(link, message)
            else:
                self._refuse_link(link, "protocol", f"expected hello, got {kind}")
            return
        if kind == "ping":
            link.send({"type": "pong"})
        elif kind == "connect":
            self._connect(link, client_id, message)
        elif kind in ("probed", "refuse", "armed", "result"):
            session = self.sessions.get(message["session"])
            if session is None:
                return  # late report for a finished session
            side = self._side_of(session, link)
            if side is None:
                self._refuse_link(link, "protocol", "report for a session that is not yours")
                return
            getattr(self, "_" + kind)(session, side, message)
        else:
            self._refuse_link(link, "protocol", f"unexpected {kind}")

    def _refuse_link(self, link: Link, code: str, reason: str) -> None:
        link.send({"type": "error", "code": code, "reason": reason})
        link.close()

    def _hello(self, link: Link, message: dict[str, Any]) -> None:
        client_id = message["id"]
        nonce = self._nonces.pop(id(link), "")
        if message["version"] != PROTOCOL_VERSION:
            self._refuse_link(
                link,
                "version",
                f"mediator speaks version {PROTOCOL_VERSION}, client {message['version']}",
            )
            return
        secret = self.secrets.secret_for(client_id) if valid_client_id(client_id) else None
        expected = compute_mac(secret, nonce, client_id) if secret is not None and nonce else ""
        mac = message["mac"]
        # compare_digest refuses str with non-ASCII characters (TypeError); a
        # MAC is hex, so such a mac is simply wrong.
        if not expected or not mac.isascii() or not hmac.compare_digest(expected, mac):
            self.metrics.auth_failed()
            self.log.debug(
                "authentication failed for {client_id!r}", client_id=client_id[:MAX_ID_CHARS]
            )
            self._refuse_link(
                link,
                "auth-failed",
                "wrong ID or secret: check the client's --secret, which is that ID's own "
                "(p2psip mediator secret ID prints it on the mediator host)",
            )
            return
        if client_id not in self.clients and len(self.clients) >= self.policy.max_clients:
            self._refuse_link(link, "busy", "mediator is full: raise max-clients in mediator.ini")
            return
        # Only a holder of this ID's own secret gets here (secrets are per
        # ID), so a new login may take the ID over: it is the same client
        # reconnecting, its old connection half-dead behind a NAT.
        previous = self.clients.get(client_id)
        if previous is not None:
            self.log.info(
                "client {client_id} reconnected; closing its old link", client_id=client_id
            )
            self._ids.pop(id(previous), None)
            previous.send(
                {"type": "error", "code": "replaced", "reason": "the same ID logged in again"}
            )
            previous.close()
        self.clients[client_id] = link
        self._ids[id(link)] = client_id
        observed = self._observed.get(id(link), ("", 0))
        link.send({"type": "welcome", "id": client_id, "observed": [observed[0], observed[1]]})
        self.log.info("client {client_id} registered", client_id=client_id)

    def _side_of(self, session: BrokeredSession, link: Link) -> _Side | None:
        for side in session.sides():
            if side.link is link:
                return side
        return None

    # brokering -----------------------------------------------------------

    def _connect(self, link: Link, client_id: str, message: dict[str, Any]) -> None:
        ref = message["ref"]
        target = message["to"]

        def fail(code: str, reason: str) -> None:
            link.send({"type": "error", "code": code, "reason": reason, "ref": ref})

        kind = message["kind"]
        if kind not in ("tcp", "udp"):
            fail("protocol", "kind must be tcp or udp")
            return
        peer = self.clients.get(target)
        if peer is None or target == client_id:
            fail("unknown-peer", f"{target} is not registered at this mediator")
            return
        active = sum(1 for s in self.sessions.values() if s.initiator.client_id == client_id)
        if active >= self.policy.max_sessions_per_client:
            fail(
                "busy",
                "too many connection attempts in progress (mediator.ini max-sessions-per-client)",
            )
            return
        if kind == "udp":
            methods = [UDP_PUNCH]
        else:
            asked = [m for m in message["methods"] if m in TCP_METHODS] or list(TCP_METHODS)
            methods = [m for m in TCP_METHODS if m in asked]
        session = BrokeredSession(
            session_id=self._random(8).hex(),
            kind=kind,
            ref=ref,
            initiator=_Side(client_id, link),
            responder=_Side(target, peer),
            methods=methods,
            started_at=self.clock.seconds(),
        )
        self.sessions[session.session_id] = session
        self.log.info(
            "brokering {kind} from {a} to {b} ({session})",
            kind=kind,
            a=client_id,
            b=target,
            session=session.session_id,
        )
        self._request_probes(session)

    def _request_probes(self, session: BrokeredSession) -> None:
        for side, other in (session.sides(), session.sides()[::-1]):
            side.probe = None
            side.nat = None
            side.result = None
            side.link.send(
                {
                    "type": "probe",
                    "session": session.session_id,
                    "peer": other.client_id,
                    "kind": session.kind,
                    "ref": session.ref if side is session.initiator else -1,
                }
            )
        self._arm_timer(session, self.policy.probe_timeout_seconds, "no probe report in time")

    def _arm_timer(self, session: BrokeredSession, seconds: float, reason: str) -> None:
        self._cancel_timer(session)

        def expired() -> None:
            session.timer = None
            self._step_failed(session, reason)

        session.timer = self.clock.callLater(seconds, expired)

    def _cancel_timer(self, session: BrokeredSession) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = None

    def _refuse(self, session: BrokeredSession, side: _Side, message: dict[str, Any]) -> None:
        self._finish(session, False, f"{side.client_id} refused: {message['reason']}")

    def _probed(self, session: BrokeredSession, side: _Side, message: dict[str, Any]) -> None:
        if side.probe is not None or session.attempting or session.relay_token:
            return
        observations: list[Observation] = [(o[0], o[1], o[2]) for o in message["observations"]]
        seen_ip = self._observed.get(id(side.link), ("", 0))[0]
        if not observations or any(host != seen_ip for _, host, _ in observations):
            # The peer will aim connection attempts at these addresses, so a
            # client may only name the public address the mediator sees it
            # at; otherwise it could point the peer at a third party.
            self.log.debug(
                "probe report from {client} names foreign addresses", client=side.client_id
            )
            self._finish(
                session,
                False,
                f"{side.client_id}'s probe results name an address other than the one the mediator sees "
                "(a NAT that uses different public addresses per connection is not supported)",
            )
            return
        side.probe = message
        side.nat = classify_observations(message["local_ip"], observations)
        if all(s.probe is not None for s in session.sides()):
            self._next_method(session)

    def _next_method(self, session: BrokeredSession) -> None:
        a, b = (side.nat or UNKNOWN_NAT for side in session.sides())
        while session.methods:
            method = session.methods.pop(0)
            unusable = self._why_unusable(method, a, b, session)
            if unusable:
                if unusable not in session.reasons:
                    session.reasons.append(unusable)
                continue
            session.method = method
            self.metrics.attempted(method)
            if method == RELAYED:
                self._start_relay(session)
            else:
                self._start_attempt(session, method)
            return
        if session.kind == "udp":
            session.reasons.append("the mediator relays TCP streams only, not datagrams")
        self._finish(session, False, "; ".join(session.reasons) or "no method left")

    def _why_unusable(
        self, method: str, a: ProbedNat, b: ProbedNat, session: BrokeredSession
    ) -> str:
        names = (session.initiator.client_id, session.responder.client_id)
        if method == RELAYED:
            if not self.policy.relay_enabled:
                return f"relay refused: relay disabled in {self.policy.relay_config_hint}"
            if self.relays_active >= self.policy.max_relays:
                return (
                    f"relay refused: the mediator relays {self.policy.max_relays} sessions "
                    "already (mediator.ini max-relays)"
                )
            for name in names:
                if self.relay_counts.get(name, 0) >= self.policy.max_relays_per_client:
                    return f"relay refused: {name} already has the maximum of relayed sessions (mediator.ini relay-sessions-per-client)"
            return ""
        if method == UDP_PUNCH and PortAllocationKind.NO_NAT in (a.kind, b.kind):
            # The public side learns the peer's real address from its
            # first packet, so the NATed side's mapping needn't be guessed.
            return ""
        if method == DIRECT:
            if PortAllocationKind.NO_NAT not in (a.kind, b.kind):
                return "no side has a public address for a direct connect"
            return ""
        if method == LOW_TTL and not self.policy.low_ttl_enabled:
            return "low-ttl disabled in mediator.ini (low-ttl = no)"
        unpredictable = [
            f"{name}'s {nat.describe()}"
            for name, nat in zip(names, (a, b), strict=True)
            if not nat.predictable
        ]
        if unpredictable:
            return (
                " and ".join(unpredictable)
                + ": address-and-port-dependent mapping whose public port can't be predicted,"
                + " so a direct path is impossible"
            )
        return ""

    def _start_attempt(self, session: BrokeredSession, method: str) -> None:
        session.attempting = True
        a, b = session.sides()
        predictions = {}
        for side in (a, b):
            assert side.probe is not None and side.nat is not None
            observations = [(o[0], o[1], o[2]) for o in side.probe["observations"]]
            predictions[id(side)] = predict_endpoint(
                side.nat, side.probe["hole_port"], observations
            )
        for side, other in ((a, b), (b, a)):
            assert side.probe is not None
            role = "initiator" if side is a else "responder"
            if method == LOW_TTL:
                # STUNT #2: the initiator's low-TTL SYN opens its own NAT, it
                # listens, and the responder connects once told to go.
                role = "listener" if side is a else "connector"
            endpoint = predictions[id(other)]
            side.link.send(
                {
                    "type": "attempt",
                    "session": session.session_id,
                    "method": method,
                    "role": role,
                    "peer_endpoint": [endpoint[0], endpoint[1]],
                    "hole_port": side.probe["hole_port"],
                    "start_in_seconds": self.policy.attempt_start_seconds,
                    "deadline_seconds": self.policy.attempt_deadline_seconds,
                    "ttl": self.policy.low_ttl if method == LOW_TTL else 0,
                    # Optional (added in 1.1): retrying after a failed connect
                    # burns a port of a sequential NAT and breaks the prediction.
                    "connect_retries": 0
                    if side.nat is not None and side.nat.kind is PortAllocationKind.SEQUENTIAL
                    else -1,
                }
            )
        self._arm_timer(
            session,
            self.policy.attempt_start_seconds + self.policy.attempt_deadline_seconds + 2.0,
            f"{method}: no result in time",
        )

    def _armed(self, session: BrokeredSession, side: _Side, message: dict[str, Any]) -> None:
        if session.method == LOW_TTL and side is session.initiator:
            session.responder.link.send({"type": "go", "session": session.session_id})

    def _result(self, session: BrokeredSession, side: _Side, message: dict[str, Any]) -> None:
        if message["method"] != session.method or not session.attempting:
            return
        side.result = message
        if not message["ok"]:
            reason = f"{session.method} failed at {side.client_id}: {message['detail']}"
            if session.method == LOW_TTL:
                reason += (
                    " (NATs that track TCP windows drop the listener's SYN-ACK;"
                    " on Linux NATs this needs net.netfilter.nf_conntrack_tcp_be_liberal=1)"
                )
            self._step_failed(session, reason)
            return
        if all(s.result is not None and s.result["ok"] for s in session.sides()):
            self._finish(session, True, "")

    def _step_failed(self, session: BrokeredSession, reason: str) -> None:
        if session.session_id not in self.sessions:
            return
        self._cancel_timer(session)
        session.attempting = False
        session.reasons.append(reason)
        if session.method == RELAYED:
            self._release_relay(session)
        if session.methods and session.methods[0] == RELAYED:
            self._next_method(session)
        elif session.methods:
            # A failed attempt uses up NAT mappings (sequential NATs move
            # on), so predictions are made afresh before the next method.
            self._request_probes(session)
        else:
            self._finish(session, False, "; ".join(session.reasons))

    # relay ------------------------------------------------------------------

    def _start_relay(self, session: BrokeredSession) -> None:
        session.relay_token = self._random(16).hex()
        for side in session.sides():
            self.relay_counts[side.client_id] = self.relay_counts.get(side.client_id, 0) + 1
        reason = "; ".join(session.reasons) or "relay requested"
        for side in session.sides():
            side.link.send(
                {
                    "type": "relay",
                    "session": session.session_id,
                    "token": session.relay_token,
                    "reason": reason,
                }
            )
        self._arm_timer(
            session, self.policy.probe_timeout_seconds, "relay: a side did not join in time"
        )

    def _release_relay(self, session: BrokeredSession) -> None:
        if not session.relay_token:
            return
        session.relay_token = ""
        for side in session.sides():
            count = self.relay_counts.get(side.client_id, 0) - 1
            if count > 0:
                self.relay_counts[side.client_id] = count
            else:
                self.relay_counts.pop(side.client_id, None)

    def relay_token_valid(self, session_id: str, token: str) -> bool:
        """Whether a ``relay-join`` names a session the broker set up for relaying."""
        session = self.sessions.get(session_id)
        # The token is hex; a non-ASCII one (a lone surrogate from JSON's
        # "\\ud800" cannot even be encoded) is simply wrong.
        return (
            session is not None
            and bool(session.relay_token)
            and token.isascii()
            and hmac.compare_digest(session.relay_token.encode(), token.encode())
        )

    def relay_parties(self, session_id: str) -> tuple[str, str]:
        session = self.sessions[session_id]
        return (session.initiator.client_id, session.responder.client_id)

    def relay_established(self, session_id: str) -> None:
        """Both sides joined the relay: the session succeeded as relayed."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        self.metrics.relay_session()
        self._finish(session, True, "; ".join(session.reasons), keep_relay=True)

    def relay_ended(self, initiator: str, responder: str) -> None:
        """A spliced relay closed: free the per-client relay slots."""
        for name in (initiator, responder):
            count = self.relay_counts.get(name, 0) - 1
            if count > 0:
                self.relay_counts[name] = count
            else:
                self.relay_counts.pop(name, None)

    # end -------------------------------------------------------------------

    def _finish(
        self, session: BrokeredSession, ok: bool, reason: str, keep_relay: bool = False
    ) -> None:
        if self.sessions.pop(session.session_id, None) is None:
            return
        self._cancel_timer(session)
        if not keep_relay:
            self._release_relay(session)
        if ok:
            self.metrics.succeeded(session.method)
        else:
            self.metrics.failed()
        elapsed = self.clock.seconds() - session.started_at
        self.log.info(
            "session {session} {a}->{b}: {result} via {method} after {elapsed:.3f}s",
            session=session.session_id,
            a=session.initiator.client_id,
            b=session.responder.client_id,
            result="ok" if ok else "failed",
            method=session.method or "-",
            elapsed=elapsed,
        )
        for side in session.sides():
            side.link.send(
                {
                    "type": "outcome",
                    "session": session.session_id,
                    "ok": ok,
                    "method": session.method if ok else "",
                    "reason": reason,
                }
            )

    def status(self) -> dict[str, Any]:
        """The broker part of the mediator's /status document."""
        return {
            "clients_online": len(self.clients),
            "sessions_in_progress": len(self.sessions),
            "attempts": dict(self.metrics.attempts),
            "successes": dict(self.metrics.successes),
            "failures": self.metrics.failures,
            "auth_failures": self.metrics.auth_failures,
            "rejected_connections": self.metrics.rejected_connections,
            "relay_sessions": self.metrics.relay_sessions,
            "relayed_bytes": self.metrics.relayed_bytes,
            "relays_active": self.relays_active,
        }

    @property
    def relays_active(self) -> int:
        return sum(self.relay_counts.values()) // 2
