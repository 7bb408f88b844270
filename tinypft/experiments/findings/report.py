"""The report of ``tinypft findings``: a Markdown table and the verdicts per experiment, written to
``results.md``, and the same numbers as JSON in ``results/findings.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...serialization import atomic_write_bytes
from ..report import write_json
from .experiments import Experiment
from .runs import Context, Row
from .verdicts import Summary, constant_answer_note, digits, metric_label, summarize_rows

PROMPT_TASK_NOTE = (
    "The prompt experiments use the `rating` task (a reference -> low | average | high): class-label "
    "initialization needs label words, and ensembles vote over classes; a classification run is also "
    "scored without generation, so more of them fit the budget."
)


def table(rows: Sequence[Row], summary: Summary, task: str) -> str:
    """A Markdown table: trainable parameters, dev and test metrics (mean ± sd), the per-seed test values."""
    e2e = ["dev_bleu", "dev_ser", "test_bleu", "test_ser"]
    keys = e2e if task == "e2e" else ["dev_accuracy", "test_accuracy"]
    if task == "e2e" and all("extrap_bleu" in summary[r.label] for r in rows):
        keys += ["extrap_bleu", "extrap_ser"]
    main = keys[2] if task == "e2e" else keys[1]
    header = ["run", "trainable", *map(metric_label, keys), f"{metric_label(main)} per seed", "train s"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        s = summary[row.label]
        cells = [row.label, f"{s['trainable_params'].mean:,.0f}"]
        cells += [s[k].show(digits(k)) if k in s else "-" for k in keys]
        cells += [", ".join(f"{v:.{digits(main)}f}" for v in s[main].values)]
        cells += [f"{s['train_seconds'].mean:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)



@dataclass
class Section:
    """One experiment's part of the report: its Markdown, its JSON entry (None when it did not run)
    and the wall seconds of the runs it reports, by digest (a run shared by experiments counts once)."""

    markdown: str
    data: dict[str, Any] | None = None
    run_seconds: dict[str, float] = field(default_factory=dict)


def experiment_section(exp: Experiment, ctx: Context, skipped: Sequence[str]) -> Section:
    """The claim, the table and the verdicts of ``exp``; or, while a run is missing, how to run it."""
    note = next((m for m in skipped if m.startswith(exp.name + ":")), None)
    try:
        rows = None if note else exp.rows(ctx)
    except (ValueError, FileNotFoundError) as err:  # e.g. a checkpoint that does not load yet
        rows, note = None, str(err).replace(f"{Path.cwd()}/", "")
    summary = summarize_rows(rows, ctx) if rows else None
    head = f"## {exp.name}: {exp.title}\n\n**Claim** ({exp.claim_source}): {exp.claim}.\n"
    if summary is None:
        why = note or "not all of its runs are in the cache"
        return Section(f"{head}\nNot run ({why}): `tinypft findings --only {exp.name}`.\n")
    verdicts = exp.verdict(summary, ctx, rows)
    if exp.task != "e2e":
        verdicts += constant_answer_note(rows, summary, ctx)
    run_seconds = {spec.digest: ctx.record(spec)["wall_seconds"] for row in rows for spec in row.specs}
    bullets = "\n".join(f"* {v}" for v in verdicts)
    data = {
        "claim": exp.claim, "source": exp.claim_source, "task": exp.task, "verdicts": verdicts,
        "rows": {label: {k: dataclasses.asdict(v) for k, v in stats.items()}
                 for label, stats in summary.items()},
        "runs": {row.label: [spec.digest for spec in row.specs] for row in rows},
    }
    return Section(f"{head}\n{table(rows, summary, exp.task)}\n\n{bullets}\n", data, run_seconds)


def introduction(ctx: Context, command: str, run_seconds: float, runs: int, seconds: float) -> list[str]:
    """The lines above the sections: the command, the model, budget and seeds, and how to read a table."""
    return [
        "# Results: the papers' findings at mini scale",
        "",
        "Every number here was computed by the command below; nothing is typed in by hand, and the verdict "
        "under each table is computed from the table's numbers.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Model: the shipped `{ctx.size}` checkpoint (the `prompt_scale` rows: each size's). Budget per run: "
        f"{ctx.budget.describe()}. Seeds: {', '.join(map(str, ctx.seeds))} (the frozen model trains nothing, "
        f"so it runs once). The runs reported took {run_seconds / 60:.0f} minutes of training and scoring "
        f"({runs} runs; this call {seconds / 60:.1f} minutes, cached runs are not repeated).",
        "",
        "Each cell is the mean ± the sample standard deviation over seeds; the per-seed values of the test "
        "metric follow. Dev and test are fixed, evenly spaced subsets of the splits. A difference counts "
        "when it exceeds sqrt(sd_a² + sd_b²), the spread of a difference of two single runs; "
        "**Inconclusive** means it does not. Where a choice is made (random_subset's learning rate, the "
        "best length) it is made on dev. BLEU is corpus BLEU against all references of an MR; SER is the "
        "slot error rate.",
        "",
        PROMPT_TASK_NOTE,
        "",
        "These are models of 0.1-5M parameters trained for at most a thousand steps: a finding that does not "
        "reproduce here says something about this scale and budget, not about the paper. "
        "[scale.md](scale.md) (`tinypft scale`) asks how far the same architecture gets on the real E2E data "
        "when it is pretrained on the E2E references, and whether PyTorch, training the same recipe, gets "
        "further.",
        "",
    ]


def write_results(experiments: Sequence[Experiment], ctx: Context, out: Path, command: str,
                  skipped: Sequence[str], seconds: float) -> list[Path]:
    """``out/results.md`` and ``out/results/findings.json`` from every experiment the cache completes."""
    sections = [experiment_section(exp, ctx, skipped) for exp in experiments]
    used = {digest: s for section in sections for digest, s in section.run_seconds.items()}
    run_seconds = sum(used.values())
    md = out / "results.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    lines = introduction(ctx, command, run_seconds, len(used), seconds) + [s.markdown for s in sections]
    atomic_write_bytes(md, "\n".join(lines).encode("utf-8"))
    data = {exp.name: s.data for exp, s in zip(experiments, sections) if s.data is not None}
    payload = {"command": command, "budget": dataclasses.asdict(ctx.budget), "seeds": list(ctx.seeds),
               "size": ctx.size, "run_seconds": run_seconds, "experiments": data}
    js = write_json(out / "results" / "findings.json", payload)
    return [md, js]
