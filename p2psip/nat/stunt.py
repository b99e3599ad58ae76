"""
STUNT control protocol and broker (Guha and Francis, IMC 2005), sans-IO.

Clients behind NATs keep one TCP control connection to the mediator.  The
mediator authenticates them, lets them register under an ID, and brokers a
TCP (or UDP) connection between two registered IDs that both consent.  The
full protocol is in ``docs/mediator-protocol.md``; in short:

Framing: every control message is one frame, a 2-byte big-endian length
followed by that many bytes of a UTF-8 JSON object with a string ``type``.
Frames longer than ``MAX_FRAME_BYTES`` are a decode error, checked before
anything is buffered beyond the 2-byte header.

Session: the mediator speaks first (``challenge`` with a nonce and its
protocol version); the client answers ``hello`` with its ID and
``HMAC-SHA256(secret, "p2psip-stunt-1" NUL nonce NUL id)``, or
``relay-join`` on a connection that is to carry relayed bytes.  After
``welcome`` the client may ask ``connect`` to another ID; the broker asks
both sides to ``probe`` (TCP Binding requests from fresh local ports to the
mediator's STUN TCP port, the port prediction of the STUNT paper), collects
``probed`` reports, classifies both NATs, and sends each side an
``attempt`` with the method, the peer's predicted endpoint and a start
delay.  Sides report ``result``; the broker moves on to the next method
(direct, simultaneous-open, low-ttl, then the relay) and ends with an
``outcome`` to both.

Everything here takes an injected clock and "links" (objects with
``send(message)`` and ``close()``), so tests drive the whole broker without
sockets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import attrs
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.logger import Logger

from p2psip.util.metrics import counter_values

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8192
FRAME_HEADER = struct.Struct("!H")
MAC_LABEL = b"p2psip-stunt-1"
NONCE_BYTES = 16
MAX_ID_CHARS = 128
MAX_OBSERVATIONS = 16

#: Connection methods, in the order the broker tries them.
DIRECT = "direct"
SIMULTANEOUS_OPEN = "simultaneous-open"
LOW_TTL = "low-ttl"
RELAYED = "relayed"
UDP_PUNCH = "udp-punch"
TCP_METHODS = (DIRECT, SIMULTANEOUS_OPEN, LOW_TTL, RELAYED)

#: NAT port-allocation classes found by port prediction.
NO_NAT = "none"
PRESERVING = "preserving"
SEQUENTIAL = "sequential"
RANDOM = "random"
UNKNOWN = "unknown"


class StuntDecodeError(ValueError):
    """A control frame is malformed; the only error decoding raises."""


# --- framing -------------------------------------------------------------

_FIELD_TYPES: dict[str, dict[str, Any]] = {
    # client -> mediator
    "hello": {"version": int, "id": str, "mac": str},
    "relay-join": {"version": int, "session": str, "token": str},
    "connect": {"ref": int, "to": str, "kind": str, "methods": list},
    "probed": {"session": str, "local_ip": str, "hole_port": int, "observations": list},
    "refuse": {"session": str, "reason": str},
    "armed": {"session": str},
    "result": {"session": str, "method": str, "ok": bool, "detail": str},
    "ping": {},
    # mediator -> client
    "challenge": {"version": int, "nonce": str, "stun_tcp_port": int, "stun_udp_port": int},
    "welcome": {"id": str, "observed": list},
    "error": {"code": str, "reason": str},
    "probe": {"session": str, "peer": str, "kind": str, "ref": int},
    "attempt": {
        "session": str,
        "method": str,
        "role": str,
        "peer_endpoint": list,
        "hole_port": int,
        "start_in_seconds": float,
        "deadline_seconds": float,
        "ttl": int,
    },
    "go": {"session": str},
    "relay": {"session": str, "token": str, "reason": str},
    "relay-ready": {"session": str},
    "outcome": {"session": str, "ok": bool, "method": str, "reason": str},
    "pong": {},
}


def _check_endpoint(value: Any) -> None:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], str)
        or len(value[0]) > 64
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
        or not 0 <= value[1] <= 65535
    ):
        raise StuntDecodeError("endpoint must be [host, port]")


def validate_message(message: Any) -> dict[str, Any]:
    """
    Check a decoded JSON value against the message schema.

    Unknown extra fields are allowed (newer minor revisions may add them);
    missing or mistyped known fields are errors.
    """
    if not isinstance(message, dict):
        raise StuntDecodeError("a frame must hold a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in _FIELD_TYPES:
        raise StuntDecodeError("unknown message type")
    for name, expected in _FIELD_TYPES[kind].items():
        if name not in message:
            raise StuntDecodeError(f"{kind}: missing field {name}")
        value = message[name]
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and 0 <= value < 3600
        elif expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and -1 <= value < 2**32
        else:
            ok = isinstance(value, expected)
        if not ok:
            raise StuntDecodeError(f"{kind}: field {name} has the wrong type")
        if expected is str and len(value) > 512:
            raise StuntDecodeError(f"{kind}: field {name} is too long")
    for name in ("peer_endpoint", "observed"):
        if name in _FIELD_TYPES[kind]:
            _check_endpoint(message[name])
    if kind == "probed":
        observations = message["observations"]
        if len(observations) > MAX_OBSERVATIONS:
            raise StuntDecodeError("probed: too many observations")
        for item in observations:
            if not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], int):
                raise StuntDecodeError("probed: observation must be [local_port, host, port]")
            _check_endpoint(item[1:])
    if kind == "connect":
        if len(message["methods"]) > 8 or not all(isinstance(m, str) for m in message["methods"]):
            raise StuntDecodeError("connect: methods must be a short list of names")
    return message


def encode_frame(message: Mapping[str, Any]) -> bytes:
    """One frame: 2-byte length, compact JSON."""
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > MAX_FRAME_BYTES:
        raise ValueError("control message too large")
    return FRAME_HEADER.pack(len(body)) + body


def decode_frame_body(body: bytes) -> dict[str, Any]:
    """Decode and validate the JSON body of one frame."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise StuntDecodeError(f"frame is not UTF-8 JSON: {e.__class__.__name__}") from None
    return validate_message(value)


