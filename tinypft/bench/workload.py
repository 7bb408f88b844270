"""What ``tinypft bench`` runs: the model's shape, the batch, and one model for each method.

    parse_config("standard")                  vocab 512, d 128, 4 layers, 4 heads, context 128, batch 16
    parse_config("large")                     d 256, 6 layers, 8 heads
    parse_config("d_model=64,n_layers=2")     the standard config with these fields changed

Every method starts from the same GPT weights (the same seed) and sees the same batch of B
sequences of T = context - P tokens (P = the prefix or prompt length), so that every method fits
the same context and processes the same tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..engine import manual_seed
from ..model import GPT, GPTConfig
from ..peft import BitFitConfig, FullFinetuneConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model

METHODS = ("full", "bitfit", "prefix", "prompt")
PRESETS: dict[str, dict[str, Any]] = {
    "standard": dict(vocab_size=512, d_model=128, n_layers=4, n_heads=4, context_length=128),
    "large": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, context_length=128),
}


@dataclasses.dataclass
class BenchSetup:
    """What one benchmark runs: the model's shape, the batch and the number of virtual tokens."""

    name: str
    model: GPTConfig
    batch: int = 16
    virtual_tokens: int = 10

    @property
    def seq_len(self) -> int:
        return self.model.context_length - self.virtual_tokens


def parse_config(text: str) -> BenchSetup:
    """``standard``, ``large``, or ``key=value,...`` over the standard config (model fields,
    ``batch`` and ``virtual_tokens``), e.g. ``d_model=256,n_layers=6,n_heads=8``."""
    if text in PRESETS:
        return BenchSetup(text, GPTConfig(**PRESETS[text]))
    values: dict[str, Any] = dict(PRESETS["standard"])
    extra: dict[str, int] = {}
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--config: expected standard, large or key=value pairs, got {item!r}")
        if key in ("batch", "virtual_tokens"):
            extra[key] = int(value)
        elif key in fields:
            values[key] = float(value) if key in ("dropout", "layer_norm_eps") else int(value)
        else:
            raise ValueError(
                f"--config: unknown key {key!r}; use {sorted(fields | {'batch', 'virtual_tokens'})}"
            )
    setup = BenchSetup(text, GPTConfig(**values), **extra)
    if setup.seq_len < 2:
        raise ValueError(f"--config: context_length must exceed virtual_tokens + 1, got {setup.model}")
    return setup


def peft_config(method: str, setup: BenchSetup) -> Any:
    """The PEFT config of ``method``; prefix and prompt get ``setup.virtual_tokens`` vectors."""
    P = setup.virtual_tokens
    return {
        "full": FullFinetuneConfig(),
        "bitfit": BitFitConfig(),
        "prefix": PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True),
        "prompt": PromptTuningConfig(num_virtual_tokens=P),
    }[method]


def build(method: str, setup: BenchSetup, seed: int = 0) -> Any:
    """A fresh float32 GPT wrapped for ``method`` (the same weights for every method)."""
    manual_seed(seed)
    return get_peft_model(GPT(setup.model), peft_config(method, setup))


def batch_ids(setup: BenchSetup, seed: int = 1) -> np.ndarray:
    """The token ids of the benchmark's batch (B, T), drawn uniformly from the vocabulary."""
    return np.random.default_rng(seed).integers(0, setup.model.vocab_size, (setup.batch, setup.seq_len))
