"""Checkers for lesson 6 (Prompt-Tuning): putting a soft prompt in front of the token embeddings,
the sampled-vocabulary and class-label initializations, and the majority vote of a prompt ensemble.

Each checker reports as ``common`` describes: one line when everything agrees, else an
``AssertionError`` naming the input, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine import Tensor, ops
from ..model import GPT
from ..peft import PromptEnsemble, PromptTuningModel, get_peft_model
from ..peft import prompt as library_prompt
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
    "prepend_prompt": {"PromptTuningModel (tinypft.peft.PromptTuningModel)": PromptTuningModel,
                       "GPT (tinypft.model.GPT)": GPT,
                       "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
    "init": {"frequent_token_ids (tinypft.peft.prompt.frequent_token_ids)": library_prompt.frequent_token_ids,
             "sample_vocab_ids (tinypft.peft.prompt.sample_vocab_ids)": library_prompt.sample_vocab_ids,
             "initial_prompt (tinypft.peft.prompt.initial_prompt)": library_prompt.initial_prompt,
             "label_token_ids (tinypft.peft.prompt.label_token_ids)": library_prompt.label_token_ids,
             "PromptTuningModel (tinypft.peft.PromptTuningModel)": PromptTuningModel,
             "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
    "majority_vote": {"majority_vote (tinypft.peft.prompt.majority_vote)": library_prompt.majority_vote,
                      "PromptEnsemble (tinypft.peft.PromptEnsemble)": PromptEnsemble},
}

# ----------------------------------------------------------------------------- prepending the prompt


def _prepend_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(60)

    def case(P: int, B: int, T: int, d: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return rng.standard_normal((P, d)), rng.standard_normal((B, T, d)), mask

    return [
        ("P=1, B=1, T=3, d=4, no padding", *case(1, 1, 3, 4, np.ones((1, 3), np.int64))),
        ("P=3, B=2, T=4, d=5, the second row right-padded", *case(3, 2, 4, 5, np.array([[1, 1, 1, 1],
                                                                                       [1, 1, 0, 0]]))),
        ("P=2, B=3, T=5, d=3, left padding (as for generation)",
         *case(2, 3, 5, 3, np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]))),
        ("P=4, B=2, T=1, d=2, one token per row", *case(4, 2, 1, 2, np.ones((2, 1), np.int64))),
    ]


def check_prepend_prompt(fn: Callable[..., Any]) -> None:
    """``fn(prompt, token_embeddings, attention_mask)`` with a Tensor prompt (P, d), Tensor token
    embeddings (B, T, d) and a 0/1 mask (B, T) must return the pair ``(inputs, mask)``: the Tensor
    [prompt; x] (B, P + T, d), the same prompt in front of every row (padding included), and the mask
    (B, P + T) whose first P columns are 1, followed by ``attention_mask``. Gradients must reach the
    prompt (summed over the batch) and the token embeddings."""
    check = "check_prepend_prompt"
    refuse_library(check, fn, LIBRARY["prepend_prompt"])
    grad_rng = np.random.default_rng(61)
    for where, prompt_array, x_array, mask in _prepend_cases():
        P, d = prompt_array.shape
        B, T, _ = x_array.shape
        prompt, x = float64_leaf(prompt_array), float64_leaf(x_array)
        mask_in = mask.copy()
        call = f"{where}: fn(prompt, token_embeddings, attention_mask)"
        out = call_student(check, call, fn, prompt, x, mask_in,
                           hint="the prompt is (P, d): .reshape(1, P, d).broadcast_to((B, P, d)), then "
                                "ops.concat([prompt_rows, token_embeddings], axis=1)")
        if not isinstance(out, list | tuple) or len(out) != 2:
            fail(check, f"{call}: returned {type(out).__name__}, expected a pair (inputs, mask)",
                 "return two things: the (B, P + T, d) Tensor and the (B, P + T) mask")
        embeds, got_mask = out
        embeds = require_tensor_with_graph(check, f"{call}: inputs", embeds, [prompt, x])
        if not np.array_equal(mask_in, mask) or not np.array_equal(prompt.data, prompt_array) or \
                not np.array_equal(x.data, x_array):
            fail(check, f"{call}: your function changed its inputs",
                 "build new arrays; do not write into them")
        rows = np.broadcast_to(prompt_array, (B, P, d))  # the same prompt for every row
        expected = np.concatenate([rows, x_array], axis=1)  # (B, P + T, d)
        if embeds.shape != expected.shape:
            hint = f"the inputs are [prompt; x]: P + T = {P + T} positions, each of width d = {d}"
            if embeds.shape == x_array.shape:
                hint = ("the prompt is concatenated in front of the tokens, not added to them: the model "
                        f"reads P + T = {P + T} positions")
            fail(check, f"{call}: inputs have shape {embeds.shape}, expected {expected.shape}", hint)
        if not np.allclose(embeds.data, expected, atol=1e-12):
            hint = "inputs[b] = [prompt; token_embeddings[b]]: the P prompt rows first, then the T tokens"
            if np.allclose(embeds.data, np.concatenate([x_array, rows], axis=1)):
                hint = ("the soft prompt goes in FRONT of the tokens (positions 0..P-1), where a text prompt "
                        "would be: [prompt; x]")
            compare_arrays(check, f"{call}: inputs", embeds.data, expected, hint, atol=1e-12)
        expected_mask = np.concatenate([np.ones((B, P), bool), mask.astype(bool)], axis=1)  # (B, P + T)
        got_mask = np.asarray(got_mask)
        mask_hint = "the mask is [ones(B, P), attention_mask]: the prompt is always visible"
        if got_mask.shape != expected_mask.shape:
            if got_mask.shape == mask.shape:
                mask_hint = (f"the mask must cover the P prompt positions too: shape (B, P + T) = "
                             f"{expected_mask.shape}, ones in the first P columns (Hugging Face PEFT issue "
                             "#374: a mask P columns short)")
            fail(check, f"{call}: the mask has shape {got_mask.shape}, expected {expected_mask.shape}",
                 mask_hint)
        if got_mask.dtype.kind not in "biuf" or not np.isin(got_mask, (0, 1)).all():
            fail(check, f"{call}: the mask holds {_show_values(got_mask)}, expected 0/1 (or True/False)",
                 mask_hint)
        got_bool = got_mask.astype(bool)
        if not np.array_equal(got_bool, expected_mask):
            if not got_bool[:, :P].any() and np.array_equal(got_bool[:, P:], expected_mask[:, P:]):
                mask_hint = "the prompt positions must be visible: 1 in the first P columns, not 0"
            elif np.array_equal(got_bool, np.concatenate([mask.astype(bool), np.ones((B, P), bool)], axis=1)):
                mask_hint = "the mask's columns follow the inputs: the P ones of the prompt come first"
            compare_arrays(check, f"{call}: the mask", got_bool, expected_mask, mask_hint)
        # gradients: the prompt's gradient is the sum over the batch of its rows' gradients
        grad_out = grad_rng.standard_normal(expected.shape)
        with preserved_engine_state():
            ref_prompt, ref_x = float64_leaf(prompt_array), float64_leaf(x_array)
            ref = ops.concat([ref_prompt.reshape(1, P, d).broadcast_to((B, P, d)), ref_x], axis=1)
        expected_grads = gradients_of(ref, grad_out, [ref_prompt, ref_x])
        got_grads = gradients_of(embeds, grad_out, [prompt, x])
        for name, g, e in zip(("prompt", "token_embeddings"), got_grads, expected_grads):
            if not np.abs(g).any() and np.abs(e).any():
                fail(check, f"{where}: {name} receives no gradient",
                     "the soft prompt is what trains: build the inputs from it with Tensor operations "
                     "(.reshape, .broadcast_to, ops.concat), not from its .data")
            compare_arrays(check, f"{where}: the gradient of {name}", g, e,
                           "use Tensor operations only; every row of the batch uses the same prompt",
                           atol=1e-10, rtol=1e-8)
    passed(check, "4 cases: P from 1 to 4, no padding, right and left padding; inputs, mask and the "
                  "gradients of the prompt and the token embeddings")


def _show_values(a: np.ndarray) -> str:
    values = np.unique(a)
    return ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")


# ----------------------------------------------------------------------------- initializations


def _init_cases() -> list[tuple[str, np.ndarray, np.ndarray, int, int, int]]:
    """(where, wte (V, d), token_counts (V,), P, top_k, seed)."""
    rng = np.random.default_rng(62)
    V, d = 40, 6
    wte = rng.standard_normal((V, d))
    counts = np.zeros(V, np.int64)
    counts[rng.choice(V, 12, replace=False)] = [50, 40, 40, 40, 30, 20, 20, 10, 5, 5, 2, 1]  # ties on purpose
    few = np.zeros(V, np.int64)
    few[[3, 17, 29]] = [7, 7, 2]
    return [
        ("V=40, 12 tokens occur (with ties), top_k=8, P=5", wte, counts, 5, 8, 0),
        ("V=40, 12 tokens occur, top_k=5, P=5 (the whole pool)", wte, counts, 5, 5, 1),
        ("V=40, 12 tokens occur, top_k=100 (more than occur), P=7", wte, counts, 7, 100, 2),
        ("V=40, only 3 tokens occur, top_k=10, P=6 (more rows than the pool: draw with replacement)",
         wte, few, 6, 10, 3),
    ]


def _library_pool(counts: np.ndarray, top_k: int) -> np.ndarray:
    from ..peft.prompt import frequent_token_ids

    return frequent_token_ids(len(counts), top_k, counts)


def _library_draw(counts: np.ndarray, top_k: int, n: int, seed: int) -> np.ndarray:
    from ..peft.prompt import sample_vocab_ids

    return sample_vocab_ids(n, _library_pool(counts, top_k), np.random.default_rng(seed))


def _row_ids(rows: np.ndarray, wte: np.ndarray) -> list[int | None]:
    """Which token's embedding each row is (None if none)."""
    ids: list[int | None] = []
    for row in rows:
        hits = np.flatnonzero(np.all(np.isclose(wte, row, atol=1e-12, rtol=0), axis=1))
        ids.append(int(hits[0]) if len(hits) else None)
    return ids


