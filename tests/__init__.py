"""
The suite.  Property tests run under one Hypothesis profile: the same
examples on every run (``derandomize``), nothing written to an example
database, and no deadline or "too slow" health check, which a loaded
CI machine would trip for no fault of the code.  ``HYPOTHESIS_PROFILE=
explore`` draws fresh random examples instead, to look for new failures.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "p2psip",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "p2psip"))