class FrameDecoder:
    """
    Stream decoder: ``feed(data) -> list[dict]``.

    After a decode error the decoder stays broken (every later ``feed``
    raises too): the stream has lost its framing and must be closed.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes
        self._broken = False

    def feed(
        self, data: bytes, stop_after: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """
        Decode the complete frames in the buffer.

        ``stop_after`` ends decoding after the first message it accepts and
        leaves the rest buffered (``take_remainder``): after ``relay-ready``
        the stream carries raw bytes, not frames.
        """
        if self._broken:
            raise StuntDecodeError("stream already failed to decode")
        self._buffer += data
        messages = []
        try:
            while len(self._buffer) >= FRAME_HEADER.size:
                (length,) = FRAME_HEADER.unpack_from(self._buffer)
                if length == 0 or length > self._max:
                    raise StuntDecodeError(f"frame length {length} outside 1..{self._max}")
                end = FRAME_HEADER.size + length
                if len(self._buffer) < end:
                    break
                body = bytes(self._buffer[FRAME_HEADER.size : end])
                del self._buffer[:end]
                message = decode_frame_body(body)
                messages.append(message)
                if stop_after is not None and stop_after(message):
                    break
        except StuntDecodeError:
            self._broken = True
            raise
        return messages

    def take_remainder(self) -> bytes:
        """Bytes after the last frame (a relay-join connection turns raw)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


# --- authentication ------------------------------------------------------


def compute_mac(secret: bytes, nonce_hex: str, client_id: str) -> str:
    """The ``hello`` proof of knowing the secret, bound to nonce and ID."""
    data = MAC_LABEL + b"\0" + nonce_hex.encode("ascii") + b"\0" + client_id.encode("utf-8")
    return hmac.new(secret, data, hashlib.sha256).hexdigest()


class SecretStore(Protocol):
    def secret_for(self, client_id: str) -> bytes | None: ...


@attrs.frozen
class Secrets:
    """
    Client secrets: one shared secret, per-ID secrets, or both.

    A per-ID secret wins over the shared one, so an operator can give some
    users their own secret and revoke it without touching the others.
    """

    shared: bytes | None = None
    per_id: Mapping[str, bytes] = attrs.field(factory=dict)

    def secret_for(self, client_id: str) -> bytes | None:
        return self.per_id.get(client_id, self.shared)


def parse_secrets_file(text: str) -> dict[str, bytes]:
    """
    ``ID SECRET`` per line; ``#`` starts a comment.

    :raises ValueError: naming the line, so the operator can fix the file.
    """
    secrets: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"line {number}: expected 'ID SECRET'")
        secrets[parts[0]] = parts[1].encode("utf-8")
    return secrets


def valid_client_id(client_id: str) -> bool:
    return 0 < len(client_id) <= MAX_ID_CHARS and client_id.isprintable() and " " not in client_id


# --- NAT classification (port prediction) --------------------------------


@attrs.frozen
class NatBehaviour:
    """What port prediction learned about one side's NAT for TCP."""

    allocation: str  # NO_NAT, PRESERVING, SEQUENTIAL, RANDOM, UNKNOWN
    public_ip: str
    delta: int = 0

    @property
    def predictable(self) -> bool:
        return self.allocation in (NO_NAT, PRESERVING, SEQUENTIAL)

    def describe(self) -> str:
        if self.allocation == NO_NAT:
            return "no NAT (public address)"
        if self.allocation == PRESERVING:
            return "port-preserving NAT"
        if self.allocation == SEQUENTIAL:
            return f"NAT with sequential port allocation (delta {self.delta:+d})"
        if self.allocation == RANDOM:
            return "NAT with random port allocation"
        return "NAT whose port allocation could not be determined"


