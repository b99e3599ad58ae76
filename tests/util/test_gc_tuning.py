"""The garbage-collector settings a super-node applies after start-up."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util import gc_tuning
from p2psip.util.gc_tuning import GcPauses


class GcTuningTests(SynchronousTestCase):
    def test_thresholds(self) -> None:
        """tune_for_server sets the documented thresholds and hands back the old ones."""
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.assertEqual(gc_tuning.tune_for_server(), before)
        self.assertEqual(
            gc.get_threshold(),
            (
                gc_tuning.GENERATION0_THRESHOLD,
                gc_tuning.GENERATION1_THRESHOLD,
                gc_tuning.GENERATION2_THRESHOLD,
            ),
        )

    def test_freeze(self) -> None:
        """freeze_after_start_up moves the surviving objects out of the collector's sight."""
        self.addCleanup(gc.unfreeze)
        frozen = gc_tuning.freeze_after_start_up()
        self.assertGreater(frozen, 0)
        # Frozen objects can still be freed by reference counting (the log
        # event of the call itself, say), so the count can only shrink.
        self.assertLessEqual(gc.get_freeze_count(), frozen)
        self.assertGreater(gc.get_freeze_count(), 0)


class GcPausesTests(SynchronousTestCase):
    """Collections timed by generation through gc.callbacks, long ones warned of."""

    def test_counts_and_times_by_generation(self) -> None:
        ticks = iter([1.0, 1.01, 5.0, 5.5, 6.0, 6.75, 90.0, 91.0])
        clock = Clock()
        pauses = GcPauses(clock, long_pause_seconds=0.25, timer=lambda: next(ticks))
        warnings: list[dict[str, object]] = []
        self.patch(gc_tuning.log, "observer", warnings.append)

        def collection(generation: int) -> None:
            pauses._callback("start", {"generation": generation})
            pauses._callback("stop", {"generation": generation})

        collection(0)
        collection(2)
        collection(2)  # a second long one within the minute: counted, not logged
        status = pauses.status()
        self.assertEqual(status["collections"], [1, 0, 2])
        self.assertEqual(status["longest_seconds"], [0.01, 0.0, 0.75])
        self.assertEqual(status["long_pauses"], 2)
        self.assertEqual(len(warnings), 1)
        self.assertIn("garbage collection stalled", str(warnings[0]["log_format"]))
        clock.advance(61)
        collection(1)
        self.assertEqual((pauses.status()["long_pauses"], len(warnings)), (3, 2))

    def test_installed_it_sees_real_collections(self) -> None:
        pauses = GcPauses(Clock())
        pauses.install()
        self.addCleanup(pauses.uninstall)
        gc.collect()
        # Automatic collections may run too; the explicit full one is there.
        self.assertGreaterEqual(pauses.status()["collections"][2], 1)
        pauses.uninstall()
        self.assertNotIn(pauses._callback, gc.callbacks)
