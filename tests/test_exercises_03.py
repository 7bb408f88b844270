"""The checkers of lesson 3 (tokenizer, language-model loss, packing): right answers pass, wrong
ones fail with a message that names the input and gives a hint, and an unfinished exercise raises
its own NotImplementedError.

RIGHT, WRONG and LESSON are run through the generic tests of test_exercises.py; this module adds
the tests particular to this lesson."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tinypft import exercises

# ----------------------------------------------------------------------------- right answers


def count_pairs(words):
    counts = Counter()
    for word, n in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += n
    return counts


def merge_pair(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def lm_loss_numpy(logits, labels):
    targets = np.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    counted = targets != -100
    return float(-logp[counted, targets[counted]].mean())


def pack_documents(documents, context_length, eos_id, max_windows=None):
    stream = []
    for doc in documents:
        stream += [*doc, eos_id]
        if max_windows is not None and len(stream) >= max_windows * context_length:
            break
    n = len(stream) // context_length
    if max_windows is not None:
        n = min(n, max_windows)
    return np.array(stream[: n * context_length], dtype=np.int64).reshape(n, context_length)


RIGHT = [
    (exercises.check_count_pairs, count_pairs),
    (exercises.check_merge_pair, merge_pair),
    (exercises.check_lm_loss, lm_loss_numpy),
    (exercises.check_pack_documents, pack_documents),
]

# The right answers above also run through the generic checks in test_exercises.py.


def test_count_pairs_accepts_a_plain_dict_and_ignores_zero_counts(capsys):
    def plain(words):
        counts = dict(count_pairs(words))
        counts[(123, 456)] = 0
        return counts

    exercises.check_count_pairs(plain)
    assert "passed" in capsys.readouterr().out


def test_lm_loss_accepts_a_zero_dimensional_array(capsys):
    exercises.check_lm_loss(lambda logits, labels: np.asarray(lm_loss_numpy(logits, labels)))
    assert "passed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- wrong answers


def unweighted_pairs(words):
    return Counter(pair for word in words for pair in zip(word, word[1:]))


def distinct_pairs(words):
    counts = Counter()
    for word, n in words.items():
        for pair in set(zip(word, word[1:])):
            counts[pair] += n
    return counts


def pairs_as_list(words):
    return list(count_pairs(words).items())


def pairs_changing_the_input(words):
    counts = count_pairs(words)
    words.clear()
    return counts


def overlapping_merge(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        elif not (i > 0 and (ids[i - 1], ids[i]) == pair):
            out.append(ids[i])
    return out


def merge_in_place(ids, pair, new_id):
    merged = merge_pair(ids, pair, new_id)
    ids[:] = merged
    return ids


def merge_only_the_first(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def unshifted_loss(logits, labels):
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    counted = labels != -100
    return float(-logp[counted, labels[counted]].mean())


def loss_over_all_positions(logits, labels):
    targets = np.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    counted = targets != -100
    return float(-logp[counted, targets[counted]].sum() / targets.size)


def summed_loss(logits, labels):
    targets = np.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    counted = targets != -100
    return float(-logp[counted, targets[counted]].sum())


def overflowing_loss(logits, labels):
    targets = np.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        counted = targets != -100
        return float(-np.log(p[counted, targets[counted]]).mean())


def loss_keeping_ignored_labels(logits, labels):
    targets = np.zeros_like(labels)
    targets[:, :-1] = labels[:, 1:]
    z = logits - logits.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    B, T = targets.shape
    return float(-logp[np.arange(B)[:, None], np.arange(T)[None, :], targets].mean())


def _pack(stream, context_length, max_windows):
    n = len(stream) // context_length
    if max_windows is not None:
        n = min(n, max_windows)
    return np.array(stream[: n * context_length], dtype=np.int64).reshape(n, context_length)


def pack_without_eos(documents, context_length, eos_id, max_windows=None):
    return _pack([t for doc in documents for t in doc], context_length, max_windows)


def pack_eos_first(documents, context_length, eos_id, max_windows=None):
    return _pack([t for doc in documents for t in [eos_id, *doc]], context_length, max_windows)


def pack_with_padded_tail(documents, context_length, eos_id, max_windows=None):
    stream = [t for doc in documents for t in [*doc, eos_id]]
    n = -(-len(stream) // context_length)
    stream += [eos_id] * (n * context_length - len(stream))
    return np.array(stream, dtype=np.int64).reshape(n, context_length)


def pack_reading_everything(documents, context_length, eos_id, max_windows=None):
    return pack_documents(list(documents), context_length, eos_id, max_windows)


def pack_with_len(documents, context_length, eos_id, max_windows=None):
    assert len(documents) >= 0
    return pack_documents(documents, context_length, eos_id, max_windows)


def pack_as_floats(documents, context_length, eos_id, max_windows=None):
    return pack_documents(documents, context_length, eos_id, max_windows).astype(float)


def pack_sliding_windows(documents, context_length, eos_id, max_windows=None):
    stream = [t for doc in documents for t in [*doc, eos_id]]
    rows = [stream[i : i + context_length] for i in range(len(stream) - context_length + 1)]
    if max_windows is not None:
        rows = rows[:max_windows]
    return np.array(rows, dtype=np.int64).reshape(-1, context_length)


WRONG = [
    (exercises.check_count_pairs, unweighted_pairs, "add the word's count"),
    (exercises.check_count_pairs, distinct_pairs, r"\(5, 5, 5\) holds \(5, 5\) at two positions"),
    (exercises.check_count_pairs, pairs_as_list, "expected a dict"),
    (exercises.check_count_pairs, pairs_changing_the_input, "changed its input"),
    (exercises.check_merge_pair, overlapping_merge, "may not overlap"),
    (exercises.check_merge_pair, merge_in_place, "changed the list it was given"),
    (exercises.check_merge_pair, merge_only_the_first, r"got \[9, 3, 1, 2\], expected \[9, 3, 9\]"),
    (exercises.check_merge_pair, lambda ids, pair, new_id: None, "returned None"),
    (exercises.check_lm_loss, unshifted_loss, "no shift"),
    (exercises.check_lm_loss, loss_over_all_positions, "divide by the number of targets"),
    (exercises.check_lm_loss, summed_loss, "not their sum"),
    (exercises.check_lm_loss, overflowing_loss, "subtract each row's maximum"),
    (exercises.check_lm_loss, loss_keeping_ignored_labels, "every label counts: got"),
    (exercises.check_lm_loss, lambda logits, labels: "a lot", "expected a number"),
    (exercises.check_pack_documents, pack_without_eos, "put eos after every document"),
    (exercises.check_pack_documents, pack_eos_first, "not before it"),
    (exercises.check_pack_documents, pack_with_padded_tail, "drop the incomplete tail"),
    (exercises.check_pack_documents, pack_sliding_windows, "windows do not overlap"),
    (exercises.check_pack_documents, pack_reading_everything, "would have read on forever"),
    (exercises.check_pack_documents, pack_with_len, "may be a generator"),
    (exercises.check_pack_documents, pack_as_floats, "expected integers"),
]
LESSON = "03_pretraining.ipynb"  # the notebook whose checkers RIGHT and WRONG exercise
