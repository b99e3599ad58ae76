"""
How many wrong passwords one source, or one user, may try per minute.

A registrar that answers every REGISTER at once lets a password cracker
test thousands of guesses a minute.  This throttle counts failed Digest
logins in two token buckets, one per source address and one per user name
(the AOR the request claims, whether or not that user exists, so the
throttle itself tells nothing about who is registered).  While either
bucket is empty the registrar answers 403 without checking the password,
so guesses made then learn nothing.

The per-user bucket is larger than the per-source one: it stops a cracker
spread over many addresses, at the price that such a cracker can also keep
the real user out while it lasts; the per-source bucket alone would leave
the user's own phone, from its own address, unaffected.

It is a sans-IO object: the caller passes the clock in, and the tables are
bounded so that a flood of made-up sources or names cannot grow them.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime

from p2psip.util.token_bucket import TokenBuckets

#: Failed logins one source address may make per minute.
FAILURES_PER_SOURCE_PER_MINUTE = 20
#: Failed logins for one user name (from anywhere) per minute.
FAILURES_PER_USER_PER_MINUTE = 60
#: Sources and user names remembered at once; the least recently failed go first.
MAX_TRACKED_KEYS = 10_000


def _per_minute(capacity: int, max_keys: int) -> TokenBuckets:
    """``capacity`` failures, refilled over one minute."""
    return TokenBuckets(capacity / 60.0, capacity, max_keys)


class LoginThrottle:
    """
    Failed-login limits per source and per user.

    :param clock: only ``seconds()`` is read.
    """

    def __init__(
        self,
        clock: IReactorTime,
        failures_per_source: int = FAILURES_PER_SOURCE_PER_MINUTE,
        failures_per_user: int = FAILURES_PER_USER_PER_MINUTE,
        max_tracked: int = MAX_TRACKED_KEYS,
    ) -> None:
        if failures_per_source < 1 or failures_per_user < 1:
            raise ValueError("failed-login limits must be at least 1 per minute")
        self.clock = clock
        self.failures_per_source = failures_per_source
        self.failures_per_user = failures_per_user
        self._sources = _per_minute(failures_per_source, max_tracked)
        self._users = _per_minute(failures_per_user, max_tracked)
        #: Attempts answered without checking, since start.
        self.throttled = 0

    def blocked(self, source: str | None, user: str) -> bool:
        """Whether a login from ``source`` as ``user`` is to be refused unchecked now."""
        now = self.clock.seconds()
        blocked = not self._users.has_token(user, now) or (
            source is not None and not self._sources.has_token(source, now)
        )
        if blocked:
            self.throttled += 1
        return blocked

    def failed(self, source: str | None, user: str) -> None:
        """A login from ``source`` as ``user`` had the wrong password (or no such user)."""
        now = self.clock.seconds()
        self._users.spend(user, now)
        if source is not None:
            self._sources.spend(source, now)

    def tracked(self) -> int:
        """Sources and users with recent failures (for status pages)."""
        return len(self._sources) + len(self._users)
