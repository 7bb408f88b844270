"""From the runs' records to verdicts: the statistics over seeds and the rules that turn them into
verdicts that cannot mislead.

Each row is summarized by the mean, the sample standard deviation (ddof = 1) and the per-seed
values of every metric (``Stat``). A verdict is one of four:

    Reproduced       the numbers agree with the claim, beyond the seed spread
    Not reproduced   they contradict it, beyond the seed spread
    Inconclusive     the difference is within the seed spread:
                         |mean_a - mean_b| <= sqrt(sd_a^2 + sd_b^2)
                     (the spread of a difference of two single runs)
    No evidence      a row it compares did not learn the task, so its numbers say nothing either way:
                         generation: its test SER does not beat the frozen model's;
                         classification: on some seed it answers one class for every test example;
                         extrapolation: the two rows differ in quality on the seen data already

``judge`` applies these in that order (evidence first), ``stability`` defines "unstable" (it
diverges, or its result depends on the learning rate or the initialization more than the other's
does), and ``best_on_dev`` makes the choices an experiment needs on dev, never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .runs import Context, Row

REPRODUCED, NOT_REPRODUCED = "Reproduced", "Not reproduced"
INCONCLUSIVE, NO_EVIDENCE = "Inconclusive", "No evidence"

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
    """A flat key as the tables name it: "test_bleu" -> "test BLEU", "unseen_ser" -> "unseen SER"."""
    split, metric = key.split("_", 1)
    return f"{split} {dict(bleu='BLEU', ser='SER', accuracy='accuracy', loss='loss').get(metric, metric)}"


Summary = dict[str, dict[str, Stat]]  # row label -> metric -> its mean, sd and values over seeds

SPLITS = ("dev", "test", "seen", "unseen", "valid")


def stat(values: Sequence[float]) -> Stat:
    """The mean, the sample standard deviation (ddof = 1; 0 for one value) and the values."""
    values = [float(v) for v in values]
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return Stat(float(np.mean(values)), sd, values)


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """A record's numbers by flat key: dev_bleu, test_ser, unseen_bleu, dev_accuracy, test_one_class
    (1.0 when every test prediction is the same class), diverged (1.0 for a non-finite or rising loss)."""
    flat = {f"{split}_{m}": float(record[split][m]) for split in SPLITS if record.get(split)
            for m in ("bleu", "ser", "accuracy", "loss") if record[split].get(m) is not None}
    for split in ("dev", "test"):
        counts = (record.get(split) or {}).get("class_counts")
        if counts is not None:
            flat[f"{split}_one_class"] = float(sum(c > 0 for c in counts) <= 1)
    flat["diverged"] = float(diverged(record))
    for key in ("first_train_loss", "final_train_loss"):
        if record.get(key) is not None:
            flat[key] = float(record[key])
    return flat | {"trainable_params": record["trainable_params"], "train_seconds": record["train_seconds"]}


def diverged(record: dict[str, Any]) -> bool:
    """Training diverged: its loss became non-finite, or it ended above where it started."""
    first, last = record.get("first_train_loss"), record.get("final_train_loss")
    if first is None or last is None:
        return False
    return not (np.isfinite(first) and np.isfinite(last)) or last > first


def summarize_rows(rows: Sequence[Row], ctx: Context) -> Summary | None:
    """label -> metric -> Stat over the row's seeds; None while a run is missing from the cache."""
    out = {}
    for row in rows:
        records = [ctx.record(spec) for spec in row.specs]
        if any(r is None for r in records):
            return None
        flat = [metrics_of(r) for r in records]
        keys = [k for k in flat[0] if all(k in f for f in flat)]
        out[row.label] = {key: stat([f[key] for f in flat]) for key in keys}
    return out


# ----------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """One claim's verdict: the status, the claim (short), and the numbers behind it."""

    status: str
    claim: str
    numbers: str

    def text(self) -> str:
        tail = {INCONCLUSIVE: " (the difference is within the seed spread)"}.get(self.status, "")
        return f"**{self.status}** ({self.claim}): {self.numbers}{tail}."


