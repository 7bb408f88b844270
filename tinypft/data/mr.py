"""E2E meaning representations (MRs).

An E2E meaning representation is a flat list of ``slot[value]`` items, for example::

    name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5]

This module parses and formats such strings (and writes an MR as a table,
``name : The Vaults | eatType : pub``), and lists the 8 E2E slots with the exact values that
occur in the E2E training set. Made-up venue names and landmarks, which no E2E MR contains,
are kept in separate lists (``EXTRA_NAMES``, ``EXTRA_NEAR``) so that the real inventory stays
intact: the copy probe (:mod:`tinypft.train.probes`) and the unseen-entities extrapolation
split (:func:`tinypft.data.tasks.unseen_entities`) put them in place of the real ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

# The 8 E2E slots in the order the E2E data writes them, each with its real values
# (sorted as in the E2E training set). The ``name`` slot is always present in an MR.
E2E_SLOTS: dict[str, tuple[str, ...]] = {
    "name": (
        "Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Browns Cambridge", "Clowns", "Cocum",
        "Cotto", "Fitzbillies", "Giraffe", "Green Man", "Loch Fyne", "Midsummer House", "Strada",
        "Taste of Cambridge", "The Cambridge Blue", "The Cricketers", "The Dumpling Tree", "The Eagle",
        "The Golden Curry", "The Golden Palace", "The Mill", "The Olive Grove", "The Phoenix",
        "The Plough", "The Punter", "The Rice Boat", "The Twenty Two", "The Vaults", "The Waterman",
        "The Wrestlers", "Travellers Rest Beefeater", "Wildwood", "Zizzi",
    ),
    "eatType": ("coffee shop", "pub", "restaurant"),
    "food": ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"),
    "priceRange": ("cheap", "high", "less than £20", "moderate", "more than £30", "£20-25"),
    "customer rating": ("1 out of 5", "3 out of 5", "5 out of 5", "average", "high", "low"),
    "area": ("city centre", "riverside"),
    "familyFriendly": ("no", "yes"),
    "near": (
        "All Bar One", "Avalon", "Burger King", "Café Adriatic", "Café Brazil", "Café Rouge",
        "Café Sicilia", "Clare Hall", "Crowne Plaza Hotel", "Express by Holiday Inn",
        "Rainbow Vegetarian Café", "Raja Indian Cuisine", "Ranch", "The Bakers", "The Portland Arms",
        "The Rice Boat", "The Six Bells", "The Sorrento", "Yippee Noodle Bar",
    ),
}

# Slot names in canonical E2E order.
SLOT_ORDER: tuple[str, ...] = tuple(E2E_SLOTS)

# Made-up venue names and landmarks that no E2E text contains, for the copy probe
# (tinypft.train.probes) and the unseen-entities split (tinypft.data.tasks.unseen_entities): a
# model can write them only by copying them from its input. They avoid
# every word that the slot detector (tinypft.data.lexicon) reads as a slot value (river, centre,
# café, pub, food words, prices, ratings, family, stars), so part of a name is never mistaken
# for a value.
EXTRA_NAMES: tuple[str, ...] = (
    "The Copper Kettle", "Saffron Garden", "The Lemon Tree", "Blue Heron", "The Red Door",
    "Rosewood", "The Brass Lantern", "Juniper", "The Old Forge", "Little Fig", "The Salt House",
    "Harvest Moon", "The Crooked Spoon", "Maple and Rye", "The Silver Birch", "Pomegranate",
    "The Hungry Fox", "Olive and Vine", "The Tin Whistle", "Wild Garlic", "The Green Dragon",
    "Magpie", "The Yellow Umbrella", "Lotus Leaf", "The Blackbird", "Cinnamon Club",
    "The Painted Lady", "Honeycomb", "The White Hart", "Bamboo Grove",
)
EXTRA_NEAR: tuple[str, ...] = (
    "the Corn Exchange", "Parker's Piece", "the Botanic Garden", "King's College", "the Guildhall",
    "Jesus Green", "the Fitzwilliam Museum", "Magdalene Bridge", "the Hollow Gate", "Mill Road",
    "the Round Church", "Midsummer Common", "the Leisure Park", "Silver Street",
)


def parse_mr(mr: str) -> dict[str, str]:
    """Parse ``"slot[value], slot[value], ..."`` into an ordered ``{slot: value}`` dict.

    Spaces around items and slot names are ignored. A value may contain commas, spaces and
    balanced brackets, since the value ends at the ``]`` that closes its own ``[``.

    Raises:
        ValueError: on an empty string, a missing bracket, an empty slot name, text between
            items that is not a comma, or a slot given twice.
    """
    if not isinstance(mr, str):
        raise TypeError(f"parse_mr expects a string, got {type(mr).__name__}")
    slots: dict[str, str] = {}
    pos, n = 0, len(mr)
    while True:
        while pos < n and mr[pos].isspace():
            pos += 1
        if pos == n:
            break
        open_at = mr.find("[", pos)
        if open_at < 0:
            raise ValueError(f"malformed MR {mr!r}: expected 'slot[value]' at position {pos}")
        slot = mr[pos:open_at].strip()
        if not slot or any(ch in slot for ch in ",]"):
            raise ValueError(f"malformed MR {mr!r}: bad slot name {slot!r} at position {pos}")
        close_at = _matching_bracket(mr, open_at)
        if slot in slots:
            raise ValueError(f"malformed MR {mr!r}: slot {slot!r} appears twice")
        slots[slot] = mr[open_at + 1 : close_at].strip()
        pos = close_at + 1
        while pos < n and mr[pos].isspace():
            pos += 1
        if pos < n:
            if mr[pos] != ",":
                raise ValueError(f"malformed MR {mr!r}: expected ',' at position {pos}, got {mr[pos]!r}")
            pos += 1
    if not slots:
        raise ValueError(f"malformed MR {mr!r}: no 'slot[value]' items")
    return slots


def _matching_bracket(text: str, open_at: int) -> int:
    """Index of the ``]`` closing the ``[`` at ``open_at`` (brackets may nest)."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"malformed MR {text!r}: '[' at position {open_at} is never closed")


def format_mr(slots: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Format slots as an E2E MR string, keeping the given order.

    ``format_mr(parse_mr(s))`` reproduces ``s`` up to spacing. Use :func:`canonical_order`
    first to get the E2E slot order.
    """
    items = list(slots.items()) if isinstance(slots, Mapping) else list(slots)
    if not items:
        raise ValueError("format_mr needs at least one slot")
    parts = []
    for slot, value in items:
        if not slot or any(ch in slot for ch in "[],") or slot != slot.strip():
            raise ValueError(f"invalid slot name {slot!r}")
        if value != value.strip() or not _balanced(value):
            raise ValueError(f"invalid value {value!r} for slot {slot!r}")
        parts.append(f"{slot}[{value}]")
    return ", ".join(parts)


def linearize_table(slots: Mapping[str, str]) -> str:
    """The MR as the Prefix-Tuning paper feeds it to GPT-2: ``slot : value | slot : value``.

    ``name[The Vaults], area[city centre]`` -> ``name : The Vaults | area : city centre``. With a
    space before every value, a value is tokenized as it is inside a sentence (`` city``, not
    ``city`` after ``[``), so a model can copy it token for token into its description.
    """
    if not slots:
        raise ValueError("linearize_table needs at least one slot")
    return " | ".join(f"{slot} : {value}" for slot, value in slots.items())


def with_source(examples: Iterable[E2EExample], source: str) -> list[E2EExample]:
    """The examples with ``mr`` written as ``source`` says: ``mr`` (as in the data file, kept) or
    ``table`` (:func:`linearize_table`). The slots and references are unchanged."""
    if source == "mr":
        return list(examples)
    if source == "table":
        return [replace(ex, mr=linearize_table(ex.slots)) for ex in examples]
    raise ValueError(f"unknown source format {source!r}; choose mr or table")


def _balanced(value: str) -> bool:
    depth = 0
    for ch in value:
        depth += (ch == "[") - (ch == "]")
        if depth < 0:
            return False
    return depth == 0


def canonical_order(slots: Mapping[str, str]) -> dict[str, str]:
    """Return ``slots`` reordered into the E2E slot order (unknown slots go last)."""
    rank = {slot: i for i, slot in enumerate(SLOT_ORDER)}
    return dict(sorted(slots.items(), key=lambda item: rank.get(item[0], len(rank))))


@dataclass(frozen=True)
class E2EExample:
    """One meaning representation with all its reference texts.

    Attributes:
        mr: the MR string exactly as in the data file.
        slots: the parsed MR, ``{slot: value}`` in the file's order.
        refs: the reference texts for this MR, in file order (duplicates kept).
    """

    mr: str
    slots: dict[str, str] = field(compare=False)
    refs: tuple[str, ...]


def flatten_pairs(examples: Iterable[E2EExample]) -> list[tuple[str, str]]:
    """The flat ``(mr, ref)`` view: one pair per reference, as the rows of an E2E CSV."""
    return [(ex.mr, ref) for ex in examples for ref in ex.refs]
