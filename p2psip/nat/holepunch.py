"""
TCP and UDP hole punching on raw sockets driven by the reactor.

TCP traversal needs several sockets bound to the *same* local port (the
probe that revealed the NAT mapping, a listener and repeated connects:
P2PNAT, Ford et al.; STUNT, Guha and Francis IMC 2005), which Twisted's
``connectTCP``/``listenTCP`` cannot do because they do not set
``SO_REUSEPORT`` before ``bind``.  So this module owns those sockets: it
registers small file descriptors with the reactor (``IReactorFDSet``) and
schedules retries on the reactor's clock.  Once a TCP connection is up,
the caller hands the connected socket to ``reactor.adoptStreamConnection``
and from then on it is an ordinary Twisted transport.

Everything here is network plumbing; the decisions (which endpoint, which
method, when) come from the broker (``p2psip.nat.broker``).
"""

from __future__ import annotations

import errno
import hashlib
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReadDescriptor, IWriteDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from p2psip.nat import stun
from p2psip.util.logs import Logger
from p2psip.util.reactor import HolePunchReactor, Timers

#: Linux errors that mean "no connection this time, try again".
RETRYABLE_ERRORS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EADDRNOTAVAIL,
    errno.EADDRINUSE,
    errno.ECONNABORTED,
}

PUNCH_RETRY_SECONDS = 0.05
PUNCH_ATTEMPT_SECONDS = 2.5
PROBE_TIMEOUT_SECONDS = 3.0
#: Linux ``IP_RECVERR`` (not exported by the socket module): with it an ICMP
#: time exceeded ends a connect() in SYN_SENT at once instead of counting as
#: a "soft" error that only shows after the connect timeout.
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
MAX_PROBE_RESPONSE_BYTES = 2048


class PunchFailed(Exception):
    """No connection before the deadline; the message says what was tried."""


def bound_socket(
    port: int, kind: int = socket.SOCK_STREAM, interface: str = "0.0.0.0"
) -> socket.socket:
    """A non-blocking socket on ``port`` that other sockets may share."""
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((interface, port))
    except OSError:
        sock.close()
        raise
    return sock


@implementer(IReadDescriptor, IWriteDescriptor)
class _Descriptor:
    """A socket the reactor watches; calls back on readiness."""

    def __init__(
        self,
        sock: socket.socket,
        on_read: Callable[[], None] | None,
        on_write: Callable[[], None] | None,
    ):
        self.sock = sock
        self._fd = sock.fileno()
        self._on_read = on_read
        self._on_write = on_write

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        if self._on_read is not None:
            self._on_read()

    def doWrite(self) -> None:
        if self._on_write is not None:
            self._on_write()

    def connectionLost(self, reason: Failure) -> None:
        # The poll reactors report POLLERR/POLLHUP (an RST, an ICMP error)
        # here instead of calling doWrite; the callbacks read SO_ERROR.
        if self._on_write is not None:
            self._on_write()
        elif self._on_read is not None:
            self._on_read()

    def logPrefix(self) -> str:
        return "holepunch"


class _Watcher:
    """Keeps track of the sockets and timers of one operation so all can be dropped."""

    def __init__(self, reactor: HolePunchReactor) -> None:
        self.reactor = reactor
        self.readers: list[_Descriptor] = []
        self.writers: list[_Descriptor] = []
        self.calls: list[IDelayedCall] = []

    def read(self, sock: socket.socket, callback: Callable[[], None]) -> _Descriptor:
        d = _Descriptor(sock, callback, None)
        self.readers.append(d)
        self.reactor.addReader(d)
        return d

    def write(self, sock: socket.socket, callback: Callable[[], None]) -> _Descriptor:
        d = _Descriptor(sock, None, callback)
        self.writers.append(d)
        self.reactor.addWriter(d)
        return d

    def unwatch(self, d: _Descriptor) -> None:
        if d in self.readers:
            self.readers.remove(d)
            self.reactor.removeReader(d)
        if d in self.writers:
            self.writers.remove(d)
            self.reactor.removeWriter(d)

    def later(self, seconds: float, f: Callable[[], None]) -> IDelayedCall:
        call = self.reactor.callLater(seconds, f)
        self.calls.append(call)
        return call

    def stop(self, keep: socket.socket | None = None) -> None:
        for d in self.readers + self.writers:
            if d in self.readers:
                self.reactor.removeReader(d)
            if d in self.writers:
                self.reactor.removeWriter(d)
            if d.sock is not keep:
                d.sock.close()
        self.readers.clear()
        self.writers.clear()
        for call in self.calls:
            if call.active():
                call.cancel()
        self.calls.clear()


