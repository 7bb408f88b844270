"""An unbounded, seeded corpus of unlabelled restaurant text for pretraining.

Pretraining should give a small language model what GPT-2 gives the real thing before
fine-tuning: fluent domain text, the habit of copying a name it has seen earlier in the
context, and natural uses of the label words of the classification tasks ("low", "average",
"high", "yes", "no"). Each document is about one venue (two to five paragraphs that keep
using its name, sometimes opening with a "Name: ...; Food: ..." fact sheet), a comparison of
two venues, or a short guide to several. Paragraphs are descriptions in the fine-tuning style
plus reviews, questions and answers, directions and menus.

Copying has to be learned, not memorized: 70% of venue names and landmarks are spelled from
random syllables ("Drefi", "Posdind Grill", "the Vexda Museum"), so a name's later mentions
can only be predicted from its first one. (With names from a fixed list of a few thousand, the
models learned the list and, given a new name, wrote one of the list's instead.)

The corpus never overlaps the fine-tuning data: no name or landmark contains, or is contained
in, a name or landmark of the synthetic or real E2E data. Every fine-tuning reference contains
its venue's name, so no reference can occur in the corpus. There are no MR strings either (the
text has no square brackets).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from .lexicon import KNOWN_ENTITIES, food_nouns, phrases
from .mr import E2E_SLOTS
from .realise import article, realise

PRETRAIN_SEED = 0  # the training stream
PRETRAIN_DEV_SEED = 1  # a held-out stream for validation loss

_ADJECTIVES = (
    "Amber Ancient Brave Bright Copper Cosy Crimson Dancing Drowsy Flying Grand Happy Hidden Humble "
    "Iron Jolly Laughing Lazy Lucky Marble Merry Misty Northern Painted Quiet Royal Rusty Scarlet "
    "Secret Sleepy Southern Sunny Tiny Twisted Velvet Wandering Whistling Winding Wooden"
).split()
_NOUNS = (
    "Acorn Anchor Badger Barrel Bell Bramble Compass Crown Falcon Fiddle Goose Griffin Hare Harp Hazel "
    "Hedgehog Kettle Ladle Lantern Lark Mermaid Nightingale Oak Otter Owl Parrot Pelican Pepper Plum "
    "Quill Raven Robin Rose Saddle Sparrow Stag Swan Teapot Thistle Tiger Trumpet Unicorn Walnut "
    "Willow Wren"
).split()
_SURNAMES = (
    "Abbott Baker Carter Dawson Ellis Fletcher Gibson Harper Ingram Jarvis Keller Lawson Mercer "
    "Norris Osborne Parker Quinn Russell Sutton Turner Underwood Vaughan Walsh Yates Bennett Chandler"
).split()
_KINDS = ("Kitchen", "Bistro", "Grill", "Diner", "Canteen", "Brasserie", "Tavern", "Tea Rooms", "Arms")
_PLACES = ("Abbey", "Castle", "Chapel", "Market", "Orchard", "Harbour", "Station", "Library", "Theatre")


_KNOWN_LOWER = tuple(e.lower() for e in KNOWN_ENTITIES)


def _is_new(candidate: str) -> bool:
    """True when the candidate neither contains (even inside a word) nor is contained in a
    fine-tuning name or landmark."""
    lower = candidate.lower()
    return not any(k in lower or lower in k for k in _KNOWN_LOWER)


def _clean(candidates: Iterator[str]) -> tuple[str, ...]:
    """The distinct candidates that are new (see :func:`_is_new`), in order."""
    return tuple(c for c in dict.fromkeys(candidates) if _is_new(c))


VENUE_NAMES: tuple[str, ...] = _clean(itertools.chain(
    (f"The {a} {n}" for a in _ADJECTIVES for n in _NOUNS),
    (f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS),
    (f"The {n} and {m}" for n in _NOUNS for m in _NOUNS if n != m),
    (f"{s}'s {k}" for s in _SURNAMES for k in _KINDS),
))
LANDMARKS: tuple[str, ...] = _clean(itertools.chain(
    (f"the {s} {p}" for s in _SURNAMES for p in _PLACES),
    (f"{s} Street" for s in _SURNAMES), (f"{s} Park" for s in _SURNAMES),
    (f"the {n} Hotel" for n in _NOUNS), (f"the {n} Bridge" for n in _NOUNS),
))

# Made-up words. A name drawn from a fixed list can be memorized; a name spelled from random
# syllables cannot, so the only way to predict its second mention is to copy the first one. That
# is the skill fine-tuning needs: every E2E name (e.g. "Zizzi", "The Wrestlers") is new to the model.
_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "dr", "gr", "st", "tr", "")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ou", "y")
_CODAS = ("", "", "", "", "", "", "", "", "n", "r", "l", "s", "m", "x", "tt", "ll", "nd")
_LANDMARK_KINDS = ("Street", "Park", "Road", "Square", "Lane", "Gardens")
_LANDMARK_PLACES = ("Bridge", "Museum", "Hotel", "Abbey", "Market", "Station", "Library", "Theatre",
                    "Gallery")
REAL_WORD_NAME_SHARE = 0.3  # the rest of the names and landmarks are spelled from made-up words


def made_up_word(rng: random.Random) -> str:
    """A pronounceable capitalized word of two or three random syllables, e.g. "Brolvane"."""
    syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                 for _ in range(rng.choice((2, 2, 2, 2, 3)))]
    return "".join(syllables).capitalize()


def _made_up_name(rng: random.Random) -> str:
    word = made_up_word(rng)
    form = rng.randrange(8)
    if form == 0:
        return f"The {word}"
    if form == 1:
        return f"{word} {rng.choice(_KINDS)}"
    if form == 2:
        return f"The {rng.choice(_ADJECTIVES)} {word}"
    if form == 3:
        return f"{word}'s"
    if form == 4:
        return f"{word} {made_up_word(rng)}"
    if form == 5:
        return f"The {word} and {rng.choice(_NOUNS)}"
    return word


def _made_up_landmark(rng: random.Random) -> str:
    word = made_up_word(rng)
    if rng.random() < 0.5:
        return f"{word} {rng.choice(_LANDMARK_KINDS)}"
    return f"the {word} {rng.choice(_LANDMARK_PLACES)}"


def random_name(rng: random.Random, avoid: str = "") -> str:
    """A venue name that is never a fine-tuning name: 30% from :data:`VENUE_NAMES`, else made up."""
    while True:
        if rng.random() < REAL_WORD_NAME_SHARE:
            name = rng.choice(VENUE_NAMES)
        else:
            name = _made_up_name(rng)
            if not _is_new(name):
                continue
        if name != avoid:
            return name


def random_landmark(rng: random.Random, avoid: str = "") -> str:
    """A landmark that is never a fine-tuning landmark: 30% from :data:`LANDMARKS`, else made up."""
    while True:
        if rng.random() < REAL_WORD_NAME_SHARE:
            place = rng.choice(LANDMARKS)
        else:
            place = _made_up_landmark(rng)
            if not _is_new(place):
                continue
        if place != avoid:
            return place


_DISHES = {
    "Chinese": ("dumplings", "noodles", "sweet and sour chicken", "fried rice", "spring rolls"),
    "English": ("fish and chips", "roast beef", "shepherd's pie", "sausages and mash", "a full breakfast"),
    "Fast food": ("burgers", "chips", "chicken wings", "hot dogs", "milkshakes"),
    "French": ("onion soup", "steak frites", "crêpes", "duck confit", "crème brûlée"),
    "Indian": ("chicken curry", "naan bread", "dal", "biryani", "samosas"),
    "Italian": ("pizza", "lasagne", "risotto", "spaghetti", "tiramisu"),
    "Japanese": ("sushi", "ramen", "tempura", "miso soup", "teriyaki chicken"),
}
_QUALITY = {
    "low": ("bland", "cold", "disappointing", "overcooked", "forgettable"),
    "average": ("fine", "decent", "okay", "nothing special", "acceptable"),
    "high": ("excellent", "delicious", "superb", "perfectly cooked", "wonderful"),
}
_PRICE_LEVEL = {"cheap": "low", "less than £20": "low", "moderate": "average", "£20-25": "average",
                "high": "high", "more than £30": "high"}
_RATING_LEVEL = {"low": "low", "1 out of 5": "low", "average": "average", "3 out of 5": "average",
                 "high": "high", "5 out of 5": "high"}
_MAIN_COURSE_COST = {"low": (7, 16), "average": (18, 25), "high": (30, 48)}
_LEVEL_RANK = {"low": 0, "average": 1, "high": 2}


@dataclass(frozen=True)
class Venue:
    """A full profile of one made-up venue, kept consistent across a document."""

    name: str
    eat_type: str
    food: str
    price: str
    rating: str
    area: str
    family: str
    near: str

    @property
    def price_level(self) -> str:
        return _PRICE_LEVEL[self.price]

    @property
    def rating_level(self) -> str:
        return _RATING_LEVEL[self.rating]

    def mr(self, rng: random.Random, n_slots: int) -> dict[str, str]:
        """A random subset of the profile as an MR dict (``name`` always included)."""
        full = {"eatType": self.eat_type, "food": self.food, "priceRange": self.price,
                "customer rating": self.rating, "area": self.area, "familyFriendly": self.family,
                "near": self.near}
        keys = rng.sample(sorted(full), min(n_slots - 1, len(full)))
        return {"name": self.name, **{k: full[k] for k in keys}}


def random_venue(rng: random.Random, avoid: str = "") -> Venue:
    """A venue with a pretraining-only name and landmark and uniformly drawn E2E values."""
    name = random_name(rng, avoid)
    values = {slot: rng.choice(E2E_SLOTS[slot]) for slot in E2E_SLOTS if slot not in ("name", "near")}
    return Venue(name, values["eatType"], values["food"], values["priceRange"], values["customer rating"],
                 values["area"], values["familyFriendly"], random_landmark(rng))


def _head(venue: Venue, rng: random.Random) -> str:
    return rng.choice(phrases("eatType", venue.eat_type, "head"))


def _where(venue: Venue, rng: random.Random) -> str:
    return rng.choice(phrases("area", venue.area, "post"))


def description(venue: Venue, rng: random.Random) -> str:
    """One or two fine-tuning-style descriptions of the venue."""
    texts = [realise(venue.mr(rng, rng.randint(3, 8)), rng) for _ in range(rng.choice((1, 1, 2)))]
    return " ".join(texts)


def review(venue: Venue, rng: random.Random) -> str:
    """A first-person review whose verdict matches the venue's rating level."""
    level, (dish, other_dish) = venue.rating_level, rng.sample(_DISHES[venue.food], 2)
    when = rng.choice(("last Friday", "for my birthday", "after work", "on a rainy Tuesday", "for lunch"))
    company = rng.choice(("my family", "two friends", "my partner", "colleagues", "my parents"))
    lines = [
        f"We went to {venue.name} {when} with {company}.",
        f"The {dish} tasted {rng.choice(_QUALITY[level])} and the {other_dish} tasted "
        f"{rng.choice(_QUALITY[level])}.",
        f"Prices at {venue.name} are {venue.price_level} for {article(venue.food)} {_head(venue, rng)}.",
    ]
    if venue.family == "yes":
        lines.append(rng.choice(("Is it good for kids? Yes, our children loved it.",
                                 "Children are welcome and there are high chairs.")))
    else:
        lines.append(rng.choice(("Is it good for kids? No, it is not family friendly.",
                                 "It is not a place for children.")))
    score = {"low": rng.choice("12"), "average": "3", "high": rng.choice("45")}[level]
    verdict = {"low": "No", "average": rng.choice(("Maybe", "Perhaps")), "high": "Yes"}[level]
    lines.append(rng.choice((f"I would rate it {score} out of 5, which is {level}.",
                             f"Overall, my rating is {level}.", f"Customer rating: {level}.")))
    lines.append(f"Would I go back to {venue.name}? {verdict}.")
    return " ".join(lines)


