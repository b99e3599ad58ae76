"""
STUN Binding client over UDP and TCP (RFC 8489 sections 6.2 and 7).

Over UDP a request is retransmitted on the schedule of RFC 5389 section
7.2.1 (RFC 8489 section 6.2.1): first after RTO (500 ms), then doubling,
Rc = 7 transmissions in all, and after the last one the client waits Rm = 16
RTOs more before giving up; with the defaults the sends happen at 0, 0.5,
1.5, 3.5, 7.5, 15.5 and 31.5 s and the transaction fails at 39.5 s.
``RetransmissionSchedule`` is that arithmetic; ``StunUdpClient`` runs it on
an injected clock.  Responses are matched by transaction ID only, since an
RFC 5780 CHANGE-REQUEST answer comes from another address.

Over TCP (and TLS) the request is sent once and the whole transaction times
out after Ti = 39.5 s (RFC 8489 section 6.2.2); responses are framed by
their length field (``StunStreamDecoder``).
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure

from p2psip.nat import stun
from p2psip.nat.stun import MessageClass, StunDecodeError, StunMessage
from p2psip.util.logs import Logger

Address = tuple[str, int]

INITIAL_RTO_SECONDS = 0.5
MAX_TRANSMISSIONS = 7  # Rc
FINAL_WAIT_RTO_MULTIPLIER = 16  # Rm
TCP_TRANSACTION_TIMEOUT_SECONDS = 39.5  # Ti


class StunTimeoutError(Exception):
    """No response arrived for a STUN transaction."""


class StunErrorResponse(Exception):
    """The server answered with an error response."""

    def __init__(self, code: int, reason: str, response: StunMessage) -> None:
        super().__init__(f"STUN error {code} {reason}")
        self.code = code
        self.reason = reason
        self.response = response


class StunProtocolError(Exception):
    """The server's success response lacked a usable mapped address."""


@frozen
class RetransmissionSchedule:
    """When to (re)send a UDP request and when to give up (RFC 5389 s7.2.1)."""

    rto_seconds: float = INITIAL_RTO_SECONDS
    max_transmissions: int = MAX_TRANSMISSIONS
    final_wait_multiplier: int = FINAL_WAIT_RTO_MULTIPLIER

    def waits(self) -> list[float]:
        """
        The waits after each transmission.

        The first ``max_transmissions - 1`` waits precede a retransmission;
        the last one precedes the timeout.
        """
        waits = [self.rto_seconds * (2**n) for n in range(self.max_transmissions - 1)]
        return waits + [self.rto_seconds * self.final_wait_multiplier]

    def send_times(self) -> list[float]:
        """Offsets from the first send of every transmission."""
        times = [0.0]
        for wait in self.waits()[:-1]:
            times.append(times[-1] + wait)
        return times

    def timeout_seconds(self) -> float:
        """Offset from the first send at which the transaction fails."""
        return sum(self.waits())


@frozen
class BindingResult:
    """A Binding success response and where it came from."""

    mapped: Address
    response: StunMessage
    server: Address
    local: Address | None = None

    @property
    def other_address(self) -> Address | None:
        """The RFC 5780 OTHER-ADDRESS, or None for a plain server."""
        return self.response.other_address()

    @property
    def response_origin(self) -> Address | None:
        """The RFC 5780 RESPONSE-ORIGIN, or None."""
        return self.response.response_origin()


def _result_from(response: StunMessage, server: Address, local: Address | None) -> BindingResult:
    """Turn a decoded response into a result, or raise the matching error."""
    if response.message_class == MessageClass.ERROR_RESPONSE:
        try:
            code, reason = response.error_code() or (0, "no ERROR-CODE")
        except StunDecodeError as e:
            code, reason = 0, f"malformed ERROR-CODE: {e}"
        raise StunErrorResponse(code, reason, response)
    try:
        mapped = response.reflexive_address()
    except StunDecodeError as e:
        raise StunProtocolError(f"bad mapped address from {server}: {e}") from e
    if mapped is None:
        raise StunProtocolError(f"Binding response from {server} carries no mapped address")
    return BindingResult(mapped, response, server, local)


class _UdpTransaction:
    def __init__(self, request: bytes, server: Address, deferred: Deferred[BindingResult]) -> None:
        self.request = request
        self.server = server
        self.deferred = deferred
        self.transmissions = 0
        self.started = 0.0
        self.timer: IDelayedCall | None = None


