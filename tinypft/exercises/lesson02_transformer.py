"""Checkers for lesson 2 (the transformer): the causal mask, LayerNorm, attention, multi-head
attention as ``CausalSelfAttention`` computes it, and a GPT's logits built from its parts; also a
GPT's parameter count, for a course that sets it as an exercise.

Each checker reports as ``common`` describes: one line when everything agrees, else an
``AssertionError`` naming the input, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine import Tensor, default_dtype, fused, set_fused_kernels
from ..engine import functional as F
from ..model import GPT, Block, CausalSelfAttention, GPTConfig
from ..nn import LayerNorm
from .common import (
    as_array,
    call_student,
    compare_arrays,
    fail,
    float64_leaf,
    forbid_forward,
    gradients_of,
    matches,
    passed,
    preserved_engine_state,
    refuse_library,
    require_tensor_with_graph,
)

# What each checker refuses: tinypft's own implementation of the exercise (label -> object).
LIBRARY: dict[str, dict[str, Any]] = {
    "causal_mask": {"causal_mask (tinypft.engine.functional.causal_mask)": F.causal_mask,
                    "attention mask (GPT._attention_mask)": GPT._attention_mask},
    "attention": {"attention (tinypft.engine.functional.attention)": F.attention,
                  "fused attention (tinypft.engine.fused.attention)": fused.attention,
                  "fused attention (tinypft.engine.fused.Attention)": fused.Attention,
                  "CausalSelfAttention (tinypft.model.CausalSelfAttention)": CausalSelfAttention},
    "multi_head_attention": {"CausalSelfAttention.forward (tinypft.model.CausalSelfAttention)":
                             CausalSelfAttention, "Block (tinypft.model.Block)": Block},
    "layer_norm": {"layer_norm (tinypft.engine.functional.layer_norm)": F.layer_norm,
                   "fused layer_norm (tinypft.engine.fused.layer_norm)": fused.layer_norm,
                   "fused LayerNorm (tinypft.engine.fused.LayerNorm)": fused.LayerNorm,
                   "LayerNorm module (tinypft.nn.LayerNorm)": LayerNorm},
    "parameter_count": {"GPT (tinypft.model.GPT)": GPT,
                        "GPTConfig.num_parameters": GPTConfig.num_parameters},
    "gpt_logits": {"GPT.forward (tinypft.model.GPT)": GPT.forward,
                   "GPT._embed": GPT._embed, "GPT._run_blocks": GPT._run_blocks},
}
# Reading an attribute of one of these names is refused too (label of what it would use).
ATTRIBUTES: dict[str, dict[str, str]] = {
    "parameter_count": {"num_parameters": "parameter count (num_parameters)"},
    "gpt_logits": {"_embed": "GPT._embed", "_run_blocks": "GPT._run_blocks"},
}


def check_causal_mask(fn: Callable[[int, int], np.ndarray]) -> None:
    """``fn(num_queries, num_keys)`` must equal ``functional.causal_mask``: boolean, True where allowed."""
    check = "check_causal_mask"
    refuse_library(check, fn, LIBRARY["causal_mask"])
    sizes = [(1, 1), (4, 4), (5, 5), (1, 5), (3, 7), (2, 3)]
    hint = (
        "queries are the LAST num_queries positions: query i sits at key position num_keys - num_queries + i "
        "and may see every key up to and including that position"
    )
    for tq, tk in sizes:
        got = call_student(check, f"fn({tq}, {tk})", fn, tq, tk)
        got_array = np.asarray(got)
        if got_array.shape != (tq, tk):
            fail(
                check,
                f"fn({tq}, {tk}): got shape {got_array.shape}, expected shape {(tq, tk)}",
                "rows are queries, columns are keys",
            )
        if got_array.dtype != np.bool_:
            fail(
                check,
                f"fn({tq}, {tk}): got dtype {got_array.dtype}, expected bool",
                "compare positions (<=) to get a boolean array; True means 'may attend'",
            )
        expected = F.causal_mask(tq, tk)
        if tq != tk and np.array_equal(got_array, np.tril(np.ones((tq, tk), bool))):
            fail(
                check,
                f"fn({tq}, {tk}): this is tril of ones, which ignores the keys in front of the queries\n"
                f"  got:\n{got_array.astype(int)}\n  expected:\n{expected.astype(int)}",
                hint,
            )
        if np.array_equal(got_array, ~expected):
            fail(
                check,
                f"fn({tq}, {tk}): True and False are swapped",
                "True means the query MAY attend to the key",
            )
        if not np.array_equal(got_array, expected):
            fail(
                check,
                f"fn({tq}, {tk}): wrong mask\n  got:\n{got_array.astype(int)}\n"
                f"  expected:\n{expected.astype(int)}",
                hint,
            )
    passed(check, f"{len(sizes)} sizes, including fewer queries than keys, as with a KV cache")


def _layer_norm_variants(x: Tensor, w: Tensor, b: Tensor, eps: float) -> list[tuple[np.ndarray, str]]:
    xd, wd, bd = x.data, w.data, b.data
    mu = xd.mean(-1, keepdims=True)
    return [
        (
          (xd - mu) / np.sqrt(xd.var(-1, ddof=1, keepdims=True) + eps) * wd + bd,
          "this divides the variance by d - 1; LayerNorm uses the biased variance mean((x - mean)^2)",
        ),
        (
          (xd - mu) / (np.sqrt(xd.var(-1, keepdims=True)) + eps) * wd + bd,
          "eps goes inside the square root: (x - mean) / sqrt(var + eps)",
        ),
        (
          (xd - mu) / np.sqrt(xd.var(-1, keepdims=True) + eps),
          "the result must be scaled by weight and shifted by bias: x_hat * weight + bias",
        ),
        (
          (xd - xd.mean()) / np.sqrt(xd.var() + eps) * wd + bd,
          "normalize each row over the LAST axis only (axis=-1, keepdims=True), not over the whole tensor",
        ),
    ]


def check_layer_norm(fn: Callable[[Tensor, Tensor, Tensor, float], Tensor]) -> None:
    """``fn(x, weight, bias, eps)``, built from Tensor ops, must match ``functional.layer_norm`` in value
    and gradient."""
    check = "check_layer_norm"
    refuse_library(check, fn, LIBRARY["layer_norm"])
    rng = np.random.default_rng(4)
    cases = [((4, 6), 1.0, 0.0), ((2, 3, 5), 5.0, 10.0), ((1, 8), 3.0, -100.0), ((3, 1, 4), 0.1, 0.0)]
    for shape, scale, shift in cases:
        d = shape[-1]
        x = float64_leaf(rng.standard_normal(shape) * scale + shift)
        w, b = float64_leaf(rng.standard_normal(d) + 1.0), float64_leaf(rng.standard_normal(d))
        where = f"x of shape {shape} (values around {shift:g}, spread {scale:g})"
        out = call_student(check, where, fn, x, w, b, 1e-5)
        out = require_tensor_with_graph(check, where, out, [x, w, b])
        with preserved_engine_state():
            set_fused_kernels(False)
            ref = F.layer_norm(x, w, b, 1e-5)
        if not matches(out, ref.data):
            for candidate, hint in _layer_norm_variants(x, w, b, 1e-5):
                if matches(out, candidate):
                    fail(check, f"{where}: the values are wrong", hint)
        compare_arrays(
            check,
            f"{where}: output",
            out,
            ref.data,
            "y = (x - mean) / sqrt(var + eps) * weight + bias; mean, var over the last axis, keepdims=True",
        )
        g = rng.standard_normal(shape)
        got_grads = call_student(check, f"{where}: backward", gradients_of, out, g, [x, w, b])
        ref_grads = gradients_of(ref, g, [x, w, b])
        for label, got_g, ref_g in zip(("x", "weight", "bias"), got_grads, ref_grads):
            compare_arrays(
                check,
                f"{where}: gradient of {label}",
                got_g,
                ref_g,
                "the values agree but the gradients do not: is part of the computation done in NumPy?",
            )
    passed(check, f"{len(cases)} inputs, values and the gradients of x, weight and bias")


def _attention_variants(
    q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None
) -> list[tuple[np.ndarray, str]]:
    qd, kd, vd = q.data, k.data, v.data
    d = qd.shape[-1]

    def attend(scores: np.ndarray, axis: int = -1, fill: float | None = None) -> np.ndarray:
        if mask is not None:
            scores = np.where(mask, scores, np.finfo(scores.dtype).min if fill is None else fill)
        scores = scores - scores.max(axis=axis, keepdims=True)
        w = np.exp(scores)
        return (w / w.sum(axis=axis, keepdims=True)) @ vd

    raw = qd @ np.swapaxes(kd, -1, -2)
    variants = [
        (attend(raw), "divide the scores q k^T by sqrt(d), d = q.shape[-1] (the head size)"),
        (attend(raw / d), "the scale is 1 / sqrt(d), not 1 / d"),
    ]
    if raw.shape[-1] == raw.shape[-2]:
        variants.append((attend(raw / np.sqrt(d), axis=-2), "softmax over the KEYS: the last axis (axis=-1)"))
    if mask is not None:
        unmasked = np.exp(raw / np.sqrt(d) - (raw / np.sqrt(d)).max(-1, keepdims=True))
        variants.append(
            (
              (unmasked / unmasked.sum(-1, keepdims=True)) @ vd,
              "apply the mask: scores where mask is False must get (almost) zero weight",
            )
        )
        variants.append(
            (
              attend(raw / np.sqrt(d), fill=0.0),
              "masked scores must become very negative "
              "(np.finfo(dtype).min), not 0, so that softmax gives them weight 0",
            )
        )
        flipped = np.where(mask, np.finfo(raw.dtype).min, raw / np.sqrt(d))
        flipped = np.exp(flipped - flipped.max(-1, keepdims=True))
        variants.append(
            (
              (flipped / flipped.sum(-1, keepdims=True)) @ vd,
              "the mask is True where attending is ALLOWED: fill the scores where it is False (~mask)",
            )
        )
    return variants


def check_attention(fn: Callable[[Tensor, Tensor, Tensor, np.ndarray | None], Tensor]) -> None:
    """``fn(q, k, v, mask)`` must match ``functional.attention`` in value and gradient.

    q (B, H, Tq, d), k and v (B, H, Tk, d), mask boolean broadcastable to (B, H, Tq, Tk) or None."""
    check = "check_attention"
    refuse_library(check, fn, LIBRARY["attention"])
    rng = np.random.default_rng(5)
    padding = np.ones((2, 1, 4, 4), bool)
    padding[1, :, :, :2] = False  # row 1: its first two keys are padding
    padding[1, :, :2, :] = False  # ... and so are its first two queries, whose rows are then fully masked
    cases = [
        ("no mask, B=1, H=1, T=4, d=3", (1, 1, 4, 3), (1, 1, 4, 3), None),
        ("causal mask (5, 5), B=2, H=2, d=4", (2, 2, 5, 4), (2, 2, 5, 4), F.causal_mask(5, 5)),
        (
          "3 queries, 6 keys (a KV cache), causal mask (3, 6)",
          (2, 2, 3, 4),
          (2, 2, 6, 4),
          F.causal_mask(3, 6),
        ),
        (
          "padding mask (2, 1, 4, 4) with fully masked rows",
          (2, 3, 4, 2),
          (2, 3, 4, 2),
          padding & F.causal_mask(4, 4),
        ),
    ]
    for name, q_shape, kv_shape, mask in cases:
        q, k, v = (
            float64_leaf(rng.standard_normal(q_shape)),
            float64_leaf(rng.standard_normal(kv_shape)),
            float64_leaf(rng.standard_normal(kv_shape)),
        )
        out = call_student(check, name, fn, q, k, v, mask)
        out = require_tensor_with_graph(check, name, out, [q, k, v])
        with preserved_engine_state():
            set_fused_kernels(False)
            ref = F.attention(q, k, v, mask)
        got = as_array(out)
        if got.shape == ref.shape and np.isnan(got).any():
            fail(
                check,
                f"{name}: your output contains NaN",
                "a query whose keys are all masked gets NaN when masked scores are -inf; "
                "fill them with np.finfo(scores.dtype).min instead, which gives such a row uniform weights",
            )
        if not matches(out, ref.data):
            for candidate, hint in _attention_variants(q, k, v, mask):
                if matches(out, candidate):
                    fail(check, f"{name}: the values are wrong", hint)
        compare_arrays(
            check,
            f"{name}: output",
            out,
            ref.data,
            "softmax(q k^T / sqrt(d), masked where mask is False) @ v, softmax over the last axis",
        )
        g = rng.standard_normal(ref.shape)
        for label, got_g, ref_g in zip(
            "qkv",
            call_student(check, f"{name}: backward", gradients_of, out, g, [q, k, v]),
            gradients_of(ref, g, [q, k, v]),
        ):
            compare_arrays(
                check,
                f"{name}: gradient of {label}",
                got_g,
                ref_g,
                "the values agree but the gradients do not: is part of the computation done in NumPy?",
            )
    passed(
        check,
        f"{len(cases)} cases: no mask, causal, KV-cache offset, padding; values and gradients of q, k, v",
    )


def _attention_module(d_model: int, n_heads: int, seed: int) -> CausalSelfAttention:
    with preserved_engine_state():
        config = GPTConfig(vocab_size=8, context_length=8, d_model=d_model, n_layers=1, n_heads=n_heads)
        with default_dtype(np.float64):
            attn = CausalSelfAttention(config)
    rng = np.random.default_rng(seed)
    for _, p in attn.named_parameters():
        p.data[...] = rng.normal(0.0, 0.5, size=p.shape)  # random biases too, so that every one matters
    return attn


def _split_heads_wrongly(attn: CausalSelfAttention, x: Tensor, mask: np.ndarray) -> np.ndarray:
    B, T, d = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, v = (p(x).reshape(B, H, T, hd) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    y = F.attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d)
    return attn.o_proj(y).data


def _without_output_projection(attn: CausalSelfAttention, x: Tensor, mask: np.ndarray) -> np.ndarray:
    B, T, d = x.shape
    q, k, v = (attn.split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return F.attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d).data


def check_multi_head_attention(fn: Callable[[CausalSelfAttention, Tensor, np.ndarray], Tensor]) -> None:
    """``fn(attn, x, mask)`` must equal ``attn(x, mask)[0]`` for a ``CausalSelfAttention`` ``attn``, in value
    and in the gradients of x and of every projection's weight and bias."""
    check = "check_multi_head_attention"
    refuse_library(check, fn, LIBRARY["multi_head_attention"])
    rng = np.random.default_rng(6)
    cases = [(8, 2, 1, 5), (12, 3, 2, 4), (8, 1, 2, 3), (8, 4, 1, 6)]
    for i, (d, H, B, T) in enumerate(cases):
        attn = _attention_module(d, H, seed=10 + i)
        x = float64_leaf(rng.standard_normal((B, T, d)))
        mask = F.causal_mask(T, T)[None, None] & np.ones((B, 1, 1, T), bool)  # (B, 1, T, T)
        if B > 1:
            mask[1, :, :, 0] = False  # the second row's first token is padding
        where = f"d_model={d}, n_heads={H}, x of shape {(B, T, d)}"
        with forbid_forward(check, attn, "CausalSelfAttention forward, attn(x, mask)"):
            out = call_student(check, where, fn, attn, x, mask)
        out = require_tensor_with_graph(check, where, out, [x])
        ref, _ = attn(x, mask)
        if not matches(out, ref.data):
            with preserved_engine_state():
                if matches(out, _split_heads_wrongly(attn, x, mask)):
                    fail(
                        check,
                        f"{where}: the heads are split wrongly",
                        "reshape (B, T, d) to (B, T, H, hd), then permute(0, 2, 1, 3) to (B, H, T, hd); "
                        "reshaping straight to (B, H, T, hd) mixes positions and heads",
                    )
                if matches(out, _without_output_projection(attn, x, mask)):
                    fail(
                        check,
                        f"{where}: the output projection is missing",
                        "after merging the heads back to (B, T, d), apply attn.o_proj",
                    )
        compare_arrays(
            check,
            f"{where}: output",
            out,
            ref.data,
            "q = split_heads(attn.q_proj(x)), same for k, v; attention(q, k, v, mask); merge; attn.o_proj",
        )
        names, params = zip(*attn.named_parameters())
        g = rng.standard_normal(ref.shape)
        got_grads = call_student(check, f"{where}: backward", gradients_of, out, g, [x, *params])
        ref_grads = gradients_of(ref, g, [x, *params])
        for label, got_g, ref_g in zip(("x", *names), got_grads, ref_grads):
            compare_arrays(
                check,
                f"{where}: gradient of {label}",
                got_g,
                ref_g,
                "use the module's own projections (attn.q_proj, ...) so its parameters get their gradients",
            )
    passed(
        check, f"{len(cases)} configurations, 1 to 4 heads; values and gradients of x and all 8 parameters"
    )


