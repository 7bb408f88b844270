"""Where the time of one training step goes: every ``np.matmul`` of the step timed (its GEMM flops,
its share of the step, the GFLOP/s reached there and alone on the same arrays), and cProfile's
view sorted by each function's own time."""

from __future__ import annotations

import contextlib
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def recorded_matmuls() -> Iterator[list[tuple[np.ndarray, np.ndarray, float]]]:
    """Inside the block every ``np.matmul(a, b)`` is timed: yields a list of (a, b, seconds)."""
    calls: list[tuple[np.ndarray, np.ndarray, float]] = []
    original = np.matmul

    def timed(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original(a, b, *args, **kwargs)
        calls.append((a, b, time.perf_counter() - start))
        return result

    np.matmul = timed
    try:
        yield calls
    finally:
        np.matmul = original


def matmul_flops(a: np.ndarray, b: np.ndarray) -> int:
    """2 M K N for each of the broadcast batch of (M, K) @ (K, N) products."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 1 or b.ndim == 1:
        return 2 * int(np.prod(np.broadcast_shapes(a.shape, b.shape)))
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return 2 * int(np.prod(batch, dtype=np.int64)) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def matmul_report(step: Callable[[], Any], step_ms: float, reps: int) -> dict[str, Any]:
    """Time every np.matmul of one step, then each distinct GEMM alone on the same arrays."""
    with recorded_matmuls() as calls:
        start = time.perf_counter()
        step()
        profiled_ms = 1e3 * (time.perf_counter() - start)
    shapes: dict[tuple, dict[str, Any]] = {}
    for a, b, seconds in calls:
        key = (a.shape, a.strides, b.shape, b.strides)
        entry = shapes.setdefault(
            key, {"a": a, "b": b, "calls": 0, "seconds": 0.0, "flops": matmul_flops(a, b)}
        )
        entry["calls"] += 1
        entry["seconds"] += seconds
    alone_seconds = 0.0
    rows = []
    for entry in shapes.values():
        a, b = entry["a"], entry["b"]
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            np.matmul(a, b)
            times.append(time.perf_counter() - start)
        alone = statistics.median(times)
        alone_seconds += alone * entry["calls"]
        rows.append(
            {
                "a": list(a.shape),
                "b": list(b.shape),
                "a_strided": not a.flags.c_contiguous,
                "b_strided": not b.flags.c_contiguous,
                "calls": entry["calls"],
                "gflop": entry["flops"] * entry["calls"] / 1e9,
                "ms_in_step": 1e3 * entry["seconds"],
                "gflops_in_step": entry["flops"] * entry["calls"] / entry["seconds"] / 1e9,
                "gflops_alone": entry["flops"] / alone / 1e9,
            }
        )
    rows.sort(key=lambda r: -r["ms_in_step"])
    flops = sum(matmul_flops(a, b) for a, b, _ in calls)
    seconds = sum(s for _, _, s in calls)
    return {
        "calls": len(calls),
        "gflop_per_step": flops / 1e9,
        "ms_in_step": 1e3 * seconds,
        "profiled_step_ms": profiled_ms,
        "share_of_step": 1e3 * seconds / profiled_ms,
        "gflops_in_step": flops / seconds / 1e9 if seconds else 0.0,
        "gflops_alone": flops / alone_seconds / 1e9 if alone_seconds else 0.0,
        "matmul_ms_alone": 1e3 * alone_seconds,
        "step_gflops_effective": flops / (step_ms / 1e3) / 1e9,
        "shapes": rows,
    }


def profile_text(step: Callable[[], Any], lines: int = 25) -> str:
    """cProfile of one call of ``step``, sorted by the time spent in each function itself."""
    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()
