"""``tinypft findings``: the papers' findings, re-run at mini scale over seeds and reported honestly.

    tinypft findings                          # every experiment, 3 seeds, small model -> docs/results.md
    tinypft findings --only bitfit,prefix_modes --seeds 0,1,2,3,4
    tinypft findings --quick --only bitfit    # a few steps: checks that everything runs (seconds)

An experiment is a list of rows (e.g. "prefix", "full"); a row is one ``FinetuneSettings`` run per
seed. Every finished run's record goes into a JSON cache keyed by its settings, so an interrupted
run resumes and a second call skips what is done; runs shared by experiments (the default prefix
run appears in five of them) are trained once. Each row is summarized by the mean, the sample
standard deviation (ddof = 1) and the per-seed values of every metric, and each claim gets one
sentence computed from those numbers: two means differ "beyond the seed spread" when

    |mean_a - mean_b| > sqrt(sd_a^2 + sd_b^2)      (the spread of the difference of single runs)

Nothing is chosen on test: where a choice is made (random_subset's learning rate, the best prefix
length) it is made on dev, and the verdicts read the test numbers of what dev chose.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data import extrapolation_split, load_e2e, load_tokenizer, rating_task, with_source
from ..model import load_pretrained
from ..peft import BitFitConfig, PromptEnsemble, bias_change, get_peft_model, load_adapter
from ..threads import num_threads
from ..train import pad_batch, source_ids
from ..train.metrics import evaluate_generation
from ..train.pretrain import quick_mode
from .finetune import FinetuneSettings, evaluate, evenly_spaced, fit, label_token_ids, prepare, summarize
from .report import write_json


@dataclass(frozen=True)
class Budget:
    """The work per run: optimizer steps and scored examples, for generation (E2E) and classification."""

    name: str
    steps: int  # E2E
    eval_size: int  # dev, test (and extrapolation) MRs scored, evenly spaced
    cls_steps: int  # rating
    cls_eval_size: int  # dev and test examples
    max_new_tokens: int = 64

    def describe(self) -> str:
        return (f"E2E: {self.steps} steps of batch 8, {self.eval_size} dev and {self.eval_size} test MRs, "
                f"greedy decoding of at most {self.max_new_tokens} tokens; rating: {self.cls_steps} steps, "
                f"{self.cls_eval_size} dev and {self.cls_eval_size} test examples")


BUDGETS: dict[str, Budget] = {
    "default": Budget("default", steps=1000, eval_size=100, cls_steps=500, cls_eval_size=300),
    "quick": Budget("quick", steps=3, eval_size=3, cls_steps=3, cls_eval_size=6, max_new_tokens=6),
}


@dataclass(frozen=True)
class RunSpec:
    """One run: its settings, plus what findings adds (a BitFit component subset, an extra split)."""

    settings: FinetuneSettings
    components: tuple[str, ...] | None = None  # bitfit: train only these biases
    extrap: bool = False  # also score the extrapolation split (unseen names and landmarks)

    def key(self) -> str:
        """What the result depends on, as canonical JSON (progress bars do not count)."""
        values = dataclasses.asdict(self.settings) | {"progress": None}
        return json.dumps({"settings": values, "components": self.components, "extrap": self.extrap},
                          sort_keys=True)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.key().encode()).hexdigest()[:16]


@dataclass
class Row:
    """A table row: a label and one run per seed."""

    label: str
    specs: list[RunSpec]
    note: str = ""


@dataclass
class Experiment:
    """A finding: the paper's claim, the rows that test it, and the sentence the numbers give."""

    name: str
    title: str
    claim_source: str  # the paper
    claim: str  # its claim, one line
    task: str
    rows: Callable[[Context], list[Row]]
    verdict: Callable[[Summary, Context, Sequence[Row]], list[str]]
    extra: Callable[[Context, list[Row]], dict[str, Any]] | None = None  # a computed addition (ensembles)


