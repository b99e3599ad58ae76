"""Tests for the per-key token buckets every rate limit shares."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.token_bucket import TokenBuckets


class TokenBucketsTests(SynchronousTestCase):
    def test_burst_then_rate(self) -> None:
        """A key takes its burst at once, then one token per 1/rate seconds."""
        buckets = TokenBuckets(rate_per_second=2.0, burst=3)
        self.assertEqual([buckets.take("a", 0.0) for _ in range(4)], [True, True, True, False])
        self.assertFalse(buckets.take("a", 0.4))
        self.assertTrue(buckets.take("a", 0.5))
        self.assertFalse(buckets.take("a", 0.5))

    def test_keys_are_separate(self) -> None:
        """One key's empty bucket leaves another's full."""
        buckets = TokenBuckets(1.0, 1)
        self.assertTrue(buckets.take("a", 0.0))
        self.assertFalse(buckets.take("a", 0.0))
        self.assertTrue(buckets.take("b", 0.0))

    def test_seconds_until_token(self) -> None:
        """An empty bucket says how long until its next token; a full one says 0."""
        buckets = TokenBuckets(0.5, 1)
        self.assertEqual(buckets.seconds_until_token("a", 0.0), 0.0)
        buckets.take("a", 0.0)
        self.assertAlmostEqual(buckets.seconds_until_token("a", 0.5), 1.5)

    def test_spend_counts_even_when_empty(self) -> None:
        """spend() takes a token whether or not there is one, and never goes below zero."""
        buckets = TokenBuckets(1.0, 2)
        for _ in range(5):
            buckets.spend("a", 0.0)
        self.assertEqual(buckets.tokens("a", 0.0), 0.0)
        self.assertFalse(buckets.has_token("a", 0.5))
        self.assertTrue(buckets.has_token("a", 1.0))

    def test_full_buckets_are_forgotten(self) -> None:
        """A bucket that refilled completely leaves the table."""
        buckets = TokenBuckets(1.0, 2)
        buckets.take("a", 0.0)
        self.assertEqual(len(buckets), 1)
        self.assertTrue(buckets.has_token("a", 10.0))
        self.assertEqual(len(buckets), 0)

    def test_table_is_bounded(self) -> None:
        """Past max_keys the least recently used key is dropped, so made-up keys cannot grow it."""
        buckets = TokenBuckets(1.0, 1, max_keys=3)
        for key in "abcde":
            buckets.take(key, 0.0)
        self.assertEqual(len(buckets), 3)
        self.assertTrue(buckets.take("a", 0.0))  # forgotten: a fresh bucket
        self.assertFalse(buckets.take("e", 0.0))

    def test_clock_going_back_does_not_mint_tokens(self) -> None:
        """A time earlier than the last update adds nothing."""
        buckets = TokenBuckets(1.0, 1)
        buckets.take("a", 10.0)
        self.assertFalse(buckets.take("a", 5.0))

    def test_bad_settings(self) -> None:
        """A zero rate, a burst under one token or an empty table are refused."""
        self.assertRaises(ValueError, TokenBuckets, 0.0, 1)
        self.assertRaises(ValueError, TokenBuckets, 1.0, 0.5)
        self.assertRaises(ValueError, TokenBuckets, 1.0, 1, 0)
