"""
SIP transactions (RFC 3261 section 17), sans-IO apart from an injected clock.

A transaction is one request and the responses to it.  Four state
machines, as in RFC 3261 figures 5 to 8:

* INVITE client: Calling -> Proceeding -> Completed -> Terminated.  Timer A
  retransmits over unreliable transports (T1, doubling), Timer B (64*T1)
  gives up with a synthesized 408, a 3xx-6xx final response is ACKed here
  and Timer D (32 s unreliable, 0 reliable) absorbs its retransmissions.
  A 2xx ends the transaction; its ACK and retransmissions belong to the TU.
* non-INVITE client: Trying -> Proceeding -> Completed -> Terminated.
  Timer E retransmits (T1 doubling, capped at T2; T2 in Proceeding),
  Timer F (64*T1) gives up with a 408, Timer K (T4 / 0) absorbs
  response retransmissions.
* INVITE server: Proceeding -> Completed -> Confirmed -> Terminated, plus
  Accepted after a 2xx (RFC 6026 section 7.1) so that INVITE
  retransmissions are absorbed while the TU retransmits its 2xx.  Timer G
  retransmits a 3xx-6xx final response (T1 doubling, capped at T2) until
  the ACK comes; Timer H (64*T1) gives up waiting; Timer I (T4 / 0)
  absorbs ACK retransmissions; Timer L (64*T1) ends Accepted.
* non-INVITE server: Trying -> Proceeding -> Completed -> Terminated,
  request retransmissions answered with the last response, Timer J (64*T1
  unreliable / 0) absorbing them.

Matching (sections 17.1.3 and 17.2.3): responses match client
transactions by the top Via branch and the CSeq method; requests match
server transactions by branch, sent-by and method (ACK matches INVITE) when
the branch carries the RFC 3261 magic cookie, otherwise by the RFC 2543
fields (Request-URI, From tag, Call-ID, CSeq number, top Via).

A transport failure while sending a request ends the client transaction
with a synthesized 503 (section 8.1.3.1).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.sip.message import (
    MAGIC_COOKIE,
    AnyMessage,
    Headers,
    Request,
    Response,
    Via,
    make_response,
)
from p2psip.sip.quick_read import RefusableRequest
from p2psip.util.logs import Logger

T1_SECONDS = 0.5
T2_SECONDS = 4.0
T4_SECONDS = 5.0
TIMER_D_UNRELIABLE_SECONDS = 32.0
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


@attrs.frozen
class TimerSettings:
    """The RFC 3261 section 17.1.1.1 timer base values; change them only for unusual networks."""

    t1_seconds: float = T1_SECONDS
    t2_seconds: float = T2_SECONDS
    t4_seconds: float = T4_SECONDS
    timer_d_seconds: float = TIMER_D_UNRELIABLE_SECONDS


@attrs.frozen
class Hop:
    """
    A transport address a message came from or goes to.

    ``transport`` is the Via transport name, upper case (``UDP``, ``TCP``).
    """

    transport: str
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        """Whether the transport itself retransmits, so SIP timers A, E, G stay off (s17.1.1.2)."""
        return self.transport.upper() in RELIABLE_TRANSPORTS


class MessageSender(Protocol):
    """What the transaction layer needs from the transport layer."""

    def send_request(self, request: Request, target: Hop, on_error: Callable[[str], None]) -> None:
        """
        Send (or retransmit) a request.

        A failure known at once may call ``on_error`` before returning;
        a later one (a TCP connection that cannot be opened) calls it later.
        """

    def send_response(self, response: Response, source: Hop) -> None:
        """Send a response back towards ``source``, following RFC 3261 s18.2.2 and RFC 3581."""


class TransactionUser(Protocol):
    """The layer above transactions: a UA core, registrar or proxy core."""

    def request_received(self, transaction: ServerTransaction) -> None:
        """A new request arrived; answer it with ``transaction.respond``."""

    def ack_received(self, request: Request, source: Hop) -> None:
        """An ACK that matches no INVITE server transaction (the ACK for a 2xx, s17.2.3)."""

    def stray_response_received(self, response: Response, source: Hop) -> None:
        """A response that matches no client transaction (a retransmitted 2xx to an INVITE, s17.1.1.2)."""


class StatelessRefusal(Protocol):
    """Refuses new requests without a transaction (the overload guard, p2psip.sip.overload)."""

    def refusal(self, request: Request) -> Response | None:
        """The response to send ``request`` statelessly instead of serving it, or None."""

    def absorbs_ack(self, ack: Request) -> bool:
        """Whether ``ack`` acknowledges one of those responses (and so goes no further)."""

    def refusing(self) -> bool:
        """Whether new requests are being refused now."""

    def datagram_refusal(self, request: RefusableRequest, top_via: Via) -> bytes | None:
        """The response bytes for a request read only in part, or None to parse it in full."""


def new_branch() -> str:
    """A Via branch unique in space and time, with the RFC 3261 magic cookie (s8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_hex(10)


def is_rfc3261_branch(branch: str | None) -> bool:
    """Whether a branch may be trusted as a transaction id (RFC 4475 s3.2.1: the bare cookie may not)."""
    return (
        branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)
    )


