"""
End-to-end RELOAD transactions: matching answers to requests, timeouts.

RFC 6940 s6.2.1: the originator keeps a transaction per request, matched
by the 64-bit transaction id, and gives up after the transaction timeout
(15 s by default).  Over TCP the link layer is reliable, so the only
retransmission worth doing end to end is over a *new* path: when the link
a request left on dies before the answer came back, the request is sent
again once (same transaction id, so a responder that saw both answers
twice and the second answer is simply unmatched).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.overlay.errors import RequestTimeout


class PendingRequest:
    """One outstanding request of ours."""

    def __init__(
        self, transaction_id: int, code: int, data: bytes, deferred: Deferred[Any]
    ) -> None:
        self.transaction_id = transaction_id
        self.code = code
        self.data = data
        self.deferred = deferred
        self.first_hop: int | None = None
        self.retries_left = 1
        self.sent_at = 0.0
        self.timeout_call: IDelayedCall | None = None


class TransactionTable:
    """Outstanding requests by transaction id, each with its timeout."""

    def __init__(self, clock: IReactorTime, timeout_seconds: float) -> None:
        self.clock = clock
        self.timeout_seconds = timeout_seconds
        self._pending: dict[int, PendingRequest] = {}

    def new_transaction_id(self) -> int:
        while True:
            candidate = secrets.randbits(64)
            if candidate and candidate not in self._pending:
                return candidate

    def add(self, transaction_id: int, code: int, data: bytes, describe: str) -> PendingRequest:
        """Track a request; its Deferred fails with RequestTimeout if unanswered."""
        deferred: Deferred[Any] = Deferred(lambda d: self._forget(transaction_id))
        pending = PendingRequest(transaction_id, code, data, deferred)
        pending.sent_at = self.clock.seconds()
        pending.timeout_call = self.clock.callLater(
            self.timeout_seconds, self._expire, transaction_id, describe
        )
        self._pending[transaction_id] = pending
        return pending

    def _forget(self, transaction_id: int) -> None:
        self.complete(transaction_id)

    def _expire(self, transaction_id: int, describe: str) -> None:
        pending = self._pending.pop(transaction_id, None)
        if pending is not None:
            pending.deferred.errback(
                RequestTimeout(f"no answer to {describe} within {self.timeout_seconds:g} s")
            )

    def complete(self, transaction_id: int) -> PendingRequest | None:
        """Remove and return the request an answer belongs to, if any."""
        pending = self._pending.pop(transaction_id, None)
        if (
            pending is not None
            and pending.timeout_call is not None
            and pending.timeout_call.active()
        ):
            pending.timeout_call.cancel()
        return pending

    def sent_via(self, first_hop: int) -> list[PendingRequest]:
        """Requests whose first hop was ``first_hop`` (for resending when it dies)."""
        return [p for p in self._pending.values() if p.first_hop == first_hop]

    def fail_all(self, make_error: Callable[[], Exception]) -> None:
        """Fail every outstanding request (the node is stopping)."""
        pending, self._pending = self._pending, {}
        for request in pending.values():
            if request.timeout_call is not None and request.timeout_call.active():
                request.timeout_call.cancel()
            request.deferred.errback(make_error())

    def __len__(self) -> int:
        return len(self._pending)