@dataclass
class Context:
    """Where and how to run: the budget, seeds, model size, the cache and what was measured."""

    budget: Budget
    seeds: tuple[int, ...]
    size: str
    cache_path: Path
    checkpoint: str | None = None
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None

    def __post_init__(self) -> None:
        self.tokenizer = self.tokenizer or load_tokenizer()
        if self.cache_path.exists():
            self.cache = json.loads(self.cache_path.read_text())

    def settings(self, method: str, seed: int, task: str = "e2e", **overrides: Any) -> FinetuneSettings:
        """A run of ``method`` within the budget; ``overrides`` are FinetuneSettings fields."""
        b = self.budget
        values: dict[str, Any] = dict(
            method=method, task=task, size=self.size, checkpoint=self.checkpoint, seed=seed,
            steps=b.steps if task == "e2e" else b.cls_steps,
            eval_size=b.eval_size if task == "e2e" else b.cls_eval_size,
            max_new_tokens=b.max_new_tokens, progress=False,
        )
        if method == "prefix" and self.budget.name == "quick":
            values["prefix_hidden"] = 16
        values.update(overrides)
        if values["size"] != self.size:  # another size: its own shipped checkpoint
            values["checkpoint"] = None
        return FinetuneSettings(**values)

    def row(self, label: str, method: str, seeds: Sequence[int] | None = None, components: Any = None,
            extrap: bool = False, **overrides: Any) -> Row:
        specs = [RunSpec(self.settings(method, seed, **overrides), components, extrap)
                 for seed in (self.seeds if seeds is None else seeds)]
        return Row(label, specs)

    def record(self, spec: RunSpec) -> dict[str, Any] | None:
        return self.cache.get(spec.digest)

    def store(self, spec: RunSpec, record: dict[str, Any]) -> None:
        self.cache[spec.digest] = record | {"key": json.loads(spec.key())}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.cache_path, self.cache)

    def adapter_dir(self, spec: RunSpec) -> Path:
        return self.cache_path.parent / "adapters" / spec.digest


# ----------------------------------------------------------------------------- one run


def execute(spec: RunSpec, ctx: Context, callback: Any = None) -> dict[str, Any]:
    """Train and score one run; the record keeps the metrics, sizes, time and provenance (no samples)."""
    start = time.perf_counter()
    run = prepare(spec.settings, ctx.tokenizer)
    if spec.components:  # BitFit on a subset of components
        run.model = get_peft_model(run.model.base_model, BitFitConfig(components=spec.components))
        run.trainable_params, run.total_params = run.model.get_nb_trainable_parameters()
    before = {n: p.data.copy() for n, p in run.model.base_model.named_parameters() if n.endswith(".bias")}
    fit(run, callback)
    for split in ("dev", "test"):
        evaluate(run, split)
    record = summarize(run)
    for split in ("dev", "test"):
        record[split] = {k: v for k, v in record[split].items() if k != "samples"}
    if spec.extrap:
        extrap = evenly_spaced(with_source(extrapolation_split("e2e"), spec.settings.source),
                               spec.settings.eval_size)
        s = spec.settings
        scores = evaluate_generation(run.model, run.tokenizer, extrap, max_new_tokens=s.max_new_tokens,
                                     batch_size=s.eval_batch_size, n_samples=0)
        record["extrap"] = {k: scores[k] for k in ("bleu", "ser", "n", "seconds")}
    if spec.settings.method == "bitfit":
        after = {n: p.data for n, p in run.model.base_model.named_parameters() if n in before}
        changes = bias_change(before, after)
        record["bias_change"] = [[c, layer, value] for (c, layer), value in sorted(changes.items())]
    if spec.settings.method == "prompt":  # kept for the ensembles (P x d floats)
        run.model.save_adapter(ctx.adapter_dir(spec))
    record.pop("environment")
    record["wall_seconds"] = time.perf_counter() - start
    return record


def run_experiments(experiments: Sequence[Experiment], ctx: Context) -> list[str]:
    """Run every row's missing runs (cached ones are skipped) and the experiments' extras; returns
    the messages of experiments that could not run (no real data, a checkpoint that does not load)."""
    plans = []
    skipped = []
    for exp in experiments:
        plans.append((exp, exp.rows(ctx)))
    todo = {s.digest: s for _, rows in plans for row in rows for s in row.specs if ctx.record(s) is None}
    bar = tqdm(total=len(todo), unit="run", disable=not ctx.progress, desc="findings")
    try:
        for exp, rows in plans:
            try:
                for row in rows:
                    for spec in row.specs:
                        if ctx.record(spec) is None:
                            bar.set_description(f"{exp.name}: {row.label} (seed {spec.settings.seed})")
                            ctx.store(spec, execute(spec, ctx))
                            bar.update(1)
                if exp.extra is not None:
                    exp.extra(ctx, rows)
            except (ValueError, FileNotFoundError) as err:
                skipped.append(f"{exp.name}: {err}")
    finally:
        bar.close()
    return skipped