def _check_sampled_rows(
    check: str, call: str, rows: np.ndarray, wte: np.ndarray, counts: np.ndarray, top_k: int,
    expected_ids: np.ndarray, what: str = "row",
) -> None:
    """Fail with a hint unless ``rows`` are the embeddings of ``expected_ids``."""
    pool = _library_pool(counts, top_k)
    ids = _row_ids(rows, wte)
    draw_hint = ("draw with rng.choice(pool, size=n, replace=n > len(pool)), where pool = the ids of the "
                 "top_k most frequent tokens that occur, most frequent first and ties by the smaller id: "
                 "np.argsort(-counts, kind='stable')[:top_k] (keep counts > 0); the same generator then "
                 "gives the library's rows")
    for i, token in enumerate(ids):
        label = f"{what} {i}"
        if token is None:
            fail(check, f"{call}: {label} is not the embedding of any token",
                 "every sampled row is a copy of one token's embedding, wte[id] (not random numbers)")
        if counts[token] == 0:
            fail(check, f"{call}: {label} is the embedding of token {token}, which never occurs (count 0)",
                 "the pool is the top_k most frequent tokens among those that occur (count > 0)")
        if token not in pool:
            rank = int(np.sum(counts > counts[token])) + 1
            fail(check, f"{call}: {label} is token {token}, only about the {rank}th most frequent; "
                        f"the pool is the {len(pool)} most frequent ones",
                 "keep only the top_k most frequent tokens (most frequent first)")
    if len(expected_ids) <= len(pool) and len(set(ids)) < len(ids):
        fail(check, f"{call}: a token was drawn twice ({ids}), but the pool has {len(pool)} >= "
                    f"{len(expected_ids)} tokens", "draw without replacement when the pool is large enough: "
                    "replace=n > len(pool)")
    if ids != [int(t) for t in expected_ids]:
        fail(check, f"{call}: the {what}s are the embeddings of tokens {ids}, the library draws "
                    f"{[int(t) for t in expected_ids]} with the same generator", draw_hint)


