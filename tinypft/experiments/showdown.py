"""``tinypft showdown``: every method on the E2E NLG data: one table, one JSON, one plot, one page.

    tinypft showdown --quick     # under 2 minutes on 2 CPU cores (50 dev MRs, said so)
    tinypft showdown             # under 15 minutes: longer training, all 547 dev and 630 test MRs

Each method (frozen, full, bitfit, prefix with its MLP, prompt) starts from the same shipped
checkpoint, trains for the same number of steps on the same batches with its own default learning
rate (``methods.py``), and is scored the same way: greedy decoding, corpus BLEU against all
references of each MR, the slot error rate, and the share of outputs that name their own venue
(a model that ignores its MR names one venue for all of them). The frozen method is the pretrained
LM with nothing trained, scored as it is. The table lists what each method trains, what one task
costs on disk, the metrics and the training time; ``showdown.json`` holds every run with its
hyperparameters, the exact command, the budget and the versions; ``showdown.png`` plots the
metrics against the number of trainable parameters; ``showdown.md`` is the page, with one output
of every method for the same MR.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import shlex
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..cli import check_writable_dir, path_arg, positive_int, touches_shipped
from ..data import load_tokenizer
from ..serialization import atomic_write_bytes
from ..threads import num_threads
from ..train.pretrain import SIZES
from . import report
from .finetune import FinetuneSettings, run_finetune

SHOWDOWN_METHODS: tuple[str, ...] = ("frozen", "full", "bitfit", "prefix", "prompt")


@dataclass(frozen=True)
class Budget:
    """How much work one showdown does (per method and seed)."""

    name: str
    steps: int  # optimizer steps of batch_size (MR, reference) pairs
    eval_size: int | None  # dev (and test) MRs scored (an evenly spaced, fixed subset); None: all
    max_new_tokens: int = 64
    batch_size: int = 8
    time_limit: str = ""  # what it must fit into, for the report
    splits: tuple[str, ...] = ("dev", "test")

    def describe(self) -> str:
        n, splits = self.eval_size, " and ".join(self.splits)
        scored = f"all {splits} MRs" if n is None else f"{n} {splits} MRs (evenly spaced)"
        return (f"{self.steps} steps of batch {self.batch_size} per method, {scored}, greedy decoding "
                f"of at most {self.max_new_tokens} tokens")


BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", steps=250, eval_size=50, time_limit="2 minutes on 2 CPU cores", splits=("dev",)),
    "default": Budget("default", steps=3000, eval_size=None, time_limit="15 minutes on 2 CPU cores"),
    "test": Budget("test", steps=3, eval_size=3, max_new_tokens=6, time_limit="seconds (tests only)"),
}


def run_showdown(
    budget: Budget,
    size: str = "small",
    seeds: int = 1,
    out: str | Path | None = None,
    checkpoint: str | None = None,
    progress: bool = True,
    command: str | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every method for ``seeds`` seeds (0, 1, ...) within ``budget``; returns the showdown
    record (rows: means over seeds) and, with ``out``, writes showdown.json, .md and .png there.

    ``jobs`` > 1 runs that many methods at once, each in a process of its own on one BLAS thread
    (the runs are independent and each seeds itself, so the numbers do not depend on ``jobs``).
    """
    if seeds < 1:
        raise ValueError(f"showdown: seeds must be >= 1, got {seeds}")
    if jobs < 1:
        raise ValueError(f"showdown: jobs must be >= 1, got {jobs}")
    start = time.perf_counter()
    plan = [
        FinetuneSettings(
            method=method, task="e2e", size=size, checkpoint=checkpoint, seed=seed,
            steps=budget.steps, batch_size=budget.batch_size, eval_size=budget.eval_size,
            max_new_tokens=budget.max_new_tokens, progress=False,
        )
        for seed in range(seeds) for method in SHOWDOWN_METHODS
    ]
    if jobs == 1:
        records = _run_in_turn(plan, budget, progress)
    else:
        records = _run_in_parallel(plan, budget, progress, jobs)
    rows = report.aggregate([report.record_row(r) for r in records])
    result = {
        "command": command,
        "budget": dataclasses.asdict(budget) | {"description": budget.describe()},
        "size": size,
        "seeds": list(range(seeds)),
        "eval_note": records[0]["eval_note"],
        "wall_seconds": time.perf_counter() - start,
        "rows": rows,
        "table": report.format_table(rows),
        "samples": side_by_side(records),
        "environment": report.environment(),
        "runs": [{k: v for k, v in r.items() if k != "environment"} for r in records],
    }
    if out is not None:
        out = Path(out)
        title = f"E2E, {size} model, {budget.name} budget ({budget.steps} steps)"
        report.write_json(out / "showdown.json", result)
        report.plot_tradeoff(rows, out / "showdown.png", title=title)
        atomic_write_bytes(out / "showdown.md", page(result, title).encode("utf-8"))
    return result


def _run_in_turn(plan: list[FinetuneSettings], budget: Budget, progress: bool) -> list[dict[str, Any]]:
    """One run after another in this process, with a progress bar over the training steps."""
    tokenizer = load_tokenizer()
    trained = sum(s.method != "frozen" for s in plan)
    bar = tqdm(total=trained * budget.steps, unit="step", disable=not progress, desc="showdown")
    records = []
    try:
        for settings in plan:
            bar.set_description(f"{settings.method} (seed {settings.seed})")
            records.append(run_finetune(settings, splits=budget.splits, tokenizer=tokenizer,
                                        callback=lambda *_: bar.update(1)))
    finally:
        bar.close()
    return records


