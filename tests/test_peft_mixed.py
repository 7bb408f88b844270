"""Mixed-task batches: each example runs with its own task's prefix or prompt, as if alone."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_model as shared_tiny_model

from tinypft.model import GPT
from tinypft.peft import (
    BitFitConfig,
    MixedTaskModel,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)


def tiny_model(seed: int = 0) -> GPT:
    return shared_tiny_model(seed, context_length=20)


def adapters_for(model: GPT) -> dict:
    return {
        "prefix2_mlp": get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=6)),
        "prefix4": get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=False)),
        "prompt3": get_peft_model(model, PromptTuningConfig(num_virtual_tokens=3, init="random_normal")),
        "emb1": get_peft_model(
            model, PrefixTuningConfig(num_virtual_tokens=1, prefix_projection=False, mode="embedding_only")
        ),
        "prompt3b": get_peft_model(model, PromptTuningConfig(num_virtual_tokens=3, init="uniform")),
    }


IDS = np.random.default_rng(0).integers(1, 16, (5, 6))
MASK = np.array([[1] * 6, [0, 0, 1, 1, 1, 1], [1] * 6, [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])


def check_each_row_equals_its_task_alone(mixed: MixedTaskModel, tasks: list[str]) -> None:
    out = mixed(IDS, MASK, tasks)
    for b, task in enumerate(tasks):
        alone = mixed.adapters[task](IDS[b : b + 1], attention_mask=MASK[b : b + 1]).logits.data[0]
        real = MASK[b] == 1
        np.testing.assert_allclose(out.logits.data[b][real], alone[real], rtol=1e-10, atol=1e-12)


def test_prompts_of_one_length_stack_as_prompt_embeds():
    model = tiny_model()
    mixed = MixedTaskModel(model, adapters_for(model))
    tasks = ["prompt3", "prompt3b", "prompt3b", "prompt3", "prompt3b"]
    prompts = mixed.stacked_prompts(tasks)
    assert prompts.shape == (5, 3, 8)
    np.testing.assert_array_equal(prompts.data[1], mixed.adapters["prompt3b"].soft_prompt.weight.data)
    check_each_row_equals_its_task_alone(mixed, tasks)


def test_prefixes_and_prompts_of_different_lengths_share_one_batch():
    model = tiny_model()
    mixed = MixedTaskModel(model, adapters_for(model))
    tasks = ["prefix2_mlp", "prefix4", "prompt3", "emb1", "prefix4"]
    cache = mixed.stacked_key_values(tasks)
    assert cache.keys[0].shape == (5, 2, 4, 4)  # (B, H, P_max, head_dim)
    assert cache.key_mask.sum(axis=1).tolist() == [2, 4, 3, 1, 4] and cache.next_position.tolist() == [
        2,
        4,
        3,
        1,
        4,
    ]
    check_each_row_equals_its_task_alone(mixed, tasks)


@pytest.mark.parametrize(
    "tasks",
    [
        ["prompt3", "prompt3b", "prompt3", "prompt3b", "prompt3"],
        ["prefix2_mlp", "prefix4", "prompt3", "emb1", "prefix2_mlp"],
    ],
)
def test_greedy_generation_from_the_mixed_cache_matches_each_task_alone(tasks):
    model = tiny_model()
    mixed = MixedTaskModel(model, adapters_for(model))
    out = mixed(IDS, MASK, tasks, use_cache=True)
    generated = [out.logits.data[:, -1].argmax(axis=1)]
    step_logits = [out.logits.data[:, -1]]
    for _ in range(3):
        out = mixed(generated[-1][:, None], cache=out.cache, use_cache=True)
        step_logits.append(out.logits.data[:, 0])
        generated.append(out.logits.data[:, 0].argmax(axis=1))
    for b, task in enumerate(tasks):
        adapter = mixed.adapters[task]
        alone = adapter(IDS[b : b + 1, MASK[b] == 1], use_cache=True)
        np.testing.assert_allclose(alone.logits.data[0, -1], step_logits[0][b], rtol=1e-10, atol=1e-12)
        for t in range(3):
            alone = adapter(np.array([[generated[t][b]]]), cache=alone.cache, use_cache=True)
            np.testing.assert_allclose(alone.logits.data[0, 0], step_logits[t + 1][b], rtol=1e-10, atol=1e-12)


def test_an_adapter_loaded_onto_an_identical_copy_can_join(tmp_path):
    model = tiny_model()
    adapters = adapters_for(model)
    adapters["prefix4"].save_pretrained(tmp_path / "prefix4")
    copy = tiny_model()
    loaded = PeftModel.from_pretrained(copy, tmp_path / "prefix4")
    mixed = MixedTaskModel(model, {"a": adapters["prompt3"], "b": loaded})
    out = mixed(IDS[:2], MASK[:2], ["b", "a"]).logits.data
    alone = adapters["prefix4"](IDS[:1], attention_mask=MASK[:1]).logits.data
    np.testing.assert_allclose(out[:1], alone, rtol=1e-12, atol=1e-12)


def test_what_cannot_share_a_batch_is_refused():
    model = tiny_model()
    adapters = adapters_for(model)
    infix = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=2, mode="infix"))
    with pytest.raises(ValueError, match="infix"):
        MixedTaskModel(model, {"x": infix})
    with pytest.raises(TypeError, match="BitFitModel"):
        MixedTaskModel(model, {"x": get_peft_model(tiny_model(), BitFitConfig())})
    other = tiny_model(seed=1)
    with pytest.raises(ValueError, match="different base model"):
        MixedTaskModel(model, {"x": get_peft_model(other, PromptTuningConfig(num_virtual_tokens=2))})
    mixed = MixedTaskModel(model, adapters)
    with pytest.raises(KeyError, match="unknown tasks"):
        mixed(IDS[:1], MASK[:1], ["nope"])
    with pytest.raises(ValueError, match="one task per example"):
        mixed(IDS[:2], MASK[:2], ["prompt3"])
