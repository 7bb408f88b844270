"""Scoring generated text: corpus BLEU (sacrebleu), the E2E slot error rate, and a one-call evaluation.

BLEU compares each output with every reference of its input (E2E has about 8 per MR); sacrebleu
wants the references as streams aligned with the outputs, ``streams[j][i]`` = reference j of
output i, so inputs with fewer references are padded with ``None``, which sacrebleu skips.

The slot error rate counts, over the corpus, the MR values an output misses plus the values it
states that the MR does not have, divided by the number of MR slots (the detector is
``tinypft.data.lexicon.slot_errors``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sacrebleu

from ..data.lexicon import slot_errors
from ..data.tokenizer import Tokenizer
from .batching import source_ids
from .generate import generate


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], tokenize: str = "13a"
) -> float:
    """Corpus BLEU (0-100) of ``hypotheses[i]`` against all of ``references[i]``."""
    if len(hypotheses) != len(references):
        raise ValueError(f"corpus_bleu: {len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("corpus_bleu: no hypotheses")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("corpus_bleu: every hypothesis needs at least one reference")
    width = max((len(refs) for refs in references), default=0)
    streams = [[refs[j] if j < len(refs) else None for refs in references] for j in range(width)]
    return float(sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize).score)


def slot_error_rate(
    texts: Sequence[str], mrs: Sequence[Mapping[str, str]], entities: Iterable[str] | None = None
) -> float:
    """Corpus slot error rate: (missing + hallucinated values) / number of MR slots, over all pairs."""
    if len(texts) != len(mrs):
        raise ValueError(f"slot_error_rate: {len(texts)} texts but {len(mrs)} MRs")
    errors = slots = 0
    for text, mr in zip(texts, mrs):
        found = slot_errors(text, mr, entities)
        errors += len(found["missing"]) + len(found["hallucinated"])
        slots += len(mr)
    if slots == 0:
        raise ValueError("slot_error_rate: the MRs have no slots")
    return errors / slots


def names_venue_rate(texts: Sequence[str], mrs: Sequence[Mapping[str, str]]) -> float:
    """Share of outputs that name their own MR's venue (its ``name`` value, verbatim).

    A model that ignores its input writes one name for every MR and scores about 1/34 here, whatever
    its BLEU: the check that an output follows its MR at all."""
    if len(texts) != len(mrs):
        raise ValueError(f"names_venue_rate: {len(texts)} texts but {len(mrs)} MRs")
    named = [mr["name"] in text for text, mr in zip(texts, mrs) if "name" in mr]
    if not named:
        raise ValueError("names_venue_rate: no MR has a name slot")
    return sum(named) / len(named)


def evaluate_generation(
    model: Any,
    tokenizer: Tokenizer,
    examples: Sequence[Any],
    method: str = "greedy",
    max_new_tokens: int = 64,
    num_beams: int = 5,
    length_penalty: float = 1.0,
    batch_size: int = 32,
    n_samples: int = 5,
    entities: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Generate one output per input and score it against all of that input's references.

    ``examples`` are ``E2EExample``s (``.mr``, ``.slots``, ``.refs``) or ``(source, refs)`` pairs;
    the slot error rate needs ``.slots`` and is None without them. Prompts are batched in order of
    length (less padding); outputs come back in the order of ``examples``.

    Returns ``{"bleu", "ser", "names_venue", "distinct", "n", "seconds", "tokens_per_sec", "samples",
    "outputs"}``: ``names_venue`` is :func:`names_venue_rate`, ``distinct`` the share of distinct
    outputs (1/n when every input gets the same text), tokens_per_sec counts generated tokens and
    samples are the first ``n_samples`` outputs.
    """
    sources, refs, slots = [], [], []
    for ex in examples:
        if isinstance(ex, tuple):
            sources.append(ex[0])
            refs.append(list(ex[1]))
        else:
            sources.append(ex.mr)
            refs.append(list(ex.refs))
            slots.append(ex.slots)
    prompts = [source_ids(tokenizer, s) for s in sources]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    new_tokens: list[list[int]] = [[] for _ in prompts]

    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        chunk = order[i : i + batch_size]
        outs = generate(
            model, [prompts[j] for j in chunk], max_new_tokens, tokenizer.eos_id, tokenizer.pad_id,
            method=method, num_beams=num_beams, length_penalty=length_penalty,
        )
        for j, out in zip(chunk, outs):
            new_tokens[j] = out
    seconds = time.perf_counter() - start

    outputs = [tokenizer.decode(t, skip_special=True).strip() for t in new_tokens]
    n_tokens = sum(len(t) for t in new_tokens)
    has_slots = len(slots) == len(outputs)
    return {
        "bleu": corpus_bleu(outputs, refs),
        "ser": slot_error_rate(outputs, slots, entities) if has_slots else None,
        "names_venue": names_venue_rate(outputs, slots) if has_slots else None,
        "distinct": len(set(outputs)) / len(outputs) if outputs else 0.0,
        "n": len(outputs),
        "seconds": seconds,
        "tokens_per_sec": n_tokens / seconds if seconds > 0 else 0.0,
        "samples": [
            {"source": s, "output": o, "refs": r[:2]} for s, o, r in zip(sources[:n_samples], outputs, refs)
        ],
        "outputs": outputs,
    }