Observation = tuple[int, str, int]  # local port, mapped host, mapped port


def classify(local_ip: str, observations: Iterable[Observation]) -> NatBehaviour:
    """
    Port allocation from Binding probes made from fresh local ports.

    Probes go one after another to the same server endpoint, so a NAT that
    allocates sequentially shows a constant difference between consecutive
    mapped ports (in at least two thirds of the steps: other traffic may
    take a port in between), and a port-preserving NAT maps every local
    port to itself.
    """
    obs = list(observations)
    if not obs:
        return NatBehaviour(UNKNOWN, "")
    public_ip = obs[-1][1]
    if all(host == local_ip and mapped == local for local, host, mapped in obs):
        return NatBehaviour(NO_NAT, public_ip)
    if all(mapped == local for local, _, mapped in obs):
        return NatBehaviour(PRESERVING, public_ip)
    if len(obs) >= 3:
        deltas = [(b[2] - a[2]) % 65536 for a, b in zip(obs, obs[1:], strict=False)]
        # Other flows through the same NAT can take a port between two of
        # our probes; a clear majority of equal steps is still sequential.
        delta = max(set(deltas), key=deltas.count)
        agreeing = deltas.count(delta)
        if delta > 32768:
            delta -= 65536
        if agreeing >= 2 and agreeing * 3 >= len(deltas) * 2 and 0 < abs(delta) <= 16:
            return NatBehaviour(SEQUENTIAL, public_ip, delta)
        return NatBehaviour(RANDOM, public_ip)
    return NatBehaviour(UNKNOWN, public_ip)


def predict_endpoint(
    behaviour: NatBehaviour, hole_port: int, observations: list[Observation]
) -> tuple[str, int]:
    """
    The public endpoint the next flow from ``hole_port`` will get.

    The client's last probe comes from ``hole_port`` itself; a sequential NAT
    gives the following flow (the punch towards the peer) the next port.
    """
    last = observations[-1] if observations else (hole_port, behaviour.public_ip, hole_port)
    if behaviour.allocation in (NO_NAT, PRESERVING):
        return (behaviour.public_ip, hole_port)
    if behaviour.allocation == SEQUENTIAL:
        return (behaviour.public_ip, (last[2] + behaviour.delta) % 65536)
    return (behaviour.public_ip, last[2])


# --- broker ---------------------------------------------------------------


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
    behaviour: NatBehaviour | None = None
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