def questions(venue: Venue, rng: random.Random) -> str:
    """Questions and answers about the venue, with honest "Yes" and "No" answers."""
    other_food = rng.choice([f for f in E2E_SLOTS["food"] if f != venue.food])
    other_place = random_landmark(rng, avoid=venue.near)
    food = rng.choice(food_nouns(venue.food))
    cuisine = "fast food" if venue.food == "Fast food" else venue.food
    pool = [
        f"Is {venue.name} family friendly? " + ("Yes, children are welcome." if venue.family == "yes"
                                                 else "No, it does not welcome children."),
        f"Does {venue.name} serve {rng.choice(food_nouns(other_food))}? No, it serves {food}.",
        f"Does {venue.name} serve {food}? Yes, it does.",
        f"Is {venue.name} near {other_place}? No, it is near {venue.near}.",
        f"Is {venue.name} near {venue.near}? Yes, it is {rng.choice(('close to', 'next to'))} {venue.near}.",
        f"How do customers rate {venue.name}? The customer rating is {venue.rating_level}.",
        f"Are the prices at {venue.name} high? " + ("Yes, it is expensive." if venue.price_level == "high"
                                                     else f"No, they are {venue.price_level}."),
        f"Where is {venue.name}? It is {_where(venue, rng)}, near {venue.near}.",
        f"What kind of place is {venue.name}? It is {article(cuisine)} {cuisine} {_head(venue, rng)}.",
    ]
    return " ".join(rng.sample(pool, rng.randint(3, 5)))


