"""A GPT-2-style language model with separate, biased Q/K/V/O projections.

    ids (B, T) -> wte[ids] + wpe[positions] -> dropout
               -> n_layers x Block:  x = x + Attention(LN_1(x));  x = x + MLP(LN_2(x))
               -> LN_f -> logits = x @ wte^T (the LM head is tied to the token embeddings)

Parameter names (stable; BitFit selects biases by them):

    wte.weight, wpe.weight                            token and position embeddings
    blocks.{i}.ln_1.{weight,bias}                     LayerNorm before attention
    blocks.{i}.attn.{q,k,v,o}_proj.{weight,bias}      query, key, value and output projections
    blocks.{i}.ln_2.{weight,bias}                     LayerNorm before the MLP
    blocks.{i}.mlp.fc_in.{weight,bias}                d_model -> d_ff (the "intermediate" layer)
    blocks.{i}.mlp.fc_out.{weight,bias}               d_ff -> d_model
    ln_f.{weight,bias}                                final LayerNorm
    cls_head.{weight,bias}                            optional classification head

Extension points, kept generic (the model knows nothing of any fine-tuning method):

* ``prompt_embeds`` (B|1, P, d): vectors placed in front of the token embeddings, at positions
  0..P-1. The returned logits and hidden states cover the token positions only.
* ``kv_prefix``: per layer a pair (K, V), each (B|1, H, P, head_dim), put in front of that layer's
  keys and values: K = [P_K; K_x], V = [P_V; V_x]. No queries exist at those positions.
  ``kv_prefix_start`` (B,) makes them visible only to tokens at index >= start (an infix between a
  source and a target); by default every token sees them. Tokens' positions start after them.
* ``cache``: keys and values of earlier positions for incremental decoding (``cache.KVCache``).
  A plain cached step without gradients in eval mode is computed by ``decode.fast_decode_step``
  on the arrays, without autograd: the same numbers for a fraction of the Python overhead.
* an optional classification head read at the last real token of each sequence
  (``last_real_index``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine import Tensor, ops
from ..engine import functional as F
from ..engine.rng import get_rng
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from . import decode, fused_block
from .cache import KVBuffer, KVCache, KVPair, LayerCache
from .config import GPTConfig


def last_real_index(attention_mask: np.ndarray) -> np.ndarray:
    """Index of each row's last real token, with left or right padding.

    attention_mask (B, T), 1 (or True) for real tokens -> (B,) integers: the largest t with
    attention_mask[b, t] != 0, or 0 for a row without real tokens. For a right-padded row it is
    its number of real tokens minus 1; for a left-padded row it is T - 1.
    """
    real = np.asarray(attention_mask).astype(bool)  # (B, T)
    T = real.shape[1]
    last = T - 1 - np.argmax(real[:, ::-1], axis=1)  # (B,), the first real token counted from the end
    return np.where(real.any(axis=1), last, 0)  # (B,)


def check_attention_mask(attention_mask: Any, shape: tuple[int, ...], who: str = "GPT") -> np.ndarray:
    """``attention_mask`` as a boolean array of ``shape`` (True at real tokens), after checking it.

    Only booleans, or numbers that are 0 (padding) or 1 (a real token), are accepted: a 2, a -1
    or a 0.5 is a mistake somewhere upstream, and reading it as True would hide it.
    """
    mask = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{who}: attention_mask has shape {mask.shape}, the ids need {tuple(shape)}")
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind not in "iuf":
        raise TypeError(f"{who}: attention_mask must hold booleans or 0/1 numbers, got dtype {mask.dtype}")
    real = mask == 1
    valid = real | (mask == 0)
    if not valid.all():
        raise ValueError(
            f"{who}: attention_mask must hold only 0 (padding) and 1 (real token), found {mask[~valid][0]}"
        )
    return real


@dataclass
class GPTOutput:
    """logits (B, T, V) at the token positions; hidden (B, T, d) after the final LayerNorm;
    cache when one was asked for; cls_logits (B, num_labels) when the model has a classification head."""

    logits: Tensor
    hidden: Tensor
    cache: KVCache | None = None
    cls_logits: Tensor | None = None


class CausalSelfAttention(Module):
    """Multi-head self-attention with separate biased projections q_proj, k_proj, v_proj, o_proj.

    head_h = softmax(Q_h K_h^T / sqrt(head_dim) + mask) V_h,   out = concat_h(head_h) W_o^T + b_o
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        d = config.d_model
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.q_proj = Linear(d, d)
        self.k_proj = Linear(d, d)
        self.v_proj = Linear(d, d)
        self.o_proj = Linear(d, d)
        self.resid_dropout = Dropout(config.dropout)

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.reshape(B, T, self.n_heads, self.head_dim).permute(0, 2, 1, 3)  # (B, H, T, hd)

    def forward(
        self, x: Tensor, mask: np.ndarray, kv_prefix: KVPair | None = None, past: LayerCache | None = None
    ) -> tuple[Tensor, KVPair]:
        """x (B, T, d), mask boolean broadcastable to (B, 1, T, Tk) -> (out (B, T, d), (K, V) of all keys).

        ``past``: this layer's cache of earlier positions; their keys and values go in front.
        """
        B, T, d = x.shape
        q = self.split_heads(self.q_proj(x))  # (B, H, T, hd)
        k = self.split_heads(self.k_proj(x))  # (B, H, T, hd)
        v = self.split_heads(self.v_proj(x))  # (B, H, T, hd)
        if past is not None:
            k, v = past.extend(k, v)  # (B, H, T_past + T, hd) each
        if kv_prefix is not None:
            p_k, p_v = kv_prefix  # (B|1, H, P, hd)
            P = p_k.shape[2]
            k = ops.concat(
                [p_k.broadcast_to((B, self.n_heads, P, self.head_dim)), k], axis=2
            )  # (B, H, Tk, hd)
            v = ops.concat(
                [p_v.broadcast_to((B, self.n_heads, P, self.head_dim)), v], axis=2
            )  # (B, H, Tk, hd)
        y = F.attention(q, k, v, mask)  # (B, H, T, hd)
        y = y.permute(0, 2, 1, 3).reshape(B, T, d)  # (B, T, d)
        return self.resid_dropout(self.o_proj(y)), (k, v)


