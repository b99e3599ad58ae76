"""Tests for the loop-lag probe: samples on a fake clock, smoothing, stop."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.loop_lag import LoopLagProbe


class LoopLagProbeTests(SynchronousTestCase):
    def test_on_time_loop_has_no_lag(self) -> None:
        """A clock that runs the probe's calls on time gives zero lag."""
        clock = Clock()
        probe = LoopLagProbe(clock, interval_seconds=0.1)
        probe.start()
        for _ in range(10):
            clock.advance(0.1)
        self.assertEqual(probe.samples, 10)
        self.assertAlmostEqual(probe.smoothed_seconds, 0.0)
        probe.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_late_call_is_measured_and_smoothed(self) -> None:
        """A call run 0.4 s late is one sample of 0.4 s, a quarter of it in the smoothed lag."""
        clock = Clock()
        probe = LoopLagProbe(clock, interval_seconds=0.1, smoothing=0.25)
        probe.start()
        clock.advance(0.5)
        self.assertAlmostEqual(probe.last_seconds, 0.4)
        self.assertAlmostEqual(probe.smoothed_seconds, 0.1)
        self.assertAlmostEqual(probe.percentile(0.99), 0.4)
        self.assertAlmostEqual(probe.max_seconds, 0.4)
        probe.stop()

    def test_stop_then_start_again(self) -> None:
        """A stopped probe leaves no call; started again it measures again."""
        clock = Clock()
        probe = LoopLagProbe(clock)
        probe.start()
        probe.stop()
        self.assertFalse(probe.running)
        probe.start()
        clock.advance(0.1)
        self.assertEqual(probe.samples, 1)
        probe.stop()
