"""``tinypft showdown`` end to end on a tiny model with a few steps, and the report helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tinypft.cli import main
from tinypft.data import load_tokenizer
from tinypft.experiments import BUDGETS, aggregate, format_table, plot_tradeoff
from tinypft.experiments.showdown import SHOWDOWN_METHODS
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


@pytest.mark.skipif(not os.environ.get("TINYPFT_DATA"), reason="TINYPFT_DATA is not set")
def test_showdown_on_the_real_e2e_data(checkpoint, tmp_path: Path):
    out = tmp_path / "real"
    args = ["showdown", "--test-budget", "--data", "e2e", "--size", "tiny", "--checkpoint", checkpoint,
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    result = json.loads((out / "showdown.json").read_text())
    assert result["data"] == "e2e" and "--data e2e" in result["command"]
    assert all(run["data"] == "e2e" for run in result["runs"])
    assert result["runs"][1]["train_units"] == 4862  # the real training set's MRs, not the synthetic ones
