"""Probes of what a pretrained model can do before fine-tuning.

``name_copy_rate`` asks the question fine-tuning depends on: after a paragraph about a venue whose
name the model has never seen, does it write that name again when the text calls for it? The names
are the fine-tuning names (never in the pretraining corpus), so a model can only get them right by
copying from its context, not by recalling them. ``names="made_up"`` asks the same of names spelled
like the corpus's own made-up ones (from a stream the corpus never uses): the copying the corpus
teaches, before the step to names of another style.

    paragraph about "The Eagle" ... \\n\\nWould I go back to|  ->  " The Eagle"?
"""

from __future__ import annotations

import random
from typing import Any

from ..data.mr import E2E_SLOTS, EXTRA_NAMES
from ..data.pretrain import Venue, description, random_name, random_venue
from ..data.tokenizer import Tokenizer
from .generate import generate

# Openings of a second paragraph whose next words are the venue's name.
COPY_CUES = ("We went to", "Would I go back to", "To find", "Is", "The menu at")


def copy_probe_prompts(n: int, seed: int = 0, names: str = "fine_tuning") -> list[tuple[str, str]]:
    """``n`` (context, name) pairs: a description of a venue, then a cue after which its name is due.

    ``names``: "fine_tuning" (the synthetic and real E2E names, in turn) or "made_up" (new names
    in the style of the pretraining corpus).
    """
    if names not in ("fine_tuning", "made_up"):
        raise ValueError(f"names must be 'fine_tuning' or 'made_up', got {names!r}")
    rng = random.Random(f"copy-probe:{names}:{seed}")
    fine_tuning_names = sorted(set(E2E_SLOTS["name"]) | set(EXTRA_NAMES))
    pairs = []
    for i in range(n):
        name = fine_tuning_names[i % len(fine_tuning_names)] if names == "fine_tuning" else random_name(rng)
        v = random_venue(rng)
        venue = Venue(name, v.eat_type, v.food, v.price, v.rating, v.area, v.family, v.near)
        pairs.append((f"{description(venue, rng)}\n\n{COPY_CUES[i % len(COPY_CUES)]}", name))
    return pairs


def name_copy_rate(model: Any, tokenizer: Tokenizer, n: int = 200, seed: int = 0,
                   batch_size: int = 50, names: str = "fine_tuning") -> dict[str, Any]:
    """Share of probes whose greedy continuation starts with the venue's name.

    Returns ``{"copy_rate", "n", "examples"}`` (three continuations, for a look). With the
    fine-tuning names, ``n`` larger than their number repeats names in new contexts.
    """
    pairs = copy_probe_prompts(n, seed, names)
    hits, examples = 0, []
    for start in range(0, n, batch_size):
        chunk = pairs[start:start + batch_size]
        budget = max(len(tokenizer.encode(" " + name)) for _, name in chunk) + 1
        room = model.config.context_length - budget
        # Pretraining windows separate documents with eos, so a document starts after one; a
        # context too long for the model keeps its end (the cue and, usually, the name before it).
        prompts = [([tokenizer.eos_id] + tokenizer.encode(context))[-room:] for context, _ in chunk]
        outputs = generate(model, prompts, budget, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        for (context, name), tokens in zip(chunk, outputs):
            text = tokenizer.decode(tokens)
            hits += text.startswith(" " + name)
            if len(examples) < 3:
                examples.append({"cue": context.rsplit("\n\n", 1)[-1], "name": name, "output": text})
    return {"copy_rate": hits / n, "n": n, "examples": examples}
