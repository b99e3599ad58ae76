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
