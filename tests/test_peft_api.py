"""The PEFT API: get_peft_model, the model contract every method keeps, counts and configs."""

from __future__ import annotations

import re

import numpy as np
import pytest
from tiny_models import TINY, tiny_model

from tinypft.model import GPT, GPTConfig
from tinypft.peft import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
    config_from_dict,
    get_peft_model,
)
from tinypft.peft.counts import trainable_parameter_count

METHODS = {
    "full": FullFinetuneConfig(),
    "frozen": FrozenConfig(),
    "bitfit": BitFitConfig(),
    "bitfit_q_fc_in": BitFitConfig(components=("q", "fc_in")),
    "bitfit_head_bias": BitFitConfig(include_head="bias"),
    "prefix_mlp": PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6),
    "prefix_direct": PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=False),
    "infix": PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=False, mode="infix"),
    "embedding_only": PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=5, mode="embedding_only"),
    "prompt": PromptTuningConfig(num_virtual_tokens=3),
    "random_subset": RandomSubsetConfig(),
    "random_subset_200": RandomSubsetConfig(num_params=200, include_head=False),
}
VIRTUAL = ["prefix_mlp", "prefix_direct", "embedding_only", "prompt"]


def forward_kwargs(name: str, B: int, T: int) -> dict:
    return {"infix_start": np.full(B, T // 2)} if name == "infix" else {}


@pytest.mark.parametrize("num_labels", [None, 3])
@pytest.mark.parametrize("name", list(METHODS))
def test_counts_from_shapes_equal_the_models_counts(name, num_labels):
    model = tiny_model()
    if num_labels:
        model.add_classification_head(num_labels)
    peft_model = get_peft_model(model, METHODS[name])
    assert peft_model.get_nb_trainable_parameters() == trainable_parameter_count(
        model.config, METHODS[name], num_labels
    )


def test_trainable_counts_on_a_d128_model_by_hand():
    """d = 128, 4 layers, vocabulary 1024, context 128 (d_ff = 512), no head."""
    cfg = GPTConfig(vocab_size=1024, context_length=128, d_model=128, n_layers=4, n_heads=4)
    d, L, f, P, k = 128, 4, 512, 10, 512
    total = 1024 * d + 128 * d + L * (12 * d * d + 13 * d) + 2 * d
    assert cfg.num_parameters() == total == 940_800
    expected = {
        "full": (FullFinetuneConfig(), total),
        "frozen": (FrozenConfig(), 0),
        "bitfit": (BitFitConfig(), L * (4 * d + f + d + 2 * d) + d),
        "bitfit_q_fc_in": (BitFitConfig(components=("q", "fc_in")), L * (d + f)),
        "prefix_mlp": (PrefixTuningConfig(P), P * d + d * k + k + k * 2 * L * d + 2 * L * d),
        "prefix_direct": (PrefixTuningConfig(P, prefix_projection=False), 2 * L * d * P),
        "prompt": (PromptTuningConfig(P), P * d),
    }
    counts = {name: trainable_parameter_count(cfg, config)[0] for name, (config, _) in expected.items()}
    assert counts == {name: n for name, (_, n) in expected.items()}
    assert counts["bitfit"] == 5_760 and counts["prefix_direct"] == 10_240 and counts["prompt"] == 1_280
    assert counts["prefix_mlp"] == 592_640
    peft_model = get_peft_model(GPT(cfg), PrefixTuningConfig(P))  # one real model agrees
    assert peft_model.get_nb_trainable_parameters() == (592_640, total + 592_640)


def test_print_trainable_parameters_is_hugging_faces_line(capsys):
    peft_model = get_peft_model(tiny_model(), BitFitConfig())
    peft_model.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    trainable = 2 * (4 * 8 + 32 + 8 + 2 * 8) + 8  # 2 layers of biases + ln_f
    total = GPTConfig(**TINY).num_parameters()
    share = 100 * trainable / total
    assert line == f"trainable params: {trainable} || all params: {total:,} || trainable%: {share:.4f}"
    assert re.fullmatch(r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}", line)

    get_peft_model(
        tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6)
    ).print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    adapter = 3 * 8 + (8 * 6 + 6) + (6 * 32 + 32)
    assert line.startswith(
        f"trainable params: {adapter} || all params: {total + adapter:,} ||"
    )  # base + adapter


@pytest.mark.parametrize("name", list(METHODS))
def test_the_model_contract(name):
    model = tiny_model()
    peft_model = get_peft_model(model, METHODS[name])
    B, T = 2, 5
    ids = np.random.default_rng(0).integers(0, 16, (B, T))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = peft_model(ids, attention_mask=mask, **forward_kwargs(name, B, T))
    assert out.logits.shape == (B, T, 16)  # real positions only, whatever sits in front
    assert out.hidden.shape == (B, T, 8)
    labels = np.where(mask == 1, ids, -100)
    loss = peft_model.lm_loss(out.logits, labels)
    assert loss.item() == pytest.approx(model.lm_loss(out.logits, labels).item())

    assert peft_model.config is model.config and peft_model.base_model is model
    names = [n for n, _ in peft_model.named_parameters()]
    assert all(f"base_model.{n}" in names for n, _ in model.named_parameters())  # all, frozen ones too
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == set(peft_model.adapter_parameters())
    assert len(list(peft_model.parameters())) == len(names)
    peft_model.eval()
    assert not any(m.training for m in model.modules())
    peft_model.train()
    assert all(m.training for m in peft_model.modules())


@pytest.mark.parametrize("name", VIRTUAL)
def test_virtual_tokens_enter_once_at_prefill_and_then_live_in_the_cache(name):
    peft_model = get_peft_model(tiny_model(), METHODS[name])
    ids = np.random.default_rng(1).integers(0, 16, (2, 7))
    full = peft_model(ids).logits.data
    out = peft_model(ids[:, :3], use_cache=True)
    P = METHODS[name].num_virtual_tokens
    assert out.cache.length == P + 3 and out.cache.next_position.tolist() == [P + 3] * 2
    np.testing.assert_allclose(out.logits.data, full[:, :3], rtol=1e-12, atol=1e-12)
    for t in range(3, 7):
        out = peft_model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
        np.testing.assert_allclose(out.logits.data[:, 0], full[:, t], rtol=1e-11, atol=1e-12)
    assert out.cache.length == P + 7  # the prefix was never added a second time


@pytest.mark.parametrize("name", VIRTUAL)
def test_attention_mask_may_be_tokens_only_or_include_the_virtual_tokens(name):
    peft_model = get_peft_model(tiny_model(), METHODS[name])
    P = METHODS[name].num_virtual_tokens
    ids = np.random.default_rng(2).integers(0, 16, (2, 4))
    mask = np.array([[1, 1, 1, 1], [0, 1, 1, 1]])
    tokens_only = peft_model(ids, attention_mask=mask).logits.data
    with_virtual = peft_model(ids, attention_mask=np.concatenate([np.ones((2, P), int), mask], 1)).logits.data
    np.testing.assert_array_equal(tokens_only, with_virtual)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        peft_model(ids, attention_mask=np.ones((2, 5)))
    with pytest.raises(ValueError, match="virtual-token columns"):
        peft_model(ids, attention_mask=np.concatenate([np.zeros((2, P), int), mask], 1))


def test_left_padding_changes_nothing_for_a_prompt():
    peft_model = get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=3))
    ids = np.random.default_rng(3).integers(0, 16, (1, 5))
    plain = peft_model(ids).logits.data
    padded = peft_model(np.concatenate([[[0, 0]], ids], 1), attention_mask=np.array([[0, 0] + [1] * 5]))
    np.testing.assert_allclose(padded.logits.data[:, 2:], plain, rtol=1e-12, atol=1e-12)


