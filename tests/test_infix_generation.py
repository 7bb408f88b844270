"""Infix models in the generic ``generate``: a negative ``infix_start`` counts from the end, and
``prefill_kwargs`` reach the prefill call only."""

from __future__ import annotations

import numpy as np
import pytest

import tinypft
from tinypft.model import GPT, GPTConfig
from tinypft.peft import PrefixTuningConfig, get_peft_model
from tinypft.train import generate

TINY = dict(vocab_size=16, context_length=32, d_model=8, n_layers=2, n_heads=2)
SEP, EOS, PAD = 3, 1, 0


def infix_model(seed: int = 0):
    """A float64 infix model whose weights are perturbed enough to give varied greedy choices."""
    tinypft.manual_seed(seed)
    with tinypft.default_dtype(np.float64):
        model = GPT(GPTConfig(**TINY))
        peft_model = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=3, mode="infix"))
    rng = np.random.default_rng(seed + 1)
    for _, p in peft_model.named_parameters():
        p.data += rng.normal(0.0, 0.3, size=p.shape)
    return peft_model


def test_a_negative_infix_start_counts_from_the_end():
    peft_model = infix_model()
    ids = np.random.default_rng(0).integers(4, 16, (2, 6))
    mask = np.array([[1] * 6, [0, 0] + [1] * 4])
    for negative in (-1, -3, -6):
        a = peft_model(ids, attention_mask=mask, infix_start=negative).logits.data
        b = peft_model(ids, attention_mask=mask, infix_start=6 + negative).logits.data
        np.testing.assert_array_equal(a, b)
    per_row = peft_model(ids, attention_mask=mask, infix_start=np.array([-1, 2])).logits.data
    positive = peft_model(ids, attention_mask=mask, infix_start=np.array([5, 2])).logits.data
    np.testing.assert_array_equal(per_row, positive)
    with pytest.raises(ValueError, match="must be in"):
        peft_model(ids, infix_start=-7)


def greedy_without_cache(peft_model, prompt: list[int], max_new: int) -> list[int]:
    """Reference: recompute the whole sequence each step, the infix before the prompt's last token."""
    seq, out = list(prompt), []
    for _ in range(max_new):
        logits = peft_model(np.array([seq]), infix_start=len(prompt) - 1).logits.data[0, -1]
        token = int(np.argmax(logits))
        if token == EOS:
            break
        out.append(token)
        seq.append(token)
    return out


def test_generate_with_prefill_kwargs_places_the_infix_before_each_left_padded_separator():
    peft_model = infix_model()
    prompts = [[2, 5, 6, 7, SEP], [2, 9, SEP], [2, 4, 4, 11, 12, 13, SEP]]
    outputs = generate(peft_model, prompts, 8, EOS, PAD, prefill_kwargs={"infix_start": -1})
    assert any(outputs)
    for prompt, out in zip(prompts, outputs):
        assert out == greedy_without_cache(peft_model, prompt, 8)
        assert out == generate(peft_model, [prompt], 8, EOS, PAD, prefill_kwargs={"infix_start": -1})[0]
    beams = generate(peft_model, prompts, 8, EOS, PAD, method="beam", num_beams=2,
                     prefill_kwargs={"infix_start": -1})
    assert len(beams) == 3
    with pytest.raises(ValueError, match="needs infix_start"):  # without it an infix model refuses
        generate(peft_model, prompts, 4, EOS, PAD)


class CallRecorder:
    """Wraps a model and records the keyword arguments of every call."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, ids, **kwargs):
        self.calls.append(sorted(kwargs))
        return self.model(ids, **kwargs)


def test_prefill_kwargs_go_to_the_prefill_call_only():
    recorder = CallRecorder(infix_model())
    generate(recorder, [[2, 5, SEP], [2, 6, 7, SEP]], 4, None, PAD, prefill_kwargs={"infix_start": -1})
    assert len(recorder.calls) == 4  # prefill + 3 cached steps (the 4th token needs no new call)
    assert "infix_start" in recorder.calls[0]
    assert all("infix_start" not in call and "cache" in call for call in recorder.calls[1:])
    with pytest.raises(ValueError, match="use_cache=True"):
        generate(recorder, [[2, SEP]], 4, None, PAD, use_cache=False, prefill_kwargs={"infix_start": -1})