def no_evidence_reason(summary: Summary, label: str, frozen: str | None = None) -> str | None:
    """Why row ``label`` gives no evidence for or against a claim, or None if it does.

    Classification: on some seed it answers one class for every test example. Generation (when the
    frozen row ``frozen`` is given): its mean test SER is not below the frozen model's (without a
    slot error rate, as on WebNLG: its mean dev BLEU is not above the frozen model's)."""
    s = summary[label]
    if "test_one_class" in s and max(s["test_one_class"].values) > 0:
        n, seeds = int(sum(s["test_one_class"].values)), len(s["test_one_class"].values)
        return f"{label} answers one class for every test example on {n} of {seeds} seeds"
    if frozen is None or label == frozen:
        return None
    if "test_ser" in s and "test_ser" in summary[frozen]:
        mine, base = s["test_ser"].mean, summary[frozen]["test_ser"].mean
        if mine >= base:
            return f"{label}'s test SER {mine:.3f} does not beat the frozen model's {base:.3f}"
    elif "dev_bleu" in s and "dev_bleu" in summary[frozen]:
        mine, base = s["dev_bleu"].mean, summary[frozen]["dev_bleu"].mean
        if mine <= base:
            return f"{label}'s dev BLEU {mine:.1f} does not beat the frozen model's {base:.1f}"
    return None


def difference(a_name: str, a: Stat, b_name: str, b: Stat, metric: str) -> tuple[float, float, str]:
    """(a - b, the seed spread sqrt(sd_a^2 + sd_b^2), a clause with both rows' numbers)."""
    diff, spread = a.mean - b.mean, float(np.hypot(a.sd, b.sd))
    d = digits(metric)
    clause = (f"{a_name} {a.show(d)} vs {b_name} {b.show(d)} {metric_label(metric)}: "
              f"difference {diff:+.{d}f}, seed spread {spread:.{d}f}")
    return diff, spread, clause


def compare(a_name: str, a: Stat, b_name: str, b: Stat, metric: str,
            claim: str = "higher") -> tuple[str, str]:
    """The seed-spread rule alone: is ``a`` better than ``b`` (claim "higher"; lower is better for
    SER and loss), or no worse (claim "comparable")? Returns (status, clause)."""
    diff, spread, clause = difference(a_name, a, b_name, b, metric)
    better = -diff if metric.endswith(("ser", "loss")) else diff
    tolerance = spread + 1e-9  # equal means and no spread: not a difference
    if claim == "comparable":
        return (REPRODUCED if better >= -tolerance else NOT_REPRODUCED), clause
    if abs(diff) <= tolerance:
        return INCONCLUSIVE, clause
    return (REPRODUCED if better > 0 else NOT_REPRODUCED), clause


def judge(claim: str, summary: Summary, a: str, b: str, metric: str, how: str = "higher",
          frozen: str | None = None) -> Verdict:
    """The verdict on "row ``a`` beats (``how`` = "higher") or matches ("comparable") row ``b`` on
    ``metric``": no evidence when either row did not learn the task, else the seed-spread rule."""
    _, _, clause = difference(a, summary[a][metric], b, summary[b][metric], metric)
    reasons = [r for r in (no_evidence_reason(summary, row, frozen) for row in (a, b)) if r]
    if reasons:
        return Verdict(NO_EVIDENCE, claim, f"{clause}; but {' and '.join(reasons)}")
    status, clause = compare(a, summary[a][metric], b, summary[b][metric], metric, how)
    return Verdict(status, claim, clause)


