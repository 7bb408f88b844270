"""Checkers for lesson 3 (pretraining): the byte-pair tokenizer's pair counts and merges, the
next-token loss, and packing documents into training windows.

Each checker reports as ``common`` describes: one line when everything agrees, else an
``AssertionError`` naming the input, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..data.tokenizer import Tokenizer, merge_pair
from ..engine import Tensor, fused, set_fused_kernels
from ..engine import functional as F
from ..model import GPT
from ..train.batching import pack_documents
from ..train.pretrain import corpus_windows
from .common import (
    as_array,
    call_student,
    compare_arrays,
    fail,
    passed,
    preserved_engine_state,
    refuse_library,
)

# What each checker refuses: tinypft's own implementation of the exercise (label -> object).
LIBRARY: dict[str, dict[str, Any]] = {
    "count_pairs": {"tokenizer training (tinypft.data.Tokenizer.train)": Tokenizer.train},
    "merge_pair": {"merge_pair (tinypft.data.tokenizer.merge_pair)": merge_pair},
    "lm_loss": {"cross_entropy (tinypft.engine.functional.cross_entropy)": F.cross_entropy,
                "fused cross_entropy (tinypft.engine.fused.cross_entropy)": fused.cross_entropy,
                "log_softmax (tinypft.engine.functional.log_softmax)": F.log_softmax,
                "softmax (tinypft.engine.functional.softmax)": F.softmax,
                "GPT.lm_loss": GPT.lm_loss},
    "pack_documents": {"pack_documents (tinypft.train.batching.pack_documents)": pack_documents,
                       "corpus_windows (tinypft.train.pretrain.corpus_windows)": corpus_windows},
}


def _reference_pair_counts(words: dict[tuple[int, ...], int], weighted: bool = True,
                           distinct: bool = False) -> dict[tuple[int, int], int]:
    """Adjacent-pair counts of ``{word (token ids): count}``; the flags give two common mistakes."""
    counts: dict[tuple[int, int], int] = {}
    for word, n in words.items():
        pairs = list(zip(word, word[1:]))
        for pair in dict.fromkeys(pairs) if distinct else pairs:
            counts[pair] = counts.get(pair, 0) + (n if weighted else 1)
    return counts


def _as_pair_counts(check: str, where: str, got: Any) -> dict[tuple[int, int], int]:
    """The student's pair counts as a plain dict without zero entries (a Counter may keep zeros)."""
    if not hasattr(got, "items"):
        fail(
            check,
            f"{where}: returned {type(got).__name__}, expected a dict (or Counter) mapping pairs to counts",
            "collections.Counter() is a dict that starts every count at 0: counts[pair] += n",
        )
    result = {}
    for pair, n in got.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            fail(check, f"{where}: the key {pair!r} is not a pair", "key the counts by tuples (a, b) of ids")
        if n:
            result[(int(pair[0]), int(pair[1]))] = n
    return result


