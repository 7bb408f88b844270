"""``tinypft finetune``: every method on every task gives a complete record, PEFT methods leave the
base weights alone, a seed repeats a run exactly, and the learning-rate sweep never looks at test
before it has chosen."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from tinypft.cli import main
from tinypft.data import IGNORE_INDEX, PAIR_SEPARATOR, load_tokenizer
from tinypft.experiments import FinetuneSettings, run_finetune, sweep_lr
from tinypft.experiments.finetune import (
    add_arguments,
    classify,
    finetune_command,
    fit,
    label_token_ids,
    prepare,
    settings_from_args,
)
from tinypft.experiments.methods import DEFAULTS, method_defaults
from tinypft.model import GPTConfig, load_pretrained
from tinypft.peft import PeftModel
from tinypft.peft.mapping import method_names
from tinypft.train.pretrain import pretrain

METHODS = ("full", "frozen", "bitfit", "prefix", "prompt")
PROMPT_LENGTH = method_defaults("prompt").num_virtual_tokens  # the prompt's default P
TASKS = ("e2e", "rating", "match")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer, d_model 32 model with the real tokenizer and context 128, pretrained for 40 steps."""
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=128, d_model=32, n_layers=1, n_heads=2)
    out = tmp_path_factory.mktemp("checkpoint")
    pretrain(config, out, steps=40, batch_size=8, lr=1e-2, dev_windows=4, progress=False, tokenizer=tok,
             command="test")
    return str(out)


def tiny(checkpoint: str, method: str, task: str = "e2e", **overrides) -> FinetuneSettings:
    """Settings for a run of a few steps, scored on a handful of examples."""
    values = dict(method=method, task=task, size="tiny", checkpoint=checkpoint, steps=3, eval_size=6,
                  max_new_tokens=4, prefix_hidden=16 if method == "prefix" else None, progress=False)
    return FinetuneSettings(**(values | overrides))


def test_every_registered_method_has_experiment_defaults():
    assert list(DEFAULTS) == method_names()
    with pytest.raises(ValueError, match="unknown fine-tuning method 'lora'"):
        method_defaults("lora")


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_task_gives_a_complete_record(checkpoint, method, task):
    record = run_finetune(tiny(checkpoint, method, task))
    for key in ("trainable_params", "trainable_pct", "stored_bytes", "stored_floats", "train_seconds",
                "hyperparameters", "command", "environment", "checkpoint"):
        assert key in record, key
    assert record["source"] == "table" and "data" not in record  # the shipped E2E, MRs as tables
    metrics = ("bleu", "ser", "names_venue", "distinct") if task == "e2e" else ("accuracy",)
    bounds = {"bleu": 100, "ser": 10, "names_venue": 1, "distinct": 1, "accuracy": 1}
    for split in ("dev", "test"):
        assert record[split]["n"] == 6
        for metric in metrics:
            assert 0 <= record[split][metric] <= bounds[metric], metric
        if task == "e2e":
            assert record[split]["distinct"] >= 1 / 6
    assert record["hyperparameters"]["peft_config"]["method"] == method
    d, layers = 32, 1
    if method == "frozen" and task == "e2e":  # the pretrained LM as it is
        assert record["trainable_params"] == record["steps"] == record["stored_floats"] == 0
        assert record["hyperparameters"]["train_config"] is None
    else:
        assert record["steps"] == 3 and record["train_seconds"] > 0
        assert record["hyperparameters"]["train_config"]["lr"] > 0
    if method == "frozen" and task != "e2e":  # a linear probe over the label classes
        classes = 3 if task == "rating" else 2
        assert record["trainable_params"] == record["stored_floats"] == d * classes + classes
    if method == "bitfit":  # per layer: q, k, v, o (4d), FFN in (4d) and out (d), 2 LayerNorm betas; ln_f
        biases = layers * (4 * d + 4 * d + d + 2 * d) + d
        assert record["trainable_params"] == record["stored_floats"] == biases
    if method == "prompt":
        assert record["trainable_params"] == record["stored_floats"] == PROMPT_LENGTH * d
    if method == "prefix":  # trained through the MLP, stored as the baked prefix (P, 2 L d)
        assert record["stored_floats"] == 10 * 2 * layers * d < record["trainable_params"]
    if method == "full":
        assert record["trainable_pct"] == 100.0
        assert record["stored_floats"] == record["base_params"]


@pytest.mark.parametrize("method,task", [("bitfit", "e2e"), ("prefix", "e2e"), ("prompt", "rating"),
                                         ("frozen", "match")])
