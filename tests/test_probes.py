"""The name-copying probe: a held-out E2E reference with its venue renamed to a made-up name (one no
E2E text contains), then the model's next description; a copy is the whole name, in that description.
Beside it: the same with the real name left in place, and the share of slot values stated again."""

from __future__ import annotations

import pytest

from tinypft.data import EXTRA_NAMES, E2EExample, heldout_split, load_e2e, load_tokenizer
from tinypft.model import GPTConfig
from tinypft.train import probes
from tinypft.train.probes import copy_probe_prompts, name_copy_rate


def example(name: str, *refs: str) -> E2EExample:
    return E2EExample(f"name[{name}], eatType[pub]", {"name": name, "eatType": "pub"}, refs)


def test_probe_prompts_rename_the_venue_of_the_first_reference_that_names_it():
    examples = [
        example("The Mill", "A pub by the river.", "The Mill is a pub.", "The Mill, a pub."),
        example("Zizzi", "A pub."),  # no reference names its venue: skipped
        example("Aromi", "Aromi is a pub. Aromi is nice."),
    ]
    assert copy_probe_prompts(examples, 5) == [
        (f"{EXTRA_NAMES[0]} is a pub.", EXTRA_NAMES[0]),
        (f"{EXTRA_NAMES[1]} is a pub. {EXTRA_NAMES[1]} is nice.", EXTRA_NAMES[1]),  # every mention
    ]
    assert copy_probe_prompts(examples, 1) == copy_probe_prompts(examples, 5)[:1]
    assert copy_probe_prompts(examples, 5, made_up=False) == [  # the real names, left in place
        ("The Mill is a pub.", "The Mill"), ("Aromi is a pub. Aromi is nice.", "Aromi"),
    ]


def test_probe_prompts_on_the_held_out_mrs_use_names_the_corpus_never_contains():
    train = load_e2e("train")
    corpus, heldout = heldout_split(train)
    pairs = copy_probe_prompts(heldout, 200)
    assert len(pairs) == 200 and pairs == copy_probe_prompts(heldout, 200)
    assert [name for _, name in pairs] == [EXTRA_NAMES[i % len(EXTRA_NAMES)] for i in range(200)]
    named = [ex for ex in heldout if any(ex.slots["name"] in ref for ref in ex.refs)][:200]
    corpus_text = "\n".join(ref for ex in corpus for ref in ex.refs)
    for (context, name), ex in zip(pairs, named):
        first = next(ref for ref in ex.refs if ex.slots["name"] in ref)
        assert context == first.replace(ex.slots["name"], name) and ex.slots["name"] not in context
        assert name not in corpus_text  # only copying can produce it
    n_named = sum(any(ex.slots["name"] in ref for ref in ex.refs) for ex in heldout)
    assert len(copy_probe_prompts(heldout, 10_000)) == n_named  # at most one probe per MR


class FakeModel:
    def __init__(self, context_length: int = 256):
        self.config = GPTConfig(vocab_size=load_tokenizer().vocab_size, context_length=context_length)


def scripted_generate(tok, pairs: dict[str, str], write, calls: list):
    """A stand-in for ``generate``: checks each prompt is ``<bos> description <sep>`` and continues it
    with ``write(context, name)`` (a list of token ids)."""

    def fake_generate(model, prompts, max_new_tokens, eos_id, pad_id):
        calls.append((len(prompts), max_new_tokens))
        outputs = []
        for prompt in prompts:
            assert prompt[0] == tok.bos_id and prompt[-1] == tok.sep_id  # <bos> description <sep>|
            text = tok.decode(prompt[1:-1])
            assert text[:1] == " "  # encoded as a pretraining description is
            outputs.append(write(text[1:], pairs[text[1:]])[:max_new_tokens])
        return outputs

    return fake_generate


