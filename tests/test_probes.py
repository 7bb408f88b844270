"""The name-copying probe: its prompts are built from names the pretraining corpus never contains,
and it scores a continuation as a copy only when it starts with the whole name."""

from __future__ import annotations

import pytest

from tinypft.data import load_tokenizer, pretraining_documents
from tinypft.data.lexicon import KNOWN_ENTITIES
from tinypft.model import GPTConfig
from tinypft.train import probes
from tinypft.train.probes import COPY_CUES, copy_probe_prompts, name_copy_rate


def test_probe_prompts_name_a_fine_tuning_venue_and_end_on_a_cue():
    pairs = copy_probe_prompts(40, seed=0)
    assert pairs == copy_probe_prompts(40, seed=0) and pairs != copy_probe_prompts(40, seed=1)
    for context, name in pairs:
        assert name in KNOWN_ENTITIES and name in context
        assert context.rsplit("\n\n", 1)[-1] in COPY_CUES  # the name is what comes next
    corpus = "\n".join(pretraining_documents(seed=0, n_docs=500))
    assert not any(name in corpus for _, name in pairs)  # only copying can produce it
    made_up = copy_probe_prompts(40, seed=0, names="made_up")
    assert all(name not in KNOWN_ENTITIES and name in context for context, name in made_up)
    assert len({name for _, name in made_up}) > 30
    with pytest.raises(ValueError, match="names"):
        copy_probe_prompts(3, names="real")


@pytest.mark.parametrize("answer, expected", [("right", 1.0), ("prefix", 0.0), ("other", 0.0)])
def test_a_copy_is_the_whole_name(monkeypatch: pytest.MonkeyPatch, answer: str, expected: float):
    tok = load_tokenizer()
    pairs = dict(copy_probe_prompts(10))

    def fake_generate(model, prompts, max_new_tokens, eos_id, pad_id):
        outputs = []
        for prompt in prompts:
            name = pairs[tok.decode(prompt[1:])]
            texts = {"right": f" {name} for lunch", "prefix": f" {name[:-1]}", "other": " The Quiet Owl"}
            text = texts[answer]
            outputs.append(tok.encode(text)[:max_new_tokens])
        return outputs

    class FakeModel:
        config = GPTConfig(vocab_size=tok.vocab_size, context_length=256)

    monkeypatch.setattr(probes, "generate", fake_generate)
    result = name_copy_rate(FakeModel(), tok, n=10, batch_size=4)
    assert result["copy_rate"] == expected and result["n"] == 10 and len(result["examples"]) == 3
