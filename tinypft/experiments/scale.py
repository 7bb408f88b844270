"""``tinypft scale``: a sense of scale on the real E2E data, trained by PyTorch and by tinypft.

    tinypft scale                       # PyTorch does the steps (needs torch) -> runs/scale/scale.md
    tinypft scale --engine both         # the same recipe trained by each engine, side by side
    tinypft scale --quick --size tiny   # a few steps: checks that everything runs

The recipe (on the shipped E2E data, or ``$TINYPFT_DATA/e2e``):

1. pretrain a GPT of tinypft's architecture (``small``: 1,071,872 parameters) on the E2E
   training references, every reference of an MR in one document, as the shipped checkpoints
   were (``tinypft pretrain --steps 4000``);
2. fine-tune it on all 42,059 (MR, reference) pairs with full fine-tuning and with prefix-tuning,
   the MR written as in the data file (``name[X], area[Y]``) and, again, as a table
   (``name : X | area : Y``, ``finetune --source table``);
3. fine-tune it on 50, 100, 200 and 500 training units with full fine-tuning, prefix-tuning and
   BitFit, the units counted two ways: MRs with all their references (about 8 each), and single
   (MR, reference) pairs, the examples the Prefix-Tuning paper's low-data sets count; seeds 0, 1
   and 2 draw three subsets of each size.

Every run uses the methods' default learning rates and sizes (``methods.py``) and is scored by
tinypft itself: greedy decoding, corpus BLEU (sacrebleu, 13a word tokenization) against all
references of each MR, on the whole dev set (547 MRs) and, for the all-data runs, the test set.

``--engine torch`` trains in PyTorch through ``torch_train``, the same loop on a float32 twin of
the model; ``--engine tinypft`` uses tinypft's own trainer. Only the engine differs, so if both
give the same numbers the ceiling is the recipe and the model's size, not a bug in tinypft.
Finished runs are kept in ``runs/scale/<engine>/runs.json`` with their settings, so an interrupted
call resumes and a run whose settings changed is made again.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..cli import check_writable_dir, path_arg, positive_int, touches_shipped
from ..data import load_tokenizer
from ..data.lexicon import slot_errors
from ..model.pretrained import MANIFEST_NAME
from ..serialization import atomic_write_bytes, read_json
from ..threads import num_threads
from ..train import corpus_bleu, slot_error_rate, train
from ..train.pretrain import SIZES, TIMING_NAME, pretrain, quick_mode, size_config
from .finetune import FinetuneSettings, evaluate, fit, prepare, summarize
from .report import write_json

ENGINES = ("torch", "tinypft")
PRETRAIN = {"steps": 4000, "batch_size": 16, "lr": 1e-3}
ALL_DATA_STEPS = 3000  # batch 8: 24,000 pairs, 0.57 of an epoch
LOW_DATA_STEPS = 500  # batch 8: 4,000 pairs (about 10 epochs of 50 MRs, 1 of 500 MRs, 80 of 50 pairs)
LOW_DATA_SIZES = (50, 100, 200, 500)
LOW_DATA_UNITS = ("mr", "pair")  # what a low-data size counts: MRs (all references) or (MR, reference) pairs
LOW_DATA_METHODS = ("full", "prefix", "bitfit")
LOW_DATA_SEEDS = (0, 1, 2)
MID_60S = 63.0  # "BLEU in the mid-60s": the bar both all-data runs are held to
QUICK = {"pretrain_steps": 20, "steps": 4, "eval_size": 4, "max_new_tokens": 8}


@dataclasses.dataclass(frozen=True)
class ScaleRun:
    """One fine-tuning run of the recipe."""

    label: str
    method: str
    train_size: int | None  # in units of ``unit``; None: all
    steps: int
    seed: int
    test: bool  # the all-data runs are also scored on test
    unit: str = "mr"  # what train_size counts: "mr" or "pair"
    source: str = "mr"  # how the MR is written: "mr" or "table" (see ``with_source``)


def plan(quick: bool) -> list[ScaleRun]:
    steps = QUICK["steps"] if quick else None
    runs = [ScaleRun(label, m, None, steps or ALL_DATA_STEPS, 0, True, source=source)
            for labels, source in ((ALL_DATA_LABELS, "mr"), (TABLE_LABELS, "table"))
            for label, m in zip(labels, ("full", "prefix"))]
    for unit in LOW_DATA_UNITS:
        for n in LOW_DATA_SIZES:  # a quick check runs one seed
            runs += [ScaleRun(low_label(m, n, seed, unit), m, n, steps or LOW_DATA_STEPS, seed, False, unit)
                     for seed in LOW_DATA_SEEDS[: 1 if quick else None] for m in LOW_DATA_METHODS]
    return runs


UNIT_NAMES = {"mr": "MRs", "pair": "pairs"}


def low_label(method: str, size: int, seed: int, unit: str = "mr") -> str:
    """The run's name, e.g. ``"prefix, 50 MRs, seed 0"`` or ``"full, 200 pairs, seed 2"``."""
    return f"{method}, {size} {UNIT_NAMES[unit]}, seed {seed}"


