"""The fast cached decoding step (``tinypft.model.decode``) computes what the general path computes.

Every comparison runs the same calls twice, with the fast path on and off (``use_fast_decode``):
the logits, hidden states and caches must agree (to float64 rounding; the operations are the same,
so they are in fact equal), and generation must give the same tokens as the general cached path
and as uncached decoding: greedy and beam search, left-padded batches, prompt-tuning, prefix and
infix models, BitFit and random-subset models (whose weights change inside their forward), and
mixed-task batches (a cache built by hand). The fast path must really run where it should and
must step aside (with the cache untouched) where it should not.
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_model

import tinypft
from tinypft.engine import no_grad, use_fused_kernels
from tinypft.model import GPT, GPTConfig, decode
from tinypft.model.decode import fast_decode_enabled, set_fast_decode, use_fast_decode
from tinypft.nn import Linear
from tinypft.peft import (
    BitFitConfig,
    MixedTaskModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
    get_peft_model,
)
from tinypft.train import generate

PAD, EOS = 0, 1
PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12], [13, 14]]  # different lengths: left padding


@pytest.fixture
def fast_steps(monkeypatch):
    """Counts the calls the fast path answered (``can_decode_fast`` saying yes) and declined."""
    counts = {"fast": 0, "declined": 0}
    original = decode.can_decode_fast

    def counting(*args, **kwargs):
        fast = original(*args, **kwargs)
        if fast:
            counts["fast"] += 1
        elif fast_decode_enabled():
            counts["declined"] += 1
        return fast

    monkeypatch.setattr(decode, "can_decode_fast", counting)
    return counts


def model_of(dtype=np.float64, seed: int = 0, **overrides) -> GPT:
    """A random model with large weights: peaked next-token distributions, so no near-ties."""
    tinypft.manual_seed(seed)
    config = dict(vocab_size=24, context_length=24, d_model=16, n_layers=2, n_heads=2, **overrides)
    with tinypft.default_dtype(dtype):
        model = GPT(GPTConfig(**config))
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        std = {"wte.weight": 1.0, "wpe.weight": 3.0}.get(name, 0.3)
        p.data[...] = rng.normal(0.0, std, size=p.shape) + (name.endswith(("ln_1.weight", "ln_2.weight")))
    return model.eval()


def both_paths(run):
    """``run()`` with the fast path on, then off."""
    with use_fast_decode(True):
        fast = run()
    with use_fast_decode(False):
        general = run()
    return fast, general


def assert_same_output(fast, general, dtype) -> None:
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fast.logits.data, general.logits.data, **tol)
    np.testing.assert_allclose(fast.hidden.data, general.hidden.data, **tol)
    assert fast.logits.dtype == general.logits.dtype == dtype
    if general.cache is None:
        assert fast.cache is None
        return
    for a, b in zip(
        fast.cache.keys + fast.cache.values, general.cache.keys + general.cache.values, strict=True
    ):
        np.testing.assert_allclose(a.data, b.data, **tol)
    np.testing.assert_array_equal(fast.cache.key_mask, general.cache.key_mask)
    np.testing.assert_array_equal(fast.cache.next_position, general.cache.next_position)


def decode_steps(model, ids, mask, steps: int, chunk: int = 1):
    """Prefill, then ``steps`` cached calls of ``chunk`` greedy-chosen tokens each (the same tokens
    feed the next call, whichever path computed them); returns every call's output."""
    with no_grad():
        outs = [model(ids, attention_mask=mask, use_cache=True)]
        for _ in range(steps):
            token = outs[-1].logits.data[:, -1].argmax(axis=1)  # (B,)
            new = (token[:, None] + np.arange(chunk)) % model.config.vocab_size  # (B, chunk)
            outs.append(model(new, cache=outs[-1].cache, use_cache=True))
    return outs