def _parameter_parts(config: GPTConfig) -> dict[str, int]:
    d, f, L = config.d_model, int(config.d_ff or 4 * config.d_model), config.n_layers
    return {
        "token embeddings wte (vocab_size x d_model)": config.vocab_size * d,
        "position embeddings wpe (context_length x d_model)": config.context_length * d,
        "the q, k, v, o projection weights (4 d^2 per block)": L * 4 * d * d,
        "the q, k, v, o projection biases (4 d per block)": L * 4 * d,
        "the MLP weights (2 d d_ff per block)": L * 2 * d * f,
        "the MLP biases (d_ff + d per block)": L * (f + d),
        "the two LayerNorms of each block (weight and bias: 4 d per block)": L * 4 * d,
        "the final LayerNorm ln_f (2 d)": 2 * d,
    }


def check_parameter_count(fn: Callable[[GPTConfig], int]) -> None:
    """``fn(config)`` must return the number of parameters of ``GPT(config)`` (the LM head is tied to wte)."""
    check = "check_parameter_count"
    refuse_library(check, fn, LIBRARY["parameter_count"], ATTRIBUTES["parameter_count"])
    configs = [
        GPTConfig(vocab_size=16, context_length=12, d_model=8, n_layers=2, n_heads=2),
        GPTConfig(vocab_size=50, context_length=20, d_model=12, n_layers=1, n_heads=3, d_ff=20),
        GPTConfig(vocab_size=30, context_length=8, d_model=16, n_layers=3, n_heads=4),
        GPTConfig(),
        GPTConfig(vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12),
    ]
    for i, config in enumerate(configs):
        if i < 3:
            with preserved_engine_state():
                expected = GPT(config).num_parameters()
        else:
            expected = config.num_parameters()
        where = (
            f"GPTConfig(vocab_size={config.vocab_size}, context_length={config.context_length}, "
            f"d_model={config.d_model}, n_layers={config.n_layers}, n_heads={config.n_heads}, "
            f"d_ff={config.d_ff})"
        )
        got = call_student(check, where, fn, config)
        if not isinstance(got, int | np.integer):
            fail(check, f"{where}: returned {type(got).__name__}, expected an int")
        if got == expected:
            continue
        diff = int(got) - expected
        parts = _parameter_parts(config)
        culprits = [name for name, n in parts.items() if abs(diff) == n]
        if diff == config.vocab_size * config.d_model:
            hint = "the LM head is tied to the token embeddings (logits = h @ wte^T): count the table once"
        elif culprits:
            hint = f"you {'counted twice' if diff > 0 else 'left out'} " + " or ".join(culprits)
        else:
            hint = "count, per part: " + "; ".join(parts)
        fail(check, f"{where}: got {got}, expected {expected} (difference {diff:+d})", hint)
    passed(check, f"{len(configs)} configurations, up to the size of GPT-2 small, 124M parameters")