def check_sampled_vocab_init(fn: Callable[..., Any]) -> None:
    """``fn(wte, P, token_counts, top_k, rng)`` must return the sampled-vocabulary prompt (P, d): the
    embeddings ``wte[ids]`` of P ids drawn by ``rng.choice(pool, size=P, replace=P > len(pool))`` from
    the pool of the ``top_k`` most frequent tokens that occur (``token_counts > 0``), most frequent
    first and ties by the smaller id, as ``tinypft.peft.prompt.initial_prompt`` does for
    ``init="sampled_vocab"``."""
    check = "check_sampled_vocab_init"
    refuse_library(check, fn, LIBRARY["init"])
    for where, wte, counts, P, top_k, seed in _init_cases():
        wte_in, counts_in = wte.copy(), counts.copy()
        call = f"{where}: fn(wte, {P}, token_counts, {top_k}, rng)"
        got = call_student(check, call, fn, wte_in, P, counts_in, top_k, np.random.default_rng(seed),
                           hint="pool = np.argsort(-token_counts, kind='stable')[:top_k] (only counts > 0); "
                                "ids = rng.choice(pool, size=P, replace=P > len(pool)); return wte[ids]")
        if not np.array_equal(wte_in, wte) or not np.array_equal(counts_in, counts):
            fail(check, f"{call}: your function changed its inputs",
                 "copy the rows: wte[ids] is already a copy")
        got = np.asarray(got.data if isinstance(got, Tensor) else got)
        if got.shape != (P, wte.shape[1]):
            fail(check, f"{call}: got shape {got.shape}, expected {(P, wte.shape[1])}",
                 "one row of width d per virtual token")
        _check_sampled_rows(check, call, got, wte, counts, top_k, _library_draw(counts, top_k, P, seed))
    passed(check, "4 cases: ties, a pool of exactly P, top_k above the tokens that occur, and a pool "
                  "smaller than P; the same rows as the library with the same generator")


