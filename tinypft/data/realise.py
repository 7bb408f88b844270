"""Turn an E2E meaning representation into an English reference text.

A reference is built in three steps, each with random choices:

1. **Sentence planning**: shuffle the slots and split them over one to three sentences.
2. **Sentence frames**: the first sentence introduces the venue by name ("X is a ...",
   "There is a ... called X", "Near Y, X ...", "Looking for a ...? Try X."); later sentences
   refer back to it ("It", "They", "The venue", "This pub", or the name again).
3. **Wording**: each slot value becomes an adjective, a phrase after the noun, a verb phrase
   or a sentence of its own, picked from :mod:`tinypft.data.lexicon`.

Every value of the MR is worded exactly through the lexicon and no other value is ever
mentioned, so :func:`tinypft.data.lexicon.slot_errors` finds no error in the output.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from .lexicon import phrases

GENERIC_HEADS = ("venue", "place", "spot")
# Adjectives go in front of the noun in this order: "a highly rated cheap riverside Italian pub".
_PREMOD_ORDER = ("customer rating", "priceRange", "familyFriendly", "area", "food")
# Phrases after the noun in this order: "a pub near Y serving Italian food with low prices".
_POST_ORDER = ("area", "near", "food", "priceRange", "customer rating", "familyFriendly")
_CONTRACTIONS = {"is not": "isn't", "are not": "aren't", "does not": "doesn't", "do not": "don't"}
_CONTRACTABLE = re.compile(r"\b(?:is|are|does|do) not\b")


def article(phrase: str) -> str:
    """``"a"`` or ``"an"`` for the noun phrase ``phrase`` (by its first sound, roughly)."""
    word = phrase.split(" ", 1)[0].lower()
    if word.startswith(("one", "uni", "use", "eu")):
        return "a"
    return "an" if word[:1] in "aeiou8" else "a"


def conjugate(phrase: str, plural: bool) -> str:
    """Fill the agreement markers of a lexicon phrase for a singular or plural subject."""
    forms = {
        "{be}": "are" if plural else "is", "{have}": "have" if plural else "has",
        "{do}": "do" if plural else "does", "{s}": "" if plural else "s",
        "{its}": "their" if plural else "its", "{it}": "them" if plural else "it",
    }
    for marker, form in forms.items():
        phrase = phrase.replace(marker, form)
    return phrase


def join(items: Sequence[str], rng: random.Random) -> str:
    """Join phrases as a list: "a", "a and b", "a, b and c" (sometimes with an Oxford comma)."""
    if len(items) <= 2:
        return " and ".join(items)
    last_sep = ", and " if rng.random() < 0.3 else " and "
    return ", ".join(items[:-1]) + last_sep + items[-1]


def _capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


class _Planner:
    """Builds one reference for one MR; holds the random stream and discourse state."""

    def __init__(self, mr: Mapping[str, str], rng: random.Random) -> None:
        self.mr, self.rng = mr, rng
        self.name = mr["name"]
        self.plural = rng.random() < 0.15  # refer back with "They" instead of "It"
        self.head_used: str | None = None  # eatType noun once it has been said ("This pub")
        self.openers = ["", "", "", "Also, ", "In addition, "]  # each connective used at most once

    def pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]

    # --- phrase builders ---------------------------------------------------------------

    def head(self, slots: list[str]) -> str:
        if "eatType" in slots:
            self.head_used = self.pick(phrases("eatType", self.mr["eatType"], "head"))
            return self.head_used
        return self.pick(GENERIC_HEADS)

    def noun_phrase(self, slots: list[str], max_posts: int | None = 2) -> tuple[str, list[str]]:
        """A noun phrase wording ``slots``; returns it with the slots that did not fit."""
        premods, posts, rest = [], [], []
        for slot in slots:
            if slot == "eatType":
                continue
            options = phrases(slot, self.mr[slot], "premod")
            if options and len(premods) < 2 and self.rng.random() < 0.5:
                premods.append(slot)
            elif max_posts is None or len(posts) < max_posts:
                posts.append(slot)
            else:
                rest.append(slot)
        premods.sort(key=_PREMOD_ORDER.index)
        words = [self.pick(phrases(s, self.mr[s], "premod")) for s in premods]
        words.append(self.head(slots))
        words.append(self._posts(sorted(posts, key=_POST_ORDER.index)))
        phrase = " ".join(w for w in words if w)
        return f"{article(phrase)} {phrase}", rest

    def _posts(self, slots: list[str]) -> str:
        parts: list[str] = []
        for slot in slots:
            part = self.pick(phrases(slot, self.mr[slot], "post"))
            if parts and parts[-1].startswith("with ") and part.startswith("with "):
                part = "and " + part[len("with "):]  # "with low prices and a high rating"
            parts.append(part)
        return " ".join(parts)

    def verb_phrases(self, slots: list[str], plural: bool) -> list[str]:
        out = []
        for slot in sorted(slots, key=lambda s: s != "eatType"):  # "is a pub" comes first
            if slot == "eatType":
                phrase = f"{{be}} {self.noun_phrase(['eatType'])[0]}"
            else:
                phrase = self.pick(phrases(slot, self.mr[slot], "vp"))
            out.append(conjugate(phrase, plural))
        return out

    def tail(self, slots: list[str], plural: bool, relative_only: bool = False) -> str:
        """Remaining slots after a noun phrase: " and serves ...", ", which has ..."."""
        if not slots:
            return ""
        if relative_only or self.rng.random() < 0.4:
            return ", which " + join(self.verb_phrases(slots, plural=False), self.rng)
        return " and " + join(self.verb_phrases(slots, plural), self.rng)

    # --- sentence frames ---------------------------------------------------------------

    def first_sentence(self, slots: list[str]) -> str:
        rng, name = self.rng, self.name
        located = [s for s in slots if s in ("area", "near")]
        frames = ["copula", "copula", "there", "vplist", "looking_for"]
        if located:
            frames.append("fronted")
        if len(slots) >= 2:
            frames.append("apposition")
        frame = self.pick(frames)
        if frame == "there":
            np_, rest = self.noun_phrase(slots)
            called = self.pick(("called", "named"))
            return f"There is {np_} {called} {name}" + self.tail(rest, False, relative_only=True) + "."
        if frame == "vplist":
            return f"{name} " + join(self.verb_phrases(slots, plural=False), rng) + "."
        if frame == "looking_for":
            np_, _ = self.noun_phrase(slots, max_posts=None)
            opener = self.pick(("If you are looking for {np}, try {name}.", "Looking for {np}? Try {name}.",
                                "For {np}, visit {name}.", "If you want {np}, {name} is the place to go."))
            return opener.format(np=np_, name=name)
        if frame == "fronted":
            slot = self.pick(located)
            pp = self.pick(phrases(slot, self.mr[slot], "post"))
            lead = _capitalise(pp) if rng.random() < 0.6 else f"Located {pp}"
            rest = [s for s in slots if s != slot]
            if not rest:
                return f"{lead}, you will find {name}."
            if rng.random() < 0.5:
                np_, extra = self.noun_phrase(rest)
                tail = self.tail(extra, False, relative_only=True)
                return f"{lead}, there is {np_} called {name}{tail}."
            return f"{lead}, {name} " + join(self.verb_phrases(rest, plural=False), rng) + "."
        if frame == "apposition":
            slots = sorted(slots, key=lambda s: s != "eatType")  # "X, a pub ..." not "X ... is a pub"
            k = rng.randint(1, len(slots) - 1)
            np_, extra = self.noun_phrase(slots[:k])
            vps = self.verb_phrases(extra + slots[k:], plural=False)
            return f"{name}, {np_}, " + join(vps, rng) + "."
        np_, rest = self.noun_phrase(slots)
        return f"{name} is {np_}" + self.tail(rest, plural=False) + "."

    def subject(self) -> tuple[str, bool]:
        """A way to refer back to the venue, with its grammatical number."""
        r = self.rng.random()
        if r < 0.55:
            return ("They", True) if self.plural else ("It", False)
        if r < 0.7:
            return self.name, False
        if r < 0.85 and self.head_used:
            return f"This {self.head_used}", False
        return self.pick(("The venue", "The place")), False

    def later_sentence(self, slots: list[str]) -> str:
        rng = self.rng
        if len(slots) == 1 and slots[0] != "eatType" and rng.random() < 0.35:
            clause = self.pick(phrases(slots[0], self.mr[slots[0]], "clause"))
            return _capitalise(conjugate(clause, self.plural))
        subject, plural = self.subject()
        opener = self.pick(self.openers)
        if opener:
            self.openers.remove(opener)
            subject = subject if subject == self.name else subject[0].lower() + subject[1:]
        plain_subject = subject in ("It", "it") or subject == self.name
        if "eatType" in slots or (plain_subject and rng.random() < 0.3):
            np_, rest = self.noun_phrase(slots)
            body = f"{subject} {conjugate('{be}', plural)} {np_}" + self.tail(rest, plural)
        else:
            body = f"{subject} " + join(self.verb_phrases(slots, plural), rng)
        return opener + body + "."

    def realise(self) -> str:
        slots = [s for s in self.mr if s != "name"]
        self.rng.shuffle(slots)
        n_sentences = self._sentence_count(len(slots))
        cuts = sorted(self.rng.sample(range(1, len(slots)), n_sentences - 1)) if n_sentences > 1 else []
        groups = [slots[a:b] for a, b in zip([0] + cuts, cuts + [len(slots)])]
        sentences = [self.first_sentence(groups[0])] + [self.later_sentence(g) for g in groups[1:]]
        text = " ".join(_capitalise(s) for s in sentences)
        if self.rng.random() < 0.3:
            text = _CONTRACTABLE.sub(lambda m: _CONTRACTIONS[m.group(0)], text)
        return text

    def _sentence_count(self, n_slots: int) -> int:
        if n_slots <= 1:
            return 1
        weights = {2: (6, 4, 0), 3: (4, 5, 1), 4: (3, 5, 2)}.get(n_slots, (2, 5, 3))
        return self.rng.choices((1, 2, 3), weights=weights)[0]


def realise(mr: Mapping[str, str], rng: random.Random) -> str:
    """Write one reference text for the MR ``mr`` (which must contain ``name``)."""
    if "name" not in mr:
        raise ValueError(f"an MR needs a name slot, got {dict(mr)}")
    return _Planner(mr, rng).realise()
