"""The random-subset control: exact gradients, a bit-identical base, BitFit's count, a seeded subset."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_model

import tinypft
from tinypft.optim import AdamW
from tinypft.peft import BitFitConfig, PeftModel, RandomSubsetConfig, get_peft_model, subset_indices

IDS = np.random.default_rng(0).integers(0, 16, (2, 6))
MASK = np.array([[1] * 6, [1] * 4 + [0] * 2])
LABELS = np.where(MASK == 1, IDS, -100)
LABELS[:, :2] = -100


def loss_of(peft_model, head: bool = False):
    out = peft_model(IDS, attention_mask=MASK)
    loss = peft_model.lm_loss(out.logits, LABELS)
    return loss + (out.cls_logits * out.cls_logits).mean() if head else loss


@pytest.mark.parametrize("head", [False, True])
def test_the_trainable_count_is_bitfits(head):
    subset = get_peft_model(tiny_model(head=head), RandomSubsetConfig())
    bitfit = get_peft_model(tiny_model(head=head), BitFitConfig())
    assert subset.get_nb_trainable_parameters()[0] == bitfit.get_nb_trainable_parameters()[0]
    assert sum(i.size for i in subset.indices.values()) == sum(
        p.size for n, p in bitfit.named_parameters() if p.requires_grad and "cls_head" not in n
    )
    explicit = get_peft_model(tiny_model(), RandomSubsetConfig(num_params=7))
    assert explicit.get_nb_trainable_parameters()[0] == 7


@pytest.mark.parametrize("head", [False, True])
def test_gradcheck_the_deltas_through_the_whole_model(head):
    peft_model = get_peft_model(tiny_model(head=head), RandomSubsetConfig(num_params=40))
    names, params = zip(*[(n, p) for n, p in peft_model.named_parameters() if p.requires_grad])
    for p in params:  # away from zero, so the check is not only at the base model
        p.data += np.random.default_rng(2).normal(0.0, 0.3, size=p.shape)
    report = tinypft.gradcheck(lambda *_: loss_of(peft_model, head), list(params), names=list(names))
    assert report.checked == peft_model.get_nb_trainable_parameters()[0]


def test_adamw_with_weight_decay_leaves_the_base_bit_identical():
    peft_model = get_peft_model(tiny_model(), RandomSubsetConfig())
    base = {n: p.data.copy() for n, p in peft_model.base_model.named_parameters()}
    optimizer = AdamW(peft_model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        loss_of(peft_model).backward()
        assert all(p.grad is None for p in peft_model.base_model.parameters())
        optimizer.step()
    for n, p in peft_model.base_model.named_parameters():
        assert p.data.tobytes() == base[n].tobytes(), n
    for name, index in peft_model.indices.items():  # W_eff differs from W exactly on the subset
        changed = np.flatnonzero(peft_model.effective_weight(name) != base[name])
        assert set(changed) <= set(index) and changed.size > 0.5 * index.size, name


def test_zero_deltas_give_the_base_models_output_and_the_adapter_round_trips(tmp_path):
    model = tiny_model()
    reference = model(IDS, attention_mask=MASK).logits.data
    peft_model = get_peft_model(model, RandomSubsetConfig(seed=3))
    np.testing.assert_array_equal(peft_model(IDS, attention_mask=MASK).logits.data, reference)
    optimizer = AdamW(peft_model.parameters(), lr=1e-2)
    loss_of(peft_model).backward()
    optimizer.step()
    trained = peft_model(IDS, attention_mask=MASK).logits.data
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "adapter")
    np.testing.assert_array_equal(loaded(IDS, attention_mask=MASK).logits.data, trained)
    assert peft_model.stored_bytes_per_task().num_floats == sum(i.size for i in peft_model.indices.values())


def test_the_subset_depends_on_the_seed_only():
    model = tiny_model()
    a, b = (subset_indices(model, RandomSubsetConfig(seed=0)) for _ in range(2))
    c = subset_indices(model, RandomSubsetConfig(seed=1))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert any(k not in c or not np.array_equal(a[k], c[k]) for k in a)
    only_q = subset_indices(model, RandomSubsetConfig(num_params=5, components=("q",)))
    assert all(".q_proj." in k for k in only_q) and sum(i.size for i in only_q.values()) == 5
    with pytest.raises(ValueError, match="unknown components"):
        RandomSubsetConfig(components=("bias",))
    with pytest.raises(ValueError, match="entries asked for"):
        subset_indices(model, RandomSubsetConfig(num_params=10**6))