def _label_cases() -> list[tuple[str, np.ndarray, np.ndarray, list[list[int]], int, int, int]]:
    """(where, wte, counts, label_ids, P, top_k, seed)."""
    (_, wte, counts, *_), *_ = _init_cases()
    return [
        ("3 one-token labels, P=5, top_k=8", wte, counts, [[4], [9], [21]], 5, 8, 4),
        ("2 labels, the second of 3 tokens, P=4, top_k=6", wte, counts, [[7], [11, 2, 30]], 4, 6, 5),
        ("3 labels, P=3 (no sampled rows)", wte, counts, [[1], [2], [3, 5]], 3, 8, 6),
        ("2 labels of 2 tokens, P=8, top_k=5 (the pool of 5 is smaller than the 6 other rows)", wte, counts,
         [[0, 1], [38, 39]], 8, 5, 7),
    ]


def check_class_label_init(fn: Callable[..., Any]) -> None:
    """``fn(wte, label_ids, P, token_counts, top_k, rng)`` must return the class-label prompt (P, d):
    row c is the embedding of label c (the mean of its tokens' embeddings for a label of several
    tokens), and the remaining P - C rows are sampled vocabulary (P - C ids drawn as in
    ``check_sampled_vocab_init``); more labels than P raise a ValueError. This is
    ``initial_prompt`` for ``init="class_labels"``."""
    check = "check_class_label_init"
    refuse_library(check, fn, LIBRARY["init"])
    for where, wte, counts, labels, P, top_k, seed in _label_cases():
        C = len(labels)
        call = f"{where}: fn(wte, {labels}, {P}, token_counts, {top_k}, rng)"
        got = call_student(check, call, fn, wte.copy(), [list(ids) for ids in labels], P, counts.copy(),
                           top_k, np.random.default_rng(seed))
        got = np.asarray(got.data if isinstance(got, Tensor) else got)
        if got.shape != (P, wte.shape[1]):
            fail(check, f"{call}: got shape {got.shape}, expected {(P, wte.shape[1])}",
                 "P rows: the C label rows, then P - C sampled rows")
        label_rows = np.stack([wte[ids].mean(axis=0) for ids in labels])  # (C, d)
        if not np.allclose(got[:C], label_rows, atol=1e-12):
            hint = "row c is wte[label_ids[c]].mean(axis=0): the mean embedding of label c's tokens"
            if np.allclose(got[P - C:], label_rows, atol=1e-12) and P > C:
                hint = "the label rows come first (rows 0..C-1), the sampled rows after them"
            elif np.allclose(got[:C], np.stack([wte[ids].sum(axis=0) for ids in labels]), atol=1e-12):
                hint = "a label of several tokens is their mean embedding, not their sum"
            elif np.allclose(got[:C], np.stack([wte[ids[0]] for ids in labels]), atol=1e-12):
                hint = ("a label of several tokens is the mean of ALL its tokens' embeddings, not the "
                        "first one's")
            compare_arrays(check, f"{call}: the label rows 0..{C - 1}", got[:C], label_rows, hint, atol=1e-12)
        if P > C:
            expected_ids = _library_draw(counts, top_k, P - C, seed)
            got_ids = _row_ids(got[C:], wte)
            if got_ids != [int(t) for t in expected_ids] and \
                    got_ids == [int(t) for t in _library_draw(counts, top_k, P, seed)[C:]]:
                fail(check, f"{call}: rows {C}..{P - 1} are the last P - C of a draw of P tokens",
                     "draw only the P - C tokens that remain after the labels: "
                     "rng.choice(pool, size=P - C, ...)")
            _check_sampled_rows(check, call, got[C:], wte, counts, top_k, expected_ids, what="sampled row")
    # too many labels
    where = "4 labels, P=3"
    wte, counts = _label_cases()[0][1:3]
    try:
        fn(wte, [[1], [2], [3], [4]], 3, counts, 8, np.random.default_rng(0))
    except NotImplementedError:
        raise
    except ValueError:
        pass
    except Exception as exc:
        fail(check, f"{where}: your function raised {type(exc).__name__}: {exc}, expected a ValueError",
             "check first: if len(label_ids) > P: raise ValueError(...)")
    else:
        fail(check, f"{where}: your function returned, expected a ValueError (4 labels need 4 rows)",
             "one row per label: if len(label_ids) > P, raise ValueError(...)")
    passed(check, "4 cases: one-token and multi-token labels, no sampled rows, a pool smaller than the "
                  "rest; and a ValueError for more labels than P")


