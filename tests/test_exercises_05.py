"""The checkers of lesson 5 (Prefix-Tuning): right answers pass, wrong ones fail with a message that
names the input and gives a hint, and an unfinished exercise raises its own NotImplementedError.

RIGHT, WRONG and LESSON are run through the generic tests of test_exercises.py; this module adds
the tests particular to this lesson."""

from __future__ import annotations

import numpy as np

from tinypft import Tensor, exercises
from tinypft.engine import functional as F
from tinypft.engine import ops

# ----------------------------------------------------------------------------- right answers


def prefix_attention(q, k, v, prefix_k, prefix_v):
    B, H, T, d = q.shape
    P = prefix_k.shape[2]
    keys = ops.concat([prefix_k.broadcast_to((B, H, P, d)), k], axis=2)  # (B, H, P + T, d)
    values = ops.concat([prefix_v.broadcast_to((B, H, P, d)), v], axis=2)
    scores = (q @ keys.transpose(-2, -1)) * (1.0 / np.sqrt(d))  # (B, H, T, P + T)
    allowed = np.concatenate([np.ones((T, P), bool), np.tril(np.ones((T, T), bool))], axis=1)
    scores = scores.masked_fill(~allowed, float(np.finfo(scores.dtype).min))
    return F.softmax(scores, axis=-1) @ values


def prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    flat = (embedding @ w1.T + b1).tanh() @ w2.T + b2  # (P, 2 L d)
    P, width = flat.shape
    hd = width // (2 * n_layers * n_heads)
    kv = flat.reshape(P, 2 * n_layers, n_heads, hd).permute(1, 2, 0, 3)  # (2L, H, P, hd)
    return [(kv[2 * i].reshape(1, n_heads, P, hd), kv[2 * i + 1].reshape(1, n_heads, P, hd))
            for i in range(n_layers)]


def prefix_param_count(P, n_layers, d_model, hidden):
    width = 2 * n_layers * d_model
    trained = P * d_model + (d_model * hidden + hidden) + (hidden * width + width)
    return trained, P * width


RIGHT = [
    (exercises.check_prefix_attention, prefix_attention),
    (exercises.check_prefix_mlp, prefix_mlp),
    (exercises.check_prefix_param_count, prefix_param_count),
]

# The right answers above also run through the generic checks in test_exercises.py.


def test_prefix_attention_may_use_the_offset_causal_mask(capsys):
    def with_library_mask(q, k, v, prefix_k, prefix_v):
        B, H, T, d = q.shape
        P = prefix_k.shape[2]
        keys = ops.concat([prefix_k.broadcast_to((B, H, P, d)), k], axis=2)
        values = ops.concat([prefix_v.broadcast_to((B, H, P, d)), v], axis=2)
        return F.attention(q, keys, values, F.causal_mask(T, P + T))

    exercises.check_prefix_attention(with_library_mask)
    assert "passed" in capsys.readouterr().out


def test_prefix_param_count_accepts_numpy_integers(capsys):
    exercises.check_prefix_param_count(lambda *args: tuple(np.int64(n) for n in prefix_param_count(*args)))
    assert "passed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- wrong answers


def _attention_with(q, keys, values, allowed, scale=True):
    scores = q @ keys.transpose(-2, -1)
    if scale:
        scores = scores * (1.0 / np.sqrt(q.shape[-1]))
    scores = scores.masked_fill(~allowed, float(np.finfo(scores.dtype).min))
    return F.softmax(scores, axis=-1) @ values


def _keys_values(k, v, prefix_k, prefix_v, prefix_first=True):
    B, H, T, d = k.shape
    P = prefix_k.shape[2]
    pk, pv = prefix_k.broadcast_to((B, H, P, d)), prefix_v.broadcast_to((B, H, P, d))
    if prefix_first:
        return ops.concat([pk, k], axis=2), ops.concat([pv, v], axis=2)
    return ops.concat([k, pk], axis=2), ops.concat([v, pv], axis=2)


def tril_mask_attention(q, k, v, prefix_k, prefix_v):
    T, P = q.shape[2], prefix_k.shape[2]
    keys, values = _keys_values(k, v, prefix_k, prefix_v)
    return _attention_with(q, keys, values, np.tril(np.ones((T, P + T), bool)))


