"""``tinypft.diagnostics`` on the tiny checkpoint: constant outputs are flagged and varied ones are
not, the SER splits exactly into missing and invented values, step 0's gradients equal a manual
backward and are zero only on the key biases, the sweep picks the lowest validation loss, and the
text-prompt baseline puts its instruction before every input."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tinypft import diagnostics, recipe
from tinypft.experiments.finetune import evenly_spaced
from tinypft.model import load_pretrained
from tinypft.peft import BitFitConfig
from tinypft.train import pad_batch
from tinypft.train.metrics import slot_error_rate


@pytest.fixture(scope="module")
def tokenizer():
    return recipe.load_tokenizer()


@pytest.fixture(scope="module")
def data(tokenizer):
    """A few training MRs, 6 dev MRs, and a short validation set."""
    loaded = recipe.load_task("e2e", tokenizer, eval_size=6, train_size=10)
    return dataclasses.replace(loaded, valid=loaded.valid[:: len(loaded.valid) // 24][:24])


def bitfit(tokenizer):
    return recipe.get_peft_model(load_pretrained("tiny", tokenizer=tokenizer)[0], BitFitConfig())


def test_output_spread_flags_constant_outputs_only():
    constant = diagnostics.output_spread(["The Eagle is a pub."] * 9 + ["The Mill is a pub."])
    assert constant.constant and constant.distinct == 2 and constant.most_common_share == 0.9
    assert constant.most_common == "The Eagle is a pub."
    assert str(constant).startswith("CONSTANT output: 2 distinct of 10")
    varied = diagnostics.output_spread(["low", "high", "average", "low", "high", "low"])
    assert not varied.constant and varied.distinct_share == 0.5 and varied.most_common == "low"
    assert str(varied).startswith("varied output")
    assert diagnostics.output_spread(["a"] * 8 + ["b", "c"]).constant is False  # 80% < the 90% threshold
    assert diagnostics.output_spread(["a"] * 8 + ["b", "c"], threshold=0.8).constant is True
    with pytest.raises(ValueError, match="no outputs"):
        diagnostics.output_spread([])


def test_ser_parts_counts_invented_values_on_top_of_missing_ones():
    mr = {"name": "The Eagle", "food": "French"}
    parts = diagnostics.ser_parts(["Zizzi serves Italian food near The Sorrento."], [mr])
    assert parts.missing == {"name": 1, "food": 1}
    assert parts.invented == {"entity": 2, "food": 1}  # two venue names and a food the MR lacks
    assert parts.slots == 2 and parts.ser == 2.5 > 1
    assert parts.ser == slot_error_rate(["Zizzi serves Italian food near The Sorrento."], [mr])
    assert "SER = (2 missing + 3 invented) / 2 slots = 2.500" in str(parts)


def test_ser_parts_sums_to_the_models_ser(tokenizer, data):
    scores = recipe.evaluate(bitfit(tokenizer), data, "dev", max_new_tokens=12)
    parts = diagnostics.ser_parts(scores.outputs, scores.examples)
    assert parts.ser == scores.ser == slot_error_rate(scores.outputs, [ex.slots for ex in scores.examples])
    assert parts.slots == sum(len(ex.slots) for ex in data.dev)
    assert parts.total_missing + parts.total_invented == round(scores.ser * parts.slots)


def test_step_zero_matches_a_manual_backward_and_finds_the_key_biases(tokenizer, data):
    model = bitfit(tokenizer)
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    report = diagnostics.step_zero(model, data, batches=1, batch_size=8)

    batch = pad_batch(evenly_spaced(data.train, 8), tokenizer.pad_id)
    loss = model.lm_loss(model(batch.ids, attention_mask=batch.attention_mask).logits, batch.labels)
    loss.backward()
    manual = {n: p.grad.copy() for n, p in model.named_parameters() if p.requires_grad}
    assert report.loss == pytest.approx(float(loss.item()), rel=1e-6)
    assert [t.name for t in report.tensors] == list(manual)
    for t in report.tensors:
        assert t.norm == pytest.approx(float(np.linalg.norm(manual[t.name].astype(np.float64))), rel=1e-5)
    assert report.zero == [n for n in manual if ".attn.k_proj." in n] and len(report.zero) == 2
    assert report.nonfinite == []
    assert all(np.array_equal(p.data, before[n]) for n, p in model.named_parameters())  # no update
    groups = {g.name: g for g in report.groups}
    key = "base_model.blocks.*.attn.k_proj.bias"
    assert groups[key].zero and groups[key].tensors == 2 and not groups[key.replace("k_proj", "v_proj")].zero
    flagged = [line.split()[0] for line in str(report).splitlines() if line.endswith("ZERO")]
    assert flagged == [key]


def test_step_zero_flags_a_non_finite_gradient(tokenizer, data):
    model = bitfit(tokenizer)
    model.base_model.blocks[1].mlp.fc_out.bias.data[0] = np.inf
    report = diagnostics.step_zero(model, data, batches=1)
    assert report.nonfinite and "NON-FINITE" in str(report)


def test_lr_sweep_marks_the_lowest_validation_loss(tokenizer, data):
    sweep = diagnostics.lr_sweep(lambda: bitfit(tokenizer), data, [1e-3, 3.0], steps=3)
    assert len(sweep.valid_loss) == 2 and all(math.isfinite(v) for v in sweep.valid_loss)
    assert sweep.valid_loss[0] != sweep.valid_loss[1]
    assert sweep.best_lr == [1e-3, 3.0][int(np.argmin(sweep.valid_loss))]
    assert str(sweep).splitlines()[1 + [1e-3, 3.0].index(sweep.best_lr)].endswith("<- best")
    diverged = diagnostics.LrSweep(steps=3, lrs=[0.1, 1.0, 10.0], train_loss=[2.0, 1.5, 9.0],
                                   valid_loss=[2.1, 1.9, math.nan])
    assert diverged.best_lr == 1.0


def test_text_prompt_baseline_puts_the_instruction_before_every_input(tokenizer, data):
    base = load_pretrained("tiny", tokenizer=tokenizer)[0]
    plain = recipe.evaluate(base, data, "dev", max_new_tokens=12)
    prompted = diagnostics.text_prompt_baseline(base, data, "Describe the restaurant:", max_new_tokens=12)
    assert prompted.n == len(data.dev)
    assert all(ex.mr == f"Describe the restaurant: {orig.mr}" and ex.slots == orig.slots
               for ex, orig in zip(prompted.examples, data.dev))
    assert prompted.outputs != plain.outputs  # the instruction reached the model
    assert 0 <= prompted.bleu <= 100 and prompted.ser is not None


def test_step_zero_finds_no_zero_gradient_in_a_prefix(tokenizer, data):
    config = recipe.method_config("prefix", data, encoder_hidden_size=16)
    model = recipe.get_peft_model(load_pretrained("tiny", tokenizer=tokenizer)[0], config)
    report = diagnostics.step_zero(model, data, batches=1)
    assert report.zero == [] and report.nonfinite == [] and report.loss > 0
    assert {t.name.split(".")[0] for t in report.tensors} == {"prefix_encoder"}
