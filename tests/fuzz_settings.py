"""Shared hypothesis settings: modest by default, deeper with CAMLT_FUZZ_EXAMPLES=N."""

import os

from hypothesis import HealthCheck, settings

DEEP = int(os.environ.get("CAMLT_FUZZ_EXAMPLES", "0"))


def examples(default: int) -> settings:
    """``default`` generated inputs per property (or CAMLT_FUZZ_EXAMPLES), no deadline."""
    return settings(
        max_examples=DEEP or default,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