def trainer_for(engine: str) -> Any:
    if engine == "tinypft":
        return train
    from .torch_train import torch_train  # imports torch only when it is asked for

    return torch_train


def pretrained(engine: str, size: str, folder: Path, quick: bool, progress: bool) -> dict[str, Any]:
    """The checkpoint pretrained on the E2E references by ``engine`` (made once, then reused while
    the recipe that made it is the same)."""
    tokenizer = load_tokenizer()
    steps = QUICK["pretrain_steps"] if quick else PRETRAIN["steps"]
    command = (f"tinypft pretrain --size {size} --steps {steps} --batch-size "
               f"{PRETRAIN['batch_size']} --lr {PRETRAIN['lr']} --out {folder} (trained by {engine})")
    manifest, timing = folder / MANIFEST_NAME, folder / TIMING_NAME
    if manifest.exists():
        made = read_json(manifest)
        if made.get("command") == command:
            return made | (read_json(timing) if timing.exists() else {})  # the wall times
        print(f"[{engine}] {folder} was pretrained by another recipe; pretraining again", flush=True)
    return pretrain(size_config(size, tokenizer.vocab_size), folder, steps=steps,
                    batch_size=PRETRAIN["batch_size"], lr=PRETRAIN["lr"], dev_windows=4 if quick else 256,
                    tokenizer=tokenizer, progress=progress, command=command,
                    size=size, trainer=trainer_for(engine))


def run_settings(run: ScaleRun, size: str, checkpoint: Path, quick: bool, progress: bool) -> FinetuneSettings:
    return FinetuneSettings(
        method=run.method, size=size, checkpoint=str(checkpoint), train_size=run.train_size,
        train_unit=run.unit, source=run.source, seed=run.seed, steps=run.steps,
        eval_size=QUICK["eval_size"] if quick else None,
        max_new_tokens=QUICK["max_new_tokens"] if quick else 64, progress=progress,
    )


def same_settings(record: dict[str, Any], settings: FinetuneSettings, weights_sha256: str | None) -> bool:
    """Was ``record`` made with ``settings`` (progress bars aside) from the same pretrained weights?"""
    made = dict(record["hyperparameters"]["settings"], progress=None)
    same_weights = record.get("checkpoint", {}).get("weights_sha256") == weights_sha256
    return same_weights and made == dict(dataclasses.asdict(settings), progress=None)


def finetune(settings: FinetuneSettings, run: ScaleRun, engine: str) -> dict[str, Any]:
    """Train and score one run; the record has no samples and no environment."""
    r = fit(prepare(settings), trainer=trainer_for(engine))
    for split in ("dev", "test") if run.test else ("dev",):
        evaluate(r, split)
    record = summarize(r)
    record.pop("environment")
    for split in ("dev", "test"):
        if record.get(split):
            record[split].pop("samples", None)
            if run.test:
                record[split] |= slot_breakdown(r, split)
    return record | {"label": run.label, "engine": engine}


SLOT_GROUPS = {"3-5": (3, 4, 5), "6": (6,), "7": (7,), "8": (8,)}  # MR sizes; E2E's MRs have 3 to 8 slots
E2E_SLOTS = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")


