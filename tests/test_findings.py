"""``tinypft findings``: the cache resumes, the statistics are right, the verdicts follow the numbers,
and the quick budget runs one experiment end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinypft.cli import main
from tinypft.data import load_tokenizer
from tinypft.experiments.findings import experiments, verdicts
from tinypft.experiments.findings.runs import BUDGETS, Context
from tinypft.experiments.findings.verdicts import Stat, compare, sentence, stat
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


def test_stat_is_the_mean_and_the_sample_standard_deviation():
    s = stat([1.0, 2.0, 6.0])
    assert s.mean == 3.0 and s.sd == pytest.approx(np.sqrt(7.0)) and s.values == [1.0, 2.0, 6.0]
    assert stat([4.0]).sd == 0.0 and stat([4.0]).show(1) == "4.0 ± 0.0"


def test_the_verdict_follows_the_numbers():
    a, b = Stat(30.0, 1.0, [29, 30, 31]), Stat(20.0, 1.0, [19, 20, 21])
    assert compare("a", a, "b", b, "test_bleu")[0] is True  # 10 > sqrt(2)
    assert compare("b", b, "a", a, "test_bleu")[0] is False
    close = Stat(21.0, 1.0, [20, 21, 22])
    assert compare("close", close, "b", b, "test_bleu")[0] is None  # 1 <= sqrt(2)
    assert compare("b", b, "close", close, "test_bleu", "comparable")[0] is True
    assert compare("b", b, "a", a, "test_bleu", "comparable")[0] is False
    low_ser, high_ser = Stat(0.1, 0.01, []), Stat(0.3, 0.01, [])
    assert compare("a", low_ser, "b", high_ser, "test_ser")[0] is True  # SER: lower wins
    assert sentence(True, "x").startswith("**Reproduced**") and sentence(False, "x").startswith("**Not")
    assert "within the seed spread" in sentence(None, "x", "what")


def fake_record(bleu: float, seconds: float = 1.0, **extra) -> dict:
    metrics = {"bleu": bleu, "ser": 0.1, "n": 3}
    return {"dev": metrics, "test": metrics, "trainable_params": 10, "train_seconds": seconds,
            "wall_seconds": seconds, **extra}


def test_rows_summarize_from_the_cache_and_a_missing_run_leaves_the_experiment_out(tmp_path: Path):
    ctx = Context(BUDGETS["quick"], (0, 1, 2), "tiny", tmp_path / "cache.json", tokenizer=object())
    rows = experiments.modes_rows(ctx)
    assert [r.label for r in rows] == ["prefix", "infix", "embedding_only"]
    assert verdicts.summarize_rows(rows, ctx) is None
    values = {"prefix": (30, 31, 32), "infix": (20, 21, 22), "embedding_only": (20, 22, 24)}
    for row in rows:
        for spec, bleu in zip(row.specs, values[row.label]):
            ctx.store(spec, fake_record(bleu))
    again = Context(BUDGETS["quick"], (0, 1, 2), "tiny", tmp_path / "cache.json", tokenizer=object())
    summary = verdicts.summarize_rows(rows, again)  # read back from the file
    assert summary["prefix"]["test_bleu"].mean == 31 and summary["embedding_only"]["test_bleu"].sd == 2
    sentences = experiments.modes_verdict(summary, again)
    assert sentences[0].startswith("**Reproduced**") and sentences[1].startswith("**Inconclusive**")
    # the key is the settings: another seed set shares seeds 0-2 and misses only seed 3
    more = Context(BUDGETS["quick"], (0, 1, 2, 3), "tiny", tmp_path / "cache.json", tokenizer=object())
    missing = [s for r in experiments.modes_rows(more) for s in r.specs if more.record(s) is None]
    assert [s.settings.seed for s in missing] == [3, 3, 3]


def test_quick_bitfit_end_to_end_and_a_second_call_reuses_the_cache(checkpoint, tmp_path: Path, capsys):
    args = ["findings", "--quick", "--only", "bitfit", "--size", "tiny", "--checkpoint", checkpoint,
            "--out", str(tmp_path), "--cache", str(tmp_path / "cache.json"), "--no-progress"]
    assert main(args) == 0
    results = (tmp_path / "results.md").read_text()
    data = json.loads((tmp_path / "results" / "findings.json").read_text())
    assert "tinypft findings --quick --only bitfit" in results and data["command"] in results
    bitfit = data["experiments"]["bitfit"]
    assert set(bitfit["rows"]) == {"frozen", "full", "bitfit", "random_subset lr 3e-2",
                                   "random_subset lr 1e-2", "bitfit q + fc_in"}
    assert len(bitfit["rows"]["bitfit"]["test_bleu"]["values"]) == 3 and len(bitfit["verdicts"]) == 5
    rows = bitfit["rows"]
    count = rows["bitfit"]["trainable_params"]["mean"]
    assert rows["random_subset lr 3e-2"]["trainable_params"]["mean"] == count
    assert "Not run" in results and "prefix_modes" in results  # the other experiments, with their command
    cache = json.loads((tmp_path / "cache.json").read_text())
    assert len(cache) == 3 * 5 + 1
    mtime = (tmp_path / "cache.json").stat().st_mtime_ns
    assert main(args) == 0  # everything cached: nothing runs, the cache file is not rewritten
    assert (tmp_path / "cache.json").stat().st_mtime_ns == mtime
    again = json.loads((tmp_path / "results" / "findings.json").read_text())
    assert again["experiments"] == data["experiments"]


def test_every_run_of_every_experiment_can_be_prepared(checkpoint, tmp_path: Path):
    """Each row's settings make a valid run (a P that fits, an init that fits P, ...), so no
    experiment is skipped for a configuration error after hours of other runs."""
    from tinypft.experiments.finetune import prepare

    ctx = Context(BUDGETS["quick"], (0,), "tiny", tmp_path / "cache.json", checkpoint=checkpoint,
                  progress=False)
    for experiment in experiments.EXPERIMENTS.values():  # real_e2e too: the E2E data ships
        for row in experiment.rows(ctx):
            spec = row.specs[0]
            run = prepare(spec.settings, ctx.tokenizer)
            assert run.trainable_params > 0 or spec.settings.method == "frozen", (experiment.name, row.label)


def test_rows_that_answer_one_class_are_named(tmp_path: Path):
    ctx = Context(BUDGETS["quick"], (0, 1), "tiny", tmp_path / "cache.json", tokenizer=object())
    dev, test = verdicts.one_class_accuracies(ctx, "dev"), verdicts.one_class_accuracies(ctx, "test")
    assert set(dev) | set(test) <= {"low", "average", "high"} and len(set(dev) | set(test)) > 1
    assert sum(dev.values()) == pytest.approx(1.0) and sum(test.values()) == pytest.approx(1.0)
    label = max(dev, key=dev.get)  # the constant answer that scores best on dev
    rows = experiments.ensemble_rows(ctx)
    for accuracy in ((dev[label], test.get(label, 0.0)), (dev[label], test.get(label, 0.0) + 0.1)):
        for spec in rows[0].specs:
            record = {"dev": {"accuracy": accuracy[0]}, "test": {"accuracy": accuracy[1]},
                      "trainable_params": 10, "train_seconds": 1.0, "wall_seconds": 1.0}
            ctx.store(spec, record)
        note = verdicts.constant_answer_note(rows, verdicts.summarize_rows(rows, ctx), ctx)
        if accuracy[1] == test.get(label, 0.0):
            assert note and f'("{label}")' in note[0] and "no evidence either way" in note[0]
        else:
            assert note == []  # dev matches a constant answer but test does not


def test_the_low_data_verdict_needs_a_lead_before_it_can_narrow():
    def summary(gap_by_size):
        out = {}
        for n, gap in gap_by_size.items():
            out[f"prefix, {n} MRs"] = {"test_bleu": Stat(30.0 + gap, 0.5, [])}
            out[f"full, {n} MRs"] = {"test_bleu": Stat(30.0, 0.5, [])}
        return out

    behind = experiments.lowdata_verdict(summary({50: -5, 100: -8, 200: -18, 500: -24, "all": -25}), None)
    assert behind[0].startswith("**Not reproduced**") and behind[-1].startswith("**Not reproduced**")
    assert "none to narrow" in behind[-1]
    ahead = experiments.lowdata_verdict(summary({50: 4, 100: 3, 200: 3, 500: 2, "all": 1}), None)
    assert ahead[0].startswith("**Reproduced**") and ahead[-1].startswith("**Reproduced**")
    assert "none to narrow" not in ahead[-1]
