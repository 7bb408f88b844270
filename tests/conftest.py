"""Shared test setup: every test starts from the same global state and leaves it as it found it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tinypft.engine import fused_kernels_enabled, manual_seed, set_default_dtype, set_fused_kernels

MEASUREMENTS = pytest.StashKey[list[str]]()


@pytest.fixture(autouse=True)
def _fresh_engine_state() -> Iterator[None]:
    """Seed 0 before each test; restore float32 as the default dtype and the fused setting after it."""
    fused = fused_kernels_enabled()
    manual_seed(0)
    yield
    set_default_dtype(np.float32)
    set_fused_kernels(fused)
    manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[MEASUREMENTS] = []


@pytest.fixture(scope="session")
def measurements(pytestconfig: pytest.Config) -> list[str]:
    """Lines to print in the terminal summary (numbers worth quoting, such as the worst error seen)."""
    return pytestconfig.stash[MEASUREMENTS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(MEASUREMENTS, [])
    if lines:
        terminalreporter.section("measurements")
        for line in lines:
            terminalreporter.write_line(line)
