"""Shared hypothesis settings: modest and derandomized by default (the same examples on every run,
so CI cannot fail or pass by chance); ``make fuzz`` (CAMLT_FUZZ_EXAMPLES=N) draws N fresh ones."""

import os

from hypothesis import HealthCheck, settings

DEEP = int(os.environ.get("CAMLT_FUZZ_EXAMPLES", "0"))


def examples(default: int) -> settings:
    """``default`` generated inputs per property (or CAMLT_FUZZ_EXAMPLES), no deadline."""
    return settings(
        max_examples=DEEP or default,
        derandomize=not DEEP,
        database=None if not DEEP else settings.default.database,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
