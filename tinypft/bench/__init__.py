"""``tinypft bench``: how fast training steps, generation and matrix products run on this machine.

    tinypft bench                          standard config: vocab 512, d 128, 4 layers, 4 heads, context 128
    tinypft bench --config large           d 256, 6 layers, 8 heads
    tinypft bench --config d_model=64,n_layers=2,batch=8
    tinypft bench --torch                  the same steps in PyTorch, each engine at 1..cpu_count threads
    tinypft bench --torch --threads 1,2    these thread counts only
    tinypft bench --json --quick           machine-readable, very few steps (for tests and CI)
    tinypft bench --profile                also cProfile one full step (sorted by own time)

What is measured, all in float32 on a batch of B sequences of T = context - P tokens (P = the
prefix or prompt length, so that every method fits the same context and processes the same tokens):

* ms per training step (forward, backward, AdamW) for full fine-tuning, BitFit, prefix-tuning
  (through its MLP) and prompt-tuning, and tokens per second (B T / step). Each engine (tinypft,
  and PyTorch with ``--torch``) runs in a process of its own (``bench.worker``), one process per
  engine and thread count, so that no library's idle threads spin on a core while the other
  library's step runs. The processes are started in rounds (``--rounds``), each round going once
  through every engine and thread count, so that a change in the machine's load affects all of
  them alike; a method's time is the median of all its steps over the rounds. Each engine is
  then compared at its best thread count, and at every thread count;
* peak memory of one step: the largest amount of memory allocated by Python and NumPy during the
  step, beyond what was allocated before it (``tracemalloc``: activations, gradients, temporaries;
  not the parameters and optimizer state that already exist);
* the fused and the composed full steps (``use_fused_kernels(False)``), timed in alternation;
* greedy generation of N new tokens for one prompt (and for 8 prompts at once), with and without
  the key/value cache (and with it but without the fast decoding step, ``use_fast_decode(False)``);
* np.matmul during one full step: every call is timed (``np.matmul`` is wrapped for that step),
  which gives the step's GEMM flops, the share of the step spent in matmul, and the GFLOP/s
  reached there; each distinct GEMM is then re-timed alone on the same arrays (the machine's
  GFLOP/s at the model's shapes);
* with ``--torch``: the same steps in PyTorch on the CPU (weights copied from the tinypft model;
  BitFit = only the biases require grad; prefix = MLP-generated keys and values in front of each
  layer's; prompt = embeddings in front of the tokens; ``torch.optim.AdamW``;
  ``F.scaled_dot_product_attention``), and the first losses of both, which must agree.

The measurements after the step times (memory, fused against composed, matmul, generation,
profile) run in the command's own process at tinypft's best thread count. The machine's load
average (``os.getloadavg``) is recorded before and after: other processes slow both engines, and
a library's own BLAS threads most of all. The command first raises glibc's malloc thresholds
(``tinypft.engine.allocator.tune_malloc``, a no-op elsewhere), as every worker does, so that the
big temporaries of a step are reused from the heap instead of being mapped and page-faulted afresh
at every step; the report says whether it applied (``malloc_tuned``). ``run_bench`` called from
Python leaves the parent's allocator as it is.

The parts, one file each: ``workload`` (the config, the batch, a model per method), ``worker``
(one engine's steps in a process of its own), ``timing`` (training steps as closures, paired
medians, peak memory, generation), ``step_profile`` (matmuls and cProfile of one step), ``report``
(targets and the text report). The PyTorch twin is ``tinypft.model.torch_twin``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
from typing import Any

import numpy as np

from ..cli import nonnegative_int, positive_int
from ..engine.allocator import malloc_tuned, tune_malloc
from ..threads import get_blas_threads, get_num_threads, set_num_threads
from .report import format_report, targets
from .step_profile import matmul_report, profile_text
from .timing import composed, generation_report, paired_median_ms, peak_step_bytes, tinypft_step
from .workload import METHODS, BenchSetup, batch_ids, build, parse_config

GENERATION_BATCH = 8  # generation is also timed on this many prompts at once


def torch_available() -> bool:
    """Whether PyTorch can be imported (``--torch`` times it only then)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def default_threads() -> list[int]:
    """1, 2, ..., the number of CPUs this process may run on."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return list(range(1, cpus + 1))


def time_engines(
    setup: BenchSetup, engines: list[str], threads: list[int], steps: int, warmup: int, rounds: int
) -> dict[str, dict[int, dict[str, Any]]]:
    """Every method's step times for each engine at each thread count, one worker process each.

    Returns ``{engine: {threads: {method: {"ms_per_step", "first_loss"}}}}``, the ms the median of
    every step of every round. Each round starts one worker per (engine, thread count).
    """
    # imported here, not at the top: ``python -m tinypft.bench.worker`` imports this package first
    from .worker import run_worker

    times: dict[str, dict[int, dict[str, list[float]]]] = {e: {t: {} for t in threads} for e in engines}
    losses: dict[str, dict[int, dict[str, float]]] = {e: {t: {} for t in threads} for e in engines}
    for _ in range(rounds):
        for t in threads:
            for engine in engines:
                result = run_worker(engine, setup.name, t, list(METHODS), steps, warmup)
                for method, entry in result["methods"].items():
                    times[engine][t].setdefault(method, []).extend(entry["times_ms"])
                    losses[engine][t][method] = entry["first_loss"]
    return {
        engine: {
            t: {
                m: {"ms_per_step": statistics.median(ms), "first_loss": losses[engine][t][m]}
                for m, ms in by_method.items()
            }
            for t, by_method in by_threads.items()
        }
        for engine, by_threads in times.items()
    }


def best_threads(by_threads: dict[int, dict[str, Any]], method: str = "full") -> int:
    """The thread count at which ``method``'s step is fastest."""
    return min(by_threads, key=lambda t: by_threads[t][method]["ms_per_step"])


