"""Tests for MR helpers, the synthetic E2E data, the pretraining corpus and the data build."""

from __future__ import annotations

import filecmp
import itertools
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tinypft.data import (
    E2E_SLOTS,
    EXTRA_NAMES,
    EXTRA_NEAR,
    HELDOUT_NAMES,
    HELDOUT_NEAR,
    PRETRAIN_DEV_SEED,
    build_all,
    canonical_order,
    flatten_pairs,
    format_mr,
    generate_splits,
    load_synth_e2e,
    parse_mr,
    pretraining_documents,
    realise,
    repo_data_dir,
    slot_errors,
    write_synth_e2e,
)
from tinypft.data.lexicon import KNOWN_ENTITIES
from tinypft.data.pretrain import (
    LANDMARKS,
    VENUE_NAMES,
    made_up_word,
    make_document,
    make_document_with_venues,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def splits():
    return generate_splits(seed=0)


# --- MR strings --------------------------------------------------------------------------------


def test_parse_mr_keeps_order_and_values_with_spaces_commas_and_brackets():
    mr = "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5]"
    assert parse_mr(mr) == {"name": "The Vaults", "eatType": "pub", "priceRange": "more than £30",
                            "customer rating": "5 out of 5"}
    assert list(parse_mr(mr)) == ["name", "eatType", "priceRange", "customer rating"]
    assert parse_mr("  name[ A ] ,near[x, y [z]]  ") == {"name": "A", "near": "x, y [z]"}
    assert parse_mr("priceRange[£20-25]") == {"priceRange": "£20-25"}


@pytest.mark.parametrize("bad", ["", "   ", "name", "name[The Eagle", "[pub]", "name[A] eatType[pub]",
                                 "name[A], name[B]", "name[A],, eatType[pub]", "name[A]]"])
def test_parse_mr_rejects_malformed_input(bad):
    with pytest.raises(ValueError, match="malformed MR"):
        parse_mr(bad)


def test_format_mr_round_trips_and_validates():
    slots = {"name": "Loch Fyne", "food": "French", "near": "The Rice Boat"}
    assert format_mr(slots) == "name[Loch Fyne], food[French], near[The Rice Boat]"
    assert parse_mr(format_mr(slots)) == slots
    assert list(canonical_order({"near": "X", "name": "A", "food": "Indian"})) == ["name", "food", "near"]
    for bad in ({}, {"na[me": "A"}, {"name": "A]"}, {"name": " A"}):
        with pytest.raises(ValueError):
            format_mr(bad)


def test_table_source_writes_every_value_as_a_sentence_tokenizes_it():
    from tinypft.data import E2EExample, load_tokenizer, with_source

    slots = {"name": "Loch Fyne", "area": "city centre", "near": "The Rice Boat"}
    ex = E2EExample(mr=format_mr(slots), slots=slots, refs=("Loch Fyne is in the city centre.",))
    (table,) = with_source([ex], "table")
    assert table.mr == "name : Loch Fyne | area : city centre | near : The Rice Boat"
    assert table.slots == slots and table.refs == ex.refs
    assert with_source([ex], "mr") == [ex]
    tok = load_tokenizer()
    in_sentence = tok.encode(" city centre")  # a value's tokens inside a description
    assert tok.encode(table.mr)[: -1] != tok.encode(ex.mr)[: -1]
    ids = tok.encode(table.mr)
    assert any(ids[i : i + len(in_sentence)] == in_sentence for i in range(len(ids)))
    assert not any(tok.encode(ex.mr)[i : i + len(in_sentence)] == in_sentence for i in range(len(ids)))
    with pytest.raises(ValueError, match="source format"):
        with_source([ex], "json")


def test_real_slot_inventory_sizes_and_made_up_names_are_separate():
    sizes = {slot: len(values) for slot, values in E2E_SLOTS.items()}
    assert sizes == {"name": 34, "eatType": 3, "food": 7, "priceRange": 6, "customer rating": 6,
                     "area": 2, "familyFriendly": 2, "near": 19}
    assert not set(EXTRA_NAMES) & set(E2E_SLOTS["name"])
    assert not set(EXTRA_NEAR) & set(E2E_SLOTS["near"])


# --- synthetic E2E splits ----------------------------------------------------------------------


def test_split_sizes_and_references_per_mr(splits):
    expected = {"train": (2000, 3), "dev": (300, 5), "test": (300, 5), "extrap": (300, 5)}
    for split, (n_mrs, n_refs) in expected.items():
        assert len(splits[split]) == n_mrs
        assert all(len(ex.refs) == n_refs == len(set(ex.refs)) for ex in splits[split])


def test_mrs_look_like_e2e(splits):
    sizes = Counter()
    for example in itertools.chain(*splits.values()):
        slots = parse_mr(example.mr)
        assert slots == example.slots and list(slots) == list(canonical_order(slots))
        assert "name" in slots and 3 <= len(slots) <= 8
        for slot, value in slots.items():
            if slot not in ("name", "near"):
                assert value in E2E_SLOTS[slot]
        sizes[len(slots)] += 1
    assert set(sizes) == {3, 4, 5, 6, 7, 8}


def test_mr_sets_are_disjoint_across_splits(splits):
    mr_sets = {split: {ex.mr for ex in examples} for split, examples in splits.items()}
    for a, b in itertools.combinations(mr_sets, 2):
        assert not mr_sets[a] & mr_sets[b], (a, b)


def test_extrap_names_and_landmarks_never_occur_in_training(splits):
    train_text = "\n".join(mr + "\n" + ref for mr, ref in flatten_pairs(splits["train"]))
    for example in splits["extrap"]:
        assert example.slots["name"] in HELDOUT_NAMES
        assert example.slots.get("near", HELDOUT_NEAR[0]) in HELDOUT_NEAR
    for entity in HELDOUT_NAMES + HELDOUT_NEAR:
        assert entity not in train_text
    train_names = {ex.slots["name"] for ex in splits["train"]}
    assert set(E2E_SLOTS["name"]) <= train_names  # training covers every real E2E name


def test_every_value_is_realised_and_nothing_is_hallucinated(splits):
    for example in itertools.chain(*splits.values()):
        for ref in example.refs:
            assert slot_errors(ref, example.slots) == {"missing": [], "hallucinated": []}, ref


def test_slot_error_detector_catches_drops_and_hallucinations():
    mr = {"name": "The Eagle", "eatType": "pub", "food": "French", "near": "Avalon"}
    errors = slot_errors("The Eagle is a cheap pub near Burger King.", mr)
    assert errors["missing"] == ["near[Avalon]", "food[French]"]
    assert set(errors["hallucinated"]) == {"entity[Burger King]", "priceRange[cheap]"}
    # A landmark containing a cuisine word is not read as the cuisine.
    mr = {"name": "Alimentum", "near": "Raja Indian Cuisine"}
    assert slot_errors("Alimentum is near Raja Indian Cuisine.", mr)["hallucinated"] == []


def test_references_vary_and_are_not_a_function_of_the_mr(splits):
    mr = {"name": "The Eagle", "eatType": "pub", "food": "French", "priceRange": "cheap", "area": "riverside"}
    assert len({realise(mr, random.Random(i)) for i in range(40)}) >= 35

    def delexicalise(example, ref):
        ref = ref.replace(example.slots["name"], "NAME")
        return ref.replace(example.slots["near"], "NEAR") if "near" in example.slots else ref

    templates = {delexicalise(ex, ref) for ex in splits["train"] for ref in ex.refs}
    assert len(templates) > 5000  # of 6,000 training references


def test_references_use_synonyms_pronouns_and_aggregation(splits):
    refs = [ref for ex in splits["train"] for ref in ex.refs]
    text = "\n".join(refs)
    for variants in (["coffee shop", "café"], ["cheap", "low-priced", "inexpensive"],
                     ["family friendly", "kid friendly", "welcomes children"]):
        assert all(text.count(v) >= 20 for v in variants), variants
    for marker in (" It ", " They ", "The venue", ", which ", " and ", "There is ", "? Try "):
        assert text.count(marker) >= 20, marker
    sentence_counts = Counter(len(re.findall(r"[.?!](?= |$)", ref)) for ref in refs)
    assert all(sentence_counts[n] >= 300 for n in (1, 2, 3))
    lengths = [len(ref) for ref in refs]
    assert min(lengths) < 60 and max(lengths) > 220


def test_generation_is_seeded(splits):
    again = generate_splits(seed=0, sizes={"train": 50, "dev": 5, "test": 5, "extrap": 5})
    assert [ex.refs for ex in again["train"]] == [ex.refs for ex in splits["train"][:50]]
    other = generate_splits(seed=1, sizes={"train": 50, "dev": 5, "test": 5, "extrap": 5})
    assert [ex.mr for ex in other["train"]] != [ex.mr for ex in again["train"]]
    with pytest.raises(ValueError, match="unknown split"):
        generate_splits(sizes={"validation": 3})


def test_shipped_csvs_load_and_match_generation(splits):
    if not (repo_data_dir() / "e2e_synth" / "train.csv").is_file():
        pytest.skip("data/ has not been built")
    for split, examples in splits.items():
        loaded = load_synth_e2e(split)
        assert [(ex.mr, ex.refs) for ex in loaded] == [(ex.mr, ex.refs) for ex in examples]
    assert (repo_data_dir() / "e2e_synth" / "train.csv").read_text(encoding="utf-8").startswith("mr,ref\n")


# --- pretraining corpus ------------------------------------------------------------------------


def test_pretraining_stream_is_deterministic_unbounded_and_indexable():
    docs = list(pretraining_documents(seed=0, n_docs=30))
    assert docs == list(pretraining_documents(seed=0, n_docs=30))
    assert make_document(0, 17) == docs[17]
    assert len(list(itertools.islice(pretraining_documents(seed=0), 40))) == 40
    held_out = set(pretraining_documents(seed=PRETRAIN_DEV_SEED, n_docs=500))
    assert not held_out & set(pretraining_documents(seed=0, n_docs=500))
    assert len(set(pretraining_documents(seed=0, n_docs=2000))) == 2000
    with pytest.raises(ValueError):
        list(pretraining_documents(seed=0, n_docs=-1))


def test_pretraining_documents_repeat_one_venue_name_across_paragraphs():
    kinds, mentions = Counter(), []
    for index in range(300):
        doc, venues = make_document_with_venues(seed=0, index=index)
        paragraphs = doc.split("\n\n")
        for venue in venues:
            assert venue.name in doc
        if len(venues) == 1:  # a document about one venue names it in every paragraph
            assert len(paragraphs) >= 2 and all(venues[0].name in p for p in paragraphs)
            mentions.append(doc.count(venues[0].name))
        elif paragraphs[0].startswith("Places to eat near"):  # a guide: one paragraph per venue
            assert [v.name in p for v, p in zip(venues, paragraphs[1:])] == [True] * len(venues)
            kinds["guide"] += 1
        else:  # a comparison names both venues in its last paragraph
            assert len(venues) == 2 and all(v.name in paragraphs[-1] for v in venues)
            kinds["comparison"] += 1
        kinds["single"] += len(venues) == 1
    assert kinds["single"] >= 150 and kinds["comparison"] >= 30 and kinds["guide"] >= 10
    assert sum(mentions) / len(mentions) >= 4


def test_most_pretraining_names_are_made_up_so_they_must_be_copied_not_recalled():
    names, landmarks, fact_sheets = [], [], 0
    for index in range(1000):
        doc, venues = make_document_with_venues(seed=0, index=index)
        names += [v.name for v in venues]
        landmarks += [v.near for v in venues]
        fact_sheets += doc.startswith("Name: ")
    made_up = [n for n in names if n not in VENUE_NAMES]
    assert 0.6 < len(made_up) / len(names) < 0.8  # REAL_WORD_NAME_SHARE is 0.3
    assert len(set(made_up)) > 0.95 * len(made_up)  # almost never the same name twice
    assert 0.6 < sum(p not in LANDMARKS for p in landmarks) / len(landmarks) < 0.8
    lowered = [e.lower() for e in KNOWN_ENTITIES]
    for entity in names + landmarks:
        assert not any(k in entity.lower() or entity.lower() in k for k in lowered), entity
    assert 150 < fact_sheets < 300  # 30% of the 70% single-venue documents
    rng = random.Random(0)
    assert all(made_up_word(rng).isalpha() for _ in range(100))


def test_pretraining_text_uses_label_words_and_broader_genres():
    text = "\n".join(pretraining_documents(seed=0, n_docs=1000))
    words = Counter(re.findall(r"[a-z]+", text.lower()))
    for label in ("low", "average", "high", "yes", "no"):
        assert words[label] >= 200, label
    genres = ("Would I go back", "To find", "The menu at", "cheaper than", "Places to eat near", "? Yes")
    for marker in genres + ("? No",):  # reviews, directions, menus, comparisons, guides, questions
        assert marker in text, marker


def check_disjoint(splits, n_docs: int) -> None:
    """Every fine-tuning reference names its venue; no fine-tuning name occurs in the corpus."""
    first_sentences = {  # the first sentence of each reference that names the venue
        next(s for s in re.split(r"(?<=[.?!]) ", ref) if ex.slots["name"] in s)
        for ex in itertools.chain(*splits.values()) for ref in ex.refs
    }
    docs = list(pretraining_documents(seed=0, n_docs=n_docs))
    for doc in docs:
        assert not first_sentences.intersection(re.split(r"(?<=[.?!])\s+", doc))
    corpus = "\n".join(docs)
    assert "[" not in corpus and "]" not in corpus  # no MR strings
    lowered = corpus.lower()
    for entity in KNOWN_ENTITIES:  # not even as part of a longer word
        assert entity.lower() not in lowered, entity


def test_pretraining_corpus_is_disjoint_from_fine_tuning_data(splits):
    check_disjoint(splits, n_docs=3000)


@pytest.mark.slow
def test_first_20000_pretraining_documents_are_disjoint_from_fine_tuning_data(splits):
    check_disjoint(splits, n_docs=20_000)


# --- the data build ----------------------------------------------------------------------------


def test_generating_twice_gives_byte_identical_files(tmp_path):
    sizes = {"train": 60, "dev": 10, "test": 10, "extrap": 10}
    first = write_synth_e2e(tmp_path / "a", seed=3, sizes=sizes)
    second = write_synth_e2e(tmp_path / "b", seed=3, sizes=sizes)
    for split in first:
        assert first[split].read_bytes() == second[split].read_bytes()
    other = write_synth_e2e(tmp_path / "c", seed=4, sizes=sizes)
    assert other["train"].read_bytes() != first["train"].read_bytes()


def test_build_reproduces_the_shipped_data_folder(tmp_path):
    if not (repo_data_dir() / "tokenizer.json").is_file():
        pytest.skip("data/ has not been built")
    paths = build_all(tmp_path)
    assert sum(path.stat().st_size for path in paths.values()) < 8_000_000
    for name in paths:
        assert filecmp.cmp(tmp_path / name, repo_data_dir() / name, shallow=False), name


@pytest.mark.slow
def test_build_is_byte_identical_across_processes(tmp_path):
    first = build_all(tmp_path / "a")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    subprocess.run([sys.executable, "-m", "tinypft.data", "--out", str(tmp_path / "b")],
                   check=True, env=env, capture_output=True, cwd=tmp_path)
    for name in first:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
