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
* ``cache``: keys and values of earlier positions for incremental decoding (see ``KVCache``).
* an optional classification head read at the last real token of each sequence.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ..engine import Tensor, is_grad_enabled, ops
from ..engine import functional as F
from ..engine.rng import get_rng
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from .config import GPTConfig

KVPair = tuple[Tensor, Tensor]


class KVBuffer:
    """One layer's keys and values in preallocated arrays, so that decoding appends without copying.

    keys, values  (B, H, capacity, head_dim); positions [0, filled) along axis 2 are written.

    A cache of length T sees the first T positions as views. Several caches may share a buffer (a
    cache and the one that extended it, or ``select`` with the rows unchanged), so a cache may write
    in place only where nobody has written yet: at T == filled. A second continuation of the same
    cache (T < filled) gets a fresh copy, and no view ever changes under anyone's feet.
    """

    __slots__ = ("keys", "values", "filled")

    def __init__(self, shape: tuple[int, int, int, int], dtype: np.dtype):
        self.keys = np.empty(shape, dtype)  # (B, H, capacity, hd), written as positions arrive
        self.values = np.empty(shape, dtype)
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @classmethod
    def holding(cls, k: np.ndarray, v: np.ndarray, capacity: int) -> KVBuffer:
        """A new buffer of at least ``capacity`` positions holding k and v (B, H, T, hd)."""
        B, H, T, hd = k.shape
        buffer = cls((B, H, max(capacity, T), hd), k.dtype)
        buffer.write(0, k, v)
        return buffer

    def write(self, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store k and v (B, H, T, hd) at positions [start, start + T)."""
        end = start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.filled = end

    def arrays(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``length`` positions as arrays (B, H, length, hd): views, no copy."""
        return self.keys[:, :, :length], self.values[:, :, :length]

    def views(self, length: int) -> KVPair:
        """The first ``length`` positions as tensors (B, H, length, hd): views, no copy."""
        return Tensor._wrap(self.keys[:, :, :length]), Tensor._wrap(self.values[:, :, :length])


@dataclass
class KVCache:
    """Keys and values of every layer for the positions processed so far (generation).

    keys[i], values[i]  (B, H, T_past, head_dim) for layer i
    key_mask            (B, T_past) bool, False for padding positions that must never be attended
    next_position       (B,) the position id the next token of each row gets

    The model fills ``buffers`` (one ``KVBuffer`` per layer, capacity ``context_length``): then
    keys[i] and values[i] are views of them, and a decoding step writes its one new key and value
    per layer in place instead of copying all T_past of them (``extend``). A cache built by hand
    from ``keys`` and ``values`` alone works too; its first extension copies it into a buffer.
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    key_mask: np.ndarray | None = None
    next_position: np.ndarray | None = None
    buffers: list[KVBuffer | None] = field(default_factory=list, repr=False, compare=False)

    @property
    def length(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[2]

    def buffer(self, layer: int) -> KVBuffer | None:
        """Layer ``layer``'s buffer if keys[layer] and values[layer] are still views of it, else None."""
        buffer = self.buffers[layer] if layer < len(self.buffers) else None
        if buffer is None:
            return None
        k, v = self.keys[layer].data, self.values[layer].data
        if k.base is not buffer.keys or v.base is not buffer.values:  # replaced by the caller
            return None
        return buffer

    def extend(
        self, layer: int, k: Tensor, v: Tensor, capacity: int = 0
    ) -> tuple[Tensor, Tensor, KVBuffer | None]:
        """[cached keys; k] and [cached values; v] of one layer, (B, H, T_past + T, hd), and their buffer.

        k, v (B, H, T, hd) are the new positions. When a gradient must flow through them this is
        a differentiable concat (no buffer). Otherwise they are written into the layer's buffer
        (in place if this cache owns its end and there is room, else into a new one of at least
        ``capacity`` positions, doubled when full) and the result is a view of it.
        """
        past_k, past_v = self.keys[layer], self.values[layer]
        if is_grad_enabled() and any(t.requires_grad for t in (k, v, past_k, past_v)):
            return ops.concat([past_k, k], axis=2), ops.concat([past_v, v], axis=2), None
        buffer = self.write(layer, k.data, v.data, capacity)
        return *buffer.views(past_k.shape[2] + k.shape[2]), buffer

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, capacity: int = 0) -> KVBuffer:
        """Store arrays k, v (B, H, T, hd) after layer ``layer``'s T_past cached positions; returns the
        buffer whose first T_past + T positions are now [cached; new] (``extend`` without tensors)."""
        past_k, past_v = self.keys[layer].data, self.values[layer].data  # (B, H, T_past, hd)
        T_past, T = past_k.shape[2], k.shape[2]
        buffer = self.buffer(layer)
        if buffer is None or buffer.filled != T_past or T_past + T > buffer.capacity:
            room = max(capacity, 2 * (T_past + T) if buffer is not None else T_past + T)
            buffer = KVBuffer.holding(past_k, past_v, room)
        buffer.write(T_past, k, v)
        return buffer

    def select(self, rows: np.ndarray) -> KVCache:
        """The cache of some rows (in the given order): beam search reorders its hypotheses with it.

        Keeping every row in order shares the buffers (greedy decoding does that at every step);
        any other selection copies the cached positions into new buffers of the same capacity.
        """
        rows = np.asarray(rows)
        B = self.key_mask.shape[0]
        if rows.shape == (B,) and np.array_equal(rows, np.arange(B)):
            return KVCache(
                list(self.keys), list(self.values), self.key_mask, self.next_position, list(self.buffers)
            )
        keys, values, buffers = [], [], []
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            old = self.buffer(layer)
            buffer = KVBuffer.holding(k.data[rows], v.data[rows], old.capacity if old is not None else 0)
            k, v = buffer.views(k.shape[2])
            keys.append(k)
            values.append(v)
            buffers.append(buffer)
        return KVCache(keys, values, self.key_mask[rows], self.next_position[rows], buffers)


