"""A tiny float64 GPT for the PEFT tests: every parameter randomized, so that each one matters."""

from __future__ import annotations

import numpy as np

import tinypft
from tinypft.model import GPT, GPTConfig

TINY = dict(vocab_size=16, context_length=16, d_model=8, n_layers=2, n_heads=2)


def tiny_model(seed: int = 0, head: bool = False, **overrides) -> GPT:
    """A seeded float64 GPT of shape TINY (with ``overrides``), optionally with a 3-way head."""
    tinypft.manual_seed(seed)
    with tinypft.default_dtype(np.float64):
        model = GPT(GPTConfig(**{**TINY, **overrides}))
        if head:
            model.add_classification_head(3)
    rng = np.random.default_rng(seed + 1)
    for _, p in model.named_parameters():
        p.data += rng.normal(0.0, 0.2, size=p.shape)
    return model
