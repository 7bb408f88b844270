"""Probes of what a pretrained model can do before fine-tuning.

``name_copy_rate`` asks the question fine-tuning depends on: after a paragraph about a venue whose
name the model has never seen, does it write that name again when the text calls for it? The names
are the fine-tuning names (never in the pretraining corpus), so a model can only get them right by
copying from its context, not by recalling them.

    paragraph about "The Eagle" ... \\n\\nWould I go back to|  ->  " The Eagle"?
"""

from __future__ import annotations

import random
from typing import Any

from ..data.lexicon import KNOWN_ENTITIES
from ..data.mr import E2E_SLOTS, EXTRA_NAMES
from ..data.pretrain import Venue, description, random_venue
from ..data.tokenizer import Tokenizer
from .generate import generate

# Openings of a second paragraph whose next words are the venue's name.
COPY_CUES = ("We went to", "Would I go back to", "To find", "Is", "The menu at")


def copy_probe_prompts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (context, name) pairs: a description of a venue with a fine-tuning name, then a cue."""
    rng = random.Random(f"copy-probe:{seed}")
    names = sorted(set(E2E_SLOTS["name"]) | set(EXTRA_NAMES))
    pairs = []
    for i in range(n):
        name = names[i % len(names)]
        v = random_venue(rng)
        venue = Venue(name, v.eat_type, v.food, v.price, v.rating, v.area, v.family, v.near)
        pairs.append((f"{description(venue, rng)}\n\n{COPY_CUES[i % len(COPY_CUES)]}", name))
    return pairs


def name_copy_rate(model: Any, tokenizer: Tokenizer, n: int = 200, seed: int = 0,
                   batch_size: int = 50) -> dict[str, Any]:
    """Share of probes whose greedy continuation starts with the venue's name.

    Returns ``{"copy_rate", "n", "examples"}`` (three continuations, for a look). Names come from
    the fine-tuning data, so ``n`` larger than the number of names repeats names in new contexts.
    """
    if not all(name in KNOWN_ENTITIES for name in EXTRA_NAMES):
        raise AssertionError("probe names must be fine-tuning names")
    pairs = copy_probe_prompts(n, seed)
    hits, examples = 0, []
    for start in range(0, n, batch_size):
        chunk = pairs[start:start + batch_size]
        # Pretraining windows separate documents with eos, so a document starts after one.
        prompts = [[tokenizer.eos_id] + tokenizer.encode(context) for context, _ in chunk]
        budget = max(len(tokenizer.encode(" " + name)) for _, name in chunk) + 1
        outputs = generate(model, prompts, budget, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        for (context, name), tokens in zip(chunk, outputs):
            text = tokenizer.decode(tokens)
            hits += text.startswith(" " + name)
            if len(examples) < 3:
                examples.append({"cue": context.rsplit("\n\n", 1)[-1], "name": name, "output": text})
    return {"copy_rate": hits / n, "n": n, "examples": examples}
