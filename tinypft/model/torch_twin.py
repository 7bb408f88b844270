"""The same GPT, and the same PEFT methods, in PyTorch: a twin of a tinypft model, class by class.

Each class below mirrors one of tinypft's and holds the same parameters under the same names
(``base_model.blocks.0.attn.q_proj.weight``, ...), so a tinypft state dict loads into its twin as
is, and the twin's weights copy back name by name:

    TorchAttention       model.gpt.CausalSelfAttention    (torch's scaled_dot_product_attention)
    TorchMLP             model.gpt.MLP
    TorchBlock           model.gpt.Block
    TorchGPT             model.gpt.GPT                     (learned positions, pre-LN, tied head)
    TorchPrefixEncoder   peft.prefix.PrefixEncoder         (the MLP form: embedding -> tanh MLP)
    TorchSoftPrompt      peft.prompt.SoftPrompt
    TorchPeftModel       peft.model.PeftModel              (full, bitfit, prefix, prompt)

    twin = build_torch(peft_model, "prefix")   # float32, the same weights and trainable set
    gpt = build_torch_gpt(model, torch.float64)  # a plain GPT, e.g. for exact cross-checks

What the twin is for: ``tinypft bench --torch`` times it against tinypft, ``torch_train``
(``tinypft.experiments.torch_train``) trains with it, and the tests check that its logits and
gradients equal tinypft's. It has no dropout and no key/value cache: it mirrors training and
scoring, not generation.

This module imports PyTorch, which tinypft itself never needs: nothing in the package imports it
except the code paths that use PyTorch (``bench --torch``, ``torch_train``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

try:
    import torch
    import torch.nn.functional as TF
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "tinypft.model.torch_twin needs PyTorch (pip install torch); the rest of tinypft does not"
    ) from exc

from .config import GPTConfig

KVPair = tuple[torch.Tensor, torch.Tensor]
METHODS = ("full", "bitfit", "prefix", "prompt")


class TorchAttention(nn.Module):
    """Mirrors ``CausalSelfAttention``: H heads of softmax(Q K^T / sqrt(hd) + mask) V, then W_o.

    ``mask`` None: causal attention over the tokens (``TF.scaled_dot_product_attention``), behind
    the ``prefix`` keys and values (1, H, P, hd) if given, which every query sees. ``mask``
    (B, 1, T, P + T) boolean, True where a query may attend (padding): as in tinypft's
    ``engine.functional.attention``, a disallowed score is replaced by the dtype's most negative
    value (not -inf), so a query that may attend nothing (a padding position) averages every value
    and passes no gradient to the scores.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(
        self, x: torch.Tensor, prefix: KVPair | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, T, d = x.shape
        H = self.n_heads
        q, k, v = (
            p(x).view(B, T, H, d // H).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, T, hd) each
        P = 0
        if prefix is not None:
            pk, pv = prefix  # (1, H, P, hd)
            P = pk.shape[2]
            k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)  # (B, H, P + T, hd)
            v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)  # (B, H, P + T, hd)
        if mask is not None:  # written out: a masked score is replaced, so no gradient reaches it
            scores = q @ k.transpose(-2, -1) / math.sqrt(d // H)  # (B, H, T, P + T)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            y = torch.softmax(scores, dim=-1) @ v  # (B, H, T, hd)
        elif prefix is None:
            y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        else:
            visible = torch.ones(T, P + T, dtype=torch.bool).tril(diagonal=P)  # prefix visible, then causal
            y = TF.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))  # (B, T, d)


class TorchMLP(nn.Module):
    """Mirrors ``MLP``: fc_out(gelu(fc_in(x))), GPT-2's GELU (tanh approximation)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(config.d_model, config.d_ff)
        self.fc_out = nn.Linear(config.d_ff, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(TF.gelu(self.fc_in(x), approximate="tanh"))  # (B, T, d)


class TorchBlock(nn.Module):
    """Mirrors ``Block``: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (pre-LayerNorm)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.attn = TorchAttention(config)
        self.mlp = TorchMLP(config)

    def forward(
        self, x: torch.Tensor, prefix: KVPair | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), prefix, mask)  # (B, T, d)
        return x + self.mlp(self.ln_2(x))  # (B, T, d)


