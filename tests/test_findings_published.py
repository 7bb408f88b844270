"""Reading the published findings back (the lessons' plots and tables): a fabricated JSON file."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

from tinypft.experiments.findings import published

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fake(tmp_path):
    stat = {"mean": 40.0, "sd": 2.0, "values": [38.0, 40.0, 42.0]}
    data = {"command": "tinypft findings", "seeds": [0, 1, 2], "size": "small", "budget": {"steps": 9},
            "experiments": {"prefix_length": {
                "rows": {"length 5": {"test_bleu": stat},
                         "length 10": {"test_bleu": {"mean": 45.0, "sd": 1.0, "values": [44.0, 45.0, 46.0]}}},
                "verdicts": [{"status": "Inconclusive", "claim": "a peak near 10",
                              "numbers": "40.0 vs 45.0"}]}}}
    path = tmp_path / "findings.json"
    path.write_text(json.dumps(data))
    return published.load(path)


def test_load_reads_rows_and_names_what_is_missing(tmp_path):
    results = fake(tmp_path)
    assert results.stat("prefix_length", "length 10", "test_bleu")["mean"] == 45.0
    with pytest.raises(KeyError, match="no experiment 'bitfit'.*prefix_length"):
        results.experiment("bitfit")
    with pytest.raises(KeyError, match="no row 'length 20'.*length 5, length 10"):
        results.stat("prefix_length", "length 20", "test_bleu")
    with pytest.raises(KeyError, match="no metric 'dev_bleu'"):
        results.stat("prefix_length", "length 5", "dev_bleu")
    with pytest.raises(FileNotFoundError, match="tinypft findings"):
        published.load(tmp_path / "absent.json")


def test_table_verdicts_and_errorbar(tmp_path, capsys):
    results = fake(tmp_path)
    published.print_table(results, "prefix_length", metrics=("test_bleu", "test_ser"))
    published.print_verdicts(results, "prefix_length")
    out = capsys.readouterr().out
    assert "40.0 ± 2.0" in out and "45.0 ± 1.0" in out and "Inconclusive: a peak near 10" in out
    fig, ax = plt.subplots()
    published.errorbar(ax, results, "prefix_length", ["length 5", "length 10"], "test_bleu", x=[5, 10])
    means = ax.lines[0].get_ydata()
    seeds = np.concatenate([line.get_ydata() for line in ax.lines if line.get_marker() == "."])
    plt.close(fig)
    assert list(means) == [40.0, 45.0]
    assert sorted(seeds) == [38.0, 40.0, 42.0, 44.0, 45.0, 46.0]


def test_the_committed_findings_load():
    results = published.load()
    assert results.experiments and results.seeds