def make_ack(request: Request, response: Response) -> Request:
    """The ACK for a 3xx-6xx final response, built by the INVITE client transaction (s17.1.1.3)."""
    headers = Headers()
    headers.add("Via", request.headers.values("Via")[0])
    for name in ("Route",):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", response.headers.get("To") or "")
    headers.add("Call-ID", request.call_id)
    headers.add("CSeq", f"{request.cseq.number} ACK")
    headers.add("Max-Forwards", "70")
    return Request("ACK", request.uri.copy(), headers)


def make_cancel(request: Request) -> Request:
    """A CANCEL for a pending INVITE client transaction (s9.1): same branch, so it reaches the same server."""
    headers = Headers()
    headers.add("Via", request.headers.values("Via")[0])
    for value in request.headers.get_all("Route"):
        headers.add("Route", value)
    for name in ("From", "To", "Call-ID"):
        headers.add(name, request.headers.get(name) or "")
    headers.add("CSeq", f"{request.cseq.number} CANCEL")
    headers.add("Max-Forwards", "70")
    return Request("CANCEL", request.uri.copy(), headers)


class State(enum.Enum):
    """Transaction states, named as in RFC 3261 section 17 and RFC 6026."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class _Transaction:
    log = Logger()

    def __init__(
        self, layer: TransactionLayer, key: tuple[object, ...], request: Request, hop: Hop
    ) -> None:
        self.layer = layer
        self.key = key
        self.request = request
        self.hop = hop
        self.state = State.TRYING
        self._timers: dict[str, IDelayedCall] = {}
        self._terminated_callbacks: list[Callable[[], None]] = []

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def timers(self) -> TimerSettings:
        return self.layer.timers

    def add_terminated_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the transaction ends (for whatever reason)."""
        if self.state is State.TERMINATED:
            callback()
        else:
            self._terminated_callbacks.append(callback)

    def _start_timer(self, name: str, seconds: float, fired: Callable[[], None]) -> None:
        self._stop_timer(name)
        # A method and arguments rather than a closure: a closure is two
        # more objects per timer for the collector to walk, and a server
        # transaction waits 32 s on its last timer.
        self._timers[name] = self.layer.clock.callLater(seconds, self._timer_fired, name, fired)

    def _timer_fired(self, name: str, fired: Callable[[], None]) -> None:
        del self._timers[name]
        fired()

    def _stop_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _absorb_for(self, name: str, unreliable_seconds: float, fired: Callable[[], None]) -> None:
        """Start a wait timer that is zero on reliable transports (Timers D, I, J, K)."""
        if self.hop.reliable:
            fired()
        else:
            self._start_timer(name, unreliable_seconds, fired)

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        for name in list(self._timers):
            self._stop_timer(name)
        self.layer._forget(self)
        callbacks, self._terminated_callbacks = self._terminated_callbacks, []
        for callback in callbacks:
            callback()


def _ignore_response(response: Response) -> None:
    """The response callback of a terminated client transaction."""


