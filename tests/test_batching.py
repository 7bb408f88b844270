"""Padding, label masking, reproducible epoch order and document packing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tinypft.data import IGNORE_INDEX, load_tokenizer
from tinypft.train.batching import (
    batch_indices,
    encode_pairs,
    epoch_order,
    iterate_batches,
    left_pad,
    num_batches,
    pack_documents,
    pad_batch,
    source_ids,
    step_batch,
)


def test_pad_batch_pads_right_and_masks_labels():
    examples = [([1, 2, 3], [-100, 2, 3]), ([4, 5], [-100, 5])]
    batch = pad_batch(examples, pad_id=9)
    np.testing.assert_array_equal(batch.ids, [[1, 2, 3], [4, 5, 9]])
    np.testing.assert_array_equal(batch.attention_mask, [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(batch.labels, [[-100, 2, 3], [-100, 5, -100]])
    assert batch.num_tokens == 5
    with pytest.raises(ValueError, match="2 ids but 1 labels"):
        pad_batch([([1, 2], [1])], pad_id=0)


def test_encode_pairs_learns_only_the_target():
    tok = load_tokenizer()
    (ids, labels), = encode_pairs(tok, [("name[The Mill]", "The Mill is a pub.")])
    prompt = source_ids(tok, "name[The Mill]")
    assert ids[: len(prompt)] == prompt and prompt[0] == tok.bos_id and prompt[-1] == tok.sep_id
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)  # bos, source and sep are not learned
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_id
    assert encode_pairs(tok, [("a", "b" * 50)], max_length=10) == []  # too long: dropped, not cut


def test_left_pad_keeps_last_real_token_in_the_last_column():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_id=0)


def test_epoch_order_is_a_reproducible_permutation_that_changes_per_epoch():
    a, b = epoch_order(50, seed=3, epoch=0), epoch_order(50, seed=3, epoch=0)
    np.testing.assert_array_equal(a, b)
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, seed=3, epoch=1))
    assert not np.array_equal(a, epoch_order(50, seed=4, epoch=0))


def test_batches_cover_every_example_once_and_resume_mid_epoch():
    examples = [([i], [i]) for i in range(10)]
    batches = list(iterate_batches(examples, batch_size=4, pad_id=0, seed=1, epoch=2))
    assert [b.ids.shape[0] for b in batches] == [4, 4, 2] and num_batches(10, 4) == 3  # nothing dropped
    seen = np.concatenate([b.ids[:, 0] for b in batches])
    assert sorted(seen) == list(range(10))
    resumed = list(iterate_batches(examples, batch_size=4, pad_id=0, seed=1, epoch=2, start=1))
    for full, part in zip(batches[1:], resumed):
        np.testing.assert_array_equal(full.ids, part.ids)
    np.testing.assert_array_equal(batch_indices(10, 4, seed=1, epoch=2, index=1), batches[1].ids[:, 0])


def test_pack_documents_concatenates_with_eos_and_drops_the_tail():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    packed = pack_documents(docs, context_length=4, eos_id=0)
    stream = [1, 2, 3, 0, 4, 5, 0, 6, 7, 8, 9, 0]
    np.testing.assert_array_equal(packed.windows, np.reshape(stream, (3, 4)))
    ids, labels = packed[1]
    np.testing.assert_array_equal(ids, labels)  # a language model learns every token
    assert len(pack_documents(docs, context_length=5, eos_id=0)) == 2  # 12 tokens: 2 windows, 2 dropped


def test_pack_documents_reads_an_endless_stream_only_as_far_as_needed():
    endless = ([i % 7 + 1] * 3 for i in itertools.count())
    packed = pack_documents(endless, context_length=8, eos_id=0, max_windows=5)
    assert packed.windows.shape == (5, 8) and packed.num_tokens == 40
    assert packed.windows[0].tolist() == [1, 1, 1, 0, 2, 2, 2, 0]


def test_step_batch_walks_the_epochs_in_order():
    examples = [([i, i + 1], [-100, i + 1]) for i in range(10)]
    expected = [b for epoch in range(3) for b in iterate_batches(examples, 4, pad_id=0, seed=5, epoch=epoch)]
    got = [step_batch(examples, step, 4, seed=5, pad_id=0) for step in range(len(expected))]
    assert len(expected) == 9  # 3 batches per epoch (4 + 4 + 2)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(ValueError):  # the cached order is shared, so it cannot be changed
        epoch_order(10, 5, 0)[0] = 3
