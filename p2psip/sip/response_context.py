"""
What a stateful proxy keeps for one forwarded request: its branches, the
responses they bring and the timers that bound them (RFC 3261 s16.7-s16.10).

The proxy decides where a request goes; once it has the list of outgoing
copies, a :class:`ResponseContext` runs them: it starts one client
transaction per branch, passes provisional responses and the first 2xx
upstream, collects the other finals and sends the best of them when every
branch is done, cancels the pending branches when the call is answered or
cancelled, and runs Timer C.  It sends nothing itself: client transactions
go through the injected ``BranchSender`` and responses upstream through
``respond``, so the proxy keeps counting and logging what leaves it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.sip.message import Request, Response, make_response
from p2psip.sip.transaction import ClientTransaction, Hop, ServerTransaction, State, make_cancel

#: RFC 3261 s16.6 item 11: how long an INVITE branch may stay without a
#: final response (reset by each provisional one); more than 3 minutes.
TIMER_C_SECONDS = 181.0
#: After Timer C has cancelled a branch, how long to wait for its 487
#: before giving it up as a 408 (64*T1, like Timer B).
CANCEL_GRACE_SECONDS = 32.0
#: A target with a fallback that has not answered at all (not even 100
#: Trying, which a live proxy sends at once) within this long is given up
#: for the next: the flows of one phone instance (RFC 5626 s5.3), the
#: servers of one domain (RFC 3263 s4.3).  Waiting for Timer B would take 32 s.
FAILOVER_ANSWER_SECONDS = 2.0
#: Statuses that move a branch on to its next target: 503 (RFC 3263 s4.3)
#: and 430 Flow Failed (RFC 5626 s5.3).
FAILOVER_STATUSES = frozenset({503, 430})


class BranchSender(Protocol):
    """Starts client transactions: the transaction layer, as the context uses it."""

    def send_request(
        self, request: Request, target: Hop, on_response: Callable[[Response], None]
    ) -> ClientTransaction: ...


def best_response(responses: Sequence[Response]) -> Response:
    """RFC 3261 s16.7 item 6: the final response to send when no 2xx came."""
    six = [r for r in responses if r.status >= 600]
    if six:
        return six[0]
    best = min(
        responses, key=lambda r: (r.status // 100, r.status == 503, r.status == 408, r.status)
    )
    if best.status == 503:
        converted = best.copy()
        converted.status, converted.reason = 500, "Server Internal Error"
        return converted
    return best


def _flow_failed(branch: Branch) -> bool:
    """Whether a branch ended without any answer: a transport error or a timeout made here."""
    client = branch.transaction
    return (
        client is not None
        and client.gave_up
        and branch.final is not None
        and branch.final.status in (408, 503)
    )


def upstream(response: Response) -> Response:
    """The response as a proxy passes it on: its own Via removed (s16.7 item 3)."""
    forwarded = response.copy()
    forwarded.headers.pop_first_value("Via")
    return forwarded


@define(eq=False)
class Branch:
    """One outgoing copy of the request and what has come back on it."""

    transaction: ClientTransaction | None = None
    provisional_seen: bool = False
    #: A provisional response other than 100 came (the far end rings): no
    #: failover after that.  100 Trying is hop-by-hop and says only that the
    #: next proxy lives, which may still answer 430 or 503 for what lies behind it.
    ringing: bool = False
    #: Cancel as soon as a provisional response shows the branch is alive (s9.1).
    cancel_pending: bool = False
    final: Response | None = None
    #: Further targets for the same request, tried in turn when this one
    #: fails by transport error, timeout or 503 (RFC 3263 s4.3).
    fallbacks: list[tuple[Request, Hop]] = field(factory=list)
    #: Which attempt is current: responses to an abandoned one are ignored.
    attempt: int = 0
    #: Gives up the current attempt when it brings no answer in time (with fallbacks).
    answer_timer: IDelayedCall | None = None


class ResponseContext:
    """
    One forwarded request's branches and responses (s16.2).

    :param server: the server transaction the request arrived on.
    :param respond: sends a response upstream on that transaction.
    :param finished: called once when the context has nothing left to do:
        the final response has gone upstream and every branch has its own
        final.  The proxy drops the context then, not when the server
        transaction ends: that transaction stays 32 s for Timers J and L,
        and a context kept with it holds every copy and response of the
        request meanwhile (at 160 calls/s, most of a super-node's heap).
    """

    def __init__(
        self,
        server: ServerTransaction,
        clock: IReactorTime,
        sender: BranchSender,
        respond: Callable[[ServerTransaction, Response], None],
        finished: Callable[[], None] = lambda: None,
    ) -> None:
        self.server = server
        self.clock = clock
        self.sender = sender
        self._respond = respond
        self._finished = finished
        self.done = False
        self.branches: list[Branch] = []
        self.finals: list[Response] = []
        self.answered = False
        self.cancelled = False
        self._forking = False
        self._timer_c: IDelayedCall | None = None
        #: Every branch is a phone's SIP Outbound flow: when they all fail
        #: (transport error, no answer) the answer is 430 Flow Failed, so
        #: that the proxy upstream tries the phone's flow through another
        #: super-node (RFC 5626 s5.3).
        self.flows_only = False

    @property
    def is_invite(self) -> bool:
        return self.server.request.method == "INVITE"

    def fork(self, outgoing: Sequence[tuple[Request, Hop]]) -> None:
        """Send every prepared copy; answer at once if they all fail at once."""
        self.fork_with_failover([[each] for each in outgoing])

    def fork_with_failover(self, branches: Sequence[Sequence[tuple[Request, Hop]]]) -> None:
        """
        One branch per entry of ``branches``, each a list of prepared copies
        for the targets of one destination, best first: the first is sent,
        the next only when it fails (transport error, timeout, 503) before
        any provisional response.
        """
        self._forking = True
        if self.is_invite:
            self._timer_c = self.clock.callLater(TIMER_C_SECONDS, self._timer_c_fired)
        for attempts in branches:
            if not attempts:
                continue
            branch = Branch(fallbacks=list(attempts[1:]))
            self.branches.append(branch)
            self._start(branch, *attempts[0])
        self._forking = False
        self._maybe_finish()

    def _start(self, branch: Branch, request: Request, hop: Hop) -> None:
        self._stop_answer_timer(branch)
        branch.attempt += 1
        attempt = branch.attempt
        transaction = self.sender.send_request(request, hop, self._listener_for(branch, attempt))
        if branch.attempt == attempt:  # not already failed over, synchronously
            branch.transaction = transaction
            # The edge too: a phone's flow that brings no answer at all
            # (a phone sends 100 Trying within 200 ms, RFC 3261 s17.2.1) is
            # dead, and 430 now lets the proxy upstream try the phone's other
            # flow instead of waiting out Timer B.
            if branch.fallbacks or (self.flows_only and self.is_invite):
                branch.answer_timer = self.clock.callLater(
                    FAILOVER_ANSWER_SECONDS, self._no_answer, branch, attempt
                )

    def _no_answer(self, branch: Branch, attempt: int) -> None:
        branch.answer_timer = None
        if attempt == branch.attempt and branch.transaction is not None:
            branch.transaction.abandon()  # a 408 made here, which fails over

    @staticmethod
    def _stop_answer_timer(branch: Branch) -> None:
        if branch.answer_timer is not None and branch.answer_timer.active():
            branch.answer_timer.cancel()
        branch.answer_timer = None

    def _should_fail_over(self, branch: Branch, response: Response) -> bool:
        """RFC 3263 s4.3: a 503, or no answer at all, moves on to the next target."""
        if not branch.fallbacks or branch.ringing or self.cancelled or self.answered:
            return False
        if branch.cancel_pending:
            return False
        if response.status in FAILOVER_STATUSES:
            return True
        client = branch.transaction
        return response.status == 408 and client is not None and client.gave_up

    def cancel(self) -> None:
        """A CANCEL arrived for the request (s16.10): cancel every pending branch."""
        self.cancelled = True
        self._cancel_pending_branches()

    def stop(self) -> None:
        """The server transaction ended: no timer may fire for it any more."""
        self._stop_timer_c()
        for branch in self.branches:
            self._stop_answer_timer(branch)

    def _listener_for(self, branch: Branch, attempt: int) -> Callable[[Response], None]:
        def listener(response: Response) -> None:
            if attempt == branch.attempt:
                self._response_received(branch, response)

        return listener

    def _response_received(self, branch: Branch, response: Response) -> None:
        self._stop_answer_timer(branch)
        if response.status < 200:
            branch.provisional_seen = True
            branch.ringing = branch.ringing or response.status > 100
            if response.status > 100 and self._timer_c is not None and self._timer_c.active():
                self._timer_c.reset(TIMER_C_SECONDS)
            if branch.cancel_pending:
                branch.cancel_pending = False
                self._send_cancel(branch)
            if response.status > 100 and not self.answered:
                self._respond(self.server, upstream(response))
            return
        if self._should_fail_over(branch, response):
            self._start(branch, *branch.fallbacks.pop(0))
            return
        branch.final = response
        if 200 <= response.status < 300:
            # Every 2xx of an INVITE goes upstream (forked calls may be answered twice).
            if not self.answered or self.is_invite:
                self.answered = True
                self._respond(self.server, upstream(response))
            self._cancel_pending_branches()
            self._maybe_finish()
            return
        self.finals.append(response)
        if response.status >= 600 and not self.answered:
            self._cancel_pending_branches()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        """Send the best final response once every branch has one (s16.7 item 4)."""
        if self._forking or not all(branch.final is not None for branch in self.branches):
            return
        self._stop_timer_c()
        if not self.answered and self.finals:
            self.answered = True
            if self.flows_only and all(_flow_failed(branch) for branch in self.branches):
                self._respond(self.server, make_response(self.server.request, 430, "Flow Failed"))
            else:
                self._respond(self.server, upstream(best_response(self.finals)))
        if self.answered and not self.done:
            self.done = True
            self.stop()
            self._finished()

    def _stop_timer_c(self) -> None:
        if self._timer_c is not None and self._timer_c.active():
            self._timer_c.cancel()
        self._timer_c = None

    def _timer_c_fired(self) -> None:
        """
        RFC 3261 s16.8: a branch took too long.

        Branches that rang are cancelled and get a grace period for their
        487; the others end as if they had answered 408.
        """
        self._timer_c = None
        rang = False
        for branch in self.branches:
            if branch.final is not None:
                continue
            if branch.provisional_seen:
                self._send_cancel(branch)
                rang = True
            else:
                self._give_up(branch)
        if rang:
            self._timer_c = self.clock.callLater(CANCEL_GRACE_SECONDS, self._grace_expired)
        self._maybe_finish()

    def _grace_expired(self) -> None:
        self._timer_c = None
        for branch in self.branches:
            if branch.final is None:
                self._give_up(branch)
        self._maybe_finish()

    def _give_up(self, branch: Branch) -> None:
        assert branch.transaction is not None
        timeout = make_response(branch.transaction.request, 408, "Request Timeout")
        branch.final = timeout
        self.finals.append(timeout)

    def _cancel_pending_branches(self) -> None:
        if not self.is_invite:
            return
        for branch in self.branches:
            if branch.final is not None:
                continue
            if branch.provisional_seen:
                self._send_cancel(branch)
            else:
                branch.cancel_pending = True  # s9.1: CANCEL only after a provisional

    def _send_cancel(self, branch: Branch) -> None:
        client = branch.transaction
        if client is None or client.state is State.TERMINATED:
            return
        self.sender.send_request(make_cancel(client.request), client.hop, lambda response: None)
