"""From token lists to the padded arrays a model eats, in a reproducible order.

Fine-tuning examples are ``(ids, labels)`` pairs from ``Tokenizer.encode_pair``: labels are -100
on bos, the source and sep, so only the target (and its eos) is learned. A batch pads them on the
right to a common length:

    ids             [bos s s sep t t eos pad pad]
    attention_mask  [ 1  1 1  1  1 1  1   0   0 ]
    labels          [-100 ...   -100 t t eos -100 -100]

Epoch ``e`` visits the examples in the order ``np.random.default_rng((seed, e)).permutation(n)``.
The order depends only on ``(seed, epoch)``, never on a generator that advanced earlier, so a
resumed run finds batch ``i`` of epoch ``e`` without replaying anything.

For language-model pretraining, ``pack_documents`` concatenates documents, each followed by
eos, and cuts the stream into windows of ``context_length`` tokens: no padding, every token
counts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.tokenizer import IGNORE_INDEX, Tokenizer

Example = tuple[Sequence[int], Sequence[int]]  # (ids, labels), labels aligned with ids


@dataclass
class Batch:
    """A padded batch: ids, attention_mask and labels, each (B, T)."""

    ids: np.ndarray  # (B, T) int64
    attention_mask: np.ndarray  # (B, T) bool, False at padding
    labels: np.ndarray  # (B, T) int64, IGNORE_INDEX at padding and non-target tokens

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())


# ----------------------------------------------------------------------------- encoding


def source_ids(tokenizer: Tokenizer, source: str) -> list[int]:
    """The prompt a conditional model continues: ``[bos] source [sep]`` (as in ``encode_pair``)."""
    return [tokenizer.bos_id, *tokenizer.encode(source), tokenizer.sep_id]


def encode_pairs(
    tokenizer: Tokenizer, pairs: Iterable[tuple[str, str]], max_length: int | None = None
) -> list[Example]:
    """``encode_pair`` each ``(source, target)``; with ``max_length`` longer examples are dropped
    (not truncated: a cut target would teach the model to stop mid-sentence without eos)."""
    examples = [tokenizer.encode_pair(source, target) for source, target in pairs]
    if max_length is not None:
        examples = [ex for ex in examples if len(ex[0]) <= max_length]
    return examples


# ----------------------------------------------------------------------------- padding


def pad_batch(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad ``(ids, labels)`` pairs to the longest one; labels are -100 at the padding."""
    if not examples:
        raise ValueError("pad_batch: no examples")
    T = max(len(ids) for ids, _ in examples)
    B = len(examples)
    ids = np.full((B, T), pad_id, dtype=np.int64)  # (B, T)
    labels = np.full((B, T), IGNORE_INDEX, dtype=np.int64)  # (B, T)
    mask = np.zeros((B, T), dtype=bool)  # (B, T)
    for row, (x, y) in enumerate(examples):
        if len(x) != len(y):
            raise ValueError(f"pad_batch: example {row} has {len(x)} ids but {len(y)} labels")
        ids[row, : len(x)] = x
        labels[row, : len(y)] = y
        mask[row, : len(x)] = True
    return Batch(ids=ids, attention_mask=mask, labels=labels)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts for generation, so every row's last column is its last real token.

    Returns ``ids`` (B, T) and ``attention_mask`` (B, T) bool.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad: every prompt needs at least one token (e.g. bos)")
    T = max(len(p) for p in prompts)
    ids = np.full((len(prompts), T), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(prompts), T), dtype=bool)  # (B, T)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = p
        mask[row, T - len(p):] = True
    return ids, mask


# ----------------------------------------------------------------------------- order


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``range(n)`` that epoch ``epoch`` follows (a function of its arguments only;
    cached, so it is read-only)."""
    order = np.random.default_rng((seed, epoch)).permutation(n)
    order.flags.writeable = False
    return order


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch; the last one may be smaller (nothing is dropped)."""
    return -(-n // batch_size)


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, index: int) -> np.ndarray:
    """Example indices of batch ``index`` of epoch ``epoch``."""
    order = epoch_order(n, seed, epoch)
    return order[index * batch_size : (index + 1) * batch_size]


def step_batch(examples: Sequence[Example], step: int, batch_size: int, seed: int, pad_id: int) -> Batch:
    """The padded batch of training step ``step`` (0-based): batch ``step % per_epoch`` of epoch
    ``step // per_epoch``. Every trainer draws its batches here, so they all see the same ones."""
    epoch, index = divmod(step, num_batches(len(examples), batch_size))
    chosen = batch_indices(len(examples), batch_size, seed, epoch, index)
    return pad_batch([examples[j] for j in chosen], pad_id)


def iterate_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, seed: int, epoch: int, start: int = 0
) -> Iterator[Batch]:
    """The padded batches of one epoch, from batch number ``start`` on (to resume mid-epoch)."""
    order = epoch_order(len(examples), seed, epoch)
    for i in range(start, num_batches(len(examples), batch_size)):
        chosen = order[i * batch_size : (i + 1) * batch_size]
        yield pad_batch([examples[j] for j in chosen], pad_id)


def eval_batches(examples: Sequence[Example], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Batches in the given order (evaluation needs no shuffling)."""
    for i in range(0, len(examples), batch_size):
        yield pad_batch(examples[i : i + batch_size], pad_id)


# ----------------------------------------------------------------------------- packing


class PackedWindows(Sequence):
    """Fixed-length windows of a token stream as ``(ids, labels)`` examples with ``labels == ids``.

    Backed by one (N, context_length) array, so millions of tokens cost no Python lists.
    """

    def __init__(self, windows: np.ndarray):
        if windows.ndim != 2:
            raise ValueError(f"PackedWindows: expected (N, context_length), got shape {windows.shape}")
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.windows[i]
        return row, row

    @property
    def num_tokens(self) -> int:
        return int(self.windows.size)


def pack_documents(
    documents: Iterable[Sequence[int]],
    context_length: int,
    eos_id: int,
    max_windows: int | None = None,
) -> PackedWindows:
    """Concatenate ``doc eos doc eos ...`` and cut it into windows of ``context_length`` tokens.

    Windows do not overlap and the incomplete tail is dropped. With ``max_windows`` reading stops
    as soon as that many windows are full, so ``documents`` may be an endless generator.
    """
    if context_length < 2:
        raise ValueError(f"pack_documents: context_length must be >= 2, got {context_length}")
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(eos_id)
        if max_windows is not None and len(stream) >= max_windows * context_length:
            break
    n = len(stream) // context_length
    if max_windows is not None:
        n = min(n, max_windows)
    windows = np.asarray(stream[: n * context_length], dtype=np.int64).reshape(n, context_length)
    return PackedWindows(windows)  # (N, context_length)
