"""Tasks derived from E2E-format data, all phrased as text-to-text generation.

* :func:`rating_task`: single-sentence classification. Read a reference, answer the venue's
  customer rating as ``low``, ``average`` or ``high``.
* :func:`mr_match_task`: sentence-pair classification. Given an MR and a reference, answer
  ``yes`` if the reference describes the MR and ``no`` if one slot of the MR was changed.
* :func:`low_data_subsets`: seeded small training sets (50, 100, 200, 500 MRs).
* :func:`extrapolation_split`: test data whose entities or categories training never shows.

Each task example is a ``(source, target)`` pair of strings, so the same training loop that
writes references from MRs can learn to write label words.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .lexicon import find_slot_values
from .loaders import WebNLGExample, load_e2e, load_webnlg
from .mr import E2E_SLOTS, EXTRA_NAMES, EXTRA_NEAR, E2EExample, format_mr, linearize_table

T = TypeVar("T")

RATING_LABELS: tuple[str, ...] = ("low", "average", "high")
RATING_TO_LABEL: dict[str, str] = {
    "low": "low", "1 out of 5": "low", "average": "average", "3 out of 5": "average",
    "high": "high", "5 out of 5": "high",
}
MATCH_LABELS: tuple[str, ...] = ("yes", "no")
PAIR_SEPARATOR = " || "  # between the MR and the reference in an mr_match source text

# Values that mean the same thing; a corrupted MR must leave the group, or the "no" is false.
_SAME_MEANING = [
    {"cheap", "less than £20"}, {"moderate", "£20-25"}, {"high", "more than £30"},
]
_RATING_GROUPS = [{v for v, label in RATING_TO_LABEL.items() if label == lab} for lab in RATING_LABELS]


@dataclass(frozen=True)
class TextTask:
    """A classification task as text generation: ``(source, target)`` pairs and the label words."""

    name: str
    labels: tuple[str, ...]
    examples: tuple[tuple[str, str], ...]

    def label_counts(self) -> dict[str, int]:
        counts = Counter(target for _, target in self.examples)
        return {label: counts[label] for label in self.labels}

    def __len__(self) -> int:
        return len(self.examples)


# --- (a) customer rating from a reference ------------------------------------------------------

_CUE = r"(?:customer |user |satisfaction )*(?:ratings?|rated|reviews?|reviewed|scores?|scored)"
_RATING_PATTERNS = {
    "low": (r"(?<!below )(?<!above )\b(?:low(?:ly)?|poor(?:ly)?|bad(?:ly)?)[- ]" + _CUE
            + r"|\brat(?:ed|ing) (?:is |as |of )?(?:low|poor(?:ly)?|badly)\b(?![- ]pric)"
            + r"|rate (?:it|them) low\b"
            + r"|(?<!out of )\b(?:1|one)(?: out of (?:5|five)\b|[- ]stars?\b)"),
    "average": (r"(?<!below )(?<!above )\b(?:average|mediocre|middling)[- ]" + _CUE
                + r"|\brat(?:ed|ing) (?:is |as |of )?(?:average|mediocre)\b(?![- ]pric)"
                + r"|(?<!out of )\b(?:3|three)(?: out of (?:5|five)\b|[- ]stars?\b)"),
    "high": (r"\b(?:high(?:ly)?|top|well|excellent)[- ]" + _CUE
             + r"|\brat(?:ed|ing) (?:is |as |of )?(?:high(?:ly)?|well|excellent)\b(?![- ]pric)"
             + r"|rate (?:it|them) highly\b"
             + r"|(?<!out of )\b(?:5|five)(?: out of (?:5|five)\b|[- ]stars?\b)"),
}
_RATING_REGEXES = {label: re.compile(p, re.IGNORECASE) for label, p in _RATING_PATTERNS.items()}


def rating_mentions(text: str) -> set[str]:
    """The rating labels a text states ("5 out of 5", "highly rated" and "5 stars" all mean high)."""
    return {label for label, regex in _RATING_REGEXES.items() if regex.search(text)}


def rating_task(examples: Iterable[E2EExample]) -> TextTask:
    """Classify a reference's customer rating as ``low``, ``average`` or ``high``.

    Keeps only references whose MR has a ``customer rating`` and whose text states exactly
    that rating level, so that the answer can be read from the text alone.
    """
    pairs = []
    for example in examples:
        value = example.slots.get("customer rating")
        if value is None:
            continue
        label = RATING_TO_LABEL[value]
        pairs += [(ref, label) for ref in example.refs if rating_mentions(ref) == {label}]
    return TextTask("rating", RATING_LABELS, tuple(pairs))


# --- (b) does this reference match this MR? ----------------------------------------------------


def _alternatives(slot: str, value: str, pool: dict[str, set[str]]) -> list[str]:
    """Values of ``slot`` that contradict ``value`` (not merely reworded)."""
    groups = _RATING_GROUPS if slot == "customer rating" else _SAME_MEANING if slot == "priceRange" else []
    same = next((g for g in groups if value in g), {value})
    return sorted(pool.get(slot, set()) - same)


def corrupt_mr(slots: dict[str, str], rng: random.Random, pool: dict[str, set[str]],
               prefer: Sequence[str] = ()) -> dict[str, str]:
    """Copy of ``slots`` with one value replaced by a contradicting value of the same slot.

    The slot is drawn from ``prefer`` (e.g. the slots the reference mentions) when possible.
    ``pool`` maps each slot to the values it may take.
    """
    candidates = [s for s in slots if _alternatives(s, slots[s], pool)]
    if not candidates:
        raise ValueError(f"no slot of {format_mr(slots)} can be corrupted")
    preferred = [s for s in candidates if s in prefer]
    slot = rng.choice(preferred or candidates)
    return {**slots, slot: rng.choice(_alternatives(slot, slots[slot], pool))}


def _mentioned_slots(slots: dict[str, str], ref: str) -> list[str]:
    entities, values = find_slot_values(ref, [slots[s] for s in ("name", "near") if s in slots])
    return [s for s, v in slots.items() if v in entities or v in values.get(s, set())]


def mr_match_task(examples: Sequence[E2EExample], seed: int = 0, source: str = "table") -> TextTask:
    """Does the reference describe the MR? ``yes`` / ``no``, exactly balanced (±1).

    Every reference appears once. A seeded half keeps its own MR (``yes``); the other half
    gets its MR with one slot changed to another value of that slot (``no``), preferring a
    slot the reference visibly mentions, so the change contradicts the text. Source texts
    are ``mr + PAIR_SEPARATOR + ref``, every MR written the same way: as a table
    (``source="table"``) or in the bracket format (``"mr"``), so the form never gives the answer.
    """
    if source not in ("table", "mr"):
        raise ValueError(f"unknown source format {source!r}; choose table or mr")
    write = linearize_table if source == "table" else format_mr
    pool: dict[str, set[str]] = {slot: set(values) for slot, values in E2E_SLOTS.items()}
    for example in examples:
        for slot, value in example.slots.items():
            pool.setdefault(slot, set()).add(value)
    rng = random.Random(f"mr-match:{seed}")
    rows = [(example, ref) for example in examples for ref in example.refs]
    negatives = set(rng.sample(range(len(rows)), len(rows) // 2))
    pairs = []
    for i, (example, ref) in enumerate(rows):
        if i in negatives:
            slots = corrupt_mr(example.slots, rng, pool, prefer=_mentioned_slots(example.slots, ref))
            pairs.append((write(slots) + PAIR_SEPARATOR + ref, "no"))
        else:
            pairs.append((write(example.slots) + PAIR_SEPARATOR + ref, "yes"))
    return TextTask("mr_match", MATCH_LABELS, tuple(pairs))


# --- (c) low-data training subsets -------------------------------------------------------------

LOW_DATA_SIZES: tuple[int, ...] = (50, 100, 200, 500)


def low_data_subsets(
    examples: Sequence[T],
    sizes: Sequence[int] = LOW_DATA_SIZES,
    seeds: Sequence[int] = (0, 1, 2),
    nested: bool = True,
) -> dict[tuple[int, int], list[T]]:
    """Seeded subsets of ``examples`` (one example = one MR with all its references).

    Returns ``{(size, seed): subset}``. With ``nested=True`` the subsets of one seed are
    prefixes of one shuffled order, so the 50-MR set is inside the 100-MR set and so on; this
    isolates the effect of size. With ``nested=False`` each (size, seed) is drawn independently.
    """
    if any(size < 1 or size > len(examples) for size in sizes):
        raise ValueError(f"subset sizes {list(sizes)} must be between 1 and {len(examples)}")
    subsets = {}
    for seed in seeds:
        order = list(range(len(examples)))
        random.Random(f"low-data:{seed}").shuffle(order)
        for size in sizes:
            if not nested:
                order = random.Random(f"low-data:{seed}:{size}").sample(range(len(examples)), size)
            subsets[(size, seed)] = [examples[i] for i in order[:size]]
    return subsets


# --- (d) extrapolation ------------------------------------------------------------------------


def unseen_entities(examples: Sequence[E2EExample]) -> list[E2EExample]:
    """The examples with their venue name and landmark swapped for made-up ones that no E2E text
    contains (``EXTRA_NAMES``, ``EXTRA_NEAR``, in turn), in the MR and in every reference.

    A fine-tuned model can write such a name only by copying it from the MR: it extrapolates to
    entities it never saw, the E2E counterpart of WebNLG's unseen categories.
    """
    out = []
    for i, example in enumerate(examples):
        swap = {"name": EXTRA_NAMES[i % len(EXTRA_NAMES)], "near": EXTRA_NEAR[i % len(EXTRA_NEAR)]}
        slots = {slot: swap.get(slot, value) for slot, value in example.slots.items()}
        refs = list(example.refs)
        for slot in ("name", "near"):
            if slot in example.slots:
                refs = [ref.replace(example.slots[slot], slots[slot]) for ref in refs]
        mr = format_mr(slots) if example.mr == format_mr(example.slots) else linearize_table(slots)
        out.append(E2EExample(mr=mr, slots=slots, refs=tuple(refs)))
    return out


def extrapolation_split(
    dataset: str, data_dir: str | Path | None = None
) -> list[E2EExample] | list[WebNLGExample]:
    """Test examples outside the training distribution.

    ``"e2e"``: the E2E test MRs with unseen venue names and landmarks (:func:`unseen_entities`).
    ``"webnlg"``: the test entries of the 5 categories absent from training (needs ``TINYPFT_DATA``).
    """
    if dataset == "e2e":
        return unseen_entities(load_e2e("test", data_dir))
    if dataset == "webnlg":
        return load_webnlg("test", data_dir, category_set="unseen")
    raise ValueError(f"dataset must be 'e2e' or 'webnlg', got {dataset!r}")
