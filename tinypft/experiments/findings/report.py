"""The report of ``tinypft findings``: the paper against tinypft in one table, then per experiment
a Markdown table of its rows and its verdicts, written to ``results.md``; the same numbers as JSON
in ``results/findings.json``."""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...serialization import atomic_write_bytes
from ..report import write_json
from .experiments import Experiment, sweep_note
from .runs import Context, NeedsRuns, Row
from .verdicts import Summary, Verdict, digits, metric_label, summarize_rows

PROMPT_TASK_NOTE = (
    "The prompt experiments use the `rating` task (an E2E reference -> low | average | high, the words "
    "the pretraining corpus uses for the customer rating): class-label initialization needs label words, "
    "and ensembles vote over classes; a classification run is scored without generation, so more of them "
    "fit the budget."
)


def table(rows: Sequence[Row], summary: Summary, task: str) -> str:
    """A Markdown table: trainable parameters, the learning rate, dev and test metrics (mean ± sd),
    the per-seed values of the main test metric, and the training seconds."""
    if task == "e2e":
        keys = ["dev_bleu", "dev_ser", "test_bleu", "test_ser"]
        if all("unseen_bleu" in summary[r.label] for r in rows if r.label != "frozen"):
            keys = ["dev_bleu", "seen_bleu", "seen_ser", "unseen_bleu", "unseen_ser"]
    else:
        keys = ["dev_accuracy", "test_accuracy"]
    main = keys[-2] if task == "e2e" else keys[-1]
    header = ["run", "trainable", "lr", *map(metric_label, keys), f"{metric_label(main)} per seed", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        s = summary[row.label]
        lr = row.specs[0].settings.lr
        cells = [row.label, f"{s['trainable_params'].mean:,.0f}", f"{lr:.0e}" if lr else "-"]
        cells += [s[k].show(digits(k)) if k in s else "-" for k in keys]
        cells += [", ".join(f"{v:.{digits(main)}f}" for v in s[main].values) if main in s else "-"]
        cells += [f"{s['train_seconds'].mean:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    """One experiment's part of the report: its Markdown, its verdicts and JSON entry (None when it
    did not run) and the wall seconds of the runs it reports, by digest (a shared run counts once)."""

    markdown: str
    verdicts: list[Verdict] = field(default_factory=list)
    data: dict[str, Any] | None = None
    run_seconds: dict[str, float] = field(default_factory=dict)


def experiment_section(exp: Experiment, ctx: Context, skipped: Sequence[str]) -> Section:
    """The claim, the table, the learning rates chosen and the verdicts of ``exp``; or, while a run
    is missing, how to run it."""
    note = next((m for m in skipped if m.startswith(exp.name + ":")), None)
    ctx.pending = []
    try:
        rows = None if note else exp.rows(ctx)
    except NeedsRuns:
        rows = None
    except (ValueError, FileNotFoundError) as err:  # e.g. a checkpoint that does not load yet
        rows, note = None, str(err).replace(f"{Path.cwd()}/", "")
    if ctx.pending:  # a learning-rate sweep is missing: the rows are stand-ins
        rows = None
    summary = summarize_rows(rows, ctx) if rows else None
    head = f"## {exp.name}: {exp.title}\n\n**Claim** ({exp.claim_source}): {exp.claim}.\n"
    if summary is None:
        why = note or "not all of its runs are in the cache"
        return Section(f"{head}\nNot run ({why}): `tinypft findings --only {exp.name}`.\n")
    verdicts = exp.verdict(summary, ctx, rows)
    digests = [d for row in rows for d in [*(spec.digest for spec in row.specs), *row.sweep_runs]]
    run_seconds = {d: ctx.cache[d]["wall_seconds"] for d in digests}
    sweeps = [sweep_note(row) for row in rows if row.sweep]
    chosen = "\nLearning rates chosen on the validation loss: " + "; ".join(sweeps) + ".\n" if sweeps else ""
    bullets = "\n".join(f"* {v.text()}" for v in verdicts)
    data = {
        "claim": exp.claim, "source": exp.claim_source, "task": exp.task,
        "verdicts": [dataclasses.asdict(v) for v in verdicts],
        "rows": {label: {k: dataclasses.asdict(v) for k, v in stats.items()} for label,
                 stats in summary.items()},
        "runs": {row.label: [spec.digest for spec in row.specs] for row in rows},
        "learning_rates": {row.label: {"chosen": row.specs[0].settings.lr, "tried": row.sweep}
                           for row in rows if row.sweep},
    }
    return Section(f"{head}\n{table(rows, summary, exp.task)}\n{chosen}\n{bullets}\n", verdicts, data,
                   run_seconds)


def overview(experiments: Sequence[Experiment], sections: Sequence[Section]) -> list[str]:
    """The paper against tinypft: one line per verdict, with the paper's claim and our numbers."""
    lines = ["## The paper against tinypft", "", "| finding | the paper | tinypft | verdict |",
             "|---|---|---|---|"]
    for exp, section in zip(experiments, sections):
        if not section.verdicts:
            lines.append(f"| {exp.name} | {exp.claim} | not run | - |")
            continue
        for i, v in enumerate(section.verdicts):
            paper = exp.claim if i == 0 else "〃"
            numbers = v.numbers.replace("|", "/")
            lines.append(f"| {exp.name}: {v.claim} | {paper} | {numbers} | **{v.status}** |")
    return lines + [""]


SCALE_NOTE = (
    "**A sense of scale.** The papers' models have 110M (BERT-base) to 11B (T5-XXL) parameters, pretrained "
    "on billions of words; GPT-2 medium, the Prefix-Tuning paper's model, reaches 68.8 BLEU on E2E with "
    "full fine-tuning. The `small` checkpoint here has 1.07M parameters, pretrained in-domain on the E2E "
    "training references grouped by MR (`tinypft pretrain`), which is what lets the parameter-efficient "
    "methods steer it: `real_e2e` below is how far this recipe gets at this size. `tinypft scale --engine "
    "both` retrains the whole recipe, pretraining included, with PyTorch and with tinypft doing the steps, "
    "to check that tinypft's engine is not what limits these numbers (its report goes to `runs/scale/`)."
)


def run_kind(record: Mapping[str, Any]) -> tuple:
    """What sets a run's speed in tokens per second: the method, task and model size, and for a
    prefix its length, mode and MLP (the learning rate, seed and data size do not)."""
    peft = record.get("hyperparameters", {}).get("peft_config") or {}
    return (record.get("method"), record.get("task"), record.get("size"), peft.get("num_virtual_tokens"),
            peft.get("mode"), peft.get("prefix_projection"))


def seconds_at_median_speed(records: Sequence[Mapping[str, Any]]) -> float:
    """The runs' total wall seconds had each run gone at the median speed (tokens per second) of the
    runs of its kind: a run slowed by other work on the machine counts at its kind's usual speed.
    Runs that train nothing (no speed recorded) count as they took."""
    speeds = defaultdict(list)
    for r in records:
        if r.get("tokens_per_sec"):
            speeds[run_kind(r)].append(r["tokens_per_sec"])
    median = {kind: statistics.median(s) for kind, s in speeds.items()}
    return sum(r["wall_seconds"] * (r["tokens_per_sec"] / median[run_kind(r)] if r.get("tokens_per_sec")
                                    else 1.0) for r in records)


def introduction(ctx: Context, command: str, run_seconds: float, runs: int, seconds: float | None,
                 jobs: int = 1, median_seconds: float | None = None) -> list[str]:
    """The lines above the sections: the command, the model, budget and seeds, and how to read a table."""
    return [
        "# Results: the papers' findings at mini scale",
        "",
        "Every number here was computed by the command below; nothing is typed in by hand, and each verdict "
        "is computed from its table's numbers by the rules of `tinypft/experiments/findings/verdicts.py`.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Model: the shipped `{ctx.size}` checkpoint (the `prompt_scale` rows: each size's). Budget per run: "
        f"{ctx.budget.describe()}. Seeds: {', '.join(map(str, ctx.seeds))} (the prompt ensemble: five; the "
        f"frozen model trains nothing, so it runs once). The {runs} runs behind these tables, the "
        f"learning-rate sweeps included, took {run_seconds / 3600:.1f} hours of training and scoring on one "
        f"BLAS thread each: {run_seconds / 3600 / jobs:.1f} hours of wall time at {jobs} at a time"
        + (f" (this call: {seconds / 3600:.1f} hours; cached runs are not repeated)." if seconds is not None
           else ".")
        + (f" Some runs shared the cores with other work; had each gone at the median speed (tokens per "
           f"second) of the runs of its kind, they would have taken {median_seconds / 3600:.1f} hours: "
           f"{median_seconds / 3600 / jobs:.1f} hours of wall time at {jobs} at a time."
           if median_seconds is not None and median_seconds < 0.95 * run_seconds else ""),
        "",
        "Each cell is the mean ± the sample standard deviation over seeds; the per-seed values of the main "
        "test metric follow. Dev and test are fixed, evenly spaced subsets of the splits. BLEU is corpus "
        "BLEU against all references of an MR; SER is the slot error rate (missing plus invented values per "
        "MR slot: above 1 means more errors than slots). A learning rate is chosen among the method's "
        "default times 1/3, 1 and 3 on the first seed's validation loss (dev; with little data a held-out "
        "slice of the training MRs), and every run keeps the step with the lowest validation loss.",
        "",
        "The verdicts: **Reproduced** or **Not reproduced** when the difference exceeds sqrt(sd_a² + sd_b²), "
        "the spread of a difference of two single runs; **Inconclusive** when it does not; **No evidence** "
        "when a row compared did not learn the task (its test SER does not beat the frozen model's, or it "
        "answers one class), or, for extrapolation, when the two rows already differ on the seen data.",
        "",
        PROMPT_TASK_NOTE,
        "",
        "These are models of 0.1-5M parameters pretrained on 40,000 restaurant descriptions: a finding that "
        "does not reproduce here says something about this scale, not about the paper.",
        "",
        SCALE_NOTE,
        "",
    ]


def write_results(experiments: Sequence[Experiment], ctx: Context, out: Path, command: str,
                  skipped: Sequence[str], seconds: float | None, jobs: int = 1) -> list[Path]:
    """``out/results.md`` and ``out/results/findings.json`` from every experiment the cache completes;
    ``seconds`` is this call's time (None: it ran nothing), ``jobs`` the runs it made at a time."""
    sections = [experiment_section(exp, ctx, skipped) for exp in experiments]
    used = {digest: s for section in sections for digest, s in section.run_seconds.items()}
    run_seconds = sum(used.values())
    median_seconds = seconds_at_median_speed([ctx.cache[d] for d in used])
    md = out / "results.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    lines = introduction(ctx, command, run_seconds, len(used), seconds, jobs, median_seconds)
    missing = [exp.name for exp, section in zip(experiments, sections) if section.data is None]
    if missing:
        done = len(experiments) - len(missing)
        lines += [f"**Incomplete.** {done} of {len(experiments)} experiments have all their runs in the "
                  f"cache; {', '.join(missing)} are listed as not run until the command above completes "
                  "them.", ""]
    lines += overview(experiments, sections)
    atomic_write_bytes(md, "\n".join(lines + [s.markdown for s in sections]).encode("utf-8"))
    data = {exp.name: s.data for exp, s in zip(experiments, sections) if s.data is not None}
    payload = {"command": command, "budget": dataclasses.asdict(ctx.budget), "seeds": list(ctx.seeds),
               "size": ctx.size, "run_seconds": run_seconds, "run_seconds_at_median_speed": median_seconds,
               "experiments": data}
    js = write_json(out / "results" / "findings.json", payload)
    return [md, js]
