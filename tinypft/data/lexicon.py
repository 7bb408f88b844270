"""How each E2E slot value may be worded, and a detector that finds values in text.

The synthetic generator (:mod:`tinypft.data.synth`) only ever words a slot value with the
phrases listed here, and the detector below recognises exactly those phrases. Together they
make slot errors measurable: :func:`slot_errors` reports values an output text leaves out
(missing) and values it states without the MR asking for them (hallucinated or wrong).

Phrase kinds for one value:

* ``premod``: an adjective in front of the head noun ("a *cheap* pub"),
* ``post``: a phrase after the head noun ("a pub *near Avalon*"),
* ``vp``: a verb phrase after a subject ("It *serves Italian food*"),
* ``clause``: a sentence of its own ("*Prices are low.*"),
* ``head``: the noun itself, for ``eatType`` only ("a cheap *café*").

Verb phrases carry agreement markers filled in for a singular or plural subject:
``{be}`` is/are, ``{have}`` has/have, ``{do}`` does/do, ``{s}`` the third-person -s,
``{its}`` its/their, ``{it}`` it/them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

from .mr import E2E_SLOTS, EXTRA_NAMES, EXTRA_NEAR

# Every venue name and landmark the project knows, real and made-up.
KNOWN_ENTITIES: tuple[str, ...] = tuple(
    dict.fromkeys(E2E_SLOTS["name"] + E2E_SLOTS["near"] + EXTRA_NAMES + EXTRA_NEAR)
)

# Words for the food slot: the adjective, plus nouns it combines with ("Italian food").
_FOOD_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "Chinese": ("Chinese",), "English": ("English", "British"), "Fast food": ("fast food",),
    "French": ("French",), "Indian": ("Indian",), "Italian": ("Italian",), "Japanese": ("Japanese",),
}


def food_nouns(value: str) -> tuple[str, ...]:
    """Noun phrases naming a cuisine, e.g. ``"Italian food"``, ``"British dishes"``."""
    if value == "Fast food":
        return ("fast food", "fast food meals")
    return tuple(f"{adj} {noun}" for adj in _FOOD_ADJECTIVES[value] for noun in ("food", "cuisine", "dishes"))


def _food(value: str) -> dict[str, tuple[str, ...]]:
    nouns = food_nouns(value)
    return {
        "premod": _FOOD_ADJECTIVES[value],
        "post": tuple(f"{verb} {n}" for verb in ("serving", "offering") for n in nouns),
        "vp": tuple(f"{verb} {n}" for verb in ("serve{s}", "offer{s}", "specialise{s} in") for n in nouns)
        + tuple(f"{{have}} a menu of {n}" for n in nouns),
        "clause": tuple(f"The menu features {n}." for n in nouns),
    }


def _rating_stars(digit: str, word: str) -> dict[str, tuple[str, ...]]:
    score = f"{digit} out of 5"
    return {
        "premod": (f"{digit}-star", f"{word}-star"),
        "post": (f"with a customer rating of {score}", f"with a {score} rating", f"rated {score}"),
        "vp": (f"{{have}} a customer rating of {score}", f"{{be}} rated {score}",
               f"{{have}} a {word}-star rating", f"{{be}} rated {score} by customers"),
        "clause": (f"Customers rate {{it}} {score}.", f"{{its}} customer rating is {score}."),
    }


def _near(landmark: str) -> dict[str, tuple[str, ...]]:
    places = ("near", "close to", "next to", "not far from", "a short walk from")
    return {
        "premod": (),
        "post": tuple(f"{p} {landmark}" for p in places),
        "vp": tuple(f"{{be}} {p} {landmark}" for p in places)
        + (f"{{be}} located near {landmark}", f"sit{{s}} close to {landmark}"),
        "clause": (f"You can find {{it}} near {landmark}.", f"{landmark} is nearby."),
    }


LEXICON: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("eatType", "coffee shop"): {"head": ("coffee shop", "café", "coffee house")},
    ("eatType", "pub"): {"head": ("pub", "public house")},
    ("eatType", "restaurant"): {"head": ("restaurant", "eatery")},
    ("priceRange", "cheap"): {
        "premod": ("cheap", "inexpensive", "low-priced", "budget"),
        "post": ("with low prices", "at low prices"),
        "vp": ("{be} cheap", "{be} inexpensive", "{have} low prices", "{be} low-priced"),
        "clause": ("Prices are low.", "The prices are cheap."),
    },
    ("priceRange", "moderate"): {
        "premod": ("moderately priced", "mid-priced", "reasonably priced"),
        "post": ("with moderate prices", "with mid-range prices"),
        "vp": ("{be} moderately priced", "{have} moderate prices", "{have} mid-range prices",
               "{be} reasonably priced"),
        "clause": ("Prices are moderate.", "Prices are in the mid range."),
    },
    ("priceRange", "high"): {
        "premod": ("expensive", "high-priced", "pricey", "upmarket"),
        "post": ("with high prices",),
        "vp": ("{be} expensive", "{have} high prices", "{be} pricey", "{be} high-priced"),
        "clause": ("Prices are high.", "The prices are high."),
    },
    ("priceRange", "less than £20"): {
        "premod": (),
        "post": ("with prices under £20", "with meals for less than £20", "where meals cost less than £20"),
        "vp": ("charge{s} less than £20", "{have} prices below £20", "{have} a price range of less than £20",
               "{be} priced under £20"),
        "clause": ("Meals cost less than £20.", "Prices are below £20."),
    },
    ("priceRange", "£20-25"): {
        "premod": (),
        "post": ("with prices of £20-25", "with meals at £20 to £25", "in the £20-25 price range"),
        "vp": ("{have} a price range of £20-25", "charge{s} between £20 and £25",
               "{have} prices from £20 to £25"),
        "clause": ("Meals cost between £20 and £25.", "Prices range from £20 to £25."),
    },
    ("priceRange", "more than £30"): {
        "premod": (),
        "post": ("with prices over £30", "with meals costing more than £30"),
        "vp": ("charge{s} more than £30", "{have} prices above £30", "{have} a price range of more than £30"),
        "clause": ("Meals cost more than £30.", "Expect to pay over £30."),
    },
    ("customer rating", "low"): {
        "premod": ("low-rated", "poorly rated"),
        "post": ("with a low customer rating", "with a low rating"),
        "vp": ("{have} a low customer rating", "{be} rated low by customers", "{be} poorly rated",
               "{have} low ratings"),
        "clause": ("{its} customer rating is low.", "Customers give {it} a low rating."),
    },
    ("customer rating", "average"): {
        "premod": (),
        "post": ("with an average customer rating", "with average ratings"),
        "vp": ("{have} an average customer rating", "{be} rated average", "{have} average reviews"),
        "clause": ("{its} customer rating is average.", "Customers give {it} an average rating."),
    },
    ("customer rating", "high"): {
        "premod": ("highly rated", "top-rated"),
        "post": ("with a high customer rating", "with high ratings"),
        "vp": ("{have} a high customer rating", "{be} highly rated", "{be} rated highly by customers"),
        "clause": ("{its} customer rating is high.", "Customers rate {it} highly."),
    },
    ("customer rating", "1 out of 5"): _rating_stars("1", "one"),
    ("customer rating", "3 out of 5"): _rating_stars("3", "three"),
    ("customer rating", "5 out of 5"): _rating_stars("5", "five"),
    ("familyFriendly", "yes"): {
        "premod": ("family-friendly", "kid-friendly", "child-friendly", "family friendly"),
        "post": ("that welcomes children", "that is good for families", "where children are welcome"),
        "vp": ("{be} family-friendly", "{be} kid friendly", "welcome{s} children", "{be} good for families",
               "{be} child friendly"),
        "clause": ("Children are welcome.", "Families with children are welcome."),
    },
    ("familyFriendly", "no"): {
        "premod": ("adults-only",),
        "post": ("that is not family-friendly", "where children are not welcome"),
        "vp": ("{be} not family-friendly", "{be} not kid friendly", "{do} not welcome children",
               "{be} not suitable for children"),
        "clause": ("Children are not welcome.", "Children are not welcome there."),
    },
    ("area", "city centre"): {
        "premod": ("city centre",),
        "post": ("in the city centre", "in the centre of the city", "in the centre of town"),
        "vp": ("{be} in the city centre", "{be} located in the city centre", "{be} in the centre of town",
               "sit{s} in the city centre"),
        "clause": ("You can find {it} in the city centre.",),
    },
    ("area", "riverside"): {
        "premod": ("riverside",),
        "post": ("by the river", "on the riverside", "in the riverside area", "along the river"),
        "vp": ("{be} by the river", "{be} located on the riverside", "{be} in the riverside area",
               "sit{s} by the river"),
        "clause": ("You can find {it} by the river.",),
    },
}
for _value in _FOOD_ADJECTIVES:
    LEXICON[("food", _value)] = _food(_value)


def phrases(slot: str, value: str, kind: str) -> tuple[str, ...]:
    """All phrases of one kind (``premod``, ``post``, ``vp``, ``clause``, ``head``) for a value."""
    if slot == "near":
        return _near(value).get(kind, ())
    try:
        return LEXICON[(slot, value)].get(kind, ())
    except KeyError:
        raise ValueError(f"no wording for {slot}[{value}]") from None


# --- detection -------------------------------------------------------------------------------

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
