"""Tests for the byte-level BPE tokenizer and the shipped data/tokenizer.json."""

from __future__ import annotations

import json
import statistics
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinypft.data import (
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerFormatError,
    flatten_pairs,
    linearize_table,
    load_e2e,
    load_tokenizer,
    parse_mr,
    repo_data_dir,
)
from tinypft.data.build import DEFAULT_VOCAB_SIZE, build_tokenizer, tokenizer_training_texts

CORPUS = [
    "The Eagle is a cheap pub near Burger King. It serves French food.",
    "There is a family-friendly coffee shop called The Mill in the city centre.",
    "Prices are low, the customer rating is high, and children are welcome!",
] * 20


@pytest.fixture(scope="module")
def small() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def shipped() -> Tokenizer:
    if not (repo_data_dir() / "tokenizer.json").is_file():
        pytest.skip("data/tokenizer.json has not been built")
    return load_tokenizer()


# --- training ----------------------------------------------------------------------------------


def test_ids_layout_and_vocab_size(small):
    assert (small.bos_id, small.eos_id, small.pad_id, small.sep_id) == (256, 257, 258, 259)
    assert small.vocab_size == 260 + len(small.merges) <= 400
    assert len(small.merges) > 50
    assert [small.decode([i]) for i in range(256, 260)] == list(SPECIAL_TOKENS)


def test_first_merge_is_the_most_frequent_pair_and_ties_are_deterministic():
    # Words: "ab" x1, " ab" x2, " cd" x2. ("a", "b") occurs 3 times and is merged first (id 260).
    tok = Tokenizer.train(["ab ab ab cd cd"], vocab_size=262)
    assert tok.merges[0] == (ord("a"), ord("b"))
    # Then (" ", 260), ("c", "d") and (" ", "c") all occur twice: the smallest pair of ids wins.
    assert tok.merges[1] == (ord(" "), ord("c"))
    assert tok.merges == Tokenizer.train(["ab ab ab cd cd"], vocab_size=262).merges


def test_training_stops_when_no_pair_repeats():
    tok = Tokenizer.train(["abcdef"], vocab_size=1000)
    assert tok.merges == []
    with pytest.raises(ValueError, match="at least 260"):
        Tokenizer.train(CORPUS, vocab_size=100)


def test_merges_shorten_frequent_words(small):
    assert len(small.encode(" Eagle")) == 1
    assert len(small.encode("The Eagle is a cheap pub")) <= 6


# --- encoding and decoding ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_text_round_trips(small, text):
    assert "".join(small.pretokenize(text)) == text
    ids = small.encode(text)
    assert small.decode(ids) == text
    assert not any(small.is_special(i) for i in ids)


TRICKY = ["", "café £20-25 ☕🍕", "line\r\nbreak\n\ttab", "nul\x00byte", "snake_case __x__", "١٢٣ ½ ² ⅷ",
          "we'll they're it's", "  leading and trailing  ", "\U0010ffff"]


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_round_trip(small, text):
    assert small.decode(small.encode(text)) == text


def test_special_token_text_is_encoded_as_plain_bytes(small):
    for special in SPECIAL_TOKENS:
        ids = small.encode(f"say {special} now")
        assert not any(small.is_special(i) for i in ids)
        assert small.decode(ids) == f"say {special} now"


def test_bos_eos_and_decode_skip_special(small):
    ids = small.encode("The Eagle", add_bos=True, add_eos=True)
    assert ids[0] == small.bos_id and ids[-1] == small.eos_id
    assert small.decode(ids) == "<|bos|>The Eagle<|eos|>"
    assert small.decode(ids, skip_special=True) == "The Eagle"
    assert small.encode_batch(["a", "b c"], add_eos=True) == [small.encode("a", add_eos=True),
                                                               small.encode("b c", add_eos=True)]


def test_encode_pair_masks_bos_source_and_sep(small):
    ids, labels = small.encode_pair("name[The Eagle]", "The Eagle is a pub.")
    source, target = small.encode("name[The Eagle]"), small.encode(" The Eagle is a pub.")
    assert ids == [small.bos_id, *source, small.sep_id, *target, small.eos_id]
    assert len(labels) == len(ids)
    assert labels[: len(source) + 2] == [IGNORE_INDEX] * (len(source) + 2)
    assert labels[len(source) + 2 :] == [*target, small.eos_id]


def test_a_target_is_encoded_as_running_text(small):
    assert small.encode_target("The Eagle is a pub.") == small.encode(" The Eagle is a pub.")
    assert small.decode(small.encode_target("low")) == " low"
    assert small.encode_target("") == small.encode(" ")
    assert small.encode_target("Eagle") == small.encode(" Eagle") and len(small.encode(" Eagle")) == 1