class StunUdpClient(DatagramProtocol):
    """
    Sends Binding requests from one UDP socket and matches the answers.

    Listen it on a port (``reactor.listenUDP(0, client)``) and call
    ``binding``.  Several transactions may run at once.  Datagrams that are
    not responses to a pending transaction are ignored (debug log), so the
    same socket can carry other traffic.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        schedule: RetransmissionSchedule = RetransmissionSchedule(),
        software: str | None = None,
    ) -> None:
        self.clock = clock
        self.schedule = schedule
        self.software = software
        self._send_times = schedule.send_times()
        self._pending: dict[bytes, _UdpTransaction] = {}
        self.unmatched = 0

    def binding(
        self, server: Address, *, change_ip: bool = False, change_port: bool = False
    ) -> Deferred[BindingResult]:
        """
        Ask ``server`` for our mapped address.

        Fires with a ``BindingResult``; fails with ``StunTimeoutError``,
        ``StunErrorResponse`` or ``StunProtocolError``.  Cancelling stops
        the retransmissions.
        """
        request = stun.binding_request(
            change_ip=change_ip, change_port=change_port, software=self.software
        )
        return self.send_request(request, server)

    def mapped_address(self, server: Address) -> Deferred[Address]:
        """Our address as ``server`` sees it: a Deferred (host, port)."""
        return self.binding(server).addCallback(lambda result: result.mapped)

    def send_request(self, request: StunMessage, server: Address) -> Deferred[BindingResult]:
        """Run a client transaction for an already built request."""
        txid = request.transaction_id

        def cancel(_: Deferred[BindingResult]) -> None:
            self._finish(txid)

        deferred: Deferred[BindingResult] = Deferred(cancel)
        transaction = _UdpTransaction(stun.encode_message(request), server, deferred)
        self._pending[txid] = transaction
        self._transmit(txid)
        return deferred

    def _transmit(self, txid: bytes) -> None:
        transaction = self._pending.get(txid)
        if transaction is None:
            return
        now = self.clock.seconds()
        if transaction.transmissions == 0:
            transaction.started = now
        transaction.transmissions += 1
        # Deadlines count from the first send, so a late timer does not
        # push every later retransmission back.
        if transaction.transmissions < len(self._send_times):
            due = transaction.started + self._send_times[transaction.transmissions]
            transaction.timer = self.clock.callLater(max(0.0, due - now), self._transmit, txid)
        else:
            due = transaction.started + self.schedule.timeout_seconds()
            transaction.timer = self.clock.callLater(max(0.0, due - now), self._timed_out, txid)
        if self.transport is None:
            self._fail(txid, StunTimeoutError("the STUN client socket is not listening"))
            return
        try:
            self.transport.write(transaction.request, transaction.server)
        except OSError as e:
            # ICMP errors surface here on connected sockets; keep retrying,
            # the schedule decides when to give up.
            self.log.debug("send to {server} failed: {error}", server=transaction.server, error=e)

    def _timed_out(self, txid: bytes) -> None:
        transaction = self._pending.get(txid)
        if transaction is None:
            return
        transaction.timer = None
        host, port = transaction.server
        self._fail(
            txid,
            StunTimeoutError(
                f"no STUN response from {host}:{port} after {transaction.transmissions} "
                f"transmissions over {self.schedule.timeout_seconds():g} s; check the STUN "
                "server address (--mediator) and that UDP to it is not blocked"
            ),
        )

    def _finish(self, txid: bytes) -> _UdpTransaction | None:
        transaction = self._pending.pop(txid, None)
        if transaction is not None and transaction.timer is not None and transaction.timer.active():
            transaction.timer.cancel()
        return transaction

    def _fail(self, txid: bytes, error: Exception) -> None:
        transaction = self._finish(txid)
        if transaction is not None:
            transaction.deferred.errback(Failure(error))

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            response = stun.decode_message(datagram)
        except StunDecodeError as e:
            self.unmatched += 1
            self.log.debug("ignored datagram from {peer}: {why}", peer=addr, why=e)
            return
        if response.message_class not in (
            MessageClass.SUCCESS_RESPONSE,
            MessageClass.ERROR_RESPONSE,
        ):
            self.unmatched += 1
            return
        transaction = self._finish(response.transaction_id)
        if transaction is None:
            # A late answer to a retransmission, or an off-path guess.
            self.unmatched += 1
            self.log.debug("unmatched STUN response from {peer}", peer=addr)
            return
        local = None
        if self.transport is not None:
            host = self.transport.getHost()
            local = (host.host, host.port)
        try:
            result = _result_from(response, addr, local)
        except (StunErrorResponse, StunProtocolError) as e:
            transaction.deferred.errback(Failure(e))
            return
        transaction.deferred.callback(result)

    def stopProtocol(self) -> None:
        for txid in list(self._pending):
            self._fail(txid, StunTimeoutError("the STUN client socket was closed"))

    @property
    def pending(self) -> int:
        """Transactions still waiting for an answer."""
        return len(self._pending)


class _StunTcpClientProtocol(Protocol):
    log = Logger()

    def __init__(
        self, request: StunMessage, done: Callable[[BindingResult | Failure], None]
    ) -> None:
        self.request = request
        self.done = done
        self.decoder = stun.StunStreamDecoder()
        self.finished = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(stun.encode_message(self.request))

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        try:
            messages = self.decoder.feed(data)
        except StunDecodeError as e:
            self._complete(Failure(StunProtocolError(f"server sent a broken STUN stream: {e}")))
            return
        for message in messages:
            if message.transaction_id != self.request.transaction_id:
                continue
            peer = self.transport.getPeer()
            host = self.transport.getHost()
            try:
                result = _result_from(
                    message,
                    (peer.host, peer.port),  # type: ignore[attr-defined]
                    (host.host, host.port),  # type: ignore[attr-defined]
                )
            except (StunErrorResponse, StunProtocolError) as e:
                self._complete(Failure(e))
            else:
                self._complete(result)
            return

    def _complete(self, outcome: BindingResult | Failure) -> None:
        if self.finished:
            return
        self.finished = True
        assert self.transport is not None
        self.transport.loseConnection()
        self.done(outcome)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if not self.finished:
            self.finished = True
            self.done(
                Failure(StunProtocolError("STUN server closed the connection before answering"))
            )


def tcp_binding(
    endpoint: IStreamClientEndpoint,
    clock: IReactorTime,
    *,
    timeout_seconds: float = TCP_TRANSACTION_TIMEOUT_SECONDS,
    software: str | None = None,
) -> Deferred[BindingResult]:
    """
    One Binding transaction over a fresh stream connection from ``endpoint``.

    The endpoint decides the transport and the local binding (STUNT probes
    pass a ``TCP4ClientEndpoint`` with ``bindAddress`` to learn how a given
    local port is mapped).  Fires with a ``BindingResult`` whose ``local``
    is the connection's local address; fails with ``StunTimeoutError``
    after ``timeout_seconds``, or the connection error.
    """
    request = stun.binding_request(software=software)
    result: Deferred[BindingResult] = Deferred(lambda _: _stop())
    state: dict[str, Any] = {"protocol": None, "connecting": None}

    def _stop() -> None:
        if timer.active():
            timer.cancel()
        protocol = state["protocol"]
        if protocol is not None and protocol.transport is not None and not protocol.finished:
            protocol.finished = True
            protocol.transport.abortConnection()
        connecting = state["connecting"]
        if connecting is not None and not connecting.called:
            connecting.cancel()

    def done(outcome: BindingResult | Failure) -> None:
        if timer.active():
            timer.cancel()
        if result.called:
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    def timed_out() -> None:
        if not result.called:
            result.errback(
                Failure(
                    StunTimeoutError(
                        f"no STUN response over the stream within {timeout_seconds:g} s; check "
                        "the STUN server address (--mediator) and that TCP to it is not blocked"
                    )
                )
            )
        _stop()

    timer = clock.callLater(timeout_seconds, timed_out)

    def connected(protocol: _StunTcpClientProtocol) -> None:
        state["protocol"] = protocol

    def connect_failed(failure: Failure) -> None:
        if result.called:
            return
        done(failure)

    connecting = endpoint.connect(
        Factory.forProtocol(lambda: _StunTcpClientProtocol(request, done))
    )
    state["connecting"] = connecting
    connecting.addCallbacks(connected, connect_failed)
    return result


def tcp_mapped_address(
    endpoint: IStreamClientEndpoint, clock: IReactorTime, **kwargs: Any
) -> Deferred[Address]:
    """Our address as a stream server sees it: a Deferred (host, port)."""
    return tcp_binding(endpoint, clock, **kwargs).addCallback(lambda result: result.mapped)