@dataclass
class LayerCache:
    """One layer's view of a KVCache, handed to the attention: ``extend`` appends the new keys and
    values and remembers the buffer the result lives in (the next cache keeps it)."""

    cache: KVCache
    layer: int
    capacity: int  # positions to preallocate when a new buffer is needed (the context length)
    buffer: KVBuffer | None = None

    def extend(self, k: Tensor, v: Tensor) -> KVPair:
        """k, v (B, H, T, hd) -> [cached; new] keys and values, each (B, H, T_past + T, hd)."""
        k, v, self.buffer = self.cache.extend(self.layer, k, v, self.capacity)
        return k, v


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

    def forward(
        self, x: Tensor, mask: np.ndarray, kv_prefix: KVPair | None = None, past: LayerCache | None = None
    ) -> tuple[Tensor, KVPair]:
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

    # -- checks on the inputs
    def _check_ids(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
        if ids.ndim != 2:
            raise ValueError(f"GPT: token ids must have shape (batch, time), got {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            bad = ids.max() if ids.max() >= self.config.vocab_size else ids.min()
            raise IndexError(f"GPT: token id {bad} is out of range for vocab_size {self.config.vocab_size}")
        return ids

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

        A cached continuation without gradients in eval mode (a decoding step) is computed by
        ``decode.decode_step`` on the arrays, without autograd; same results, a fraction of the
        Python overhead (``decode.use_fast_decode(False)`` turns it off).
        """
        if cache is not None and prompt_embeds is None and kv_prefix is None and kv_prefix_start is None:
            from .decode import decode_step  # here: decode.py imports this module

            out = decode_step(self, ids, attention_mask, position_ids, cache, use_cache)
            if out is not None:  # None: a case it leaves to the general path below
                return out
        ids = self._check_ids(ids)
        B, T = ids.shape
        cfg = self.config
        token_mask = (
            np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
        )
        if token_mask.shape != (B, T):
            raise ValueError(f"GPT: attention_mask has shape {token_mask.shape}, ids have {ids.shape}")

        # The blocks see [prompt (P_in)] + tokens; the keys are [kv prefix (P_kv)] + [cache] + that sequence.
        P_in = 0 if prompt_embeds is None else prompt_embeds.shape[1]
        P_kv = 0 if kv_prefix is None else kv_prefix[0][0].shape[2]
        T_past = 0 if cache is None else cache.length
        if kv_prefix is not None and len(kv_prefix) != cfg.n_layers:
            raise ValueError(f"GPT: kv_prefix has {len(kv_prefix)} layers, the model has {cfg.n_layers}")
        if cache is not None and kv_prefix is not None:
            raise ValueError("GPT: a kv prefix is injected once, at prefill; it is already in the cache")

        seq_mask = np.concatenate([np.ones((B, P_in), bool), token_mask], axis=1)  # (B, S) with S = P_in + T
        if position_ids is None:
            start = cache.next_position[:, None] if cache is not None else P_kv  # (B, 1) or int
            position_ids = start + np.maximum(np.cumsum(seq_mask, axis=1) - 1, 0)  # (B, S)
        else:
            position_ids = np.asarray(position_ids)
            if P_in:
                position_ids = np.concatenate(
                    [np.broadcast_to(np.arange(P_in), (B, P_in)), position_ids + P_in], 1
                )
        if position_ids.size and position_ids.max() >= cfg.context_length:
            raise ValueError(
                f"GPT: sequence too long: {T} tokens + {P_in} prompt + {P_kv} prefix + {T_past} cached "
                f"positions need position {int(position_ids.max())}, context_length is {cfg.context_length}"
            )

        x = self.wte(ids)  # (B, T, d)
        if prompt_embeds is not None:
            x = ops.concat([prompt_embeds.broadcast_to((B, P_in, cfg.d_model)), x], axis=1)  # (B, S, d)
        x = self.drop(x + self.wpe(position_ids))  # (B, S, d)

        mask = self._attention_mask(seq_mask, P_kv, kv_prefix_start, cache)  # (B, 1, S, Tk)
        new_cache = KVCache() if use_cache else None
        for i, block in enumerate(self.blocks):
            past = LayerCache(cache, i, cfg.context_length) if cache is not None else None
            x, (k, v) = block(x, mask, None if kv_prefix is None else kv_prefix[i], past)  # (B, S, d)
            if new_cache is not None:
                new_cache.keys.append(k.detach())
                new_cache.values.append(v.detach())
                new_cache.buffers.append(None if past is None else past.buffer)
        h = self.ln_f(x)  # (B, S, d)
        if P_in:
            h = h[:, P_in:]  # (B, T, d): only token positions carry predictions
        logits = F.linear(h, self.wte.weight)  # (B, T, V), tied head

        if new_cache is not None:
            past_mask = cache.key_mask if cache is not None else np.ones((B, P_kv), bool)
            new_cache.key_mask = np.concatenate([past_mask, seq_mask], axis=1)
            new_cache.next_position = position_ids[:, -1] + 1
        cls_logits = None
        if self.cls_head is not None:
            last = np.where(token_mask.any(1), T - 1 - np.argmax(token_mask[:, ::-1], axis=1), 0)  # (B,)
            cls_logits = self.cls_head(h[np.arange(B), last])  # (B, num_labels)
        return GPTOutput(logits=logits, hidden=h, cache=new_cache, cls_logits=cls_logits)

    @staticmethod
    def _attention_mask(
        seq_mask: np.ndarray, P_kv: int, kv_prefix_start: np.ndarray | None, cache: KVCache | None
    ) -> np.ndarray:
        """Boolean (B, 1, S, Tk) mask, True where query s may attend to key t.

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
                sees = query_index[None, :] >= np.asarray(kv_prefix_start).reshape(B, 1)  # (B, S)
                parts.append(np.broadcast_to(sees[:, :, None], (B, S, P_kv)))
        if T_past:
            parts.append(np.broadcast_to(cache.key_mask[:, None, :], (B, S, T_past)))
        parts.append(current)
        return np.concatenate(parts, axis=2)[:, None]  # (B, 1, S, Tk)

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