class ClientTransaction(_Transaction):
    """One request sent and the responses to it, delivered to ``on_response``."""

    def __init__(
        self,
        layer: TransactionLayer,
        key: tuple[object, ...],
        request: Request,
        target: Hop,
        on_response: Callable[[Response], None],
    ) -> None:
        super().__init__(layer, key, request, target)
        self.on_response = on_response
        self.final_response: Response | None = None
        #: The final response was made here (Timer B/F or a transport error), none came.
        self.gave_up = False
        self._interval_seconds = self.timers.t1_seconds

    def start(self) -> None:
        """Send the request and start Timers A/B (INVITE) or E/F."""
        self.state = State.CALLING if self.is_invite else State.TRYING
        timeout = "B" if self.is_invite else "F"
        self._start_timer(timeout, 64 * self.timers.t1_seconds, self._timed_out)
        if not self.hop.reliable:
            self._start_timer(
                "A" if self.is_invite else "E", self._interval_seconds, self._retransmit
            )
        self._send(self.request)

    def _send(self, request: Request) -> None:
        self.layer.sender.send_request(request, self.hop, self._transport_failed)

    def _retransmit(self) -> None:
        if self.is_invite:
            if self.state is not State.CALLING:
                return
            self._interval_seconds *= 2
            self._start_timer("A", self._interval_seconds, self._retransmit)
        else:
            if self.state not in (State.TRYING, State.PROCEEDING):
                return
            if self.state is State.PROCEEDING:
                self._interval_seconds = self.timers.t2_seconds
            else:
                self._interval_seconds = min(2 * self._interval_seconds, self.timers.t2_seconds)
            self._start_timer("E", self._interval_seconds, self._retransmit)
        self.log.debug(
            "retransmitting {method} to {host}", method=self.request.method, host=self.hop.host
        )
        self.layer.retransmissions += 1
        self._send(self.request)

    def _timed_out(self) -> None:
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self.layer.timeouts += 1
            self._give_up(408, "Request Timeout")

    def abandon(self) -> None:
        """
        Give up at once, before any response came, as if Timer B or F had
        fired (a 408 made here): a proxy failing over to another flow.
        """
        if self.state in (State.CALLING, State.TRYING):
            self.layer.timeouts += 1
            self._give_up(408, "Request Timeout (no answer, trying another flow)")

    def _transport_failed(self, reason: str) -> None:
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self.log.debug(
                "transport error sending {method}: {reason}",
                method=self.request.method,
                reason=reason,
            )
            self.layer.transport_errors += 1
            self._give_up(503, "Service Unavailable (transport error)")

    def _give_up(self, status: int, reason: str) -> None:
        response = make_response(self.request, status, reason)
        self.final_response = response
        self.gave_up = True
        deliver = self.on_response
        self._terminate()
        deliver(response)

    def _terminate(self) -> None:
        super()._terminate()
        # A terminated transaction delivers nothing more.  Dropping the TU's
        # callback breaks the cycle transaction -> callback -> TU state (a
        # proxy's branch) -> transaction, so the call's messages are freed
        # by reference counting when it ends instead of waiting, promoted to
        # the oldest generation, for a full collection: with the server's
        # collector thresholds (util/gc_tuning) that cycle made a proxy's
        # RSS grow by tens of KB per call and its full collections stall.
        self.on_response = _ignore_response

    def response_received(self, response: Response) -> None:
        """A response matched this transaction (s17.1.1.2 / s17.1.2.2)."""
        state = self.state
        if state in (State.COMPLETED, State.TERMINATED):
            if self.is_invite and state is State.COMPLETED and response.status >= 300:
                self._send(make_ack(self.request, response))  # the ACK was lost: send it again
            return
        if response.status < 200:
            if state in (State.CALLING, State.TRYING):
                self.state = State.PROCEEDING
                if self.is_invite:
                    self._stop_timer("A")
                    self._stop_timer("B")
            self.on_response(response)
            return
        self.final_response = response
        for name in ("A", "B", "E", "F"):
            self._stop_timer(name)
        deliver = self.on_response
        # Nothing more is delivered (retransmissions of the final are
        # absorbed), so the TU's state (a proxy's response context, with
        # every copy of the request) is not kept through Timers D and K.
        self.on_response = _ignore_response
        if self.is_invite and response.status < 300:
            self._terminate()
        elif self.is_invite:
            self.state = State.COMPLETED
            self._send(make_ack(self.request, response))
            self._absorb_for("D", self.timers.timer_d_seconds, self._terminate)
        else:
            self.state = State.COMPLETED
            self._absorb_for("K", self.timers.t4_seconds, self._terminate)
        deliver(response)


