"""
End-to-end RELOAD transactions: matching answers to requests, timeouts.

RFC 6940 s6.2.1: the originator keeps a transaction per request, matched
by the 64-bit transaction id, and gives up after the transaction timeout
(15 s by default).  Over TCP the link layer is reliable, so the only
retransmission worth doing end to end is over a *new* path: when the link
a request left on dies before the answer came back, or an answer came
from a node that cannot be responsible for the target, the request is
sent again once, signed anew under a new transaction id
(:meth:`TransactionTable.renumber`): a responder that saw the first copy
refuses a second one with the same id as a replay
(:mod:`p2psip.overlay.replay`).  The first id still matches: under churn
the first copy is often the one answered (a hop on its path routed it
around a dead peer while the second copy went into the same dead end).

Transaction ids carry our clock in their high half
(:func:`p2psip.overlay.replay.timed_transaction_id`), which is what lets
receivers bound their memory of the ids they have seen.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.overlay.errors import RequestTimeout
from p2psip.overlay.replay import timed_transaction_id


class PendingRequest:
    """One outstanding request of ours."""

    def __init__(
        self, transaction_id: int, code: int, data: bytes, deferred: Deferred[Any]
    ) -> None:
        self.transaction_id = transaction_id
        #: Every id it was sent under, the current one last (answers to any of them match).
        self.ids = [transaction_id]
        self.code = code
        self.data = data
        self.deferred = deferred
        self.first_hop: int | None = None
        #: The link the request last left on (answers to a hello must come back on it).
        self.first_link: Any = None
        #: The answer must come back over ``first_link`` (sent there to learn who is there).
        self.bound_to_link = False
        #: The destination whose owner must answer (None: anyone may, as for a hello).
        self.target: Any = None
        #: Signs the request anew under a given transaction id (for a resend).
        self.resign: Callable[[int], bytes] | None = None
        self.retries_left = 1
        self.sent_at = 0.0
        self.timeout_call: IDelayedCall | None = None
        #: Fires halfway through the timeout to send an unanswered request again.
        self.retry_call: IDelayedCall | None = None

    def cancel_timers(self) -> None:
        for call in (self.timeout_call, self.retry_call):
            if call is not None and call.active():
                call.cancel()


class TransactionTable:
    """Outstanding requests by transaction id, each with its timeout."""

    def __init__(self, clock: IReactorTime, timeout_seconds: float) -> None:
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self._pending: dict[int, PendingRequest] = {}
        #: The low half of the next transaction id; starts anywhere, so a
        #: restarted node does not repeat the ids of its last run.
        self._sequence = secrets.randbits(32)

    def new_transaction_id(self) -> int:
        """A transaction id no request of ours used lately: our clock and the next sequence number."""
        while True:
            self._sequence = (self._sequence + 1) & 0xFFFFFFFF
            candidate = timed_transaction_id(self.clock.seconds(), self._sequence)
            if candidate and candidate not in self._pending:
                return candidate

    def add(self, transaction_id: int, code: int, data: bytes, describe: str) -> PendingRequest:
        """Track a request; its Deferred fails with RequestTimeout if unanswered."""
        # The canceller and the timeout look the request up by its current
        # id: a resent request has been renumbered since.
        deferred: Deferred[Any] = Deferred(lambda d: self._forget(pending))
        pending = PendingRequest(transaction_id, code, data, deferred)
        pending.sent_at = self.clock.seconds()
        pending.timeout_call = self.clock.callLater(
            self.timeout_seconds, self._expire, pending, describe
        )
        self._pending[transaction_id] = pending
        return pending

    def _forget(self, pending: PendingRequest) -> None:
        self.complete(pending.transaction_id)

    def _expire(self, pending: PendingRequest, describe: str) -> None:
        if self._pending.get(pending.transaction_id) is pending:
            self._remove(pending)
            pending.cancel_timers()
            pending.deferred.errback(
                RequestTimeout(f"no answer to {describe} within {self.timeout_seconds:g} s")
            )

    def find(self, transaction_id: int) -> PendingRequest | None:
        """The outstanding request ``transaction_id`` names, left in the table."""
        return self._pending.get(transaction_id)

    def renumber(self, pending: PendingRequest, data_for: Callable[[int], bytes]) -> None:
        """
        Give an outstanding request a new transaction id (to send it again).

        ``data_for`` signs the request anew under the id it is given.  The
        timeout keeps running from the first send: the caller waits no
        longer for a resent request than for any other.  An answer to
        an earlier id still completes it.
        """
        new_id = self.new_transaction_id()
        pending.transaction_id = new_id
        pending.ids.append(new_id)
        pending.data = data_for(new_id)
        self._pending[new_id] = pending

    def _remove(self, pending: PendingRequest) -> None:
        for transaction_id in pending.ids:
            if self._pending.get(transaction_id) is pending:
                del self._pending[transaction_id]

    def complete(self, transaction_id: int) -> PendingRequest | None:
        """Remove and return the request an answer (to any id it was sent under) belongs to, if any."""
        pending = self._pending.get(transaction_id)
        if pending is not None:
            self._remove(pending)
            pending.cancel_timers()
        return pending

    def _unique(self) -> list[PendingRequest]:
        return list({id(p): p for p in self._pending.values()}.values())

    def sent_via(self, first_hop: int) -> list[PendingRequest]:
        """Requests whose first hop was ``first_hop`` (for resending when it dies)."""
        return [p for p in self._unique() if p.first_hop == first_hop]

    def fail_all(self, make_error: Callable[[], Exception]) -> None:
        """Fail every outstanding request (the node is stopping)."""
        pending = self._unique()
        self._pending = {}
        for request in pending:
            request.cancel_timers()
            request.deferred.errback(make_error())

    def __len__(self) -> int:
        return len(self._unique())