# ----------------------------------------------------------------------------- the majority vote


def _vote_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(63)
    return [
        ("one prompt (N=1)", np.array([[2, 0, 1, 1]])),
        ("N=3 prompts, 4 examples, clear majorities", np.array([[0, 1, 2, 2], [0, 1, 1, 2], [1, 1, 2, 0]])),
        ("N=3, votes 0, 0, 2 for the first example (their mean rounds to 1)",
         np.array([[0, 2, 1], [0, 2, 1], [2, 2, 1]])),
        ("N=2, every example a tie", np.array([[0, 2, 1, 2], [1, 1, 2, 0]])),
        ("N=4, ties between two classes and class 0 never voted", np.array([[2, 1, 3], [1, 1, 3], [2, 3, 1],
                                                                           [1, 3, 1]])),
        ("N=5, 30 examples, 6 classes", rng.integers(0, 6, (5, 30))),
        ("N=6, 12 examples, 3 classes", rng.integers(0, 3, (6, 12))),
    ]


def _vote_variants(predictions: np.ndarray) -> list[tuple[np.ndarray, str]]:
    C = int(predictions.max()) + 1
    votes = np.stack([np.bincount(col, minlength=C) for col in predictions.T])  # (B, C)
    return [
        (C - 1 - np.argmax(votes[:, ::-1], axis=1),
         "a tie goes to the SMALLEST class id (np.argmax does that)"),
        (np.round(predictions.mean(axis=0)).astype(int),
         "the mean of class ids is not a vote (0, 0, 2 average to 0.67): count the votes for each class"),
        (predictions[0], "this is the first prompt's answer: count every prompt's vote"),
        (predictions.max(axis=0),
         "this is the largest class anyone voted for: count the votes for each class"),
    ]


def check_majority_vote(fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """``fn(predictions)`` with the class ids (N, B) that N prompts predict for B examples must return
    the most frequent class of each column (B,) as ints, a tie going to the smallest class id:
    ``tinypft.peft.prompt.majority_vote``."""
    from ..peft.prompt import majority_vote

    check = "check_majority_vote"
    refuse_library(check, fn, LIBRARY["majority_vote"])
    for where, predictions in _vote_cases():
        given = predictions.copy()
        call = f"{where}: fn(predictions of shape {predictions.shape})"
        got = call_student(check, call, fn, given,
                           hint="for each column (example), np.bincount(column, minlength=C) counts the "
                                "votes and np.argmax picks the most frequent class (the smallest on a tie)")
        if not np.array_equal(given, predictions):
            fail(check, f"{call}: your function changed its input", "count without writing into predictions")
        expected = majority_vote(predictions)
        got = np.asarray(got)
        if got.shape != expected.shape:
            hint = "one answer per example: vote down each column (axis 0 holds the N prompts)"
            fail(check, f"{call}: got shape {got.shape}, expected {expected.shape}", hint)
        if got.dtype.kind not in "iu":
            fail(check, f"{call}: got an array of {got.dtype}, expected integer class ids",
                 "return class indices (ints), e.g. from np.argmax")
        if not np.array_equal(got, expected):
            hint = "the most frequent class in each column, a tie going to the smallest class id"
            for candidate, candidate_hint in _vote_variants(predictions):
                if np.array_equal(got, candidate):
                    hint = candidate_hint
                    break
            compare_arrays(check, call, got, expected, hint)
    passed(check, f"{len(_vote_cases())} cases: N from 1 to 6 prompts, ties, classes nobody voted for, "
                  "up to 30 examples and 6 classes")


__all__ = [
    "check_class_label_init", "check_majority_vote", "check_prepend_prompt", "check_sampled_vocab_init",
]