def test_generate_runs_a_peft_model_with_and_without_the_cache():
    generate = pytest.importorskip("tinypft.train.generate").generate
    for name in ("prefix_mlp", "prompt", "embedding_only"):
        peft_model = get_peft_model(tiny_model(), METHODS[name])
        prompts = [[1, 2, 3], [4, 5]]
        cached = generate(peft_model, prompts, max_new_tokens=4, eos_id=None, pad_id=0, use_cache=True)
        uncached = generate(peft_model, prompts, max_new_tokens=4, eos_id=None, pad_id=0, use_cache=False)
        assert cached == uncached and [len(c) for c in cached] == [4, 4]


def test_configs_round_trip_through_json_and_reject_nonsense():
    for config in METHODS.values():
        assert config_from_dict(config.to_dict()) == config
    text = PromptTuningConfig(num_virtual_tokens=4, init="text", init_text="hi", tokenizer=object())
    assert "tokenizer" not in text.to_dict()
    with pytest.raises(ValueError, match="unknown components"):
        BitFitConfig(components=("q", "bias_of_everything"))
    with pytest.raises(ValueError, match="mode"):
        PrefixTuningConfig(mode="suffix")
    with pytest.raises(ValueError, match="init_text"):
        PrefixTuningConfig(init="real_words")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        PromptTuningConfig(num_virtual_tokens=0)
    with pytest.raises(ValueError, match="class_labels"):
        PromptTuningConfig(init="class_labels")
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        config_from_dict({"method": "lora"})


def test_get_peft_model_refuses_what_it_cannot_wrap():
    peft_model = get_peft_model(tiny_model(), BitFitConfig())
    with pytest.raises(TypeError, match="already a PeftModel"):
        get_peft_model(peft_model, BitFitConfig())
    with pytest.raises(TypeError, match="no method"):
        get_peft_model(tiny_model(), object())
    assert isinstance(peft_model, PeftModel)
