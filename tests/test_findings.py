"""``tinypft findings``: the statistics are right, the verdict rules cannot mislead (checked on
fabricated records), learning rates are chosen on the validation loss, the cache resumes, and the
quick budget runs end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinypft.cli import main
from tinypft.data import load_tokenizer
from tinypft.experiments.findings import experiments
from tinypft.experiments.findings.experiments import EXPERIMENTS, plan
from tinypft.experiments.findings.report import seconds_at_median_speed, write_results
from tinypft.experiments.findings.runs import BUDGETS, Context, Row, RunSpec
from tinypft.experiments.findings.verdicts import (
    INCONCLUSIVE,
    NO_EVIDENCE,
    NOT_REPRODUCED,
    REPRODUCED,
    Stat,
    compare,
    judge,
    judge_extrapolation,
    judge_stability,
    metrics_of,
    stat,
)
from tinypft.experiments.finetune import FinetuneSettings
from tinypft.model import GPTConfig
from tinypft.train.pretrain import pretrain


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=128, d_model=32, n_layers=1, n_heads=2)
    out = tmp_path_factory.mktemp("checkpoint")
    pretrain(config, out, steps=10, batch_size=8, lr=1e-2, dev_windows=4, progress=False, tokenizer=tok,
             command="test")
    return str(out)


def row(mean: float, sd: float = 0.5, **extra: Stat) -> dict[str, Stat]:
    return {"test_bleu": Stat(mean, sd, [mean - sd, mean, mean + sd]), **extra}


# ----------------------------------------------------------------------------- statistics and rules


def test_stat_is_the_mean_and_the_sample_standard_deviation():
    s = stat([1.0, 2.0, 6.0])
    assert s.mean == 3.0 and s.sd == pytest.approx(7.0**0.5) and s.values == [1.0, 2.0, 6.0]
    assert stat([4.0]).sd == 0.0 and stat([4.0]).show(1) == "4.0 ± 0.0"


def test_the_seed_spread_rule():
    a, b = Stat(30.0, 1.0, [29, 30, 31]), Stat(20.0, 1.0, [19, 20, 21])
    assert compare("a", a, "b", b, "test_bleu")[0] == REPRODUCED  # 10 > sqrt(2)
    assert compare("b", b, "a", a, "test_bleu")[0] == NOT_REPRODUCED
    close = Stat(21.0, 1.0, [20, 21, 22])
    assert compare("close", close, "b", b, "test_bleu")[0] == INCONCLUSIVE  # 1 <= sqrt(2)
    assert compare("b", b, "close", close, "test_bleu", "comparable")[0] == REPRODUCED
    assert compare("b", b, "a", a, "test_bleu", "comparable")[0] == NOT_REPRODUCED
    low_ser, high_ser = Stat(0.1, 0.01, []), Stat(0.3, 0.01, [])
    assert compare("a", low_ser, "b", high_ser, "test_ser")[0] == REPRODUCED  # SER: lower wins


def test_a_row_that_does_not_beat_the_frozen_model_on_ser_is_no_evidence():
    summary = {"frozen": row(20, 0, test_ser=Stat(0.5, 0, [0.5])),
               "good": row(60, test_ser=Stat(0.2, 0.01, [])),
               "bad": row(40, test_ser=Stat(0.6, 0.01, []))}  # higher BLEU than frozen, worse SER
    assert judge("good > bad", summary, "good", "bad", "test_bleu", frozen="frozen").status == NO_EVIDENCE
    assert judge("good > bad", summary, "good", "bad", "test_bleu").status == REPRODUCED  # without the rule
    verdict = judge("bad > good", summary, "bad", "good", "test_bleu", frozen="frozen")
    assert verdict.status == NO_EVIDENCE and "does not beat the frozen model" in verdict.text()


def test_a_row_that_answers_one_class_is_no_evidence():
    constant = {"test_accuracy": Stat(0.4, 0.0, [0.4] * 3), "test_one_class": Stat(1 / 3, 0.6, [0, 0, 1.0])}
    varied = {"test_accuracy": Stat(0.9, 0.01, [0.9] * 3), "test_one_class": Stat(0, 0, [0, 0, 0])}
    summary = {"constant": constant, "varied": varied}
    verdict = judge("varied > constant", summary, "varied", "constant", "test_accuracy")
    assert verdict.status == NO_EVIDENCE and "1 of 3 seeds" in verdict.numbers
    summary["constant"]["test_one_class"] = Stat(0, 0, [0, 0, 0])
    assert judge("varied > constant", summary, "varied", "constant", "test_accuracy").status == REPRODUCED


def test_metrics_flag_one_class_answers_and_divergence():
    record = {"dev": {"accuracy": 0.5, "class_counts": [0, 9, 0]},
              "test": {"accuracy": 0.6, "class_counts": [3, 6, 0]}, "trainable_params": 1,
              "train_seconds": 1.0, "first_train_loss": 3.0, "final_train_loss": 1.0}
    flat = metrics_of(record)
    assert flat["dev_one_class"] == 1.0 and flat["test_one_class"] == 0.0 and flat["diverged"] == 0.0
    assert metrics_of(record | {"final_train_loss": 3.5})["diverged"] == 1.0  # ended above its start
    assert metrics_of(record | {"final_train_loss": float("nan")})["diverged"] == 1.0


def test_little_data_needs_three_sizes_beyond_the_spread_and_calls_the_rest_by_the_rule():
    def summary(gaps: list[float]) -> dict:
        out = {"frozen": row(10, 0, test_ser=Stat(0.9, 0, [0.9]))}
        for n, gap in zip(experiments.LOW_DATA_SIZES, gaps):
            for label, mean in (("full", 50.0), ("prefix (real words)", 50 + gap), ("prefix (random)", 50.0),
                                ("bitfit", 50 - gap)):
                out[experiments.lowdata_label(label, n)] = row(mean, 1.0, test_ser=Stat(0.3, 0.01, []))
        return out

    def statuses(gaps: list[float]) -> tuple[str, str]:
        verdicts = experiments.lowdata_verdict(summary(gaps), None)
        return verdicts[0].status, verdicts[1].status  # prefix (real words), then bitfit (its mirror)

    assert statuses([3, 3, 3, 0]) == (REPRODUCED, NOT_REPRODUCED)  # spread sqrt(2): 3 is beyond it
    assert statuses([3, 1, 1, 1]) == (INCONCLUSIVE, NOT_REPRODUCED)  # beyond the spread at one size only
    assert statuses([3, 3, -3, -3]) == (INCONCLUSIVE, INCONCLUSIVE)
    verdict = experiments.lowdata_verdict(summary([3, 1, -3, -3]), None)[0]
    assert verdict.status == NOT_REPRODUCED and "ahead at 1 and behind at 2 of 4" in verdict.numbers


def test_one_ensemble_against_the_single_prompts_counts_its_own_seed_noise():
    # one ensemble is one run: the spread of its difference is sqrt(2) sd, not sd
    assert experiments.one_run_against(0.904, 0.900, 0.003) == INCONCLUSIVE  # 0.004 < 0.0042
    assert experiments.one_run_against(0.905, 0.900, 0.003) == REPRODUCED
    assert experiments.one_run_against(0.895, 0.900, 0.003) == NOT_REPRODUCED
    assert experiments.one_run_against(0.99, 0.5, 0.003, "it answers one class") == NO_EVIDENCE


def test_extrapolation_needs_comparable_quality_on_seen_data():
    def summary(seen_a: float, seen_b: float) -> dict:
        return {"a": {"seen_bleu": Stat(seen_a, 0.5, []), "unseen_bleu": Stat(40, 0.5, [])},
                "b": {"seen_bleu": Stat(seen_b, 0.5, []), "unseen_bleu": Stat(30, 0.5, [])}}

    fair = judge_extrapolation("a extrapolates", summary(60, 60.3), "a", "b", "seen_bleu", "unseen_bleu")
    assert fair.status == REPRODUCED and "seen data" in fair.numbers
    unfair = judge_extrapolation("a extrapolates", summary(70, 60), "a", "b", "seen_bleu", "unseen_bleu")
    assert unfair.status == NO_EVIDENCE and "not comparable" in unfair.numbers


def test_unstable_means_divergence_or_sensitivity_to_learning_rate_and_init():
    def recipe(prefix: str, means: list[float], diverged: int = 0) -> dict:
        return {f"{prefix}{i}": {"dev_bleu": Stat(m, 0.5, []), "diverged": Stat(0, 0,
                                                                                [float(i < diverged)] * 3)}
                for i, m in enumerate(means)}

    def verdict(direct: dict, mlp: dict) -> str:
        s = direct | mlp
        d, m = list(direct), list(mlp)
        return judge_stability("direct is less stable", s, ("direct", d[:3], [d[0], d[3]]),
                               ("MLP", m[:3], [m[0], m[3]]), "dev_bleu").status

    steady = recipe("m", [60, 61, 60.5, 60.2])
    assert verdict(recipe("d", [60, 61, 60.5, 60.2], diverged=1), steady) == REPRODUCED  # one run diverged
    assert verdict(recipe("d", [60, 45, 30, 40]), steady) == REPRODUCED  # moves with lr and init
    assert verdict(recipe("d", [60, 45, 30, 60]), steady) == INCONCLUSIVE  # lr only: not both
    assert verdict(recipe("d", [60, 60.4, 60.1, 60.3]), steady) == INCONCLUSIVE
    assert verdict(steady, recipe("d", [60, 45, 30, 40], diverged=1)) == NOT_REPRODUCED


# ----------------------------------------------------------------------------- choosing and caching


def fabricated(spec: RunSpec) -> dict:
    """A record whose numbers depend on the settings: prefix > full > others, lr 1e-3-ish best."""
    s = spec.settings
    base = {"prefix": 60.0, "full": 58.0, "bitfit": 55.0, "prompt": 50.0, "random_subset": 45.0,
            "frozen": 20.0}
    bleu = base[s.method] - (5.0 if s.mode == "embedding_only" else 2.0 if s.mode == "infix" else 0.0)
    bleu += 0.3 * s.seed
    ser = 0.9 if s.method == "frozen" else 0.2
    split = {"bleu": bleu, "ser": ser, "accuracy": 0.5 + bleu / 200, "class_counts": [3, 2, 1], "n": 3}
    record = {"dev": split, "test": split, "trainable_params": 10, "train_seconds": 1.0, "wall_seconds": 1.0,
              "valid_loss": abs((s.lr or 1e-3) - 1e-3) + 1.0, "first_train_loss": 3.0,
              "final_train_loss": 1.0}
    if s.unseen or s.task == "webnlg":
        record |= {"seen": split, "unseen": split | {"bleu": bleu - 10}}
    if s.method == "bitfit":
        record["bias_change"] = [["q", 0, 0.3], ["fc_in", 0, 0.2], ["k", 0, 0.1]]
    return record


def fill(ctx: Context, names: list[str]) -> int:
    """Store fabricated records for everything the experiments need; returns how many."""
    stored = 0
    while True:
        _, needed = plan([EXPERIMENTS[n] for n in names], ctx)
        if not needed:
            return stored
        specs = list({s.digest: s for s in needed}.values())
        for spec in specs[:-1]:  # into memory; the last store writes the cache file once
            ctx.cache[spec.digest] = fabricated(spec) | {"key": json.loads(spec.key())}
        ctx.store(specs[-1], fabricated(specs[-1]))
        stored += len(specs)


def test_a_tuned_row_waits_for_its_sweep_then_takes_the_lowest_validation_loss(tmp_path: Path):
    ctx = Context(BUDGETS["default"], (0, 1, 2), "tiny", tmp_path / "cache.json", tokenizer=object())
    ctx.tuned("prefix", "prefix")  # a stand-in row; the sweep it waits for is pending
    sweep = ctx.pending
    assert len(sweep) == 3 and {s.settings.seed for s in sweep} == {0} and not any(s.score for s in sweep)
    lrs = sorted(s.settings.lr for s in sweep)
    losses = dict(zip(lrs, (1.5, 1.2, 1.4)))  # the middle one is best
    for spec in sweep:
        ctx.store(spec, {"valid_loss": losses[spec.settings.lr]})
    tuned = ctx.tuned("prefix", "prefix")
    assert [s.settings.lr for s in tuned.specs] == [lrs[1]] * 3
    assert [s.settings.seed for s in tuned.specs] == [0, 1, 2]
    assert tuned.sweep == losses and all(s.score and s.settings.select == "dev" for s in tuned.specs)
    low = ctx.row("x", "prefix", train_size=50)  # little data: pairs, a held-out slice, its own steps
    assert low.specs[0].settings.select == "heldout" and low.specs[0].settings.train_unit == "pair"
    assert low.specs[0].settings.steps == BUDGETS["default"].lowdata_steps(50) == 30 * 7


def test_seconds_at_median_speed_counts_a_slowed_run_at_its_kinds_usual_speed():
    def record(method: str, seconds: float, speed: float | None, length: int | None = None) -> dict:
        peft = {"num_virtual_tokens": length, "mode": "prefix", "prefix_projection": True} if length else {}
        return {"method": method, "task": "e2e", "size": "small", "wall_seconds": seconds,
                "tokens_per_sec": speed, "hyperparameters": {"peft_config": peft}}

    runs = [record("full", 100.0, 1000.0), record("full", 100.0, 1000.0),
            record("full", 400.0, 250.0),  # slowed 4x by other work: counts as 100 s
            record("prefix", 300.0, 500.0, length=40), record("prefix", 60.0, 2000.0, length=10),
            record("frozen", 7.0, None)]  # trains nothing: counts as it took
    # each prefix length is its own kind, so the slower P = 40 run is not scaled to P = 10's speed
    assert seconds_at_median_speed(runs) == pytest.approx(100 + 100 + 100 + 300 + 60 + 7)
    assert seconds_at_median_speed(runs[:2]) == pytest.approx(200.0)


def test_every_experiment_reports_from_fabricated_records(tmp_path: Path):
    ctx = Context(BUDGETS["default"], (0, 1, 2), "tiny", tmp_path / "cache.json", tokenizer=load_tokenizer())
    names = [n for n in EXPERIMENTS if n != "prompt_ensemble"]  # its verdict votes with saved prompts
    if not os.environ.get("TINYPFT_DATA"):
        names.remove("webnlg")
    stored = fill(ctx, names)
    assert stored > 100
    again = Context(BUDGETS["default"], (0, 1, 2), "tiny", tmp_path / "cache.json", tokenizer=ctx.tokenizer)
    assert fill(again, names) == 0  # everything is read back from the cache file
    paths = write_results([EXPERIMENTS[n] for n in names], again, tmp_path, "tinypft findings", [], 1.0,
                          jobs=2)
    results = paths[0].read_text()
    assert json.loads(paths[1].read_text())["run_seconds"] == stored  # every run, the sweeps' too
    assert f"The {stored} runs behind these tables" in results and "of wall time at 2 at a time" in results
    data = json.loads(paths[1].read_text())["experiments"]
    assert set(data) == set(names) and "## The paper against tinypft" in results
    assert data["real_e2e"]["learning_rates"]["prefix"]["chosen"] == pytest.approx(1e-3)
    length_verdicts = {v["claim"]: v for v in data["prompt_length"]["verdicts"]}
    beyond_20 = length_verdicts["beyond 20 tokens the gains are marginal"]
    assert beyond_20["numbers"].startswith("P = 30") and "; P = 50 does not fit" in beyond_20["numbers"]
    statuses = {v["claim"]: v["status"] for v in data["prefix_modes"]["verdicts"]}
    assert set(statuses.values()) == {REPRODUCED}  # prefix 60 > infix 58 > embedding-only 55, sd 0.3
    bitfit = {v["claim"]: v["status"] for v in data["bitfit"]["verdicts"]}
    assert bitfit["b_q and b_fc_in change most"] == REPRODUCED
    extrap = data["extrapolation"]["verdicts"][0]
    assert extrap["status"] == NO_EVIDENCE and "not comparable" in extrap["numbers"]  # seen: 60 vs 58
    assert len(data["prefix_lowdata"]["rows"]) == 1 + 4 * 4


def test_quick_budget_end_to_end_and_a_second_call_reuses_the_cache(checkpoint, tmp_path: Path):
    args = ["findings", "--quick", "--only", "prompt_init", "--seeds", "0,1", "--size", "tiny",
            "--checkpoint", checkpoint, "--out", str(tmp_path), "--cache", str(tmp_path / "cache.json"),
            "--no-progress", "--jobs", "1"]
    assert main(args) == 0
    results = (tmp_path / "results.md").read_text()
    data = json.loads((tmp_path / "results" / "findings.json").read_text())
    assert "tinypft findings --quick --only prompt_init" in results and data["command"] in results
    init = data["experiments"]["prompt_init"]
    assert set(init["rows"]) == set(experiments.PROMPT_INITS)
    assert len(init["rows"]["uniform"]["test_accuracy"]["values"]) == 2 and len(init["verdicts"]) == 3
    assert set(init["learning_rates"]) == set(experiments.PROMPT_INITS)
    assert "Not run" in results and "prefix_modes" in results  # the other experiments, with their command
    cache = json.loads((tmp_path / "cache.json").read_text())
    assert len(cache) == 4 * (2 + 2)  # per init: a sweep of two learning rates, then two seeds
    mtime = (tmp_path / "cache.json").stat().st_mtime_ns
    assert main(args) == 0  # everything cached: nothing runs, the cache file is not rewritten
    assert (tmp_path / "cache.json").stat().st_mtime_ns == mtime
    again = json.loads((tmp_path / "results" / "findings.json").read_text())
    assert again["experiments"] == data["experiments"]
    length = [*args[:3], "prompt_length", *args[4:], "--report-only"]  # nothing of it is cached
    assert main(length) == 0  # runs nothing: the report of what the cache holds
    assert (tmp_path / "cache.json").stat().st_mtime_ns == mtime
    partial = json.loads((tmp_path / "results" / "findings.json").read_text())
    assert set(partial["experiments"]) == {"prompt_init"}
    report = (tmp_path / "results.md").read_text()
    assert "## prompt_length" in report and "**Incomplete.**" in report


def test_every_run_of_every_experiment_can_be_prepared(checkpoint, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch):
    """Each row's settings make a valid run (a P that fits, an init that fits P, ...), so no
    experiment is skipped for a configuration error after hours of other runs."""
    from tinypft.experiments import finetune
    from tinypft.experiments.finetune import prepare

    loaded: dict = {}  # the data of runs that differ only in what does not change it, loaded once
    load_task = finetune.load_task

    def cached(settings, tokenizer, max_length):
        key = (settings.task, settings.train_size, settings.select, settings.unseen, settings.probe,
               max_length)
        if key not in loaded:
            loaded[key] = load_task(settings, tokenizer, max_length)
        return loaded[key]

    monkeypatch.setattr(finetune, "load_task", cached)

    ctx = Context(BUDGETS["quick"], (0,), "tiny", tmp_path / "cache.json", checkpoint=checkpoint,
                  progress=False)
    fill(ctx, list(EXPERIMENTS))
    skipped: list[str] = []
    built, needed = plan(list(EXPERIMENTS.values()), ctx, skipped)
    assert not needed and set(built) | {m.split(":")[0] for m in skipped} == set(EXPERIMENTS)
    assert all(m.startswith("webnlg: ") and "TINYPFT_DATA" in m for m in skipped)  # only without the data
    distinct = {}
    for rows in built.values():
        for r in rows:
            s = r.specs[0].settings
            distinct.setdefault((s.method, s.task, s.mode, s.mlp, s.init, s.prefix_length, s.size, s.unseen,
                                 s.train_size is not None), r.specs[0])
    for spec in distinct.values():
        run = prepare(spec.settings, ctx.tokenizer)
        assert run.trainable_params > 0 or spec.settings.method == "frozen", spec.settings


def test_webnlg_is_skipped_with_a_reason_without_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    ctx = Context(BUDGETS["quick"], (0,), "tiny", tmp_path / "cache.json", tokenizer=object())
    skipped: list[str] = []
    built, needed = plan([EXPERIMENTS["webnlg"]], ctx, skipped)
    assert built == {} and needed == [] and skipped[0].startswith("webnlg: ") and "TINYPFT_DATA" in skipped[0]


def test_sweep_note_names_a_rate_at_the_edge_of_the_range_tried():
    def note(lr: float, select: str = "dev") -> str:
        spec = RunSpec(FinetuneSettings(method="prefix", lr=lr, seed=0, select=select))
        return experiments.sweep_note(Row("prefix", [spec], sweep={3e-4: 1.31, 1e-3: 1.30, 3e-3: 1.32}))

    assert "lr 3e-04, the lowest tried (dev loss" in note(3e-4)
    assert "lr 3e-03, the highest tried" in note(3e-3)
    assert "lr 1e-03 (dev loss" in note(1e-3)
    assert "(held-out loss" in note(1e-3, select="heldout")


def test_loss_note_reads_a_gap_in_final_training_loss_as_text_the_frozen_model_does_not_know():
    def row(first: float, last: float) -> dict[str, Stat]:
        return {"first_train_loss": stat([first] * 3), "final_train_loss": stat([last] * 3)}

    far = experiments.loss_note({"prefix": row(6.8, 4.8), "full": row(6.6, 0.9)}, "prefix", "full")
    assert "prefix's training loss goes from 6.80 to 4.80" in far and "3.9 nats above full" in far
    near = experiments.loss_note({"prefix": row(2.0, 1.3), "full": row(2.0, 1.0)}, "prefix", "full")
    assert "goes from 2.00 to 1.30" in near and "does not model" not in near
    assert experiments.loss_note({"prefix": {}, "full": row(2.0, 1.0)}, "prefix", "full") == ""
