"""BLEU against known sacrebleu values, slot errors counted by hand, and evaluate_generation end to end."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import sacrebleu

from tinypft.data import load_e2e, load_tokenizer
from tinypft.engine import Tensor
from tinypft.train.batching import source_ids
from tinypft.train.metrics import corpus_bleu, evaluate_generation, names_venue_rate, slot_error_rate

# sacrebleu's own example: two reference streams; BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943)
HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
STREAMS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]


def test_corpus_bleu_matches_known_sacrebleu_values():
    per_hypothesis = [list(refs) for refs in zip(*STREAMS)]  # our layout: the references of each output
    assert corpus_bleu(HYPS, per_hypothesis) == pytest.approx(48.530827009929865, abs=1e-9)
    assert corpus_bleu(HYPS, [[r] for r in STREAMS[0]]) == pytest.approx(45.06750632106114, abs=1e-9)
    assert corpus_bleu(HYPS, [[b, a] for a, b in zip(*STREAMS)]) == pytest.approx(48.530827009929865)
    assert corpus_bleu(["a perfect match here"], [["a perfect match here"]]) == pytest.approx(100.0)


def test_corpus_bleu_handles_a_variable_number_of_references():
    refs = [[STREAMS[0][0], STREAMS[1][0]], [STREAMS[0][1]], [STREAMS[0][2], STREAMS[1][2]]]
    padded = [[STREAMS[0][0], STREAMS[0][1], STREAMS[0][2]], [STREAMS[1][0], None, STREAMS[1][2]]]
    assert corpus_bleu(HYPS, refs) == pytest.approx(sacrebleu.corpus_bleu(HYPS, padded).score)
    assert corpus_bleu(HYPS, refs) != pytest.approx(corpus_bleu(HYPS, [r[:1] for r in refs]))  # all count
    with pytest.raises(ValueError, match="3 hypotheses but 2"):
        corpus_bleu(HYPS, refs[:2])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu(HYPS[:1], [[]])


def test_slot_error_rate_counts_missing_and_hallucinated_values():
    mr = {"name": "The Mill", "food": "Italian", "area": "riverside", "familyFriendly": "yes"}
    texts = [
        "The Mill serves Italian food by the river and is family friendly.",  # 0 errors
        "The Mill is a French place near Burger King in the city centre.",
        # missing food, area, familyFriendly; hallucinated Burger King, French, city centre: 6 errors
        "The Mill serves Italian food.",  # missing area and familyFriendly: 2 errors
    ]
    assert slot_error_rate(texts, [mr] * 3) == pytest.approx(8 / 12)
    assert slot_error_rate(texts[:1], [mr]) == 0.0
    with pytest.raises(ValueError, match="2 texts but 1"):
        slot_error_rate(texts[:2], [mr])


class ScriptedModel:
    """A stand-in model that writes a fixed token sequence for each prompt, then eos.

    It follows the generation contract only (call with ids, attention_mask, cache, use_cache;
    ``.logits`` and a ``.cache`` with ``next_position`` and ``select``).
    """

    def __init__(self, tokenizer, scripts: dict[tuple[int, ...], list[int]]):
        self.config = SimpleNamespace(context_length=512)
        self.vocab, self.sep, self.eos = tokenizer.vocab_size, tokenizer.sep_id, tokenizer.eos_id
        self.scripts, self.training = scripts, False

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def __call__(self, ids, attention_mask=None, cache=None, use_cache=False):
        mask = np.ones(ids.shape, bool) if attention_mask is None else attention_mask.astype(bool)
        rows = [list(row[m]) for row, m in zip(ids, mask)]
        if cache is not None:
            rows = [old + new for old, new in zip(cache.rows, rows)]
        logits = np.zeros((*ids.shape, self.vocab))  # (B, T, V)
        for b, seq in enumerate(rows):
            n_prompt = seq.index(self.sep) + 1
            script = self.scripts[tuple(seq[:n_prompt])] + [self.eos]
            logits[b, -1, script[min(len(seq) - n_prompt, len(script) - 1)]] = 1.0
        return SimpleNamespace(logits=Tensor(logits), cache=ScriptCache(rows) if use_cache else None)


class ScriptCache:
    def __init__(self, rows: list[list[int]]):
        self.rows, self.next_position = rows, np.array([len(r) for r in rows])

    def select(self, rows: np.ndarray) -> ScriptCache:
        return ScriptCache([self.rows[i] for i in rows])


def test_names_venue_rate_counts_outputs_that_name_their_own_venue():
    mrs = [{"name": "The Mill", "food": "Italian"}, {"name": "Zizzi"}, {"name": "The Eagle"},
           {"food": "French"}]
    texts = [
        "The Mill serves Italian food.",  # its own venue
        "The Mill is a pub.",  # another MR's venue
        "the eagle is a pub.",  # verbatim only: the case differs
        "A French place.",  # no name slot: not counted
    ]
    assert names_venue_rate(texts, mrs) == pytest.approx(1 / 3)
    assert names_venue_rate(["Zizzi, Zizzi."], [{"name": "Zizzi"}]) == 1.0
    assert names_venue_rate(["It is a pub named Zizz."], [{"name": "Zizzi"}]) == 0.0
    with pytest.raises(ValueError, match="2 texts but 1"):
        names_venue_rate(texts[:2], mrs[:1])
    with pytest.raises(ValueError, match="no MR has a name"):
        names_venue_rate(texts[3:], mrs[3:])


def test_evaluate_generation_scores_one_output_per_mr_against_all_its_refs():
    tok = load_tokenizer()
    examples = load_e2e("dev")[::78][:7]  # seven venues
    assert len({ex.slots["name"] for ex in examples}) == 7
    texts = [ex.refs[0] for ex in examples[:4]] + [f"{ex.slots['name']} is a place." for ex in examples[4:6]]
    texts.append(texts[5].replace(examples[5].slots["name"], "It"))  # one output names no venue
    texts[3] = texts[2]  # and one repeats another MR's output
    # a model writes a target as running text: with a leading space, which decoding strips
    scripts = {tuple(source_ids(tok, ex.mr)): tok.encode_target(text) for ex, text in zip(examples, texts)}
    model = ScriptedModel(tok, scripts)
    names_own_venue = [ex.slots["name"] in text for ex, text in zip(examples, texts)]
    assert names_own_venue == [True, True, True, False, True, True, False]
    for method in ("greedy", "beam"):
        result = evaluate_generation(model, tok, examples, method=method, max_new_tokens=100, batch_size=3)
        assert result["outputs"] == texts  # decoded, in the order of the examples
        assert result["n"] == 7 and len(result["samples"]) == 5
        assert result["bleu"] == pytest.approx(corpus_bleu(texts, [ex.refs for ex in examples]))
        assert result["ser"] == pytest.approx(slot_error_rate(texts, [ex.slots for ex in examples]))
        assert 0 < result["ser"] < 1 and 0 < result["bleu"] < 100
        assert result["names_venue"] == pytest.approx(5 / 7)
        assert result["distinct"] == pytest.approx(6 / 7)
        assert result["tokens_per_sec"] > 0

    pairs = [(ex.mr, ex.refs) for ex in examples]  # plain (source, refs): BLEU only
    result = evaluate_generation(model, tok, pairs, max_new_tokens=100)
    assert result["ser"] is None and result["names_venue"] is None and result["outputs"] == texts
    assert result["distinct"] == pytest.approx(6 / 7)