@pytest.mark.parametrize("answer, expected", [
    ("right", 1.0), ("later", 1.0), ("after_sep", 0.0), ("prefix", 0.0), ("other", 0.0),
])
def test_a_copy_is_the_whole_name_in_the_next_description(monkeypatch: pytest.MonkeyPatch, answer: str,
                                                           expected: float):
    tok = load_tokenizer()
    examples = load_e2e("dev")
    made_up = dict(copy_probe_prompts(examples, 10))
    known = dict(copy_probe_prompts(examples, 10, made_up=False))
    calls: list = []

    def write(context: str, name: str) -> list[int]:
        if answer == "after_sep":  # the name only in a description after the next one
            return [*tok.encode_target("A place."), tok.sep_id, *tok.encode_target(f"{name} again.")]
        texts = {"right": f"{name} is a place.", "later": f"A place called {name}.",
                 "prefix": f"{name[:-1]} is a place.", "other": "The Quiet Owl is a place."}
        return [*tok.encode_target(texts[answer]), tok.eos_id]

    monkeypatch.setattr(probes, "generate", scripted_generate(tok, made_up | known, write, calls))
    result = name_copy_rate(FakeModel(), tok, examples, n=10, batch_size=4)
    assert set(result) == {"copy_rate", "known_name_rate", "value_copy_rate", "n", "examples"}
    assert result["copy_rate"] == result["known_name_rate"] == expected
    assert result["n"] == 10 and len(result["examples"]) == 3
    assert result["value_copy_rate"] == 0.0  # no output states a slot value
    assert [n for n, _ in calls] == [4, 4, 2] * 2 and all(budget == 48 for _, budget in calls)
    assert [shown["name"] for shown in result["examples"]] == [made_up[c] for c in list(made_up)[:3]]
    assert all(set(shown) == {"context", "name", "output"} for shown in result["examples"])
    assert result["examples"][0]["output"] != "" and "<|" not in result["examples"][0]["output"]

    calls.clear()
    short = FakeModel(context_length=96)  # the budget shrinks to the room the longest prompt leaves
    name_copy_rate(short, tok, examples, n=4, batch_size=4)
    longest = max(len(tok.encode_target(context)) + 2 for context, _ in copy_probe_prompts(examples, 4))
    assert calls[0] == (4, min(48, 96 - longest))


def test_the_known_name_rate_and_the_restated_values(monkeypatch: pytest.MonkeyPatch):
    tok = load_tokenizer()
    examples = [
        E2EExample("name[The Mill], food[Indian], area[riverside]",
                   {"name": "The Mill", "food": "Indian", "area": "riverside"},
                   ("The Mill serves Indian food by the riverside.",)),
        E2EExample("name[Aromi], priceRange[cheap]", {"name": "Aromi", "priceRange": "cheap"},
                   ("Aromi is cheap.",)),
    ]
    made_up = dict(copy_probe_prompts(examples, 2))
    known = dict(copy_probe_prompts(examples, 2, made_up=False))
    assert set(known.values()) == {"The Mill", "Aromi"}

    def write(context: str, name: str) -> list[int]:
        if name in known.values():  # real names: one copied, one replaced by another real name
            text = f"{name} again." if name == "The Mill" else "Zizzi is a pub."
        elif "Indian" in context:  # keeps Indian, drops riverside, and names no venue
            text = "An Indian place."
        else:  # keeps cheap and the name
            text = f"{name} is cheap."
        return [*tok.encode_target(text), tok.eos_id]

    monkeypatch.setattr(probes, "generate", scripted_generate(tok, made_up | known, write, []))
    result = name_copy_rate(FakeModel(), tok, examples)
    assert result["n"] == 2 and result["copy_rate"] == 0.5 and result["known_name_rate"] == 0.5
    assert result["value_copy_rate"] == pytest.approx(2 / 3)  # Indian and cheap of Indian, riverside, cheap


def test_name_copy_rate_needs_an_example_that_names_its_venue():
    with pytest.raises(ValueError, match="names its venue"):
        name_copy_rate(FakeModel(), load_tokenizer(), [example("Zizzi", "A pub.")])
