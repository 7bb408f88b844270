"""``tinypft findings``: run the selected experiments' missing runs, then write the report
(``--report-only``: the report of what the cache holds, while a run goes on elsewhere)."""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from ...cli import check_writable_dir, nonnegative_ints, path_arg, positive_int, touches_shipped
from ...threads import num_threads
from ...train.pretrain import SIZES, quick_mode
from .experiments import EXPERIMENTS, run_experiments
from .report import write_results
from .runs import BUDGETS, Context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tinypft findings``."""
    parser.add_argument("--only", help=f"comma-separated experiments (default all): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--seeds", type=nonnegative_ints, default=[0, 1, 2],
                        help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run, to check that it all runs")
    parser.add_argument("--size", choices=list(SIZES), default="small",
                        help="shipped checkpoint (default small)")
    parser.add_argument("--out", type=path_arg, help="folder for results.md and results/findings.json "
                        "(default docs; with --quick runs/findings-quick)")
    parser.add_argument("--cache", type=path_arg,
                        help="the runs' cache file (default runs/findings[-quick]/cache.json)")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="runs at once, each in its own process on one BLAS thread (default 2)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the runs in the cache and run nothing (an experiment "
                        "with runs missing is listed as not run)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--checkpoint", type=path_arg,
                        help=argparse.SUPPRESS)  # tests: a checkpoint folder of their own


def run(args: argparse.Namespace) -> int:
    """Run the selected experiments' missing runs and write the report of every experiment the cache
    completes; 2 for an unknown experiment or a run that cannot start."""
    quick = args.quick or quick_mode()
    names = [n.strip() for n in (args.only or ",".join(EXPERIMENTS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"--only: unknown experiments {', '.join(unknown)}; choose from "
                         f"{', '.join(EXPERIMENTS)}")
    seeds = tuple(args.seeds)
    out, cache = output_paths(args)
    for flag, folder in (("--out", out), ("--cache", cache.parent)):
        if touches_shipped(folder):
            raise ValueError(f"{flag} {folder} lies in the shipped checkpoints' folder; give another folder")
        check_writable_dir(folder, flag)
    if cache.is_dir():
        raise ValueError(f"--cache {cache} is a folder; give a file name")
    command = ["tinypft", "findings"] + (["--quick"] if quick else [])
    command += ["--only", args.only] if args.only else []
    command += ["--seeds", ",".join(map(str, seeds)), "--size", args.size, "--threads", str(args.threads),
                "--jobs", str(args.jobs)]
    command += (["--out", args.out] if args.out else []) + (["--cache", args.cache] if args.cache else [])
    budget = BUDGETS["quick" if quick else "default"]
    print(f"findings, {budget.name} budget: {budget.describe()}; seeds {list(seeds)}; cache {cache}")
    start = time.perf_counter()
    with num_threads(args.threads):
        ctx = Context(budget, seeds, args.size, cache, checkpoint=args.checkpoint,
                      progress=not args.no_progress)
        skipped = ([] if args.report_only
                   else run_experiments([EXPERIMENTS[n] for n in names], ctx, jobs=args.jobs))
        seconds = None if args.report_only else time.perf_counter() - start
        written = write_results(list(EXPERIMENTS.values()), ctx, out, shlex.join(command), skipped,
                                seconds, jobs=args.jobs)
    for message in skipped:
        print(f"skipped {message}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """The report's folder and the runs' cache file the options name (or their defaults)."""
    quick = args.quick or quick_mode()
    out = Path(("runs/findings-quick" if quick else "docs") if args.out is None else args.out)
    cache = Path(f"runs/findings{'-quick' if quick else ''}/cache.json" if args.cache is None else args.cache)
    return out, cache


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``tinypft findings`` kept (for the one line ``tinypft.cli`` prints)."""
    return (f"the finished runs are kept in {output_paths(args)[1]}; rerun the same command to continue "
            "with the others")
