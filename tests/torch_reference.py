"""An independent PyTorch implementation of the same GPT architecture, for cross-checks in tests.

Written with torch's own layers (nn.Linear, nn.LayerNorm, F.gelu(approximate="tanh")), so that
agreement with tinypft's GPT checks every piece of it: names, shapes, masks and math.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn


class TorchBlock(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.attn = nn.ModuleDict(
            {name: nn.Linear(d, d) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
        )
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.mlp = nn.ModuleDict({"fc_in": nn.Linear(d, d_ff), "fc_out": nn.Linear(d_ff, d)})

    def forward(self, x: torch.Tensor, mask: torch.Tensor, prefix: tuple | None) -> torch.Tensor:
        B, T, d = x.shape
        H, hd = self.n_heads, d // self.n_heads
        h = self.ln_1(x)
        q, k, v = (self.attn[n](h).view(B, T, H, hd).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        if prefix is not None:
            pk, pv = prefix
            k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        y = torch.softmax(scores, dim=-1) @ v
        x = x + self.attn["o_proj"](y.transpose(1, 2).reshape(B, T, d))
        return x + self.mlp["fc_out"](TF.gelu(self.mlp["fc_in"](self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    """GPT-2 with learned positions, pre-LN blocks, tied head; parameter names match tinypft's GPT."""

    def __init__(
        self,
        vocab_size: int,
        context_length: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int,
        layer_norm_eps: float = 1e-5,
        **_: object,
    ):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(
            TorchBlock(d_model, n_heads, d_ff, layer_norm_eps) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def forward(
        self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None, kv_prefix: list | None = None
    ) -> torch.Tensor:
        B, T = ids.shape
        P = 0 if kv_prefix is None else kv_prefix[0][0].shape[2]
        real = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        pos = P + (torch.cumsum(real.long(), dim=1) - 1).clamp(min=0)
        x = self.wte(ids) + self.wpe(pos)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        mask = causal[None] & real[:, None, :]
        mask = torch.cat([torch.ones(B, T, P, dtype=torch.bool), mask], dim=2)[:, None]
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if kv_prefix is None else kv_prefix[i])
        return self.ln_f(x) @ self.wte.weight.T


def torch_twin(model) -> TorchGPT:  # noqa: ANN001 (a tinypft GPT)
    """A float64 TorchGPT holding exactly the weights of a tinypft GPT."""
    twin = TorchGPT(**model.config.to_dict()).double()
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin
