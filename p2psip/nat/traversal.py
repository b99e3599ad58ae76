"""
NAT-traversing TCP connections through a STUNT mediator: the client side.

``TraversalClient`` keeps the authenticated control connection to the
mediator (protocol in ``p2psip.nat.control_protocol`` and ``docs/mediator-protocol.md``)
and answers the broker: it runs port-prediction probes against the
mediator's STUN TCP port, then the connection attempt the broker chose
(direct, simultaneous open, low-TTL SYN) or joins the relay.  One call,
``connect(peer_id, factory)``, returns a Deferred of ``TraversalResult``:
the connected protocol and how the peer was reached.  ``MediatedEndpoint``
wraps that as an ``IStreamClientEndpoint``, so overlay links can use it as
their connector.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from p2psip.nat import holepunch
from p2psip.nat.control_auth import compute_mac
from p2psip.nat.control_protocol import (
    LOW_TTL,
    PROTOCOL_VERSION,
    RELAYED,
    UDP_PUNCH,
    FrameDecoder,
    StuntDecodeError,
    encode_frame,
)

PROBES_PER_ATTEMPT = 4
#: Control-connection pings keep NAT and firewall state for it alive.
KEEPALIVE_SECONDS = 25.0
#: Back-off between attempts to reach the mediator again.
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class TraversalError(Exception):
    """No connection; ``reason`` says why, in words an operator can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define
class TraversalResult:
    """A connection made through the mediator."""

    protocol: IProtocol
    method: str
    peer_id: str
    setup_seconds: float
    #: Why the earlier methods were skipped or failed ("" when the first worked).
    reason: str = ""


@attrs.define
class _Session:
    peer_id: str
    factory: IProtocolFactory
    started_at: float
    deferred: defer.Deferred[TraversalResult] | None = None
    incoming: bool = False
    session_id: str = ""
    method: str = ""
    punch: holepunch.TcpPunch | None = None
    connected: socket.socket | None = None
    relay: _RelayClientProtocol | None = None
    relay_ready: defer.Deferred[None] | None = None
    outcome: dict[str, Any] | None = None
    hole_port: int = 0
    go: defer.Deferred[None] | None = None
    #: Bumped whenever the broker moves on, so callbacks of an abandoned
    #: attempt neither report nor keep their socket.
    serial: int = 0
    kind: str = "tcp"
    datagram: DatagramProtocol | None = None
    datagram_deferred: defer.Deferred[DatagramResult] | None = None
    udp: holepunch.UdpPunchProtocol | None = None
    udp_port: Any = None
    udp_peer: tuple[str, int] | None = None


@attrs.define
class DatagramResult:
    """A UDP path punched through the mediator."""

    #: The application's protocol, now connected to the punched UDP port.
    protocol: DatagramProtocol
    method: str
    peer_id: str
    #: Where the peer's datagrams come from and ours must go.
    peer_address: tuple[str, int]
    setup_seconds: float
    reason: str = ""


class _ControlClientProtocol(Protocol):
    log = Logger()

    def __init__(self, client: TraversalClient) -> None:
        self.client = client
        self.decoder = FrameDecoder()

    def connectionMade(self) -> None:
        # Control messages are small and latency-bound: no Nagle.
        transport: Any = self.transport
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(encode_frame(message))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except StuntDecodeError as e:
            self.log.warn("mediator sent a malformed control frame ({why}); closing", why=str(e))
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for message in messages:
            self.client._message_received(self, message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client._control_lost(self, reason)


class _RelayClientProtocol(Protocol):
    """A relay-join connection; after ``relay-ready`` it carries the peer's bytes."""

    log = Logger()

    def __init__(self, session_id: str, token: str, ready: defer.Deferred[None]) -> None:
        self.session_id = session_id
        self.token = token
        self.ready = ready
        self.decoder: FrameDecoder | None = FrameDecoder()
        self.user: IProtocol | None = None
        self.pending = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.decoder is None:
            if self.user is None:
                self.pending += data
            else:
                self.user.dataReceived(data)
            return
        try:
            messages = self.decoder.feed(data, stop_after=lambda m: m["type"] == "relay-ready")
        except StuntDecodeError as e:
            self.transport.loseConnection()
            if not self.ready.called:
                self.ready.errback(TraversalError(f"relay connection broke: {e}"))
            return
        for message in messages:
            if message["type"] == "challenge":
                self.transport.write(
                    encode_frame(
                        {
                            "type": "relay-join",
                            "version": PROTOCOL_VERSION,
                            "session": self.session_id,
                            "token": self.token,
                        }
                    )
                )
            elif message["type"] == "relay-ready":
                transport: Any = self.transport
                if hasattr(transport, "setTcpNoDelay"):
                    transport.setTcpNoDelay(True)
                self.pending = self.decoder.take_remainder()
                self.decoder = None
                if not self.ready.called:
                    self.ready.callback(None)
                return
            elif message["type"] == "error":
                self.transport.loseConnection()
                if not self.ready.called:
                    self.ready.errback(TraversalError(f"relay refused: {message['reason']}"))
                return

    def attach(self, user: IProtocol) -> None:
        """Hand the relayed stream to the application's protocol."""
        assert self.transport is not None
        self.user = user
        user.makeConnection(self.transport)
        if self.pending:
            data, self.pending = self.pending, b""
            user.dataReceived(data)
        if self.lost is not None:
            user.connectionLost(self.lost)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.ready.called:
            self.ready.errback(TraversalError("relay connection closed before both sides joined"))
        if self.user is not None:
            self.user.connectionLost(reason)
        else:
            self.lost = reason


class _CapturingFactory(Factory):
    """Builds the application's protocol for an adopted socket and keeps it."""

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self.wrapped = wrapped
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: Any) -> Any:
        self.built = self.wrapped.buildProtocol(addr)
        return self.built


