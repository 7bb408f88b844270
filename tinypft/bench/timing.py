"""Timing ``tinypft bench``'s work: training steps as closures (tinypft's and PyTorch's), their
medians timed in alternation, the peak memory of one step, and greedy generation with and without
the key/value cache."""

from __future__ import annotations

import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine import manual_seed, use_fused_kernels
from ..model import GPT
from ..model.decode import use_fast_decode
from ..optim import AdamW
from ..train.generate import generate
from .workload import BenchSetup


def time_steps(steps: dict[str, Callable[[], Any]], n: int, warmup: int) -> dict[str, list[float]]:
    """ms of each of ``n`` calls of every step, the steps taken in turn (a, b, a, b, ...) so that a
    change in the machine's load affects them alike; ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def paired_median_ms(steps: dict[str, Callable[[], Any]], n: int, warmup: int) -> dict[str, float]:
    """Median ms of each step, timed in turn (``time_steps``)."""
    return {name: statistics.median(t) for name, t in time_steps(steps, n, warmup).items()}


def composed(step: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` run on the composed reference path (``use_fused_kernels(False)``)."""

    def run() -> Any:
        with use_fused_kernels(False):
            return step()

    return run


def tinypft_step(model: Any, ids: np.ndarray) -> Callable[[], float]:
    """One training step (zero_grad, forward, loss, backward, AdamW) as a closure returning the loss."""
    optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()

    def step() -> float:
        optimizer.zero_grad()
        out = model(ids)
        loss = model.lm_loss(out.logits, ids)
        loss.backward()
        optimizer.step()
        return float(loss.data)

    return step


def torch_step(twin: Any, ids: np.ndarray) -> Callable[[], float]:
    """The same step for a PyTorch twin (``build_torch``): ``torch.optim.AdamW`` on what it trains."""
    import torch

    optimizer = torch.optim.AdamW(
        [p for p in twin.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01
    )
    tids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    twin.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = twin.loss(tids)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def peak_step_bytes(step: Callable[[], Any]) -> int:
    """The peak of the memory allocated during one call of ``step`` (tracemalloc; NumPy reports to it)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def generation_report(
    setup: BenchSetup, new_tokens: int, batch: int = 1, prompt_len: int = 16
) -> dict[str, Any]:
    """Greedy tokens per second (all rows together) for ``batch`` prompts, with and without the cache.

    "cached" decodes with the fast step (``tinypft.model.decode``), "cached_general" with the cache
    but on the general autograd path (``use_fast_decode(False)``), "uncached" recomputes everything.
    """
    manual_seed(0)
    model = GPT(setup.model)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, setup.model.vocab_size, prompt_len).tolist() for _ in range(batch)]
    new_tokens = min(new_tokens, setup.model.context_length - prompt_len)
    result: dict[str, Any] = {"new_tokens": new_tokens, "prompt_tokens": prompt_len, "batch": batch}
    outputs = {}
    runs = (("cached", True, True), ("cached_general", True, False), ("uncached", False, True))
    for name, use_cache, fast in runs:  # (name, use_cache, fast decoding step)
        with use_fast_decode(fast):
            generate(model, prompts, max_new_tokens=2, eos_id=None, pad_id=0, use_cache=use_cache)  # warm-up
            start = time.perf_counter()
            outputs[name] = generate(model, prompts, new_tokens, eos_id=None, pad_id=0, use_cache=use_cache)
            seconds = time.perf_counter() - start
        result[f"{name}_tokens_per_s"] = batch * new_tokens / seconds
        result[f"{name}_ms"] = 1e3 * seconds
    result["speedup"] = result["cached_tokens_per_s"] / result["uncached_tokens_per_s"]
    result["fast_decode_speedup"] = result["cached_tokens_per_s"] / result["cached_general_tokens_per_s"]
    result["same_tokens"] = outputs["cached"] == outputs["cached_general"] == outputs["uncached"]
    return result
