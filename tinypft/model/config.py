"""GPTConfig: the numbers that define a model's shape."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class GPTConfig:
    """Shape of a GPT-2-style model.

    vocab_size       number of token ids (rows of the embedding table, columns of the logits)
    context_length   most positions one sequence may use, prefix and prompt positions included
    d_model          width of the residual stream
    n_layers         number of transformer blocks
    n_heads          attention heads per block (d_model must divide by it)
    d_ff             hidden width of the feed-forward network (4 * d_model by default)
    dropout          dropout probability on embeddings, attention output and FFN output
    layer_norm_eps   epsilon inside every LayerNorm
    """

    vocab_size: int = 512
    context_length: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"GPTConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"GPTConfig: unknown fields {unknown}")
        return cls(**values)

    def num_parameters(self) -> int:
        """Parameter count without building the model (tied head, biased Linears, LayerNorms).

        total = V d + T d + L (4 (d^2 + d) + 2 d d_ff + d_ff + d + 4 d) + 2 d
        """
        d, f, L = self.d_model, self.d_ff, self.n_layers
        per_block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * (2 * d)
        return self.vocab_size * d + self.context_length * d + L * per_block + 2 * d