IncomingPolicy = Callable[[str], IProtocolFactory | None]
IncomingDatagramPolicy = Callable[[str], DatagramProtocol | None]


class TraversalClient:
    """
    One client's presence at a mediator.

    :param mediator: endpoint of the mediator's control port.
    :param accept: called with the peer ID of an incoming request; returns
        the factory for the connection, or None to refuse.
    :param on_incoming: called with the ``TraversalResult`` of every
        incoming connection that was made.
    :param low_ttl_wait_seconds: how long the low-TTL SYN may wait for its
        ICMP error before the listener tells the broker it is armed.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        mediator: IStreamClientEndpoint,
        client_id: str,
        secret: bytes,
        accept: IncomingPolicy | None = None,
        on_incoming: Callable[[TraversalResult], None] | None = None,
        probes: int = PROBES_PER_ATTEMPT,
        keepalive_seconds: float = KEEPALIVE_SECONDS,
        accept_datagram: IncomingDatagramPolicy | None = None,
        on_incoming_datagram: Callable[[DatagramResult], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.mediator = mediator
        self.client_id = client_id
        self.secret = secret
        self.accept = accept
        self.accept_datagram = accept_datagram
        self.on_incoming_datagram = on_incoming_datagram
        self.on_incoming = on_incoming
        self.probes = probes
        self.keepalive_seconds = keepalive_seconds
        self._keepalive: LoopingCall | None = None
        self.control: _ControlClientProtocol | None = None
        self.online = False
        self.observed: tuple[str, int] | None = None
        self.stun_tcp_port = 0
        self.stun_udp_port = 0
        self._ready: defer.Deferred[TraversalClient] | None = None
        self._refs = 0
        self._by_ref: dict[int, _Session] = {}
        self._sessions: dict[str, _Session] = {}
        self.closed: defer.Deferred[str] = defer.Deferred()

    # lifecycle ---------------------------------------------------------------

    def start(self) -> defer.Deferred[TraversalClient]:
        """Connect and authenticate; fires with self once registered."""
        self._ready = defer.Deferred()
        if self.closed.called:
            self.closed = defer.Deferred()
        factory = Factory.forProtocol(lambda: _ControlClientProtocol(self))
        connecting = self.mediator.connect(factory)

        def connected(protocol: _ControlClientProtocol) -> None:
            self.control = protocol

        def not_connected(failure: Failure) -> None:
            if self._ready is not None and not self._ready.called:
                self._ready.errback(
                    TraversalError(
                        f"cannot reach the mediator ({failure.getErrorMessage()}): check --mediator"
                    )
                )

        connecting.addCallbacks(connected, not_connected)
        return self._ready

    def stop(self) -> None:
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()

    @property
    def mediator_host(self) -> str:
        assert self.control is not None and self.control.transport is not None
        peer: Any = self.control.transport.getPeer()
        return str(peer.host)

    @property
    def local_ip(self) -> str:
        assert self.control is not None and self.control.transport is not None
        local: Any = self.control.transport.getHost()
        return str(local.host)

    # outgoing ---------------------------------------------------------------

    def connect(
        self, peer_id: str, factory: IProtocolFactory, methods: list[str] | None = None
    ) -> defer.Deferred[TraversalResult]:
        """
        Connect to ``peer_id`` through whatever path works.

        :returns: a Deferred of ``TraversalResult``, or failing with
            ``TraversalError`` whose reason names what stood in the way.
        """
        if not self.online or self.control is None:
            return defer.fail(TraversalError("not registered at the mediator: call start() first"))
        self._refs += 1
        ref = self._refs
        session = _Session(peer_id, factory, self.reactor.seconds(), deferred=defer.Deferred())
        self._by_ref[ref] = session
        self.control.send(
            {
                "type": "connect",
                "ref": ref,
                "to": peer_id,
                "kind": "tcp",
                "methods": list(methods or []),
            }
        )
        assert session.deferred is not None
        return session.deferred

    def connect_datagram(
        self, peer_id: str, protocol: DatagramProtocol
    ) -> defer.Deferred[DatagramResult]:
        """
        Punch a UDP path to ``peer_id`` for ``protocol``.

        :returns: a Deferred of ``DatagramResult``; the protocol's transport
            is the punched port and it must send to ``peer_address``.
            Fails with ``TraversalError`` (there is no UDP relay).
        """
        if not self.online or self.control is None:
            return defer.fail(TraversalError("not registered at the mediator: call start() first"))
        self._refs += 1
        ref = self._refs
        session = _Session(
            peer_id, Factory(), self.reactor.seconds(), kind="udp", datagram=protocol
        )
        session.datagram_deferred = defer.Deferred()
        self._by_ref[ref] = session
        self.control.send(
            {"type": "connect", "ref": ref, "to": peer_id, "kind": "udp", "methods": []}
        )
        return session.datagram_deferred

    # control messages -------------------------------------------------------

    def _message_received(self, control: _ControlClientProtocol, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "challenge":
            self.stun_tcp_port = message["stun_tcp_port"]
            self.stun_udp_port = message["stun_udp_port"]
            if message["version"] != PROTOCOL_VERSION:
                self.log.warn("mediator speaks control protocol version {v}", v=message["version"])
            control.send(
                {
                    "type": "hello",
                    "version": PROTOCOL_VERSION,
                    "id": self.client_id,
                    "mac": compute_mac(self.secret, message["nonce"], self.client_id),
                }
            )
        elif kind == "welcome":
            self.online = True
            if self.keepalive_seconds > 0:
                self._keepalive = LoopingCall(control.send, {"type": "ping"})
                self._keepalive.clock = self.reactor
                self._keepalive.start(self.keepalive_seconds, now=False)
            self.observed = (message["observed"][0], message["observed"][1])
            if self._ready is not None and not self._ready.called:
                self._ready.callback(self)
        elif kind == "error":
            self._error(message)
        elif kind == "probe":
            self._probe(message)
        elif kind == "attempt":
            self._attempt(message)
        elif kind == "go":
            session = self._sessions.get(message["session"])
            if session is not None and session.go is not None and not session.go.called:
                session.go.callback(None)
        elif kind == "relay":
            self._relay(message)
        elif kind == "outcome":
            self._outcome(message)

    def _error(self, message: dict[str, Any]) -> None:
        reason = f"{message['reason']} ({message['code']})"
        ref = message.get("ref")
        if isinstance(ref, int) and ref in self._by_ref:
            self._fail_session(self._by_ref.pop(ref), reason)
            return
        self.log.warn("mediator refused us: {reason}", reason=reason)
        if self._ready is not None and not self._ready.called:
            self._ready.errback(TraversalError(f"mediator refused us: {reason}"))

    def _control_lost(self, control: _ControlClientProtocol, reason: Failure) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None
        self.online = False
        self.control = None
        if self._ready is not None and not self._ready.called:
            self._ready.errback(
                TraversalError("mediator closed the control connection before welcome")
            )
        for session in list(self._sessions.values()) + list(self._by_ref.values()):
            self._fail_session(session, "lost the control connection to the mediator")
        self._by_ref.clear()
        self._sessions.clear()
        if not self.closed.called:
            self.closed.callback(reason.getErrorMessage())

    def _probe(self, message: dict[str, Any]) -> None:
        session_id = message["session"]
        session = self._sessions.get(session_id)
        if session is None:
            if message["ref"] >= 0:
                found = self._by_ref.pop(message["ref"], None)
                if found is None:
                    return
                session = found
            elif message["kind"] == "udp":
                datagram = (
                    self.accept_datagram(message["peer"])
                    if self.accept_datagram is not None
                    else None
                )
                if datagram is None:
                    self._send(
                        {
                            "type": "refuse",
                            "session": session_id,
                            "reason": "not accepting datagram flows",
                        }
                    )
                    return
                session = _Session(
                    message["peer"],
                    Factory(),
                    self.reactor.seconds(),
                    incoming=True,
                    kind="udp",
                    datagram=datagram,
                )
            else:
                factory = self.accept(message["peer"]) if self.accept is not None else None
                if factory is None:
                    self._send(
                        {
                            "type": "refuse",
                            "session": session_id,
                            "reason": "not accepting connections",
                        }
                    )
                    return
                session = _Session(message["peer"], factory, self.reactor.seconds(), incoming=True)
            session.session_id = session_id
            self._sessions[session_id] = session
        self._drop_attempt(session)
        d = self._run_udp_probes(session) if session.kind == "udp" else self._run_probes()

        def report(observations: list[tuple[int, str, int]]) -> None:
            session.hole_port = observations[-1][0]
            self._send(
                {
                    "type": "probed",
                    "session": session_id,
                    "local_ip": self.local_ip,
                    "hole_port": session.hole_port,
                    "observations": [list(o) for o in observations],
                }
            )

        def failed(failure: Failure) -> None:
            self.log.warn("port prediction probes failed: {why}", why=failure.getErrorMessage())
            self._send(
                {"type": "refuse", "session": session_id, "reason": failure.getErrorMessage()[:400]}
            )

        d.addCallbacks(report, failed)

    @defer.inlineCallbacks
    def _run_probes(self) -> Any:
        server = (self.mediator_host, self.stun_tcp_port)
        observations = []
        for _ in range(self.probes):
            observation = yield holepunch.stun_tcp_probe(self.reactor, server)
            observations.append(observation)
        return observations

    @defer.inlineCallbacks
    def _run_udp_probes(self, session: _Session) -> Any:
        """UDP port prediction: fresh ports first, the port to punch from last."""
        server = (self.mediator_host, self.stun_udp_port)
        observations = []
        for number in range(self.probes):
            prober = holepunch.UdpPunchProtocol(self.reactor)
            port = self.reactor.listenUDP(0, prober)
            try:
                mapped = yield prober.stun_probe(server)
            except BaseException:
                port.stopListening()
                raise
            observations.append((port.getHost().port, mapped[0], mapped[1]))
            if number == self.probes - 1:
                session.udp, session.udp_port = prober, port
            else:
                port.stopListening()
        return observations

    def _attempt(self, message: dict[str, Any]) -> None:
        session = self._sessions.get(message["session"])
        if session is None:
            return
        method = message["method"]
        session.method = method
        peer = (message["peer_endpoint"][0], message["peer_endpoint"][1])
        port = message["hole_port"]
        deadline = message["deadline_seconds"]
        role = message["role"]
        retries = message.get("connect_retries", -1)
        max_connects = (
            retries + 1
            if isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0
            else None
        )
        session.serial += 1
        serial = session.serial

        def current() -> bool:
            return session.serial == serial and session.session_id in self._sessions

        def report(ok: bool, detail: str) -> None:
            if not current():
                return
            if not ok:
                self.log.info(
                    "{method} with {peer} failed here: {detail}",
                    method=method,
                    peer=session.peer_id,
                    detail=detail,
                )
            self._send(
                {
                    "type": "result",
                    "session": session.session_id,
                    "method": method,
                    "ok": ok,
                    "detail": detail[:400],
                }
            )

        def connected(value: tuple[socket.socket, str]) -> None:
            if current():
                session.punch = None
            token = holepunch.verify_token(session.session_id)
            holepunch.verify_stream(self.reactor, value[0], token).addCallbacks(
                lambda sock: verified(sock, value[1]), failed
            )

        def verified(sock: socket.socket, how: str) -> None:
            if not current():
                sock.close()
                return
            session.connected = sock
            report(True, how)

        def failed(failure: Failure) -> None:
            if current():
                session.punch = None
            if failure.check(holepunch.PunchFailed):
                report(False, failure.getErrorMessage())
            else:
                report(False, f"internal error: {failure.getErrorMessage()}")
                self.log.failure("hole punching failed", failure)

        def begin() -> None:
            if not current():
                return
            if method == UDP_PUNCH:
                assert session.udp is not None
                token = holepunch.verify_token(session.session_id)
                session.udp.start_punch(peer, token, deadline).addCallbacks(punched, failed)
            elif method == LOW_TTL and role == "listener":
                session.punch = holepunch.TcpPunch(
                    self.reactor, port, peer, deadline, listen=True, connect=False
                )
                session.punch.start().addCallbacks(connected, failed)
                holepunch.send_low_ttl_syn(self.reactor, port, peer, message["ttl"]).addBoth(armed)
            elif method == LOW_TTL:
                assert go is not None
                go.addCallback(lambda _: connect_only())
            else:
                session.punch = holepunch.TcpPunch(
                    self.reactor, port, peer, deadline, max_connects=max_connects
                )
                session.punch.start().addCallbacks(connected, failed)

        def punched(address: tuple[str, int]) -> None:
            session.udp_peer = address
            report(True, f"two-way UDP with {address[0]}:{address[1]}")

        def armed(what: object) -> None:
            self.log.debug("low-TTL SYN: {what}", what=what)
            if current():
                self._send({"type": "armed", "session": session.session_id})

        def connect_only() -> None:
            if not current():
                return
            session.punch = holepunch.TcpPunch(
                self.reactor,
                port,
                peer,
                deadline,
                listen=False,
                connect=True,
                max_connects=max_connects,
            )
            session.punch.start().addCallbacks(connected, failed)

        # The listener's "armed" (and so our "go") can arrive before our own
        # start time when the two sides got their attempts at different
        # moments: remember it from now on.
        go: defer.Deferred[None] | None = None
        if method == LOW_TTL and role != "listener":
            go = session.go = defer.Deferred()
        self.reactor.callLater(message["start_in_seconds"], begin)

    def _relay(self, message: dict[str, Any]) -> None:
        session = self._sessions.get(message["session"])
        if session is None:
            return
        self._drop_attempt(session)
        session.method = RELAYED
        ready: defer.Deferred[None] = defer.Deferred()
        session.relay_ready = ready
        protocol = _RelayClientProtocol(session.session_id, message["token"], ready)
        session.relay = protocol
        self.mediator.connect(Factory.forProtocol(lambda: protocol)).addErrback(
            lambda f: (
                None
                if ready.called
                else ready.errback(TraversalError(f"relay: {f.getErrorMessage()}"))
            )
        )
        # An unhandled failure here is reported through the outcome.
        ready.addErrback(
            lambda f: self.log.debug("relay join failed: {why}", why=f.getErrorMessage())
        )

    def _outcome(self, message: dict[str, Any]) -> None:
        session = self._sessions.pop(message["session"], None)
        if session is None:
            return
        if not message["ok"]:
            self._fail_session(session, message["reason"])
            return
        if message["method"] == UDP_PUNCH:
            self._deliver_datagram(session, message)
            return
        if message["method"] == RELAYED:
            assert session.relay_ready is not None
            session.relay_ready.addCallback(lambda _: self._deliver_relayed(session, message))
            return
        sock = session.connected
        session.connected = None
        if sock is None:
            self._fail_session(session, "mediator reported success but no local connection exists")
            return
        capture = _CapturingFactory(session.factory)
        try:
            self.reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, capture)
        finally:
            sock.close()
        if capture.built is None:
            self._fail_session(session, "the application factory refused the connection")
            return
        self._deliver(session, capture.built, message)

    def _deliver_relayed(self, session: _Session, message: dict[str, Any]) -> None:
        if (
            session.relay is None
            or session.relay.transport is None
            or session.relay.decoder is not None
        ):
            self._fail_session(session, "relay connection failed after the mediator set it up")
            return
        user = session.factory.buildProtocol(session.relay.transport.getPeer())
        if user is None:
            session.relay.transport.loseConnection()
            self._fail_session(session, "the application factory refused the connection")
            return
        session.relay.attach(user)
        self._deliver(session, user, message)

    def _deliver_datagram(self, session: _Session, message: dict[str, Any]) -> None:
        udp, peer, user = session.udp, session.udp_peer, session.datagram
        if udp is None or peer is None or user is None:
            self._fail_session(session, "mediator reported success but no local UDP path exists")
            return
        session.udp = session.udp_port = None
        udp.attach(user, peer)
        result = DatagramResult(
            protocol=user,
            method=message["method"],
            peer_id=session.peer_id,
            peer_address=peer,
            setup_seconds=self.reactor.seconds() - session.started_at,
            reason=message["reason"],
        )
        self.log.info("UDP path to {peer} punched", peer=session.peer_id)
        if session.datagram_deferred is not None:
            session.datagram_deferred.callback(result)
        elif self.on_incoming_datagram is not None:
            self.on_incoming_datagram(result)

    def _deliver(self, session: _Session, protocol: IProtocol, message: dict[str, Any]) -> None:
        result = TraversalResult(
            protocol=protocol,
            method=message["method"],
            peer_id=session.peer_id,
            setup_seconds=self.reactor.seconds() - session.started_at,
            reason=message["reason"],
        )
        self.log.info(
            "connected to {peer} via {method}", peer=session.peer_id, method=result.method
        )
        if session.deferred is not None:
            session.deferred.callback(result)
        elif self.on_incoming is not None:
            self.on_incoming(result)

    def _drop_attempt(self, session: _Session) -> None:
        session.serial += 1
        if session.punch is not None:
            punch, session.punch = session.punch, None
            punch.result.addErrback(lambda _: None)
            punch.cancel()
        if session.connected is not None:
            session.connected.close()
            session.connected = None
        if session.udp_port is not None:
            port, session.udp_port, session.udp = session.udp_port, None, None
            port.stopListening()

    def _fail_session(self, session: _Session, reason: str) -> None:
        self._drop_attempt(session)
        if (
            session.relay is not None
            and session.relay.transport is not None
            and session.relay.user is None
        ):
            session.relay.transport.loseConnection()
        if session.deferred is not None and not session.deferred.called:
            session.deferred.errback(TraversalError(reason))
        elif session.datagram_deferred is not None and not session.datagram_deferred.called:
            session.datagram_deferred.errback(TraversalError(reason))
        elif session.incoming:
            self.log.info(
                "incoming connection from {peer} failed: {reason}",
                peer=session.peer_id,
                reason=reason,
            )

    def _send(self, message: dict[str, Any]) -> None:
        if self.control is not None:
            self.control.send(message)


class TraversalService(Service):
    """
    Keeps a ``TraversalClient`` registered: reconnects with back-off.

    Roles that use the mediator (the peer's overlay links, the client role)
    run this service; connections made while the mediator is unreachable
    fail at once with a ``TraversalError`` saying so.
    """

    log = Logger()

    def __init__(
        self, client: TraversalClient, retry_seconds: tuple[float, ...] = RETRY_SECONDS
    ) -> None:
        self.client = client
        self.retry_seconds = retry_seconds
        self._failures = 0
        self._retry: Any = None
        self._waiting: list[defer.Deferred[TraversalClient]] = []

    def when_registered(self) -> defer.Deferred[TraversalClient]:
        """Fires with the client once it is registered (at once if it is now)."""
        if self.client.online:
            return defer.succeed(self.client)
        waiter: defer.Deferred[TraversalClient] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def startService(self) -> None:
        super().startService()
        self._connect()

    def _connect(self) -> None:
        self._retry = None
        self.client.start().addCallbacks(self._online, self._offline)

    def _online(self, client: TraversalClient) -> None:
        self._failures = 0
        self.log.info("registered at the mediator as {id}", id=client.client_id)
        client.closed.addCallback(lambda why: self._offline(None, why))
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(client)

    def _offline(self, failure: Failure | None, why: str = "") -> None:
        reason = failure.getErrorMessage() if failure is not None else why
        if not self.running:
            return
        delay = self.retry_seconds[min(self._failures, len(self.retry_seconds) - 1)]
        self._failures += 1
        self.log.warn(
            "not registered at the mediator ({reason}); retrying in {delay}s",
            reason=reason,
            delay=delay,
        )
        self._retry = self.client.reactor.callLater(delay, self._connect)

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.client.control is None:
            return None
        closed = self.client.closed
        self.client.stop()
        return closed.addCallback(lambda _: None)


@implementer(IStreamClientEndpoint)
class MediatedEndpoint:
    """
    An ``IStreamClientEndpoint`` that reaches ``peer_id`` through the mediator.

    ``connect(factory)`` fires with the connected protocol (as every
    endpoint does); ``last_result`` keeps how it was reached.
    """

    def __init__(
        self, client: TraversalClient, peer_id: str, methods: list[str] | None = None
    ) -> None:
        self.client = client
        self.peer_id = peer_id
        self.methods = methods
        self.last_result: TraversalResult | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        d = self.client.connect(self.peer_id, protocolFactory, self.methods)

        def unwrap(result: TraversalResult) -> IProtocol:
            self.last_result = result
            return result.protocol

        return d.addCallback(unwrap)