def directions(venue: Venue, rng: random.Random) -> str:
    """How to walk to the venue from a landmark."""
    start = random_landmark(rng, avoid=venue.near)
    side, minutes = rng.choice(("left", "right")), rng.randint(3, 20)
    route = "follow the river path" if venue.area == "riverside" else "head towards the city centre"
    return (f"To find {venue.name}, start at {start} and {route}. After about {minutes} minutes you "
            f"reach {venue.near}; {venue.name} is on your {side}. "
            + rng.choice((f"Look for the sign of {venue.name} above the door.",
                          f"If you pass {venue.near} you have gone too far.",
                          "It is easy to miss, so keep your eyes open.")))


def menu(venue: Venue, rng: random.Random) -> str:
    """Opening hours, dishes and prices consistent with the price level."""
    dishes = rng.sample(_DISHES[venue.food], 3)
    low, high = _MAIN_COURSE_COST[venue.price_level]
    opens, closes = rng.randint(7, 12), rng.randint(20, 23)
    return (f"The menu at {venue.name} includes {dishes[0]}, {dishes[1]} and {dishes[2]}. "
            f"Main courses cost between £{low} and £{high}, so prices are {venue.price_level}. "
            f"{venue.name} opens at {opens} am and closes at {closes - 12} pm every day.")