def test_peft_methods_leave_the_frozen_weights_bit_identical(checkpoint, method, task):
    before, _ = load_pretrained("tiny", checkpoint)
    run = fit(prepare(tiny(checkpoint, method, task, lr=0.05)))
    base = dict(before.named_parameters())
    changed = [name for name, p in run.model.base_model.named_parameters()
               if name in base and not np.array_equal(p.data, base[name].data)]
    if method == "bitfit":
        assert changed and all(name.endswith(".bias") for name in changed)
    else:
        assert changed == []


@pytest.mark.parametrize("settings", [
    FinetuneSettings(method="prefix", train_size=50, train_unit="pair", seed=1, steps=210, lr=1e-3,
                     eval_size=200, select="heldout", init="real_words"),
    FinetuneSettings(method="prefix", seed=2, steps=1500, lr=1e-2, mlp=False, mode="infix", prefix_length=40,
                     eval_size=200, select="dev", eval_every=50, unseen="food=Chinese,English"),
    FinetuneSettings(method="prompt", task="rating", size="tiny", seed=4, steps=400, lr=0.1, eval_size=300,
                     select="dev", init="text", init_text="how is the customer rating: low, average or high"),
    FinetuneSettings(method="full", source="mr", epochs=2),
])
def test_the_recorded_command_repeats_the_run(settings: FinetuneSettings, monkeypatch: pytest.MonkeyPatch):
    """A record's ``command`` parses back to the settings it ran with, every field of them (the
    findings' best-step selection and held-out values included)."""
    monkeypatch.delenv("TINYPFT_QUICK", raising=False)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    words = shlex.split(finetune_command(settings))
    assert words[:2] == ["tinypft", "finetune"]
    again = settings_from_args(parser.parse_args(words[2:]))
    assert dataclasses.asdict(again) == dataclasses.asdict(settings)


def test_eval_every_needs_select():
    with pytest.raises(ValueError, match="eval_every .* needs select"):
        FinetuneSettings(method="bitfit", eval_every=10)


def test_the_mr_is_a_table_unless_source_mr_says_otherwise(checkpoint):
    run = prepare(tiny(checkpoint, "full"))
    text = run.tokenizer.decode(run.data.train[0][0])
    assert " : " in text and " | " in text and "[" not in text
    assert all(" : " in ex.mr and "[" not in ex.mr for ex in run.data.dev + run.data.test)
    assert "--source" not in finetune_command(run.settings)  # the default
    as_in_file = prepare(tiny(checkpoint, "full", source="mr"))
    text = as_in_file.tokenizer.decode(as_in_file.data.train[0][0])
    assert "[" in text and " : " not in text
    assert "--source mr" in finetune_command(as_in_file.settings)
    # the match task writes every MR, positive or negative, in the chosen form
    for source, opening, other in (("table", " : ", "["), ("mr", "[", " : ")):
        match = prepare(tiny(checkpoint, "full", task="match", source=source))
        mrs = [text.split(PAIR_SEPARATOR)[0] for text, _ in match.data.dev + match.data.test]
        assert {label for _, label in match.data.dev} == {"yes", "no"}
        assert all(opening in mr and other not in mr for mr in mrs), source
    with pytest.raises(ValueError, match="source"):
        tiny(checkpoint, "full", source="triples")


def test_label_words_are_scored_by_the_token_training_teaches(checkpoint):
    for task in ("rating", "match"):
        run = prepare(tiny(checkpoint, "full", task=task))
        label_ids = label_token_ids(run.tokenizer, run.data.label_words)
        assert label_ids == [run.tokenizer.encode_target(word)[0] for word in run.data.label_words]
        for _, labels in run.data.train[:200]:
            target = [t for t in labels if t != IGNORE_INDEX]
            assert target[0] in label_ids and target[-1] == run.tokenizer.eos_id
            assert run.tokenizer.decode(target[:-1]) in {" " + word for word in run.data.label_words}


def test_class_label_prompt_starts_from_the_tokens_the_model_answers_with(checkpoint):
    run = prepare(tiny(checkpoint, "prompt", task="rating", init="class_labels"))
    answers = label_token_ids(run.tokenizer, run.data.label_words)  # " low", " average", " high"
    prompt = run.model.soft_prompt.weight.data  # (P, d)
    wte = run.model.base_model.wte.weight.data  # (V, d)
    for i, token in enumerate(answers):  # class labels are single tokens here, tiled over P
        np.testing.assert_array_equal(prompt[i], wte[token])
    assert [run.tokenizer.encode(w)[0] for w in run.data.label_words] != answers  # without the space: others