# ----------------------------------------------------------------------------- prompt ensembles


def ensemble_spec_key(members: Sequence[RunSpec]) -> str:
    return "ensemble:" + hashlib.sha256("".join(m.digest for m in members).encode()).hexdigest()[:16]


def prompt_ensemble(ctx: Context, rows: list[Row]) -> dict[str, Any]:
    """The majority vote of the row's prompts (one per seed) on its dev and test examples, cached."""
    members = rows[0].specs
    key = ensemble_spec_key(members)
    if key in ctx.cache:
        return ctx.cache[key]
    s = members[0].settings
    base, _ = load_pretrained(s.size, directory=s.checkpoint, tokenizer=ctx.tokenizer)
    prompts = [load_adapter(base, ctx.adapter_dir(m)) for m in members]
    ensemble = PromptEnsemble(prompts)
    splits = {name: list(rating_task(load_e2e(name)).examples) for name in ("dev", "test")}
    labels = rating_task(load_e2e("dev")).labels
    label_ids = label_token_ids(ctx.tokenizer, labels)
    result: dict[str, Any] = {"members": [m.digest for m in members]}
    for split, examples in splits.items():
        examples = evenly_spaced(examples, s.eval_size)
        gold = np.array([labels.index(label) for _, label in examples])
        predicted = []
        for i in range(0, len(examples), 32):
            prompts_ids = [source_ids(ctx.tokenizer, src) for src, _ in examples[i : i + 32]]
            batch = pad_batch([(p, [-100] * len(p)) for p in prompts_ids], ctx.tokenizer.pad_id)
            predicted.append(ensemble.predict(batch.ids, batch.attention_mask, label_ids))
        result[split] = {"accuracy": float((np.concatenate(predicted) == gold).mean()), "n": len(examples)}
    ctx.cache[key] = result
    write_json(ctx.cache_path, ctx.cache)
    return result


def longest_rating_source(tokenizer: Any) -> int:
    """Tokens of the longest rating dev/test prompt (bos source sep): a prompt of P fits if P + this
    is at most the context length."""
    examples = [ex for split in ("dev", "test") for ex in rating_task(load_e2e(split)).examples]
    return max(len(source_ids(tokenizer, source)) for source, _ in examples)


# ----------------------------------------------------------------------------- statistics and verdicts


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


Summary = dict[str, dict[str, Stat]]  # row label -> metric -> its mean, sd and values over seeds


def stat(values: Sequence[float]) -> Stat:
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


def metric_label(key: str) -> str:
    split, metric = key.split("_", 1)
    return f"{split} {dict(bleu='BLEU', ser='SER', accuracy='accuracy').get(metric, metric)}"


def sentence(status: bool | None, clause: str, what: str = "") -> str:
    """The plain verdict: reproduced, not reproduced, or inconclusive, with the numbers behind it."""
    head = {True: "**Reproduced**", False: "**Not reproduced**", None: "**Inconclusive**"}[status]
    tail = {True: "", False: "", None: " (the difference is within the seed spread)"}[status]
    return f"{head}{' (' + what + ')' if what else ''}: {clause}{tail}."


def best_on_dev(summary: Summary, labels: Sequence[str], dev_key: str) -> str:
    """The label with the best mean dev metric (lowest for SER)."""
    sign = -1 if dev_key.endswith("ser") else 1
    return max(labels, key=lambda label: sign * summary[label][dev_key].mean)


# ----------------------------------------------------------------------------- the experiments

CITE = {
    "bitfit": "Ben Zaken, Ravfogel & Goldberg, ACL 2022",
    "prefix": "Li & Liang, ACL 2021",
    "prompt": "Lester, Al-Rfou & Constant, EMNLP 2021",
}
LOW_DATA_SIZES = (50, 100, 200, 500)
PREFIX_LENGTHS = (1, 5, 10, 20, 40)
PROMPT_INITS = ("uniform", "sampled_vocab", "class_labels", "text", "random_normal")
PROMPT_LENGTHS = (1, 5, 20, 50, 100)
SIZES = ("tiny", "small", "medium")
INIT_TEXT = "rating low average high"


def prefix(ctx: Context, label: str = "prefix", **overrides: Any) -> Row:
    """The default prefix run (P 10, MLP); with no overrides it also scores the extrapolation split."""
    return ctx.row(label, "prefix", extrap=not overrides, **overrides)