def check_count_pairs(fn: Callable[[dict[tuple[int, ...], int]], dict[tuple[int, int], int]]) -> None:
    """``fn(words)``, with ``words`` mapping a word (a tuple of token ids) to how often it occurs, must
    count every pair of adjacent ids, each occurrence weighted by its word's count."""
    check = "check_count_pairs"
    refuse_library(check, fn, LIBRARY["count_pairs"])
    text = "the cat sat on the mat; the cats saw the hat"
    words_of_text: dict[tuple[int, ...], int] = {}
    for word in text.replace(";", " ;").split(" "):
        key = tuple((" " + word).encode("utf-8"))
        words_of_text[key] = words_of_text.get(key, 0) + 1
    cases = [
        ("one word (1, 2, 3) seen once", {(1, 2, 3): 1}),
        ("words seen several times: {(1, 2, 3): 2, (2, 3): 5}", {(1, 2, 3): 2, (2, 3): 5}),
        ("a word of one token has no pairs: {(7,): 4, (7, 8): 1}", {(7,): 4, (7, 8): 1}),
        ("a repeated token: {(5, 5, 5): 3}", {(5, 5, 5): 3}),
        (f"the bytes of the words of {text!r}", words_of_text),
    ]
    for where, words in cases:
        before = dict(words)
        got = _as_pair_counts(check, where, call_student(check, where, fn, words))
        if words != before:
            fail(check, f"{where}: your function changed its input", "count, but do not modify words")
        expected = _reference_pair_counts(words)
        if got == expected:
            continue
        if got == _reference_pair_counts(words, weighted=False):
            hint = "a word that occurs n times contributes each of its pairs n times: add the word's count"
        elif got == _reference_pair_counts(words, distinct=True):
            hint = ("count every occurrence of a pair, also twice in one word: (5, 5, 5) holds (5, 5) at two "
                    "positions (the tokenizer counts both, although only one of them can merge)")
        else:
            hint = "for each word and count n: for each pair in zip(word, word[1:]): counts[pair] += n"
        wrong = sorted(set(got) | set(expected), key=lambda p: (p not in expected, p))
        first = next(p for p in wrong if got.get(p, 0) != expected.get(p, 0))
        fail(
            check,
            f"{where}: the pair {first} has count {got.get(first, 0)}, expected {expected.get(first, 0)} "
            f"({len([p for p in wrong if got.get(p, 0) != expected.get(p, 0)])} pair(s) differ)",
            hint,
        )
    passed(check, f"{len(cases)} word tables, with repeated words and repeated tokens")


def check_merge_pair(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """``fn(ids, pair, new_id)`` must return a new list in which every occurrence of ``pair`` is replaced
    by ``new_id``, scanning left to right without overlaps (as ``Tokenizer`` encodes)."""
    from ..data.tokenizer import merge_pair

    check = "check_merge_pair"
    refuse_library(check, fn, LIBRARY["merge_pair"])
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 9),
        ([5, 1, 2], (1, 2), 9),
        ([1, 3, 2], (1, 2), 9),
        ([2, 1, 2, 1], (1, 2), 9),
        ([4, 4, 4], (4, 4), 9),
        ([4, 4, 4, 4], (4, 4), 9),
        ([7], (7, 7), 9),
        ([], (1, 2), 9),
        (list(b"the theme of these"), (ord("t"), ord("h")), 300),
    ]
    for ids, pair, new_id in cases:
        where = f"fn({ids}, {pair}, {new_id})"
        before = list(ids)
        got = call_student(check, where, fn, ids, pair, new_id)
        if ids != before:
            fail(
                check,
                f"{where}: your function changed the list it was given (it is now {ids})",
                "build and return a new list; the caller still needs the old one",
            )
        if got is None:
            fail(check, f"{where}: your function returned None", "return the new list of ids")
        try:
            got_list = [int(i) for i in got]
        except (TypeError, ValueError):
            fail(check, f"{where}: returned {got!r:.80}, expected a list of ints")
        expected = merge_pair(ids, pair, new_id)
        if got_list == expected:
            continue
        hint = (
            "walk with an index i: if (ids[i], ids[i + 1]) is the pair, emit new_id and move on by 2, "
            "else emit ids[i] and move on by 1"
        )
        if pair[0] == pair[1] and got_list.count(new_id) > expected.count(new_id):
            hint = "occurrences may not overlap: in (4, 4, 4) only the first two 4s merge, the third stays"
        elif pair[0] == pair[1]:
            hint = "after a merge, go on from the position after the pair: (4, 4, 4, 4) becomes (9, 9)"
        fail(check, f"{where}: got {got_list}, expected {expected}", hint)
    passed(check, f"{len(cases)} sequences, including overlapping pairs like (4, 4, 4)")


