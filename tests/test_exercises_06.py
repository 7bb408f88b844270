"""The checkers of lesson 6 (Prompt-Tuning): right answers pass, wrong ones fail with a message that
names the input and gives a hint, and an unfinished exercise raises its own NotImplementedError.

RIGHT, WRONG and LESSON are run through the generic tests of test_exercises.py; this module adds
the tests particular to this lesson."""

from __future__ import annotations

import numpy as np
import pytest

from tinypft import Tensor, exercises
from tinypft.engine import ops

# ----------------------------------------------------------------------------- right answers


def prepend_prompt(prompt, token_embeddings, attention_mask):
    B, T, d = token_embeddings.shape
    P = prompt.shape[0]
    rows = prompt.reshape(1, P, d).broadcast_to((B, P, d))
    mask = np.concatenate([np.ones((B, P), dtype=np.asarray(attention_mask).dtype), attention_mask], axis=1)
    return ops.concat([rows, token_embeddings], axis=1), mask


def frequent_pool(token_counts, top_k):
    order = np.argsort(-np.asarray(token_counts), kind="stable")
    return order[: min(top_k, int((np.asarray(token_counts) > 0).sum()))]


def sampled_vocab_init(wte, P, token_counts, top_k, rng):
    pool = frequent_pool(token_counts, top_k)
    return wte[rng.choice(pool, size=P, replace=P > len(pool))]


def class_label_init(wte, label_ids, P, token_counts, top_k, rng):
    if len(label_ids) > P:
        raise ValueError(f"{len(label_ids)} labels do not fit in {P} rows")
    labels = np.stack([wte[ids].mean(axis=0) for ids in label_ids])
    return np.concatenate([labels, sampled_vocab_init(wte, P - len(label_ids), token_counts, top_k, rng)])


def majority_vote(predictions):
    C = int(predictions.max()) + 1
    votes = np.stack([np.bincount(column, minlength=C) for column in predictions.T])  # (B, C)
    return np.argmax(votes, axis=1)


RIGHT = [
    (exercises.check_prepend_prompt, prepend_prompt),
    (exercises.check_sampled_vocab_init, sampled_vocab_init),
    (exercises.check_class_label_init, class_label_init),
    (exercises.check_majority_vote, majority_vote),
]

# The right answers above also run through the generic checks in test_exercises.py.


def test_prepend_prompt_may_return_a_boolean_mask(capsys):
    def boolean_mask(prompt, token_embeddings, attention_mask):
        embeds, mask = prepend_prompt(prompt, token_embeddings, attention_mask)
        return embeds, mask.astype(bool)

    exercises.check_prepend_prompt(boolean_mask)
    assert "passed" in capsys.readouterr().out


def test_majority_vote_may_use_a_counting_loop(capsys):
    def counting(predictions):
        out = []
        for column in predictions.T:
            values, counts = np.unique(column, return_counts=True)
            out.append(values[np.argmax(counts)])
        return np.array(out)

    exercises.check_majority_vote(counting)
    assert "passed" in capsys.readouterr().out


def test_the_library_itself_is_refused():
    from tinypft.exercises.common import Refused
    from tinypft.peft.prompt import majority_vote as library_vote

    with pytest.raises(Refused, match="majority_vote"):
        exercises.check_majority_vote(library_vote)


# ----------------------------------------------------------------------------- wrong answers


def prompt_after(prompt, token_embeddings, attention_mask):
    B, T, d = token_embeddings.shape
    P = prompt.shape[0]
    rows = prompt.reshape(1, P, d).broadcast_to((B, P, d))
    mask = prepend_prompt(prompt, token_embeddings, attention_mask)[1]
    return ops.concat([token_embeddings, rows], axis=1), mask


def mask_not_extended(prompt, token_embeddings, attention_mask):
    return prepend_prompt(prompt, token_embeddings, attention_mask)[0], attention_mask


def mask_with_zeros(prompt, token_embeddings, attention_mask):
    embeds, mask = prepend_prompt(prompt, token_embeddings, attention_mask)
    mask = mask.copy()
    mask[:, : prompt.shape[0]] = 0
    return embeds, mask


def mask_ones_after(prompt, token_embeddings, attention_mask):
    B, P = attention_mask.shape[0], prompt.shape[0]
    embeds = prepend_prompt(prompt, token_embeddings, attention_mask)[0]
    return embeds, np.concatenate([attention_mask, np.ones((B, P), attention_mask.dtype)], axis=1)


def detached_prompt(prompt, token_embeddings, attention_mask):
    return prepend_prompt(Tensor(prompt.data, dtype=np.float64), token_embeddings, attention_mask)


def unbroadcast_prompt(prompt, token_embeddings, attention_mask):
    P, d = prompt.shape
    embeds = ops.concat([prompt.reshape(1, P, d), token_embeddings], axis=1)
    return embeds, prepend_prompt(prompt, token_embeddings, attention_mask)[1]


def added_prompt(prompt, token_embeddings, attention_mask):
    B, T, d = token_embeddings.shape
    P = prompt.shape[0]
    padded = np.zeros((T, d))
    rows = ops.concat([prompt[:T], Tensor(padded[: max(T - P, 0)], dtype=np.float64)], axis=0)
    return token_embeddings + rows, attention_mask


def embeds_only(prompt, token_embeddings, attention_mask):
    return prepend_prompt(prompt, token_embeddings, attention_mask)[0]


