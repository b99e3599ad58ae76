"""Tests for the shipped test support: the heap clock behaves like Clock."""

from twisted.trial.unittest import SynchronousTestCase

from p2psip.testing import HeapClock


class HeapClockTests(SynchronousTestCase):
    def test_calls_run_in_time_order(self) -> None:
        """Calls run in order of their time, ties in order of scheduling."""
        clock, ran = HeapClock(), []
        clock.callLater(2, ran.append, "b")
        clock.callLater(1, ran.append, "a")
        clock.callLater(2, ran.append, "c")
        clock.advance(1.5)
        self.assertEqual(ran, ["a"])
        clock.advance(1)
        self.assertEqual(ran, ["a", "b", "c"])

    def test_cancel_and_reset(self) -> None:
        """Cancelled calls never run; reset calls run at their new time only."""
        clock, ran = HeapClock(), []
        clock.callLater(1, ran.append, "cancelled").cancel()
        moved = clock.callLater(1, ran.append, "moved")
        moved.reset(5)
        clock.advance(2)
        self.assertEqual(ran, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(4)
        self.assertEqual(ran, ["moved"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_calls_scheduled_while_running(self) -> None:
        """A call scheduled for now by a running call runs in the same advance."""
        clock, ran = HeapClock(), []
        clock.callLater(1, lambda: clock.callLater(0, ran.append, "chained"))
        clock.advance(1)
        self.assertEqual(ran, ["chained"])
