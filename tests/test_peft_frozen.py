"""Frozen means frozen: base weights stay bit-identical, get no gradient, cost no weight-gradient matmul."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import TINY, tiny_model

from tinypft.engine import use_fused_kernels
from tinypft.optim import AdamW
from tinypft.peft import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)

METHODS = {
    "frozen_head": FrozenConfig(),
    "bitfit": BitFitConfig(),
    "bitfit_q_fc_in": BitFitConfig(components=("q", "fc_in")),
    "prefix_mlp": PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6),
    "prefix_direct": PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=False),
    "infix": PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=6, mode="infix"),
    "embedding_only": PrefixTuningConfig(
        num_virtual_tokens=3, prefix_projection=False, mode="embedding_only"
    ),
    "prompt": PromptTuningConfig(num_virtual_tokens=3),
}
IDS = np.random.default_rng(0).integers(0, 16, (2, 6))
MASK = np.array([[1] * 6, [1] * 4 + [0] * 2])
LABELS = np.where(MASK == 1, IDS, -100)
LABELS[:, :2] = -100


def loss_of(peft_model, name: str):
    kwargs = {"infix_start": np.array([2, 2])} if name == "infix" else {}
    out = peft_model(IDS, attention_mask=MASK, **kwargs)
    if name == "frozen_head":
        return (out.cls_logits * out.cls_logits).mean()  # a loss that reaches the head only
    return peft_model.lm_loss(out.logits, LABELS)


@pytest.mark.parametrize("name", list(METHODS))
def test_adamw_steps_leave_every_frozen_parameter_bit_identical(name):
    model = tiny_model(head=name == "frozen_head")
    peft_model = get_peft_model(model, METHODS[name])
    before = {n: p.data.copy() for n, p in peft_model.named_parameters()}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    optimizer = AdamW(peft_model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        loss_of(peft_model, name).backward()
        for n, p in peft_model.named_parameters():
            assert (p.grad is not None) == (n in trainable), f"{n}: gradient presence wrong"
        optimizer.step()

    frozen = [n for n in before if n not in trainable]
    assert len(frozen) >= len(list(model.parameters())) - len(trainable)
    for n, p in peft_model.named_parameters():
        if n in trainable:
            assert not np.array_equal(p.data, before[n]), f"{n} should have trained"
        else:
            assert np.array_equal(p.data, before[n]), f"frozen {n} changed"
    # the optimizer holds (and keeps state for) the trainable parameters only
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for n, p in peft_model.named_parameters() if n in trainable}
    assert {id(p) for p in optimizer.state} == {id(p) for p in held}


def test_full_finetuning_moves_every_parameter():
    peft_model = get_peft_model(tiny_model(), FullFinetuneConfig())
    before = {n: p.data.copy() for n, p in peft_model.named_parameters()}
    optimizer = AdamW(peft_model.parameters(), lr=1e-2, weight_decay=0.1)
    loss_of(peft_model, "full").backward()
    optimizer.step()
    assert all(not np.array_equal(p.data, before[n]) for n, p in peft_model.named_parameters())


def matmuls_in_backward(peft_model, name: str, monkeypatch) -> int:
    loss = loss_of(peft_model, name)
    calls = []
    real = np.matmul
    with monkeypatch.context() as patch:
        patch.setattr(np, "matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
        loss.backward()
    return len(calls)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", [n for n in METHODS if n != "frozen_head"])
def test_frozen_weights_cost_no_weight_gradient_matmul(name, fused, monkeypatch):
    """BitFit needs every activation gradient full fine-tuning needs, so it saves exactly the weight
    gradients: 6 per layer (q, k, v, o, fc_in, fc_out) and the tied LM head. The others save more."""
    with use_fused_kernels(fused):
        full = matmuls_in_backward(get_peft_model(tiny_model(), FullFinetuneConfig()), "full", monkeypatch)
        method = matmuls_in_backward(get_peft_model(tiny_model(), METHODS[name]), name, monkeypatch)
    weight_gradients = 6 * TINY["n_layers"] + 1
    if name == "bitfit":
        assert full - method == weight_gradients
    else:
        assert full - method >= weight_gradients


def test_a_frozen_model_without_head_has_nothing_to_train():
    peft_model = get_peft_model(tiny_model(), FrozenConfig())
    assert peft_model.get_nb_trainable_parameters()[0] == 0
    with pytest.raises(ValueError, match="nothing to optimize"):
        AdamW(peft_model.parameters(), lr=1e-3)