def stun_tcp_probe(
    reactor: HolePunchReactor,
    server: tuple[str, int],
    local_port: int = 0,
    timeout_seconds: float = PROBE_TIMEOUT_SECONDS,
) -> defer.Deferred[tuple[int, str, int]]:
    """
    One STUN Binding over a fresh TCP connection from ``local_port``.

    :returns: a Deferred of ``(local_port, mapped_host, mapped_port)``; the
        local port is the one the OS picked when ``local_port`` is 0.
    """
    result: defer.Deferred[tuple[int, str, int]] = defer.Deferred()
    watcher = _Watcher(reactor)
    try:
        sock = bound_socket(local_port)
    except OSError as e:
        return defer.fail(PunchFailed(f"cannot bind local TCP port {local_port}: {e}"))
    port = sock.getsockname()[1]
    request = stun.binding_request()
    decoder = stun.StunStreamDecoder(MAX_PROBE_RESPONSE_BYTES)
    received = [0]

    def finish(value: Any) -> None:
        if result.called:
            return
        watcher.stop()
        if isinstance(value, Exception):
            result.errback(Failure(value))
        else:
            result.callback(value)

    def readable() -> None:
        try:
            data = sock.recv(MAX_PROBE_RESPONSE_BYTES)
        except BlockingIOError:
            return
        except OSError as e:
            finish(PunchFailed(f"STUN probe to {server[0]}:{server[1]} failed: {e}"))
            return
        if not data:
            finish(PunchFailed(f"STUN server {server[0]}:{server[1]} closed the probe connection"))
            return
        received[0] += len(data)
        try:
            messages = decoder.feed(data)
        except stun.StunDecodeError as e:
            finish(PunchFailed(f"STUN server {server[0]}:{server[1]} sent garbage: {e}"))
            return
        for message in messages:
            if message.transaction_id != request.transaction_id:
                continue
            mapped = message.xor_mapped_address() or message.mapped_address()
            if mapped is None:
                finish(PunchFailed("STUN response without a mapped address"))
            else:
                finish((port, mapped[0], mapped[1]))
            return

    def writable() -> None:
        watcher.unwatch(writer)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            finish(
                PunchFailed(
                    f"STUN probe to {server[0]}:{server[1]}: {errno.errorcode.get(error, error)}"
                )
            )
            return
        try:
            sock.send(stun.encode_message(request))
        except OSError as e:
            finish(PunchFailed(f"STUN probe to {server[0]}:{server[1]}: {e}"))
            return
        watcher.read(sock, readable)

    error = sock.connect_ex(server)
    if error not in (0, errno.EINPROGRESS):
        sock.close()
        return defer.fail(
            PunchFailed(
                f"STUN probe to {server[0]}:{server[1]}: {errno.errorcode.get(error, error)}"
            )
        )
    writer = watcher.write(sock, writable)
    watcher.later(
        timeout_seconds,
        lambda: finish(PunchFailed(f"STUN probe to {server[0]}:{server[1]} timed out")),
    )
    return result