def full(ctx: Context, label: str = "full", **overrides: Any) -> Row:
    return ctx.row(label, "full", extrap=not overrides, **overrides)


def bitfit_rows(ctx: Context) -> list[Row]:
    return [ctx.row("frozen", "frozen", seeds=ctx.seeds[:1]), full(ctx), ctx.row("bitfit", "bitfit"),
            ctx.row("random_subset lr 3e-2", "random_subset"),
            ctx.row("random_subset lr 1e-2", "random_subset", lr=1e-2),
            ctx.row("bitfit q + fc_in", "bitfit", components=("q", "fc_in"))]


def bias_ranking(rows: Sequence[Row], ctx: Context) -> list[tuple[str, float]]:
    """Components by their mean change (1/dim)||b0 - bF||_1 over layers and seeds, largest first."""
    changes: dict[str, list[float]] = {}
    for spec in next(r for r in rows if r.label == "bitfit").specs:
        for component, _, value in ctx.record(spec)["bias_change"]:
            changes.setdefault(component, []).append(value)
    return sorted(((c, float(np.mean(v))) for c, v in changes.items()), key=lambda cv: -cv[1])


def bitfit_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_bleu"
    subset = best_on_dev(s, ["random_subset lr 3e-2", "random_subset lr 1e-2"], "dev_bleu")
    out = [sentence(*compare("bitfit", s["bitfit"][m], "frozen", s["frozen"][m], m),
                    "BitFit learns the task"),
           sentence(*compare("bitfit", s["bitfit"][m], "full", s["full"][m], m, "comparable"),
                    "BitFit is competitive with full fine-tuning"),
           sentence(*compare("bitfit", s["bitfit"][m], subset, s[subset][m], m),
                    f"biases beat a random subset of the same size; {subset} chosen on dev"),
           sentence(*compare("bitfit q + fc_in", s["bitfit q + fc_in"][m], "bitfit", s["bitfit"][m], m,
                             "comparable"), "b_q and b_fc_in alone lose little")]
    if rows:
        ranking = bias_ranking(rows, ctx)
        top = [c for c, _ in ranking[:2]]
        text = ", ".join(f"{c} {v:.2e}" for c, v in ranking)
        out.append(sentence(set(top) == {"q", "fc_in"}, f"the biases that changed most, mean over layers "
                            f"and seeds: {text}", "b_q and b_fc_in change most"))
    return out


def lowdata_rows(ctx: Context) -> list[Row]:
    rows = []
    for n in LOW_DATA_SIZES:
        rows += [prefix(ctx, f"prefix, {n} MRs", train_size=n), full(ctx, f"full, {n} MRs", train_size=n)]
    return rows + [prefix(ctx, "prefix, all MRs"), full(ctx, "full, all MRs")]


def lowdata_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_bleu"
    gaps = {f"{n} MRs": s[f"prefix, {n} MRs"][m].mean - s[f"full, {n} MRs"][m].mean
            for n in [*LOW_DATA_SIZES, "all"]}
    low = float(np.mean([gaps[f"{n} MRs"] for n in LOW_DATA_SIZES]))
    listing = ", ".join(f"{k}: {g:+.1f}" for k, g in gaps.items())
    out = [sentence(low > 0, f"prefix minus full, test BLEU: {listing}; mean over 50-500 MRs {low:+.1f} "
                    "(the paper: +2.9)", "prefix beats full fine-tuning with little data")]
    out += [sentence(*compare(f"prefix, {n} MRs", s[f"prefix, {n} MRs"][m], f"full, {n} MRs",
                              s[f"full, {n} MRs"][m], m), f"{n} MRs") for n in LOW_DATA_SIZES]
    first = f"{LOW_DATA_SIZES[0]} MRs"
    trend = (f"prefix minus full goes from {gaps[first]:+.1f} at {first} to {gaps['all MRs']:+.1f} with all "
             f"data (low-data mean {low:+.1f})")
    if low <= 0:  # no lead with little data, so none to narrow
        relative = "best" if gaps["all MRs"] < low else "not best"
        trend += (f"; prefix has no lead on average with little data, so none to narrow (its standing "
                  f"relative to full fine-tuning is {relative} with little data)")
    out.append(sentence(low > 0 and gaps["all MRs"] < low, trend, "prefix's lead narrows as data grows"))
    return out