class MLP(Module):
    """Position-wise feed-forward network: fc_out(gelu(fc_in(x)))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc_in = Linear(config.d_model, config.d_ff)
        self.fc_out = Linear(config.d_ff, config.d_model)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc_in(x))  # (B, T, d_ff)
        return self.dropout(self.fc_out(h))  # (B, T, d)


class Block(Module):
    """A pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def has_standard_modules(self) -> bool:
        """Every sub-module is of its standard class (none replaced or subclassed): the fast paths
        that compute a block on its arrays (``fused_block``, ``decode``) require it."""
        attn, mlp = self.attn, self.mlp
        if type(attn) is not CausalSelfAttention or type(mlp) is not MLP:
            return False
        if type(self.ln_1) is not LayerNorm or type(self.ln_2) is not LayerNorm:
            return False
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc_in, mlp.fc_out)
        dropouts = (attn.resid_dropout, mlp.dropout)
        return all(type(m) is Linear for m in linears) and all(type(m) is Dropout for m in dropouts)

    def forward(
        self, x: Tensor, mask: np.ndarray, kv_prefix: KVPair | None = None, past: LayerCache | None = None,
        need_kv: bool = True,
    ) -> tuple[Tensor, KVPair | None]:
        """x (B, T, d) -> (x (B, T, d), this layer's keys and values, or None when ``need_kv`` is False
        and the block ran as one node: ``fused_block``, the same numbers)."""
        if fused_block.can_run(self, past, need_kv):
            return fused_block.run(self, x, mask, kv_prefix, need_kv)
        a, kv = self.attn(self.ln_1(x), mask, kv_prefix, past)  # (B, T, d)
        x = x + a  # (B, T, d)
        x = x + self.mlp(self.ln_2(x))  # (B, T, d)
        return x, kv


