"""The findings: each paper's claim, the rows of runs that test it and the verdict its numbers give.

An ``Experiment`` names a claim and holds two functions: ``rows(ctx)``, the table's rows (a row is one
run per seed, built with ``Context.row``), and ``verdict(summary, ctx, rows)``, its sentences built
with the rules of ``verdicts.py``. To add a finding, write the two functions next to the others and
add an ``Experiment`` to ``EXPERIMENTS``: its runs are cached, shared with other experiments, and
reported like every other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...data import load_e2e, rating_task
from ...model import load_pretrained
from ...peft import PeftModel, PromptEnsemble
from ...train import pad_batch, source_ids
from ..finetune import evenly_spaced, label_token_ids
from ..report import write_json
from .runs import Context, Row, RunSpec, execute
from .verdicts import Summary, best_on_dev, compare, sentence


@dataclass
class Experiment:
    """A finding: the paper's claim, the rows that test it, and the sentences the numbers give.

    ``rows(ctx)`` builds the table's rows; ``verdict(summary, ctx, rows)`` reads the rows' statistics
    (label -> metric -> ``Stat``) and returns one sentence per claim; ``extra(ctx, rows)``, if given,
    computes and caches something beyond the rows' runs (the prompt ensembles' majority vote).
    ``task`` ("e2e" or "rating") picks the table's columns.
    """

    name: str
    title: str
    claim_source: str  # the paper
    claim: str  # its claim, one line
    task: str
    rows: Callable[[Context], list[Row]]
    verdict: Callable[[Summary, Context, Sequence[Row]], list[str]]
    extra: Callable[[Context, list[Row]], dict[str, Any]] | None = None  # a computed addition (ensembles)


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


# ----------------------------------------------------------------------------- the papers, the sweeps

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
    """Full fine-tuning; with no overrides it also scores the extrapolation split."""
    return ctx.row(label, "full", extrap=not overrides, **overrides)


# ----------------------------------------------------------------------------- BitFit


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


# ----------------------------------------------------------------------------- Prefix-Tuning


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


# ----------------------------------------------------------------------------- Prompt-Tuning


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


def longest_rating_source(tokenizer: Any) -> int:
    """Tokens of the longest rating dev/test prompt (bos source sep): a prompt of P fits if P + this
    is at most the context length."""
    examples = [ex for split in ("dev", "test") for ex in rating_task(load_e2e(split)).examples]
    return max(len(source_ids(tokenizer, source)) for source, _ in examples)



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


def ensemble_spec_key(members: Sequence[RunSpec]) -> str:
    """The cache key of an ensemble: the hash of its members' digests, in order."""
    return "ensemble:" + hashlib.sha256("".join(m.digest for m in members).encode()).hexdigest()[:16]


def prompt_ensemble(ctx: Context, rows: list[Row]) -> dict[str, Any]:
    """The majority vote of the row's prompts (one per seed) on its dev and test examples, cached."""
    members = rows[0].specs
    key = ensemble_spec_key(members)
    if key in ctx.cache:
        return ctx.cache[key]
    s = members[0].settings
    base, _ = load_pretrained(s.size, directory=s.checkpoint, tokenizer=ctx.tokenizer)
    prompts = [PeftModel.from_pretrained(base, ctx.adapter_dir(m)) for m in members]
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


# ----------------------------------------------------------------------------- prefix vs full fine-tuning


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


# ----------------------------------------------------------------------------- every finding, in report order


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

