"""
One batch in flight per key; whatever arrives meanwhile goes into the next.

The registrar stores an AOR's whole binding list in the overlay on every
REGISTER that changes it, and REGISTERs for one AOR must be applied one
after another (two racing stores could lose a binding).  Applied strictly
one by one, a phone (or a benchmark, or an attacker) refreshing one AOR
faster than the overlay answers builds a queue that only grows: each
REGISTER waits for every store before it.  Yet only the last store
matters, since each one writes the complete list.

:class:`KeyedBatcher` keeps that ordering and drops the waste: while a
batch for a key runs, new items for that key wait; when it finishes, all of
them run as one batch (the registrar applies them in arrival order and
stores once).  A hot key thus costs one store per round trip of the
overlay, however fast it is refreshed.  The number waiting per key is
bounded; past it :class:`BatchFull` is the answer (the registrar sends 503
with ``Retry-After``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["BatchFull", "DEFAULT_MAX_WAITING", "KeyedBatcher"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

#: Items that may wait for one key's next batch.
DEFAULT_MAX_WAITING = 256


class BatchFull(Exception):
    """Too many items are already waiting for this key's next batch."""


class KeyedBatcher(Generic[K, T, R]):
    """
    Runs ``run(key, items)`` at most once at a time per key.

    ``run`` returns a Deferred that fires with one result per item, in
    order; :meth:`submit` hands each item's result back.  A failure of
    ``run`` fails every item of that batch.  Batches of different keys run
    independently.
    """

    def __init__(
        self,
        run: Callable[[K, list[T]], Deferred[list[R]]],
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        self._run = run
        self.max_waiting = max_waiting
        self._running: set[K] = set()
        self._waiting: dict[K, list[tuple[T, Deferred[R]]]] = {}
        #: Batches run and items they carried (the second over the first is
        #: how much coalescing saved).
        self.batches = 0
        self.items = 0

    def busy(self, key: K) -> bool:
        """Whether a batch for ``key`` is running now."""
        return key in self._running

    def submit(self, key: K, item: T) -> Deferred[R]:
        """Run ``item`` in the next batch for ``key``; fires with its result."""
        result: Deferred[R] = Deferred()
        if key not in self._running:
            self._start(key, [(item, result)])
            return result
        waiting = self._waiting.setdefault(key, [])
        if len(waiting) >= self.max_waiting:
            return fail(BatchFull(f"{len(waiting)} requests already wait for this key"))
        waiting.append((item, result))
        return result

    def _start(self, key: K, entries: list[tuple[T, Deferred[R]]]) -> None:
        self._running.add(key)
        self.batches += 1
        self.items += len(entries)
        running: Deferred[list[R]] = maybeDeferred(self._run, key, [item for item, _ in entries])
        running.addBoth(self._finished, key, entries)

    def _finished(
        self, outcome: list[R] | Failure, key: K, entries: list[tuple[T, Deferred[R]]]
    ) -> None:
        # Answer this batch first: whatever those answers submit for the
        # key waits behind the items that arrived before them.
        if not isinstance(outcome, Failure) and len(outcome) != len(entries):
            outcome = Failure(ValueError("a batch must give one result per item"))
        if isinstance(outcome, Failure):
            for _, result in entries:
                result.errback(outcome)
        else:
            for (_, result), value in zip(entries, outcome, strict=True):
                result.callback(value)
        following = self._waiting.pop(key, None)
        if following:
            self._start(key, following)
        else:
            self._running.discard(key)
