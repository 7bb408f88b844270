"""``tinypft bench``: how fast training steps, generation and matrix products run on this machine.

    tinypft bench                          standard config: vocab 512, d 128, 4 layers, 4 heads, context 128
    tinypft bench --config large           d 256, 6 layers, 8 heads
    tinypft bench --config d_model=64,n_layers=2,batch=8
    tinypft bench --torch --threads 2      the same model in PyTorch (float32, same thread count)
    tinypft bench --json --quick           machine-readable, very few steps (for tests and CI)
    tinypft bench --profile                also cProfile one full step (sorted by own time)

What is measured, all in float32 on a batch of B sequences of T = context - P tokens (P = the
prefix or prompt length, so that every method fits the same context and processes the same tokens):

* ms per training step (forward, backward, AdamW), the median over ``--steps`` steps after
  warm-up, and tokens per second (B T / step) for full fine-tuning, BitFit, prefix-tuning
  (through its MLP) and prompt-tuning; tinypft's and PyTorch's steps, and the fused and the
  composed full steps (``use_fused_kernels(False)``), are timed in alternation, so that a change in the
  machine's load affects both alike;
* peak memory of one step: the largest amount of memory allocated by Python and NumPy during the
  step, beyond what was allocated before it (``tracemalloc``: activations, gradients, temporaries;
  not the parameters and optimizer state that already exist);
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

BLAS uses ``--threads`` threads (default 1, see ``tinypft.threads``); PyTorch gets the same count.
The command first raises glibc's malloc thresholds (``tinypft.engine.allocator.tune_malloc``, a
no-op elsewhere), so that the big temporaries of a step are reused from the heap instead of being
mapped and page-faulted afresh at every step; the report says whether it applied
(``malloc_tuned``). ``run_bench`` called from Python leaves the allocator as it is.

The parts, one file each: ``workload`` (the config, the batch, a model per method), ``timing``
(training steps, paired medians, peak memory, generation), ``step_profile`` (matmuls and cProfile
of one step), ``report`` (targets and the text report). The PyTorch twin is
``tinypft.model.torch_twin``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
from typing import Any

import numpy as np

from ..engine.allocator import malloc_tuned, tune_malloc
from ..threads import get_blas_threads, set_num_threads
from .report import format_report, targets
from .step_profile import matmul_report, profile_text
from .timing import composed, generation_report, paired_median_ms, peak_step_bytes, tinypft_step, torch_step
from .workload import METHODS, BenchSetup, batch_ids, build, parse_config

GENERATION_BATCH = 8  # generation is also timed on this many prompts at once


def torch_available() -> bool:
    """Whether PyTorch can be imported (``--torch`` times it only then)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def run_bench(
    setup: BenchSetup,
    threads: int = 1,
    steps: int = 10,
    warmup: int = 3,
    with_torch: bool = False,
    quick: bool = False,
    profile: bool = False,
    new_tokens: int = 100,
) -> dict[str, Any]:
    """Every measurement, as a JSON-able dict (see the module docstring)."""
    if quick:
        steps, warmup, new_tokens = min(steps, 2), 1, min(new_tokens, 8)
    set_num_threads(threads)
    torch_ok = with_torch and torch_available()
    if torch_ok:
        import torch

        from ..model.torch_twin import build_torch

        torch.set_num_threads(threads)
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
        "blas_threads": get_blas_threads(),
        "steps": steps,
        "warmup": warmup,
        "memory_measure": "tracemalloc peak of one step (allocations during the step only)",
        "malloc_tuned": bool(malloc_tuned()),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.machine(),
        },
        "methods": {},
    }
    full_step = None
    for method in METHODS:
        model = build(method, setup)
        twin = build_torch(model, method) if torch_ok else None
        step = tinypft_step(model, ids)
        first_loss = step()
        contenders = {"tinypft": step}
        if twin is not None:
            tstep = torch_step(twin, ids)
            torch_loss = tstep()
            contenders["torch"] = tstep
        times = paired_median_ms(contenders, steps, max(warmup - 1, 0))
        ms = times["tinypft"]
        trainable, total = model.get_nb_trainable_parameters()
        entry = {
            "ms_per_step": ms,
            "tokens_per_s": tokens / (ms / 1e3),
            "trainable_params": trainable,
            "all_params": total,
            "peak_mem_mb": peak_step_bytes(step) / 2**20,
            "first_loss": first_loss,
        }
        if twin is not None:
            torch_ms = times["torch"]
            entry["torch"] = {
                "ms_per_step": torch_ms,
                "tokens_per_s": tokens / (torch_ms / 1e3),
                "first_loss": torch_loss,
                "loss_rel_diff": abs(first_loss - torch_loss) / abs(torch_loss),
                "ratio": ms / torch_ms,
            }
        report["methods"][method] = entry
        if method == "full":
            full_step = step
            pair = paired_median_ms({"fused": step, "composed": composed(step)}, max(steps // 2, 2), 1)
            report["fused_full_ms"] = pair["fused"]
            report["composed_full_ms"] = pair["composed"]
            report["fused_speedup"] = pair["composed"] / pair["fused"]
            report["matmul"] = matmul_report(step, ms, reps=3 if quick else 7)
            if profile:
                report["profile"] = profile_text(step)
    report["generation"] = generation_report(setup, new_tokens, batch=1)
    report["generation_batch"] = generation_report(setup, new_tokens, batch=GENERATION_BATCH)
    report["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["targets"] = targets(report)
    del full_step
    return report


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
    parser.add_argument("--threads", type=int, default=1, help="BLAS (and PyTorch) threads (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--new-tokens", type=int, default=100, help="tokens to generate")
    parser.add_argument("--quick", action="store_true", help="very few steps (tests, CI)")
    parser.add_argument("--profile", action="store_true", help="cProfile one full step (by own time)")


def run(args: argparse.Namespace) -> int:
    try:
        setup = parse_config(args.config)
    except ValueError as exc:
        print(f"tinypft bench: {exc}")
        return 2
    if args.threads < 1 or args.steps < 1:
        print("tinypft bench: --threads and --steps must be >= 1")
        return 2
    if args.torch and not torch_available():
        print("tinypft bench: --torch: PyTorch is not installed; timing tinypft only")
    tune_malloc()  # this process times training steps: keep their big temporaries mapped
    report = run_bench(
        setup,
        threads=args.threads,
        steps=args.steps,
        warmup=args.warmup,
        with_torch=args.torch,
        quick=args.quick,
        profile=args.profile,
        new_tokens=args.new_tokens,
    )
    if args.json:
        report["matmul"]["shapes"] = report["matmul"]["shapes"][:12]
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
