"""BitFit: which parameters train, and the bias-change analysis (table and heatmap)."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_model

from tinypft.optim import AdamW
from tinypft.peft import (
    BitFitConfig,
    bias_change,
    bias_change_table,
    bitfit_parameter_names,
    format_bias_change,
    get_peft_model,
    plot_bias_change,
)


def test_default_bitfit_trains_exactly_the_biases_and_layernorm_betas():
    model = tiny_model()
    names = set(bitfit_parameter_names(model, BitFitConfig()))
    expected = {"ln_f.bias"}
    for i in range(2):
        expected |= {f"blocks.{i}.attn.{p}_proj.bias" for p in "qkvo"}
        expected |= {f"blocks.{i}.mlp.fc_in.bias", f"blocks.{i}.mlp.fc_out.bias"}
        expected |= {f"blocks.{i}.ln_1.bias", f"blocks.{i}.ln_2.bias"}
    assert names == expected
    assert not any(name.endswith(".weight") for name in names)  # no gamma, no matrix
    get_peft_model(model, BitFitConfig())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_a_subset_of_components():
    """The paper's 0.04% variant: query biases and the FFN's intermediate biases only."""
    model = tiny_model()
    names = bitfit_parameter_names(model, BitFitConfig(components=("q", "fc_in")))
    assert names == [
        "blocks.0.attn.q_proj.bias",
        "blocks.0.mlp.fc_in.bias",
        "blocks.1.attn.q_proj.bias",
        "blocks.1.mlp.fc_in.bias",
    ]
    assert bitfit_parameter_names(model, BitFitConfig(components=("ln",))) == [
        "blocks.0.ln_1.bias",
        "blocks.0.ln_2.bias",
        "blocks.1.ln_1.bias",
        "blocks.1.ln_2.bias",
        "ln_f.bias",
    ]
    assert bitfit_parameter_names(model, BitFitConfig(components=("ln_f",))) == ["ln_f.bias"]


def test_the_classification_head_trains_as_configured():
    model = tiny_model(head=True)
    all_head = bitfit_parameter_names(model, BitFitConfig())
    assert {"cls_head.weight", "cls_head.bias"} <= set(all_head)
    assert "cls_head.weight" not in bitfit_parameter_names(model, BitFitConfig(include_head="bias"))
    assert "cls_head.bias" in bitfit_parameter_names(model, BitFitConfig(include_head="bias"))
    assert not any("cls_head" in n for n in bitfit_parameter_names(model, BitFitConfig(include_head=False)))


def test_bias_change_is_the_mean_absolute_change_per_component_and_layer():
    model = tiny_model()
    initial = model.state_dict()
    final = {name: array.copy() for name, array in initial.items()}
    final["blocks.1.attn.q_proj.bias"] += np.arange(8) * 0.1  # mean |change| = 0.35
    final["blocks.0.mlp.fc_in.bias"][:4] -= 2.0  # 4 of 32 entries by 2 -> 0.25
    final["blocks.0.attn.q_proj.weight"] += 1.0  # a weight: not in the table
    changes = bias_change(initial, final)
    assert set(changes) == {
        (c, layer) for c in ("q", "k", "v", "o", "fc_in", "fc_out", "ln_1", "ln_2") for layer in (0, 1)
    }
    assert changes[("q", 1)] == pytest.approx(0.35)
    assert changes[("fc_in", 0)] == pytest.approx(0.25)
    assert sum(changes.values()) == pytest.approx(0.6)

    components, layers, table = bias_change_table(changes)
    assert components == ["q", "k", "v", "o", "fc_in", "fc_out", "ln_1", "ln_2"] and layers == [0, 1]
    assert table[0, 1] == pytest.approx(0.35) and table[4, 0] == pytest.approx(0.25)
    text = format_bias_change(changes)
    assert text.splitlines()[0].split() == ["component", "L0", "L1"] and "3.50e-01" in text


def test_bias_change_after_training_shows_only_the_trained_components(tmp_path):
    model = tiny_model()
    peft_model = get_peft_model(model, BitFitConfig(components=("q", "fc_in")))
    initial = peft_model.state_dict()  # names carry the "base_model." prefix: accepted
    optimizer = AdamW(peft_model.parameters(), lr=1e-2)
    ids = np.random.default_rng(0).integers(0, 16, (2, 6))
    for _ in range(3):
        optimizer.zero_grad()
        peft_model.lm_loss(peft_model(ids).logits, ids).backward()
        optimizer.step()
    changes = bias_change(initial, peft_model.state_dict())
    moved = {key for key, value in changes.items() if value > 0}
    assert moved == {(c, layer) for c in ("q", "fc_in") for layer in (0, 1)}
    assert all(
        changes[("q", layer)] == pytest.approx(0.03, rel=0.05) for layer in (0, 1)
    )  # 3 Adam steps of 1e-2

    path = plot_bias_change(changes, tmp_path / "bias_change.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_bias_change_needs_biases():
    with pytest.raises(ValueError, match="no per-layer bias"):
        bias_change({"wte.weight": np.zeros(3)}, {"wte.weight": np.ones(3)})
