"""
Garbage-collector settings for long-running servers.

A full (oldest-generation) collection walks every tracked object; with a
few hundred thousand objects that stalls the event loop for 0.1-0.8 s, and
a UDP server loses or delays every datagram that arrives meanwhile.  Two
remedies, both cheap:

* ``gc.freeze()`` once start-up is over moves everything allocated so far
  (modules, classes, the keys, caches) out of the collector's sight, so
  collections only walk what the running server creates.
* The thresholds: a large first one makes young collections rare, and a
  second one of 2 keeps the middle generation small.  A registrar's state
  (bindings, timers) is long-lived, so nearly everything a young
  collection sees survives into the middle generation; with Python's
  default second threshold (10) or more, that generation grows to a few
  hundred thousand objects and each of its collections stalls for 70-120
  ms.  Full collections are rare with a large third threshold.

Measured with SIPp registering 60 000 new AORs at 2000/s on one super-node
(collections longer than 5 ms): Python's defaults (700, 10, 10) gave full
collections of up to 2.2 s (12 s in all) and retransmissions;
(10000, 20, 100) gave middle-generation collections of 70-116 ms;
(10000, 2, 100) gave none longer than 17 ms, and still none longer than
24 ms after 130 000 AORs.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime

from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

#: Young-generation threshold (Python's default is 700 allocations).
GENERATION0_THRESHOLD = 10_000
GENERATION1_THRESHOLD = 2
GENERATION2_THRESHOLD = 100

log = Logger()


def tune_for_server() -> tuple[int, int, int]:
    """Raise the collection thresholds; returns the previous ones (to restore in tests)."""
    previous = gc.get_threshold()
    gc.set_threshold(GENERATION0_THRESHOLD, GENERATION1_THRESHOLD, GENERATION2_THRESHOLD)
    return previous


def freeze_after_start_up() -> int:
    """
    Collect once, then move every surviving object to the permanent generation.

    Call when start-up allocations are done (listeners open, node joined).
    :returns: how many objects are now frozen.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: {frozen} start-up objects frozen", frozen=frozen)
    return frozen


#: A collection at least this long is logged as a warning (at most once a minute).
LONG_PAUSE_SECONDS = 0.25


class GcPauses:
    """
    Times every garbage collection, by generation (``gc.callbacks``).

    A collection runs inside whatever code allocated last, so it stalls
    the event loop for as long as it takes; the loop-lag probe sees the
    stall but not its cause.  This says how many collections of each
    generation ran, how long they took in all and at most, and warns
    when one took :data:`LONG_PAUSE_SECONDS` or more, so that an
    operator who sees 503s for loop lag can tell a full collection (a
    large heap) from a busy loop.  ``/status`` shows it under
    ``overload.gc``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        long_pause_seconds: float = LONG_PAUSE_SECONDS,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.long_pause_seconds = long_pause_seconds
        #: Measures a collection (wall time, fine-grained); ``clock`` spaces the warnings.
        self.timer = timer
        self._warnings = LogThrottle(clock)
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self.long_pauses = 0
        self._started: float | None = None

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self.timer()
            return
        if self._started is None:
            return
        took = self.timer() - self._started
        self._started = None
        generation = min(max(int(info.get("generation", 2)), 0), 2)
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)
        if took < self.long_pause_seconds:
            return
        self.long_pauses += 1
        if self._warnings.admit("gc") is not None:
            log.warn(
                "a generation-{generation} garbage collection stalled the event loop for "
                "{seconds:.2f} s ({count} such since start): the heap is large; see "
                "overload.gc in /status",
                generation=generation,
                seconds=took,
                count=self.long_pauses,
            )

    def status(self) -> dict[str, Any]:
        """Collections, seconds in all and the longest, per generation (0, 1, 2)."""
        return {
            "collections": list(self.collections),
            "seconds": [round(v, 4) for v in self.seconds],
            "longest_seconds": [round(v, 4) for v in self.longest],
            "long_pauses": self.long_pauses,
        }