class Metrics:
    """
    The broker's event counters, real ``Counter`` objects in ``registry``.

    ``/metrics`` exports them; ``/status`` reads the same numbers back
    through the properties below.  Method labels come from the fixed set of
    method names, never from client input.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: A broker built without one (tests) still counts, in a registry of its own.
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._attempts = Counter(
            "p2psip_mediator_attempts_total",
            "Connection attempts started, per method.",
            ["method"],
            registry=r,
        )
        self._successes = Counter(
            "p2psip_mediator_successes_total",
            "Connections made, per method.",
            ["method"],
            registry=r,
        )
        for method in TCP_METHODS + (UDP_PUNCH,):
            self._attempts.labels(method)
            self._successes.labels(method)
        self._failures = Counter(
            "p2psip_mediator_failures_total",
            "Brokered connections that failed by every method.",
            registry=r,
        )
        self._auth_failures = Counter(
            "p2psip_mediator_auth_failures_total",
            "Control connections that failed authentication.",
            registry=r,
        )
        self._rejected = Counter(
            "p2psip_mediator_rejected_connections_total",
            "Control connections refused by the per-address rate limit.",
            registry=r,
        )
        self._relayed_bytes = Counter(
            "p2psip_mediator_relayed_bytes_total", "Bytes copied by the relay.", registry=r
        )
        self._relay_sessions = Counter(
            "p2psip_mediator_relay_sessions_total", "Relayed sessions set up.", registry=r
        )

    def attempted(self, method: str) -> None:
        self._attempts.labels(method).inc()

    def succeeded(self, method: str) -> None:
        self._successes.labels(method).inc()

    def failed(self) -> None:
        self._failures.inc()

    def auth_failed(self) -> None:
        self._auth_failures.inc()

    def rejected_connection(self) -> None:
        self._rejected.inc()

    def relayed(self, byte_count: int) -> None:
        self._relayed_bytes.inc(byte_count)

    def relay_session(self) -> None:
        self._relay_sessions.inc()

    @staticmethod
    def _value(counter: Counter) -> int:
        return int(counter_values(counter)[()])

    @staticmethod
    def _per_method(counter: Counter) -> dict[str, int]:
        values = counter_values(counter)
        return {method: int(value) for (method,), value in sorted(values.items()) if value}

    @property
    def attempts(self) -> dict[str, int]:
        return self._per_method(self._attempts)

    @property
    def successes(self) -> dict[str, int]:
        return self._per_method(self._successes)

    @property
    def failures(self) -> int:
        return self._value(self._failures)

    @property
    def auth_failures(self) -> int:
        return self._value(self._auth_failures)

    @property
    def rejected_connections(self) -> int:
        return self._value(self._rejected)

    @property
    def relayed_bytes(self) -> int:
        return self._value(self._relayed_bytes)

    @property
    def relay_sessions(self) -> int:
        return self._value(self._relay_sessions)


class BrokerCollector:
    """The broker's levels (clients online, sessions, relays), read at scrape time."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        broker = self._broker
        yield GaugeMetricFamily(
            "p2psip_mediator_clients_online",
            "Clients registered over a control connection.",
            value=float(len(broker.clients)),
        )
        yield GaugeMetricFamily(
            "p2psip_mediator_sessions_in_progress",
            "Connections being brokered.",
            value=float(len(broker.sessions)),
        )
        yield GaugeMetricFamily(
            "p2psip_mediator_relays_active",
            "Relayed sessions open now.",
            value=float(broker.relays_active),
        )


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
        clock: Any,
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
        if not expected or not hmac.compare_digest(expected, message["mac"]):
            self.metrics.auth_failed()
            self.log.debug(
                "authentication failed for {client_id!r}", client_id=client_id[:MAX_ID_CHARS]
            )
            self._refuse_link(
                link, "auth-failed", "wrong ID or secret: check the client's --secret"
            )
            return
        if client_id not in self.clients and len(self.clients) >= self.policy.max_clients:
            self._refuse_link(link, "busy", "mediator is full: raise max-clients in mediator.ini")
            return
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
            side.behaviour = None
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
        side.behaviour = classify(message["local_ip"], observations)
        if all(s.probe is not None for s in session.sides()):
            self._next_method(session)

    def _next_method(self, session: BrokeredSession) -> None:
        unknown = NatBehaviour(UNKNOWN, "")
        a, b = (side.behaviour or unknown for side in session.sides())
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
        self, method: str, a: NatBehaviour, b: NatBehaviour, session: BrokeredSession
    ) -> str:
        names = (session.initiator.client_id, session.responder.client_id)
        if method == RELAYED:
            if not self.policy.relay_enabled:
                return f"relay refused: relay disabled in {self.policy.relay_config_hint}"
            for name in names:
                if self.relay_counts.get(name, 0) >= self.policy.max_relays_per_client:
                    return f"relay refused: {name} already has the maximum of relayed sessions (mediator.ini relay-sessions-per-client)"
            return ""
        if method == UDP_PUNCH and NO_NAT in (a.allocation, b.allocation):
            # The public side learns the peer's real address from its
            # first packet, so the NATed side's mapping needn't be guessed.
            return ""
        if method == DIRECT:
            if a.allocation != NO_NAT and b.allocation != NO_NAT:
                return "no side has a public address for a direct connect"
            return ""
        if method == LOW_TTL and not self.policy.low_ttl_enabled:
            return "low-ttl disabled in mediator.ini (low-ttl = no)"
        unpredictable = [
            f"{name}'s {behaviour.describe()}"
            for name, behaviour in zip(names, (a, b), strict=True)
            if not behaviour.predictable
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
            assert side.probe is not None and side.behaviour is not None
            observations = [(o[0], o[1], o[2]) for o in side.probe["observations"]]
            predictions[id(side)] = predict_endpoint(
                side.behaviour, side.probe["hole_port"], observations
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
                    if side.behaviour is not None and side.behaviour.allocation == SEQUENTIAL
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
        return (
            session is not None
            and bool(session.relay_token)
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


class ConnectionRateLimit:
    """
    Per-source-address admission: at most ``limit`` connections per window.

    Fixed windows keep this one dict lookup per connection; the table is
    cleared every window so an address flood cannot grow memory unbounded
    beyond one window's worth of addresses (capped by ``max_addresses``).
    """

    def __init__(
        self, clock: Any, limit: int, window_seconds: float = 60.0, max_addresses: int = 100_000
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self._window_start = clock.seconds()
        self._counts: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        now = self.clock.seconds()
        if now - self._window_start >= self.window_seconds:
            self._window_start = now
            self._counts.clear()
        count = self._counts.get(address, 0)
        if count >= self.limit:
            return False
        if count == 0 and len(self._counts) >= self.max_addresses:
            return False
        self._counts[address] = count + 1
        return True