def comparison(a: Venue, b: Venue, rng: random.Random) -> str:
    """Two venues side by side: prices, ratings, food and children."""
    lines = [f"{a.name} and {b.name} are both {rng.choice(('popular', 'well known', 'busy'))} places to eat."]
    if a.price_level == b.price_level:
        lines.append(f"Their prices are similar: both are {a.price_level}.")
    else:
        cheaper, dearer = (a, b) if _LEVEL_RANK[a.price_level] < _LEVEL_RANK[b.price_level] else (b, a)
        lines.append(f"{cheaper.name} is cheaper than {dearer.name}, whose prices are {dearer.price_level}.")
    if a.rating_level != b.rating_level:
        better, worse = (a, b) if _LEVEL_RANK[a.rating_level] > _LEVEL_RANK[b.rating_level] else (b, a)
        lines.append(f"{better.name} has a {better.rating_level} customer rating, while {worse.name} "
                     f"is rated {worse.rating_level}.")
    else:
        lines.append(f"Both have {article(a.rating_level)} {a.rating_level} customer rating.")
    lines.append(f"{a.name} serves {rng.choice(food_nouns(a.food))} and {b.name} serves "
                 f"{rng.choice(food_nouns(b.food))}.")
    same_area = "Yes" if a.area == b.area else "No"
    lines.append(f"Are they in the same part of town? {same_area}.")
    kids = [v.name for v in (a, b) if v.family == "yes"]
    if len(kids) == 1:
        lines.append(f"If you have children, {kids[0]} is the better choice.")
    return " ".join(lines)


