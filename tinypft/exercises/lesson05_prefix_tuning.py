"""Checkers for lesson 5 (Prefix-Tuning): attention with a prefix of keys and values, the prefix
MLP (the reparameterization and the per-layer layout), and the parameter counts.

Each checker reports as ``common`` describes: one line when everything agrees, else an
``AssertionError`` naming the input, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..engine import Tensor, fused, ops, set_fused_kernels
from ..engine import functional as F
from ..model import GPT, Block, CausalSelfAttention, GPTConfig
from ..peft import PrefixEncoder, PrefixTuningModel, counts, get_peft_model
from ..peft.prefix import split_key_values
from .common import (
    call_student,
    compare_arrays,
    fail,
    float64_leaf,
    gradients_of,
    passed,
    preserved_engine_state,
    refuse_library,
    require_tensor_with_graph,
)

# What each checker refuses: tinypft's own implementation of the exercise (label -> object).
LIBRARY: dict[str, dict[str, Any]] = {
    "prefix_attention": {"CausalSelfAttention (tinypft.model.CausalSelfAttention)": CausalSelfAttention,
                         "Block (tinypft.model.Block)": Block, "GPT (tinypft.model.GPT)": GPT,
                         "fused attention (tinypft.engine.fused.attention)": fused.attention,
                         "fused attention (tinypft.engine.fused.Attention)": fused.Attention},
    "prefix_mlp": {"PrefixEncoder (tinypft.peft.PrefixEncoder)": PrefixEncoder,
                   "split_key_values (tinypft.peft.prefix.split_key_values)": split_key_values,
                   "PrefixTuningModel (tinypft.peft.PrefixTuningModel)": PrefixTuningModel,
                   "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
    "prefix_param_count": {"prefix_training_count (tinypft.peft.counts.prefix_training_count)":
                           counts.prefix_training_count,
                           "prefix_inference_count (tinypft.peft.counts.prefix_inference_count)":
                           counts.prefix_inference_count,
                           "trainable_parameter_count (tinypft.peft.counts.trainable_parameter_count)":
                           counts.trainable_parameter_count,
                           "PrefixEncoder (tinypft.peft.PrefixEncoder)": PrefixEncoder,
                           "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
}

# ----------------------------------------------------------------------------- attention with a prefix


def _np_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, scale: bool = True
) -> np.ndarray:
    """softmax(q k^T [/ sqrt(d)], masked) v in NumPy (float64), for the common mistakes."""
    scores = q @ np.swapaxes(k, -1, -2)
    if scale:
        scores = scores / np.sqrt(q.shape[-1])
    scores = np.where(mask, scores, np.finfo(np.float64).min)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def _prefix_attention_variants(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, pk: np.ndarray, pv: np.ndarray
) -> list[tuple[np.ndarray, str]]:
    """Outputs of common mistakes, each with the hint that explains it."""
    B, H, T, _ = q.shape
    P = pk.shape[2]
    pk, pv = np.broadcast_to(pk, (B, H) + pk.shape[2:]), np.broadcast_to(pv, (B, H) + pv.shape[2:])
    keys, values = np.concatenate([pk, k], axis=2), np.concatenate([pv, v], axis=2)
    right_mask = F.causal_mask(T, P + T)
    hide_prefix = right_mask.copy()
    hide_prefix[:, :P] = False
    return [
        (
          _np_attention(q, keys, values, np.tril(np.ones((T, P + T), bool))),
          "this is the mask tril(ones(T, P + T)), which lets query 0 see only the first prefix vector; "
          "the T queries are the LAST T of the P + T keys, so every query sees all P prefix vectors and "
          "the real keys up to its own position: F.causal_mask(T, P + T) is exactly that mask",
        ),
        (
          _np_attention(q, keys, values, np.ones((T, P + T), bool)),
          "no mask at all: the prefix is visible to every query, but the real keys stay causal "
          "(a token must not see the tokens after it)",
        ),
        (
          _np_attention(q, keys, values, hide_prefix),
          "the prefix is masked out, so it changes nothing: every query must see all P prefix positions",
        ),
        (
          _np_attention(q, np.concatenate([k, pk], axis=2), np.concatenate([v, pv], axis=2), right_mask),
          "the prefix goes in FRONT of the keys and values: K = [P_K; K], V = [P_V; V]",
        ),
        (
          _np_attention(q, keys, values, right_mask, scale=False),
          "scale the scores by 1 / sqrt(d_h), d_h = q.shape[-1]",
        ),
        (
          _np_attention(q, np.concatenate([pv, k], axis=2), np.concatenate([pk, v], axis=2), right_mask),
          "the prefix keys go with the keys and the prefix values with the values",
        ),
    ]


def _prefix_attention_cases() -> list[tuple[str, tuple[np.ndarray, ...]]]:
    rng = np.random.default_rng(50)

    def case(B: int, H: int, T: int, P: int, d: int, prefix_batch: int, scale: float = 1.0) -> tuple:
        q, k, v = (scale * rng.standard_normal((B, H, T, d)) for _ in range(3))
        pk, pv = (scale * rng.standard_normal((prefix_batch, H, P, d)) for _ in range(2))
        return q, k, v, pk, pv

    return [
        ("B=1, H=1, T=3, P=1, d_h=4", case(1, 1, 3, 1, 4, 1)),
        ("B=2, H=2, T=4, P=3, d_h=4, one prefix shared by the batch (prefix batch axis 1)",
         case(2, 2, 4, 3, 4, 1)),
        ("B=1, H=2, T=1, P=5, d_h=3 (a single query)", case(1, 2, 1, 5, 3, 1)),
        ("B=2, H=1, T=5, P=2, d_h=4, a prefix per example (prefix batch axis 2)",
         case(2, 1, 5, 2, 4, 2)),
        ("B=1, H=2, T=3, P=2, d_h=4, entries of size 30 (scores in the hundreds)",
         case(1, 2, 3, 2, 4, 1, 30.0)),
    ]


def check_prefix_attention(fn: Callable[..., Tensor]) -> None:
    """``fn(q, k, v, prefix_k, prefix_v)`` with Tensors q, k, v (B, H, T, d_h) and prefix_k, prefix_v
    (B or 1, H, P, d_h) must return softmax(q [P_K; K]^T / sqrt(d_h) + M) [P_V; V], (B, H, T, d_h),
    where M lets every query see all P prefix positions and the real keys causally, with gradients
    reaching all five inputs."""
    check = "check_prefix_attention"
    refuse_library(check, fn, LIBRARY["prefix_attention"])
    names = ["q", "k", "v", "prefix_k", "prefix_v"]
    grad_rng = np.random.default_rng(51)
    for where, arrays in _prefix_attention_cases():
        inputs = [float64_leaf(a) for a in arrays]
        B, H, T, d = arrays[0].shape
        P = arrays[3].shape[2]
        call = f"{where}: fn(q, k, v, prefix_k, prefix_v)"
        concat_hint = "concatenate along the positions axis: ops.concat([.., ..], axis=2)"
        out = call_student(check, call, fn, *inputs, hint=concat_hint)
        out = require_tensor_with_graph(check, call, out, inputs)
        if any(not np.array_equal(t.data, a) for t, a in zip(inputs, arrays)):
            fail(check, f"{call}: your function changed its inputs",
                 "build new tensors; do not write into .data")
        with preserved_engine_state():
            set_fused_kernels(False)
            ref_inputs = [float64_leaf(a) for a in arrays]
            q, k, v, pk, pv = ref_inputs
            keys = ops.concat([pk.broadcast_to((B, H, P, d)), k], axis=2)
            values = ops.concat([pv.broadcast_to((B, H, P, d)), v], axis=2)
            expected = F.attention(q, keys, values, F.causal_mask(T, P + T))
        got = out.data
        if got.shape != expected.shape:
            hint = None
            if got.shape[2] == P + T:
                hint = "only the T real tokens have queries: the output has T positions, not P + T"
            elif got.shape[0] != B:
                hint = "broadcast a prefix of batch 1 to the batch: prefix_k.broadcast_to((B, H, P, d_h))"
            fail(check, f"{call}: got shape {got.shape}, expected shape {expected.shape}", hint)
        if np.isnan(got).any() and not np.isnan(expected.data).any():
            fail(
                check,
                f"{call}: your result contains NaN",
                "scores in the hundreds overflow exp(): subtract each row's maximum before exp (or use "
                "F.softmax), and fill masked scores with np.finfo(dtype).min, not -inf",
            )
        if not np.allclose(got, expected.data, atol=1e-10, rtol=1e-8):
            hint = ("keys = [prefix_k; k] and values = [prefix_v; v] along axis 2, then attention with "
                    "the mask F.causal_mask(T, P + T)")
            for candidate, candidate_hint in _prefix_attention_variants(*arrays):
                if np.allclose(got, candidate, atol=1e-10, rtol=1e-8):
                    hint = candidate_hint
                    break
            compare_arrays(check, call, got, expected.data, hint, atol=1e-10, rtol=1e-8)
        grad_out = grad_rng.standard_normal(expected.shape)
        expected_grads = gradients_of(expected, grad_out, ref_inputs)
        got_grads = gradients_of(out, grad_out, inputs)
        for name, g, e in zip(names, got_grads, expected_grads):
            if name.startswith("prefix") and not np.abs(g).any() and np.abs(e).any():
                fail(
                    check,
                    f"{where}: {name} receives no gradient",
                    "the prefix is what trains: build the keys and values from it with Tensor operations "
                    "(ops.concat, .broadcast_to), not from its .data",
                )
            compare_arrays(check, f"{where}: the gradient of {name}", g, e, "use Tensor operations only",
                           atol=1e-8, rtol=1e-6)
    passed(check, "5 cases: P from 1 to 5, a shared and a per-example prefix, large scores; values and the "
                  "gradients of all five inputs")


# ----------------------------------------------------------------------------- the prefix MLP


def _flat_to_pairs(flat: np.ndarray, n_layers: int, n_heads: int, layout: str = "right") -> list[tuple]:
    """The flat prefix (P, 2 L d) as per-layer (K, V), each (1, H, P, d_h), in the right or a wrong layout."""
    P, width = flat.shape
    hd = width // (2 * n_layers * n_heads)
    if layout == "keys_first":  # all layers' keys, then all layers' values
        kv = flat.reshape(P, 2, n_layers, n_heads, hd).transpose(2, 1, 3, 0, 4)  # (L, 2, H, P, hd)
        return [(kv[i, 0][None], kv[i, 1][None]) for i in range(n_layers)]
    if layout == "no_permute":  # reshaped straight to (2L, H, P, hd), rows mixed up
        kv = flat.reshape(2 * n_layers, n_heads, P, hd)
    else:
        kv = flat.reshape(P, 2 * n_layers, n_heads, hd).transpose(1, 2, 0, 3)  # (2L, H, P, hd)
    if layout == "swapped":
        return [(kv[2 * i + 1][None], kv[2 * i][None]) for i in range(n_layers)]
    return [(kv[2 * i][None], kv[2 * i + 1][None]) for i in range(n_layers)]


def _prefix_mlp_numpy(emb: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray,
                      activation: str = "tanh") -> np.ndarray:
    pre = emb @ w1.T + b1
    hidden = {"tanh": np.tanh(pre), "none": pre, "relu": np.maximum(pre, 0.0)}[activation]
    return hidden @ w2.T + b2  # (P, 2 L d)


def _prefix_mlp_variants(arrays: Sequence[np.ndarray], L: int, H: int) -> list[tuple[list[tuple], str]]:
    right = _prefix_mlp_numpy(*arrays)
    emb, w1, b1, w2, b2 = arrays
    return [
        (_flat_to_pairs(_prefix_mlp_numpy(*arrays, activation="none"), L, H),
         "the MLP has a tanh between its two Linear layers: W_2 tanh(W_1 P' + b_1) + b_2"),
        (_flat_to_pairs(_prefix_mlp_numpy(*arrays, activation="relu"), L, H),
         "the paper's MLP uses tanh, not ReLU"),
        (_flat_to_pairs(np.tanh(emb @ w1.T + b1) @ w2.T, L, H), "add the output bias b_2"),
        (_flat_to_pairs(np.tanh(emb @ w1.T) @ w2.T + b2, L, H), "add the hidden bias b_1 inside the tanh"),
        (_flat_to_pairs(right, L, H, "keys_first"),
         "row p of the prefix matrix is ordered layer 0 keys, layer 0 values, layer 1 keys, ...: view it as "
         "(P, 2L, H, d_h), then layer i's keys are index 2i and its values 2i + 1"),
        (_flat_to_pairs(right, L, H, "no_permute"),
         "a reshape alone mixes up the P rows: reshape to (P, 2L, H, d_h) first, then permute to "
         "(2L, H, P, d_h)"),
        (_flat_to_pairs(right, L, H, "swapped"), "keys come first in each layer's pair: (K, V)"),
    ]


def _pairs_match(got: list[tuple[np.ndarray, ...]], candidate: list[tuple[np.ndarray, ...]]) -> bool:
    return all(
        g.shape == c.shape and np.allclose(g, c, atol=1e-10, rtol=1e-8)
        for got_pair, cand_pair in zip(got, candidate) for g, c in zip(got_pair, cand_pair)
    )


def check_prefix_mlp(fn: Callable[..., Any]) -> None:
    """``fn(embedding, w1, b1, w2, b2, n_layers, n_heads)`` must compute the reparameterized prefix
    P_theta = tanh(P' W_1^T + b_1) W_2^T + b_2, (P, 2 L d), with Tensors P' (P, d), W_1 (k, d), b_1 (k,),
    W_2 (2 L d, k), b_2 (2 L d,) (``Linear``'s layout: weight (out, in)), and return it as a list of
    n_layers pairs (K, V), each (1, H, P, d_h): what ``PrefixTuningModel.prefix_key_values`` returns."""
    from ..peft.prefix import split_key_values

    check = "check_prefix_mlp"
    refuse_library(check, fn, LIBRARY["prefix_mlp"])
    rng = np.random.default_rng(52)
    shapes = [(1, 4, 3, 1, 1), (3, 4, 5, 2, 2), (5, 6, 8, 3, 2), (2, 8, 4, 2, 4)]  # P, d, k, L, H
    names = ["embedding", "w1", "b1", "w2", "b2"]
    for P, d, k, L, H in shapes:
        width = 2 * L * d
        arrays = [rng.standard_normal((P, d)), rng.standard_normal((k, d)) / np.sqrt(d),
                  0.5 * rng.standard_normal(k), rng.standard_normal((width, k)) / np.sqrt(k),
                  0.5 * rng.standard_normal(width)]
        inputs = [float64_leaf(a) for a in arrays]
        where = f"P={P}, d={d}, k={k}, n_layers={L}, n_heads={H}"
        call = f"{where}: fn(embedding, w1, b1, w2, b2, {L}, {H})"
        out = call_student(check, call, fn, *inputs, L, H,
                           hint="h = (embedding @ w1.T + b1).tanh() @ w2.T + b2")
        shape = (1, H, P, d // H)
        layout_hint = f"return a list of n_layers = {L} pairs (K, V), each a Tensor of shape {shape}"
        if not isinstance(out, list | tuple) or len(out) != L:
            length = f"of length {len(out)}" if isinstance(out, list | tuple) else ""
            fail(check, f"{call}: returned {type(out).__name__} {length}, expected a list of {L} pairs",
                 layout_hint)
        for i, pair in enumerate(out):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                fail(check, f"{call}: entry {i} is not a pair (K, V)", layout_hint)
            for which, t in zip("KV", pair):
                require_tensor_with_graph(check, f"{call}: layer {i} {which}", t, inputs)
                if t.shape != shape:
                    fail(check, f"{call}: layer {i} {which} has shape {t.shape}, expected {shape}",
                         layout_hint)
        with preserved_engine_state():
            set_fused_kernels(False)
            ref_inputs = [float64_leaf(a) for a in arrays]
            emb, w1, b1, w2, b2 = ref_inputs
            expected = split_key_values((emb @ w1.T + b1).tanh() @ w2.T + b2, L, H)
        got = [(pair[0].data, pair[1].data) for pair in out]
        if not _pairs_match(got, [(kk.data, vv.data) for kk, vv in expected]):
            hint = ("P_theta = tanh(P' W_1^T + b_1) W_2^T + b_2, then view it as (P, 2L, H, d_h) and "
                    "permute to (2L, H, P, d_h): layer i's K is index 2i, its V index 2i + 1")
            for candidate, candidate_hint in _prefix_mlp_variants(arrays, L, H):
                if _pairs_match(got, candidate):
                    hint = candidate_hint
                    break
            for i, ((gk, gv), (ek, ev)) in enumerate(zip(got, expected)):
                compare_arrays(check, f"{where}: layer {i} K", gk, ek.data, hint, atol=1e-10, rtol=1e-8)
                compare_arrays(check, f"{where}: layer {i} V", gv, ev.data, hint, atol=1e-10, rtol=1e-8)
        # gradients: one random projection of every output
        grad_rng = np.random.default_rng(53)
        projections = [grad_rng.standard_normal(shape) for _ in range(2 * L)]

        def total(pairs: Sequence[Sequence[Tensor]], projections: list[np.ndarray] = projections) -> Tensor:
            result = None
            for j, t in enumerate(x for pair in pairs for x in pair):
                term = (t * Tensor(projections[j], dtype=np.float64)).sum()
                result = term if result is None else result + term
            return result

        expected_grads = gradients_of(total(expected), np.array(1.0), ref_inputs)
        got_grads = gradients_of(total(out), np.array(1.0), inputs)
        for name, g, e in zip(names, got_grads, expected_grads):
            compare_arrays(check, f"{where}: the gradient of {name}", g, e, "use Tensor operations only "
                           "(@, .T, .tanh(), .reshape, .permute, indexing)", atol=1e-8, rtol=1e-6)
    passed(check, f"{len(shapes)} shapes, 1 to 3 layers and 1 to 4 heads; values, layout and gradients")


# ----------------------------------------------------------------------------- parameter counts


def check_prefix_param_count(fn: Callable[[int, int, int, int], tuple[int, int]]) -> None:
    """``fn(P, n_layers, d_model, hidden)`` must return (trained, stored): the scalars that train through
    the MLP reparameterization (P' and both Linear layers with their biases), and the scalars of the
    merged prefix that inference needs and the adapter file stores (P x 2 L d)."""
    from ..peft import PrefixTuningConfig, get_peft_model
    from ..peft.counts import GPT2_MEDIUM, prefix_inference_count, prefix_training_count

    check = "check_prefix_param_count"
    refuse_library(check, fn, LIBRARY["prefix_param_count"])
    cases = [
        ("one layer, d=4, k=3, P=1", 1, 1, 4, 3),
        ("the tiny checkpoint's shape (2 layers, d=32), P=10, k=512", 10, 2, 32, 512),
        ("the small checkpoint's shape (4 layers, d=128), P=10, k=512", 10, 4, 128, 512),
        ("GPT-2 medium (24 layers, d=1024), P=5, k=512, the paper's E2E setting", 5, 24, 1024, 512),
        ("6 layers, d=240, P=20, k=800 (the paper's XSUM width)", 20, 6, 240, 800),
    ]
    for where, P, L, d, k in cases:
        call = f"{where}: fn({P}, {L}, {d}, {k})"
        got = call_student(check, call, fn, P, L, d, k)
        if not isinstance(got, list | tuple) or len(got) != 2:
            fail(check, f"{call}: returned {got!r:.80}, expected a pair (trained, stored)",
                 "return two numbers: return trained, stored")
        if not all(isinstance(n, int | np.integer) for n in got):
            fail(check, f"{call}: returned {got!r}, expected two ints",
                 "count with integer arithmetic (no /)")
        config = GPTConfig(vocab_size=64, context_length=32, d_model=d, n_layers=L, n_heads=1)
        trained, stored = prefix_training_count(config, P, k), prefix_inference_count(config, P)
        width = 2 * L * d
        if int(got[0]) != trained:
            hints = {
                P * d + d * k + k * width: "each Linear has a bias: (d k + k) and (k 2Ld + 2Ld)",
                P * d + (d * k + k) + (k * L * d + L * d):
                    "every layer has keys AND values: the MLP's output width is 2 L d",
                P * width + (d * k + k) + (k * width + width):
                    "P' is (P, d), the width of a token embedding; the MLP widens it to 2 L d",
                P * width: "this is the merged prefix; while training, P' (P, d) and the MLP train instead",
                (d * k + k) + (k * width + width): "P' itself (P x d) trains too",
            }
            fail(check, f"{call}: trained = {int(got[0]):,}, expected {trained:,}",
                 hints.get(int(got[0]), "trained = P d + (d k + k) + (k 2Ld + 2Ld)"))
        if int(got[1]) != stored:
            hints = {  # later entries win where two formulas agree (one layer: P L d = P d)
                P * d: "the stored prefix lives in every layer's keys and values: P x 2 L d, not P x d",
                P * L * d: "every layer stores P keys AND P values: P x 2 L d",
                trained: "after merge() the MLP is gone: only its output, P x 2 L d, is stored",
            }
            fail(check, f"{call}: stored = {int(got[1]):,}, expected {stored:,}",
                 hints.get(int(got[1]), "stored = P x 2 L d"))
    # the same numbers from a model
    with preserved_engine_state():
        config = GPTConfig(vocab_size=64, context_length=32, d_model=16, n_layers=3, n_heads=2)
        model = get_peft_model(GPT(config), PrefixTuningConfig(num_virtual_tokens=4, encoder_hidden_size=8))
        trained = model.get_nb_trainable_parameters()[0]
        stored = model.merge().get_nb_trainable_parameters()[0]
    got = call_student(check, "fn(4, 3, 16, 8)", fn, 4, 3, 16, 8)
    if tuple(int(n) for n in got) != (trained, stored):
        fail(check, f"fn(4, 3, 16, 8): got {tuple(got)}, a PrefixTuningModel counts {(trained, stored)}")
    shown = prefix_inference_count(GPT2_MEDIUM, 5)
    passed(check, f"{len(cases) + 1} shapes, up to GPT-2 medium ({shown:,} stored scalars for P = 5), "
                  "and a PrefixTuningModel before and after merge()")
