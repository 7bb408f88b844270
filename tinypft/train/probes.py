"""Probes of what a pretrained model can do before fine-tuning.

``name_copy_rate`` asks the question steering depends on: after a description of a venue whose
name the model has never seen, does the next description name that venue again? The probe takes
held-out E2E references, swaps the venue's name for a made-up one that no E2E text contains
(``EXTRA_NAMES``), and lets the model write the next description after ``<sep>``, as the
pretraining documents go on::

    <bos> The Copper Kettle is a cheap coffee shop near ... <sep>|  ->  "... The Copper Kettle ..."?

The name cannot be recalled from pretraining, only copied from the context: that is what a frozen
model must do with the names in an MR when a prefix or a prompt steers it. Two easier questions
are asked beside it: with the venue's real E2E name left in place (one of 34 names the model has
read thousands of times, so it may copy it or recall another), and how many of the slot values the
context states (``cheap``, ``Indian``, ``riverside``...) the next description states again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..data.lexicon import find_slot_values
from ..data.mr import EXTRA_NAMES, E2EExample
from ..data.tokenizer import Tokenizer
from .generate import generate


def copy_probe_prompts(examples: Sequence[E2EExample], n: int, made_up: bool = True) -> list[tuple[str, str]]:
    """Up to ``n`` (context, name) pairs: an example's first reference that names its venue, with
    that name replaced by a made-up name (``EXTRA_NAMES``, in turn) unless ``made_up`` is False."""
    pairs: list[tuple[str, str]] = []
    for example in examples:
        name = example.slots.get("name", "")
        ref = next((r for r in example.refs if name and name in r), None)
        if ref is None:
            continue
        new_name = EXTRA_NAMES[len(pairs) % len(EXTRA_NAMES)] if made_up else name
        pairs.append((ref.replace(name, new_name), new_name))
        if len(pairs) == n:
            break
    return pairs


def name_copy_rate(model: Any, tokenizer: Tokenizer, examples: Sequence[E2EExample], n: int = 200,
                   batch_size: int = 50, max_new_tokens: int = 48) -> dict[str, Any]:
    """Share of probes whose next description (greedy, up to ``max_new_tokens``) names the venue.

    Returns ``{"copy_rate", "known_name_rate", "value_copy_rate", "n", "examples"}``: the made-up
    names' rate, the rate with the real names left in place, the share of the context's slot values
    the next description states again (made-up names), and three continuations for a look.
    """
    made_up = _continue(model, tokenizer, copy_probe_prompts(examples, n), batch_size, max_new_tokens)
    known = _continue(model, tokenizer, copy_probe_prompts(examples, n, made_up=False), batch_size,
                      max_new_tokens)
    stated = kept = 0
    for context, _, output in made_up:
        before = {(slot, v) for slot, vs in find_slot_values(context)[1].items() for v in vs}
        after = {(slot, v) for slot, vs in find_slot_values(output)[1].items() for v in vs}
        stated, kept = stated + len(before), kept + len(before & after)
    return {
        "copy_rate": sum(name in output for _, name, output in made_up) / len(made_up),
        "known_name_rate": sum(name in output for _, name, output in known) / len(known),
        "value_copy_rate": kept / stated if stated else 0.0,
        "n": len(made_up),
        "examples": [{"context": c, "name": name, "output": o} for c, name, o in made_up[:3]],
    }


def _continue(model: Any, tokenizer: Tokenizer, pairs: list[tuple[str, str]], batch_size: int,
              max_new_tokens: int) -> list[tuple[str, str, str]]:
    """(context, name, next description) for every probe: ``<bos> context <sep>`` continued greedily."""
    if not pairs:
        raise ValueError("name_copy_rate: no example has a reference that names its venue")
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        prompts = [[tokenizer.bos_id, *tokenizer.encode_target(context), tokenizer.sep_id]
                   for context, _ in chunk]
        room = model.config.context_length - max(len(p) for p in prompts)
        outputs = generate(model, prompts, min(max_new_tokens, room), eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id)
        for (context, name), tokens in zip(chunk, outputs):
            if tokenizer.sep_id in tokens:  # one description: up to the next <sep>
                tokens = tokens[: tokens.index(tokenizer.sep_id)]
            out.append((context, name, tokenizer.decode(tokens, skip_special=True).strip()))
    return out
