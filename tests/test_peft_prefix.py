"""Prefix-Tuning: layout, reparameterization, merging, real-word init, embedding-only and infix."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from tiny_models import tiny_model

from tinypft.engine import Tensor
from tinypft.peft import (
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
    infix_batch_loss,
    infix_start_from_labels,
)
from tinypft.peft.prefix import flatten_key_values, split_key_values

L, H, HD, D = 2, 2, 4, 8




def ids_for(B: int, T: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 16, (B, T))


def test_flat_prefix_is_ordered_layer0_k_layer0_v_layer1_k_and_so_on():
    P = 3
    flat = np.arange(P * 2 * L * D, dtype=np.float64).reshape(P, 2 * L * D)  # (P, 2 L d)
    pairs = split_key_values(Tensor(flat), L, H)
    for layer, (k, v) in enumerate(pairs):
        assert k.shape == v.shape == (1, H, P, HD)
        for p in range(P):
            for h in range(H):
                k_block, v_block = 2 * layer, 2 * layer + 1
                np.testing.assert_array_equal(
                    k.data[0, h, p], flat[p, (k_block * H + h) * HD : (k_block * H + h + 1) * HD]
                )
                np.testing.assert_array_equal(
                    v.data[0, h, p], flat[p, (v_block * H + h) * HD : (v_block * H + h + 1) * HD]
                )
    np.testing.assert_array_equal(
        flatten_key_values([k.data for k, _ in pairs], [v.data for _, v in pairs]), flat
    )


def test_the_model_attends_to_exactly_that_prefix():
    peft_model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    ids = ids_for(2, 5)
    expected = peft_model.base_model(ids, kv_prefix=split_key_values(peft_model.prefix_encoder(), L, H))
    np.testing.assert_array_equal(peft_model(ids).logits.data, expected.logits.data)
    assert np.abs(peft_model(ids).logits.data - peft_model.base_model(ids).logits.data).max() > 1e-3


def test_the_reparameterization_is_embedding_linear_tanh_linear():
    peft_model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    encoder = peft_model.prefix_encoder
    E = encoder.embedding.weight.data  # (P, d)
    first, _, last = encoder.mlp
    expected = np.tanh(E @ first.weight.data.T + first.bias.data) @ last.weight.data.T + last.bias.data
    np.testing.assert_allclose(encoder().data, expected, rtol=1e-12, atol=1e-12)
    assert (
        encoder().shape == (3, 2 * L * D)
        and first.weight.shape == (6, D)
        and last.weight.shape == (2 * L * D, 6)
    )


def test_merge_bakes_the_mlp_into_one_prefix_parameter():
    peft_model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    ids = ids_for(2, 5)
    before = peft_model(ids).logits.data
    peft_model.merge()
    assert [(n, p.shape) for n, p in peft_model.adapter_parameters().items()] == [
        ("prefix_encoder.prefix", (3, 2 * L * D))
    ]
    np.testing.assert_allclose(peft_model(ids).logits.data, before, rtol=1e-12, atol=1e-12)
    assert peft_model.get_nb_trainable_parameters()[0] == 3 * 2 * L * D


def test_direct_prefix_is_one_parameter_of_shape_p_by_2ld():
    peft_model = get_peft_model(
        tiny_model(), PrefixTuningConfig(num_virtual_tokens=4, prefix_projection=False)
    )
    assert {n: p.shape for n, p in peft_model.adapter_parameters().items()} == {
        "prefix_encoder.prefix": (4, 32)
    }


@pytest.mark.parametrize("projection", [False, True])
def test_real_word_init_starts_as_if_the_text_preceded_the_input(projection):
    """The prefix holds the frozen LM's keys and values of the text, so the model's first output
    equals the base model's on [text; ids]: exactly (direct) or up to the MLP fit's rounding."""
    model = tiny_model()
    text = [3, 9, 4]
    peft_model = get_peft_model(
        model,
        PrefixTuningConfig(
            num_virtual_tokens=3,
            prefix_projection=projection,
            encoder_hidden_size=6,
            init="real_words",
            init_text=text,
        ),
    )
    ids = ids_for(2, 5)
    expected = model(np.concatenate([np.tile(text, (2, 1)), ids], 1)).logits.data[:, 3:]
    tol = 1e-9 if projection else 1e-12
    np.testing.assert_allclose(peft_model(ids).logits.data, expected, rtol=tol, atol=tol)
    if projection:  # still trained through the MLP
        assert peft_model.prefix_encoder.reparameterized


def test_real_word_init_tiles_a_short_text_and_encodes_a_string():
    class Chars:
        def encode(self, text):
            return [ord(c) - ord("a") for c in text]

    model = tiny_model()
    peft_model = get_peft_model(
        model,
        PrefixTuningConfig(
            num_virtual_tokens=5,
            prefix_projection=False,
            init="real_words",
            init_text="bcd",
            tokenizer=Chars(),
        ),
    )
    ids = ids_for(1, 4)
    expected = model(np.concatenate([[[1, 2, 3, 1, 2]], ids], 1)).logits.data[:, 5:]
    np.testing.assert_allclose(peft_model(ids).logits.data, expected, rtol=1e-12, atol=1e-12)


def test_real_word_init_through_a_narrow_mlp_warns():
    with pytest.warns(UserWarning, match="approximate"):
        get_peft_model(
            tiny_model(),
            PrefixTuningConfig(
                num_virtual_tokens=6, encoder_hidden_size=4, init="real_words", init_text=[1, 2, 3]
            ),
        )


def test_embedding_only_is_prompt_tuning():
    """Free vectors at the input, carried up by the frozen LM: the same function as a soft prompt."""
    model = tiny_model()
    emb = get_peft_model(
        model, PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=False, mode="embedding_only")
    )
    prompt = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=3))
    prompt.soft_prompt.weight.data[...] = emb.prefix_encoder.prefix.data
    ids = ids_for(2, 5)
    np.testing.assert_array_equal(emb(ids).logits.data, prompt(ids).logits.data)
    assert emb.get_nb_trainable_parameters()[0] == 3 * D

    words = get_peft_model(
        model,
        PrefixTuningConfig(
            num_virtual_tokens=2,
            mode="embedding_only",
            encoder_hidden_size=6,
            init="real_words",
            init_text=[5, 6],
        ),
    )
    expected = model(np.concatenate([np.tile([5, 6], (2, 1)), ids], 1)).logits.data[:, 2:]
    np.testing.assert_allclose(words(ids).logits.data, expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- infix


def infix_model(P: int = 2):
    return get_peft_model(
        tiny_model(), PrefixTuningConfig(num_virtual_tokens=P, encoder_hidden_size=6, mode="infix")
    )


def test_the_source_does_not_see_the_infix_and_the_target_does():
    peft_model = infix_model()
    ids = ids_for(2, 7)
    start = np.array([3, 5])
    out = peft_model(ids, infix_start=start).logits.data
    for b, s in enumerate(start):
        source_alone = peft_model.base_model(ids[b : b + 1, :s]).logits.data[0]
        np.testing.assert_allclose(out[b, :s], source_alone, rtol=1e-12, atol=1e-12)
        row_alone = peft_model(ids[b : b + 1], infix_start=s).logits.data[0]  # per-row starts in one batch
        np.testing.assert_allclose(out[b], row_alone, rtol=1e-12, atol=1e-12)
    no_infix = peft_model.base_model(ids).logits.data
    assert np.abs(out[0, 3:] - no_infix[0, 3:]).min() > 1e-6  # every target position is changed


def test_target_positions_move_on_by_the_infix_length():
    P = 2
    peft_model = infix_model(P)
    ids = ids_for(1, 6)
    out = peft_model(ids, infix_start=np.array([4])).logits.data
    kv = peft_model.prefix_key_values()
    positions = np.array([[0, 1, 2, 3, 4 + P, 5 + P]])
    expected = peft_model.base_model(ids, position_ids=positions, kv_prefix=kv, kv_prefix_start=np.array([4]))
    np.testing.assert_array_equal(out, expected.logits.data)
    unshifted = peft_model.base_model(
        ids, position_ids=np.arange(6)[None], kv_prefix=kv, kv_prefix_start=np.array([4])
    )
    assert np.abs(out[:, 4:] - unshifted.logits.data[:, 4:]).max() > 1e-6


@pytest.mark.parametrize("start_offset", [0, -1])
def test_generation_prefills_the_source_then_every_new_token_sees_the_infix(start_offset):
    """Left-padded sources; the infix after all of the source (0) or before its last token (-1)."""
    peft_model = infix_model()
    sources = [[1, 2, 3, 4], [5, 6]]
    targets = np.array([[7, 8, 9], [10, 11, 12]])
    T0 = 4
    ids = np.array([[1, 2, 3, 4], [0, 0, 5, 6]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 1, 1]])
    out = peft_model(ids, attention_mask=mask, infix_start=T0 + start_offset, use_cache=True)
    step_logits = [out.logits.data[:, -1]]
    for t in range(3):
        out = peft_model(targets[:, t : t + 1], cache=out.cache, use_cache=True)
        step_logits.append(out.logits.data[:, 0])
    for b, source in enumerate(sources):
        alone = np.array([source + targets[b].tolist()])
        full = peft_model(alone, infix_start=len(source) + start_offset).logits.data[0]
        for t in range(4):
            np.testing.assert_allclose(step_logits[t][b], full[len(source) - 1 + t], rtol=1e-11, atol=1e-12)


def test_infix_start_from_labels_puts_the_infix_before_the_token_that_predicts_the_target():
    labels = np.array([[-100, -100, -100, 5, 6], [-100, 4, 5, 6, -100]])
    assert infix_start_from_labels(labels).tolist() == [2, 0]
    with pytest.raises(ValueError, match="no label"):
        infix_start_from_labels(np.full((1, 3), -100))


def test_infix_batch_loss_places_the_infix_from_the_labels():
    peft_model = infix_model()
    ids = ids_for(2, 6)
    mask = np.array([[1] * 6, [1] * 5 + [0]])
    labels = np.where(mask == 1, ids, -100)
    labels[0, :3] = labels[1, :2] = -100
    batch = SimpleNamespace(ids=ids, attention_mask=mask, labels=labels)
    out = peft_model(ids, attention_mask=mask, infix_start=np.array([2, 1]))
    assert infix_batch_loss(peft_model, batch).item() == peft_model.lm_loss(out.logits, labels).item()


def test_infix_mistakes_are_clear_errors():
    peft_model = infix_model()
    ids = ids_for(2, 4)
    with pytest.raises(ValueError, match="needs infix_start"):
        peft_model(ids)
    with pytest.raises(ValueError, match="must be in"):
        peft_model(ids, infix_start=5)
    with pytest.raises(ValueError, match="position_ids"):
        peft_model(ids, infix_start=1, position_ids=np.zeros((2, 4), int))
    started = peft_model(ids, infix_start=1, use_cache=True)
    with pytest.raises(ValueError, match="already in it"):  # the infix went into the cache at the start
        peft_model(ids[:, :1], cache=started.cache, infix_start=1)
    prefix = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=2))
    with pytest.raises(ValueError, match="only for mode='infix'"):
        prefix(ids, infix_start=1)