class TorchGPT(nn.Module):
    """Mirrors ``GPT``: token + learned position embeddings, pre-LN blocks, final LayerNorm, and
    the head tied to the token embedding (logits = LN_f(x) wte^T).

    ``forward`` takes what ``GPT.forward`` takes for training: ``attention_mask`` (B, T), 1 for
    real tokens and 0 for padding (left or right), positions then counting each row's real
    tokens; ``prompt_embeds`` (1, P, d) in front of the tokens; ``kv_prefix``, one (K, V) pair of
    (1, H, P, hd) per layer in front of each layer's keys and values. It returns the logits
    (B, T, V) at the token positions.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.context_length, config.d_model)
        self.blocks = nn.ModuleList(TorchBlock(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(
        self,
        ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        kv_prefix: list[KVPair] | None = None,
    ) -> torch.Tensor:
        B, T = ids.shape
        P_in = 0 if prompt_embeds is None else prompt_embeds.shape[1]
        P_kv = 0 if kv_prefix is None else kv_prefix[0][0].shape[2]
        S = P_in + T
        x = self.wte(ids)  # (B, T, d)
        if prompt_embeds is not None:
            x = torch.cat([prompt_embeds.expand(B, -1, -1), x], dim=1)  # (B, S, d)
        mask = None
        if attention_mask is None:
            positions = torch.arange(P_kv, P_kv + S)  # (S,)
        else:
            real = torch.cat([torch.ones(B, P_in, dtype=torch.bool), attention_mask.bool()], dim=1)  # (B, S)
            positions = P_kv + (torch.cumsum(real.long(), dim=1) - 1).clamp(min=0)  # (B, S)
            causal = torch.ones(S, S, dtype=torch.bool).tril()[None] & real[:, None, :]  # (B, S, S)
            prefix = torch.ones(B, S, P_kv, dtype=torch.bool)  # every query sees the kv prefix
            mask = torch.cat([prefix, causal], dim=2)[:, None]  # (B, 1, S, P_kv + S)
        x = x + self.wpe(positions)  # (B, S, d)
        for i, block in enumerate(self.blocks):
            x = block(x, None if kv_prefix is None else kv_prefix[i], mask)  # (B, S, d)
        return self.ln_f(x[:, P_in:]) @ self.wte.weight.T  # (B, T, V)


class TorchPrefixEncoder(nn.Module):
    """Mirrors ``PrefixEncoder`` with its MLP: embedding P' (P, d) -> Linear(d, k) -> tanh ->
    Linear(k, 2 L d), split into one (K, V) pair of (1, H, P, hd) per layer."""

    def __init__(self, config: GPTConfig, num_virtual_tokens: int, hidden_size: int) -> None:
        super().__init__()
        self.config = config
        d, width = config.d_model, 2 * config.n_layers * config.d_model
        self.embedding = nn.Embedding(num_virtual_tokens, d)  # P' (P, d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden_size), nn.Tanh(), nn.Linear(hidden_size, width))

    def forward(self) -> list[KVPair]:
        cfg = self.config
        P = self.embedding.weight.shape[0]
        H, hd = cfg.n_heads, cfg.d_model // cfg.n_heads
        flat = self.mlp(self.embedding.weight)  # (P, 2 L d)
        pairs = flat.view(P, 2 * cfg.n_layers, H, hd).permute(1, 2, 0, 3)  # (2L, H, P, hd)
        return [(pairs[2 * i][None], pairs[2 * i + 1][None]) for i in range(cfg.n_layers)]


class TorchSoftPrompt(nn.Module):
    """Mirrors ``SoftPrompt``: P trainable vectors (P, d) placed in front of the token embeddings."""

    def __init__(self, num_virtual_tokens: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_virtual_tokens, d_model))  # (P, d)

    def forward(self) -> torch.Tensor:
        return self.weight[None]  # (1, P, d)


class TorchPeftModel(nn.Module):
    """Mirrors ``PeftModel`` for full fine-tuning, BitFit, prefix-tuning (with the MLP) and
    prompt-tuning: ``base_model`` plus the method's own parameters. Which parameters train is set
    by ``requires_grad`` (``build_torch`` copies it from the tinypft model, name by name)."""

    def __init__(self, config: GPTConfig, method: str, num_virtual_tokens: int = 0, prefix_hidden: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"TorchPeftModel: method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.base_model = TorchGPT(config)
        if method == "prefix":
            self.prefix_encoder = TorchPrefixEncoder(config, num_virtual_tokens, prefix_hidden)
        if method == "prompt":
            self.soft_prompt = TorchSoftPrompt(num_virtual_tokens, config.d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V) at the token positions."""
        if self.method == "prefix":
            return self.base_model(ids, kv_prefix=self.prefix_encoder())
        if self.method == "prompt":
            return self.base_model(ids, prompt_embeds=self.soft_prompt())
        return self.base_model(ids)

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of ``ids`` (B, T) on every position."""
        logits = self(ids)  # (B, T, V)
        return TF.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def load_tinypft_state(twin: nn.Module, model: Any, dtype: torch.dtype) -> None:
    """Copy every parameter of the tinypft ``model`` into ``twin`` (same names, strict), as ``dtype``."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(dtype) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)


def build_torch_gpt(model: Any, dtype: torch.dtype = torch.float32) -> TorchGPT:
    """A TorchGPT in ``dtype`` holding exactly the weights of a tinypft ``GPT``."""
    twin = TorchGPT(model.config).to(dtype)
    load_tinypft_state(twin, model, dtype)
    return twin


def build_torch(peft_model: Any, method: str) -> TorchPeftModel:
    """A float32 TorchPeftModel with the weights and the trainable set of a tinypft ``PeftModel``.

    ``method`` names what ``peft_model`` trains: "full", "bitfit", "prefix" (prefix mode, through
    its MLP) or "prompt". Its parameter names are tinypft's, so the state dict copies over as is
    and ``requires_grad`` is copied name by name.
    """
    config = peft_model.base_model.config
    P = peft_model.num_virtual_tokens if method in ("prefix", "prompt") else 0
    hidden = peft_model.peft_config.encoder_hidden_size if method == "prefix" else 0
    twin = TorchPeftModel(config, method, P, hidden)
    load_tinypft_state(twin, peft_model, torch.float32)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    for name, p in twin.named_parameters():
        p.requires_grad_(name in trainable)
    return twin