def test_decode_rejects_unknown_ids_and_encode_rejects_non_text(small):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        small.decode([small.vocab_size])
    with pytest.raises(ValueError):
        small.decode([-1])
    with pytest.raises(TypeError):
        small.encode(b"bytes")
    assert small.decode([0xE2, 0x82]) == "\ufffd"  # a cut UTF-8 sequence does not crash


# --- saving and loading ------------------------------------------------------------------------


def test_save_load_round_trip_and_fingerprint(small, tmp_path):
    path = tmp_path / "sub" / "tok.json"
    small.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.merges == small.merges and loaded.fingerprint() == small.fingerprint()
    assert loaded.encode("The Eagle serves food") == small.encode("The Eagle serves food")
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]  # no temporary file left behind
    assert len(small.fingerprint()) == 64
    assert Tokenizer.train(CORPUS[:3], vocab_size=300).fingerprint() != small.fingerprint()
    small.save(path)  # overwriting works and gives the same bytes
    assert Tokenizer.load(path).fingerprint() == small.fingerprint()


def _corrupt(data: dict, **changes) -> dict:
    return {**data, **changes}


@pytest.mark.parametrize("change, message", [
    ({"format": "other"}, "not a tinypft-bpe file"),
    ({"version": 99}, "unsupported version"),
    ({"merges": [[1, 2], [3, 999]]}, "merge 1 is invalid"),
    ({"merges": [[256, 1]]}, "merge 0 is invalid"),
    ({"merges": "nope"}, "must be a list"),
    ({"vocab_size": 5}, "does not match"),
    ({"special_tokens": {"<|bos|>": 0}}, "special_tokens"),
    ({"pattern": "("}, "not a valid regex"),
])
def test_load_rejects_malformed_files(small, tmp_path, change, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_corrupt(small.to_dict(), **change)), encoding="utf-8")
    with pytest.raises(TokenizerFormatError, match=message):
        Tokenizer.load(path)


def test_load_rejects_non_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerFormatError, match="not valid JSON"):
        Tokenizer.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(TokenizerFormatError, match="expected a JSON object"):
        Tokenizer.load(path)


# --- the shipped tokenizer ---------------------------------------------------------------------


def test_load_tokenizer_default_and_explicit_path(shipped, tmp_path):
    assert 1024 <= shipped.vocab_size <= 2048
    assert load_tokenizer(repo_data_dir() / "tokenizer.json").fingerprint() == shipped.fingerprint()
    with pytest.raises(FileNotFoundError, match="tinypft.data"):
        load_tokenizer(tmp_path / "missing.json")


def test_e2e_examples_are_short_and_encoding_is_fast(shipped):
    pairs = flatten_pairs(load_e2e("dev")) + flatten_pairs(load_e2e("test"))
    fresh = Tokenizer.from_dict(shipped.to_dict())  # empty word cache
    start = time.perf_counter()
    lengths = [len(fresh.encode_pair(mr, ref)[0]) for mr, ref in pairs]
    elapsed = time.perf_counter() - start
    assert statistics.mean(lengths) <= 80
    assert len(pairs) / elapsed > 1000  # examples per second, cold cache
    tables = [len(shipped.encode_pair(linearize_table(parse_mr(mr)), ref)[0]) for mr, ref in pairs]
    assert statistics.mean(tables) <= 80  # the MR as a table, as fine-tuning writes it
    assert all(shipped.decode(shipped.encode(ref)) == ref for _, ref in pairs)


def test_the_shipped_tokenizer_is_what_the_build_makes(shipped, tmp_path, monkeypatch):
    """data/tokenizer.json is exactly what ``python -m tinypft.data`` trains on the shipped E2E
    training split, so nothing outside the repository went into it."""
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    path = build_tokenizer(tmp_path, vocab_size=DEFAULT_VOCAB_SIZE)
    assert path == tmp_path / "tokenizer.json"
    rebuilt = Tokenizer.load(path)
    assert rebuilt.fingerprint() == shipped.fingerprint()
    assert rebuilt.vocab_size == shipped.vocab_size == DEFAULT_VOCAB_SIZE


def test_tokenizer_training_texts_are_the_training_references_and_tables():
    train = load_e2e("train")[:3]
    texts = tokenizer_training_texts(train)
    refs = [ref for ex in train for ref in ex.refs]
    assert texts == [" " + ref for ref in refs] + [linearize_table(ex.slots) for ex in train]