# ----------------------------------------------------------------------------- one step


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_steps_equal_the_general_path(dtype, chunk, fast_steps):
    model = model_of(dtype)
    ids = np.random.default_rng(0).integers(2, 24, (3, 5))
    mask = np.array([[1] * 5, [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])  # left padding
    fast, general = both_paths(lambda: decode_steps(model, ids, mask, steps=4, chunk=chunk))
    assert fast_steps["fast"] == 4
    for a, b in zip(fast, general, strict=True):
        assert_same_output(a, b, dtype)


def test_padding_inside_a_continuation_and_use_cache_false():
    model = model_of()
    with no_grad():
        prefill = model(
            np.array([[5, 6, 7], [0, 8, 9]]), attention_mask=np.array([[1, 1, 1], [0, 1, 1]]), use_cache=True
        )
    new, new_mask = np.array([[3, 4], [0, 6]]), np.array([[1, 1], [0, 1]])
    for use_cache in (True, False):
        with no_grad():
            fast, general = both_paths(
                lambda u=use_cache: model(new, attention_mask=new_mask, cache=prefill.cache, use_cache=u)
            )
        assert_same_output(fast, general, np.float64)


def test_two_continuations_of_one_cache_do_not_disturb_each_other():
    model = model_of()
    with no_grad():
        prefill = model(np.array([[5, 6, 7]]), use_cache=True)

        def branches():
            a = model(np.array([[2]]), cache=prefill.cache, use_cache=True)
            b = model(np.array([[3]]), cache=prefill.cache, use_cache=True)  # a copy: a owns the end
            a2 = model(np.array([[4]]), cache=a.cache, use_cache=True)
            return a, b, a2

        fast, general = both_paths(branches)
    for x, y in zip(fast, general, strict=True):
        assert_same_output(x, y, np.float64)


def test_positions_given_explicitly_and_the_context_limit():
    model = model_of()
    with no_grad():
        prefill = model(np.array([[5, 6, 7]]), use_cache=True)
        fast, general = both_paths(
            lambda: model(np.array([[2]]), position_ids=np.array([[9]]), cache=prefill.cache, use_cache=True)
        )
        assert_same_output(fast, general, np.float64)
        with pytest.raises(ValueError, match="sequence too long"):  # the general path's error
            model(np.array([[2]]), position_ids=np.array([[24]]), cache=prefill.cache)
        with pytest.raises(IndexError, match="out of range"):
            model(np.array([[99]]), cache=prefill.cache)


# ----------------------------------------------------------------------------- generation


def generations(model, prompts, method: str, **kwargs) -> dict[str, list[list[int]]]:
    """The same generation three ways: fast cached, general cached and (when possible) uncached."""
    run = dict(max_new_tokens=8, eos_id=EOS, pad_id=PAD, method=method, num_beams=3, **kwargs)
    fast, general = both_paths(lambda: generate(model, prompts, **run))
    results = {"fast": fast, "general": general}
    if "prefill_kwargs" not in kwargs:
        results["uncached"] = generate(model, prompts, use_cache=False, **run)
    return results


def assert_all_equal(results: dict[str, list[list[int]]]) -> None:
    first = results["fast"]
    assert any(first), "nothing was generated: the comparison would be empty"
    for name, tokens in results.items():
        assert tokens == first, f"{name} differs from the fast path"


@pytest.mark.parametrize("method", ["greedy", "beam"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generation_gives_the_same_tokens(method, dtype, fast_steps):
    assert_all_equal(generations(model_of(dtype), PROMPTS, method))
    assert fast_steps["fast"] > 0 and fast_steps["declined"] == 0


def peft_models() -> dict:
    """PEFT models on float64 base models, every trained parameter randomized."""
    models = {
        "prompt": get_peft_model(model_of(), PromptTuningConfig(num_virtual_tokens=3, init="random_normal")),
        "prefix": get_peft_model(model_of(), PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=6)),
        "embedding_only": get_peft_model(
            model_of(),
            PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=False, mode="embedding_only"),
        ),
        "bitfit": get_peft_model(model_of(), BitFitConfig()),
        "random_subset": get_peft_model(model_of(), RandomSubsetConfig(num_params=200)),
    }
    rng = np.random.default_rng(5)
    for peft_model in models.values():
        for p in peft_model.adapter_parameters().values():
            p.data += rng.normal(0.0, 0.5, size=p.shape)
    return models


@pytest.mark.parametrize("method", ["greedy", "beam"])
@pytest.mark.parametrize("name", ["prompt", "prefix", "embedding_only", "bitfit", "random_subset"])
def test_peft_models_generate_the_same_tokens(name, method, fast_steps):
    assert_all_equal(generations(peft_models()[name], PROMPTS, method))
    assert fast_steps["fast"] > 0 and fast_steps["declined"] == 0


def test_random_subset_steps_use_the_effective_weights():
    peft_model = peft_models()["random_subset"]
    ids = np.array([[5, 6, 7], [0, 8, 9]])
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    fast, general = both_paths(lambda: decode_steps(peft_model, ids, mask, steps=3))
    for a, b in zip(fast, general, strict=True):
        assert_same_output(a, b, np.float64)
    with no_grad():  # the base model alone (without the deltas) predicts something else
        base = peft_model.base_model(ids, attention_mask=mask).logits.data
    assert not np.allclose(base[:, -1], fast[0].logits.data[:, -1])


def test_infix_generation_gives_the_same_tokens(fast_steps):
    tinypft.manual_seed(0)
    with tinypft.default_dtype(np.float64):
        base = GPT(GPTConfig(vocab_size=16, context_length=32, d_model=8, n_layers=2, n_heads=2))
        peft_model = get_peft_model(base, PrefixTuningConfig(num_virtual_tokens=3, mode="infix"))
    rng = np.random.default_rng(1)
    for _, p in peft_model.named_parameters():
        p.data += rng.normal(0.0, 0.3, size=p.shape)
    prompts = [[2, 5, 6, 7, 3], [2, 9, 3], [2, 4, 4, 11, 12, 13, 3]]
    for method in ("greedy", "beam"):
        assert_all_equal(generations(peft_model, prompts, method, prefill_kwargs={"infix_start": -1}))
    assert fast_steps["fast"] > 0 and fast_steps["declined"] == 0


@pytest.mark.parametrize(
    "tasks", [["prefix2", "prompt3", "emb1", "prefix4", "prompt3"], ["prompt3", "prompt3", "prompt3"]]
)
def test_mixed_task_batches(tasks, fast_steps):
    model = tiny_model(0, context_length=20)
    adapters = {
        "prefix2": get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=6)),
        "prefix4": get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=False)),
        "prompt3": get_peft_model(model, PromptTuningConfig(num_virtual_tokens=3, init="random_normal")),
        "emb1": get_peft_model(
            model, PrefixTuningConfig(num_virtual_tokens=1, prefix_projection=False, mode="embedding_only")
        ),
    }
    mixed = MixedTaskModel(model.eval(), adapters)  # eval mode: the fast path needs it
    B = len(tasks)
    ids = np.random.default_rng(0).integers(1, 16, (B, 5))
    mask = np.ones((B, 5), int)
    mask[1, :2] = 0  # left padding in one row

    def run():
        out = mixed(ids, mask, tasks, use_cache=True)  # a hand-built cache (or prompt_embeds) at prefill
        outs = [out]
        for _ in range(4):
            token = outs[-1].logits.data[:, -1].argmax(axis=1)
            outs.append(mixed(token[:, None], cache=outs[-1].cache, use_cache=True))
        return outs

    fast, general = both_paths(run)
    for a, b in zip(fast, general, strict=True):
        assert_same_output(a, b, np.float64)
    prefill_from_a_cache = len(set(tasks)) > 1  # one prompt length for all: prompt_embeds instead
    assert fast_steps["fast"] == 4 + prefill_from_a_cache
    for b, task in enumerate(tasks):  # and each row equals its task alone, on the fast path
        alone = adapters[task](ids[b : b + 1, mask[b] == 1], use_cache=True)
        for t in range(4):
            token = fast[t].logits.data[b, -1].argmax()
            alone = adapters[task](np.array([[token]]), cache=alone.cache, use_cache=True)
            np.testing.assert_allclose(alone.logits.data[0, 0], fast[t + 1].logits.data[b, 0], rtol=1e-10)


