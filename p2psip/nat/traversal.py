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

The decisions are made by the sans-IO ``TraversalMachine``
(``p2psip.nat.traversal_session``); this module executes its actions with
sockets (``p2psip.nat.holepunch``), the relay connection
(``p2psip.nat.traversal_relay``) and the reactor's clock, and feeds back
what became of them.  ``TraversalService`` (``p2psip.nat.traversal_service``)
keeps a client registered.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from p2psip.nat import control_protocol, holepunch
from p2psip.nat import traversal_events as ev
from p2psip.nat import traversal_session as ts
from p2psip.nat.traversal_relay import RelayClientProtocol
from p2psip.nat.traversal_session import KEEPALIVE_SECONDS, PROBES_PER_ATTEMPT
from p2psip.util.logs import Logger
from p2psip.util.reactor import HolePunchReactor, UDPPort

__all__ = [
    "KEEPALIVE_SECONDS",
    "PROBES_PER_ATTEMPT",
    "DatagramResult",
    "IncomingDatagramPolicy",
    "IncomingPolicy",
    "MediatedEndpoint",
    "TraversalClient",
    "TraversalError",
    "TraversalResult",
]


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


def _host(address: IAddress) -> str:
    """The IP of a TCP address ("" for other kinds, which the mediator never has)."""
    return address.host if isinstance(address, (IPv4Address, IPv6Address)) else ""


IncomingPolicy = Callable[[str], IProtocolFactory | None]
IncomingDatagramPolicy = Callable[[str], DatagramProtocol | None]


