"""``tinypft findings``: run the selected experiments' missing runs, then write the report."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from ...threads import num_threads
from ...train.pretrain import quick_mode
from .experiments import EXPERIMENTS, run_experiments
from .report import write_results
from .runs import BUDGETS, Context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tinypft findings``."""
    parser.add_argument("--only", help=f"comma-separated experiments (default all): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run, to check that it all runs")
    parser.add_argument("--size", default="small", help="shipped checkpoint: tiny, small (default) or medium")
    parser.add_argument("--out", help="folder for results.md and results/findings.json (default docs; "
                        "with --quick runs/findings-quick)")
    parser.add_argument("--cache", help="the runs' cache file (default runs/findings[-quick]/cache.json)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at once, each in its own process on one BLAS thread (default 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)  # tests: a checkpoint folder of their own


def run(args: argparse.Namespace) -> int:
    """Run the selected experiments' missing runs and write the report of every experiment the cache
    completes; 2 for an unknown experiment or a run that cannot start."""
    quick = args.quick or quick_mode()
    names = [n.strip() for n in (args.only or ",".join(EXPERIMENTS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        print(f"tinypft findings: unknown experiments {unknown}; choose from {', '.join(EXPERIMENTS)}",
              file=sys.stderr)
        return 2
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    suffix = "-quick" if quick else ""
    out = Path(args.out or ("runs/findings-quick" if quick else "docs"))
    cache = Path(args.cache or f"runs/findings{suffix}/cache.json")
    command = ["tinypft", "findings"] + (["--quick"] if quick else [])
    command += ["--only", args.only] if args.only else []
    command += ["--seeds", ",".join(map(str, seeds)), "--size", args.size, "--threads", str(args.threads),
                "--jobs", str(args.jobs)]
    command += (["--out", args.out] if args.out else []) + (["--cache", args.cache] if args.cache else [])
    budget = BUDGETS["quick" if quick else "default"]
    print(f"findings, {budget.name} budget: {budget.describe()}; seeds {list(seeds)}; cache {cache}")
    start = time.perf_counter()
    try:
        with num_threads(args.threads):
            ctx = Context(budget, seeds, args.size, cache, checkpoint=args.checkpoint,
                          progress=not args.no_progress)
            skipped = run_experiments([EXPERIMENTS[n] for n in names], ctx, jobs=args.jobs)
            written = write_results(list(EXPERIMENTS.values()), ctx, out, shlex.join(command),
                                    skipped, time.perf_counter() - start)
    except (ValueError, FileNotFoundError) as err:
        print(f"tinypft findings: {err}", file=sys.stderr)
        return 2
    for message in skipped:
        print(f"skipped {message}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
