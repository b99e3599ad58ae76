"""Tests for the per-key batching that lets the registrar coalesce refreshes of one AOR."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.coalesce import BatchFull, KeyedBatcher


class KeyedBatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runs: list[tuple[str, list[int]]] = []
        self.pending: list[Deferred[list[int]]] = []

        def run(key: str, items: list[int]) -> Deferred[list[int]]:
            self.runs.append((key, items))
            done: Deferred[list[int]] = Deferred()
            self.pending.append(done)
            return done.addCallback(lambda _: [item * 10 for item in items])

        self.batcher: KeyedBatcher[str, int, int] = KeyedBatcher(run, max_waiting=3)

    def test_items_arriving_during_a_batch_run_together_next(self) -> None:
        """While a batch runs, new items for its key wait, then run as one batch."""
        first = self.batcher.submit("a", 1)
        waiting = [self.batcher.submit("a", n) for n in (2, 3, 4)]
        self.assertEqual(self.runs, [("a", [1])])
        self.pending[0].callback(None)
        self.assertEqual(self.successResultOf(first), 10)
        self.assertEqual(self.runs, [("a", [1]), ("a", [2, 3, 4])])
        self.pending[1].callback(None)
        self.assertEqual([self.successResultOf(d) for d in waiting], [20, 30, 40])
        self.assertFalse(self.batcher.busy("a"))
        self.assertEqual((self.batcher.batches, self.batcher.items), (2, 4))

    def test_keys_are_independent(self) -> None:
        self.batcher.submit("a", 1)
        self.batcher.submit("b", 2)
        self.assertEqual(self.runs, [("a", [1]), ("b", [2])])

    def test_bounded(self) -> None:
        """Past max_waiting items for one key, submit fails with BatchFull."""
        self.batcher.submit("a", 1)
        for n in range(3):
            self.batcher.submit("a", n)
        self.failureResultOf(self.batcher.submit("a", 9), BatchFull)

    def test_failure_fails_the_batch_only(self) -> None:
        """A failed run fails its items; the next batch still runs."""
        first = self.batcher.submit("a", 1)
        second = self.batcher.submit("a", 2)
        self.pending[0].errback(RuntimeError("overlay down"))
        self.failureResultOf(first, RuntimeError)
        self.pending[1].callback(None)
        self.assertEqual(self.successResultOf(second), 20)

    def test_wrong_result_count_fails_the_batch(self) -> None:
        batcher: KeyedBatcher[str, int, int] = KeyedBatcher(lambda key, items: succeed([]))
        self.failureResultOf(batcher.submit("a", 1), ValueError)
        self.assertFalse(batcher.busy("a"))