def modes_rows(ctx: Context) -> list[Row]:
    return [prefix(ctx), prefix(ctx, "infix", mode="infix"),
            prefix(ctx, "embedding_only", mode="embedding_only")]


def modes_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_bleu"
    return [sentence(*compare("prefix", s["prefix"][m], "infix", s["infix"][m], m), "prefix > infix"),
            sentence(*compare("infix", s["infix"][m], "embedding_only", s["embedding_only"][m], m),
                     "infix > embedding-only")]


def mlp_rows(ctx: Context) -> list[Row]:
    return [prefix(ctx, "prefix, MLP"), prefix(ctx, "prefix, direct", mlp=False)]


def mlp_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_bleu"
    a, b = s["prefix, MLP"][m], s["prefix, direct"][m]
    return [sentence(*compare("MLP", a, "direct", b, m), "the MLP does better than direct optimization"),
            sentence(b.sd > a.sd, f"seed standard deviation of test BLEU: direct {b.sd:.2f}, MLP {a.sd:.2f}",
                     "direct optimization is less stable across seeds")]


def length_rows(ctx: Context) -> list[Row]:
    return [prefix(ctx, "P = 10") if p == 10 else prefix(ctx, f"P = {p}", prefix_length=p)
            for p in PREFIX_LENGTHS]


def length_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    labels = [f"P = {p}" for p in PREFIX_LENGTHS]
    best = best_on_dev(s, labels, "dev_bleu")
    longest = labels[-1]
    out = [sentence(best in ("P = 5", "P = 10", "P = 20"), f"the best mean dev BLEU is at {best} "
                    f"(test {s[best]['test_bleu'].show(1)})",
                    "performance peaks at a moderate length, about 10")]
    if best != longest:
        m = "test_bleu"
        out.append(sentence(*compare(best, s[best][m], longest, s[longest][m], m),
                            "longer than the peak is slightly worse"))
    return out


def prompt_init_rows(ctx: Context) -> list[Row]:
    return [ctx.row(init, "prompt", task="rating", init=init, init_text=INIT_TEXT if init == "text" else None)
            for init in PROMPT_INITS]


def prompt_init_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_accuracy"
    return [sentence(*compare("class_labels", s["class_labels"][m], "sampled_vocab",
                              s["sampled_vocab"][m], m),
                     "class-label init > sampled vocabulary"),
            sentence(*compare("sampled_vocab", s["sampled_vocab"][m], "uniform", s["uniform"][m], m),
                     "sampled vocabulary > uniform")]


def prompt_length_rows(ctx: Context) -> list[Row]:
    model, _ = load_pretrained(ctx.size, directory=ctx.checkpoint, tokenizer=ctx.tokenizer)
    context = model.config.context_length
    room = context - longest_rating_source(ctx.tokenizer)
    rows = []
    for p in PROMPT_LENGTHS:
        if p <= room:
            # sampled_vocab, not class_labels: three label words do not fit in P = 1
            rows.append(ctx.row(f"P = {p}", "prompt", task="rating", prefix_length=p, init="sampled_vocab"))
    return rows


def prompt_length_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_accuracy"
    labels = list(s)
    best = best_on_dev(s, labels[1:], "dev_accuracy")
    out = [sentence(*compare(best, s[best][m], "P = 1", s["P = 1"][m], m),
                    f"a prompt longer than 1 is much better; {best} best on dev")]
    longer = [label for label in labels if int(label.split("= ")[1]) > 20]
    if "P = 20" in s and longer:
        top = best_on_dev(s, longer, "dev_accuracy")
        out.append(sentence(*compare(top, s[top][m], "P = 20", s["P = 20"][m], m, "comparable"),
                            "beyond 20 the gains are marginal"))
    return out


def scale_rows(ctx: Context) -> list[Row]:
    return [ctx.row(f"{method}, {size}", method, task="rating", size=size,
                    init="class_labels" if method == "prompt" else None)
            for size in SIZES for method in ("prompt", "full")]


def scale_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_accuracy"
    gaps = [s[f"full, {size}"][m].mean - s[f"prompt, {size}"][m].mean for size in SIZES]
    listing = ", ".join(f"{size}: {g:+.3f}" for size, g in zip(SIZES, gaps))
    closes = all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    return [sentence(closes, f"full minus prompt, test accuracy: {listing}",
                     "the gap to full fine-tuning shrinks as the model grows")]


