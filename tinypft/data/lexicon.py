"""A detector of E2E slot values in text, the measuring stick of the slot error rate.

E2E meaning representations use 8 slots (:data:`tinypft.data.mr.E2E_SLOTS`). Two of them,
``name`` and ``near``, hold proper names, which the detector finds literally (ignoring case,
as whole words); the other six (``eatType``, ``food``, ``priceRange``, ``customer rating``,
``familyFriendly``, ``area``) hold a few categorical values each, which it finds with one
regular expression per value (:data:`_PATTERNS`) covering the common ways of wording it
("cheap", "inexpensive", "low-priced"; "by the river", "riverside"; "3 out of 5", "three-star").

* :func:`find_slot_values`: the entity names and categorical values a text expresses.
* :func:`slot_errors`: compared with an MR, the values a text leaves out (``missing``) and the
  values it states without the MR asking for them (``hallucinated``, which includes wrong ones).
* :func:`slot_error_rate`: (missing + hallucinated) / number of MR slots for one text; the corpus
  rate is :func:`tinypft.train.metrics.slot_error_rate`.

Names are found first and masked, so that "Raja Indian Cuisine" does not count as Indian
food. The detector is a heuristic made of word lists, not a parser: a wording it does not list
counts as missing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from .mr import E2E_SLOTS, EXTRA_NAMES, EXTRA_NEAR

# Every venue name and landmark the project knows: the real E2E ones and the made-up ones
# (EXTRA_NAMES, EXTRA_NEAR) of the copy probe and the unseen-entities split.
KNOWN_ENTITIES: tuple[str, ...] = tuple(
    dict.fromkeys(E2E_SLOTS["name"] + E2E_SLOTS["near"] + EXTRA_NAMES + EXTRA_NEAR)
)

_STARS = r"(?<!out of )\b(?:{d}|{w})(?: out of (?:5|five)\b|[- ]stars?\b)"
_RATING_WORD = r"\b{v} (?:customer )?(?:ratings?|reviews?)\b|\brated {v}\b|\bcustomer rating is {v}\b"

# (slot, value, regex). Order matters within familyFriendly: "no" is checked first and masked.
_PATTERNS: list[tuple[str, str, str]] = [
    ("eatType", "coffee shop", r"\bcoffee (?:shop|house)s?\b|\bcaf[eé]s?\b"),
    ("eatType", "pub", r"\bpubs?\b|\bpublic houses?\b"),
    ("eatType", "restaurant", r"\brestaurants?\b|\beater(?:y|ies)\b"),
    ("food", "Chinese", r"\bchinese\b"),
    ("food", "English", r"\benglish\b|\bbritish\b"),
    ("food", "Fast food", r"\bfast[- ]food\b"),
    ("food", "French", r"\bfrench\b"),
    ("food", "Indian", r"\bindian\b"),
    ("food", "Italian", r"\bitalian\b"),
    ("food", "Japanese", r"\bjapanese\b"),
    ("priceRange", "cheap", r"\bcheap\b|\binexpensive\b|\blow[- ]pric(?:ed|es?)\b|\bbudget\b|prices are low"),
    ("priceRange", "moderate", r"\bmoderate(?:ly)?[- ]pric(?:ed|es?)\b|\bmoderate prices\b"
     r"|\bmid[- ]?(?:range|priced)\b|\breasonably priced\b|prices are moderate"),
    ("priceRange", "high", r"\bexpensive\b|\bhigh[- ]pric(?:ed|es?)\b|\bpricey\b|\bupmarket\b"
     r"|prices are high"),
    ("priceRange", "less than £20", r"\b(?:less than|under|below) £20\b"),
    ("priceRange", "£20-25", r"£20 ?- ?£?25\b|£20 to £25\b|between £20 and £25\b"),
    ("priceRange", "more than £30", r"\b(?:more than|over|above) £30\b"),
    ("customer rating", "low", _RATING_WORD.format(v="low") + r"|\blow-rated\b|\bpoorly rated\b"),
    ("customer rating", "average", _RATING_WORD.format(v="average")),
    ("customer rating", "high", _RATING_WORD.format(v="high") + r"|\bhighly rated\b|\btop-rated\b"
     r"|\brated highly\b|\brate (?:it|them) highly\b"),
    ("customer rating", "1 out of 5", _STARS.format(d="1", w="one")),
    ("customer rating", "3 out of 5", _STARS.format(d="3", w="three")),
    ("customer rating", "5 out of 5", _STARS.format(d="5", w="five")),
    ("familyFriendly", "no", r"(?:\bnot|n't) (?:family|kid|child)[- ]friendly\b"
     r"|(?:\bnot|n't) welcome children\b|\badults[- ]only\b|(?:\bnot|n't) suitable for children\b"
     r"|\bchildren (?:are not|aren't) welcome\b"),
    ("familyFriendly", "yes", r"\b(?:family|kid|child)[- ]friendly\b|\bwelcomes? children\b"
     r"|\bgood for families\b|\bchildren are welcome\b"),
    ("area", "city centre", r"\b(?:city|town) centre\b|\bcentre of (?:the city|town)\b"),
    ("area", "riverside", r"\briverside\b|\b(?:by|on|along) the river\b"),
]
# The patterns are lowercase and are matched against lowercased text (faster than IGNORECASE).
_COMPILED = [(slot, value, re.compile(p)) for slot, value, p in _PATTERNS]
_KNOWN_SET = frozenset(KNOWN_ENTITIES)


@functools.lru_cache(maxsize=64)
def _entity_regex(entities: frozenset[str]) -> tuple[re.Pattern[str], dict[str, str]]:
    """A regex matching any entity (lowercased) as whole words, longest first, and a map back."""
    by_lower = {e.lower(): e for e in sorted(entities)}
    alternatives = "|".join(re.escape(e) for e in sorted(by_lower, key=lambda e: (-len(e), e)))
    return re.compile(r"(?<!\w)(?:" + alternatives + r")(?!\w)"), by_lower


def _entity_set(entities: Iterable[str] | None, extra: Iterable[str] = ()) -> frozenset[str]:
    base = _KNOWN_SET if entities is None else frozenset(entities)
    extra = set(extra)
    return base if extra <= base else base | extra


def find_slot_values(
    text: str, entities: Iterable[str] | None = None
) -> tuple[set[str], dict[str, set[str]]]:
    """Find which entity names and which categorical slot values ``text`` expresses.

    Args:
        text: a reference or generated sentence(s).
        entities: venue names and landmarks (default: :data:`KNOWN_ENTITIES`). They are matched
            literally (ignoring case) and masked before the categorical search, so that
            "Raja Indian Cuisine" does not count as Indian food.

    Returns:
        ``(found_entities, values)`` where ``values`` maps a slot to the set of its values found.
    """
    entities = _entity_set(entities)
    text = text.lower()
    found: set[str] = set()
    if entities:
        pattern, by_lower = _entity_regex(entities)
        found = {by_lower[m.group(0)] for m in pattern.finditer(text)}
        text = pattern.sub(" # ", text)
    values: dict[str, set[str]] = {}
    for slot, value, pattern in _COMPILED:
        if pattern.search(text):
            values.setdefault(slot, set()).add(value)
            text = pattern.sub(" # ", text)
    return found, values


def slot_errors(
    text: str, mr: Mapping[str, str], entities: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Compare the values ``text`` expresses with the MR's values.

    ``entities`` lists the venue names and landmarks the text might mention (default:
    :data:`KNOWN_ENTITIES`; the MR's own name and near values are always added).

    Returns:
        ``{"missing": [...], "hallucinated": [...]}`` with ``slot[value]`` strings; both lists
        are empty for a faithful text.
    """
    own = [mr[s] for s in ("name", "near") if s in mr]
    found_entities, found = find_slot_values(text, _entity_set(entities, own))
    found_lower = {e.lower() for e in found_entities}
    own_lower = {e.lower() for e in own}
    missing = [f"{s}[{mr[s]}]" for s in ("name", "near") if s in mr and mr[s].lower() not in found_lower]
    hallucinated = [f"entity[{e}]" for e in sorted(found_entities) if e.lower() not in own_lower]
    for slot, value in mr.items():
        if slot not in ("name", "near") and value not in found.get(slot, set()):
            missing.append(f"{slot}[{value}]")
    for slot, values in found.items():
        hallucinated += [f"{slot}[{v}]" for v in sorted(values) if mr.get(slot) != v]
    return {"missing": missing, "hallucinated": hallucinated}


def slot_error_rate(text: str, mr: Mapping[str, str], entities: Iterable[str] | None = None) -> float:
    """(missing + hallucinated) / number of MR slots, the usual E2E slot error rate."""
    errors = slot_errors(text, mr, entities)
    return (len(errors["missing"]) + len(errors["hallucinated"])) / len(mr)