class ServerTransaction(_Transaction):
    """One request received; the TU answers it with :meth:`respond`."""

    def __init__(
        self, layer: TransactionLayer, key: tuple[object, ...], request: Request, source: Hop
    ) -> None:
        super().__init__(layer, key, request, source)
        self.state = State.PROCEEDING if self.is_invite else State.TRYING
        self.last_response: Response | None = None
        self.timed_out = False
        self._interval_seconds = self.timers.t1_seconds
        layer.unanswered += 1
        self._unanswered = True

    def _answered(self) -> None:
        """The request has its final response (or never will): it no longer counts as pending."""
        if self._unanswered:
            self._unanswered = False
            self.layer.unanswered -= 1

    def _terminate(self) -> None:
        self._answered()
        super()._terminate()

    @property
    def source(self) -> Hop:
        """Where the request came from."""
        return self.hop

    def _send(self, response: Response) -> None:
        self.last_response = response
        self.layer.sender.send_response(response, self.hop)

    def respond(self, response: Response) -> None:
        """Send a response from the TU; responses after the final one are dropped (s17.2)."""
        state = self.state
        if self.is_invite and state is State.ACCEPTED and 200 <= response.status < 300:
            self.layer.sender.send_response(response, self.hop)  # the TU retransmitting its 2xx
            return
        if state not in (State.TRYING, State.PROCEEDING):
            self.log.debug(
                "dropping {status} for a transaction in state {state}",
                status=response.status,
                state=state.value,
            )
            return
        if response.status < 200:
            self.state = State.PROCEEDING
            self._send(response)
            return
        self._send(response)
        self._answered()
        self.request.headers.forget_parses()
        response.headers.forget_parses()
        if not self.is_invite:
            self.state = State.COMPLETED
            self._absorb_for("J", 64 * self.timers.t1_seconds, self._terminate)
        elif response.status < 300:
            self.state = State.ACCEPTED
            self._start_timer("L", 64 * self.timers.t1_seconds, self._terminate)
        else:
            self.state = State.COMPLETED
            if not self.hop.reliable:
                self._start_timer("G", self._interval_seconds, self._retransmit_final)
            self._start_timer("H", 64 * self.timers.t1_seconds, self._ack_timed_out)

    def _retransmit_final(self) -> None:
        if self.state is not State.COMPLETED or self.last_response is None:
            return
        self._interval_seconds = min(2 * self._interval_seconds, self.timers.t2_seconds)
        self._start_timer("G", self._interval_seconds, self._retransmit_final)
        self.layer.retransmissions += 1
        self.layer.sender.send_response(self.last_response, self.hop)

    def _ack_timed_out(self) -> None:
        if self.state is State.COMPLETED:
            self.log.debug(
                "no ACK for {status} to {method}",
                status=getattr(self.last_response, "status", None),
                method=self.request.method,
            )
            self.timed_out = True
            self.layer.timeouts += 1
            self._terminate()

    def request_retransmitted(self) -> None:
        """The same request arrived again: resend the last response, if any (s17.2.1, s17.2.2)."""
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            self.layer.sender.send_response(self.last_response, self.hop)

    def ack_received(self) -> None:
        """The ACK for our 3xx-6xx final response arrived (s17.2.1)."""
        if self.state is State.COMPLETED:
            self.state = State.CONFIRMED
            self._stop_timer("G")
            self._stop_timer("H")
            self._absorb_for("I", self.timers.t4_seconds, self._terminate)


def _rfc3261_server_key(via: Via, method: str) -> tuple[object, ...]:
    return ("3261", via.branch, via.host.lower(), via.port, method)


def _server_key(request: Request) -> tuple[object, ...]:
    via = request.via
    method = "INVITE" if request.method == "ACK" else request.method
    if is_rfc3261_branch(via.branch):
        return _rfc3261_server_key(via, method)
    # RFC 2543 peers: no usable branch.  The To tag is left out because the
    # ACK carries the tag of our response while the INVITE had none.
    return (
        "2543",
        str(request.uri),
        request.from_tag,
        request.call_id,
        request.cseq.number,
        str(via),
        method,
    )


def _client_key(branch: str | None, method: str) -> tuple[object, ...]:
    return ("client", branch, "INVITE" if method == "ACK" else method)