def ensemble_rows(ctx: Context) -> list[Row]:
    return [ctx.row("single prompt", "prompt", task="rating", init="class_labels")]


def ensemble_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    result = prompt_ensemble(ctx, list(rows))
    single = s["single prompt"]["test_accuracy"]
    acc = result["test"]["accuracy"]
    status = None if abs(acc - single.mean) <= single.sd else acc > single.mean
    best = max(single.values)
    return [sentence(status, f"the ensemble of {len(single.values)} prompts: test accuracy {acc:.3f} (dev "
                     f"{result['dev']['accuracy']:.3f}) vs single prompts {single.show()} (best {best:.3f})",
                     "an ensemble beats the average single prompt")]


def extrap_rows(ctx: Context) -> list[Row]:
    return [prefix(ctx), full(ctx)]


def extrap_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    drop = {k: s[k]["test_bleu"].mean - s[k]["extrap_bleu"].mean for k in ("prefix", "full")}
    return [sentence(*compare("prefix", s["prefix"]["extrap_bleu"], "full", s["full"]["extrap_bleu"],
                              "extrap_bleu"), "prefix does better on unseen names and landmarks"),
            sentence(drop["prefix"] < drop["full"], f"BLEU lost from test to the extrapolation split: prefix "
                     f"{drop['prefix']:.1f}, full {drop['full']:.1f}", "prefix loses less")]


def real_rows(ctx: Context) -> list[Row]:
    return [ctx.row(m, m, seeds=ctx.seeds[:1] if m == "frozen" else None)
            for m in ("frozen", "full", "bitfit", "prefix", "prompt")]


def real_verdict(s: Summary, ctx: Context, rows: Sequence[Row] = ()) -> list[str]:
    m = "test_bleu"
    return [sentence(*compare("prefix", s["prefix"][m], "full", s["full"][m], m, "comparable"),
                     "prefix is comparable to full fine-tuning on E2E")]


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("bitfit", "BitFit: biases only, a random control, and which biases move", CITE["bitfit"],
               "BitFit matches or nearly matches full fine-tuning, beats a random subset of the same number "
               "of weights (\"rand uniform\"), and b_q and the FFN's intermediate bias (fc_in) change most; "
               "training only those two loses little", "e2e", bitfit_rows, bitfit_verdict),
    Experiment("prefix_lowdata", "Prefix-Tuning with little data", CITE["prefix"],
               "with 50-500 training examples prefix-tuning beats fine-tuning by 2.9 BLEU on average, "
               "and the gap narrows with more data", "e2e", lowdata_rows, lowdata_verdict),
    Experiment("prefix_modes", "Prefix, infix, embedding-only", CITE["prefix"],
               "prefix (70.3 BLEU) > infix (67.2, P = 10) > embedding-only (62.2, P = 10) on E2E (table 5)",
               "e2e", modes_rows, modes_verdict),
    Experiment("prefix_mlp", "The prefix MLP", CITE["prefix"],
               "optimizing the prefix directly is unstable and does slightly worse than through the MLP",
               "e2e", mlp_rows, mlp_verdict),
    Experiment("prefix_length", "Prefix length", CITE["prefix"],
               "on table-to-text, performance rises with the prefix length up to about 10, then drops "
               "slightly",
               "e2e", length_rows, length_verdict),
    Experiment("prompt_init", "Prompt initialization", CITE["prompt"],
               "class-label init > sampled vocabulary > uniform (the gaps vanish for the largest models)",
               "rating", prompt_init_rows, prompt_init_verdict),
    Experiment("prompt_length", "Prompt length", CITE["prompt"],
               "a prompt longer than one token is critical; beyond 20 tokens the gains are marginal",
               "rating", prompt_length_rows, prompt_length_verdict),
    Experiment("prompt_scale", "Prompt tuning and model size", CITE["prompt"],
               "the gap between prompt tuning and full fine-tuning closes as the model grows", "rating",
               scale_rows, scale_verdict),
    Experiment("prompt_ensemble", "Prompt ensembles", CITE["prompt"],
               "an ensemble of 5 prompts (91.3) beats their average (90.5) and the best single prompt (91.0)",
               "rating", ensemble_rows, ensemble_verdict, extra=prompt_ensemble),
    Experiment("extrapolation", "Extrapolation to unseen entities", CITE["prefix"],
               "prefix-tuning extrapolates better than fine-tuning to unseen categories (WebNLG unseen: 45.3 "
               "vs 26.7 BLEU)", "e2e", extrap_rows, extrap_verdict),
    Experiment("real_e2e", "The methods on the real E2E data", CITE["prefix"],
               "on E2E, prefix-tuning with 0.1% of the parameters matches full fine-tuning (70.3 vs 68.8 "
               "BLEU)",
               "e2e", real_rows, real_verdict),
)}


