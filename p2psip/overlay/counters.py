"""
Event counters of one node, shared by its parts.

Each part counts what it sees (``messages_forwarded``, ``bad_signatures``,
``peers_rejoined``...); ``/status`` shows them and ``/metrics`` exports
them as counters.  Names are plain words joined by underscores.
"""

from __future__ import annotations


class Counters(dict[str, int]):
    """Counts by event name; absent means zero."""

    def count(self, name: str, amount: int = 1) -> None:
        self[name] = self.get(name, 0) + amount