def _gpt_by_parts(model: GPT, ids: np.ndarray, positions: bool = True, causal: bool = True,
                  final_norm: bool = True) -> np.ndarray:
    """The logits of ``model`` on ``ids`` from its parts, optionally leaving one part out (a mistake)."""
    B, T = ids.shape
    h = model.wte(ids)
    if positions:
        h = h + model.wpe(np.arange(T))
    mask = F.causal_mask(T, T) if causal else np.ones((T, T), bool)
    for block in model.blocks:
        h, _ = block(h, mask)
    if final_norm:
        h = model.ln_f(h)
    return F.linear(h, model.wte.weight).data


def check_gpt_logits(fn: Callable[[GPT, np.ndarray], Tensor]) -> None:
    """``fn(model, ids)`` must compute the logits (B, T, V) of a ``GPT`` on unpadded token ids (B, T) from
    the model's parts (``wte``, ``wpe``, the blocks under the causal mask, ``ln_f`` and the head tied to
    ``wte``), equal to ``model(ids).logits`` in value and in the gradient of every parameter. Calling
    the model itself is refused."""
    check = "check_gpt_logits"
    refuse_library(check, fn, LIBRARY["gpt_logits"], ATTRIBUTES["gpt_logits"])
    rng = np.random.default_rng(7)
    cases = [(16, 12, 8, 1, 2, 1, 5), (20, 10, 8, 2, 2, 2, 6), (12, 8, 12, 3, 3, 2, 8)]
    for V, ctx, d, L, H, B, T in cases:
        config = GPTConfig(vocab_size=V, context_length=ctx, d_model=d, n_layers=L, n_heads=H)
        with preserved_engine_state(), default_dtype(np.float64):
            model = GPT(config)
        for _, p in model.named_parameters():
            p.data[...] = rng.normal(0.0, 0.4, size=p.shape)  # every bias and LayerNorm shift matters
        ids = rng.integers(0, V, (B, T))
        where = f"a {L}-layer GPT (V={V}, d={d}, {H} heads), ids of shape {(B, T)}"
        with forbid_forward(check, model, "GPT forward, model(ids)"):
            out = call_student(check, where, fn, model, ids,
                               hint="embed (wte and wpe), run the blocks with a causal mask, ln_f, tied head")
        params = [p for _, p in model.named_parameters()]
        out = require_tensor_with_graph(check, where, out, params)
        with preserved_engine_state():
            set_fused_kernels(False)
            ref = model(ids).logits
        if not matches(out, ref.data):
            mistakes = [
                (dict(positions=False),
                 "add the position embeddings: model.wpe(np.arange(T)), one row per position"),
                (dict(causal=False),
                 "each block needs the causal mask, F.causal_mask(T, T): no token may see the ones after it"),
                (dict(final_norm=False), "after the last block comes the final LayerNorm, model.ln_f"),
            ]
            for options, hint in mistakes:
                if matches(out, _gpt_by_parts(model, ids, **options)):
                    fail(check, f"{where}: the logits are wrong", hint)
        compare_arrays(check, f"{where}: logits", out, ref.data,
                       "logits = ln_f(blocks(wte[ids] + wpe[positions])) @ wte.weight^T (the head is tied)")
        g = rng.standard_normal(ref.shape)
        names = [name for name, _ in model.named_parameters()]
        got_grads = call_student(check, f"{where}: backward", gradients_of, out, g, params)
        for name, got_g, ref_g in zip(names, got_grads, gradients_of(ref, g, params)):
            compare_arrays(check, f"{where}: gradient of {name}", got_g, ref_g,
                           "use the model's own modules and tables so that its parameters get their "
                           "gradients; the head is wte.weight itself, not a copy")
    passed(check, f"{len(cases)} models of 1 to 3 layers; logits and the gradients of every parameter")