def _lm_loss_variants(logits: np.ndarray, labels: np.ndarray) -> list[tuple[float, str]]:
    """Losses of common mistakes with the hint that explains each."""
    def nll(targets: np.ndarray, denominator: str = "counted") -> float:
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        counted = targets != -100
        picked = np.take_along_axis(logp, np.where(counted, targets, 0)[..., None], -1)[..., 0]
        total = -(picked * counted).sum()
        return float(total / {"counted": counted.sum(), "all": targets.size, "none": 1}[denominator])

    shifted = np.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    backwards = np.full_like(labels, -100)
    backwards[:, 1:] = labels[:, :-1]
    return [
        (nll(labels), "no shift: the logits at position t predict the token at t + 1, so position t is "
                      "scored against labels[:, t + 1] (and the last position predicts nothing)"),
        (nll(backwards), "shifted the wrong way: position t predicts labels[:, t + 1], not labels[:, t - 1]"),
        (nll(shifted, "all"), "average over the counted targets only: divide by the number of targets "
                              "that are not -100, not by the number of positions"),
        (nll(shifted, "none"), "the loss is the mean over the counted targets, not their sum"),
    ]


def check_lm_loss(fn: Callable[[np.ndarray, np.ndarray], float]) -> None:
    """``fn(logits, labels)`` with NumPy arrays, logits (B, T, V) and integer labels (B, T) aligned with the
    input ids, must return ``GPT.lm_loss``: the mean next-token cross-entropy, position t scored against
    ``labels[:, t + 1]``, targets of -100 skipped."""
    check = "check_lm_loss"
    refuse_library(check, fn, LIBRARY["lm_loss"])
    rng = np.random.default_rng(7)
    source_and_padding = rng.integers(0, 7, (2, 6))
    source_and_padding[0, :3] = -100  # a source that is not learned
    source_and_padding[1, 4:] = -100  # padding
    first_ignored = rng.integers(0, 6, (3, 5))
    first_ignored[:, 0] = -100
    normal = rng.standard_normal
    cases = [
        ("B=1, T=4, V=5, every label counts", normal((1, 4, 5)), rng.integers(0, 5, (1, 4))),
        ("B=2, T=6, V=7, -100 on a source and on padding", normal((2, 6, 7)), source_and_padding),
        ("B=3, T=5, V=6, the first label of each row -100", 3 * normal((3, 5, 6)), first_ignored),
        ("B=2, T=5, V=8, logits of size 1000", 1000 * normal((2, 5, 8)), rng.integers(0, 8, (2, 5))),
    ]
    crash_hint = "a label of -100 is not a class: skip those targets"
    for where, logits, labels in cases:
        logits_before, labels_before = logits.copy(), labels.copy()
        got = call_student(check, where, fn, logits, labels, hint=crash_hint)
        if not (np.array_equal(logits, logits_before) and np.array_equal(labels, labels_before)):
            fail(check, f"{where}: your function changed its inputs", "build new arrays (np.full_like)")
        try:
            value = float(as_array(got))
        except (TypeError, ValueError):
            fail(check, f"{where}: returned {got!r:.80}, expected a number")
        targets = np.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]
        with preserved_engine_state():
            set_fused_kernels(False)
            expected = float(F.cross_entropy(Tensor(logits, dtype=np.float64), targets).item())
        if np.isclose(value, expected, rtol=1e-9, atol=1e-9):
            continue
        if not np.isfinite(value):
            fail(
                check,
                f"{where}: got {value}, expected {expected:.10g}",
                "exp of a logit of 1000 overflows: subtract each row's maximum before exp "
                "(log softmax(z) = z - m - log sum exp(z - m))",
            )
        hint = "shift (targets[:, :-1] = labels[:, 1:]), log-softmax each row, pick the targets, average"
        for candidate, candidate_hint in _lm_loss_variants(logits, labels):
            if np.isclose(value, candidate, rtol=1e-9, atol=1e-9):
                hint = candidate_hint
                break
        fail(check, f"{where}: got {value:.10g}, expected {expected:.10g}", hint)
    passed(check, f"{len(cases)} batches, with -100 labels and very large logits")


class _ReadTooFar(Exception):
    """Raised by the checker's endless document stream when a function reads far more than it needs."""


def _endless_documents(limit: int) -> Iterator[list[int]]:
    """Documents 0, 1, 2, ... of lengths 1 to 9 (ids 1..50); fails after ``limit`` documents."""
    rng = np.random.default_rng(8)
    for i in range(limit):
        yield [int(t) for t in rng.integers(1, 50, int(rng.integers(1, 10)))]
        if i == limit - 1:
            raise _ReadTooFar


