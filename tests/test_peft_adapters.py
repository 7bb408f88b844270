"""Adapter files: only what a method trains, a fingerprint of the base model, checked on load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_models import tiny_model

from tinypft.model import GPT, GPTConfig
from tinypft.peft import (
    BitFitConfig,
    BitFitModel,
    FrozenConfig,
    FullFinetuneConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningModel,
    adapter_bytes,
    get_peft_model,
)
from tinypft.serialization import load_tensors

IDS = np.random.default_rng(0).integers(0, 16, (2, 5))




def perturb_adapter(peft_model) -> None:
    """Stand in for training: move every trainable tensor."""
    rng = np.random.default_rng(7)
    for p in peft_model.adapter_parameters().values():
        p.data += rng.normal(0.0, 0.3, size=p.shape)


METHODS = {
    "full": FullFinetuneConfig(),
    "frozen_head": FrozenConfig(),
    "bitfit": BitFitConfig(),
    "prefix_direct": PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=False),
    "embedding_only": PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=6, mode="embedding_only"),
    "prompt": PromptTuningConfig(num_virtual_tokens=3),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_save_and_load_reproduce_the_model_and_store_only_trained_tensors(name, tmp_path):
    head = name == "frozen_head"
    peft_model = get_peft_model(tiny_model(head=head), METHODS[name])
    perturb_adapter(peft_model)
    out = peft_model(IDS)
    expected = out.cls_logits.data if head else out.logits.data
    peft_model.save_pretrained(tmp_path)

    stored = load_tensors(tmp_path / "adapter_model.safetensors")
    trained = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    if name != "embedding_only":  # (embedding_only stores its merged vectors; see the prefix test)
        assert set(stored) == trained
    record = json.loads((tmp_path / "adapter_config.json").read_text())
    assert record["peft_config"]["method"] == METHODS[name].method and record["inference_mode"] is True
    assert (
        record["base_model"]["config"] == peft_model.config.to_dict()
        and len(record["base_model"]["sha256"]) == 64
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    loaded = PeftModel.from_pretrained(tiny_model(head=head), tmp_path)
    assert type(loaded) is type(peft_model)
    out = loaded(IDS)
    np.testing.assert_array_equal(out.cls_logits.data if head else out.logits.data, expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # loaded for inference
    trainable_again = PeftModel.from_pretrained(tiny_model(head=head), tmp_path, is_trainable=True)
    assert trainable_again.get_nb_trainable_parameters()[0] == sum(a.size for a in stored.values())


def test_a_reparameterized_prefix_is_saved_merged_unless_training_will_resume(tmp_path):
    P, d2L = 3, 2 * 2 * 8
    peft_model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=P, encoder_hidden_size=6))
    perturb_adapter(peft_model)
    expected = peft_model(IDS).logits.data

    peft_model.save_pretrained(tmp_path / "inference")
    stored = load_tensors(tmp_path / "inference" / "adapter_model.safetensors")
    assert {n: a.shape for n, a in stored.items()} == {
        "prefix_encoder.prefix": (P, d2L)
    }  # the MLP's output only
    size = adapter_bytes(tmp_path / "inference")
    assert size.num_floats == P * d2L == 96
    assert size.tensor_file_bytes == (tmp_path / "inference" / "adapter_model.safetensors").stat().st_size
    assert 96 * 8 < size.tensor_file_bytes < 96 * 8 + 200  # float64 data + a small header
    assert peft_model.stored_bytes_per_task() == size
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "inference")
    assert not loaded.prefix_encoder.reparameterized
    np.testing.assert_allclose(loaded(IDS).logits.data, expected, rtol=1e-12, atol=1e-12)

    peft_model.save_pretrained(tmp_path / "resume", include_reparam=True)
    record = json.loads((tmp_path / "resume" / "adapter_config.json").read_text())
    assert record["inference_mode"] is False
    resumed = PeftModel.from_pretrained(tiny_model(), tmp_path / "resume", is_trainable=True)
    assert resumed.prefix_encoder.reparameterized
    assert set(resumed.adapter_parameters()) == {
        "prefix_encoder.embedding.weight",
        "prefix_encoder.mlp.0.weight",
        "prefix_encoder.mlp.0.bias",
        "prefix_encoder.mlp.2.weight",
        "prefix_encoder.mlp.2.bias",
    }
    np.testing.assert_array_equal(resumed(IDS).logits.data, expected)
    assert adapter_bytes(tmp_path / "resume").num_floats == peft_model.get_nb_trainable_parameters()[0]


def test_bitfit_loading_writes_the_biases_into_the_base_model(tmp_path):
    peft_model = get_peft_model(tiny_model(), BitFitConfig(components=("q",)))
    perturb_adapter(peft_model)
    peft_model.save_pretrained(tmp_path)
    fresh = tiny_model()
    PeftModel.from_pretrained(fresh, tmp_path)
    np.testing.assert_array_equal(
        fresh.blocks[1].attn.q_proj.bias.data, peft_model.base_model.blocks[1].attn.q_proj.bias.data
    )


def test_another_base_model_is_refused_with_the_reason(tmp_path):
    peft_model = get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=3))
    peft_model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="frozen weights differ"):
        PeftModel.from_pretrained(tiny_model(seed=5), tmp_path)
    with pytest.raises(
        ValueError, match=r"config differs \(d_ff: adapter 32 vs model 48; d_model: adapter 8 vs model 12\)"
    ):
        PeftModel.from_pretrained(tiny_model(d_model=12), tmp_path)
    with pytest.raises(ValueError, match=r"parameters differ: extra \['cls_head.bias', 'cls_head.weight'\]"):
        PeftModel.from_pretrained(tiny_model(head=True), tmp_path)
    refused = tiny_model(seed=5)
    with pytest.raises(ValueError):
        PeftModel.from_pretrained(refused, tmp_path)
    assert all(p.requires_grad for p in refused.parameters())  # a refused model is left as it was

    # BitFit's biases are the adapter: other biases on the same frozen weights are fine
    bitfit = get_peft_model(tiny_model(), BitFitConfig())
    bitfit.save_pretrained(tmp_path / "bitfit")
    other_biases = tiny_model()
    other_biases.blocks[0].attn.q_proj.bias.data += 1.0
    PeftModel.from_pretrained(other_biases, tmp_path / "bitfit")
    other_weights = tiny_model()
    other_weights.blocks[0].attn.q_proj.weight.data[0, 0] += 1e-9
    with pytest.raises(ValueError, match="frozen weights differ"):
        PeftModel.from_pretrained(other_weights, tmp_path / "bitfit")


def test_from_pretrained_on_a_method_class_loads_only_that_method(tmp_path):
    get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=3)).save_pretrained(tmp_path)
    assert type(PromptTuningModel.from_pretrained(tiny_model(), tmp_path)) is PromptTuningModel
    with pytest.raises(TypeError, match="holds a PromptTuningModel"):
        BitFitModel.from_pretrained(tiny_model(), tmp_path)


def test_a_tensor_file_from_another_save_is_detected(tmp_path):
    get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=3)).save_pretrained(tmp_path / "a")
    other = get_peft_model(tiny_model(), PromptTuningConfig(num_virtual_tokens=3, init="random_normal"))
    other.save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(
        (tmp_path / "b" / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="does not belong"):
        PeftModel.from_pretrained(tiny_model(), tmp_path / "a")


def test_bytes_per_task_on_a_d128_model(tmp_path, measurements):
    """float32, d = 128, 4 layers, vocabulary 1024: a task costs its adapter file."""
    cfg = GPTConfig(vocab_size=1024, context_length=128, d_model=128, n_layers=4, n_heads=4)
    sizes = {}
    for name, config in {
        "bitfit": BitFitConfig(),
        "prefix_P10": PrefixTuningConfig(10),
        "prompt_P10": PromptTuningConfig(10),
        "full": FullFinetuneConfig(),
    }.items():
        sizes[name] = get_peft_model(GPT(cfg), config).stored_bytes_per_task()
    assert (
        sizes["prefix_P10"].num_floats == 10 * 2 * 4 * 128
    )  # the merged prefix, not the 592,640 MLP scalars
    assert sizes["prompt_P10"].num_floats == 1280 and sizes["bitfit"].num_floats == 5760
    assert sizes["full"].num_floats == cfg.num_parameters()
    for name, size in sizes.items():
        assert 4 * size.num_floats < size.tensor_file_bytes < 4 * size.num_floats + 8192
        measurements.append(
            f"peft adapter bytes {name}: {size.tensor_file_bytes:,} B tensors "
            f"({size.num_floats:,} floats) + {size.config_file_bytes:,} B JSON"
        )
