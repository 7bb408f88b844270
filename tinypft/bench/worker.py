"""One engine's training steps, timed in a process of its own: ``python -m tinypft.bench.worker``.

    python -m tinypft.bench.worker --engine tinypft --config standard --threads 2 --steps 10
    python -m tinypft.bench.worker --engine torch --config large --threads 1 --methods full

prints one JSON object: for each method the median ms per step (and every step's ms) and the first
loss. The methods' steps are taken in turn (full, bitfit, ..., full, bitfit, ...), so that their
ratios hold even when the machine's load changes.

``tinypft bench`` starts one such process per engine and thread count (``run_worker``), so that no
library's threads are alive while the other library's step runs: in one process, the BLAS or OpenMP
threads of one library keep spinning for a while after its last call and take a core from the
other one's step. The thread count is fixed before NumPy or PyTorch is imported
(``OMP_NUM_THREADS`` and the BLAS libraries' own variables, set by ``run_worker`` in the child's
environment) and again at run time (``tinypft.set_num_threads``, ``torch.set_num_threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

ENGINES = ("tinypft", "torch")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def measure(engine: str, config: str, threads: int, methods: list[str], n_steps: int, warmup: int) -> dict:
    """Time ``methods`` of ``engine`` on ``config`` with ``threads`` threads, in this process: one model
    per method, their steps taken in turn."""
    from ..engine.allocator import tune_malloc
    from ..threads import get_blas_threads, get_num_threads, set_num_threads
    from .timing import time_steps, tinypft_step, torch_step
    from .workload import batch_ids, build, parse_config

    if engine not in ENGINES:
        raise ValueError(f"worker: engine must be one of {ENGINES}, got {engine!r}")
    tune_malloc()
    set_num_threads(threads)
    setup = parse_config(config)
    ids = batch_ids(setup)
    result: dict[str, Any] = {"engine": engine, "config": config, "threads": threads, "methods": {}}
    if engine == "torch":
        import torch

        from ..model.torch_twin import build_torch

        torch.set_num_threads(threads)
        result["torch_version"] = torch.__version__
        result["torch_threads"] = torch.get_num_threads()
    else:
        result["tinypft_threads"] = get_num_threads()
        result["blas_threads"] = get_blas_threads()
    steps, first_losses = {}, {}
    for method in methods:
        model = build(method, setup)
        if engine == "torch":
            steps[method] = torch_step(build_torch(model, method), ids)
        else:
            steps[method] = tinypft_step(model, ids)
        first_losses[method] = steps[method]()
    times = time_steps(steps, n_steps, max(warmup - 1, 0))
    for method in methods:
        result["methods"][method] = {
            "ms_per_step": statistics.median(times[method]),
            "times_ms": times[method],
            "first_loss": first_losses[method],
        }
    return result


def worker_env(threads: int) -> dict[str, str]:
    """This process's environment with every thread-count variable set to ``threads`` and this
    package importable first (the child runs the same tinypft as its parent)."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    return env


def run_worker(
    engine: str, config: str, threads: int, methods: list[str], steps: int, warmup: int
) -> dict[str, Any]:
    """Run ``measure`` in a fresh Python process and return its JSON result."""
    command = [
        sys.executable, "-m", "tinypft.bench.worker", "--engine", engine, "--config", config,
        "--threads", str(threads), "--methods", ",".join(methods), "--steps", str(steps),
        "--warmup", str(warmup),
    ]
    done = subprocess.run(command, env=worker_env(threads), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {engine} x{threads} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinypft.bench.worker")
    parser.add_argument("--engine", choices=ENGINES, default="tinypft")
    parser.add_argument("--config", default="standard")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="full", help="comma-separated: full,bitfit,prefix,prompt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    print(json.dumps(measure(args.engine, args.config, args.threads, methods, args.steps, args.warmup)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
