"""Prefix-Tuning: trainable keys and values in front of every layer (Li & Liang, ACL 2021).

The language model is frozen. Each layer l gets P extra key and value vectors that every token
can attend to, but that have no queries of their own:

    K_l = [P_K,l ; W_k h_l + b_k]        (P + T, d)
    V_l = [P_V,l ; W_v h_l + b_v]        (P + T, d)
    head_h = softmax(Q_h K_h^T / sqrt(d_h)) V_h

All prefixes form one matrix P_theta (P, 2 L d): row p is the flat vector ordered L0 K, L0 V,
L1 K, L1 V, ..., viewed as (2L, H, P, d_h) (Hugging Face PEFT's layout). Real tokens sit at
positions P..P+T-1, as if P tokens preceded them.

Optimizing P_theta directly is unstable (the paper's observation), so it is trained through a
reparameterization, an MLP over a smaller table P' (P, d):

    P_theta = Linear_2(tanh(Linear_1(P')))      Linear_1: d -> k,  Linear_2: k -> 2 L d

(k = ``encoder_hidden_size``, 512 in the paper). After training, ``merge()`` bakes the MLP's
output into a plain (P, 2 L d) parameter: that is all inference needs and all an adapter file
stores, 2 L d P scalars, unless ``save_pretrained(directory, include_reparam=True)`` keeps the
MLP to resume training.

Variants (``PrefixTuningConfig``):

* ``prefix_projection=False``: optimize P_theta directly.
* ``mode="embedding_only"`` (the paper's EMB ablation): P free vectors (P, d) at the input only;
  the frozen LM computes their activations in the layers above. This is exactly prompt tuning's
  mechanism (``prompt.py``).
* ``mode="infix"`` ([x; INFIX; y]): the vectors sit between a source x and a target y. Tokens of
  the source do not see them; tokens from ``infix_start`` on do, and their positions move on by P.
  ``infix_start_from_labels`` derives it from the labels.
* ``init="real_words"``: P_theta starts as the frozen LM's own keys and values on the tokens of a
  real text (for embedding_only: those tokens' embeddings), so the model starts exactly as if
  the text preceded the input. With the MLP, the output layer is solved so that the MLP's first
  output equals those activations (exact when k >= P).
* ``init="activation_scale"``: P_theta starts random, N(0, s^2) with s the root mean square of the
  frozen LM's own keys (or values) of that layer on the tokens of a real text: random, but at the
  scale real activations have (about 0.3-0.6 here, where N(0, 1) would be twice to three times
  too large).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..engine import Tensor, default_dtype, no_grad
from ..engine.rng import get_rng
from ..model import GPT
from ..model.cache import KVPair
from ..nn import Embedding, Linear, Module, Parameter, Sequential, Tanh
from .config import PrefixTuningConfig, resolve_token_ids
from .model import PeftModel


class PrefixEncoder(Module):
    """Produces the prefix matrix (P, width): through the MLP, or a plain parameter.

    With ``projection``: embedding (P, d) -> Linear(d, k) -> tanh -> Linear(k, width).
    Without (or after ``merge``): ``prefix`` (P, width), initialized N(0, 1).
    """

    def __init__(self, num_virtual_tokens: int, d_model: int, width: int, projection: bool, hidden_size: int):
        super().__init__()
        self.num_virtual_tokens, self.width = num_virtual_tokens, width
        if projection:
            self.embedding = Embedding(num_virtual_tokens, d_model)  # P' (P, d), N(0, 1)
            self.mlp = Sequential(Linear(d_model, hidden_size), Tanh(), Linear(hidden_size, width))
        else:
            self.prefix = Parameter(get_rng().standard_normal((num_virtual_tokens, width)))  # (P, width)

    @property
    def reparameterized(self) -> bool:
        """True while the prefix is computed by the MLP (False when direct or merged)."""
        return "mlp" in self._modules

    def forward(self) -> Tensor:
        if not self.reparameterized:
            return self.prefix  # (P, width)
        return self.mlp(self.embedding(np.arange(self.num_virtual_tokens)))  # (P, width)

    @no_grad()
    def merge(self) -> None:
        """Replace the MLP by its current output, a plain (P, width) parameter.

        The MLP's parameters leave the model, marked ``removed_by``: an optimizer built before the
        merge still holds them (and not the new prefix), so its next ``step`` raises instead of
        silently updating tensors nothing reads. Training on after a merge is possible (it is then
        direct prefix optimization) with a new optimizer over ``parameters()``; the old one is not
        carried over, since its AdamW moments describe the MLP's weights, not the prefix.
        """
        if self.reparameterized:
            value = self().data.copy()  # (P, width)
            for p in self.parameters():  # P' and the MLP's weights
                p.removed_by = "PrefixTuningModel.merge()"
            self.embedding = None
            self.mlp = None
            self.prefix = Parameter(value, dtype=value.dtype)

    @no_grad()
    def initialize_to(self, target: np.ndarray) -> None:
        """Make the encoder output ``target`` (P, width) now.

        Direct: copy it. MLP: keep the random P' and first layer, whose tanh outputs H (P, k) are
        linearly independent when k >= P, and solve the output layer H W_2^T + b_2 = target with
        b_2 = the mean row and W_2 the minimum-norm solution (exact when k >= P; least squares
        otherwise). Training then starts from the real-word activations through the MLP.
        """
        if not self.reparameterized:
            self.prefix.copy_(target)
            return
        first, _, last = self.mlp
        pre_activation = first(self.embedding(np.arange(self.num_virtual_tokens))).data  # (P, k)
        hidden = np.tanh(pre_activation.astype(np.float64))  # (P, k)
        bias = target.mean(axis=0)  # (width,)
        solution, *_ = np.linalg.lstsq(hidden, target.astype(np.float64) - bias, rcond=None)  # (k, width)
        if hidden.shape[1] < hidden.shape[0]:
            warnings.warn(
                f"PrefixEncoder: encoder_hidden_size {hidden.shape[1]} < P = {hidden.shape[0]}: "
                "the MLP can only approximate the real-word activations (least squares)",
                stacklevel=3,
            )
        last.weight.copy_(solution.T)  # (width, k)
        last.bias.copy_(bias)


def flatten_key_values(keys: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
    """Per-layer keys and values, each (1, H, P, d_h), as the flat prefix matrix (P, 2 L d)."""
    stacked = np.concatenate([a for pair in zip(keys, values) for a in pair], axis=0)  # (2L, H, P, d_h)
    P = stacked.shape[2]
    return stacked.transpose(2, 0, 1, 3).reshape(P, -1)  # (P, 2L * H * d_h) ordered L0K, L0V, L1K, ...


def split_key_values(prefix: Tensor, n_layers: int, n_heads: int) -> list[KVPair]:
    """The flat prefix matrix (P, 2 L d) as per-layer (K, V) pairs, each (1, H, P, d_h)."""
    P, width = prefix.shape
    head_dim = width // (2 * n_layers * n_heads)
    kv = prefix.reshape(P, 2 * n_layers, n_heads, head_dim).permute(1, 2, 0, 3)  # (2L, H, P, d_h)
    shape = (1, n_heads, P, head_dim)  # each K and V
    return [(kv[2 * i].reshape(*shape), kv[2 * i + 1].reshape(*shape)) for i in range(n_layers)]


def frozen_lm_key_values(model: GPT, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The frozen LM's per-layer keys and values (each (1, H, T, d_h)) on token ids (T,), dropout off."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with no_grad():
            cache = model(np.asarray(ids)[None], use_cache=True).cache
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode
    return [k.data for k in cache.keys], [v.data for v in cache.values]


def tile_ids(ids: list[int], length: int) -> np.ndarray:
    """Token ids repeated and cut to exactly ``length``: [a, b, c] -> [a, b, c, a, b] for 5."""
    return np.resize(np.asarray(ids, dtype=np.int64), length)


def infix_start_from_labels(labels: np.ndarray) -> np.ndarray:
    """Where the infix goes for [x; INFIX; y] given LM labels (B, T) with -100 on the source.

    The first label that counts, at index f, is predicted by the token at f - 1 (the last source
    token, typically a separator). The infix is placed before that token, so every prediction of
    the target sees it: start = f - 1. At generation, prefill on the source with
    ``infix_start = len(source) - 1``, or -1 for left-padded prompts (or ``len(source)`` to keep
    the whole source before it): ``generate(..., prefill_kwargs={"infix_start": -1})``.
    """
    labels = np.asarray(labels)
    counts = labels != -100
    if not counts.any(axis=1).all():
        raise ValueError("infix_start_from_labels: a row has no label other than -100 (no target)")
    return np.maximum(np.argmax(counts, axis=1) - 1, 0)


def infix_batch_loss(model: PrefixTuningModel, batch: Any) -> Tensor:
    """The LM loss of an infix model on a batch with ``ids``, ``attention_mask`` and ``labels``,
    the infix placed by ``infix_start_from_labels``: a ``loss_fn`` for a training loop."""
    start = infix_start_from_labels(batch.labels)  # (B,)
    out = model(batch.ids, attention_mask=batch.attention_mask, infix_start=start)
    return model.lm_loss(out.logits, batch.labels)


class PrefixTuningModel(PeftModel):
    """The frozen base model with a trainable prefix (or infix, or input embeddings)."""

    def __init__(self, base_model: GPT, peft_config: PrefixTuningConfig):
        super().__init__(base_model, peft_config)
        cfg = base_model.config
        self.mode = peft_config.mode
        width = cfg.d_model if self.mode == "embedding_only" else 2 * cfg.n_layers * cfg.d_model
        with default_dtype(base_model.wte.weight.dtype):  # the adapter computes in the base model's dtype
            self.prefix_encoder = PrefixEncoder(
                num_virtual_tokens=peft_config.num_virtual_tokens,
                d_model=cfg.d_model,
                width=width,
                projection=peft_config.prefix_projection,
                hidden_size=peft_config.encoder_hidden_size,
            )

    def initialize_adapter(self) -> None:
        """``init="real_words"``: start from the frozen LM's activations on ``init_text``;
        ``"activation_scale"``: random at their scale (``init="random"`` keeps the encoder's own
        random start)."""
        if self.peft_config.init == "real_words":
            self.prefix_encoder.initialize_to(self.real_word_prefix())
        elif self.peft_config.init == "activation_scale":
            self.prefix_encoder.initialize_to(self.activation_scale_prefix())

    @property
    def num_virtual_tokens(self) -> int:
        return self.peft_config.num_virtual_tokens

    def real_word_prefix(self) -> np.ndarray:
        """The prefix matrix made of the frozen LM's activations on ``init_text`` (tiled to P)."""
        config = self.peft_config
        ids = tile_ids(
            resolve_token_ids(
                "PrefixTuningConfig.init_text", config.init_text, config.tokenizer,
                self.base_model.config.vocab_size,
            ),
            config.num_virtual_tokens,
        )  # (P,)
        if self.mode == "embedding_only":
            return self.base_model.wte.weight.data[ids].copy()  # (P, d)
        keys, values = frozen_lm_key_values(self.base_model, ids)  # L x (1, H, P, d_h)
        return flatten_key_values(keys, values)  # (P, 2 L d)

    def activation_scale_prefix(self) -> np.ndarray:
        """A random prefix matrix (P, width) whose every layer's keys (and values) have the root mean
        square of the real-word prefix's: N(0, 1) draws scaled per (layer, K or V) block."""
        real = self.real_word_prefix()  # (P, width)
        P, width = real.shape
        blocks = 1 if self.mode == "embedding_only" else 2 * self.base_model.config.n_layers
        real = real.reshape(P, blocks, width // blocks)  # (P, 2L, d): L0K, L0V, L1K, ...
        rms = np.sqrt((real.astype(np.float64) ** 2).mean(axis=(0, 2), keepdims=True))  # (1, 2L, 1)
        noise = get_rng().standard_normal(real.shape)  # (P, 2L, d)
        return (noise * rms).reshape(P, width).astype(real.dtype)  # (P, width)

    # ------------------------------------------------------------------ what the model sees
    def prefix_key_values(self) -> list[KVPair]:
        """Per-layer (K, V), each (1, H, P, d_h) (prefix and infix modes)."""
        if self.mode == "embedding_only":
            raise ValueError(
                "prefix_key_values: an embedding_only prefix lives at the input; see prompt_embeddings"
            )
        cfg = self.base_model.config
        return split_key_values(self.prefix_encoder(), cfg.n_layers, cfg.n_heads)

    def prompt_embeddings(self) -> Tensor:
        """The input vectors (1, P, d) of embedding_only mode."""
        if self.mode != "embedding_only":
            raise ValueError(
                f"prompt_embeddings: a {self.mode} prefix lives in every layer; see prefix_key_values"
            )
        P, d = self.prefix_encoder.num_virtual_tokens, self.base_model.config.d_model
        return self.prefix_encoder().reshape(1, P, d)  # (1, P, d)

    def virtual_inputs(
        self, real_tokens: np.ndarray, infix_start: np.ndarray | int | None = None
    ) -> dict[str, Any]:
        """The forward hook: the prefix in every layer, or the vectors at the input (embedding_only).

        ``infix_start`` (B,) or an int, infix mode only: the index of the first token after the
        infix (0 <= start <= T), or counted from the end when negative (-T <= start < 0): -1 puts
        the infix before the last token, the separator that ends a left-padded generation prompt
        ``[pads] bos source sep``. Tokens from there on see the infix and sit P positions further on.
        """
        if infix_start is not None and self.mode != "infix":
            raise ValueError(f"infix_start is only for mode='infix' (this prefix is {self.mode!r})")
        if self.mode == "embedding_only":
            return {"prompt_embeds": self.prompt_embeddings()}  # (1, P, d)
        if self.mode == "prefix":
            return {"kv_prefix": self.prefix_key_values()}  # L x (K, V), each (1, H, P, d_h)
        if infix_start is None:
            raise ValueError("mode='infix' needs infix_start= (see infix_start_from_labels)")
        B, T = real_tokens.shape
        start = np.broadcast_to(np.asarray(infix_start, dtype=np.int64), (B,))  # (B,)
        if start.min() < -T or start.max() > T:
            raise ValueError(f"infix_start must be in [-{T}, {T}] for {T} tokens, got {start.tolist()}")
        start = np.where(start < 0, start + T, start)  # negative: counted from the end
        after_infix = np.arange(T)[None, :] >= start[:, None]  # (B, T)
        positions = np.maximum(np.cumsum(real_tokens, axis=1) - 1, 0) + self.num_virtual_tokens * after_infix
        return {"kv_prefix": self.prefix_key_values(), "kv_prefix_start": start, "position_ids": positions}

    # ------------------------------------------------------------------ merging and saving
    def merge(self) -> PrefixTuningModel:
        """Bake the MLP's output into a plain prefix parameter (P, width); a no-op when direct.

        An optimizer built before the merge refuses to step afterwards (``PrefixEncoder.merge``)."""
        self.prefix_encoder.merge()
        return self

    def adapter_state_dict(self) -> dict[str, np.ndarray]:
        """Inference form: only the prefix matrix (P, width), the MLP's output while there is one."""
        if not self.prefix_encoder.reparameterized:
            return self.trained_state_dict()
        with no_grad():
            return {"prefix_encoder.prefix": self.prefix_encoder().data.copy()}

    def load_adapter_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        if "prefix_encoder.prefix" in tensors:  # stored merged: the model needs no MLP
            self.merge()
        super().load_adapter_tensors(tensors)