def test_train_size_counts_mrs_or_pairs(checkpoint):
    by_mr = prepare(tiny(checkpoint, "full", train_size=5))
    by_pair = prepare(tiny(checkpoint, "full", train_size=5, train_unit="pair"))
    assert by_mr.data.train_units == by_pair.data.train_units == 5
    assert len(by_pair.data.train) == 5 < len(by_mr.data.train)  # 5 MRs have several references each
    sources = {tuple(ids[: ids.index(by_pair.tokenizer.sep_id) + 1]) for ids, _ in by_pair.data.train}
    assert len(sources) > 1  # pairs drawn from the whole set, not the references of one MR
    assert "--train-unit pair" in finetune_command(by_pair.settings)
    with pytest.raises(ValueError, match="e2e task"):
        tiny(checkpoint, "full", task="rating", train_unit="pair")


def test_the_same_seed_repeats_exactly_and_another_seed_differs(checkpoint):
    settings = tiny(checkpoint, "prefix", train_size=20, steps=4, seed=3)
    runs = [fit(prepare(settings)) for _ in range(2)]
    other = fit(prepare(dataclasses.replace(settings, seed=4)))
    first, second = (r.model.adapter_state_dict() for r in runs)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    name = "prefix_encoder.prefix"
    assert not np.array_equal(first[name], other.model.adapter_state_dict()[name])
    assert runs[0].result.train_loss == runs[1].result.train_loss
    a, b = (run_finetune(settings) for _ in range(2))
    for split in ("dev", "test"):  # the same scores and outputs; only the timings differ
        assert {k: v for k, v in a[split].items() if k != "seconds"} == {
            k: v for k, v in b[split].items() if k != "seconds"
        }


def test_the_sweep_chooses_on_dev_and_scores_only_the_chosen_run_on_test(checkpoint):
    record = sweep_lr(tiny(checkpoint, "bitfit", "rating", eval_size=30), [1e-4, 0.3, 0.03])
    assert [entry["lr"] for entry in record["sweep"]] == [1e-4, 0.3, 0.03]
    assert all("test" not in entry for entry in record["sweep"])
    dev = [entry["dev"]["accuracy"] for entry in record["sweep"]]
    chosen = record["hyperparameters"]["train_config"]["lr"]
    assert chosen == record["sweep"][int(np.argmax(dev))]["lr"]
    assert record["dev"]["accuracy"] == max(dev) and record["test"] is not None


def test_label_word_scoring_does_not_depend_on_the_batch(checkpoint):
    run = fit(prepare(tiny(checkpoint, "prefix", "rating", mode="infix")))
    sources = [source for source, _ in run.data.dev]
    label_ids = label_token_ids(run.tokenizer, run.data.label_words)
    together = classify(run.model, run.tokenizer, sources, label_ids, infix=True, batch_size=6)
    alone = [classify(run.model, run.tokenizer, [s], label_ids, infix=True)[0] for s in sources]
    np.testing.assert_array_equal(together, alone)


def test_finetune_command_writes_the_record_and_a_loadable_adapter(checkpoint, tmp_path: Path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--method", "prompt", "--size", "tiny", "--checkpoint", checkpoint, "--steps", "2",
            "--eval-size", "3", "--max-new-tokens", "3", "--out", str(out), "--json", "--no-progress"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "result.json").read_text())
    timing = json.loads((out / "timing.json").read_text())  # the wall times, kept out of result.json
    assert "seconds" not in saved["test"] and "train_seconds" not in saved
    assert printed["test"] == saved["test"] | timing["test"] and saved["method"] == "prompt"
    assert printed["train_seconds"] == timing["train_seconds"]
    assert saved["stored_bytes"] == sum(f.stat().st_size for f in (out / "adapter").iterdir())
    base, _ = load_pretrained("tiny", checkpoint)
    assert PeftModel.from_pretrained(base, out / "adapter").num_virtual_tokens == PROMPT_LENGTH
    for wrong, message in ((["--init", "uniform"], "--init is for prefix and prompt"),
                           (["--mode", "infix"], "options of the prefix method")):
        assert main(["finetune", "--method", "bitfit", "--size", "tiny", "--checkpoint", checkpoint,
                     *wrong, "--no-progress"]) == 2
        assert message in capsys.readouterr().err
