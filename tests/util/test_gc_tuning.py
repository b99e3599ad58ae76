"""The garbage-collector settings a super-node applies after start-up."""

from __future__ import annotations

import gc

from twisted.trial.unittest import SynchronousTestCase

from p2psip.util import gc_tuning


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