def run_bench(
    setup: BenchSetup,
    threads: list[int] | None = None,
    steps: int = 10,
    warmup: int = 3,
    with_torch: bool = False,
    quick: bool = False,
    profile: bool = False,
    new_tokens: int = 100,
    rounds: int = 2,
) -> dict[str, Any]:
    """Every measurement, as a JSON-able dict (see the module docstring)."""
    if quick:
        steps, warmup, new_tokens, rounds = min(steps, 2), 1, min(new_tokens, 8), 1
    threads = sorted(set(threads or default_threads()))
    engines = ["tinypft", "torch"] if with_torch and torch_available() else ["tinypft"]
    load_before = os.getloadavg()[0]
    timed = time_engines(setup, engines, threads, steps, warmup, rounds)
    best = {engine: best_threads(timed[engine]) for engine in engines}
    set_num_threads(best["tinypft"])  # the measurements in this process run at tinypft's best
    ids = batch_ids(setup)
    tokens = ids.size
    report: dict[str, Any] = {
        "config": setup.name,
        "model": setup.model.to_dict(),
        "batch": setup.batch,
        "seq_len": setup.seq_len,
        "virtual_tokens": setup.virtual_tokens,
        "dtype": "float32",
        "threads": threads,
        "best_threads": best,
        "detail_threads": get_num_threads(),
        "blas_threads": get_blas_threads(),
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "memory_measure": "tracemalloc peak of one step (allocations during the step only)",
        "malloc_tuned": bool(malloc_tuned()),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.machine(),
            "cpus": default_threads()[-1],
        },
        "methods": {},
    }
    for method in METHODS:
        model = build(method, setup)
        step = tinypft_step(model, ids)
        step()
        own = timed["tinypft"]
        ms = own[best["tinypft"]][method]["ms_per_step"]
        trainable, total = model.get_nb_trainable_parameters()
        entry: dict[str, Any] = {
            "ms_per_step": ms,
            "threads": best["tinypft"],
            "by_threads": {str(t): own[t][method]["ms_per_step"] for t in threads},
            "tokens_per_s": tokens / (ms / 1e3),
            "trainable_params": trainable,
            "all_params": total,
            "peak_mem_mb": peak_step_bytes(step) / 2**20,
            "first_loss": own[threads[0]][method]["first_loss"],
        }
        if "torch" in timed:
            theirs = timed["torch"]
            torch_ms = theirs[best["torch"]][method]["ms_per_step"]
            torch_loss = theirs[threads[0]][method]["first_loss"]
            entry["torch"] = {
                "ms_per_step": torch_ms,
                "threads": best["torch"],
                "by_threads": {str(t): theirs[t][method]["ms_per_step"] for t in threads},
                "tokens_per_s": tokens / (torch_ms / 1e3),
                "first_loss": torch_loss,
                "loss_rel_diff": abs(entry["first_loss"] - torch_loss) / abs(torch_loss),
                "ratio": ms / torch_ms,  # each engine at its best thread count
                "ratio_by_threads": {
                    str(t): own[t][method]["ms_per_step"] / theirs[t][method]["ms_per_step"] for t in threads
                },
            }
        report["methods"][method] = entry
        if method == "full":
            pair = paired_median_ms({"fused": step, "composed": composed(step)}, max(steps // 2, 2), 1)
            report["fused_full_ms"] = pair["fused"]
            report["composed_full_ms"] = pair["composed"]
            report["fused_speedup"] = pair["composed"] / pair["fused"]
            report["matmul"] = matmul_report(step, pair["fused"], reps=3 if quick else 7)
            if profile:
                report["profile"] = profile_text(step)
    report["generation"] = generation_report(setup, new_tokens, batch=1)
    report["generation_batch"] = generation_report(setup, new_tokens, batch=GENERATION_BATCH)
    report["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["load_average"] = {"before": load_before, "after": os.getloadavg()[0]}
    report["targets"] = targets(report)
    return report


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2]; each count must be a positive integer."""
    counts = [int(item) for item in text.split(",") if item.strip()]
    if not counts or min(counts) < 1:
        raise ValueError(f"--threads: expected positive integers such as 1,2, got {text!r}")
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="standard",
        help="standard, large, or key=value pairs over standard (e.g. d_model=256,n_layers=6)",
    )
    parser.add_argument(
        "--torch", action="store_true", help="also time the same model in PyTorch (if installed)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--threads", default=None, help="thread counts to time, e.g. 1,2 (default 1 to the number of CPUs)"
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per method and process")
    parser.add_argument("--warmup", type=nonnegative_int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="worker processes per engine and thread count")
    parser.add_argument("--new-tokens", type=positive_int, default=100, help="tokens to generate")
    parser.add_argument("--quick", action="store_true", help="very few steps and one round (tests, CI)")
    parser.add_argument("--profile", action="store_true", help="cProfile one full step (by own time)")


def run(args: argparse.Namespace) -> int:
    setup = parse_config(args.config)  # a bad config or thread list: one line and exit 2 (tinypft.cli)
    threads = parse_threads(args.threads) if args.threads else None
    if args.torch and not torch_available():
        print("tinypft bench: --torch: PyTorch is not installed; timing tinypft only")
    tune_malloc()  # this process times training steps: keep their big temporaries mapped
    report = run_bench(
        setup,
        threads=threads,
        steps=args.steps,
        warmup=args.warmup,
        with_torch=args.torch,
        quick=args.quick,
        profile=args.profile,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
    )
    if args.json:
        report["matmul"]["shapes"] = report["matmul"]["shapes"][:12]
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
