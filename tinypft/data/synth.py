"""A seeded synthetic restaurant dataset in the E2E format.

The data mimic the E2E NLG challenge: each example is a meaning representation (MR) with 3 to
8 of the 8 E2E slots (``name`` always present) and several human-like references. The MRs use
the real E2E values; the references come from :func:`tinypft.data.realise.realise`, which
words every value and invents none.

Splits (default sizes):

========  =====  ==============  ===============================================
split     MRs    refs per MR     names and landmarks
========  =====  ==============  ===============================================
train     2,000  3               training pool (real E2E names + made-up ones)
dev       300    5               training pool, MRs disjoint from train
test      300    5               training pool, MRs disjoint from train and dev
extrap    300    5               held-out names and landmarks never seen in train
========  =====  ==============  ===============================================
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from .mr import E2E_SLOTS, EXTRA_NAMES, EXTRA_NEAR, E2EExample, canonical_order, format_mr
from .realise import realise

# Name and landmark pools. The held-out ones appear only in the ``extrap`` split.
TRAIN_NAMES: tuple[str, ...] = E2E_SLOTS["name"] + EXTRA_NAMES[:20]
HELDOUT_NAMES: tuple[str, ...] = EXTRA_NAMES[20:]
TRAIN_NEAR: tuple[str, ...] = E2E_SLOTS["near"] + EXTRA_NEAR[:8]
HELDOUT_NEAR: tuple[str, ...] = EXTRA_NEAR[8:]

SPLITS: tuple[str, ...] = ("train", "dev", "test", "extrap")
DEFAULT_SIZES: dict[str, int] = {"train": 2000, "dev": 300, "test": 300, "extrap": 300}
DEFAULT_REFS: dict[str, int] = {"train": 3, "dev": 5, "test": 5, "extrap": 5}

# How often each optional slot and each MR size occurs in the real E2E training set.
_SLOT_WEIGHTS: dict[str, float] = {
    "eatType": 0.47, "food": 0.87, "priceRange": 0.73, "customer rating": 0.70,
    "area": 0.63, "familyFriendly": 0.63, "near": 0.49,
}
_SIZE_WEIGHTS: dict[int, float] = {3: 0.04, 4: 0.15, 5: 0.30, 6: 0.30, 7: 0.17, 8: 0.04}


def sample_mr(rng: random.Random, names: Sequence[str] = TRAIN_NAMES,
              nears: Sequence[str] = TRAIN_NEAR) -> dict[str, str]:
    """Draw one MR: a size like real E2E, slots weighted by their E2E frequency, uniform values."""
    size = rng.choices(list(_SIZE_WEIGHTS), weights=list(_SIZE_WEIGHTS.values()))[0]
    optional = dict(_SLOT_WEIGHTS)
    chosen: list[str] = []
    while len(chosen) < size - 1:
        slot = rng.choices(list(optional), weights=list(optional.values()))[0]
        chosen.append(slot)
        del optional[slot]
    name = rng.choice(names)
    slots = {"name": name}
    for slot in chosen:
        if slot == "near":
            slots[slot] = rng.choice([n for n in nears if n != name])
        else:
            slots[slot] = rng.choice(E2E_SLOTS[slot])
    return canonical_order(slots)


def distinct_references(
    mr: dict[str, str], n_refs: int, rng: random.Random, max_tries: int = 100
) -> list[str]:
    """``n_refs`` different references for one MR (raises if the planner cannot vary enough)."""
    refs: list[str] = []
    for _ in range(max_tries):
        ref = realise(mr, rng)
        if ref not in refs:
            refs.append(ref)
            if len(refs) == n_refs:
                return refs
    raise RuntimeError(f"could not write {n_refs} distinct references for {format_mr(mr)}")


def generate_splits(
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    refs_per_mr: dict[str, int] | None = None,
) -> dict[str, list[E2EExample]]:
    """Generate all synthetic splits; the same arguments always give the same data.

    MRs never repeat across (or within) splits. ``sizes`` and ``refs_per_mr`` override the
    defaults per split, e.g. ``sizes={"train": 100}`` for a quick experiment.
    """
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    refs_per_mr = {**DEFAULT_REFS, **(refs_per_mr or {})}
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected {SPLITS}")
    mr_rng = random.Random(f"e2e-synth-mrs:{seed}")
    seen: set[str] = set()
    splits: dict[str, list[E2EExample]] = {}
    for split in SPLITS:
        names, nears = (HELDOUT_NAMES, HELDOUT_NEAR) if split == "extrap" else (TRAIN_NAMES, TRAIN_NEAR)
        ref_rng = random.Random(f"e2e-synth-refs:{seed}:{split}")
        examples = []
        while len(examples) < sizes[split]:
            slots = sample_mr(mr_rng, names, nears)
            mr = format_mr(slots)
            if mr in seen:
                continue
            seen.add(mr)
            refs = distinct_references(slots, refs_per_mr[split], ref_rng)
            examples.append(E2EExample(mr=mr, slots=slots, refs=tuple(refs)))
        splits[split] = examples
    return splits


def write_synth_e2e(
    out_dir: str | Path,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    refs_per_mr: dict[str, int] | None = None,
) -> dict[str, Path]:
    """Generate the splits and write ``{out_dir}/{split}.csv``; returns the written paths."""
    from .loaders import write_e2e_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, examples in generate_splits(seed, sizes, refs_per_mr).items():
        paths[split] = out_dir / f"{split}.csv"
        write_e2e_csv(paths[split], examples)
    return paths

