"""``tinypft showdown`` end to end on a tiny model with a few steps, and the report helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinypft.cli import main
from tinypft.data import load_tokenizer
from tinypft.experiments import BUDGETS, aggregate, format_table, plot_tradeoff
from tinypft.experiments.showdown import SHOWDOWN_METHODS, page, run_showdown, side_by_side
from tinypft.model import GPTConfig
from tinypft.train.pretrain import pretrain

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=128, d_model=32, n_layers=1, n_heads=2)
    out = tmp_path_factory.mktemp("checkpoint")
    pretrain(config, out, steps=20, batch_size=8, lr=1e-2, dev_windows=4, progress=False, tokenizer=tok,
             command="test")
    return str(out)


def test_quick_showdown_end_to_end(checkpoint, tmp_path: Path, capsys):
    out = tmp_path / "showdown"
    args = ["showdown", "--quick", "--test-budget", "--size", "tiny", "--checkpoint", checkpoint,
            "--seeds", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "showdown.json").read_text())
    assert (out / "showdown.png").read_bytes()[:8] == PNG_MAGIC
    page = (out / "showdown.md").read_text()
    assert result["table"] in page and result["command"] in page and "(showdown.png)" in page
    assert result["table"] in printed and "wall time" in printed
    assert result["command"].startswith("tinypft showdown --quick") and "--test-budget" in result["command"]
    assert result["budget"]["steps"] == BUDGETS["test"].steps and result["budget"]["description"]
    assert result["environment"]["numpy"] and result["wall_seconds"] > 0
    assert result["environment"]["blas_threads"] == 1 and "--threads 1" in result["command"]  # the default
    assert "--jobs 2" in result["command"]  # the default: two methods at once, one process each
    assert [row["method"] for row in result["rows"]] == list(SHOWDOWN_METHODS)
    assert len(result["runs"]) == 2 * len(SHOWDOWN_METHODS)
    rows = {row["method"]: row for row in result["rows"]}
    assert rows["frozen"]["trainable_params"] == 0 and rows["frozen"]["train_seconds"] == 0
    assert all(rows[m]["trainable_params"] > 0 and rows[m]["seeds"] == 2 for m in SHOWDOWN_METHODS[1:])
    assert all(rows["full"]["trainable_params"] > rows[m]["trainable_params"] for m in ("bitfit", "prompt"))
    for row in rows.values():
        for key in ("dev_bleu", "dev_ser", "test_bleu", "test_ser", "test_bleu_std"):
            assert row[key] is not None, key
    for run in result["runs"]:
        assert run["test"]["n"] == BUDGETS["test"].eval_size
        assert run["hyperparameters"]["settings"]["steps"] == BUDGETS["test"].steps
        assert run["source"] == "table" and "data" not in run  # the MR as a table, on the shipped E2E
        for split in ("dev", "test"):
            assert 0.0 <= run[split]["names_venue"] <= 1.0
            assert run[split]["distinct"] in {k / run[split]["n"] for k in range(1, run[split]["n"] + 1)}
    assert result["runs"][1]["train_units"] == 4862  # every MR of the E2E training set
    for row in rows.values():
        assert row["dev_names_venue"] is not None and row["test_names_venue"] is not None
    assert "dev names venue" in result["table"] and "names venue:" in page
    # one dev output of every method, for the same MR, in the JSON, on the page and on the screen
    samples = result["samples"]
    assert [s["method"] for s in samples] == list(SHOWDOWN_METHODS)
    assert len({s["source"] for s in samples}) == 1 and " : " in samples[0]["source"]
    assert f"> {samples[0]['source']}" in page
    for sample in samples:
        assert f"| {sample['method']} | {sample['output'].replace('|', '/')} |" in page
        assert f"{sample['method']:>7}: {sample['output']}" in printed


def test_aggregate_means_over_seeds_and_the_table_shows_the_spread(tmp_path: Path):
    rows = [
        {"method": "a", "trainable_params": 10, "trainable_pct": 1.0, "stored_bytes": 2000,
         "test_bleu": 20.0, "test_ser": 0.2, "train_seconds": 1.0},
        {"method": "a", "trainable_params": 10, "trainable_pct": 1.0, "stored_bytes": 2000,
         "test_bleu": 30.0, "test_ser": 0.4, "train_seconds": 3.0},
        {"method": "b", "trainable_params": 0, "trainable_pct": 0.0, "stored_bytes": 500,
         "test_bleu": 5.0, "test_ser": 0.9, "train_seconds": 0.0},
    ]
    merged = aggregate(rows)
    assert merged[0]["test_bleu"] == 25.0 and merged[0]["test_bleu_std"] == 5.0 and merged[0]["seeds"] == 2
    assert merged[0]["train_seconds"] == 2.0 and "test_bleu_std" not in merged[1]
    table = format_table(merged).splitlines()
    assert table[0].split("|")[1].strip() == "method" and "test BLEU" in table[0]
    assert "25.0 ± 5.0" in table[2] and "2.00 kB" in table[2] and "500 B" in table[3]
    assert plot_tradeoff(merged, tmp_path / "plot.png").read_bytes()[:8] == PNG_MAGIC


def test_parallel_processes_give_the_same_numbers(checkpoint):
    def numbers(result: dict) -> tuple:
        timeless = [{k: v for k, v in row.items() if "seconds" not in k} for row in result["rows"]]
        runs = [(run["method"], run["seed"], {split: {k: v for k, v in run[split].items()
                                                       if "seconds" not in k and "per_sec" not in k}
                                              for split in ("dev", "test")})
                for run in result["runs"]]
        return timeless, runs, result["samples"]

    budget = BUDGETS["test"]
    in_turn = run_showdown(budget, size="tiny", seeds=2, checkpoint=checkpoint, progress=False, jobs=1)
    parallel = run_showdown(budget, size="tiny", seeds=2, checkpoint=checkpoint, progress=False, jobs=3)
    assert numbers(in_turn) == numbers(parallel)
    assert [(r["method"], r["seed"]) for r in parallel["runs"]] == [
        (m, seed) for seed in (0, 1) for m in SHOWDOWN_METHODS]  # in plan order, whatever finished first
    with pytest.raises(ValueError, match="jobs"):
        run_showdown(budget, size="tiny", checkpoint=checkpoint, jobs=0)


def test_the_quick_budget_scores_dev_only_and_the_data_option_is_gone(capsys):
    quick = BUDGETS["quick"]
    assert quick.splits == ("dev",) and BUDGETS["default"].splits == ("dev", "test")
    assert "50 dev MRs" in quick.describe() and "test" not in quick.describe()
    assert main(["showdown", "--quick", "--data", "e2e"]) == 2  # one dataset: E2E, shipped
    assert "--data" in capsys.readouterr().err


def test_dev_only_rows_still_make_a_plot_and_the_names_column(tmp_path: Path):
    rows = [
        {"method": "frozen", "trainable_params": 0, "trainable_pct": 0.0, "stored_bytes": 0,
         "dev_bleu": 3.0, "dev_ser": 0.9, "dev_names_venue": 0.03, "train_seconds": 0.0},
        {"method": "prefix", "trainable_params": 500, "trainable_pct": 0.5, "stored_bytes": 2000,
         "dev_bleu": 30.0, "dev_ser": 0.2, "dev_names_venue": 0.96, "train_seconds": 2.0},
    ]
    assert plot_tradeoff(rows, tmp_path / "dev.png").read_bytes()[:8] == PNG_MAGIC
    table = format_table(rows).splitlines()
    assert "dev names venue" in table[0] and "test" not in table[0]
    assert "0.03" in table[2] and "0.96" in table[3]


def test_side_by_side_takes_each_methods_first_dev_output():
    def record(method: str, output: str) -> dict:
        return {"method": method, "dev": {"samples": [{"source": "name : A", "output": output},
                                                      {"source": "name : B", "output": "other"}]}}

    records = [record("frozen", "A  is\na pub."), record("full", "A | B"), record("frozen", "seed 1")]
    samples = side_by_side(records + [{"method": "prompt", "dev": None}])
    assert samples == [{"method": "frozen", "source": "name : A", "output": "A is a pub."},
                       {"method": "full", "source": "name : A", "output": "A | B"}]
    result = {"eval_note": "", "command": "tinypft showdown", "budget": {"description": "d"}, "seeds": [0],
              "wall_seconds": 1.0, "table": "T", "samples": samples}
    text = page(result, "title")
    assert "> name : A" in text and "| full | A / B |" in text and "| frozen | A is a pub. |" in text
    assert "One dev MR" not in page(result | {"samples": []}, "title")
