"""Prompt-Tuning: the soft prompt, its initializations, and prompt ensembling."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_model

import tinypft
from tinypft.model import GPT
from tinypft.peft import PromptEnsemble, PromptTuningConfig, get_peft_model
from tinypft.peft.prompt import frequent_token_ids, majority_vote


def prompt_of(model: GPT, **config) -> np.ndarray:
    return get_peft_model(model, PromptTuningConfig(**config)).soft_prompt.weight.data


class Chars:
    """A stand-in tokenizer: a -> 0, b -> 1, ..."""

    def encode(self, text):
        return [ord(c) - ord("a") for c in text]


def test_the_soft_prompt_sits_in_front_and_only_the_tokens_have_logits():
    """Initialized from a text, the prompt model equals the base model reading that text first."""
    model = tiny_model()
    peft_model = get_peft_model(
        model, PromptTuningConfig(num_virtual_tokens=3, init="text", init_text=[4, 7, 1])
    )
    ids = np.random.default_rng(0).integers(0, 16, (2, 5))
    out = peft_model(ids)
    assert out.logits.shape == (2, 5, 16)
    expected = model(np.concatenate([np.tile([4, 7, 1], (2, 1)), ids], 1)).logits.data[:, 3:]
    np.testing.assert_allclose(out.logits.data, expected, rtol=1e-12, atol=1e-12)
    assert {n: p.shape for n, p in peft_model.adapter_parameters().items()} == {"soft_prompt.weight": (3, 8)}


def test_uniform_and_random_normal_inits():
    model = tiny_model(d_model=64, n_heads=2)
    uniform = prompt_of(model, num_virtual_tokens=50, init="uniform")
    assert uniform.shape == (50, 64) and uniform.min() >= -0.5 and uniform.max() <= 0.5
    assert uniform.min() < -0.45 and uniform.max() > 0.45 and abs(uniform.mean()) < 0.02
    normal = prompt_of(model, num_virtual_tokens=50, init="random_normal")
    assert abs(normal.std() - 1.0) < 0.05 and abs(normal.mean()) < 0.05


def test_sampled_vocab_draws_from_the_most_frequent_tokens():
    model = tiny_model()
    wte = model.wte.weight.data
    counts = np.zeros(16)
    counts[[3, 7, 11, 12]] = [50, 40, 30, 20]  # the top 3 are 3, 7, 11
    assert frequent_token_ids(16, 3, counts).tolist() == [3, 7, 11]
    assert frequent_token_ids(16, 3, {12: 5, 1: 9}).tolist() == [1, 12]  # only tokens that occur
    assert frequent_token_ids(16, 5000).tolist() == list(range(16))  # no counts: the whole vocabulary
    prompt = prompt_of(model, num_virtual_tokens=3, init="sampled_vocab", sample_top_k=3, token_counts=counts)
    rows = [int(np.flatnonzero((wte == row).all(axis=1))[0]) for row in prompt]
    assert sorted(rows) == [3, 7, 11]  # without replacement while the pool is large enough
    more = prompt_of(model, num_virtual_tokens=6, init="sampled_vocab", sample_top_k=3, token_counts=counts)
    assert all(any((wte[i] == row).all() for i in (3, 7, 11)) for row in more)


def test_class_label_init_one_label_per_slot_then_sampled_vocab():
    model = tiny_model()
    wte = model.wte.weight.data
    prompt = prompt_of(model, num_virtual_tokens=4, init="class_labels", class_labels=[[2], [5, 9], 13])
    np.testing.assert_array_equal(prompt[0], wte[2])
    np.testing.assert_allclose(prompt[1], (wte[5] + wte[9]) / 2, rtol=1e-15)  # a two-token label: averaged
    np.testing.assert_array_equal(prompt[2], wte[13])
    assert any((wte == prompt[3]).all(axis=1))  # the rest: vocabulary rows
    strings = prompt_of(
        model, num_virtual_tokens=2, init="class_labels", class_labels=["c", "fb"], tokenizer=Chars()
    )
    np.testing.assert_allclose(strings, [wte[2], (wte[5] + wte[1]) / 2], rtol=1e-15)
    with pytest.raises(ValueError, match="do not fit"):
        prompt_of(model, num_virtual_tokens=1, init="class_labels", class_labels=[[1], [2]])


def test_text_init_tiles_or_truncates_to_p():
    model = tiny_model()
    wte = model.wte.weight.data
    np.testing.assert_array_equal(
        prompt_of(model, num_virtual_tokens=5, init="text", init_text=[1, 2]), wte[[1, 2, 1, 2, 1]]
    )
    np.testing.assert_array_equal(
        prompt_of(model, num_virtual_tokens=2, init="text", init_text="dcba", tokenizer=Chars()), wte[[3, 2]]
    )
    with pytest.raises(ValueError, match="tokenizer"):
        prompt_of(model, num_virtual_tokens=2, init="text", init_text="dcba")


def test_majority_vote_breaks_ties_towards_the_smallest_class():
    votes = np.array([[0, 2, 1, 1], [1, 2, 0, 2], [1, 0, 2, 0]])  # (N = 3 prompts, B = 4 examples)
    assert majority_vote(votes).tolist() == [1, 2, 0, 0]


def ensemble_of(model: GPT, n: int) -> PromptEnsemble:
    prompts = []
    for seed in range(n):
        tinypft.manual_seed(seed)
        prompts.append(get_peft_model(model, PromptTuningConfig(num_virtual_tokens=2, init="random_normal")))
    return PromptEnsemble(prompts)


def test_an_ensemble_runs_n_prompts_in_one_batch():
    model = tiny_model()
    ensemble = ensemble_of(model, 3)
    ids = np.random.default_rng(1).integers(0, 16, (2, 5))
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1]])
    out = ensemble(ids, mask)
    assert out.logits.shape == (6, 5, 16)  # row n * B + b
    for n, prompt in enumerate(ensemble.prompts):
        np.testing.assert_allclose(
            out.logits.data[2 * n : 2 * n + 2], prompt(ids, mask).logits.data, rtol=1e-12, atol=1e-12
        )


def test_ensemble_prediction_is_the_majority_of_each_prompts_label_word():
    model = tiny_model()
    ensemble = ensemble_of(model, 5)
    ids = np.random.default_rng(2).integers(0, 16, (4, 5))
    mask = np.array([[1] * 5, [1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1] * 5])
    label_words = [3, 8, 12]
    each = ensemble.predict_each(ids, mask, label_token_ids=label_words)
    last = np.array([4, 2, 4, 4])
    for n, prompt in enumerate(ensemble.prompts):
        logits = prompt(ids, mask).logits.data[np.arange(4), last][:, label_words]  # (B, 3)
        assert each[n].tolist() == logits.argmax(axis=1).tolist()
    assert ensemble.predict(ids, mask, label_token_ids=label_words).tolist() == majority_vote(each).tolist()
    assert not (each == each[0]).all()  # the prompts disagree somewhere, so the vote matters


def test_ensemble_with_a_classification_head():
    model = tiny_model(head=True)
    ensemble = ensemble_of(model, 3)
    ids = np.random.default_rng(3).integers(0, 16, (3, 4))
    each = ensemble.predict_each(ids)
    for n, prompt in enumerate(ensemble.prompts):
        assert each[n].tolist() == prompt(ids).cls_logits.data.argmax(axis=1).tolist()
    assert ensemble.predict(ids).shape == (3,)
    with pytest.raises(ValueError, match="label_token_ids"):
        ensemble_of(tiny_model(), 2).predict(ids)


def test_ensemble_members_must_match():
    model = tiny_model()
    with pytest.raises(ValueError, match="same length"):
        PromptEnsemble([get_peft_model(model, PromptTuningConfig(num_virtual_tokens=n)) for n in (2, 3)])
    with pytest.raises(ValueError, match="same base model"):
        PromptEnsemble(
            [get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=2)) for _ in range(2)]
        )
