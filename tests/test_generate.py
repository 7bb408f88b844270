"""Generation: cached and uncached decoding agree, batching and padding change nothing, beam search
matches a plain one-example-at-a-time version, and lengths respect max_new_tokens and the context."""

from __future__ import annotations

import numpy as np
import pytest

import tinypft
from tinypft.engine import Tensor
from tinypft.model import GPT, GPTConfig
from tinypft.model.cache import KVCache
from tinypft.train.generate import generate

VOCAB, CONTEXT, PAD = 24, 20, 0
PROMPTS = [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12], [13, 14]]  # different lengths: left padding in the batch


@pytest.fixture(autouse=True)
def float64_by_default():
    with tinypft.default_dtype(np.float64):
        yield


def make_model(seed: int = 0) -> GPT:
    """A random model with large weights, so its next-token distributions are far from uniform (no
    near-ties), and large position embeddings, so it does not just repeat one token."""
    tinypft.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, context_length=CONTEXT, d_model=16, n_layers=2, n_heads=2))
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        std = {"wte.weight": 1.0, "wpe.weight": 3.0}.get(name, 0.3)
        p.data[...] = rng.normal(0.0, std, size=p.shape) + (name.endswith("ln_1.weight") or "ln_2.w" in name)
    return model


class PromptModel:
    """A Prompt-Tuning-style wrapper: P vectors go in front of the tokens at prefill only."""

    def __init__(self, base: GPT, n_virtual: int = 3):
        self.base, self.config, self.training = base, base.config, False
        rng = np.random.default_rng(1)
        self.prompt = Tensor(rng.normal(0.0, 1.0, size=(1, n_virtual, base.config.d_model)))

    def __call__(self, ids, attention_mask=None, cache=None, use_cache=False):
        prompt = self.prompt if cache is None else None
        return self.base(ids, attention_mask, prompt_embeds=prompt, cache=cache, use_cache=use_cache)

    def train(self, mode: bool = True):
        self.training = mode
        self.base.train(mode)
        return self

    def eval(self):
        return self.train(False)


class PrefixModel(PromptModel):
    """A Prefix-Tuning-style wrapper: per-layer keys and values in front, at prefill only."""

    def __init__(self, base: GPT, n_prefix: int = 2):
        super().__init__(base)
        cfg, rng = base.config, np.random.default_rng(2)
        shape = (1, cfg.n_heads, n_prefix, cfg.head_dim)
        self.prefix = [(Tensor(rng.normal(size=shape)), Tensor(rng.normal(size=shape)))
                       for _ in range(cfg.n_layers)]

    def __call__(self, ids, attention_mask=None, cache=None, use_cache=False):
        prefix = self.prefix if cache is None else None
        return self.base(ids, attention_mask, kv_prefix=prefix, cache=cache, use_cache=use_cache)


# ----------------------------------------------------------------------------- references


def next_log_probs(model, seq: list[int]) -> np.ndarray:
    """Log-probabilities after ``seq``, computed alone, without padding or cache."""
    x = model(np.array([seq])).logits.data[0, -1].astype(np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def reference_greedy(model, prompt: list[int], max_new: int, eos: int | None, room: int) -> list[int]:
    out: list[int] = []
    while len(out) < min(max_new, room):
        token = int(np.argmax(next_log_probs(model, prompt + out)))
        if token == eos:
            break
        out.append(token)
    return out


def reference_beam(model, prompt, max_new, eos, room, K=5, lp=1.0) -> list[int]:
    """Textbook beam search for one example (see generate._beam for the rules)."""
    beams, finished = [(0.0, [])], []

    def finish(score, tokens, length):
        finished.append((score / length**lp, tokens))
        finished.sort(key=lambda h: -h[0])
        del finished[K:]

    budget = min(max_new, room)
    for length in range(1, budget + 1):
        candidates = []
        for score, tokens in beams:
            logp = next_log_probs(model, prompt + tokens)
            candidates += [(score + logp[t], tokens, t) for t in range(len(logp))]
        candidates.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, tokens, t) in enumerate(candidates[: 2 * K]):
            if t == eos:
                if rank < K:
                    finish(score, tokens, length)
            elif len(beams) < K:
                beams.append((score, tokens + [t]))
        if length == budget:
            for score, tokens in beams:
                finish(score, tokens, length)
            break
        if len(finished) == K and finished[-1][0] >= beams[0][0] / length**lp:
            break
    return max(finished, key=lambda h: h[0])[1] if finished else []


