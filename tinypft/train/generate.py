"""Batched greedy decoding and beam search with a key/value cache.

The prompts are left-padded so that every row's last column is its last real token; the model
numbers positions from the real tokens only, so padding changes nothing. Then:

    prefill:  out = model(ids, attention_mask=mask, use_cache=True)     one call for all prompts
    decode:   out = model(next_token, cache=out.cache, use_cache=True)  one token per step

A fine-tuned model that injects a prefix or a prompt does so at prefill (when no cache is passed),
after which it lives in the cache. ``prefill_kwargs`` go to that prefill call only, e.g.
``{"infix_start": -1}`` for an infix model (the infix before each prompt's final separator). With
``use_cache=False`` every step instead recomputes the whole sequence from scratch: slower, but it
must give the same tokens, which the tests check.

Rows leave the batch as soon as they are finished (eos or their length budget), so finished rows
cost nothing. The budget of a row is ``max_new_tokens``, capped so that all its positions
(prefix or prompt, prompt tokens, new tokens) fit into the model's ``context_length``; the
prefill's ``cache.next_position`` tells how many positions a row already uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine import no_grad
from .batching import left_pad


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int,
    method: str = "greedy",
    num_beams: int = 5,
    use_cache: bool = True,
    length_penalty: float = 1.0,
    prefill_kwargs: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Continue each prompt; returns the new tokens of each (eos excluded).

    ``method`` is ``"greedy"`` or ``"beam"``. ``eos_id=None`` never stops early (for timing).
    ``prefill_kwargs``: extra keyword arguments for the model's prefill call only (the cached
    decoding steps never see them); they need ``use_cache=True``, since without a cache every step
    is a new full call whose arguments would have to follow the growing sequence.
    The model runs in eval mode without gradients; its previous mode is restored.
    """
    if method not in ("greedy", "beam"):
        raise ValueError(f"generate: method must be 'greedy' or 'beam', got {method!r}")
    if max_new_tokens < 0 or num_beams < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} and num_beams={num_beams} are invalid")
    if prefill_kwargs and not use_cache:
        raise ValueError("generate: prefill_kwargs need use_cache=True (they apply to the prefill call)")
    if len(prompts) == 0:
        return []
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with no_grad():
            decoder = _Decoder(model, prompts, pad_id, use_cache, prefill_kwargs or {})
            budgets = np.minimum(max_new_tokens, decoder.room)  # (B,)
            if method == "greedy":
                return _greedy(decoder, budgets, eos_id)
            return _beam(decoder, budgets, eos_id, num_beams, length_penalty)
    finally:
        model.train(was_training)