def _one_run(settings: FinetuneSettings, splits: tuple[str, ...]) -> dict[str, Any]:
    with num_threads(1):
        return run_finetune(settings, splits=splits)


def _run_in_parallel(plan: list[FinetuneSettings], budget: Budget, progress: bool, jobs: int,
                     ) -> list[dict[str, Any]]:
    """``jobs`` worker processes, the longest runs (full fine-tuning) first; records in plan order."""
    order = sorted(range(len(plan)), key=lambda i: plan[i].method != "full")
    records: list[dict[str, Any]] = [{} for _ in plan]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_one_run, plan[i], budget.splits): i for i in order}
        for future in tqdm(as_completed(futures), total=len(plan), unit="run", disable=not progress,
                           desc=f"showdown ({jobs} processes)"):
            records[futures[future]] = future.result()
    return records


LEGEND = ("trainable: parameters updated in training (prefix: its MLP too); % of base: of the pretrained "
          "model's parameters; stored/task: adapter files one task needs (prefix: the baked prefix only); "
          "SER: slot errors (missing + invented values) per MR slot, above 1 when there are more errors "
          "than slots; "
          "names venue: share of outputs that name their own MR's venue")


def side_by_side(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One dev output per method (seed 0) for the same MR, the first one scored."""
    seen: dict[str, dict[str, str]] = {}
    for record in records:
        samples = (record.get("dev") or {}).get("samples") or []
        if samples and record["method"] not in seen:
            seen[record["method"]] = {"method": record["method"], "source": samples[0]["source"],
                                      "output": " ".join(samples[0]["output"].split())}
    return list(seen.values())


def page(result: dict[str, Any], title: str) -> str:
    """``showdown.md``: what ran (the command, the budget), the table, the legend, one output of every
    method for the same MR, and the plot."""
    note = f"\n\nNote: {result['eval_note']}." if result["eval_note"] else ""
    samples = result.get("samples") or []
    outputs = ""
    if samples:
        lines = [f"| {s['method']} | {s['output'].replace('|', '/')} |" for s in samples]
        outputs = (f"\n\nOne dev MR, every method's output:\n\n> {samples[0]['source']}\n\n"
                   "| method | output |\n| --- | --- |\n" + "\n".join(lines))
    return (f"# Showdown: {title}\n\n```bash\n{result['command']}\n```\n\n"
            f"{result['budget']['description']}; seeds {', '.join(map(str, result['seeds']))}; "
            f"{result['wall_seconds']:.0f} s of wall time.{note}\n\n{result['table']}\n\n"
            f"{LEGEND}.{outputs}\n\n"
            f"![metrics against trainable parameters](showdown.png)\n")


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"quick budget ({BUDGETS['quick'].time_limit})")
    parser.add_argument("--size", choices=list(SIZES), default="small", help="shipped checkpoint")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="seeds per method (0, 1, ...); rows show means")
    parser.add_argument("--out", type=path_arg,
                        help="output folder (default runs/showdown or runs/showdown-quick)")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--jobs", type=positive_int, default=2,
                        help="methods trained at once, one process each (default 2, one per core)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--checkpoint", type=path_arg,
                        help=argparse.SUPPRESS)  # tests: a checkpoint folder of their own
    parser.add_argument("--test-budget", action="store_true", help=argparse.SUPPRESS)  # tests: a few steps


def run(args: argparse.Namespace) -> int:
    budget = BUDGETS["test" if args.test_budget else "quick" if args.quick else "default"]
    suffix = "-quick" if args.quick else ""
    out = Path(f"runs/showdown{suffix}" if args.out is None else args.out)
    if touches_shipped(out):
        raise ValueError(f"--out {out} lies in the shipped checkpoints' folder; give another folder")
    check_writable_dir(out, "--out")
    command = ["tinypft", "showdown"] + (["--quick"] if args.quick else [])
    command += ["--size", args.size, "--seeds", str(args.seeds), "--out", str(out)]
    command += ["--threads", str(args.threads), "--jobs", str(args.jobs)]
    command += (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    command += ["--test-budget"] if args.test_budget else []
    print(f"showdown, {budget.name} budget: {budget.describe()}; must fit in {budget.time_limit}")
    with num_threads(args.threads):
        result = run_showdown(
            budget, size=args.size, seeds=args.seeds, out=out, checkpoint=args.checkpoint,
            progress=not args.no_progress, command=shlex.join(command), jobs=args.jobs,
        )
    print(result["table"])
    if result["eval_note"]:
        print(f"note: {result['eval_note']} (a fixed subset; the full sets take the default budget)")
    print(LEGEND)
    for sample in result["samples"]:
        print(f"  {sample['method']:>7}: {sample['output']}")
    print(f"wall time {result['wall_seconds']:.0f} s; wrote {out / 'showdown.json'}, {out / 'showdown.md'} "
          f"and {out / 'showdown.png'}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``tinypft showdown`` kept (for the one line ``tinypft.cli`` prints)."""
    return "nothing was written (a showdown writes its files when every run is done); rerun the command"