# ----------------------------------------------------------------------------- when it steps aside


def test_the_switch():
    assert fast_decode_enabled()
    with use_fast_decode(False):
        assert not fast_decode_enabled()
    assert fast_decode_enabled()
    set_fast_decode(False)
    try:
        assert not fast_decode_enabled()
    finally:
        set_fast_decode(True)


class ScaledLinear(Linear):
    """A replaced module: the fast path cannot know its forward."""

    def forward(self, x):
        return super().forward(x) * 2.0


def declines(model, fast_steps, **kwargs) -> None:
    """The step is left to the general path, which leaves the given cache as the fast path found it."""
    with no_grad():
        prefill = model(np.array([[5, 6, 7]]), use_cache=True)
    before = [k.data.copy() for k in prefill.cache.keys]
    fast_steps["fast"] = 0
    model(np.array([[2]]), cache=prefill.cache, use_cache=True, **kwargs)
    assert fast_steps["fast"] == 0
    for k, old in zip(prefill.cache.keys, before):
        np.testing.assert_array_equal(k.data, old)


def test_it_steps_aside_when_it_should(fast_steps):
    model = model_of()
    declines(model, fast_steps)  # gradients are on (no no_grad)
    with no_grad():
        with use_fast_decode(False):
            declines(model, fast_steps)
        with use_fused_kernels(False):  # the composed reference everywhere
            declines(model, fast_steps)
        model.train()
        declines(model, fast_steps)  # training mode
        model.eval()
        replaced = model_of()
        with tinypft.default_dtype(np.float64):
            replaced.blocks[1].mlp.fc_in = ScaledLinear(16, 64)
        declines(replaced, fast_steps)
        with_head = model_of()
        with tinypft.default_dtype(np.float64):
            with_head.add_classification_head(3)
        declines(with_head, fast_steps)
        model(np.array([[2]]), cache=model(np.array([[5]]), use_cache=True).cache)
    assert fast_steps["fast"] == 1


def test_a_malformed_cache_gets_the_general_paths_error():
    model = model_of()
    with no_grad():
        cache = model(np.array([[5, 6, 7]]), use_cache=True).cache
        with pytest.raises(ValueError, match="attention_mask"):
            model(np.array([[2]]), attention_mask=np.ones((1, 2)), cache=cache)
        cache.key_mask = cache.key_mask[:, :2]  # 3 cached positions, a mask of 2
        with pytest.raises(ValueError):
            model(np.array([[2]]), cache=cache)
