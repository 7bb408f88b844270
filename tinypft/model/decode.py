"""The fast path of cached decoding: one step of ``GPT.forward`` on the arrays, without autograd.

A cached decoding step feeds one new token per row (B, 1) and reads every earlier position from
the ``KVCache``. Its matrix products are tiny (a few hundred numbers per row), so on the general
path Python overhead is most of its cost: about 85 ``Function.apply`` calls (a Tensor, a context
and a dtype check each), 57 ``Module.__call__``s and 120 attribute lookups per token.
``fast_decode_step`` computes the same step directly on the parameter arrays:

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

``GPT.forward`` checks its inputs and computes the position ids, then, for a call with a ``cache``
and no ``prompt_embeds``, ``kv_prefix`` or ``kv_prefix_start``, asks ``can_decode_fast``; it hands
the call to ``fast_decode_step`` when all of these hold, and runs the general path otherwise:

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
from . import gpt  # the module, read at call time: gpt.py imports this one
from .cache import KVCache

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
    y = np.dot(x, layer.weight.data.T)  # (N, out); W.T is a view, BLAS reads it transposed
    bias = layer.bias  # read at every call: a method may have swapped the parameters for this one
    if bias is not None:
        y += bias.data
    return y


def _layer_norm(x: np.ndarray, norm: LayerNorm) -> np.ndarray:
    """LayerNorm over the last axis of x (..., d) with ``norm``'s current parameters: the fused forward."""
    y, _, _ = layer_norm_forward(x, norm.weight.data, norm.bias.data, norm.eps)  # (..., d)
    return y


def can_decode_fast(model: gpt.GPT, token_mask: np.ndarray, positions: np.ndarray, cache: KVCache) -> bool:
    """Whether ``fast_decode_step`` may compute this cached call of ``model``: the conditions of the
    module docstring. token_mask (B, T) bool and positions (B, T) are the ones ``GPT.forward``
    computed for the new tokens."""
    switched_on = _enabled and fused_kernels_enabled()
    plain_inference = not is_grad_enabled() and not model.training and model.cls_head is None
    return (
        switched_on
        and plain_inference
        and _inputs_fit(model, token_mask, positions, cache)
        and _has_standard_structure(model)
    )


def _inputs_fit(model: gpt.GPT, token_mask: np.ndarray, positions: np.ndarray, cache: KVCache) -> bool:
    """At least one new token; integer positions >= 0 of the tokens' shape (B, T); every layer's keys
    and values in the cache (B, H, T_past, hd) of the model's dtype, a key mask (B, T_past) and next
    positions (B,)."""
    B, T = token_mask.shape
    if T == 0 or positions.shape != (B, T) or positions.dtype.kind not in "iu" or positions.min() < 0:
        return False
    cfg = model.config
    if len(cache.keys) != cfg.n_layers or len(cache.values) != cfg.n_layers:
        return False
    if cache.key_mask is None or cache.next_position is None:
        return False
    shape = (B, cfg.n_heads, cache.length, cfg.head_dim)
    dtype = model.wte.weight.dtype
    for t in (*cache.keys, *cache.values):
        if t.shape != shape or t.dtype != dtype:
            return False
    return np.shape(cache.key_mask) == (B, cache.length) and np.shape(cache.next_position) == (B,)


def _has_standard_structure(model: gpt.GPT) -> bool:
    """Every module the step reads is of the standard class and no dropout is in training mode: a
    model whose modules were replaced or subclassed keeps the general path, which runs their forward."""
    if not (type(model.wte) is type(model.wpe) is Embedding and type(model.ln_f) is LayerNorm):
        return False
    dropouts = [model.drop]
    for block in model.blocks:
        if type(block) is not gpt.Block or not block.has_standard_modules():
            return False
        dropouts += [block.attn.resid_dropout, block.mlp.dropout]
    return all(type(dropout) is Dropout and not dropout.training for dropout in dropouts)


def fast_decode_step(
    model: gpt.GPT, ids: np.ndarray, token_mask: np.ndarray, positions: np.ndarray, cache: KVCache,
    use_cache: bool,
) -> gpt.GPTOutput:
    """``model(ids, attention_mask, position_ids, cache=cache, use_cache=use_cache)`` on the arrays.

    ids (B, T) continue the cached sequences (T = 1 when decoding; any T works), token_mask (B, T)
    marks their real tokens and positions (B, T) are their position ids, as ``GPT.forward`` checked
    and computed them. Returns the GPTOutput the general path would (no cls_logits); call it only
    where ``can_decode_fast`` holds.
    """
    B, T = ids.shape
    cfg = model.config
    H, hd, d = cfg.n_heads, cfg.head_dim, cfg.d_model
    Tk = cache.length + T  # keys: cached positions, then the new ones
    wte = model.wte.weight.data  # (V, d)
    x = wte[ids] + model.wpe.weight.data[positions]  # (B, T, d)

    # Query t may attend to key j when j is real and not after it; one additive mask for all layers.
    key_mask = np.concatenate([cache.key_mask, token_mask], axis=1)  # (B, Tk)
    visible = key_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if T > 1:
        visible = visible & causal_mask(T, Tk)  # (B, 1, T, Tk)
    score_mask = None if visible.all() else np.where(visible, 0, np.finfo(x.dtype).min)  # (B, 1, T|1, Tk)

    new_cache = KVCache() if use_cache else None
    for i, block in enumerate(model.blocks):
        attn, mlp = block.attn, block.mlp
        h = _layer_norm(x, block.ln_1).reshape(B * T, d)  # (B T, d)
        q = _affine(h, attn.q_proj).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        k = _affine(h, attn.k_proj).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        v = _affine(h, attn.v_proj).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        buffer = cache.write(i, k, v, cfg.context_length)  # appended in place when the cache owns its end
        k, v = buffer.arrays(Tk)  # (B, H, Tk, hd) each: views of [cached; new]
        y, _ = attention_forward(q, k, v, score_mask)  # (B, H, T, hd)
        y = y.transpose(0, 2, 1, 3).reshape(B * T, d)  # (B T, d), heads side by side
        x = x + _affine(y, attn.o_proj).reshape(B, T, d)  # (B, T, d)
        h = _layer_norm(x, block.ln_2).reshape(B * T, d)  # (B T, d)
        h, _ = gelu_forward(_affine(h, mlp.fc_in))  # (B T, d_ff)
        x = x + _affine(h, mlp.fc_out).reshape(B, T, d)  # (B, T, d)
        if new_cache is not None:
            new_cache.keys.append(Tensor._wrap(k))  # (B, H, Tk, hd)
            new_cache.values.append(Tensor._wrap(v))  # (B, H, Tk, hd)
            new_cache.buffers.append(buffer)
    h = _layer_norm(x, model.ln_f)  # (B, T, d)
    logits = np.matmul(h.reshape(B * T, d), wte.T).reshape(B, T, -1)  # (B, T, V), tied head

    if new_cache is not None:
        new_cache.key_mask = key_mask  # (B, Tk)
        new_cache.next_position = positions[:, -1] + 1  # (B,)
    return gpt.GPTOutput(logits=Tensor._wrap(logits), hidden=Tensor._wrap(h), cache=new_cache)