class _ControlClientProtocol(Protocol):
    """The control connection: frames in and out, everything else in the client."""

    log = Logger()

    def __init__(self, client: TraversalClient) -> None:
        self.client = client
        self.decoder = control_protocol.FrameDecoder()
        #: Told when the connection is lost (``TraversalService``'s registration).
        self.watchers: list[IProtocol] = []

    def connectionMade(self) -> None:
        # Control messages are small and latency-bound: no Nagle.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.client._control_made(self)

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(control_protocol.encode_frame(message))

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except control_protocol.StuntDecodeError as e:
            self.log.warn("mediator sent a malformed control frame ({why}); closing", why=str(e))
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for message in messages:
            self.client._message_received(self, message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client._control_lost(self, reason)


@implementer(IProtocolFactory)
class _CapturingFactory:
    """Builds the application's protocol for an adopted socket and keeps it."""

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self.wrapped = wrapped
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        self.built = self.wrapped.buildProtocol(addr)
        return self.built

    def doStart(self) -> None:
        """Nothing to start: the factory lives for one adopted socket."""

    def doStop(self) -> None:
        """Nothing to stop."""


@attrs.define
class _Application:
    """The application's side of one session: what to build and whom to tell."""

    peer_id: str
    factory: IProtocolFactory | None = None
    datagram: DatagramProtocol | None = None
    #: None for a peer's session (it goes to ``on_incoming``).
    stream_result: defer.Deferred[TraversalResult] | None = None
    datagram_result: defer.Deferred[DatagramResult] | None = None


@attrs.define
class _AttemptIO:
    """The sockets of one serial of a session, released together."""

    punch: holepunch.TcpPunch | None = None
    connected: socket.socket | None = None
    udp: holepunch.UdpPunchProtocol | None = None
    udp_port: UDPPort | None = None
    relay: RelayClientProtocol | None = None

    def release(self) -> None:
        if self.punch is not None:
            punch, self.punch = self.punch, None
            punch.result.addErrback(lambda _: None)
            punch.cancel()
        if self.connected is not None:
            self.connected.close()
            self.connected = None
        if self.udp_port is not None:
            port, self.udp_port, self.udp = self.udp_port, None, None
            port.stopListening()
        if self.relay is not None:
            relay, self.relay = self.relay, None
            relay.close()


class TraversalClient:
    """
    One client's presence at a mediator.

    :param mediator: endpoint of the mediator's control port.
    :param accept: called with the peer ID of an incoming request; returns
        the factory for the connection, or None to refuse.
    :param on_incoming: called with the ``TraversalResult`` of every
        incoming connection that was made.
    :param accept_datagram: the same for UDP paths: the protocol to connect
        to the punched port, or None to refuse.
    """

    log = Logger()

    def __init__(
        self,
        reactor: HolePunchReactor,
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
        self.accept = accept
        self.on_incoming = on_incoming
        self.accept_datagram = accept_datagram
        self.on_incoming_datagram = on_incoming_datagram
        self.machine = ts.TraversalMachine(client_id, secret, probes, keepalive_seconds)
        self.control: _ControlClientProtocol | None = None
        #: Fires with the reason when the control connection closes.
        self.closed: defer.Deferred[str] = defer.Deferred()
        self._ready: defer.Deferred[TraversalClient] | None = None
        self._connecting: defer.Deferred[IProtocol] | None = None
        self._keepalive: IDelayedCall | None = None
        self._refs = 0
        self._apps: dict[ev.SessionKey, _Application] = {}
        self._io: dict[tuple[ev.SessionKey, int], _AttemptIO] = {}
        self._timers: dict[tuple[ev.SessionKey, int], IDelayedCall] = {}
        self._events: deque[ev.Event] = deque()
        self._feeding = False

    @property
    def client_id(self) -> str:
        return self.machine.client_id

    @property
    def online(self) -> bool:
        """Whether the mediator welcomed us on the current control connection."""
        return self.machine.registered

    @property
    def observed(self) -> tuple[str, int] | None:
        """Our address as the mediator saw it at the last registration."""
        return self.machine.observed

    # lifecycle ---------------------------------------------------------------

    def start(self) -> defer.Deferred[TraversalClient]:
        """Connect and authenticate; fires with self once registered."""
        self._ready = defer.Deferred(canceller=lambda _: self._abort())
        if self.closed.called:
            self.closed = defer.Deferred()
        factory = Factory.forProtocol(lambda: _ControlClientProtocol(self))
        connecting = self._connecting = self.mediator.connect(factory)

        def connected(protocol: IProtocol) -> None:
            self._connecting = None

        def not_connected(failure: Failure) -> None:
            self._connecting = None
            self._feed(ev.ControlUnreachable(failure.getErrorMessage()))

        connecting.addCallbacks(connected, not_connected)
        return self._ready

    def stop(self) -> None:
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()

    def _abort(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        self.stop()

    @property
    def mediator_host(self) -> str:
        assert self.control is not None and self.control.transport is not None
        return _host(self.control.transport.getPeer())

    @property
    def local_ip(self) -> str:
        assert self.control is not None and self.control.transport is not None
        return _host(self.control.transport.getHost())

    # outgoing ---------------------------------------------------------------

    def connect(
        self, peer_id: str, factory: IProtocolFactory, methods: list[str] | None = None
    ) -> defer.Deferred[TraversalResult]:
        """
        Connect to ``peer_id`` through whatever path works.

        :returns: a Deferred of ``TraversalResult``, or failing with
            ``TraversalError`` whose reason names what stood in the way.
        """
        result: defer.Deferred[TraversalResult] = defer.Deferred()
        key = self._new_key()
        self._apps[key] = _Application(peer_id, factory=factory, stream_result=result)
        methods_asked = tuple(methods or ())
        self._feed(
            ev.ConnectRequested(key, peer_id, ev.Kind.TCP, methods_asked, self.reactor.seconds())
        )
        return result

    def connect_datagram(
        self, peer_id: str, protocol: DatagramProtocol
    ) -> defer.Deferred[DatagramResult]:
        """
        Punch a UDP path to ``peer_id`` for ``protocol``.

        :returns: a Deferred of ``DatagramResult``; the protocol's transport
            is the punched port and it must send to ``peer_address``.
            Fails with ``TraversalError`` (there is no UDP relay).
        """
        result: defer.Deferred[DatagramResult] = defer.Deferred()
        key = self._new_key()
        self._apps[key] = _Application(peer_id, datagram=protocol, datagram_result=result)
        self._feed(ev.ConnectRequested(key, peer_id, ev.Kind.UDP, (), self.reactor.seconds()))
        return result

    def _new_key(self) -> ev.SessionKey:
        self._refs += 1
        return self._refs

    # the control connection ---------------------------------------------------

    def _control_made(self, control: _ControlClientProtocol) -> None:
        self.control = control
        self._feed(ev.ControlConnected())

    def _message_received(self, control: _ControlClientProtocol, message: dict[str, Any]) -> None:
        if control is self.control:
            self._feed(ev.ControlMessageReceived(message, self.reactor.seconds()))

    def _control_lost(self, control: _ControlClientProtocol, reason: Failure) -> None:
        if control is not self.control:
            return
        self.control = None
        self._feed(ev.ControlLost(reason.getErrorMessage()))
        for watcher in control.watchers:
            watcher.connectionLost(reason)
        if not self.closed.called:
            self.closed.callback(reason.getErrorMessage())

    # the machine ------------------------------------------------------------------

    def _feed(self, event: ev.Event) -> None:
        """
        Give ``event`` to the machine and execute its actions.  Events that
        executing an action causes (a cancelled punch reporting, say) wait
        until the actions before them are done.
        """
        self._events.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._events:
                for action in self.machine.handle(self._events.popleft()):
                    self._execute(action)
        finally:
            self._feeding = False

    def _execute(self, action: ev.Action) -> None:
        match action:
            case ev.SendControl(message):
                if self.control is not None:
                    self.control.send(message)
            case ev.CloseControl():
                self.stop()
            case ev.Registered():
                if self._ready is not None and not self._ready.called:
                    self._ready.callback(self)
            case ev.RegistrationFailed(reason):
                # The mediator closes after refusing us; a broken one may not.
                self.stop()
                if self._ready is not None and not self._ready.called:
                    self._ready.errback(TraversalError(reason))
            case ev.StartKeepalive(seconds):
                self._keepalive = self.reactor.callLater(seconds, self._ping, seconds)
            case ev.StopKeepalive():
                if self._keepalive is not None and self._keepalive.active():
                    self._keepalive.cancel()
                self._keepalive = None
            case ev.DecideIncoming(key, peer_id, kind):
                self._decide(key, peer_id, kind)
            case ev.StartProbes():
                self._start_probes(action)
            case ev.StartTimer(key, serial, seconds):
                self._timers[(key, serial)] = self.reactor.callLater(
                    seconds, self._timer_fired, key, serial
                )
            case ev.CancelTimer(key, serial):
                timer = self._timers.pop((key, serial), None)
                if timer is not None and timer.active():
                    timer.cancel()
            case ev.StartPunch():
                self._start_punch(action)
            case ev.SendLowTtlSyn():
                self._send_low_ttl_syn(action)
            case ev.StartUdpPunch():
                self._start_udp_punch(action)
            case ev.OpenRelay():
                self._open_relay(action)
            case ev.DropAttempt(key, serial):
                io = self._io.pop((key, serial), None)
                if io is not None:
                    io.release()
            case ev.Deliver():
                self._deliver(action)
            case ev.Fail(key, reason):
                self._fail(key, reason)
            case ev.Log(level, text, fields):
                self.log.emit(LogLevel.levelWithName(level), text, **fields)

    def _ping(self, seconds: float) -> None:
        self._keepalive = self.reactor.callLater(seconds, self._ping, seconds)
        self._feed(ev.KeepaliveDue())

    def _timer_fired(self, key: ev.SessionKey, serial: int) -> None:
        self._timers.pop((key, serial), None)
        self._feed(ev.Timeout(key, serial))

    def _attempt_io(self, key: ev.SessionKey, serial: int) -> _AttemptIO:
        return self._io.setdefault((key, serial), _AttemptIO())

    def _report_failure(self, key: ev.SessionKey, serial: int, failure: Failure) -> None:
        if failure.check(holepunch.PunchFailed):
            detail = failure.getErrorMessage()
        else:
            detail = f"internal error: {failure.getErrorMessage()}"
            self.log.failure("hole punching failed", failure)
        self._feed(ev.PunchFailed(key, serial, detail))

    # incoming requests and probes -------------------------------------------------

    def _decide(self, key: ev.SessionKey, peer_id: str, kind: ev.Kind) -> None:
        if kind is ev.Kind.UDP:
            datagram = self.accept_datagram(peer_id) if self.accept_datagram is not None else None
            app = _Application(peer_id, datagram=datagram) if datagram is not None else None
        else:
            factory = self.accept(peer_id) if self.accept is not None else None
            app = _Application(peer_id, factory=factory) if factory is not None else None
        if app is None:
            self._feed(ev.IncomingDeclined(key))
            return
        self._apps[key] = app
        self._feed(ev.IncomingAccepted(key))

    def _start_probes(self, action: ev.StartProbes) -> None:
        key, serial = action.key, action.serial
        server = (self.mediator_host, action.stun_port)
        if action.kind is ev.Kind.UDP:
            probes = self._udp_probes(key, serial, server, action.count)
        else:
            probes = self._tcp_probes(server, action.count)

        def done(observations: list[tuple[int, str, int]]) -> None:
            local_ip = self.local_ip if self.control is not None else ""
            self._feed(ev.ProbesDone(key, serial, local_ip, tuple(observations)))

        def failed(failure: Failure) -> None:
            self._feed(ev.ProbesFailed(key, serial, failure.getErrorMessage()))

        defer.Deferred.fromCoroutine(probes).addCallbacks(done, failed)

    async def _tcp_probes(self, server: tuple[str, int], count: int) -> list[tuple[int, str, int]]:
        """TCP port prediction: Bindings from fresh ports, one after another."""
        return [await holepunch.stun_tcp_probe(self.reactor, server) for _ in range(count)]

    async def _udp_probes(
        self, key: ev.SessionKey, serial: int, server: tuple[str, int], count: int
    ) -> list[tuple[int, str, int]]:
        """UDP port prediction: fresh ports first, the port to punch from last."""
        observations = []
        for number in range(count):
            prober = holepunch.UdpPunchProtocol(self.reactor)
            port = self.reactor.listenUDP(0, prober)
            try:
                mapped = await prober.stun_probe(server)
            except BaseException:
                port.stopListening()
                raise
            observations.append((port.getHost().port, mapped[0], mapped[1]))
            if number == count - 1:
                io = self._attempt_io(key, serial)
                io.udp, io.udp_port = prober, port
            else:
                port.stopListening()
        return observations

    # attempts -------------------------------------------------------------------

    def _start_punch(self, action: ev.StartPunch) -> None:
        key, serial = action.key, action.serial
        io = self._attempt_io(key, serial)
        punch = io.punch = holepunch.TcpPunch(
            self.reactor,
            action.local_port,
            action.peer,
            action.deadline_seconds,
            listen=action.listen,
            connect=action.connect,
            max_connects=action.max_connects,
        )
        token = holepunch.verify_token(action.session_id)

        def connected(
            value: tuple[socket.socket, str],
        ) -> defer.Deferred[tuple[socket.socket, str]]:
            if io.punch is punch:
                io.punch = None
            verifying = holepunch.verify_stream(self.reactor, value[0], token)
            return verifying.addCallback(lambda sock: (sock, value[1]))

        def verified(value: tuple[socket.socket, str]) -> None:
            # Kept until the outcome (or dropped when the machine says so).
            self._attempt_io(key, serial).connected = value[0]
            self._feed(ev.PunchSucceeded(key, serial, value[1]))

        def failed(failure: Failure) -> None:
            if io.punch is punch:
                io.punch = None
            self._report_failure(key, serial, failure)

        punch.start().addCallback(connected).addCallbacks(verified, failed)

    def _send_low_ttl_syn(self, action: ev.SendLowTtlSyn) -> None:
        def sent(what: object) -> None:
            self.log.debug("low-TTL SYN: {what}", what=what)
            self._feed(ev.LowTtlSynSent(action.key, action.serial, str(what)))

        holepunch.send_low_ttl_syn(
            self.reactor, action.local_port, action.peer, action.ttl
        ).addBoth(sent)

    def _start_udp_punch(self, action: ev.StartUdpPunch) -> None:
        key, serial = action.key, action.serial
        io = self._io.get((key, serial))
        if io is None or io.udp is None:
            self._feed(ev.PunchFailed(key, serial, "the UDP port of the probes is gone"))
            return
        token = holepunch.verify_token(action.session_id)
        io.udp.start_punch(action.peer, token, action.deadline_seconds).addCallbacks(
            lambda address: self._feed(ev.PunchSucceeded(key, serial, "", address)),
            lambda failure: self._report_failure(key, serial, failure),
        )

    def _open_relay(self, action: ev.OpenRelay) -> None:
        key, serial = action.key, action.serial

        def ready(why: str | None) -> None:
            if why is None:
                self._feed(ev.RelayReady(key, serial))
            else:
                self._feed(ev.RelayFailed(key, serial, why))

        relay = RelayClientProtocol(action.session_id, action.token, ready)
        self._attempt_io(key, serial).relay = relay
        self.mediator.connect(Factory.forProtocol(lambda: relay)).addErrback(
            lambda failure: relay.connect_failed(f"relay: {failure.getErrorMessage()}")
        )

    # the end of a session ------------------------------------------------------------

    def _release(self, key: ev.SessionKey) -> None:
        for held in [k for k in self._io if k[0] == key]:
            self._io.pop(held).release()
        for timed in [k for k in self._timers if k[0] == key]:
            timer = self._timers.pop(timed)
            if timer.active():
                timer.cancel()

    def _deliver(self, action: ev.Deliver) -> None:
        app = self._apps.pop(action.key, None)
        io = self._io.pop((action.key, action.serial), None) or _AttemptIO()
        if app is None:
            io.release()
            self._release(action.key)
            return
        try:
            setup_seconds = self.reactor.seconds() - action.started_at
            if action.via is ev.Via.DATAGRAM:
                user, peer = self._attach_datagram(app, io, action)
                datagram = DatagramResult(
                    user, action.method, action.peer_id, peer, setup_seconds, action.reason
                )
                self._datagram_delivered(app, datagram)
                return
            if action.via is ev.Via.RELAY:
                protocol = self._attach_relay(app, io)
            else:
                protocol = self._adopt(app, io)
            stream = TraversalResult(
                protocol, action.method, action.peer_id, setup_seconds, action.reason
            )
            self._stream_delivered(app, stream)
        except TraversalError as e:
            self._report_failed(app, e.reason)
        finally:
            io.release()
            self._release(action.key)

    def _adopt(self, app: _Application, io: _AttemptIO) -> IProtocol:
        sock, io.connected = io.connected, None
        if sock is None or app.factory is None:
            raise TraversalError("mediator reported success but no local connection exists")
        capture = _CapturingFactory(app.factory)
        try:
            self.reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, capture)
        finally:
            sock.close()
        if capture.built is None:
            raise TraversalError("the application factory refused the connection")
        return capture.built

    def _attach_relay(self, app: _Application, io: _AttemptIO) -> IProtocol:
        relay = io.relay
        if relay is None or relay.transport is None or not relay.ready or app.factory is None:
            raise TraversalError("relay connection failed after the mediator set it up")
        user = app.factory.buildProtocol(relay.transport.getPeer())
        if user is None:
            raise TraversalError("the application factory refused the connection")
        io.relay = None
        relay.attach(user)
        return user

    def _attach_datagram(
        self, app: _Application, io: _AttemptIO, action: ev.Deliver
    ) -> tuple[DatagramProtocol, tuple[str, int]]:
        udp, peer, user = io.udp, action.peer_address, app.datagram
        if udp is None or peer is None or user is None:
            raise TraversalError("mediator reported success but no local UDP path exists")
        # The port now belongs to the application.
        io.udp = io.udp_port = None
        udp.attach(user, peer)
        return user, peer

    def _stream_delivered(self, app: _Application, result: TraversalResult) -> None:
        self.log.info("connected to {peer} via {method}", peer=result.peer_id, method=result.method)
        if app.stream_result is not None:
            app.stream_result.callback(result)
        elif self.on_incoming is not None:
            self.on_incoming(result)

    def _datagram_delivered(self, app: _Application, result: DatagramResult) -> None:
        self.log.info("UDP path to {peer} punched", peer=result.peer_id)
        if app.datagram_result is not None:
            app.datagram_result.callback(result)
        elif self.on_incoming_datagram is not None:
            self.on_incoming_datagram(result)

    def _fail(self, key: ev.SessionKey, reason: str) -> None:
        self._release(key)
        app = self._apps.pop(key, None)
        if app is not None:
            self._report_failed(app, reason)

    def _report_failed(self, app: _Application, reason: str) -> None:
        waiting = app.stream_result or app.datagram_result
        if waiting is not None:
            if not waiting.called:
                waiting.errback(TraversalError(reason))
        else:
            self.log.info(
                "incoming connection from {peer} failed: {reason}", peer=app.peer_id, reason=reason
            )


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