class GPT(Module):
    """The GPT-2 architecture at any size; see the module docstring for names and extension points."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.d_model)
        self.wpe = Embedding(config.context_length, config.d_model)
        self.drop = Dropout(config.dropout)
        self.blocks = ModuleList([Block(config) for _ in range(config.n_layers)])
        self.ln_f = LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.cls_head: Linear | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's initialization: N(0, 0.02) weights, zero biases, residual projections scaled by
        1/sqrt(2 n_layers), LayerNorm weight 1 and bias 0."""
        rng = get_rng()
        residual_std = 0.02 / np.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                p.data[...] = 1.0
            elif name.endswith(".bias"):
                p.data[...] = 0.0
            else:
                std = residual_std if name.endswith(("o_proj.weight", "fc_out.weight")) else 0.02
                p.data[...] = rng.normal(0.0, std, size=p.shape)

    def add_classification_head(self, num_labels: int) -> Linear:
        """Attach a Linear(d_model, num_labels) read at the last real token of each sequence."""
        self.cls_head = Linear(self.config.d_model, num_labels)
        self.cls_head.weight.data[...] = get_rng().normal(0.0, 0.02, size=self.cls_head.weight.shape)
        self.cls_head.bias.data[...] = 0.0
        return self.cls_head

    def forward(
        self,
        ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        position_ids: np.ndarray | None = None,
        prompt_embeds: Tensor | None = None,
        kv_prefix: list[KVPair] | None = None,
        kv_prefix_start: np.ndarray | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
    ) -> GPTOutput:
        """Run the model on token ids (B, T); see the module docstring for the optional inputs.

        attention_mask (B, T): 1 for real tokens, 0 for padding (left or right).
        position_ids (B, T): explicit positions; by default each row counts its real tokens,
        starting after any prompt, prefix or cached positions.
        """
        ids, token_mask = self._check_inputs(  # (B, T) each
            ids, attention_mask, prompt_embeds, kv_prefix, kv_prefix_start, cache
        )
        # The blocks see [prompt (P_in); tokens]; the keys are [kv prefix (P_kv); cache; that sequence].
        P_in = 0 if prompt_embeds is None else prompt_embeds.shape[1]
        P_kv = 0 if kv_prefix is None else kv_prefix[0][0].shape[2]
        seq_mask = np.concatenate([np.ones((len(ids), P_in), bool), token_mask], axis=1)  # (B, S = P_in + T)
        positions = self._position_ids(seq_mask, position_ids, P_in, P_kv, cache)  # (B, S)
        # A cached continuation that injects nothing may take the fast path of decode.py, on the arrays.
        injects = prompt_embeds is not None or kv_prefix is not None or kv_prefix_start is not None
        if cache is not None and not injects and decode.can_decode_fast(self, token_mask, positions, cache):
            return decode.fast_decode_step(self, ids, token_mask, positions, cache, use_cache)
        x = self._embed(ids, prompt_embeds, positions)  # (B, S, d)
        mask = self._attention_mask(seq_mask, P_kv, kv_prefix_start, cache)  # (B, 1, S, Tk)
        x, layer_kv = self._run_blocks(x, mask, kv_prefix, cache, use_cache)  # (B, S, d)
        h = self.ln_f(x)  # (B, S, d)
        if P_in:
            h = h[:, P_in:]  # (B, T, d): only token positions carry predictions
        logits = F.linear(h, self.wte.weight)  # (B, T, V), tied head
        new_cache = self._new_cache(layer_kv, cache, seq_mask, positions, P_kv) if use_cache else None
        return GPTOutput(logits=logits, hidden=h, cache=new_cache, cls_logits=self._classify(h, token_mask))

    # -- the steps of forward
    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        """ids (B, T) as an integer array with every id in [0, vocab_size), else an error saying why."""
        ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim != 2:
            raise ValueError(f"GPT: token ids must have shape (batch, time), got {ids.shape}")
        if ids.shape[1] == 0:
            raise ValueError(f"GPT: token ids have shape {ids.shape}; each sequence needs at least one token")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = ids.max() if ids.max() >= self.config.vocab_size else ids.min()
            raise IndexError(f"GPT: token id {bad} is out of range for vocab_size {self.config.vocab_size}")
        return ids

    def _check_inputs(
        self, ids: np.ndarray, attention_mask: np.ndarray | None, prompt_embeds: Tensor | None,
        kv_prefix: list[KVPair] | None, kv_prefix_start: np.ndarray | None, cache: KVCache | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids (B, T) integers, token_mask (B, T) bool), after checking them, the mask and what
        is injected (shapes, dtypes); each problem raises an error that names it."""
        ids = self._check_ids(ids)  # (B, T)
        if attention_mask is None:
            token_mask = np.ones(ids.shape, bool)  # (B, T)
        else:
            token_mask = check_attention_mask(attention_mask, ids.shape)  # (B, T)
        if prompt_embeds is not None:
            self._check_injected("prompt_embeds", prompt_embeds, len(ids), (None, self.config.d_model))
        if kv_prefix is not None:
            n_layers = self.config.n_layers
            if len(kv_prefix) != n_layers:
                raise ValueError(f"GPT: kv_prefix has {len(kv_prefix)} layers, the model has {n_layers}")
            if cache is not None:
                raise ValueError("GPT: a kv prefix is injected once, at prefill; it is already in the cache")
            P = kv_prefix[0][0].shape[2] if kv_prefix[0][0].ndim == 4 else None
            for i, pair in enumerate(kv_prefix):
                for name, t in zip(("K", "V"), pair):
                    self._check_injected(
                        f"kv_prefix[{i}] {name}", t, len(ids), (self.config.n_heads, P, self.config.head_dim),
                        note=" (P, the prefix length, is the same in every layer, for K and V)",
                    )
        if kv_prefix_start is not None:
            start = np.asarray(kv_prefix_start)
            if kv_prefix is None:
                raise ValueError("GPT: kv_prefix_start places a kv_prefix; none was given")
            if start.dtype.kind not in "iu" or start.shape not in ((), (len(ids),)):
                raise ValueError(
                    f"GPT: kv_prefix_start must be integers of shape ({len(ids)},), "
                    f"got {start.dtype} {start.shape}"
                )
        return ids, token_mask

    def _check_injected(
        self, name: str, t: Tensor, B: int, rest: tuple[int | None, ...], note: str = ""
    ) -> None:
        """An injected tensor must be a Tensor of shape (B or 1, *rest) (None: any length P) in the
        model's dtype."""
        if not isinstance(t, Tensor):
            raise TypeError(f"GPT: {name} must be a Tensor, got {type(t).__name__}")
        expected = ("B or 1", *("P" if n is None else n for n in rest))
        fits = t.ndim == 1 + len(rest) and t.shape[0] in (1, B)
        if not fits or any(n is not None and n != m for n, m in zip(rest, t.shape[1:])):
            shape = ", ".join(map(str, expected))
            raise ValueError(f"GPT: {name} has shape {t.shape}, expected ({shape}){note}")
        if t.dtype != self.wte.weight.dtype:
            raise TypeError(f"GPT: {name} is {t.dtype}, the model computes in {self.wte.weight.dtype}")

    def _position_ids(
        self, seq_mask: np.ndarray, position_ids: np.ndarray | None, P_in: int, P_kv: int,
        cache: KVCache | None,
    ) -> np.ndarray:
        """Position ids (B, S) of [prompt; tokens], seq_mask (B, S) marking the real ones.

        By default each row counts its real positions, prompt included: position = start +
        (number of real positions up to and including it) - 1, and padding before the first one
        gets start; start is ``cache.next_position`` (B,) after a cache, else P_kv (a kv prefix
        takes positions 0..P_kv-1). Explicit position_ids (B, T) of the tokens are shifted by P_in,
        after the prompt's 0..P_in-1. Raises the "sequence too long" error beyond the context length.
        """
        B, S = seq_mask.shape
        if position_ids is None:
            start = cache.next_position[:, None] if cache is not None else P_kv  # (B, 1) or int
            positions = start + np.maximum(np.cumsum(seq_mask, axis=1) - 1, 0)  # (B, S)
        else:
            positions = np.asarray(position_ids)  # (B, T)
            if positions.shape != (B, S - P_in) or positions.dtype.kind not in "iu":
                raise ValueError(
                    f"GPT: position_ids must be integers of shape {(B, S - P_in)} like the ids, "
                    f"got {positions.dtype} {positions.shape}"
                )
            if positions.size and positions.min() < 0:
                raise ValueError(f"GPT: position_ids must be >= 0, got {int(positions.min())}")
            if P_in:
                prompt_positions = np.broadcast_to(np.arange(P_in), (B, P_in))  # (B, P_in)
                positions = np.concatenate([prompt_positions, positions + P_in], 1)  # (B, S)
        if positions.size and positions.max() >= self.config.context_length:
            T_past = 0 if cache is None else cache.length
            raise ValueError(
                f"GPT: sequence too long: {S - P_in} tokens + {P_in} prompt + {P_kv} prefix + {T_past} "
                f"cached positions need position {int(positions.max())}, "
                f"context_length is {self.config.context_length}"
            )
        return positions

    def _embed(self, ids: np.ndarray, prompt_embeds: Tensor | None, positions: np.ndarray) -> Tensor:
        """x = dropout([prompt_embeds; wte[ids]] + wpe[positions]):  ids (B, T) -> x (B, S, d)."""
        x = self.wte(ids)  # (B, T, d)
        if prompt_embeds is not None:
            prompt = prompt_embeds.broadcast_to((len(ids), prompt_embeds.shape[1], self.config.d_model))
            x = ops.concat([prompt, x], axis=1)  # (B, S, d), prompt (B, P_in, d) in front
        return self.drop(x + self.wpe(positions))  # (B, S, d)

    @staticmethod
    def _attention_mask(
        seq_mask: np.ndarray, P_kv: int, kv_prefix_start: np.ndarray | None, cache: KVCache | None
    ) -> np.ndarray:
        """Boolean (B, 1, S, Tk) mask, True where query s may attend to key t (read-only).

        keys = [prefix (P_kv) | cached (T_past) | current (S)]: the prefix is visible to tokens at
        index >= kv_prefix_start, cached keys wherever they were real, current keys causally
        wherever they are real.
        """
        B, S = seq_mask.shape
        T_past = 0 if cache is None else cache.length
        current = F.causal_mask(S, S)[None] & seq_mask[:, None, :]  # (B, S, S)
        parts = []
        if P_kv:
            if kv_prefix_start is None:
                parts.append(np.ones((B, S, P_kv), bool))
            else:
                query_index = T_past + np.arange(S)  # (S,)
                start = np.broadcast_to(np.asarray(kv_prefix_start), (B,))[:, None]  # (B, 1)
                sees = query_index[None, :] >= start  # (B, S)
                parts.append(np.broadcast_to(sees[:, :, None], (B, S, P_kv)))
        if T_past:
            parts.append(np.broadcast_to(cache.key_mask[:, None, :], (B, S, T_past)))
        parts.append(current)
        mask = np.concatenate(parts, axis=2)[:, None]  # (B, 1, S, Tk)
        mask.flags.writeable = False  # every layer reads it; attention reuses what it derives from it
        return mask

    def _run_blocks(
        self, x: Tensor, mask: np.ndarray, kv_prefix: list[KVPair] | None, cache: KVCache | None,
        need_kv: bool = True,
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor, KVBuffer | None]]]:
        """x (B, S, d) through every block -> (x (B, S, d), per layer its keys and values
        (B, H, Tk, hd) and the cache buffer they live in, None if none; an empty list when
        ``need_kv`` is False)."""
        layer_kv = []
        for i, block in enumerate(self.blocks):
            past = LayerCache(cache, i, self.config.context_length) if cache is not None else None
            x, kv = block(x, mask, None if kv_prefix is None else kv_prefix[i], past, need_kv)  # (B, S, d)
            if need_kv:
                layer_kv.append((*kv, None if past is None else past.buffer))
        return x, layer_kv

    @staticmethod
    def _new_cache(
        layer_kv: list[tuple[Tensor, Tensor, KVBuffer | None]], cache: KVCache | None,
        seq_mask: np.ndarray, positions: np.ndarray, P_kv: int,
    ) -> KVCache:
        """The cache after this call: every layer's keys and values (B, H, Tk, hd), the mask of the
        real keys (B, Tk) = [prefix or cached; seq_mask] and each row's next position (B,)."""
        B = seq_mask.shape[0]
        past_mask = cache.key_mask if cache is not None else np.ones((B, P_kv), bool)  # (B, T_past or P_kv)
        return KVCache(
            keys=[k.detach() for k, _, _ in layer_kv],  # (B, H, Tk, hd) each
            values=[v.detach() for _, v, _ in layer_kv],  # (B, H, Tk, hd) each
            key_mask=np.concatenate([past_mask, seq_mask], axis=1),  # (B, Tk)
            next_position=positions[:, -1] + 1,  # (B,)
            buffers=[buffer for _, _, buffer in layer_kv],
        )

    def _classify(self, h: Tensor, token_mask: np.ndarray) -> Tensor | None:
        """The classification head at each row's last real token: h (B, T, d) -> (B, num_labels),
        None without a head."""
        if self.cls_head is None:
            return None
        last = last_real_index(token_mask)  # (B,)
        return self.cls_head(h[np.arange(len(last)), last])  # (B, num_labels)

    # -- conveniences
    def lm_loss(self, logits: Tensor, labels: np.ndarray) -> Tensor:
        """Next-token cross-entropy: position t predicts labels[t + 1]; labels of -100 do not count.

        logits (B, T, V), labels (B, T) aligned with the input ids (as Hugging Face does).
        """
        labels = np.asarray(labels)
        targets = np.full_like(labels, -100)  # (B, T)
        targets[:, :-1] = labels[:, 1:]
        return F.cross_entropy(logits, targets)

    def copy(self) -> GPT:
        return copy.deepcopy(self)

    @classmethod
    def from_hf_gpt2(cls, directory: str) -> GPT:
        """Load Hugging Face GPT-2 weights (``model.safetensors`` + ``config.json``); see ``hf.py``."""
        from .hf import load_hf_gpt2

        return load_hf_gpt2(directory)