# ----------------------------------------------------------------------------- the report

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


def write_results(experiments: Sequence[Experiment], ctx: Context, out: Path, command: str,
                  skipped: Sequence[str], seconds: float) -> list[Path]:
    """``out/results.md`` and ``out/results/findings.json`` from every experiment the cache completes."""
    used = {}
    sections, data = [], {}
    for exp in experiments:
        note = next((m for m in skipped if m.startswith(exp.name + ":")), None)
        try:
            rows = None if note else exp.rows(ctx)
        except (ValueError, FileNotFoundError) as err:  # e.g. a checkpoint that does not load yet
            rows, note = None, str(err).replace(f"{Path.cwd()}/", "")
        summary = summarize_rows(rows, ctx) if rows else None
        head = f"## {exp.name}: {exp.title}\n\n**Claim** ({exp.claim_source}): {exp.claim}.\n"
        if summary is None:
            why = note or "not all of its runs are in the cache"
            sections.append(f"{head}\nNot run ({why}): `tinypft findings --only {exp.name}`.\n")
            continue
        verdicts = exp.verdict(summary, ctx, rows)
        if exp.task != "e2e":
            verdicts += constant_answer_note(rows, summary, ctx)
        for row in rows:
            for spec in row.specs:
                used[spec.digest] = ctx.record(spec)["wall_seconds"]
        bullets = "\n".join(f"* {v}" for v in verdicts)
        sections.append(f"{head}\n{table(rows, summary, exp.task)}\n\n{bullets}\n")
        data[exp.name] = {
            "claim": exp.claim, "source": exp.claim_source, "task": exp.task, "verdicts": verdicts,
            "rows": {label: {k: dataclasses.asdict(v) for k, v in stats.items()}
                     for label, stats in summary.items()},
            "runs": {row.label: [spec.digest for spec in row.specs] for row in rows},
        }
    run_seconds = sum(used.values())
    intro = [
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
        f"({len(used)} runs; this call {seconds / 60:.1f} minutes, cached runs are not repeated).",
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
    md = out / "results.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(intro + sections))
    payload = {"command": command, "budget": dataclasses.asdict(ctx.budget), "seeds": list(ctx.seeds),
               "size": ctx.size, "run_seconds": run_seconds, "experiments": data}
    js = write_json(out / "results" / "findings.json", payload)
    return [md, js]


# ----------------------------------------------------------------------------- the command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", help=f"comma-separated experiments (default all): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--quick", action="store_true", help="a few steps per run, to check that it all runs")
    parser.add_argument("--size", default="small", help="shipped checkpoint: tiny, small (default) or medium")
    parser.add_argument("--out", help="folder for results.md and results/findings.json (default docs; "
                        "with --quick runs/findings-quick)")
    parser.add_argument("--cache", help="the runs' cache file (default runs/findings[-quick]/cache.json)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)  # tests: a checkpoint folder of their own


def run(args: argparse.Namespace) -> int:
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
    command += ["--seeds", ",".join(map(str, seeds)), "--size", args.size, "--threads", str(args.threads)]
    command += (["--out", args.out] if args.out else []) + (["--cache", args.cache] if args.cache else [])
    budget = BUDGETS["quick" if quick else "default"]
    print(f"findings, {budget.name} budget: {budget.describe()}; seeds {list(seeds)}; cache {cache}")
    start = time.perf_counter()
    try:
        with num_threads(args.threads):
            ctx = Context(budget, seeds, args.size, cache, checkpoint=args.checkpoint,
                          progress=not args.no_progress)
            skipped = run_experiments([EXPERIMENTS[n] for n in names], ctx)
            written = write_results(list(EXPERIMENTS.values()), ctx, out, shlex.join(command),
                                           skipped, time.perf_counter() - start)
    except (ValueError, FileNotFoundError) as err:
        print(f"tinypft findings: {err}", file=sys.stderr)
        return 2
    for message in skipped:
        print(f"skipped {message}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