def slot_breakdown(r: Any, split: str) -> dict[str, dict[str, dict[str, float]]]:
    """Where a run's slot errors are. E2E's test MRs are not drawn like its training and dev MRs:
    260 of 630 have all 8 slots (dev: 71 of 547), 618 name a landmark with ``near`` (dev: 339;
    train: 2,369 of 4,862) and all 630 give ``eatType`` (train: 2,261).

    Reads the outputs ``evaluate`` generated for ``split`` and returns two tables: ``by_slots``
    ({group: {"n", "bleu", "ser"}}), BLEU and slot error rate over the MRs of each size
    (``SLOT_GROUPS``), and ``missing_by_slot`` ({slot: {"n", "missing"}}), the share of the MRs with
    that slot whose output leaves its value out.
    """
    examples = r.data.dev if split == "dev" else r.data.test
    outputs = r.outputs[split]
    groups = {}
    for name, sizes in SLOT_GROUPS.items():
        chosen = [i for i, ex in enumerate(examples) if len(ex.slots) in sizes]
        if chosen:
            texts = [outputs[i] for i in chosen]
            groups[name] = {"n": len(chosen), "bleu": corpus_bleu(texts, [examples[i].refs for i in chosen]),
                            "ser": slot_error_rate(texts, [examples[i].slots for i in chosen])}
    missed = [{m.split("[")[0] for m in slot_errors(out, ex.slots)["missing"]}
              for out, ex in zip(outputs, examples)]
    missing = {}
    for slot in E2E_SLOTS:
        having = [i for i, ex in enumerate(examples) if slot in ex.slots]
        if having:
            left_out = sum(slot in missed[i] for i in having)
            missing[slot] = {"n": len(having), "missing": left_out / len(having)}
    return {"by_slots": groups, "missing_by_slot": missing}


def run_engine(engine: str, size: str, root: Path, quick: bool, progress: bool) -> dict[str, Any]:
    """Pretrain (once) and every run of the plan not yet in ``root/engine/runs.json``."""
    folder = root / engine
    manifest = pretrained(engine, size, folder / "pretrain", quick, progress)
    cache_path = folder / "runs.json"
    cache = read_json(cache_path) if cache_path.exists() else {}
    for run in plan(quick):
        settings = run_settings(run, size, folder / "pretrain", quick, progress)
        made = cache.get(run.label)
        if made is None or not same_settings(made, settings, manifest["weights_sha256"]):  # new or changed
            print(f"[{engine}] {run.label}: {run.steps} steps", flush=True)
            cache[run.label] = finetune(settings, run, engine)
            write_json(cache_path, cache)
    pre = {k: manifest[k] for k in ("num_parameters", "steps", "best_step", "dev_loss", "seconds", "command")}
    return {"pretrain": pre | {"copy_rate": manifest["name_copy_rate"]["copy_rate"]}, "runs": cache}


