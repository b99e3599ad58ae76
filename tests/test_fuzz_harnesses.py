"""
The fuzz harnesses (``fuzz/``) accept their own seeds, so that ``make fuzz``
starts from inputs that pass, and a change that breaks a harness or a
codec's promise on a realistic input fails here, without atheris.
"""

from __future__ import annotations

import importlib

from twisted.trial.unittest import SynchronousTestCase

from fuzz import common
from fuzz.run import HARNESSES


class SeedTests(SynchronousTestCase):
    def test_every_harness_passes_its_seeds(self) -> None:
        """Each harness runs each of its seeds without a crash or a broken promise."""
        self.patch(common, "atheris", None)  # no coverage instrumentation (and its chatter)
        counts = {}
        for name in HARNESSES:
            harness = importlib.import_module(f"fuzz.{name}")
            seeds = list(harness.seeds())
            for seed in seeds:
                harness.test_one_input(seed)
            counts[name] = len(seeds)
        self.assertEqual([name for name, count in counts.items() if count == 0], [])