def stop_token(outputs: list[list[int]]) -> int:
    """A token that some outputs contain after their first position and others never: as eos it
    makes some rows stop early while others run to the length limit."""
    for token in range(VOCAB):
        has = [token in out[1:] for out in outputs]
        if any(has) and not all(token in out for out in outputs):
            return token
    raise AssertionError("no suitable stop token")


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("wrap", [None, PromptModel, PrefixModel])
def test_greedy_matches_one_prompt_at_a_time_cached_and_uncached(wrap):
    model = make_model() if wrap is None else wrap(make_model())
    n_virtual = 0 if wrap is None else (3 if wrap is PromptModel else 2)
    eos = stop_token(generate(model, PROMPTS, 10, eos_id=None, pad_id=PAD))
    cached = generate(model, PROMPTS, 10, eos_id=eos, pad_id=PAD, use_cache=True)
    uncached = generate(model, PROMPTS, 10, eos_id=eos, pad_id=PAD, use_cache=False)
    expected = [reference_greedy(model, p, 10, eos, CONTEXT - n_virtual - len(p)) for p in PROMPTS]
    assert cached == uncached == expected
    assert any(len(out) < 10 for out in expected) and any(len(out) == 10 for out in expected)  # eos fired
    assert all(eos not in out for out in cached)


@pytest.mark.parametrize("wrap", [None, PromptModel, PrefixModel])
def test_beam_search_matches_one_example_at_a_time_cached_and_uncached(wrap, monkeypatch):
    model = make_model() if wrap is None else wrap(make_model())
    n_virtual = 0 if wrap is None else (3 if wrap is PromptModel else 2)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, VOCAB, size=rng.integers(1, 6)).tolist() for _ in range(5)]
    eos = stop_token(generate(model, prompts, 10, eos_id=None, pad_id=PAD))
    selected = []  # the rows every cache reordering keeps
    select = KVCache.select
    monkeypatch.setattr(KVCache, "select", lambda cache, rows: selected.append(rows) or select(cache, rows))

    def beam(use_cache: bool) -> list[list[int]]:
        return generate(model, prompts, 10, eos, PAD, method="beam", num_beams=4, use_cache=use_cache)

    cached, uncached = beam(True), beam(False)
    expected = [reference_beam(model, p, 10, eos, CONTEXT - n_virtual - len(p), K=4) for p in prompts]
    assert cached == uncached == expected
    assert any(np.any(np.diff(rows) < 0) for rows in selected)  # beams really were reordered
    assert cached != generate(model, prompts, 10, eos_id=eos, pad_id=PAD)  # and differ from greedy


def test_prefix_and_prompt_change_the_output():
    base = make_model()
    plain = generate(base, PROMPTS, 6, eos_id=None, pad_id=PAD)
    assert generate(PromptModel(base), PROMPTS, 6, eos_id=None, pad_id=PAD) != plain
    assert generate(PrefixModel(base), PROMPTS, 6, eos_id=None, pad_id=PAD) != plain


def test_lengths_respect_max_new_tokens_and_the_context():
    model = make_model()
    for method in ("greedy", "beam"):
        out = generate(model, PROMPTS, 5, eos_id=None, pad_id=PAD, method=method)
        assert [len(o) for o in out] == [5] * len(PROMPTS)
        long_prompts = [[3] * (CONTEXT - 2), [4] * CONTEXT, [5, 6]]
        out = generate(model, long_prompts, 50, eos_id=None, pad_id=PAD, method=method)
        assert [len(o) for o in out] == [2, 0, CONTEXT - 2]  # every sequence fits into the context
        long_prompts = [[3] * (CONTEXT - 5), [4] * (CONTEXT - 3), [5, 6]]
        out = generate(PromptModel(model), long_prompts, 50, None, PAD, method=method, num_beams=2)
        assert [len(o) for o in out] == [2, 0, CONTEXT - 5]  # the 3 virtual tokens use positions too
    assert generate(model, PROMPTS, 0, eos_id=None, pad_id=PAD) == [[]] * len(PROMPTS)


def test_generation_runs_in_eval_mode_and_restores_the_mode():
    shape = dict(vocab_size=VOCAB, context_length=CONTEXT, d_model=16, n_layers=1, n_heads=2)
    model = GPT(GPTConfig(**shape, dropout=0.5))
    model.train()
    a = generate(model, PROMPTS, 6, eos_id=None, pad_id=PAD)
    b = generate(model, PROMPTS, 6, eos_id=None, pad_id=PAD)
    assert a == b and model.training  # no dropout while generating; training mode is back
    assert all(p.grad is None for p in model.parameters())


def test_invalid_arguments():
    model = make_model()
    with pytest.raises(ValueError, match="method"):
        generate(model, PROMPTS, 3, eos_id=None, pad_id=PAD, method="sample")
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 3, eos_id=None, pad_id=PAD)
    assert generate(model, [], 3, eos_id=None, pad_id=PAD) == []
