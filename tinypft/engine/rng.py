"""One seeded random generator for everything random in tinypft: initialization, dropout, shuffling.

``manual_seed(n)`` resets it, so two runs with the same seed are bit-identical.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the global generator: every later draw (init, dropout, batches) repeats exactly."""
    global _generator
    _generator = np.random.default_rng(seed)


def get_rng() -> np.random.Generator:
    """The global generator. Draw from it; never store it (manual_seed replaces it)."""
    return _generator