class TcpPunch:
    """
    Listen on ``local_port`` and connect from it to ``peer`` again and again.

    Whichever happens first wins: our connect() completing (including a
    TCP simultaneous open when both SYNs cross) or the listener accepting
    the peer's SYN.  Both are the same TCP connection as far as the peer is
    concerned, since a connection is identified by its 4-tuple.

    ``on_result`` fires with ``(socket, how)`` where ``how`` is
    ``"connected"`` or ``"accepted"``, or with a ``PunchFailed``.
    """

    log = Logger()

    def __init__(
        self,
        reactor: HolePunchReactor,
        local_port: int,
        peer: tuple[str, int],
        deadline_seconds: float,
        listen: bool = True,
        connect: bool = True,
        retry_seconds: float = PUNCH_RETRY_SECONDS,
        attempt_seconds: float = PUNCH_ATTEMPT_SECONDS,
        max_connects: int | None = None,
    ) -> None:
        self.reactor = reactor
        self.local_port = local_port
        self.peer = peer
        self.deadline_seconds = deadline_seconds
        self.listen = listen
        self.connect = connect
        self.retry_seconds = retry_seconds
        self.attempt_seconds = attempt_seconds
        #: None: connect again after every failure.  A NAT that allocates a
        #: new port for every new flow (sequential) gets a new, unpredicted
        #: mapping with each retry, so there one connect (whose SYNs the
        #: kernel retransmits on the same flow) is all that can work.
        self.max_connects = max_connects
        if max_connects == 1:
            self.attempt_seconds = deadline_seconds
        self.result: defer.Deferred[tuple[socket.socket, str]] = defer.Deferred()
        self._watcher = _Watcher(reactor)
        self._attempts = 0
        self._last_error = "no attempt made"

    def start(self) -> defer.Deferred[tuple[socket.socket, str]]:
        if self.listen:
            try:
                listener = bound_socket(self.local_port)
                listener.listen(4)
            except OSError as e:
                self._fail(f"cannot listen on local TCP port {self.local_port}: {e}")
                return self.result
            self._watcher.read(listener, lambda: self._accept(listener))
        if self.connect:
            self._connect_once()
        self._watcher.later(self.deadline_seconds, self._deadline)
        return self.result

    def cancel(self) -> None:
        self._fail("cancelled")

    def _deadline(self) -> None:
        if not self.connect:
            self._fail(
                f"nothing connected to local port {self.local_port} within {self.deadline_seconds:g}s"
            )
            return
        self._fail(
            f"no TCP connection with {self.peer[0]}:{self.peer[1]} from local port {self.local_port} "
            f"within {self.deadline_seconds:g}s ({self._attempts} connect attempts; last: {self._last_error})"
        )

    def _fail(self, reason: str) -> None:
        if self.result.called:
            return
        self._watcher.stop()
        self.result.errback(Failure(PunchFailed(reason)))

    def _succeed(self, sock: socket.socket, how: str) -> None:
        if self.result.called:
            sock.close()
            return
        self._watcher.stop(keep=sock)
        sock.setblocking(True)
        self.result.callback((sock, how))

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._last_error = f"accept: {e}"
            return
        if self.connect and address[0] != self.peer[0]:
            # The listener is reachable from anywhere the NAT lets in; only
            # the expected peer's address may take the slot.
            self.log.debug("dropped connection from unexpected {address}", address=address)
            sock.close()
            return
        self._succeed(sock, "accepted")

    def _connect_once(self) -> None:
        if self.result.called:
            return
        if self.max_connects is not None and self._attempts >= self.max_connects:
            return
        self._attempts += 1
        try:
            sock = bound_socket(self.local_port)
        except OSError as e:
            self._last_error = f"bind: {e}"
            self._watcher.later(self.retry_seconds, self._connect_once)
            return
        error = sock.connect_ex(self.peer)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self._last_error = errno.errorcode.get(error, str(error))
            self._watcher.later(self.retry_seconds, self._connect_once)
            return
        state: dict[str, Any] = {}

        def give_up() -> None:
            self._watcher.unwatch(writer)
            sock.close()
            self._last_error = "attempt timed out"
            self._connect_once()

        def writable() -> None:
            self._watcher.unwatch(writer)
            if state["timer"].active():
                state["timer"].cancel()
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                self._succeed(sock, "connected")
                return
            sock.close()
            self._last_error = errno.errorcode.get(err, str(err))
            self._watcher.later(self.retry_seconds, self._connect_once)

        writer = self._watcher.write(sock, writable)
        state["timer"] = self._watcher.later(self.attempt_seconds, give_up)


VERIFY_TOKEN_BYTES = 16
VERIFY_TIMEOUT_SECONDS = 1.5


def verify_token(session_id: str) -> bytes:
    """What both ends of a punched connection send first, for ``verify_stream``."""
    return hashlib.sha256(b"p2psip-stunt-verify\0" + session_id.encode("utf-8")).digest()[
        :VERIFY_TOKEN_BYTES
    ]