def unmasked_attention(q, k, v, prefix_k, prefix_v):
    T, P = q.shape[2], prefix_k.shape[2]
    keys, values = _keys_values(k, v, prefix_k, prefix_v)
    return _attention_with(q, keys, values, np.ones((T, P + T), bool))


def prefix_hidden_attention(q, k, v, prefix_k, prefix_v):
    T, P = q.shape[2], prefix_k.shape[2]
    keys, values = _keys_values(k, v, prefix_k, prefix_v)
    allowed = np.concatenate([np.zeros((T, P), bool), np.tril(np.ones((T, T), bool))], axis=1)
    return _attention_with(q, keys, values, allowed)


def prefix_after_attention(q, k, v, prefix_k, prefix_v):
    T, P = q.shape[2], prefix_k.shape[2]
    keys, values = _keys_values(k, v, prefix_k, prefix_v, prefix_first=False)
    return _attention_with(q, keys, values, F.causal_mask(T, P + T))


def unscaled_prefix_attention(q, k, v, prefix_k, prefix_v):
    T, P = q.shape[2], prefix_k.shape[2]
    keys, values = _keys_values(k, v, prefix_k, prefix_v)
    return _attention_with(q, keys, values, F.causal_mask(T, P + T), scale=False)


def detached_prefix_attention(q, k, v, prefix_k, prefix_v):
    frozen_k, frozen_v = (Tensor(t.data, dtype=np.float64) for t in (prefix_k, prefix_v))
    return prefix_attention(q, k, v, frozen_k, frozen_v)


def no_broadcast_attention(q, k, v, prefix_k, prefix_v):
    keys, values = ops.concat([prefix_k, k], axis=2), ops.concat([prefix_v, v], axis=2)
    T, P = q.shape[2], prefix_k.shape[2]
    return _attention_with(q, keys, values, F.causal_mask(T, P + T))


def overflowing_prefix_attention(q, k, v, prefix_k, prefix_v):
    T, P = q.shape[2], prefix_k.shape[2]
    keys, values = _keys_values(k, v, prefix_k, prefix_v)
    scores = (q @ keys.transpose(-2, -1)) * (1.0 / np.sqrt(q.shape[-1]))
    scores = scores.masked_fill(~F.causal_mask(T, P + T), -np.inf)
    with np.errstate(over="ignore", invalid="ignore"):
        e = scores.exp()
        return (e / e.sum(axis=-1, keepdims=True)) @ values


def all_positions_attention(q, k, v, prefix_k, prefix_v):
    keys, values = _keys_values(k, v, prefix_k, prefix_v)
    return ops.concat([prefix_k.broadcast_to((q.shape[0],) + prefix_k.shape[1:]),
                       prefix_attention(q, k, v, prefix_k, prefix_v)], axis=2)


def _split(flat, n_layers, n_heads):
    P, width = flat.shape
    hd = width // (2 * n_layers * n_heads)
    kv = flat.reshape(P, 2 * n_layers, n_heads, hd).permute(1, 2, 0, 3)
    return [(kv[2 * i].reshape(1, n_heads, P, hd), kv[2 * i + 1].reshape(1, n_heads, P, hd))
            for i in range(n_layers)]


def linear_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    return _split((embedding @ w1.T + b1) @ w2.T + b2, n_layers, n_heads)


def relu_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    return _split((embedding @ w1.T + b1).relu() @ w2.T + b2, n_layers, n_heads)


def unbiased_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    return _split((embedding @ w1.T + b1).tanh() @ w2.T, n_layers, n_heads)


def keys_first_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    flat = (embedding @ w1.T + b1).tanh() @ w2.T + b2
    P, width = flat.shape
    hd = width // (2 * n_layers * n_heads)
    kv = flat.reshape(P, 2, n_layers, n_heads, hd).permute(1, 2, 3, 0, 4)  # (2, L, H, P, hd)
    return [(kv[0, i].reshape(1, n_heads, P, hd), kv[1, i].reshape(1, n_heads, P, hd))
            for i in range(n_layers)]


