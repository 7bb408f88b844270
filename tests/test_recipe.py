"""``tinypft.recipe``: the recipe's calls give the ``tinypft finetune`` command's numbers to the
last digit (one implementation), merge folds BitFit and a random subset into a plain GPT that
computes the same logits, and prefix and prompt refuse to merge, saying why."""

from __future__ import annotations

import numpy as np
import pytest

from tinypft import recipe
from tinypft.experiments import finetune
from tinypft.experiments.finetune import FinetuneSettings, run_finetune
from tinypft.model import GPT, load_pretrained
from tinypft.peft import BitFitConfig, FrozenConfig, PeftModel, RandomSubsetConfig

TRAIN_SIZE, EVAL_SIZE, STEPS, NEW_TOKENS = 12, 4, 3, 6


@pytest.fixture(scope="module")
def tokenizer():
    return recipe.load_tokenizer()


@pytest.fixture(scope="module")
def tasks(tokenizer):
    """Small e2e data, validated on dev."""
    return {"e2e": recipe.load_task("e2e", tokenizer, eval_size=EVAL_SIZE, train_size=TRAIN_SIZE, seed=2)}


def tiny_model(tokenizer) -> GPT:
    return load_pretrained("tiny", tokenizer=tokenizer)[0]


@pytest.mark.parametrize(("method", "task", "select"), [
    ("bitfit", "e2e", "dev"),
    ("prefix", "e2e", None),
    ("prompt", "rating", None),
])
def test_recipe_gives_the_finetune_commands_numbers(tokenizer, monkeypatch, method, task, select):
    monkeypatch.setattr(finetune, "VALID_PAIRS", 16)  # a short validation set for both, to keep it fast
    options = {"prefix_hidden": 16} if method == "prefix" else {}
    settings = FinetuneSettings(
        method=method, task=task, size="tiny", train_size=TRAIN_SIZE, seed=2, steps=STEPS,
        eval_size=EVAL_SIZE, max_new_tokens=NEW_TOKENS, select=select, eval_every=1 if select else None,
        progress=False, **options,
    )
    record = run_finetune(settings, splits=("dev",), tokenizer=tokenizer)

    data = recipe.load_task(task, tokenizer, eval_size=EVAL_SIZE, train_size=TRAIN_SIZE, seed=2)
    assert len(data.valid) == 16
    config = recipe.method_config(method, data, seed=2, **({"encoder_hidden_size": 16} if options else {}))
    model = recipe.get_peft_model(tiny_model(tokenizer), config, seed=2)
    result = recipe.train(model, data, steps=STEPS, seed=2, select=select, eval_every=1 if select else None,
                          progress=False)
    scores = recipe.evaluate(model, data, "dev", max_new_tokens=NEW_TOKENS)

    assert result.steps == record["steps"] == STEPS
    assert float(np.mean(result.train_loss[:10])) == record["first_train_loss"]
    assert float(np.mean(result.train_loss[-20:])) == record["final_train_loss"]
    assert record["hyperparameters"]["train_config"]["lr"] == (3e-2 if method == "bitfit" else
                                                               1e-3 if method == "prefix" else 1e-1)
    if select:
        assert result.best is not None and result.best["step"] == record["best_step"]
        assert result.best["loss"] == record["valid_loss"]
    recorded = {k: v for k, v in record["dev"].items() if k != "seconds"}
    assert {k: v for k, v in scores.metrics.items() if k != "seconds"} == recorded
    assert scores.n == EVAL_SIZE and len(scores.outputs) == EVAL_SIZE
    if task == "rating":
        assert scores.accuracy == record["dev"]["accuracy"]
        assert scores.class_counts == record["dev"]["class_counts"]
        assert sum(scores.class_counts) == EVAL_SIZE and set(scores.outputs) <= set(data.label_words)
        assert str(scores).startswith(f"dev ({EVAL_SIZE} examples): accuracy")
    else:
        assert scores.bleu == record["dev"]["bleu"] and scores.ser == record["dev"]["ser"]
        assert str(scores).startswith(f"dev ({EVAL_SIZE} inputs): BLEU")


def test_train_refuses_a_validation_set_the_data_do_not_hold(tokenizer, tasks):
    model = recipe.get_peft_model(tiny_model(tokenizer), BitFitConfig())
    with pytest.raises(ValueError, match="load it with recipe.load_task"):
        recipe.train(model, tasks["e2e"], steps=1, select="heldout", progress=False)
    with pytest.raises(TypeError, match="wrap it first"):
        recipe.train(tiny_model(tokenizer), tasks["e2e"], steps=1, progress=False)


def test_the_frozen_model_trains_nothing_and_keeps_its_weights(tokenizer, tasks):
    model = recipe.get_peft_model(tiny_model(tokenizer), FrozenConfig())
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    result = recipe.train(model, tasks["e2e"], steps=2, progress=False)
    assert result.steps == 0 and result.train_loss == []
    assert all(np.array_equal(p.data, before[n]) for n, p in model.named_parameters())


def logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return model(ids, attention_mask=mask).logits.data


@pytest.mark.parametrize("config", [BitFitConfig(), RandomSubsetConfig(seed=1)],
                         ids=["bitfit", "random_subset"])
def test_merge_folds_the_trained_tensors_into_a_plain_gpt(tokenizer, tasks, config):
    untouched = tiny_model(tokenizer)
    model = recipe.get_peft_model(tiny_model(tokenizer), config)
    recipe.train(model, tasks["e2e"], steps=2, lr=0.1, progress=False)
    merged = recipe.merge(model)
    assert isinstance(merged, GPT) and not isinstance(merged, PeftModel)
    assert all(p.requires_grad for p in merged.parameters())
    ids = np.array([[1, 40, 41, 42, 43, 2], [1, 50, 51, 2, 0, 0]])
    mask = (np.arange(6) < np.array([[6], [4]])).astype(np.int64)
    expected = logits(model, ids, mask)
    np.testing.assert_allclose(logits(merged, ids, mask), expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(logits(untouched, ids, mask), expected, atol=1e-4)  # training changed something
    model.base_model.ln_f.bias.data[...] += 1.0  # the merged model is a copy, not a view
    assert not np.allclose(logits(model, ids, mask), logits(merged, ids, mask), atol=1e-4)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prefix_and_prompt_refuse_to_merge_and_say_why(tokenizer, tasks, method):
    options = {"encoder_hidden_size": 16} if method == "prefix" else {}
    config = recipe.method_config(method, tasks["e2e"], **options)
    model = recipe.get_peft_model(tiny_model(tokenizer), config)
    with pytest.raises(TypeError, match=rf"{method} cannot merge .* virtual tokens .* depends on each input"):
        recipe.merge(model)
