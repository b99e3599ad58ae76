"""The jittered periodic loop."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.periodic import JitteredLoop


class JitteredLoopTests(SynchronousTestCase):
    def test_rounds_are_jittered_around_the_period(self) -> None:
        """Each round comes 0.75 to 1.25 periods after the last; stop cancels the next."""
        clock = Clock()
        times: list[float] = []
        loop = JitteredLoop(
            clock, 10.0, lambda: times.append(clock.seconds()), random.Random(1), "test"
        )
        loop.start()
        loop.start()  # a no-op while running
        for _ in range(200):
            clock.advance(1)
        gaps = [b - a for a, b in zip([0.0, *times], times)]
        self.assertGreater(len(times), 15)
        self.assertTrue(all(7.0 <= gap <= 13.0 for gap in gaps), gaps)
        self.assertGreater(len(set(round(gap) for gap in gaps)), 1)
        loop.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failing_round_is_logged_and_the_loop_goes_on(self) -> None:
        """A round that raises is logged; the next round still comes."""
        clock = Clock()
        calls: list[int] = []

        def round_() -> None:
            calls.append(1)
            raise RuntimeError("boom")

        loop = JitteredLoop(clock, 1.0, round_, random.Random(2), "test")
        loop.start()
        clock.advance(1.3)
        clock.advance(1.3)
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        loop.stop()

    def test_stop_inside_a_round(self) -> None:
        """A round that stops its own loop is the last one."""
        clock = Clock()
        loop: JitteredLoop
        calls: list[int] = []

        def round_() -> None:
            calls.append(1)
            loop.stop()

        loop = JitteredLoop(clock, 1.0, round_, random.Random(3), "test")
        loop.start()
        clock.advance(5)
        self.assertEqual((calls, clock.getDelayedCalls()), ([1], []))
