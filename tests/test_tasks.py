"""Tests for the derived tasks: rating classification, MR matching, low-data and extrapolation splits."""

from __future__ import annotations

import os
import random
from collections import Counter

import pytest

from tinypft.data import (
    HELDOUT_NAMES,
    MATCH_LABELS,
    PAIR_SEPARATOR,
    RATING_LABELS,
    RATING_TO_LABEL,
    WEBNLG_UNSEEN_CATEGORIES,
    corrupt_mr,
    extrapolation_split,
    load_e2e,
    load_synth_e2e,
    low_data_subsets,
    mr_match_task,
    parse_mr,
    rating_mentions,
    rating_task,
)

REAL_DATA = os.environ.get("TINYPFT_DATA")


@pytest.fixture(scope="module")
def synth_train():
    return load_synth_e2e("train")


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


def test_rating_task_on_synthetic_data(synth_train):
    task = rating_task(synth_train)
    assert task.labels == RATING_LABELS == ("low", "average", "high")
    rated = [ex for ex in synth_train if "customer rating" in ex.slots]
    # The synthetic references always state the rating, so every one of them is kept.
    assert len(task) == sum(len(ex.refs) for ex in rated)
    label_of_ref = {ref: RATING_TO_LABEL[ex.slots["customer rating"]] for ex in rated for ref in ex.refs}
    assert all(label_of_ref[source] == target for source, target in task.examples)
    counts = task.label_counts()
    assert set(counts) == set(RATING_LABELS) and min(counts.values()) > 0.25 * len(task)


@pytest.mark.skipif(not REAL_DATA, reason="TINYPFT_DATA is not set")
def test_rating_task_on_real_data_keeps_only_refs_that_state_the_rating():
    examples = load_e2e("dev")
    task = rating_task(examples)
    total = sum(len(ex.refs) for ex in examples if "customer rating" in ex.slots)
    assert 0.5 * total < len(task) < total  # some real references leave the rating out
    assert all(rating_mentions(source) == {target} for source, target in task.examples)


# --- (b) MR / reference matching ---------------------------------------------------------------


def test_mr_match_task_is_balanced_and_negatives_change_one_slot(synth_train):
    task = mr_match_task(synth_train, seed=0)
    assert task.labels == MATCH_LABELS == ("yes", "no")
    assert len(task) == 6000 and task.label_counts() == {"yes": 3000, "no": 3000}
    mr_of_ref = {ref: ex.slots for ex in synth_train for ref in ex.refs}
    refs_used = Counter(source.split(PAIR_SEPARATOR)[1] for source, _ in task.examples)
    assert refs_used == Counter(ref for ex in synth_train for ref in ex.refs)  # each reference once
    for source, target in task.examples:
        mr_text, ref = source.split(PAIR_SEPARATOR)
        slots, original = parse_mr(mr_text), mr_of_ref[ref]
        changed = [s for s in original if slots[s] != original[s]]
        assert list(slots) == list(original)
        assert len(changed) == (1 if target == "no" else 0)
        if target == "no" and changed[0] == "customer rating":
            assert RATING_TO_LABEL[slots["customer rating"]] != RATING_TO_LABEL[original["customer rating"]]


def test_mr_match_task_is_seeded(synth_train):
    subset = synth_train[:100]
    assert mr_match_task(subset, seed=1) == mr_match_task(subset, seed=1)
    assert mr_match_task(subset, seed=1).examples != mr_match_task(subset, seed=2).examples


def test_corrupt_mr_never_swaps_in_a_synonym_value():
    pool = {"name": {"A", "B"}, "priceRange": {"cheap", "less than £20", "high"}}
    rng = random.Random(0)
    for _ in range(50):
        corrupted = corrupt_mr({"name": "A", "priceRange": "cheap"}, rng, pool, prefer=["priceRange"])
        assert corrupted == {"name": "A", "priceRange": "high"}
    with pytest.raises(ValueError, match="can be corrupted"):
        corrupt_mr({"name": "A"}, rng, {"name": {"A"}})


# --- (c) low-data subsets ----------------------------------------------------------------------


def test_low_data_subsets_nested_and_independent(synth_train):
    nested = low_data_subsets(synth_train, seeds=(0, 1), nested=True)
    assert set(nested) == {(size, seed) for size in (50, 100, 200, 500) for seed in (0, 1)}
    for (size, _), subset in nested.items():
        assert len(subset) == size == len({ex.mr for ex in subset})
    for seed in (0, 1):
        for small, large in [(50, 100), (100, 200), (200, 500)]:
            assert nested[(large, seed)][:small] == nested[(small, seed)]
    assert nested[(50, 0)] != nested[(50, 1)]
    assert low_data_subsets(synth_train, seeds=(0, 1)) == nested  # seeded

    independent = low_data_subsets(synth_train, seeds=(0,), nested=False)
    assert not {ex.mr for ex in independent[(50, 0)]} <= {ex.mr for ex in independent[(100, 0)]}
    with pytest.raises(ValueError, match="between 1 and"):
        low_data_subsets(synth_train[:10], sizes=(50,))


# --- (d) extrapolation -------------------------------------------------------------------------


def test_synthetic_extrapolation_split(synth_train):
    extrap = extrapolation_split("e2e_synth")
    assert len(extrap) == 300
    train_names = {ex.slots["name"] for ex in synth_train}
    assert all(ex.slots["name"] in HELDOUT_NAMES and ex.slots["name"] not in train_names for ex in extrap)
    with pytest.raises(ValueError, match="dataset"):
        extrapolation_split("webnlg2020")


@pytest.mark.skipif(not REAL_DATA, reason="TINYPFT_DATA is not set")
def test_webnlg_extrapolation_split_is_the_unseen_categories():
    extrap = extrapolation_split("webnlg")
    assert len(extrap) == 891 and {ex.category for ex in extrap} == set(WEBNLG_UNSEEN_CATEGORIES)
