"""``tinypft scale``: a quick run with both engines agrees (on the shipped E2E data), a changed run
is made again, and the plan and the verdicts follow the recipe."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tinypft.cli import main
from tinypft.experiments import scale


def test_scale_quick_runs_both_engines_and_they_agree(tmp_path: Path, capsys: pytest.CaptureFixture):
    pytest.importorskip("torch")
    code = main(["scale", "--quick", "--size", "tiny", "--engine", "both", "--no-progress",
                 "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert code == 0
    md = (tmp_path / "out" / "scale.md").read_text()
    assert "## Little data" in md and "| 500 |" in md
    data = json.loads((tmp_path / "out" / "results" / "scale.json").read_text())
    ours, twin = (data["results"][e]["runs"] for e in ("tinypft", "torch"))
    assert len(ours) == len(twin) == 4 + 2 * 4 * 3  # all data: 2 sources; little data: one seed when quick
    for label in ours:
        assert ours[label]["dev"]["bleu"] == pytest.approx(twin[label]["dev"]["bleu"], abs=0.05), label
    assert "largest dev BLEU difference" in capsys.readouterr().out
    assert "By the number of slots" in md and "leaves its value out" in md
    for label in scale.ALL_DATA_LABELS + scale.TABLE_LABELS:  # MR sizes split the scored MRs between them
        for split in ("dev", "test"):
            groups = ours[label][split]["by_slots"]
            assert sum(g["n"] for g in groups.values()) == ours[label][split]["n"]
            assert set(groups) <= set(scale.SLOT_GROUPS)
            missing = ours[label][split]["missing_by_slot"]
            assert missing["name"]["n"] == ours[label][split]["n"]  # every MR names its venue
            assert all(0.0 <= m["missing"] <= 1.0 for m in missing.values())
    table = scale.run_settings(scale.plan(quick=True)[2], "tiny", Path("ckpt"), quick=True, progress=False)
    assert (table.source, scale.plan(quick=True)[2].label) == ("table", scale.TABLE_LABELS[0])


def test_scale_reruns_a_run_whose_settings_changed():
    run = scale.plan(quick=True)[0]
    settings = scale.run_settings(run, "tiny", Path("ckpt"), quick=True, progress=False)
    record = {"hyperparameters": {"settings": dataclasses.asdict(settings)},
              "checkpoint": {"weights_sha256": "abc"}}
    assert scale.same_settings(record, dataclasses.replace(settings, progress=True), "abc")  # bars: no
    assert not scale.same_settings(record, dataclasses.replace(settings, steps=settings.steps + 1), "abc")
    assert not scale.same_settings(record, settings, "def")  # pretrained again: other weights


def test_scale_plan_runs_three_seeds_of_each_low_data_size():
    labels = [run.label for run in scale.plan(quick=False)]
    assert len(labels) == len(set(labels)) == 4 + 2 * 4 * 3 * 3  # 2 units, 4 sizes, 3 methods, 3 seeds
    for unit in ("mr", "pair"):
        seeds = {run.seed for run in scale.plan(quick=False)
                 if run.train_size == 50 and run.method == "prefix" and run.unit == unit}
        assert seeds == {0, 1, 2}
    last = scale.plan(quick=False)[-1]
    settings = scale.run_settings(last, "small", Path("ckpt"), quick=False, progress=False)
    assert (settings.train_unit, settings.train_size) == ("pair", 500)
    assert {run.seed for run in scale.plan(quick=True)} == {0}


def test_low_data_verdicts_count_a_lead_only_beyond_the_seed_spread():
    def run(bleu: float) -> dict:
        return {"dev": {"bleu": bleu, "ser": 0.1}, "test": {"bleu": bleu, "ser": 0.1}}

    scores = {"full": (40.0, 42.0, 44.0), "prefix": (50.0, 50.0, 50.0), "bitfit": (41.0, 43.0, 46.0)}
    runs = {label: run(70.0) for label in scale.ALL_DATA_LABELS + scale.TABLE_LABELS}
    for unit in scale.LOW_DATA_UNITS:
        for n in scale.LOW_DATA_SIZES:
            for method, values in scores.items():
                for seed, bleu in zip(scale.LOW_DATA_SEEDS, values):
                    runs[scale.low_label(method, n, seed, unit)] = run(bleu)
    assert scale.low_data_bleu(runs, "full", 50) == pytest.approx((42.0, 2.0))  # sample sd
    lines = scale.verdicts({"tinypft": {"runs": runs}})
    prefix = next(line for line in lines if "prefix minus full" in line and "by pairs" in line)
    bitfit = next(line for line in lines if "bitfit minus full" in line and "by MRs" in line)
    assert "50: +8.0" in prefix and "ahead at 4 of 4 sizes" in prefix and "at 4)" in prefix
    assert "ahead at 4 of 4 sizes" in bitfit and "at 0)" in bitfit  # +1.3 against a spread of 3.0


def test_slot_breakdown_counts_the_values_an_output_leaves_out():
    from types import SimpleNamespace

    from tinypft.data import E2EExample

    examples = [
        E2EExample("name[Aromi], eatType[pub], area[riverside]",
                   {"name": "Aromi", "eatType": "pub", "area": "riverside"},
                   ("Aromi is a pub by the riverside.",)),
        E2EExample("name[Zizzi], eatType[pub], area[city centre], near[Café Rouge]",
                   {"name": "Zizzi", "eatType": "pub", "area": "city centre", "near": "Café Rouge"},
                   ("Zizzi is a pub in the city centre near Café Rouge.",)),
    ]
    outputs = ["Aromi is a pub by the riverside.", "Zizzi is a pub."]  # the second leaves area and near out
    run = SimpleNamespace(data=SimpleNamespace(dev=examples, test=[]), outputs={"dev": outputs})
    found = scale.slot_breakdown(run, "dev")
    missing = {slot: (m["n"], m["missing"]) for slot, m in found["missing_by_slot"].items()}
    assert missing == {"name": (2, 0.0), "eatType": (2, 0.0), "area": (2, 0.5), "near": (1, 1.0)}
    assert found["by_slots"]["3-5"]["n"] == 2 and found["by_slots"]["3-5"]["ser"] == pytest.approx(2 / 7)
