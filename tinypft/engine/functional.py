"""Composite operations built only from the primitives in ``ops.py``: the reference definitions.

Their gradients come for free from the primitives' backward passes, so they are correct as soon as
the primitives are. The hot ones also exist as fused kernels (``fused.py``: one Function each, with a
hand-derived backward, faster). While the fused kernels are switched on (``use_fused_kernels``, the
default) each of those composites hands its work to its kernel in one line; switched off, the
composed code runs, and it is what the fused kernels are tested against.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import fused, ops
from .autograd import Tensor, fused_kernels_enabled


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b with W of shape (out, in), b of shape (out,): x (..., in) -> y (..., out)."""
    if fused_kernels_enabled():
        return fused.linear(x, weight, bias)
    y = x @ weight.T  # (..., out)
    return y if bias is None else y + bias


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j.

    Subtracting the max keeps exp from overflowing and changes nothing else (softmax is shift
    invariant), so the shift is detached: it carries no gradient.
    """
    if fused_kernels_enabled():
        return fused.softmax(x, axis)
    shifted = x - x.max(axis=axis, keepdims=True).detach()
    e = shifted.exp()
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """log softmax(x)_i = (x_i - m) - log sum_j exp(x_j - m): stable even for inputs of size 1e5."""
    shifted = x - x.max(axis=axis, keepdims=True).detach()
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias.

    x (..., d), weight (d,), bias (d,); var is the biased variance (divides by d), as in GPT-2.
    """
    if fused_kernels_enabled():
        return fused.layer_norm(x, weight, bias, eps)
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    centered = x - mu  # (..., d)
    var = (centered * centered).mean(axis=-1, keepdims=True)  # (..., 1)
    x_hat = centered / (var + eps).sqrt()  # (..., d)
    return x_hat * weight + bias


def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -100) -> Tensor:
    """Mean negative log-likelihood of ``targets`` over the positions whose target is not ``ignore_index``.

    logits (..., C), targets integer (...): loss = -mean_{n: t_n != ignore} log softmax(logits_n)[t_n].
    """
    targets = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: logits {logits.shape} need targets of shape {logits.shape[:-1]}, "
            f"got {targets.shape}"
        )
    num_classes = logits.shape[-1]
    flat_targets = targets.reshape(-1)  # (N,)
    rows = np.flatnonzero(flat_targets != ignore_index)  # (n,) positions that count
    if rows.size == 0:
        raise ValueError(
            f"cross_entropy: every target equals ignore_index={ignore_index}; nothing to average"
        )
    picked = flat_targets[rows]
    if picked.min() < 0 or picked.max() >= num_classes:
        bad = picked.max() if picked.max() >= num_classes else picked.min()
        raise IndexError(f"cross_entropy: target {bad} is out of range for {num_classes} classes")
    if fused_kernels_enabled():
        return fused.cross_entropy(logits, flat_targets, rows)
    flat_logits = logits.reshape(-1, num_classes)  # (N, C)
    logp = log_softmax(flat_logits[rows], axis=-1)  # (n, C)
    return -logp[np.arange(rows.size), picked].mean()


def causal_mask(num_queries: int, num_keys: int) -> np.ndarray:
    """Boolean (num_queries, num_keys) mask, True where a query may attend to a key.

    Queries are the last ``num_queries`` positions of the ``num_keys`` keys, so query i sits at
    key position ``num_keys - num_queries + i`` and sees every key up to and including it. Keys in
    front (a prefix, or a KV cache of earlier tokens) are therefore always visible.
    """
    offset = num_keys - num_queries
    return np.arange(num_keys)[None, :] <= np.arange(num_queries)[:, None] + offset


def attention(q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None = None) -> Tensor:
    """Scaled dot-product attention: softmax(q k^T / sqrt(d) + masked) v.

    q (B, H, Tq, d), k and v (B, H, Tk, d), mask boolean broadcastable to (B, H, Tq, Tk),
    True where attending is allowed. Masked scores get the dtype's most negative finite value
    rather than -inf, so a fully masked row (a padding query) gives a uniform row, not NaN.
    """
    if fused_kernels_enabled():
        return fused.attention(q, k, v, mask)
    scale = 1.0 / np.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float(np.finfo(scores.dtype).min))
    weights = softmax(scores, axis=-1)  # (B, H, Tq, Tk)
    return weights @ v  # (B, H, Tq, d)


def gelu(x: Tensor) -> Tensor:
    """GPT-2's GELU (tanh approximation); a primitive, see ops.GELU."""
    if fused_kernels_enabled():
        return fused.gelu(x)
    return ops.gelu(x)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    return ops.dropout(x, p, training)
