"""The failed-login throttle on its own, on a fake clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.login_throttle import LoginThrottle


class LoginThrottleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.throttle = LoginThrottle(self.clock, failures_per_source=3, failures_per_user=5)

    def fail(self, times: int, source: str | None = "192.0.2.1", user: str = "sip:a@x") -> None:
        for _ in range(times):
            self.throttle.failed(source, user)

    def test_source_limit_refills_over_a_minute(self) -> None:
        """Three failures block the source; 20 s later one more try is allowed."""
        self.fail(3)
        self.assertTrue(self.throttle.blocked("192.0.2.1", "sip:a@x"))
        self.assertFalse(self.throttle.blocked("192.0.2.2", "sip:a@x"))
        self.clock.advance(20)
        self.assertFalse(self.throttle.blocked("192.0.2.1", "sip:a@x"))
        self.fail(1)
        self.assertTrue(self.throttle.blocked("192.0.2.1", "sip:a@x"))

    def test_user_limit_across_sources(self) -> None:
        """Five failures for one user from five addresses block that user everywhere."""
        for i in range(5):
            self.fail(1, source=f"192.0.2.{i}")
        self.assertTrue(self.throttle.blocked("198.51.100.1", "sip:a@x"))
        self.assertFalse(self.throttle.blocked("198.51.100.1", "sip:b@x"))

    def test_unknown_source_counts_only_the_user(self) -> None:
        """A flow without an address is limited by the user bucket alone."""
        self.fail(4, source=None)
        self.assertFalse(self.throttle.blocked(None, "sip:a@x"))
        self.fail(1, source=None)
        self.assertTrue(self.throttle.blocked(None, "sip:a@x"))

    def test_tables_are_bounded(self) -> None:
        """A flood of made-up sources and names keeps at most max_tracked of each."""
        throttle = LoginThrottle(self.clock, max_tracked=100)
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}", f"sip:user{i}@x")
        self.assertEqual(throttle.tracked(), 200)

    def test_recovered_keys_are_forgotten(self) -> None:
        """Once a bucket is full again it is dropped."""
        self.fail(1)
        self.assertEqual(self.throttle.tracked(), 2)
        self.clock.advance(60)
        self.assertFalse(self.throttle.blocked("192.0.2.1", "sip:a@x"))
        self.assertEqual(self.throttle.tracked(), 0)

    def test_limits_must_be_positive(self) -> None:
        self.assertRaises(ValueError, LoginThrottle, self.clock, failures_per_source=0)
