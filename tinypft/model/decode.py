"""The fast path of cached decoding: one step of ``GPT.forward`` on the arrays, without autograd.

A cached decoding step feeds one new token per row (B, 1) and reads every earlier position from
the ``KVCache``. Its matrix products are tiny (a few hundred numbers per row), so on the general
path Python overhead is most of its cost: about 85 ``Function.apply`` calls (a Tensor, a context
and a dtype check each), 57 ``Module.__call__``s and 120 attribute lookups per token.
``decode_step`` computes the same step directly on the parameter arrays:

    x = wte[ids] + wpe[positions]                                  (B, T, d)
    per layer:  h = LN_1(x);  q, k, v = h W_q^T + b_q, ...         (B, H, T, hd) each
                K, V = [cached; k], [cached; v]                    (B, H, Tk, hd), written into the cache
                x = x + softmax(q K^T / sqrt(hd) + mask) V W_o^T + b_o
                x = x + fc_out(gelu(fc_in(LN_2(x))))
    logits = LN_f(x) wte^T                                         (B, T, V)

Every operation is the one the fused path runs, in the same order (LayerNorm, GELU and attention
are the fused kernels' own forward functions), so the logits equal the general path's (the tests
compare them). The parameters are read afresh at every step (nothing is cached on the
model), so a method that changes biases (BitFit) or swaps weights during its forward
(``random_subset``) is seen as it is.

``GPT.forward`` calls it for every call with a ``cache`` and no ``prompt_embeds``, ``kv_prefix`` or
``kv_prefix_start``; it runs only when all of these hold, and otherwise returns None so that the
general path runs instead:

* the switch is on (``use_fast_decode``) and so are the fused kernels (``use_fused_kernels(False)``
  means "the composed reference everywhere");
* no gradient is wanted (``no_grad``) and the model is in eval mode (dropout is the identity);
* the model has no classification head and the standard structure (``Block``, ``Linear``, ...);
* the inputs and the cache are well-formed (a malformed one gets the general path's error).

Whatever the prefill put into the cache (a prefix's or a prompt's keys and values, the padding of
mixed-task batches, an infix's shifted ``next_position``) is read through the cache's key mask and
``next_position``, exactly as the general path reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..engine import Tensor, fused_kernels_enabled, is_grad_enabled
from ..engine.functional import causal_mask
from ..engine.fused import attention_forward, gelu_forward, layer_norm_forward
from ..nn import Dropout, Embedding, LayerNorm, Linear
from .gpt import GPT, MLP, Block, CausalSelfAttention, GPTOutput, KVCache

_enabled = True


def set_fast_decode(enabled: bool) -> None:
    """Turn the fast decoding step on (the default) or off (every step takes the general path)."""
    global _enabled
    _enabled = bool(enabled)


def fast_decode_enabled() -> bool:
    return _enabled


@contextmanager
def use_fast_decode(enabled: bool) -> Iterator[None]:
    """``with use_fast_decode(False): ...`` decodes on the general (autograd) path inside the block."""
    previous = _enabled
    set_fast_decode(enabled)
    try:
        yield
    finally:
        set_fast_decode(previous)


def _affine(x: np.ndarray, layer: Linear) -> np.ndarray:
    """x (N, in) @ W^T + b -> (N, out), as the fused Linear computes it (np.dot: the same BLAS call as
    np.matmul on 2-d arrays, with less overhead)."""
    params = layer._parameters  # the current arrays: a method may have swapped the weight for this call
    y = np.dot(x, params["weight"].data.T)  # (N, out); W.T is a view, BLAS reads it transposed
    bias = params["bias"]
    if bias is not None:
        y += bias.data
    return y


def _layer_norm(x: np.ndarray, norm: LayerNorm) -> np.ndarray:
    """LayerNorm over the last axis of x (..., d) with ``norm``'s current parameters: the fused forward."""
    params = norm._parameters
    y, _, _ = layer_norm_forward(x, params["weight"].data, params["bias"].data, norm.eps)  # (..., d)
    return y


def _has_standard_structure(model: GPT) -> bool:
    """Every module the step reads is of the standard class and no dropout is in training mode: a
    model whose modules were replaced or subclassed keeps the general path, which runs their forward."""
    top = model._modules
    if not (type(top["wte"]) is type(top["wpe"]) is Embedding and type(top["ln_f"]) is LayerNorm):
        return False
    dropouts = [top["drop"]]
    for block in top["blocks"]._modules.values():
        if type(block) is not Block:
            return False
        parts = block._modules
        attn, mlp = parts["attn"], parts["mlp"]
        if type(attn) is not CausalSelfAttention or type(mlp) is not MLP:
            return False
        if type(parts["ln_1"]) is not LayerNorm or type(parts["ln_2"]) is not LayerNorm:
            return False
        a, m = attn._modules, mlp._modules
        for linear in (a["q_proj"], a["k_proj"], a["v_proj"], a["o_proj"], m["fc_in"], m["fc_out"]):
            if type(linear) is not Linear:
                return False
        dropouts += [a["resid_dropout"], m["dropout"]]
    return all(type(dropout) is Dropout and not dropout.training for dropout in dropouts)


