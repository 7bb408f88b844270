"""Every method's trainable parameters, gradient-checked in float64 through a whole tiny model."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tiny_models import TINY

import tinypft
from tinypft.model import GPT, GPTConfig
from tinypft.peft import (
    BitFitConfig,
    FrozenConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
    infix_start_from_labels,
)

METHODS = {
    "bitfit": (BitFitConfig(), True),
    "bitfit_q_fc_in": (BitFitConfig(components=("q", "fc_in")), False),
    "frozen_head": (FrozenConfig(), True),
    "prefix_mlp": (PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=4), False),
    "prefix_direct": (PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=False), False),
    "infix_mlp": (PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=4, mode="infix"), False),
    "infix_direct": (PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=False, mode="infix"), False),
    "embedding_only_mlp": (
        PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=4, mode="embedding_only"),
        False,
    ),
    "prompt": (PromptTuningConfig(num_virtual_tokens=3, init="random_normal"), False),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_gradcheck_trainable_parameters_through_the_whole_model(name, measurements):
    config, head = METHODS[name]
    tinypft.manual_seed(0)
    with tinypft.default_dtype(np.float64):
        model = GPT(GPTConfig(**TINY))
        if head:
            model.add_classification_head(3)
    rng = np.random.default_rng(1)
    for _, p in model.named_parameters():
        p.data += rng.normal(0.0, 0.2, size=p.shape)
    peft_model = get_peft_model(model, config)

    ids = rng.integers(0, 16, (2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = np.where(mask == 1, ids, -100)
    labels[:, :2] = -100  # the source: no loss
    kwargs = {"infix_start": infix_start_from_labels(labels)} if "infix" in name else {}
    names, params = zip(*[(n, p) for n, p in peft_model.named_parameters() if p.requires_grad])

    def loss_fn(*_params):
        out = peft_model(ids, attention_mask=mask, **kwargs)
        loss = peft_model.lm_loss(out.logits, labels)
        return loss + (out.cls_logits * out.cls_logits).mean() if head else loss

    loss_fn().backward()  # every trainable tensor matters to this loss (a zero gradient would pass the check)
    vanishing = [n for n, p in zip(names, params) if np.abs(p.grad).max() < 1e-8]
    # b_k adds q . b_k to every score of a query alike, which softmax ignores: its gradient is exactly 0
    assert all(n.endswith("k_proj.bias") for n in vanishing), vanishing

    start = time.perf_counter()
    report = tinypft.gradcheck(loss_fn, list(params), names=list(names))
    seconds = time.perf_counter() - start
    assert report.checked == peft_model.get_nb_trainable_parameters()[0] > 0
    measurements.append(f"peft gradcheck {name}: {report}, {seconds:.2f}s")
    assert seconds < 3.0