def judge_extrapolation(claim: str, summary: Summary, a: str, b: str, seen: str, unseen: str,
                        frozen: str | None = None) -> Verdict:
    """"``a`` extrapolates better than ``b``": ``a`` beats ``b`` on the ``unseen`` metric, but only
    counts when the two are comparable on the ``seen`` metric (within the seed spread, both ways):
    otherwise a gap on unseen data may just be the gap on seen data."""
    _, spread, seen_clause = difference(a, summary[a][seen], b, summary[b][seen], seen)
    gap = summary[a][seen].mean - summary[b][seen].mean
    verdict = judge(claim, summary, a, b, unseen, frozen=frozen)
    if verdict.status != NO_EVIDENCE and abs(gap) > spread + 1e-9:
        return Verdict(NO_EVIDENCE, claim, f"{verdict.numbers}; but on seen data already {seen_clause}, "
                       "so the quality in distribution is not comparable")
    return Verdict(verdict.status, claim, f"{verdict.numbers} (seen data: {seen_clause})")


@dataclass
class Sensitivity:
    """How much one recipe's result depends on its settings: the divergent runs, and the range of
    the mean dev metric over learning rates and over initializations."""

    diverged: int  # runs (all seeds, all settings)
    runs: int
    lr_range: float  # max - min of the per-learning-rate mean of the metric
    init_range: float  # max - min of the per-initialization mean (0 with one initialization)

    def show(self, d: int) -> str:
        return (f"{self.diverged}/{self.runs} runs diverged, spread over learning rates "
                f"{self.lr_range:.{d}f}, over initializations {self.init_range:.{d}f}")


def sensitivity(
    summary: Summary, lr_rows: Sequence[str], init_rows: Sequence[str], metric: str
) -> Sensitivity:
    """``Sensitivity`` of a recipe from its rows: one per learning rate, one per initialization."""
    rows = list(dict.fromkeys([*lr_rows, *init_rows]))
    diverged_runs = int(sum(sum(summary[r]["diverged"].values) for r in rows))
    runs = sum(len(summary[r]["diverged"].values) for r in rows)

    def spread(labels: Sequence[str]) -> float:
        means = [summary[r][metric].mean for r in labels]
        return float(max(means) - min(means)) if len(means) > 1 else 0.0

    return Sensitivity(diverged_runs, runs, spread(lr_rows), spread(init_rows))


def judge_stability(claim: str, summary: Summary, unstable: tuple[str, Sequence[str], Sequence[str]],
                    stable: tuple[str, Sequence[str], Sequence[str]], metric: str) -> Verdict:
    """"``unstable`` is less stable than ``stable``", each given as (name, rows per learning rate,
    rows per initialization). Unstable means: it diverges more often, or its result moves more with
    the learning rate and with the initialization than the other's does, by more than the seed
    spread of the rows involved (the largest sd among them, times sqrt 2)."""
    name_u, lrs_u, inits_u = unstable
    name_s, lrs_s, inits_s = stable
    su, ss = sensitivity(summary, lrs_u, inits_u, metric), sensitivity(summary, lrs_s, inits_s, metric)
    involved = [*lrs_u, *inits_u, *lrs_s, *inits_s]
    noise = float(np.sqrt(2) * max(summary[r][metric].sd for r in involved))
    d = digits(metric)
    numbers = (f"{name_u}: {su.show(d)}; {name_s}: {ss.show(d)} "
               f"({metric_label(metric)}; seed noise {noise:.{d}f})")
    if su.diverged > ss.diverged:
        return Verdict(REPRODUCED, claim, numbers)
    more = (su.lr_range - ss.lr_range, su.init_range - ss.init_range)
    if all(m > noise for m in more):
        return Verdict(REPRODUCED, claim, numbers)
    if su.diverged < ss.diverged or all(m < -noise for m in more):
        return Verdict(NOT_REPRODUCED, claim, numbers)
    return Verdict(INCONCLUSIVE, claim, numbers)


def best_on_dev(summary: Summary, labels: Sequence[str], dev_key: str) -> str:
    """The label with the best mean dev metric (lowest for SER and loss)."""
    sign = -1 if dev_key.endswith(("ser", "loss")) else 1
    return max(labels, key=lambda label: sign * summary[label][dev_key].mean)
