"""
Overload: refuse new work with 503 before the work already accepted drowns.

A super-node given more requests than it can serve does not fail at once:
its requests wait longer, the phones (and SIPp) retransmit what was not
answered within T1, every retransmission costs a parse and a lookup, and
the node ends up spending all its time on copies of requests whose
senders gave up.  Goodput falls towards zero exactly when it matters.

:class:`OverloadGuard` keeps the node near its capacity instead.  Before a
new out-of-dialog INVITE or REGISTER is served, it looks at two signs:

* the requests this node is working on: server transactions without a
  final response (:attr:`p2psip.sip.transaction.TransactionLayer.unanswered`);
  past ``max_pending`` new work waits behind too much old;
* the event loop's smoothed lag (:class:`p2psip.util.loop_lag.LoopLagProbe`):
  past ``max_lag_seconds`` the process is out of CPU, whatever the cause;
* the fill of its UDP sockets' receive queues
  (:class:`p2psip.util.socket_backlog.ReceiveBacklog`): past
  ``max_backlog`` datagrams wait in the kernel longer than T1 and the next
  ones are dropped unread.  A UDP flood shows here and not in the loop
  lag: the loop reads a batch per turn and keeps its timers on time.

Past either, the request is answered 503 Service Unavailable with
``Retry-After`` (RFC 3261 s21.5.4), a few seconds with jitter so the
refused phones do not come back together.

The refusal must cost far less than the work it turns away, or goodput
falls anyway.  :class:`StatelessRefusals` answers at the transaction
layer's door, statelessly (RFC 3261 s8.2.7): no server transaction, no
100 Trying, no timers and nothing kept for Timer J's 32 s; only the start
line, the top Via (to find a transaction being served) and, once the node
is overloaded, the To tag are read, and the 503 copies five header lines.
Its To tag is derived from the request's branch and Call-ID, so a
retransmission of a refused request gets the same answer again and the
ACK of a refused INVITE is recognised and dropped.

What is never refused, because refusing it would waste work already done:

* retransmissions of a request being served: the transaction layer
  matches them to their transaction before the guard is asked;
* in-dialog requests (a To tag: BYE, re-INVITE, UPDATE) and ACK and
  CANCEL: they end or change calls already set up;
* other methods (OPTIONS, MESSAGE...), which cost little.

Sans-IO: the guard reads the clock, a pending count and a lag figure it
is given, and returns the ``Retry-After`` to send, or None.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from p2psip.sip.errors import SipParseError
from p2psip.sip.message import (
    CSeq,
    NameAddress,
    Request,
    Response,
    Via,
    check_call_id,
    make_response,
    single_value,
)
from p2psip.sip.quick_read import RefusableRequest
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

#: Requests worked on at once (no final response yet) past which new ones
#: are refused.  A REGISTER waits for its overlay Store (milliseconds on a
#: healthy ring), an INVITE for its lookup and then the callee's final
#: response (seconds of ringing): a node taking 1,000 calls a second with
#: 10 s of ringing has 10,000 INVITEs pending, so the default counts calls
#: being set up generously; REGISTER floods show in the loop lag first.
DEFAULT_MAX_PENDING = 20_000
#: Smoothed event-loop lag, in seconds, past which new requests are
#: refused.  A busy node on a loaded 2-core host runs its timers 10-100 ms
#: late (p99); a saturated one, seconds and growing.  Half a second is
#: T1: a request that waits that long in our socket buffer is already
#: being retransmitted, so past it the node is losing ground.
DEFAULT_MAX_LAG_SECONDS = 0.5
#: Fill of a UDP receive queue (its share of the socket's buffer) past
#: which new requests are refused.  With the 4 MiB buffers a super-node
#: asks for, a quarter is about 800 REGISTERs waiting (kernel buffers
#: take about 1.3 KB each): a quarter of a second or more at the rates a
#: super-node serves, and the socket still takes a burst four times that.
DEFAULT_MAX_BACKLOG = 0.25
#: Retry-After sent with the refusals: this many seconds, plus up to as many again of jitter.
DEFAULT_RETRY_AFTER_SECONDS = 5
#: The methods the guard may refuse; everything else passes.
GUARDED_METHODS = frozenset({"INVITE", "REGISTER"})


@frozen
class OverloadThresholds:
    """When a super-node refuses new calls and registrations (``sip-overload-*``)."""

    #: Unanswered server transactions past which new ones are refused; 0: not checked.
    max_pending: int = DEFAULT_MAX_PENDING
    #: Smoothed loop lag past which new ones are refused; 0: not checked.
    max_lag_seconds: float = DEFAULT_MAX_LAG_SECONDS
    retry_after_seconds: int = DEFAULT_RETRY_AFTER_SECONDS
    #: Receive-queue fill (0-1) past which new ones are refused; 0: not checked.
    max_backlog: float = DEFAULT_MAX_BACKLOG

    @property
    def enabled(self) -> bool:
        return self.max_pending > 0 or self.max_lag_seconds > 0 or self.max_backlog > 0


def _out_of_dialog(request: Request) -> bool:
    """No To tag; a To header we cannot read counts as in-dialog (never refused here)."""
    try:
        return request.to_tag is None
    except SipParseError:
        return False


class OverloadGuard:
    """
    Decides, per new request, whether the node is too busy to take it.

    :param pending: the requests being worked on now (unanswered server transactions).
    :param lag_seconds: the smoothed event-loop lag now.
    :param backlog: the fullest UDP receive queue now (0-1).
    :param rng: the jitter of ``Retry-After`` (seeded in tests).
    """

    def __init__(
        self,
        thresholds: OverloadThresholds,
        pending: Callable[[], int],
        lag_seconds: Callable[[], float],
        rng: random.Random | None = None,
        backlog: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.thresholds = thresholds
        self._pending = pending
        self._lag_seconds = lag_seconds
        self._backlog = backlog
        self._random = rng or random.Random()
        #: Requests refused since start, by method and reason ("pending", "lag").
        self.refused: Counter[tuple[str, str]] = Counter()
        #: Whether the last request asked about was refused (for the log's edges).
        self.overloaded = False

    def lag_seconds(self) -> float:
        """The smoothed event-loop lag now."""
        return self._lag_seconds()

    def pending(self) -> int:
        """The requests being worked on now."""
        return self._pending()

    def backlog(self) -> float:
        """The fullest UDP receive queue now (0-1)."""
        return self._backlog()

    def reason_to_refuse(self) -> str | None:
        """Why a new request would be refused now ("pending", "lag" or "backlog"), or None."""
        limits = self.thresholds
        # The pending count is one subtraction; the lag includes the request
        # that just arrived only through its effect on the loop.
        if limits.max_pending > 0 and self._pending() > limits.max_pending:
            return "pending"
        if limits.max_lag_seconds > 0 and self._lag_seconds() > limits.max_lag_seconds:
            return "lag"
        if limits.max_backlog > 0 and self._backlog() > limits.max_backlog:
            return "backlog"
        return None

    def admit(self, request: Request) -> int | None:
        """
        None when ``request`` may be served; otherwise the seconds of
        ``Retry-After`` to answer its 503 with.  The transaction layer has
        already absorbed retransmissions, so ``request`` is a new one.
        """
        if request.method not in GUARDED_METHODS:
            return None
        reason = self.reason_to_refuse()
        if reason is None:
            self.overloaded = False
            return None
        # Only now the To header is parsed: a quiet node never reads it here.
        if not _out_of_dialog(request):
            return None
        return self.refuse(request.method, reason)

    def refuse(self, method: str, reason: str) -> int:
        """Count a refusal of ``method`` for ``reason``; the seconds of ``Retry-After`` to send."""
        self.overloaded = True
        self.refused[(method, reason)] += 1
        base = self.thresholds.retry_after_seconds
        return base + self._random.randint(0, base)

    def status(self) -> dict[str, object]:
        """The ``overload`` part of the SIP ``/status``."""
        limits = self.thresholds
        return {
            "max_pending": limits.max_pending,
            "max_lag_seconds": limits.max_lag_seconds,
            "pending": self._pending(),
            "lag_seconds": round(self._lag_seconds(), 4),
            "max_backlog": limits.max_backlog,
            "backlog": round(self._backlog(), 4),
            "overloaded": self.overloaded,
            "refused": {
                f"{method} {reason}": count
                for (method, reason), count in sorted(self.refused.items())
            },
        }


#: The reason phrase of an overload refusal.
OVERLOADED_REASON = "Service Unavailable (overloaded)"


def refusal_tag(request: Request) -> str:
    """
    The To tag of our stateless 503 to ``request``: the same for its
    retransmissions and for the ACK of a refused INVITE (same branch and
    Call-ID, s17.1.1.3), as s8.2.7 asks of a stateless UAS.
    """
    return _refusal_tag(request.via.branch, request.call_id)


def _refusal_tag(branch: str | None, call_id: str) -> str:
    seed = f"{branch}\n{call_id}".encode()
    return "ov" + hashlib.blake2s(seed, digest_size=8).hexdigest()


class StatelessRefusals:
    """
    The overload guard at the transaction layer's door: what a new request
    gets instead of a server transaction while the node is overloaded.

    :param counted: told the method of each refusal (the proxy's final-response counters).
    """

    log = Logger()

    def __init__(
        self, guard: OverloadGuard, clock: IReactorTime, counted: Callable[[str], None]
    ) -> None:
        self.guard = guard
        self._counted = counted
        self._log = LogThrottle(clock)
        #: ACKs of refused INVITEs dropped here (since start).
        self.acks_absorbed = 0

    def refusal(self, request: Request) -> Response | None:
        """The 503 to send ``request`` (which no transaction matched) now, or None to serve it."""
        # guard.admit reads the method first and the To header only when it
        # may refuse: a quiet node pays one string comparison per request.
        retry_after = self.guard.admit(request)
        if retry_after is None:
            return None
        response = make_response(request, 503, OVERLOADED_REASON, to_tag=refusal_tag(request))
        response.headers.add("Retry-After", str(retry_after))
        self._counted(request.method)
        self._warn()
        return response

    def refusing(self) -> bool:
        """Whether new INVITEs and REGISTERs are being refused now (cheap: asked per datagram)."""
        return self.guard.reason_to_refuse() is not None

    def datagram_refusal(self, request: RefusableRequest, top_via: Via) -> bytes | None:
        """
        The 503 to send, as bytes, for a request read only by
        :func:`p2psip.sip.quick_read.read_refusable`, or None to parse
        it in full and let the transaction layer decide.

        ``top_via`` is its top Via, parsed and stamped with where it came
        from (and ``request.vias`` carries it so stamped, as text, if that
        changed it); the transaction layer has checked that no transaction of
        ours has that branch.  The answer is the one :meth:`refusal`
        gives (the same tag, so retransmissions and the ACK match), for
        a third of its CPU: only the fields it copies are parsed.
        """
        reason = self.guard.reason_to_refuse()
        if reason is None:
            return None
        try:
            # Every field copied into the 503 is checked as the full parse
            # would, so that what we send is well-formed whatever came in.
            to = NameAddress.parse(single_value(request.to, "To"), "To")
            cseq = CSeq.parse(request.cseq)
            NameAddress.parse(single_value(request.from_, "From"), "From")
            check_call_id(request.call_id)
            for via in request.vias[1:]:
                Via.parse(via)
        except SipParseError:
            return None  # the full parse answers it 400
        if to.tag is not None or cseq.method != request.method:
            return None  # in dialog (never refused), or a 400 to give
        retry_after = self.guard.refuse(request.method, reason)
        to.parameters["tag"] = _refusal_tag(top_via.branch, request.call_id)
        lines = [f"SIP/2.0 503 {OVERLOADED_REASON}"]
        lines += [f"Via: {via}" for via in request.vias]
        lines += [
            f"From: {request.from_}",
            f"To: {to}",
            f"Call-ID: {request.call_id}",
            f"CSeq: {request.cseq}",
            f"Retry-After: {retry_after}",
            "Content-Length: 0",
        ]
        self._counted(request.method)
        self._warn()
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def absorbs_ack(self, ack: Request) -> bool:
        """Whether ``ack`` (no transaction matched it) acknowledges one of our stateless 503s."""
        try:
            tag = ack.to_tag
            if tag is None or not tag.startswith("ov") or tag != refusal_tag(ack):
                return False
        except SipParseError:
            return False
        self.acks_absorbed += 1
        return True

    def _warn(self) -> None:
        """Warn at most once a minute, with how many were refused meanwhile."""
        held_back = self._log.admit("overload")
        if held_back is None:
            return
        limits = self.guard.thresholds
        self.log.warn(
            "overloaded: refused {count} new INVITE/REGISTER(s) with 503 "
            "({pending_now} unanswered, loop lag {lag_now:.3f} s, UDP receive queue "
            "{backlog_now:.0%} full; thresholds sip-overload-pending {pending}, "
            "sip-overload-lag {lag:g} s, sip-overload-backlog {backlog:g})",
            count=held_back + 1,
            pending_now=self.guard.pending(),
            lag_now=self.guard.lag_seconds(),
            backlog_now=self.guard.backlog(),
            pending=limits.max_pending,
            lag=limits.max_lag_seconds,
            backlog=limits.max_backlog,
        )


__all__ = [
    "OVERLOADED_REASON",
    "StatelessRefusals",
    "refusal_tag",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_LAG_SECONDS",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_RETRY_AFTER_SECONDS",
    "GUARDED_METHODS",
    "OverloadGuard",
    "OverloadThresholds",
]
