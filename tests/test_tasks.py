"""Tests for the derived tasks: rating classification, MR matching, low-data and extrapolation splits."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from tinypft.data import (
    EXTRA_NAMES,
    EXTRA_NEAR,
    MATCH_LABELS,
    PAIR_SEPARATOR,
    RATING_LABELS,
    RATING_TO_LABEL,
    WEBNLG_UNSEEN_CATEGORIES,
    E2EExample,
    corrupt_mr,
    extrapolation_split,
    format_mr,
    linearize_table,
    load_e2e,
    low_data_subsets,
    mr_match_task,
    parse_mr,
    rating_mentions,
    rating_task,
    with_source,
)
from tinypft.data.tasks import unseen_entities

REAL_DATA = os.environ.get("TINYPFT_DATA")


@pytest.fixture(scope="module")
def e2e_train() -> list[E2EExample]:
    """The shipped E2E training set (4,862 MRs, 42,061 references)."""
    return load_e2e("train")


def parse_table(text: str) -> dict[str, str]:
    """The inverse of ``linearize_table``: ``slot : value | slot : value`` -> {slot: value}."""
    return dict(item.split(" : ", 1) for item in text.split(" | "))


# --- (a) rating classification -----------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("It has a customer rating of 5 out of 5.", {"high"}),
    ("It is highly rated and expensive.", {"high"}),
    ("A 1-star pub with high prices.", {"low"}),
    ("Customers give it an average rating.", {"average"}),
    ("It has a below average customer rating.", set()),
    ("It is rated 3 out of 5 stars.", {"average"}),
    ("A highly rated low-priced café.", {"high"}),
    ("A cheap pub near the river.", set()),
])
def test_rating_mentions(text, expected):
    assert rating_mentions(text) == expected


def test_rating_task_keeps_only_refs_that_state_their_mrs_rating(e2e_train):
    task = rating_task(e2e_train)
    assert task.labels == RATING_LABELS == ("low", "average", "high")
    rated = [ex for ex in e2e_train if "customer rating" in ex.slots]
    total = sum(len(ex.refs) for ex in rated)
    assert 0.5 * total < len(task) < total  # some references leave the rating out, most state it
    labels_of_ref: dict[str, set[str]] = {}
    for ex in rated:
        for ref in ex.refs:
            labels_of_ref.setdefault(ref, set()).add(RATING_TO_LABEL[ex.slots["customer rating"]])
    for source, target in task.examples:
        assert rating_mentions(source) == {target}  # readable from the text alone
        assert target in labels_of_ref[source]  # and it is the MR's own rating
    counts = task.label_counts()
    assert set(counts) == set(RATING_LABELS) and min(counts.values()) > 0.25 * len(task)


# --- (b) MR / reference matching ---------------------------------------------------------------


@pytest.mark.parametrize("source", ["table", "mr"])
def test_mr_match_task_is_balanced_and_negatives_change_one_slot(e2e_train, source):
    task = mr_match_task(e2e_train, seed=0, source=source)
    assert task.labels == MATCH_LABELS == ("yes", "no")
    n_refs = sum(len(ex.refs) for ex in e2e_train)
    assert len(task) == n_refs == 42061
    counts = task.label_counts()
    assert counts["yes"] + counts["no"] == n_refs and abs(counts["yes"] - counts["no"]) <= 1
    mrs_of_ref: dict[str, list[dict[str, str]]] = {}  # 83 references occur under more than one MR
    for ex in e2e_train:
        for ref in ex.refs:
            mrs_of_ref.setdefault(ref, []).append(ex.slots)
    refs_used = Counter(text.split(PAIR_SEPARATOR)[1] for text, _ in task.examples)
    assert refs_used == Counter(ref for ex in e2e_train for ref in ex.refs)  # each reference once
    for text, target in task.examples:
        mr_text, ref = text.split(PAIR_SEPARATOR)
        # Every MR, positive or negative, is written the same way: the form never gives the answer.
        if source == "table":
            assert "[" not in mr_text
            slots = parse_table(mr_text)
            assert mr_text == linearize_table(slots)
        else:
            assert " : " not in mr_text and " | " not in mr_text
            slots = parse_mr(mr_text)
            assert mr_text == format_mr(slots)
        # the MR this reference was written for that is closest to the one in the example
        candidates = [o for o in mrs_of_ref[ref] if list(o) == list(slots)]  # same slots, same order
        assert candidates, text
        original = min(candidates, key=lambda o: sum(slots[s] != o[s] for s in o))
        changed = [s for s in original if slots[s] != original[s]]
        assert len(changed) == (1 if target == "no" else 0), text
        if target == "no" and changed[0] == "customer rating":
            assert RATING_TO_LABEL[slots["customer rating"]] != RATING_TO_LABEL[original["customer rating"]]
    with pytest.raises(ValueError, match="source"):
        mr_match_task(e2e_train[:5], source="triples")


def test_mr_match_task_is_seeded(e2e_train):
    subset = e2e_train[:100]
    assert mr_match_task(subset, seed=1) == mr_match_task(subset, seed=1)
    assert mr_match_task(subset, seed=1).examples != mr_match_task(subset, seed=2).examples
    # the source format changes how the MRs are written, not which references are negatives
    labels = [target for _, target in mr_match_task(subset, seed=1, source="table").examples]
    assert labels == [target for _, target in mr_match_task(subset, seed=1, source="mr").examples]


def test_corrupt_mr_never_swaps_in_a_synonym_value():
    pool = {"name": {"A", "B"}, "priceRange": {"cheap", "less than £20", "high"}}
    rng = random.Random(0)
    for _ in range(50):
        corrupted = corrupt_mr({"name": "A", "priceRange": "cheap"}, rng, pool, prefer=["priceRange"])
        assert corrupted == {"name": "A", "priceRange": "high"}
    with pytest.raises(ValueError, match="can be corrupted"):
        corrupt_mr({"name": "A"}, rng, {"name": {"A"}})


# --- (c) low-data subsets ----------------------------------------------------------------------


def test_low_data_subsets_nested_and_independent(e2e_train):
    nested = low_data_subsets(e2e_train, seeds=(0, 1), nested=True)
    assert set(nested) == {(size, seed) for size in (50, 100, 200, 500) for seed in (0, 1)}
    for (size, _), subset in nested.items():
        assert len(subset) == size == len({ex.mr for ex in subset})
    for seed in (0, 1):
        for small, large in [(50, 100), (100, 200), (200, 500)]:
            assert nested[(large, seed)][:small] == nested[(small, seed)]
    assert nested[(50, 0)] != nested[(50, 1)]
    assert low_data_subsets(e2e_train, seeds=(0, 1)) == nested  # seeded

    independent = low_data_subsets(e2e_train, seeds=(0,), nested=False)
    assert not {ex.mr for ex in independent[(50, 0)]} <= {ex.mr for ex in independent[(100, 0)]}
    with pytest.raises(ValueError, match="between 1 and"):
        low_data_subsets(e2e_train[:10], sizes=(50,))


# --- (d) extrapolation -------------------------------------------------------------------------


def test_no_e2e_text_contains_the_made_up_names_or_landmarks():
    examples = [ex for split in ("train", "dev", "test") for ex in load_e2e(split)]
    texts = [text for ex in examples for text in (ex.mr, *ex.refs)]
    assert len(set(EXTRA_NAMES)) == len(EXTRA_NAMES) and len(set(EXTRA_NEAR)) == len(EXTRA_NEAR)
    assert not [made_up for made_up in EXTRA_NAMES + EXTRA_NEAR if any(made_up in text for text in texts)]


def test_e2e_extrapolation_split_swaps_in_unseen_names_and_landmarks():
    test = load_e2e("test")
    extrap = extrapolation_split("e2e")
    assert len(extrap) == len(test) == 630
    for i, (before, after) in enumerate(zip(test, extrap)):
        new = {"name": EXTRA_NAMES[i % len(EXTRA_NAMES)], "near": EXTRA_NEAR[i % len(EXTRA_NEAR)]}
        assert list(after.slots) == list(before.slots)
        for slot, value in before.slots.items():
            assert after.slots[slot] == new.get(slot, value)
        assert after.mr == format_mr(after.slots)  # written as the file writes its MRs
        assert len(after.refs) == len(before.refs)
        for old_ref, new_ref in zip(before.refs, after.refs):
            expected = old_ref
            for slot in ("name", "near"):
                if slot in before.slots:
                    expected = expected.replace(before.slots[slot], after.slots[slot])
            assert new_ref == expected
            assert before.slots["name"] not in new_ref  # the real name is gone from every reference
            assert (before.slots["name"] in old_ref) == (after.slots["name"] in new_ref)
    assert {ex.slots["name"] for ex in extrap} == set(EXTRA_NAMES)
    tables = unseen_entities(with_source(test[:5], "table"))
    assert all(ex.mr == linearize_table(ex.slots) for ex in tables)  # a table MR stays a table
    assert [ex.slots for ex in tables] == [ex.slots for ex in extrap[:5]]
    with pytest.raises(ValueError, match="dataset"):
        extrapolation_split("e2e_synth")


@pytest.mark.skipif(not REAL_DATA, reason="TINYPFT_DATA is not set")
def test_webnlg_extrapolation_split_is_the_unseen_categories():
    extrap = extrapolation_split("webnlg")
    assert len(extrap) == 891 and {ex.category for ex in extrap} == set(WEBNLG_UNSEEN_CATEGORIES)