def report(results: dict[str, dict[str, Any]], size: str, command: str) -> str:
    """Markdown: the pretraining, the all-data table and the low-data table, one column per engine."""
    engines = list(results)
    recipe = __doc__.split("The recipe")[1].split("Finished runs")[0].strip()
    lines = ["# A sense of scale: the real E2E data, trained by " + " and by ".join(engines), "",
             "```bash", command, "```", "", "The recipe " + recipe, ""]
    lines += ["## Pretraining on the E2E references", "",
              "| engine | parameters | steps (best) | held-out loss | seconds | copies names |",
              "|---|---:|---:|---:|---:|---:|"]
    for e in engines:
        p = results[e]["pretrain"]
        lines.append(f"| {e} | {p['num_parameters']:,} | {p['steps']} ({p['best_step']}) | "
                     f"{p['dev_loss']:.4f} | {p['seconds']:.0f} | {p['copy_rate']:.0%} |")
    lines += ["", "Copies names: how often the next description names a venue whose made-up name only the "
              "description before it gave (`name_copy_rate` on the held-out MRs). Grouped by MR, every "
              "description after the first can copy the earlier ones' name and values, as a fine-tuned model "
              "must copy them from its MR."]
    head = "| run | trainable | " + " | ".join(f"{e} dev BLEU | {e} test BLEU | {e} dev SER" for e in engines)
    lines += ["", "## All the data", "", head + " |", "|---|---:|" + "---:|" * (3 * len(engines))]
    for label in ALL_DATA_LABELS + TABLE_LABELS:
        cells = [label, f"{results[engines[0]]['runs'][label]['trainable_params']:,}"]
        for e in engines:
            rec = results[e]["runs"][label]
            cells += [f"{rec['dev']['bleu']:.1f}", f"{rec['test']['bleu']:.1f}", f"{rec['dev']['ser']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += by_slots_table(results, engines) + missing_table(results, engines)
    seeds = ", ".join(map(str, low_data_seeds(results[engines[0]]["runs"])))
    lines += ["", f"## Little data (dev BLEU, mean ± sample standard deviation over seeds {seeds})", "",
              f"Every run takes {LOW_DATA_STEPS} steps of batch 8 whatever its size. Counted in MRs, each "
              "unit brings all its references (about 8); counted in pairs, each brings one reference, as "
              "the Prefix-Tuning paper's low-data examples do."]
    for unit in LOW_DATA_UNITS:
        columns = [f"{e} {m}" for e in engines for m in LOW_DATA_METHODS]
        lines += ["", f"| {UNIT_NAMES[unit]} | " + " | ".join(columns) + " |",
                  "|---:|" + "---:|" * len(columns)]
        for n in LOW_DATA_SIZES:
            cells = [str(n)]
            for e in engines:
                for m in LOW_DATA_METHODS:
                    mean, sd = low_data_bleu(results[e]["runs"], m, n, unit)
                    cells.append(f"{mean:.1f} ± {sd:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## What it says", ""] + [f"* {s}" for s in verdicts(results)] + [""]
    return "\n".join(lines)


ALL_DATA_LABELS = ("full, all MRs", "prefix, all MRs")  # the MR as in the data file; held to the bar
TABLE_LABELS = ("full, all MRs, table source", "prefix, all MRs, table source")  # --source table


def by_slots_table(results: dict[str, dict[str, Any]], engines: list[str]) -> list[str]:
    """Markdown lines: the all-data runs' BLEU / SER by MR size, dev and test."""
    first = results[engines[0]]["runs"][ALL_DATA_LABELS[0]]
    if "by_slots" not in first["test"]:
        return []
    columns = [f"{e} {label.split(',')[0]}" for e in engines for label in ALL_DATA_LABELS]
    lines = ["", "By the number of slots in the MR (BLEU / slot error rate of the all-data runs):", "",
             "| split | slots | MRs | " + " | ".join(columns) + " |",
             "|---|---|---:|" + "---:|" * len(columns)]
    for split in ("dev", "test"):
        for group, counts in first[split]["by_slots"].items():
            cells = [split, group, str(counts["n"])]
            for e in engines:
                for label in ALL_DATA_LABELS:
                    g = results[e]["runs"][label][split]["by_slots"][group]
                    cells.append(f"{g['bleu']:.1f} / {g['ser']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def missing_table(results: dict[str, dict[str, Any]], engines: list[str]) -> list[str]:
    """Markdown lines: how often each all-data run leaves a slot's value out, dev and test."""
    labels = ALL_DATA_LABELS + TABLE_LABELS
    if "missing_by_slot" not in results[engines[0]]["runs"][labels[0]]["test"]:
        return []
    short = {label: label.split(",")[0] + (" (table)" if label in TABLE_LABELS else "") for label in labels}
    columns = [f"{e} {short[label]}" for e in engines for label in labels]
    lines = ["", "Share of the MRs with a slot whose output leaves its value out, dev / test:", "",
             "| slot | MRs (dev / test) | " + " | ".join(columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    first = results[engines[0]]["runs"][labels[0]]
    for slot in first["test"]["missing_by_slot"]:
        counts = [first[split]["missing_by_slot"].get(slot, {}).get("n", 0) for split in ("dev", "test")]
        cells = [slot, f"{counts[0]} / {counts[1]}"]
        for e in engines:
            for label in labels:
                record = results[e]["runs"][label]
                rates = [record[split]["missing_by_slot"].get(slot) for split in ("dev", "test")]
                cells.append(" / ".join("-" if x is None else f"{x['missing']:.2f}" for x in rates))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def low_data_seeds(runs: dict[str, Any]) -> list[int]:
    """The low-data seeds that were run (all of them, or one in a quick check)."""
    return [seed for seed in LOW_DATA_SEEDS if low_label("full", LOW_DATA_SIZES[0], seed) in runs]


def low_data_bleu(runs: dict[str, Any], method: str, size: int, unit: str = "mr") -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed) of dev BLEU over the low-data seeds."""
    labels = [low_label(method, size, seed, unit) for seed in low_data_seeds(runs)]
    scores = np.array([runs[label]["dev"]["bleu"] for label in labels])
    return float(scores.mean()), float(scores.std(ddof=1)) if len(scores) > 1 else 0.0


def verdicts(results: dict[str, dict[str, Any]]) -> list[str]:
    """Sentences computed from the numbers: the mid-60s bar, the low-data claim, engine agreement."""
    out = []
    for e, res in results.items():
        runs = res["runs"]
        full, prefix = (runs[label]["dev"]["bleu"] for label in ALL_DATA_LABELS)
        reach = "both reach" if min(full, prefix) >= MID_60S else "do not both reach"
        out.append(f"{e}: full fine-tuning {full:.1f} and prefix-tuning {prefix:.1f} dev BLEU on all the "
                   f"data; they {reach} the mid-60s (taken as {MID_60S:.0f} or more) that a 1M-parameter "
                   "model of this kind is expected to reach.")
        for labels, how in ((ALL_DATA_LABELS, "the MR as in the data file"),
                            (TABLE_LABELS, "the MR as a table")):
            fd, ft, pd, pt = (runs[label][split] for label in labels for split in ("dev", "test"))
            out.append(f"{e}, {how}: full fine-tuning {fd['bleu']:.1f} dev / {ft['bleu']:.1f} test BLEU "
                       f"(slot error rate {fd['ser']:.2f} / {ft['ser']:.2f}), prefix-tuning "
                       f"{pd['bleu']:.1f} / {pt['bleu']:.1f} ({pd['ser']:.2f} / {pt['ser']:.2f}).")
        n_seeds = len(low_data_seeds(runs))
        for unit in LOW_DATA_UNITS:
            for m in ("prefix", "bitfit"):
                gaps, spreads = [], []
                for n in LOW_DATA_SIZES:
                    (mean, sd), (full_mean, full_sd) = (low_data_bleu(runs, k, n, unit) for k in (m, "full"))
                    gaps.append(mean - full_mean)
                    spreads.append(float(np.hypot(sd, full_sd)))  # the spread of a difference of two runs
                wins = sum(g > 0 for g in gaps)
                clear = sum(g > s for g, s in zip(gaps, spreads))
                listing = ", ".join(f"{n}: {g:+.1f}" for n, g in zip(LOW_DATA_SIZES, gaps))
                out.append(f"{e}: {m} minus full fine-tuning, mean dev BLEU over {n_seeds} seeds, by "
                           f"{UNIT_NAMES[unit]}: {listing} ({m} ahead at {wins} of {len(gaps)} sizes, by "
                           f"more than the seed spread sqrt(sd_{m}² + sd_full²) at {clear}).")
    if len(results) == 2:
        a, b = (results[e]["runs"] for e in results)
        diffs = [abs(a[k]["dev"]["bleu"] - b[k]["dev"]["bleu"]) for k in a if k in b]
        out.append(f"Engines: the largest dev BLEU difference between the two engines over {len(diffs)} runs "
                   f"is {max(diffs):.1f} (float32 round-off grows over hundreds of steps, so the runs are "
                   f"not bit-identical).")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=(*ENGINES, "both"), default="torch",
                        help="who does the training steps (default torch)")
    parser.add_argument("--size", choices=list(SIZES), default="small", help="model shape (default small)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run, to check that it all runs")
    parser.add_argument("--runs", type=path_arg,
                        help="folder for checkpoints and run records (default runs/scale)")
    parser.add_argument("--out", type=path_arg,
                        help="folder for scale.md and results/scale.json (default runs/scale)")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS and PyTorch threads")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    quick = args.quick or quick_mode()
    engines = list(ENGINES) if args.engine == "both" else [args.engine]
    suffix = "-quick" if quick else ""
    root = Path(f"runs/scale{suffix}" if args.runs is None else args.runs)
    out = Path(f"runs/scale{suffix}" if args.out is None else args.out)
    for flag, folder in (("--runs", root), ("--out", out)):
        if touches_shipped(folder):
            raise ValueError(f"{flag} {folder} lies in the shipped checkpoints' folder; give another folder")
        check_writable_dir(folder, flag)
    if "torch" in engines:
        try:
            import torch
        except ImportError:
            print("tinypft scale: --engine torch needs PyTorch (pip install torch)", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    command = shlex.join(["tinypft", "scale", "--engine", args.engine, "--size", args.size]
                         + (["--quick"] if quick else []))
    start = time.perf_counter()
    with num_threads(args.threads):
        results = {e: run_engine(e, args.size, root, quick, not args.no_progress) for e in engines}
    md = out / "scale.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(md, report(results, args.size, command).encode("utf-8"))
    payload = {"command": command, "size": args.size, "results": results}
    js = write_json(out / "results" / "scale.json", payload)
    print(f"{time.perf_counter() - start:.0f} s; wrote {md} and {js}")
    print("\n".join(verdicts(results)))
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``tinypft scale`` kept (for the one line ``tinypft.cli`` prints)."""
    quick = args.quick or quick_mode()
    root = Path(f"runs/scale{'-quick' if quick else ''}" if args.runs is None else args.runs)
    return (f"the finished runs are kept in {root}/<engine>/runs.json; rerun the same command to "
            "continue with the others")
