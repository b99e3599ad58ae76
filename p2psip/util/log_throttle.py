"""
At most one log line per source per interval, with a count of the lines held back.

Refusals an operator should hear about (a wrong admin token, a foreign
Host header) are also what an attacker can make by the thousand.  A
:class:`LogThrottle` lets the first one from a source be logged, counts the
rest for ``interval_seconds``, and hands that count to the next line it
lets through, so the log says how many there were without one line each.

The table is bounded: when it holds ``max_sources`` sources logged within
the interval, further new sources share one entry (:data:`OTHER_SOURCES`),
so a flood from made-up addresses writes at most ``max_sources + 1`` lines
per interval.  A count held back for a source that does not come back is
kept until its room is needed, and then it is dropped unreported.  It is
a plain object on an injected clock, like the login throttle.
"""

from __future__ import annotations

from collections import OrderedDict

from attrs import define
from twisted.internet.interfaces import IReactorTime

#: The entry new sources share while the table is full.
OTHER_SOURCES = "other sources"
LOG_INTERVAL_SECONDS = 60.0
MAX_SOURCES = 100


@define
class _Entry:
    logged_at: float
    held_back: int = 0


class LogThrottle:
    """Decides, per source, whether an event is logged now or only counted."""

    def __init__(
        self,
        clock: IReactorTime,
        interval_seconds: float = LOG_INTERVAL_SECONDS,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.clock = clock
        self.interval_seconds = interval_seconds
        self.max_sources = max_sources
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def admit(self, source: str) -> int | None:
        """
        None when the event should only be counted; otherwise log it now,
        mentioning the returned number of events held back since the last
        line for ``source`` (0 when there were none).
        """
        now = self.clock.seconds()
        if source not in self._entries and not self._make_room(now - self.interval_seconds):
            source = OTHER_SOURCES
        entry = self._entries.get(source)
        if entry is None:
            self._entries[source] = _Entry(logged_at=now)
            return 0
        if now - entry.logged_at < self.interval_seconds:
            entry.held_back += 1
            return None
        held_back = entry.held_back
        entry.logged_at, entry.held_back = now, 0
        self._entries.move_to_end(source)
        return held_back

    def _make_room(self, cutoff: float) -> bool:
        """
        Whether a new source fits: entries whose interval ended before
        ``cutoff`` and that hold nothing back go first, then (when the
        table is still full) the oldest such entry whatever it holds.
        """
        expired = []
        for source, entry in self._entries.items():
            if entry.logged_at > cutoff:
                break  # oldest first: the rest are newer
            expired.append((source, entry.held_back))
        for source, held_back in expired:
            if held_back == 0:
                del self._entries[source]
        if len(self._entries) < self.max_sources:
            return True
        for source, held_back in expired:
            if held_back:
                del self._entries[source]
                return True
        return False
