"""The pretraining corpus (``tinypft.data.corpus``): 5% of the E2E training MRs held out, one
document per MR holding all its references, and documents in the token format of fine-tuning."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from tinypft.data import (
    HELDOUT_FRACTION,
    MATCH_LABELS,
    RATING_LABELS,
    E2EExample,
    encode_document,
    heldout_split,
    linearize_table,
    load_e2e,
    load_tokenizer,
    reference_groups,
)
from tinypft.experiments.finetune import label_token_ids
from tinypft.train.batching import pack_documents
from tinypft.train.pretrain import corpus_windows


@pytest.fixture(scope="module")
def train() -> list[E2EExample]:
    return load_e2e("train")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def encoded_corpus(train, tokenizer) -> list[list[int]]:
    """The encoded pretraining documents, as ``corpus_windows`` makes them (seed 0)."""
    corpus, _ = heldout_split(train, seed=0)
    return [encode_document(tokenizer, refs) for refs in reference_groups(corpus, random.Random(0))]


def refs_key(refs) -> tuple[str, ...]:
    return tuple(sorted(refs))


# --- the held-out MRs --------------------------------------------------------------------------


def test_heldout_mrs_are_a_seeded_five_percent_disjoint_from_the_corpus(train):
    corpus, heldout = heldout_split(train)
    assert HELDOUT_FRACTION == 0.05
    assert len(heldout) == round(0.05 * len(train)) == 243 and len(corpus) + len(heldout) == len(train)
    assert {ex.mr for ex in corpus}.isdisjoint({ex.mr for ex in heldout})
    assert set(corpus) | set(heldout) == set(train)
    position = {ex.mr: i for i, ex in enumerate(train)}  # order kept in both parts
    assert all(position[a.mr] < position[b.mr] for part in (corpus, heldout) for a, b in zip(part, part[1:]))
    assert heldout_split(train, seed=0) == (corpus, heldout)
    assert heldout_split(train, seed=1)[1] != heldout
    # spread over the file, not one block of it
    assert position[heldout[0].mr] < len(train) // 10 and position[heldout[-1].mr] > 9 * len(train) // 10
    assert len(heldout_split(train[:10], fraction=0.01)[1]) == 1  # never an empty held-out set
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            heldout_split(train, fraction=fraction)


def test_corpus_windows_hold_out_exactly_those_mrs(train, tokenizer):
    corpus, heldout = heldout_split(train, seed=0)
    windows, dev, heldout_mrs, info = corpus_windows(tokenizer, 128, 8, seed=0)
    assert heldout_mrs == heldout and len(dev) == 8
    assert info["train_mrs"] == len(corpus) and info["heldout_mrs"] == len(heldout)
    assert info["train_references"] == sum(len(ex.refs) for ex in corpus)
    assert info["train_tokens"] == windows.num_tokens and info["dev_tokens"] == dev.num_tokens == 8 * 128


# --- documents -----------------------------------------------------------------------------------


def test_every_document_holds_all_references_of_exactly_one_mr(train):
    corpus, _ = heldout_split(train)
    documents = reference_groups(corpus, random.Random(0))
    assert len(documents) == len(corpus)
    # as multisets: each document is the references of one MR, and each MR makes one document
    assert Counter(refs_key(doc) for doc in documents) == Counter(refs_key(ex.refs) for ex in corpus)
    assert documents == reference_groups(corpus, random.Random(0))  # seeded
    other = reference_groups(corpus, random.Random(1))
    assert other != documents and sorted(map(refs_key, other)) == sorted(map(refs_key, documents))
    in_file_order = Counter(tuple(ex.refs) for ex in corpus)
    assert sum(tuple(doc) not in in_file_order for doc in documents) > len(documents) // 2  # shuffled
    assert [refs_key(doc) for doc in documents] != [refs_key(ex.refs) for ex in corpus]  # so are they


def test_encode_document_is_the_fine_tuning_format(tokenizer):
    refs = ["The Eagle is a pub.", "Near Burger King, The Eagle serves French food.", "A pub: The Eagle."]
    ids = encode_document(tokenizer, refs)
    expected = [tokenizer.bos_id]
    for i, ref in enumerate(refs):
        expected += ([tokenizer.sep_id] if i else []) + tokenizer.encode_target(ref)
    assert ids == expected
    assert ids[0] == tokenizer.bos_id and ids.count(tokenizer.bos_id) == 1
    assert ids.count(tokenizer.sep_id) == len(refs) - 1 and tokenizer.eos_id not in ids  # the packer adds eos
    assert tokenizer.decode(ids, skip_special=True) == " " + " ".join(refs)
    assert encode_document(tokenizer, refs[:1]) == [tokenizer.bos_id, *tokenizer.encode_target(refs[0])]
    # a description in the corpus is the very tokens of a fine-tuning target
    _, labels = tokenizer.encode_pair("name : The Eagle", refs[1])
    target = [t for t in labels if t >= 0][:-1]  # without eos
    first_sep = ids.index(tokenizer.sep_id)
    assert ids[first_sep + 1 : first_sep + 1 + len(target)] == target


def test_the_corpus_has_every_special_token_of_fine_tuning(train, tokenizer, encoded_corpus):
    windows = pack_documents(encoded_corpus, 128, tokenizer.eos_id).windows
    counts = np.bincount(windows.ravel(), minlength=tokenizer.vocab_size)
    example = train[0]
    ids, _ = tokenizer.encode_pair(linearize_table(example.slots), example.refs[0])
    used_in_fine_tuning = {i for i in ids if tokenizer.is_special(i)}
    assert used_in_fine_tuning == {tokenizer.bos_id, tokenizer.sep_id, tokenizer.eos_id}
    for special in used_in_fine_tuning:
        assert counts[special] > 1000, tokenizer.decode([special])  # one of each per document at least
    assert counts[tokenizer.pad_id] == 0  # padding is never text
    stream = windows.ravel()
    after_eos = stream[1:][stream[:-1] == tokenizer.eos_id]
    assert np.all(after_eos == tokenizer.bos_id)  # every document starts with bos
    before_bos = stream[:-1][stream[1:] == tokenizer.bos_id]
    assert np.all(before_bos == tokenizer.eos_id)  # and ends with eos
    n_seps = sum(doc.count(tokenizer.sep_id) for doc in encoded_corpus)
    corpus, _ = heldout_split(train)
    assert n_seps == sum(len(ex.refs) - 1 for ex in corpus)  # one sep before each next description


@pytest.mark.parametrize("labels", [RATING_LABELS, MATCH_LABELS], ids=["rating", "match"])
def test_label_words_are_single_tokens_that_the_corpus_contains(tokenizer, encoded_corpus, labels):
    """A label word is scored by its first token as a target (`` low``), so it must be one token,
    and pretraining must have shown the model that token in running text."""
    counts = Counter(t for doc in encoded_corpus for t in doc)
    ids = []
    for word in labels:
        tokens = tokenizer.encode_target(word)
        assert len(tokens) == 1 and tokenizer.decode(tokens) == " " + word, (word, tokens)
        assert counts[tokens[0]] > 0, word
        ids.append(tokens[0])
    assert label_token_ids(tokenizer, labels) == ids and len(set(ids)) == len(ids)