class TransactionLayer:
    """
    All transactions of one SIP element, matched to the messages a transport delivers.

    It is the controller the transports call (``message_received``); it
    hands new requests, 2xx ACKs and stray responses to the TU.
    """

    log = Logger()

    def __init__(
        self,
        sender: MessageSender,
        user: TransactionUser,
        clock: IReactorTime,
        timers: TimerSettings = TimerSettings(),
    ) -> None:
        self.sender = sender
        self.user = user
        self.clock = clock
        self.timers = timers
        self.client_transactions: dict[tuple[object, ...], ClientTransaction] = {}
        self.server_transactions: dict[tuple[object, ...], ServerTransaction] = {}
        # Counters for /status and /metrics.
        self.retransmissions = 0
        self.timeouts = 0
        self.transport_errors = 0
        self.stray_responses = 0
        #: Server transactions without a final response yet: the requests
        #: this element is working on (the overload guard's queue length).
        self.unanswered = 0
        #: Asked about each new request before a transaction is made for it;
        #: its answer is sent statelessly (p2psip.sip.overload).  None: none.
        self.refusals: StatelessRefusal | None = None

    def terminate_all(self) -> None:
        """End every transaction at once, cancelling its timers (the service is stopping)."""
        for transaction in [*self.server_transactions.values(), *self.client_transactions.values()]:
            transaction._terminate()

    def metrics(self) -> dict[str, int]:
        """Live transactions and counters, for /status and /metrics."""
        return {
            "client_transactions": len(self.client_transactions),
            "server_transactions": len(self.server_transactions),
            "retransmissions": self.retransmissions,
            "timeouts": self.timeouts,
            "transport_errors": self.transport_errors,
            "stray_responses": self.stray_responses,
        }

    def message_received(self, message: AnyMessage, source: Hop) -> None:
        """Entry point for every parsed message from a transport."""
        if isinstance(message, Response):
            self._response_received(message, source)
        else:
            self._request_received(message, source)

    def refusing_new_requests(self) -> bool:
        """Whether the overload guard refuses new requests now (the transport asks per datagram)."""
        return self.refusals is not None and self.refusals.refusing()

    def refusal_for(self, request: RefusableRequest, top_via: Via) -> bytes | None:
        """
        The stateless refusal, as bytes, of a request the transport read
        only in part (:func:`p2psip.sip.quick_read.read_refusable`), or
        None to parse it in full: a request with an RFC 2543 branch, or a
        retransmission of one being served (it matches our transaction).
        """
        if self.refusals is None or not is_rfc3261_branch(top_via.branch):
            return None
        if _rfc3261_server_key(top_via, request.method) in self.server_transactions:
            return None
        return self.refusals.datagram_refusal(request, top_via)

    def _response_received(self, response: Response, source: Hop) -> None:
        key = _client_key(response.via.branch, response.cseq.method)
        transaction = self.client_transactions.get(key)
        if transaction is None:
            self.stray_responses += 1
            self.user.stray_response_received(response, source)
        else:
            transaction.response_received(response)

    def _request_received(self, request: Request, source: Hop) -> None:
        key = _server_key(request)
        transaction = self.server_transactions.get(key)
        if request.method == "ACK":
            if transaction is not None and transaction.state in (State.COMPLETED, State.CONFIRMED):
                transaction.ack_received()
            elif self.refusals is not None and self.refusals.absorbs_ack(request):
                pass  # the ACK of a stateless refusal: nothing to do
            else:
                self.user.ack_received(request, source)
            return
        if transaction is not None:
            transaction.request_retransmitted()
            return
        if self.refusals is not None:
            refusal = self.refusals.refusal(request)
            if refusal is not None:
                self.sender.send_response(refusal, source)
                return
        transaction = ServerTransaction(self, key, request, source)
        self.server_transactions[key] = transaction
        if transaction.is_invite:
            # s17.2.1: answer at once so the client stops retransmitting.
            transaction.respond(make_response(request, 100))
        self.user.request_received(transaction)

    def send_request(
        self, request: Request, target: Hop, on_response: Callable[[Response], None]
    ) -> ClientTransaction:
        """
        Start a client transaction for ``request``, whose top Via already carries a fresh branch.

        ``on_response`` gets every provisional and the final response,
        including a synthesized 408 (Timer B/F) or 503 (transport error).
        An ACK is sent without a transaction (it has none, s17.1.1.3).
        """
        key = _client_key(request.via.branch, request.method)
        transaction = ClientTransaction(self, key, request, target, on_response)
        if request.method == "ACK":
            self.sender.send_request(request, target, lambda reason: None)
            return transaction
        if key in self.client_transactions:
            raise ValueError(
                "a client transaction with this branch and method exists: use new_branch()"
            )
        self.client_transactions[key] = transaction
        transaction.start()
        return transaction

    def find_cancelled(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (s9.2), if it still exists."""
        key = _server_key(cancel)
        return self.server_transactions.get(key[:-1] + ("INVITE",))

    def _forget(self, transaction: _Transaction) -> None:
        if isinstance(transaction, ClientTransaction):
            if self.client_transactions.get(transaction.key) is transaction:
                del self.client_transactions[transaction.key]
        elif self.server_transactions.get(transaction.key) is transaction:
            del self.server_transactions[transaction.key]
