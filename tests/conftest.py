"""Shared pytest setup: hypothesis profiles chosen by HYPOTHESIS_PROFILE (default: ci when CI is set, else dev).

dev: quick local runs; ci: derandomized and without deadlines (CI machines are noisy);
nightly: many more examples.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=20, deadline=None)
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("nightly", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