def fact_sheet(venue: Venue, rng: random.Random) -> str:
    """A listing of some of the venue's facts, the way a guide prints them before its prose.

    A fact sheet followed by a description teaches the model to carry names and values from
    structured text into sentences (without the bracketed MR format of the fine-tuning data).
    """
    facts = [("Food", "fast food" if venue.food == "Fast food" else venue.food), ("Type", venue.eat_type),
             ("Prices", venue.price), ("Customer rating", venue.rating), ("Area", venue.area),
             ("Children welcome", venue.family), ("Near", venue.near)]
    chosen = rng.sample(facts, rng.randint(2, len(facts)))
    separator = rng.choice(("; ", ". ", ", "))
    return separator.join([f"Name: {venue.name}"] + [f"{key}: {value}" for key, value in chosen]) + "."


_SINGLE_VENUE_PARAGRAPHS = (description, description, review, questions, directions, menu)


def make_document_with_venues(seed: int, index: int) -> tuple[str, list[Venue]]:
    """Document number ``index`` of the stream ``seed`` and the venues it describes.

    Every document has its own random stream, seeded by ``(seed, index)``.
    """
    rng = random.Random(f"pretrain:{seed}:{index}")
    kind = rng.random()
    venues = [random_venue(rng)]
    if kind < 0.7:  # several paragraphs about one venue, each using its name
        others = rng.sample(_SINGLE_VENUE_PARAGRAPHS, rng.randint(1, 3))
        paragraphs = [description(venues[0], rng)] + [make(venues[0], rng) for make in others]
        if rng.random() < 0.3:
            paragraphs.insert(0, fact_sheet(venues[0], rng))
    elif kind < 0.9:  # two venues compared
        venues.append(random_venue(rng, avoid=venues[0].name))
        paragraphs = [description(v, rng) for v in venues] + [comparison(*venues, rng)]
    else:  # a short guide to several venues near one landmark
        landmark = venues[0].near
        for _ in range(rng.randint(1, 3)):
            v = random_venue(rng, avoid=venues[0].name)
            venues.append(Venue(v.name, v.eat_type, v.food, v.price, v.rating, v.area, v.family, landmark))
        paragraphs = [f"Places to eat near {landmark}."] + [description(v, rng) for v in venues]
    return "\n\n".join(paragraphs), venues


def make_document(seed: int, index: int) -> str:
    """Document number ``index`` of the stream ``seed``."""
    return make_document_with_venues(seed, index)[0]


def pretraining_documents(seed: int = PRETRAIN_SEED, n_docs: int | None = None) -> Iterator[str]:
    """Yield pretraining documents; endless when ``n_docs`` is None.

    Document ``i`` depends only on ``(seed, i)``, so streams are reproducible and can be
    split across workers. Use :data:`PRETRAIN_DEV_SEED` for held-out validation text.
    """
    if n_docs is not None and n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    indices = itertools.count() if n_docs is None else range(n_docs)
    for index in indices:
        yield make_document(seed, index)
