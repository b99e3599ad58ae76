"""
Garbage-collector settings for long-running servers.

A full (oldest-generation) collection walks every tracked object; with a
few hundred thousand objects that stalls the event loop for 0.1-0.8 s, and
a UDP server loses or delays every datagram that arrives meanwhile.  Two
remedies, both cheap:

* ``gc.freeze()`` once start-up is over moves everything allocated so far
  (modules, classes, the keys, caches) out of the collector's sight, so
  collections only walk what the running server creates.
* Higher thresholds make young collections rarer; the cyclic garbage a
  request creates is small, so collecting it less often costs little
  memory.

Measured on a Twisted registrar: p99 REGISTER latency at 2000/s fell from
54-70 ms to 5 ms with ``gc.freeze()`` (the bench/ figures say more).
"""

from __future__ import annotations

import gc

from twisted.logger import Logger

#: Young-generation threshold (Python's default is 700 allocations).
GENERATION0_THRESHOLD = 10_000
GENERATION1_THRESHOLD = 20
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
