"""The per-source log throttle, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.log_throttle import OTHER_SOURCES, LogThrottle


class LogThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LogThrottle(self.clock, interval_seconds=60.0, max_sources=3)

    def test_first_event_is_logged(self) -> None:
        """A source's first event is logged, with nothing held back."""
        self.assertEqual(self.throttle.admit("192.0.2.1"), 0)

    def test_events_within_the_interval_are_counted(self) -> None:
        """Further events within the interval are held back; the next line reports them."""
        throttle = self.throttle
        self.assertEqual(throttle.admit("192.0.2.1"), 0)
        for _ in range(5):
            self.clock.advance(10)
            self.assertIsNone(throttle.admit("192.0.2.1"))
        self.clock.advance(10)  # 60 s after the first line
        self.assertEqual(throttle.admit("192.0.2.1"), 5)
        self.assertIsNone(throttle.admit("192.0.2.1"))
        self.clock.advance(60)
        self.assertEqual(throttle.admit("192.0.2.1"), 1)

    def test_sources_are_independent(self) -> None:
        """One source's flood does not silence another source."""
        self.throttle.admit("192.0.2.1")
        self.assertIsNone(self.throttle.admit("192.0.2.1"))
        self.assertEqual(self.throttle.admit("192.0.2.2"), 0)

    def test_count_is_kept_after_a_quiet_spell(self) -> None:
        """A source that comes back after a long pause gets the count it left behind."""
        self.throttle.admit("192.0.2.1")
        self.throttle.admit("192.0.2.1")
        self.throttle.admit("192.0.2.1")
        self.clock.advance(3600)
        self.assertEqual(self.throttle.admit("192.0.2.1"), 2)

    def test_full_table_folds_new_sources_together(self) -> None:
        """With the table full of recent sources, new ones share one entry: one line, then counts."""
        for host in ("a", "b", "c"):
            self.assertEqual(self.throttle.admit(host), 0)
        self.assertEqual(self.throttle.admit("d"), 0)
        self.assertIsNone(self.throttle.admit("e"))
        self.assertIsNone(self.throttle.admit("f"))
        self.clock.advance(60)
        # The interval is over: the quiet entries make room again.
        self.assertEqual(self.throttle.admit("g"), 0)
        self.assertEqual(self.throttle.admit(OTHER_SOURCES), 2)

    def test_expired_counts_give_way_when_room_is_needed(self) -> None:
        """An old entry holding a count is dropped for a new source only when the table is full."""
        for host in ("a", "b", "c"):
            self.throttle.admit(host)
            self.throttle.admit(host)  # each holds one back
        self.clock.advance(61)
        self.assertEqual(self.throttle.admit("d"), 0)
        self.assertEqual(self.throttle.admit("b"), 1)
        self.assertEqual(self.throttle.admit("c"), 1)
        self.assertEqual(self.throttle.admit("a"), 0)  # its room went to d

    def test_lines_per_interval_are_bounded(self) -> None:
        """A flood from ever new sources logs at most max_sources + 1 lines per interval."""
        logged = sum(
            1 for index in range(10_000) if self.throttle.admit(f"198.51.100.{index}") is not None
        )
        self.assertEqual(logged, 4)