def uniform_init(wte, P, token_counts, top_k, rng):
    return rng.uniform(-0.5, 0.5, size=(P, wte.shape[1]))


def whole_vocab_init(wte, P, token_counts, top_k, rng):
    return wte[rng.choice(len(wte), size=P, replace=False)]


def least_frequent_init(wte, P, token_counts, top_k, rng):
    pool = np.argsort(token_counts, kind="stable")[:top_k]
    return wte[rng.choice(pool, size=P, replace=P > len(pool))]


def no_top_k_init(wte, P, token_counts, top_k, rng):
    pool = frequent_pool(token_counts, len(wte))
    return wte[rng.choice(pool, size=P, replace=P > len(pool))]


def with_replacement_init(wte, P, token_counts, top_k, rng):
    return wte[rng.choice(frequent_pool(token_counts, top_k), size=P)]


def reversed_ties_init(wte, P, token_counts, top_k, rng):
    counts = np.asarray(token_counts)
    order = np.argsort(counts, kind="stable")[::-1]
    pool = order[: min(top_k, int((counts > 0).sum()))]
    return wte[rng.choice(pool, size=P, replace=P > len(pool))]


def first_token_label_init(wte, label_ids, P, token_counts, top_k, rng):
    labels = np.stack([wte[ids[0]] for ids in label_ids])
    return np.concatenate([labels, sampled_vocab_init(wte, P - len(label_ids), token_counts, top_k, rng)])


def summed_label_init(wte, label_ids, P, token_counts, top_k, rng):
    labels = np.stack([wte[ids].sum(axis=0) for ids in label_ids])
    return np.concatenate([labels, sampled_vocab_init(wte, P - len(label_ids), token_counts, top_k, rng)])


def labels_last_init(wte, label_ids, P, token_counts, top_k, rng):
    labels = np.stack([wte[ids].mean(axis=0) for ids in label_ids])
    return np.concatenate([sampled_vocab_init(wte, P - len(label_ids), token_counts, top_k, rng), labels])


def overwrite_label_init(wte, label_ids, P, token_counts, top_k, rng):
    rows = sampled_vocab_init(wte, P, token_counts, top_k, rng)
    rows[: len(label_ids)] = np.stack([wte[ids].mean(axis=0) for ids in label_ids])
    return rows


def no_error_label_init(wte, label_ids, P, token_counts, top_k, rng):
    labels = np.stack([wte[ids].mean(axis=0) for ids in label_ids])
    rest = sampled_vocab_init(wte, max(P - len(label_ids), 0), token_counts, top_k, rng)
    return np.concatenate([labels, rest])[: max(P, len(label_ids))]


def ties_to_largest(predictions):
    C = int(predictions.max()) + 1
    votes = np.stack([np.bincount(column, minlength=C) for column in predictions.T])
    return C - 1 - np.argmax(votes[:, ::-1], axis=1)


WRONG = [
    (exercises.check_prepend_prompt, prompt_after, "in FRONT"),
    (exercises.check_prepend_prompt, mask_not_extended, r"must cover the P prompt positions"),
    (exercises.check_prepend_prompt, mask_with_zeros, "must be visible: 1 in the first P columns"),
    (exercises.check_prepend_prompt, mask_ones_after, "the P ones of the prompt come first"),
    (exercises.check_prepend_prompt, detached_prompt, "prompt receives no gradient"),
    (exercises.check_prepend_prompt, unbroadcast_prompt,
     r"right-padded: .*your function raised.*broadcast_to"),
    (exercises.check_prepend_prompt, added_prompt, "concatenated in front of the tokens, not added"),
    (exercises.check_prepend_prompt, embeds_only, r"expected a pair \(inputs, mask\)"),
    (exercises.check_sampled_vocab_init, uniform_init, "not the embedding of any token"),
    (exercises.check_sampled_vocab_init, whole_vocab_init, "never occurs"),
    (exercises.check_sampled_vocab_init, least_frequent_init, "most frequent"),
    (exercises.check_sampled_vocab_init, no_top_k_init, "keep only the top_k most frequent"),
    (exercises.check_sampled_vocab_init, with_replacement_init, "drawn twice.*without replacement"),
    (exercises.check_sampled_vocab_init, reversed_ties_init, r"ties by the smaller id.*kind='stable'"),
    (exercises.check_class_label_init, first_token_label_init, "mean of ALL its tokens"),
    (exercises.check_class_label_init, summed_label_init, "not their sum"),
    (exercises.check_class_label_init, labels_last_init, "label rows come first"),
    (exercises.check_class_label_init, overwrite_label_init, "draw only the P - C tokens"),
    (exercises.check_class_label_init, no_error_label_init, "expected a ValueError"),
    (exercises.check_majority_vote, ties_to_largest, "SMALLEST class id"),
    (exercises.check_majority_vote, lambda p: np.round(p.mean(axis=0)).astype(int), "mean of class ids"),
    (exercises.check_majority_vote, lambda p: p[0].copy(), "first prompt's answer"),
    (exercises.check_majority_vote, lambda p: p.max(axis=0), "largest class anyone voted for"),
    (exercises.check_majority_vote, lambda p: majority_vote(p.T), "vote down each column"),
    (exercises.check_majority_vote, lambda p: majority_vote(p).astype(float), "expected integer class ids"),
]
LESSON = "06_prompt_tuning.ipynb"  # the notebook whose checkers RIGHT and WRONG exercise
