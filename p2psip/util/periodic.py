"""
Periodic work with jitter, on an injected clock.

Protocol maintenance (Chord stabilisation, keepalives) runs every N
seconds; peers started together would all fire at once if every period
were exact, so each round waits ``N * uniform(0.75, 1.25)``.  The random
generator is injected so that a simulation with a seeded one repeats
exactly.  ``twisted.internet.task.LoopingCall`` has no jitter, which is
why this small loop exists.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.util.logs import Logger

#: Each round waits between (1 - JITTER) and (1 + JITTER) times the period.
JITTER = 0.25


class JitteredLoop:
    """Call ``function`` about every ``period_seconds`` until stopped; a failing round is logged."""

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        period_seconds: float,
        function: Callable[[], None],
        rng: random.Random,
        name: str,
    ) -> None:
        self.clock = clock
        self.period_seconds = period_seconds
        self.function = function
        self.rng = rng
        self.name = name
        self._call: IDelayedCall | None = None

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        """Schedule the first round (one jittered period from now); a no-op when running."""
        if self._call is None:
            self._schedule()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        delay = self.period_seconds * (1 - JITTER + 2 * JITTER * self.rng.random())
        self._call = self.clock.callLater(delay, self._round)

    def _round(self) -> None:
        try:
            self.function()
        except Exception:
            self.log.failure("{name} round failed", name=self.name)
        if self._call is not None:
            self._schedule()
