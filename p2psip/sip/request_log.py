"""
One info line a minute about the SIP requests answered, instead of one each.

A super-node answering a thousand REGISTERs a second cannot write a log
line for each: formatting and writing them costs as much CPU as the
requests, and the journal fills with lines nobody reads.  The per-request
lines are at debug level (``twist --log-level=debug`` for a short
session); at info level :class:`RequestSummary` writes, at most once per
interval, how many final responses of each method and status went out
since its last line::

    SIP in the last 60 s: INVITE 200 x812, 480 x3; REGISTER 200 x55310, 401 x55310

The counters since start are in ``/metrics``
(``p2psip_sip_final_responses_total``).  The line is written when a
response is noted after the interval ran out, so a node with no traffic
writes nothing; :meth:`RequestSummary.flush` writes what is left (the
service calls it when it stops).
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IReactorTime

from p2psip.util.logs import Logger

__all__ = ["SUMMARY_INTERVAL_SECONDS", "RequestSummary"]

SUMMARY_INTERVAL_SECONDS = 60.0


class RequestSummary:
    """Counts final responses by (method, status) and logs them once per interval."""

    log = Logger()

    def __init__(self, clock: IReactorTime, interval_seconds: float = SUMMARY_INTERVAL_SECONDS):
        self.clock = clock
        self.interval_seconds = interval_seconds
        self._counts: Counter[tuple[str, int]] = Counter()
        self._since = clock.seconds()

    def note(self, method: str, status: int) -> None:
        """A final response to a ``method`` request went out (``method`` from a bounded set)."""
        self._counts[(method, status)] += 1
        if self.clock.seconds() - self._since >= self.interval_seconds:
            self.flush()

    def flush(self) -> None:
        """Log what was counted since the last line (nothing when nothing was)."""
        now = self.clock.seconds()
        if self._counts:
            self.log.info(
                "SIP in the last {seconds:.0f} s: {summary}",
                seconds=now - self._since,
                summary=self.describe(),
                counts=dict(self._counts),
            )
        self._counts.clear()
        self._since = now

    def describe(self) -> str:
        """``INVITE 200 x3, 480 x1; REGISTER 200 x9``: methods by name, statuses in order."""
        by_method: dict[str, list[str]] = {}
        for (method, status), count in sorted(self._counts.items()):
            by_method.setdefault(method, []).append(f"{status} x{count}")
        return "; ".join(f"{method} {', '.join(parts)}" for method, parts in by_method.items())
