"""
Token buckets by key: how often one source (or one user) may do something.

Every rate limit of the public roles has the same shape: each key (a
source address, a user name) owns a bucket of at most ``burst`` tokens that
refills at ``rate_per_second``; an action takes a token, and a key whose
bucket is empty must wait.  :class:`TokenBuckets` is that table, once, for
the login throttle, the SIP request limit and the mediator's control
messages.

It is a sans-IO object: every call is given ``now``, so tests drive it
with plain numbers or a fake clock.  The table is bounded: a full bucket
is forgotten (it says nothing a new bucket would not), and past
``max_keys`` the least recently used bucket goes, so a flood of made-up
keys cannot grow memory.  The price of that bound is that a key pushed out
comes back with a full bucket; ``max_keys`` is sized so that takes more
distinct sources than an attacker on one host has.
"""

from __future__ import annotations

from collections import OrderedDict

from attrs import define

#: Keys remembered at once unless the caller says otherwise.
MAX_KEYS = 10_000


@define
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """
    One token bucket per key.

    :param rate_per_second: tokens added to each bucket per second.
    :param burst: the most tokens a bucket holds (and a new bucket's fill).
    """

    def __init__(self, rate_per_second: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and room for one token")
        if max_keys < 1:
            raise ValueError("a token bucket table must hold at least one key")
        self.rate_per_second = float(rate_per_second)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _refilled(self, key: str, now: float) -> _Bucket | None:
        """The key's bucket brought up to ``now``, or None when it is full (forgotten)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_second)
        bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= self.burst:
            del self._buckets[key]
            return None
        return bucket

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._refilled(key, now)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def tokens(self, key: str, now: float) -> float:
        """The tokens ``key`` has now (``burst`` for a key not seen lately)."""
        bucket = self._refilled(key, now)
        return self.burst if bucket is None else bucket.tokens

    def has_token(self, key: str, now: float) -> bool:
        """Whether ``key`` could take a token now (nothing is taken)."""
        return self.tokens(key, now) >= 1.0

    def take(self, key: str, now: float) -> bool:
        """Take one token if there is one; False (nothing taken) when the bucket is empty."""
        bucket = self._bucket(key, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def spend(self, key: str, now: float) -> None:
        """Take a token whatever the bucket holds (it does not go below zero): a failure that counts."""
        bucket = self._bucket(key, now)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def seconds_until_token(self, key: str, now: float) -> float:
        """How long until ``key`` has a whole token again (0 when it has one)."""
        missing = 1.0 - self.tokens(key, now)
        return max(0.0, missing / self.rate_per_second)

    def __len__(self) -> int:
        return len(self._buckets)