class _Decoder:
    """The running batch: feeds new tokens, reorders or drops rows, gives last-position log-probs.

    Cached, it keeps a KVCache; uncached, it keeps the full token matrix and recomputes it.
    """

    def __init__(
        self, model: Any, prompts: Sequence[Sequence[int]], pad_id: int, use_cache: bool,
        prefill_kwargs: dict[str, Any],
    ):
        self.model, self.use_cache = model, use_cache
        self.ids, self.mask = left_pad(prompts, pad_id)  # (B, T0)
        out = model(self.ids, attention_mask=self.mask, use_cache=True, **prefill_kwargs)
        self.cache = out.cache if use_cache else None
        context = model.config.context_length
        self.room = context - out.cache.next_position  # (B,) positions left for new tokens
        self.logits = out.logits.data[:, -1]  # (B, V) the prediction after each prompt

    def log_probs(self) -> np.ndarray:
        """Log-softmax of the last logits, in float64 (beam scores add many of them)."""
        x = self.logits.astype(np.float64)  # (R, V)
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    def advance(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        """Keep ``rows`` (in that order, repeats allowed) and append one token to each."""
        if self.use_cache:
            cache = self.cache.select(rows)
            new = tokens[:, None]  # (R, 1)
            out = self.model(new, attention_mask=np.ones_like(new, bool), cache=cache, use_cache=True)
            self.cache = out.cache
        else:
            self.ids = np.concatenate([self.ids[rows], tokens[:, None]], axis=1)  # (R, T + 1)
            self.mask = np.concatenate([self.mask[rows], np.ones((len(rows), 1), bool)], axis=1)  # (R, T + 1)
            out = self.model(self.ids, attention_mask=self.mask, use_cache=False)
        self.logits = out.logits.data[:, -1]  # (R, V)


def _greedy(decoder: _Decoder, budgets: np.ndarray, eos_id: int | None) -> list[list[int]]:
    """Take the most likely token for every row until eos or its budget."""
    outputs: list[list[int]] = [[] for _ in budgets]
    active = np.flatnonzero(budgets > 0)  # prompt index of each running row
    decoder_rows = active  # running rows as rows of the decoder's current batch
    while active.size:
        tokens = decoder.logits[decoder_rows].argmax(axis=1)  # (A,)
        keep = []
        for j, (i, token) in enumerate(zip(active, tokens)):
            if token == eos_id:
                continue
            outputs[i].append(int(token))
            if len(outputs[i]) < budgets[i]:
                keep.append(j)
        if not keep:
            break
        keep = np.asarray(keep)
        decoder.advance(decoder_rows[keep], tokens[keep])
        active, decoder_rows = active[keep], np.arange(len(keep))
    return outputs


def _beam(
    decoder: _Decoder, budgets: np.ndarray, eos_id: int | None, num_beams: int, length_penalty: float
) -> list[list[int]]:
    """Beam search over examples x beams in one batch.

    Each example keeps ``num_beams`` live hypotheses, scored by their summed log-probs. At every
    step the 2K best extensions are examined in order: one ending in eos (and ranked among the top
    K) becomes a finished hypothesis with score ``sum log p / length ** length_penalty`` (length
    counts the eos); the others fill the K live beams. An example stops when it has K finished
    hypotheses and its best live beam, normalised at its current length, cannot beat the worst of
    them, or when its budget is used up (its live beams are then finished as they are).
    """
    K = num_beams
    if decoder.logits.shape[1] < 2 * K:
        raise ValueError(f"generate: beam search with {K} beams needs a vocabulary of at least {2 * K}")
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in budgets]  # (score, tokens), best K
    examples = np.flatnonzero(budgets > 0)  # the running examples, in batch order
    beam_rows = examples[:, None]  # (E, K_cur) decoder row of each live beam; one beam at the start
    beam_scores = np.zeros((len(examples), 1))  # (E, K_cur)
    beam_tokens: list[list[list[int]]] = [[[]] for _ in examples]  # [example][beam] -> tokens
    length = 0

    def add_finished(e: int, score: float, tokens: list[int]) -> None:
        finished[e].append((score, tokens))
        finished[e].sort(key=lambda h: -h[0])
        del finished[e][K:]

    while examples.size:
        length += 1
        logp = decoder.log_probs()  # (R, V)
        V = logp.shape[1]
        scores = beam_scores[:, :, None] + logp[beam_rows]  # (E, K_cur, V)
        flat = scores.reshape(len(examples), -1)  # (E, K_cur * V)
        top = np.argsort(-flat, axis=1, kind="stable")[:, : 2 * K]  # (E, 2K) best extensions first

        next_examples, next_rows, next_tokens, next_scores, next_beam_tokens = [], [], [], [], []
        for a, e in enumerate(examples):
            rows, toks, scs, seqs = [], [], [], []
            for rank, c in enumerate(top[a]):
                beam, token, score = c // V, int(c % V), float(flat[a, c])
                if token == eos_id:
                    if rank < K:
                        add_finished(e, score / length**length_penalty, beam_tokens[a][beam])
                    continue
                rows.append(beam_rows[a, beam])
                toks.append(token)
                scs.append(score)
                seqs.append(beam_tokens[a][beam] + [token])
                if len(rows) == K:
                    break
            if length >= budgets[e]:  # out of room: the live beams end here
                for score, seq in zip(scs, seqs):
                    add_finished(e, score / length**length_penalty, seq)
                continue
            done = len(finished[e]) == K and finished[e][-1][0] >= scs[0] / length**length_penalty
            if done or not rows:
                continue
            next_examples.append(e)
            next_rows.append(rows)
            next_tokens.append(toks)
            next_scores.append(scs)
            next_beam_tokens.append(seqs)

        if not next_examples:
            break
        rows = np.asarray(next_rows).reshape(-1)  # (E' K,) decoder rows to continue from
        decoder.advance(rows, np.asarray(next_tokens).reshape(-1))
        examples = np.asarray(next_examples)
        beam_rows = np.arange(rows.size).reshape(len(examples), K)  # (E', K) example-major
        beam_scores = np.asarray(next_scores)  # (E', K)
        beam_tokens = next_beam_tokens
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in finished]