def verify_stream(
    reactor: HolePunchReactor,
    sock: socket.socket,
    token: bytes,
    timeout_seconds: float = VERIFY_TIMEOUT_SECONDS,
) -> defer.Deferred[socket.socket]:
    """
    Send ``token`` and wait for the peer's copy of it on a fresh connection.

    A completed handshake does not prove a working path: a NAT can let the
    handshake through and then send our data out untranslated (a Linux NAT
    whose conntrack entry lost track of the TCP window after a low-TTL SYN
    does exactly that).  Only bytes seen in both directions count as success,
    and the token also proves the far end is the peer of this session.
    """
    result: defer.Deferred[socket.socket] = defer.Deferred()
    watcher = _Watcher(reactor)
    received = bytearray()
    sock.setblocking(False)

    def finish(error: str | None) -> None:
        if result.called:
            return
        watcher.stop(keep=sock)
        if error is None:
            sock.setblocking(True)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            result.callback(sock)
        else:
            sock.close()
            result.errback(Failure(PunchFailed(error)))

    def readable() -> None:
        try:
            data = sock.recv(len(token) - len(received))
        except BlockingIOError:
            return
        except OSError as e:
            finish(f"connected, then the connection broke ({e.strerror})")
            return
        if not data:
            finish("connected, then the peer closed before the check")
            return
        received.extend(data)
        if len(received) < len(token):
            return
        finish(
            None
            if bytes(received) == token
            else "connected to something that is not the peer of this session"
        )

    try:
        sock.send(token)
    except OSError as e:
        sock.close()
        return defer.fail(PunchFailed(f"connected, then the connection broke ({e.strerror})"))
    watcher.read(sock, readable)
    watcher.later(
        timeout_seconds,
        lambda: finish(
            f"connected, but no data came through within {timeout_seconds:g}s (the NAT let only the handshake pass)"
        ),
    )
    return result


def send_low_ttl_syn(
    reactor: HolePunchReactor,
    local_port: int,
    peer: tuple[str, int],
    ttl: int,
    wait_seconds: float = 0.5,
) -> defer.Deferred[str]:
    """
    Send one SYN from ``local_port`` with a small IP TTL and drop the socket.

    The SYN creates the mapping in our own NAT but expires before the far
    NAT sees it (so that NAT neither drops-and-forgets nor answers with a
    RST).  Linux ends the connect() with EHOSTUNREACH when the ICMP time
    exceeded comes back; closing a socket in SYN_SENT sends nothing.

    :returns: a Deferred of what happened to the SYN (an errno name, or
        ``"no answer"``), for the log.
    """
    result: defer.Deferred[str] = defer.Deferred()
    watcher = _Watcher(reactor)
    try:
        sock = bound_socket(local_port)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError as e:
        return defer.fail(
            PunchFailed(f"cannot prepare the low-TTL SYN from port {local_port}: {e}")
        )

    def finish(what: str) -> None:
        if not result.called:
            watcher.stop()
            result.callback(what)

    def writable() -> None:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        finish(errno.errorcode.get(err, str(err)) if err else "connected (TTL too large?)")

    error = sock.connect_ex(peer)
    if error not in (0, errno.EINPROGRESS):
        sock.close()
        return defer.succeed(errno.errorcode.get(error, str(error)))
    watcher.write(sock, writable)
    watcher.later(wait_seconds, lambda: finish("no answer"))
    return result


# --- UDP ---------------------------------------------------------------------

PUNCH_MAGIC = b"P2PSIP-PUNCH1 "
PUNCH_INTERVAL_SECONDS = 0.05
STUN_UDP_RETRANSMIT_SECONDS = 0.2