def _cache_is_usable(cache: KVCache, B: int, model: GPT) -> bool:
    """The cache has every layer's keys and values (B, H, T_past, hd) of the model's dtype, a key mask
    (B, T_past) and next positions (B,)."""
    cfg = model.config
    if len(cache.keys) != cfg.n_layers or len(cache.values) != cfg.n_layers:
        return False
    if cache.key_mask is None or cache.next_position is None:
        return False
    shape = (B, cfg.n_heads, cache.length, cfg.head_dim)
    dtype = model._modules["wte"]._parameters["weight"].data.dtype
    for t in (*cache.keys, *cache.values):
        if t.shape != shape or t.dtype != dtype:
            return False
    return np.shape(cache.key_mask) == (B, cache.length) and np.shape(cache.next_position) == (B,)


def decode_step(
    model: GPT,
    ids: np.ndarray,
    attention_mask: np.ndarray | None,
    position_ids: np.ndarray | None,
    cache: KVCache,
    use_cache: bool,
) -> GPTOutput | None:
    """``model(ids, attention_mask, position_ids, cache=cache, use_cache=use_cache)`` on the arrays.

    ids (B, T) continue the cached sequences (T = 1 when decoding; any T works), attention_mask
    (B, T) marks their real tokens, position_ids (B, T) default to each row's ``next_position``
    onwards. Returns the GPTOutput the general path would (no cls_logits), or None when the
    conditions of the module docstring do not hold.
    """
    if not _enabled or not fused_kernels_enabled() or is_grad_enabled() or model.training:
        return None
    if model.cls_head is not None:
        return None
    ids = model._check_ids(ids)  # (B, T), the general path's errors for bad ids
    B, T = ids.shape
    cfg = model.config
    token_mask = np.ones((B, T), bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if T == 0 or token_mask.shape != (B, T) or not _cache_is_usable(cache, B, model):
        return None
    if position_ids is None and T == 1:
        positions = cache.next_position[:, None]  # (B, 1)
    elif position_ids is None:  # each row counts its real tokens
        positions = cache.next_position[:, None] + np.maximum(np.cumsum(token_mask, axis=1) - 1, 0)  # (B, T)
    else:
        positions = np.asarray(position_ids)
        if positions.shape != (B, T) or positions.dtype.kind not in "iu" or positions.min() < 0:
            return None
    if positions.max() >= cfg.context_length:
        return None  # the general path raises its "sequence too long" error
    if not _has_standard_structure(model):
        return None

    H, hd, d = cfg.n_heads, cfg.head_dim, cfg.d_model
    T_past = cache.length
    Tk = T_past + T  # keys: cached positions, then the new ones
    wte = model._modules["wte"]._parameters["weight"].data  # (V, d)
    wpe = model._modules["wpe"]._parameters["weight"].data  # (context_length, d)
    x = wte[ids] + wpe[positions]  # (B, T, d)

    # Query t may attend to key j when j is real and not after it; one additive mask for all layers.
    key_mask = np.concatenate([cache.key_mask, token_mask], axis=1)  # (B, Tk)
    visible = key_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if T > 1:
        visible = visible & causal_mask(T, Tk)  # (B, 1, T, Tk)
    score_mask = None if visible.all() else np.where(visible, 0, np.finfo(x.dtype).min)  # (B, 1, T|1, Tk)

    new_cache = KVCache() if use_cache else None
    for i, block in enumerate(model._modules["blocks"]._modules.values()):
        attn, mlp = block._modules["attn"]._modules, block._modules["mlp"]._modules
        h = _layer_norm(x, block._modules["ln_1"]).reshape(B * T, d)  # (B T, d)
        q = _affine(h, attn["q_proj"]).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        k = _affine(h, attn["k_proj"]).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        v = _affine(h, attn["v_proj"]).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        buffer = cache.write(i, k, v, cfg.context_length)  # appended in place when the cache owns its end
        k, v = buffer.arrays(Tk)  # (B, H, Tk, hd) each: views of [cached; new]
        y, _ = attention_forward(q, k, v, score_mask)  # (B, H, T, hd)
        y = y.transpose(0, 2, 1, 3).reshape(B * T, d)  # (B T, d), heads side by side
        x = x + _affine(y, attn["o_proj"]).reshape(B, T, d)  # (B, T, d)
        h = _layer_norm(x, block._modules["ln_2"]).reshape(B * T, d)  # (B T, d)
        h, _ = gelu_forward(_affine(h, mlp["fc_in"]))  # (B T, d_ff)
        x = x + _affine(h, mlp["fc_out"]).reshape(B, T, d)  # (B, T, d)
        if new_cache is not None:
            new_cache.keys.append(Tensor._wrap(k))
            new_cache.values.append(Tensor._wrap(v))
            new_cache.buffers.append(buffer)
    h = _layer_norm(x, model._modules["ln_f"])  # (B, T, d)
    logits = np.matmul(h.reshape(B * T, d), wte.T).reshape(B, T, -1)  # (B, T, V), tied head

    if new_cache is not None:
        new_cache.key_mask = key_mask
        new_cache.next_position = positions[:, -1] + 1
    return GPTOutput(logits=Tensor._wrap(logits), hidden=Tensor._wrap(h), cache=new_cache)
