"""The preallocated KV cache: decoding writes in place, yet every cache keeps the values it had.

Cached == uncached generation is checked in test_generate.py; here the buffer mechanics: a step
appends without copying, two continuations of one cache do not disturb each other, ``select``
shares or copies, caches built by hand and caches that need a gradient still work.
"""

from __future__ import annotations

import numpy as np
import pytest

import tinypft
from tinypft import Tensor, gradcheck, no_grad
from tinypft.model import GPT, GPTConfig, KVCache

VOCAB, CONTEXT = 20, 16


@pytest.fixture(autouse=True)
def float64_by_default():
    with tinypft.default_dtype(np.float64):
        yield


def make_model() -> GPT:
    tinypft.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, d_model=8, n_layers=2, n_heads=2))
    model.eval()
    return model


def ids_of(*rows: list[int]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64)


def step(model: GPT, cache: KVCache, token: int, rows: int = 1) -> tuple[np.ndarray, KVCache]:
    out = model(np.full((rows, 1), token), cache=cache, use_cache=True)
    return out.logits.data[:, -1], out.cache


def test_decoding_appends_in_place_to_one_buffer() -> None:
    model = make_model()
    with no_grad():
        cache = model(ids_of([1, 2, 3]), use_cache=True).cache
        _, first = step(model, cache, 4)
        _, second = step(model, first, 5)
    buffer = first.buffers[0]
    assert buffer is not None and second.buffers[0] is buffer  # the second step reused the first's buffer
    assert buffer.capacity == CONTEXT and buffer.filled == 5
    assert second.keys[0].data.base is buffer.keys and second.length == 5
    assert first.length == 4 and cache.length == 3
    full = model(ids_of([1, 2, 3, 4, 5]), use_cache=True).cache
    for layer in range(2):
        np.testing.assert_allclose(second.keys[layer].data, full.keys[layer].data, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(second.values[layer].data, full.values[layer].data, rtol=1e-12, atol=1e-12)


def test_two_continuations_of_one_cache_are_independent() -> None:
    model = make_model()
    with no_grad():
        cache = model(ids_of([1, 2, 3]), use_cache=True).cache
        _, via_4 = step(model, cache, 4)
        keys_4 = [k.data.copy() for k in via_4.keys]
        _, via_7 = step(model, cache, 7)  # the same cache again: must not overwrite via_4's position 3
        logits_4, _ = step(model, via_4, 9)
        logits_7, _ = step(model, via_7, 9)
    assert via_7.buffers[0] is not via_4.buffers[0]
    for layer in range(2):
        np.testing.assert_array_equal(via_4.keys[layer].data, keys_4[layer])
    expected_4 = model(ids_of([1, 2, 3, 4, 9])).logits.data[:, -1]
    expected_7 = model(ids_of([1, 2, 3, 7, 9])).logits.data[:, -1]
    np.testing.assert_allclose(logits_4, expected_4, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logits_7, expected_7, rtol=1e-10, atol=1e-12)


def test_select_shares_when_rows_are_unchanged_and_copies_otherwise() -> None:
    model = make_model()
    with no_grad():
        cache = model(ids_of([1, 2, 3], [4, 5, 6]), use_cache=True).cache
        _, cache = step(model, cache, 7, rows=2)
        same = cache.select(np.arange(2))
        assert same.buffers[0] is cache.buffers[0] and same.keys[0].data is cache.keys[0].data
        swapped = cache.select(np.array([1, 0, 1]))
        assert swapped.buffers[0] is not cache.buffers[0]
        for layer in range(2):
            np.testing.assert_array_equal(swapped.keys[layer].data, cache.keys[layer].data[[1, 0, 1]])
            np.testing.assert_array_equal(swapped.values[layer].data, cache.values[layer].data[[1, 0, 1]])
        np.testing.assert_array_equal(swapped.key_mask, cache.key_mask[[1, 0, 1]])
        logits, _ = step(model, swapped, 8, rows=3)
    expected = model(ids_of([4, 5, 6, 7, 8], [1, 2, 3, 7, 8], [4, 5, 6, 7, 8])).logits.data[:, -1]
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)


def test_a_cache_built_by_hand_and_one_past_its_capacity() -> None:
    model = make_model()
    with no_grad():
        made = model(ids_of([1, 2]), use_cache=True).cache
        cache = KVCache(  # no buffers: the first extension copies the keys into one
            keys=[Tensor(k.data.copy()) for k in made.keys],
            values=[Tensor(v.data.copy()) for v in made.values],
            key_mask=made.key_mask,
            next_position=made.next_position,
        )
        tokens = list(range(3, 3 + CONTEXT - 2))
        for token in tokens:  # fills every position the context allows
            logits, cache = step(model, cache, token)
    assert cache.length == CONTEXT and cache.buffers[0].capacity == CONTEXT
    expected = model(ids_of([1, 2, *tokens])).logits.data[:, -1]
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)
    # keys beyond the capacity (left padding makes more keys than positions) grow the buffer
    with no_grad():
        k, v, buffer = cache.extend(0, cache.keys[0][:, :, :2], cache.values[0][:, :, :2])
    assert k.shape[2] == CONTEXT + 2 and buffer.capacity >= CONTEXT + 2
    np.testing.assert_array_equal(k.data[:, :, CONTEXT:], cache.keys[0].data[:, :, :2])


def test_a_cache_still_passes_gradients_when_they_are_needed() -> None:
    model = make_model()
    cache = model(ids_of([1, 2, 3]), use_cache=True).cache
    weight = model.blocks[1].attn.k_proj.bias

    def last_logits(bias: Tensor) -> Tensor:
        model.blocks[1].attn.k_proj.bias = bias
        try:
            return model(ids_of([4, 5]), cache=cache).logits
        finally:
            model.blocks[1].attn.k_proj.bias = weight

    gradcheck(last_logits, [tinypft.nn.Parameter(weight.data.copy())])