class UdpPunchProtocol(DatagramProtocol):
    """
    One UDP port from port prediction through hole punching to delivery.

    The same socket sends the STUN Binding that reveals its mapping, the
    punch packets (``PUNCH_MAGIC`` + token + state: 0 = "I haven't heard
    you yet", 1 = "I heard you", 2 = "we both heard each other"), and afterwards the application's datagrams, so the NAT mapping
    that was predicted is the one the application uses.  A peer packet from
    an address other than the predicted one is answered there (a
    peer-reflexive address, as in ICE).  Punch packets keep being answered
    after success, because the peer may not yet have heard our "I heard you".
    """

    log = Logger()
    noisy = False

    def __init__(self, clock: Timers) -> None:
        self.clock = clock
        self._stun: dict[bytes, defer.Deferred[tuple[str, int]]] = {}
        self._token = b""
        self._heard: tuple[str, int] | None = None
        self._acked = False
        self._punch_result: defer.Deferred[tuple[str, int]] | None = None
        self._calls: list[Any] = []
        self.user: DatagramProtocol | None = None
        self.peer: tuple[str, int] | None = None

    @property
    def local_port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.getHost().port
        return port

    def stun_probe(
        self, server: tuple[str, int], timeout_seconds: float = PROBE_TIMEOUT_SECONDS
    ) -> defer.Deferred[tuple[str, int]]:
        """Our mapping as a STUN server sees it, retransmitting until answered."""
        request = stun.binding_request()
        data = stun.encode_message(request)
        result: defer.Deferred[tuple[str, int]] = defer.Deferred()
        self._stun[request.transaction_id] = result
        sent_at = self.clock.seconds()

        def send() -> None:
            if result.called:
                return
            if self.clock.seconds() - sent_at >= timeout_seconds:
                self._stun.pop(request.transaction_id, None)
                result.errback(
                    PunchFailed(
                        f"no STUN answer over UDP from {server[0]}:{server[1]} in {timeout_seconds:g}s"
                    )
                )
                return
            if self.transport is not None:
                self.transport.write(data, server)
            self._later(STUN_UDP_RETRANSMIT_SECONDS, send)

        send()
        return result

    def start_punch(
        self, peer: tuple[str, int], token: bytes, deadline_seconds: float
    ) -> defer.Deferred[tuple[str, int]]:
        """Punch towards ``peer``; fires with the peer's address once both sides heard each other."""
        self._token = token
        self._punch_result = defer.Deferred()
        started = self.clock.seconds()

        def send() -> None:
            result = self._punch_result
            if result is None or result.called:
                return
            if self.clock.seconds() - started >= deadline_seconds:
                heard = "heard the peer" if self._heard else "never heard the peer"
                result.errback(
                    PunchFailed(
                        f"no two-way UDP path to {peer[0]}:{peer[1]} within {deadline_seconds:g}s ({heard})"
                    )
                )
                return
            if self.transport is not None:
                flag = self._state()
                self.transport.write(PUNCH_MAGIC + token + flag, peer)
                if self._heard is not None and self._heard != peer:
                    self.transport.write(PUNCH_MAGIC + token + flag, self._heard)
            self._later(PUNCH_INTERVAL_SECONDS, send)

        send()
        return self._punch_result

    def attach(self, user: DatagramProtocol, peer: tuple[str, int]) -> None:
        """Hand the port to the application: it gets the peer's datagrams and the transport."""
        assert self.transport is not None
        self.user = user
        self.peer = peer
        user.makeConnection(self.transport)

    def _later(self, seconds: float, f: Callable[[], None]) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self.clock.callLater(seconds, f))

    def stopProtocol(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
        for pending in list(self._stun.values()):
            pending.errback(PunchFailed("UDP port closed"))
        self._stun.clear()
        if self._punch_result is not None and not self._punch_result.called:
            self._punch_result.errback(PunchFailed("UDP port closed"))
        if self.user is not None:
            self.user.doStop()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.startswith(PUNCH_MAGIC):
            self._punch_received(data[len(PUNCH_MAGIC) :], addr)
        elif self.user is not None and addr == self.peer:
            self.user.datagramReceived(data, addr)
        elif stun.is_stun(data):
            try:
                message = stun.decode_message(data)
            except stun.StunDecodeError as e:
                self.log.debug("bad STUN answer from {addr}: {why}", addr=addr, why=str(e))
                return
            pending = self._stun.pop(message.transaction_id, None)
            mapped = message.xor_mapped_address() or message.mapped_address()
            if pending is not None and mapped is not None:
                pending.callback(mapped)
        else:
            self.log.debug("unexpected datagram from {addr}", addr=addr)

    def _state(self) -> bytes:
        if self._acked:
            return b"2"
        return b"1" if self._heard is not None else b"0"

    def _punch_received(self, rest: bytes, addr: tuple[str, int]) -> None:
        if not self._token or rest[:-1] != self._token or rest[-1:] not in (b"0", b"1", b"2"):
            self.log.debug("punch packet for another session from {addr}", addr=addr)
            return
        if self.peer is not None and addr != self.peer:
            return
        self._heard = addr
        if rest[-1:] != b"0":
            self._acked = True
        if rest[-1:] != b"2" and self.transport is not None:
            # Tell the peer at once how far we got; a "2" needs no answer,
            # which ends the exchange.
            self.transport.write(PUNCH_MAGIC + self._token + self._state(), addr)
        if self._acked and self._punch_result is not None and not self._punch_result.called:
            self._punch_result.callback(addr)