def reshaped_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    flat = (embedding @ w1.T + b1).tanh() @ w2.T + b2
    P, width = flat.shape
    hd = width // (2 * n_layers * n_heads)
    kv = flat.reshape(2 * n_layers, n_heads, P, hd)
    return [(kv[2 * i].reshape(1, n_heads, P, hd), kv[2 * i + 1].reshape(1, n_heads, P, hd))
            for i in range(n_layers)]


def swapped_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    return [(v, k) for k, v in prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads)]


def flat_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    return (embedding @ w1.T + b1).tanh() @ w2.T + b2


def numpy_prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads):
    pairs = prefix_mlp(embedding, w1, b1, w2, b2, n_layers, n_heads)
    return [(Tensor(k.data, dtype=np.float64), Tensor(v.data, dtype=np.float64)) for k, v in pairs]


def count(P, L, d, k, trained=None, stored=None):
    right_trained, right_stored = prefix_param_count(P, L, d, k)
    return (right_trained if trained is None else trained, right_stored if stored is None else stored)


WRONG = [
    (exercises.check_prefix_attention, tril_mask_attention,
     r"tril\(ones\(T, P \+ T\)\).*causal_mask\(T, P \+ T\)"),
    (exercises.check_prefix_attention, unmasked_attention, "real keys stay causal"),
    (exercises.check_prefix_attention, prefix_hidden_attention, "prefix is masked out"),
    (exercises.check_prefix_attention, prefix_after_attention, "in FRONT"),
    (exercises.check_prefix_attention, unscaled_prefix_attention, "sqrt"),
    (exercises.check_prefix_attention, detached_prefix_attention, "prefix_k receives no gradient"),
    (exercises.check_prefix_attention, no_broadcast_attention,
     "shared by the batch.*your function raised.*concat"),
    (exercises.check_prefix_attention, overflowing_prefix_attention, "NaN.*subtract each row's maximum"),
    (exercises.check_prefix_attention, all_positions_attention, "only the T real tokens have queries"),
    (exercises.check_prefix_mlp, linear_prefix_mlp, "tanh between"),
    (exercises.check_prefix_mlp, relu_prefix_mlp, "not ReLU"),
    (exercises.check_prefix_mlp, unbiased_prefix_mlp, "output bias b_2"),
    (exercises.check_prefix_mlp, keys_first_prefix_mlp, "layer 0 keys, layer 0 values"),
    (exercises.check_prefix_mlp, reshaped_prefix_mlp, "a reshape alone mixes up"),
    (exercises.check_prefix_mlp, swapped_prefix_mlp, r"keys come first.*\(K, V\)"),
    (exercises.check_prefix_mlp, flat_prefix_mlp, "expected a list of 1 pairs"),
    (exercises.check_prefix_mlp, numpy_prefix_mlp, "not connected to the inputs"),
    (exercises.check_prefix_param_count,
     lambda P, L, d, k: count(P, L, d, k, trained=P * d + d * k + k * 2 * L * d), "has a bias"),
    (exercises.check_prefix_param_count,
     lambda P, L, d, k: count(P, L, d, k, trained=P * d + d * k + k + k * L * d + L * d), "keys AND values"),
    (exercises.check_prefix_param_count,
     lambda P, L, d, k: count(P, L, d, k, stored=P * L * d), r"P keys AND P values"),
    (exercises.check_prefix_param_count,
     lambda P, L, d, k: count(P, L, d, k, stored=count(P, L, d, k)[0]), "the MLP is gone"),
    (exercises.check_prefix_param_count,
     lambda P, L, d, k: count(P, L, d, k, trained=count(P, L, d, k)[1]), "this is the merged prefix"),
    (exercises.check_prefix_param_count, lambda P, L, d, k: count(P, L, d, k)[0], "expected a pair"),
    (exercises.check_prefix_param_count, lambda P, L, d, k: tuple(map(float, count(P, L, d, k))),
     "expected two ints"),
]
LESSON = "05_prefix_tuning.ipynb"  # the notebook whose checkers RIGHT and WRONG exercise