def check_pack_documents(fn: Callable[..., np.ndarray]) -> None:
    """``fn(documents, context_length, eos_id, max_windows=None)`` must equal
    ``tinypft.train.pack_documents(...).windows``: ``doc eos doc eos ...`` cut into rows of
    ``context_length`` tokens, the incomplete tail dropped, reading no further than ``max_windows`` needs."""
    from ..train.batching import pack_documents as reference

    check = "check_pack_documents"
    refuse_library(check, fn, LIBRARY["pack_documents"])
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    cases: list[tuple[str, list[list[int]], int, int, int | None]] = [
        ("3 documents, 12 tokens with eos, windows of 4", docs, 4, 0, None),
        ("one document of 5 tokens, windows of 4 (an incomplete tail)", [[1, 2, 3, 4, 5]], 4, 0, None),
        ("a document longer than a window", [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12]], 3, 99, None),
        ("an empty document among others", [[1, 2], [], [3, 4, 5]], 2, 0, None),
        ("fewer tokens than one window", [[1, 2]], 8, 0, None),
        ("max_windows=2", docs * 3, 4, 0, 2),
    ]
    hint = "stream = doc + [eos] for every doc; n = len(stream) // context_length; reshape(n, context_length)"
    for where, documents, T, eos, max_windows in cases:
        args = (iter([list(d) for d in documents]), T, eos) + (() if max_windows is None else (max_windows,))
        call = f"{where}: fn(documents, {T}, {eos}{'' if max_windows is None else f', {max_windows}'})"
        generator_hint = "documents may be a generator (no len(), no indexing): loop over it once"
        got = call_student(check, call, fn, *args, hint=generator_hint)
        expected = reference(documents, T, eos, max_windows).windows
        got_array = np.asarray(got)
        if got_array.dtype.kind not in "iu":
            fail(
                check,
                f"{call}: got an array of dtype {got_array.dtype}, expected integers",
                "token ids are integers: np.asarray(stream, dtype=np.int64)",
            )
        if got_array.shape == expected.shape and np.array_equal(got_array, expected):
            continue
        flat = got_array.reshape(-1).tolist()
        right = [t for d in documents for t in [*d, eos]][: len(flat)]
        without_eos = [t for d in documents for t in d][: len(flat)]
        eos_first = [t for d in documents for t in [eos, *d]][: len(flat)]
        if flat and flat != right and flat == without_eos:
            problem = "put eos after every document: the model learns where documents end from it"
        elif flat and flat != right and flat == eos_first:
            problem = "eos goes after each document, not before it"
        elif got_array.ndim == 2 and got_array.shape[0] == expected.shape[0] + 1:
            problem = "drop the incomplete tail: a window shorter than context_length is never padded"
        elif got_array.ndim == 2 and got_array.shape[0] > expected.shape[0] + 1:
            problem = "windows do not overlap: window i holds stream[i * T : (i + 1) * T]"
        else:
            problem = hint
        if got_array.shape != expected.shape:
            fail(check, f"{call}: got shape {got_array.shape}, expected {expected.shape}", problem)
        fail(check, f"{call}: got\n{got_array}\n  expected\n{expected}", problem)
    endless = "an endless stream of documents, max_windows=5"
    try:
        got = call_student(check, endless, fn, _endless_documents(10_000), 16, 0, 5)
    except AssertionError as err:
        if isinstance(err.__context__, _ReadTooFar):
            fail(
                check,
                "an endless stream of documents, max_windows=5: your function read 10,000 documents "
                "and would have read on forever",
                "stop reading as soon as the stream holds max_windows * context_length tokens",
            )
        raise
    expected = reference(_endless_documents(10_000), 16, 0, 5).windows
    compare_arrays(check, "an endless stream of documents, max_windows=5", np.asarray(got), expected, hint)
    passed(check, f"{len(cases) + 1} cases, including a document longer than a window and an endless stream")
