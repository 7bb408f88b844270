"""From the runs' records to verdicts: the statistics over seeds and the rules that turn them into
sentences.

Each row is summarized by the mean, the sample standard deviation (ddof = 1) and the per-seed
values of every metric (``Stat``). Two means differ "beyond the seed spread" when

    |mean_a - mean_b| > sqrt(sd_a^2 + sd_b^2)      (the spread of the difference of single runs)

``compare`` applies that rule to a claim ("higher" or "comparable"), ``sentence`` writes the verdict
(**Reproduced**, **Not reproduced** or **Inconclusive**) with the numbers behind it, and
``best_on_dev`` makes the choices an experiment needs on dev, never on test.
``constant_answer_note`` names the classification rows that learned to answer one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...data import load_e2e, rating_task
from ..finetune import evenly_spaced
from .runs import Context, Row

# ----------------------------------------------------------------------------- statistics over seeds


@dataclass
class Stat:
    """A metric over seeds: mean, sample standard deviation (0 for one seed) and the values."""

    mean: float
    sd: float
    values: list[float]

    def show(self, digits: int = 3) -> str:
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"


def digits(metric: str) -> int:
    """Decimals shown: 1 for BLEU (0-100), 3 for accuracy and SER."""
    return 1 if metric.endswith("bleu") else 3


def metric_label(key: str) -> str:
    """A flat key as the tables name it: "test_bleu" -> "test BLEU"."""
    split, metric = key.split("_", 1)
    return f"{split} {dict(bleu='BLEU', ser='SER', accuracy='accuracy').get(metric, metric)}"


Summary = dict[str, dict[str, Stat]]  # row label -> metric -> its mean, sd and values over seeds


def stat(values: Sequence[float]) -> Stat:
    """The mean, the sample standard deviation (ddof = 1; 0 for one value) and the values."""
    values = [float(v) for v in values]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return Stat(float(np.mean(values)), sd, values)


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers by flat key: dev_bleu, test_ser, extrap_bleu, dev_accuracy, ..."""
    flat = {f"{split}_{m}": record[split][m] for split in ("dev", "test", "extrap") if record.get(split)
            for m in ("bleu", "ser", "accuracy") if record[split].get(m) is not None}
    return flat | {"trainable_params": record["trainable_params"], "train_seconds": record["train_seconds"]}


def summarize_rows(rows: Sequence[Row], ctx: Context) -> Summary | None:
    """label -> metric -> Stat over the row's seeds; None while a run is missing from the cache."""
    out = {}
    for row in rows:
        records = [ctx.record(spec) for spec in row.specs]
        if any(r is None for r in records):
            return None
        flat = [metrics_of(r) for r in records]
        out[row.label] = {key: stat([f[key] for f in flat]) for key in flat[0]}
    return out


# ----------------------------------------------------------------------------- verdict rules


def compare(
    a_name: str, a: Stat, b_name: str, b: Stat, metric: str, claim: str = "higher"
) -> tuple[bool | None, str]:
    """Is ``a`` higher than ``b`` (claim "higher"), or no worse (claim "comparable")? Returns
    (True: the numbers agree, False: they contradict it, None: within the seed spread) and a clause.

    The difference counts when it exceeds sqrt(sd_a^2 + sd_b^2), the spread of a difference of
    single runs; "comparable" holds unless ``a`` is worse by more than that.
    """
    diff, spread = a.mean - b.mean, float(np.hypot(a.sd, b.sd))
    lower_better = metric.endswith("ser")
    better = -diff if lower_better else diff
    d = digits(metric)
    clause = (f"{a_name} {a.show(d)} vs {b_name} {b.show(d)} {metric_label(metric)}: "
              f"difference {diff:+.{d}f}, seed spread {spread:.{d}f}")
    spread_tol = spread + 1e-9  # equal means, no spread: not a difference
    if claim == "comparable":
        return (better >= -spread_tol), clause
    if abs(diff) <= spread_tol:
        return None, clause
    return better > 0, clause


def sentence(status: bool | None, clause: str, what: str = "") -> str:
    """The plain verdict: reproduced, not reproduced, or inconclusive, with the numbers behind it."""
    head = {True: "**Reproduced**", False: "**Not reproduced**", None: "**Inconclusive**"}[status]
    tail = {True: "", False: "", None: " (the difference is within the seed spread)"}[status]
    return f"{head}{' (' + what + ')' if what else ''}: {clause}{tail}."


def best_on_dev(summary: Summary, labels: Sequence[str], dev_key: str) -> str:
    """The label with the best mean dev metric (lowest for SER)."""
    sign = -1 if dev_key.endswith("ser") else 1
    return max(labels, key=lambda label: sign * summary[label][dev_key].mean)


# ----------------------------------------------------------------------------- constant answers


def one_class_accuracies(ctx: Context, split: str) -> dict[str, float]:
    """The accuracy of answering one class for every scored ``rating`` example of ``split``."""
    examples = evenly_spaced(rating_task(load_e2e(split)).examples, ctx.budget.cls_eval_size)
    labels = [label for _, label in examples]
    return {label: labels.count(label) / len(labels) for label in sorted(set(labels))}


def constant_answer_note(rows: Sequence[Row], summary: Summary, ctx: Context) -> list[str]:
    """A sentence naming the rows whose every seed scores exactly what answering one class for every
    example scores on dev and on test: they learned a constant, and verdicts between such rows say
    nothing about the claim."""
    dev, test = one_class_accuracies(ctx, "dev"), one_class_accuracies(ctx, "test")
    constant = []
    for row in rows:
        s = summary[row.label]
        same = [label for label in dev if all(abs(v - dev[label]) < 1e-9 for v in s["dev_accuracy"].values)
                and all(abs(v - test.get(label, 0.0)) < 1e-9 for v in s["test_accuracy"].values)]
        if same:
            constant.append(f"{row.label} (\"{same[0]}\")")
    if not constant:
        return []
    shares = ", ".join(f"{label} {dev[label]:.3f} / {test.get(label, 0.0):.3f}" for label in dev)
    every = ""
    if len(constant) == len(rows):
        every = " Every row does: the verdicts above compare constant answers and are no evidence either way."
    return [f"**Constant answers**: {', '.join(constant)} answer one class for every example on every seed "
            f"(answering one class scores, dev / test: {shares}).{every}"]

