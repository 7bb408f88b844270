"""Bad input and stale state at the library level: each case raises an error that names the problem
(or works correctly), never a silently wrong result.

    merge() with a stale optimizer          the optimizer refuses to step
    two PeftModels on one base model        the older conflicting one is retired and says so
    in-place changes before backward        the version counter makes backward refuse
    values that must be refused             token ids, masks, shapes, dtypes, optimizer settings,
                                            adapter config files
"""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
from tiny_models import tiny_model

import tinypft
from tinypft.engine import Tensor, no_grad, use_fused_kernels
from tinypft.nn import Embedding, LayerNorm, Linear, Module
from tinypft.optim import SGD, AdamW, clip_grad_norm_
from tinypft.peft import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
    get_peft_model,
)
from tinypft.peft.config import resolve_token_ids
from tinypft.peft.prompt import frequent_token_ids

IDS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])  # (B, T) = (2, 4), vocabulary of 16


def lm_step(model: Module, optimizer) -> None:
    optimizer.zero_grad()
    model.lm_loss(model(IDS).logits, IDS).backward()
    optimizer.step()


def trainable(model: Module) -> list:
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------------- 1. merge() and a stale optimizer


def test_a_step_after_merge_with_the_optimizer_of_the_mlp_raises():
    model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    optimizer = AdamW(trainable(model), lr=1e-2)
    lm_step(model, optimizer)
    model.merge()
    with pytest.raises(RuntimeError, match=r"removed from its model by PrefixTuningModel\.merge\(\)"):
        lm_step(model, optimizer)


def test_a_step_after_merge_raises_even_with_gradients_left_from_before():
    model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    optimizer = SGD(trainable(model), lr=0.1)
    model.lm_loss(model(IDS).logits, IDS).backward()  # the MLP's parameters hold gradients now
    model.merge()
    with pytest.raises(RuntimeError, match="removed from its model"):
        optimizer.step()


def test_after_merge_a_new_optimizer_trains_the_plain_prefix():
    model = get_peft_model(tiny_model(), PrefixTuningConfig(num_virtual_tokens=3, encoder_hidden_size=6))
    model.merge()
    prefix = model.prefix_encoder.prefix
    assert trainable(model) == [prefix]
    before = prefix.data.copy()
    lm_step(model, AdamW(trainable(model), lr=1e-2))
    assert not np.array_equal(prefix.data, before)


# ------------------------------------------------------------------------- 2. one base model, two PeftModels

SMALL_PREFIX = PrefixTuningConfig(num_virtual_tokens=2, encoder_hidden_size=4)
SMALL_PROMPT = PromptTuningConfig(num_virtual_tokens=2)
CONFLICTS = [  # (first, second): at least one of the two trains base parameters
    pytest.param(BitFitConfig(), SMALL_PREFIX, id="bitfit-then-prefix"),
    pytest.param(SMALL_PREFIX, BitFitConfig(), id="prefix-then-bitfit"),
    pytest.param(BitFitConfig(), BitFitConfig(components=("q",)), id="bitfit-then-bitfit"),
    pytest.param(FullFinetuneConfig(), SMALL_PROMPT, id="full-then-prompt"),
    pytest.param(SMALL_PROMPT, FullFinetuneConfig(), id="prompt-then-full"),
]


@pytest.mark.parametrize("first_config, second_config", CONFLICTS)
def test_a_second_conflicting_wrap_retires_the_first(first_config, second_config):
    base = tiny_model()
    first = get_peft_model(base, first_config)
    second = get_peft_model(base, second_config)
    name = type(second).__name__
    with pytest.raises(RuntimeError, match=f"wrapped again, as a {name}"):
        first(IDS)
    with pytest.raises(RuntimeError, match="wrapped again"):
        first.set_adapter_trainable(True)
    # the newer model trains exactly its own set, and training it works
    flags = {n for n, p in base.named_parameters() if p.requires_grad}
    assert flags == set(second.trained_base)
    lm_step(second, AdamW(trainable(second), lr=1e-2))


def test_a_retired_model_refuses_to_save(tmp_path):
    base = tiny_model()
    first = get_peft_model(base, BitFitConfig())
    get_peft_model(base, SMALL_PREFIX)
    with pytest.raises(RuntimeError, match="wrapped again"):
        first.save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("order", [(SMALL_PREFIX, SMALL_PROMPT), (SMALL_PROMPT, SMALL_PREFIX)])
def test_methods_that_train_no_base_parameter_share_a_base_independently(order):
    base = tiny_model()
    first, second = get_peft_model(base, order[0]), get_peft_model(base, order[1])
    with no_grad():
        first_before = first(IDS).logits.data.copy()
    lm_step(second, AdamW(trainable(second), lr=0.1))  # trains only the second's own vectors
    assert not any(p.requires_grad for p in base.parameters())
    with no_grad():
        np.testing.assert_array_equal(first(IDS).logits.data, first_before)
    lm_step(first, AdamW(trainable(first), lr=0.1))  # and the first still trains


def test_a_deleted_wrapper_is_forgotten():
    base = tiny_model()
    first = get_peft_model(base, BitFitConfig())
    del first
    gc.collect()
    second = get_peft_model(base, SMALL_PREFIX)
    third = get_peft_model(base, SMALL_PROMPT)
    second(IDS), third(IDS)  # neither conflicts with the other


def test_a_wrap_replacing_the_one_it_came_from_works():
    """The pattern ``model = get_peft_model(model.base_model, other)``: the old wrapper is alive
    during the call, and is retired by it."""
    model = get_peft_model(tiny_model(), BitFitConfig())
    old = model
    model = get_peft_model(model.base_model, BitFitConfig(components=("q", "fc_in")))
    lm_step(model, AdamW(trainable(model), lr=1e-2))
    assert old.superseded_by == "BitFitModel"


def test_a_refused_from_pretrained_leaves_the_current_wrapper_usable(tmp_path):
    other = get_peft_model(tiny_model(seed=1), SMALL_PREFIX)
    other.save_pretrained(tmp_path / "prefix")
    base = tiny_model(seed=0)  # other frozen weights: the adapter does not fit it
    current = get_peft_model(base, BitFitConfig())
    with pytest.raises(ValueError, match="frozen weights differ"):
        PeftModel.from_pretrained(base, tmp_path / "prefix")
    assert current.superseded_by is None
    current(IDS)
    assert {n for n, p in base.named_parameters() if p.requires_grad} == set(current.trained_base)


# --------------------------------------------------------------------- 3. in-place changes before backward


def linear_graph(fused: bool) -> tuple[Linear, Tensor]:
    """A Linear on an input that needs a gradient, so the op keeps the weight for backward."""
    tinypft.manual_seed(0)
    layer = Linear(3, 2)
    x = Tensor(np.ones((4, 3)), requires_grad=True)
    with use_fused_kernels(fused):
        return layer, (layer(x) * layer(x)).sum()


def change_by_augmented_assignment(layer: Linear) -> None:
    layer.weight.data -= 0.1


def change_by_copy(layer: Linear) -> None:
    layer.weight.copy_(np.zeros((2, 3)))


def change_by_sgd(layer: Linear) -> None:
    layer.weight.grad = np.ones((2, 3), np.float32)
    SGD([layer.weight], lr=0.1).step()


def change_by_adamw(layer: Linear) -> None:
    layer.weight.grad = np.ones((2, 3), np.float32)
    AdamW([layer.weight], lr=0.1).step()


def change_by_load_state_dict(layer: Linear) -> None:
    layer.load_state_dict({"weight": np.zeros((2, 3)), "bias": np.zeros(2)})


def change_through_a_detached_view(layer: Linear) -> None:
    layer.weight.detach().data *= 2.0


def change_through_a_slice(layer: Linear) -> None:
    with no_grad():
        row = layer.weight[0]
    row.data += 1.0


def change_raw_then_bump(layer: Linear) -> None:
    layer.weight.data[...] = 0.0
    layer.weight.bump_version()


WRITES = [
    change_by_augmented_assignment, change_by_copy, change_by_sgd, change_by_adamw, change_by_load_state_dict,
    change_through_a_detached_view, change_through_a_slice, change_raw_then_bump,
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("write", WRITES, ids=lambda f: f.__name__)
def test_backward_refuses_a_saved_array_changed_in_place(write, fused):
    layer, loss = linear_graph(fused)
    version = layer.weight.version
    write(layer)
    op = "Linear" if fused else "MatMul"
    with pytest.raises(RuntimeError, match=rf"{op} saved its input 1 .* modified in place after the forward"):
        loss.backward()
    if write is not change_through_a_detached_view and write is not change_through_a_slice:
        assert layer.weight.version > version  # written through the tensor itself: its own count moved


def test_an_output_saved_for_backward_is_checked_too():
    x = Tensor(np.array([0.5, 1.0]), requires_grad=True)
    y = x.exp()  # exp's backward reads its output
    loss = y.sum()
    y.data += 1.0
    with pytest.raises(RuntimeError, match=r"Exp saved its output \(shape \(2,\)\)"):
        loss.backward()


def test_a_change_backward_does_not_read_is_fine():
    """add's backward reads no values, and a replaced .data leaves the saved array as it was."""
    a, b = Tensor(np.ones(3), requires_grad=True), Tensor(np.ones(3))
    loss = (a + b).sum()
    b.data += 5.0
    loss.backward()
    np.testing.assert_array_equal(a.grad, np.ones(3))
    w = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    loss = (w * w).sum()
    w.data = np.array([10.0, 10.0], np.float32)  # a new array: the graph keeps the one it saw
    loss.backward()
    np.testing.assert_array_equal(w.grad, [4.0, 6.0])


def test_changes_before_the_forward_and_after_backward_are_fine():
    model = tiny_model()
    optimizer = AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):  # the usual loop: each step writes parameters between two graphs
        lm_step(model, optimizer)


def test_a_raw_numpy_write_is_not_seen():
    """The documented limit: ``t.data[...] = x`` goes around the tensor (no counter can see it)."""
    layer, loss = linear_graph(fused=True)
    layer.weight.data[...] = 0.0
    loss.backward()  # no error: the gradient used the new weights
    assert layer.weight.version == 0


def test_version_counts_the_writes_of_one_tensor():
    t = Tensor(np.zeros(3))
    assert t.version == 0
    t.data += 1.0
    t.copy_(np.ones(3))
    t.data = np.zeros(3)
    t.bump_version()
    assert t.version == 4


# ----------------------------------------------------------------------------- 4. values that must be refused


@pytest.mark.parametrize(
    "config, match",
    [
        (PromptTuningConfig(num_virtual_tokens=2, init="text", init_text=[-1]),
         "init_text: token id -1 is out of range"),
        (PromptTuningConfig(num_virtual_tokens=2, init="text", init_text=[3, 16]),
         "token id 16 is out of range"),
        (PromptTuningConfig(num_virtual_tokens=2, init="class_labels", class_labels=[1, -2]),
         r"class_labels\[1\]: token id -2 is out of range"),
        (PromptTuningConfig(num_virtual_tokens=2, init="class_labels", class_labels=[[1, 99]]),
         r"class_labels\[0\]: token id 99"),
        (PrefixTuningConfig(num_virtual_tokens=2, init="real_words", init_text=[-1], encoder_hidden_size=4),
         "PrefixTuningConfig.init_text: token id -1 is out of range for vocab_size 16"),
        (PrefixTuningConfig(num_virtual_tokens=2, init="real_words", init_text=[20], mode="embedding_only",
                            prefix_projection=False), "token id 20 is out of range"),
    ],
)
def test_init_token_ids_out_of_the_vocabulary_are_refused(config, match):
    with pytest.raises(ValueError, match=match):
        get_peft_model(tiny_model(), config)


def test_init_token_ids_must_be_integers():
    with pytest.raises(TypeError, match="token ids must be integers, got 2.7"):
        resolve_token_ids("init_text", [1, 2.7], None, 16)
    with pytest.raises(TypeError, match="got True"):
        resolve_token_ids("init_text", [True], None, 16)
    assert resolve_token_ids("init_text", [np.int64(3), 15], None, 16) == [3, 15]


def test_token_counts_for_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="token id -1 is out of range"):
        frequent_token_ids(16, 4, {-1: 10})


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(lr=float("nan")), "lr must be finite, got nan"),
        (dict(lr=float("inf")), "lr must be finite"),
        (dict(lr=-1e-3), r"lr must be >= 0.0, got -0.001"),
        (dict(betas=(0.9, 1.0)), r"betas\[1\] must be < 1.0"),
        (dict(betas=(-0.1, 0.999)), r"betas\[0\] must be >= 0.0"),
        (dict(betas=(float("nan"), 0.999)), r"betas\[0\] must be finite"),
        (dict(betas=(0.9,)), "betas must be a pair"),
        (dict(eps=0.0), "eps must be > 0.0, got 0.0"),
        (dict(eps=-1e-8), "eps must be > 0.0"),
        (dict(weight_decay=-0.01), "weight_decay must be >= 0.0"),
        (dict(weight_decay=float("nan")), "weight_decay must be finite"),
        (dict(lr="0.001"), "lr must be a number"),
    ],
)
def test_adamw_refuses_bad_settings(settings, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AdamW([Tensor(np.ones(2), requires_grad=True)], **settings)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(lr=float("nan")), "lr must be finite"),
        (dict(lr=-0.1), "lr must be >= 0.0"),
        (dict(lr=0.1, momentum=float("nan")), "momentum must be finite"),
        (dict(lr=0.1, weight_decay=-1.0), "weight_decay must be >= 0.0"),
    ],
)
def test_sgd_refuses_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        SGD([Tensor(np.ones(2), requires_grad=True)], **settings)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_clip_grad_norm_refuses_a_bad_max_norm(max_norm):
    p = Tensor(np.ones(2), requires_grad=True)
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="max_norm must be"):
        clip_grad_norm_([p], max_norm)
    np.testing.assert_array_equal(p.grad, np.ones(2))


BAD_MASKS = [
    pytest.param([[1, 1, 2, 1], [1, 1, 1, 1]], "found 2", id="two"),
    pytest.param([[1, 1, -1, 1], [1, 1, 1, 1]], "found -1", id="minus-one"),
    pytest.param([[1, 1, 0.5, 1], [1, 1, 1, 1]], "found 0.5", id="half"),
    pytest.param([[1, 1, np.nan, 1], [1, 1, 1, 1]], "found nan", id="nan"),
]


@pytest.mark.parametrize("mask, match", BAD_MASKS)
@pytest.mark.parametrize("wrap", [None, SMALL_PREFIX, SMALL_PROMPT], ids=["gpt", "prefix", "prompt"])
def test_attention_masks_hold_only_zeros_and_ones(mask, match, wrap):
    model = tiny_model() if wrap is None else get_peft_model(tiny_model(), wrap)
    with pytest.raises(ValueError, match=f"attention_mask must hold only 0 .* and 1 .*, {match}"):
        model(IDS, np.array(mask))


def test_a_virtual_token_mask_is_checked_too():
    model = get_peft_model(tiny_model(), SMALL_PROMPT)
    with pytest.raises(ValueError, match="found 2"):
        model(IDS, np.array([[1, 1, 1, 1, 2, 1], [1, 1, 1, 1, 1, 1]]))  # (B, P + T)


@pytest.mark.parametrize(
    "mask",
    [np.array([[1, 1, 0, 0], [1, 1, 1, 1]]), np.array([[True, True, False, False], [True] * 4]),
     np.array([[1.0, 1.0, 0.0, 0.0], [1.0] * 4]), np.array([[1, 1, 0, 0], [1] * 4], np.uint8)],
    ids=["int", "bool", "float", "uint8"],
)
def test_masks_of_zeros_and_ones_in_any_dtype_mean_the_same(mask):
    model = tiny_model()
    with no_grad():
        expected = model(IDS, np.array([[True, True, False, False], [True] * 4])).logits.data
        np.testing.assert_array_equal(model(IDS, mask).logits.data, expected)


def test_a_mask_of_strings_is_refused():
    with pytest.raises(TypeError, match="attention_mask must hold booleans or 0/1 numbers"):
        tiny_model()(IDS, np.array([["1"] * 4] * 2))


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (np.zeros((2, 0), np.int64), ValueError, r"shape \(2, 0\); each sequence needs at least one token"),
        (np.array([1, 2]), ValueError, r"must have shape \(batch, time\)"),
        (np.array([[1.0, 2.0]]), TypeError, "token ids must be integers, got dtype float64"),
        (np.array([[True, False]]), TypeError, "must be integers, got dtype bool"),
        (np.array([[1, 16]]), IndexError, "token id 16 is out of range for vocab_size 16"),
        (np.array([[-1, 2]]), IndexError, "token id -1 is out of range"),
        (np.ones((1, 17), np.int64), ValueError, "sequence too long: 17 tokens .* context_length is 16"),
    ],
    ids=["empty-sequence", "1-d", "float", "bool", "too-large", "negative", "too-long"],
)
@pytest.mark.parametrize("wrap", [None, SMALL_PREFIX], ids=["gpt", "prefix"])
def test_bad_token_ids_are_refused(ids, error, match, wrap):
    model = tiny_model() if wrap is None else get_peft_model(tiny_model(), wrap)
    if wrap is not None and match.startswith("sequence too long"):
        match = "sequence too long"  # the prefix's positions count too
    with pytest.raises(error, match=match):
        model(ids)


def test_an_empty_batch_gives_empty_logits():
    with no_grad():
        assert tiny_model()(np.zeros((0, 3), np.int64)).logits.shape == (0, 3, 16)


@pytest.mark.parametrize(
    "position_ids, match",
    [
        (np.array([[0, 1], [0, 1]]), r"position_ids must be integers of shape \(2, 4\)"),
        (np.zeros((2, 4)), r"got float64 \(2, 4\)"),
        (np.array([[-1, 0, 1, 2], [0, 1, 2, 3]]), "position_ids must be >= 0, got -1"),
        (np.array([[0, 1, 2, 16], [0, 1, 2, 3]]), "sequence too long"),
    ],
    ids=["shape", "dtype", "negative", "beyond-context"],
)
def test_bad_position_ids_are_refused(position_ids, match):
    with pytest.raises(ValueError, match=match):
        tiny_model()(IDS, position_ids=position_ids)


def kv(shape, dtype=np.float64):
    return Tensor(np.zeros(shape), dtype=dtype)


def pair(P=3, head_dim=4, batch=1, dtype=np.float64, P_v=None):
    """One layer's (K, V) for the tiny model (2 heads of 4): each (batch, 2, P, head_dim)."""
    return kv((batch, 2, P, head_dim), dtype), kv((batch, 2, P if P_v is None else P_v, head_dim))


PREFIX = [pair(), pair()]  # fits the tiny model's 2 layers


@pytest.mark.parametrize(
    "inject, error, match",
    [
        pytest.param(dict(prompt_embeds=np.zeros((1, 2, 8))), TypeError,
                     "prompt_embeds must be a Tensor, got ndarray", id="embeds-array"),
        pytest.param(dict(prompt_embeds=kv((1, 2, 5))), ValueError,
                     r"prompt_embeds has shape \(1, 2, 5\), expected \(B or 1, P, 8\)", id="embeds-width"),
        pytest.param(dict(prompt_embeds=kv((3, 2, 8))), ValueError,
                     r"prompt_embeds has shape \(3, 2, 8\)", id="embeds-batch"),
        pytest.param(dict(prompt_embeds=kv((2, 8))), ValueError,
                     r"prompt_embeds has shape \(2, 8\)", id="embeds-2d"),
        pytest.param(dict(prompt_embeds=kv((1, 2, 8), np.float32)), TypeError,
                     "prompt_embeds is float32, the model computes in float64", id="embeds-dtype"),
        pytest.param(dict(kv_prefix=[pair()]), ValueError,
                     "kv_prefix has 1 layers, the model has 2", id="kv-layers"),
        pytest.param(dict(kv_prefix=[pair(head_dim=5)] * 2), ValueError,
                     r"kv_prefix\[0\] K has shape \(1, 2, 3, 5\), expected \(B or 1, 2, 3, 4\)",
                     id="kv-head-dim"),
        pytest.param(dict(kv_prefix=[pair(P_v=2)] * 2), ValueError,
                     r"kv_prefix\[0\] V has shape \(1, 2, 2, 4\)", id="kv-v-length"),
        pytest.param(dict(kv_prefix=[pair(), pair(P=2)]), ValueError,
                     r"kv_prefix\[1\] K has shape \(1, 2, 2, 4\), .*the same in every layer",
                     id="kv-p-per-layer"),
        pytest.param(dict(kv_prefix=[pair(dtype=np.float32)] * 2), TypeError,
                     r"kv_prefix\[0\] K is float32", id="kv-dtype"),
        pytest.param(dict(kv_prefix=PREFIX, kv_prefix_start=np.array([0.5, 1.0])), ValueError,
                     "kv_prefix_start must be integers", id="start-float"),
        pytest.param(dict(kv_prefix=PREFIX, kv_prefix_start=np.array([0, 1, 2])), ValueError,
                     r"kv_prefix_start must be integers of shape \(2,\), got int64 \(3,\)", id="start-shape"),
        pytest.param(dict(kv_prefix_start=np.array([0, 1])), ValueError,
                     "kv_prefix_start places a kv_prefix; none was given", id="start-without-prefix"),
    ],
)
def test_bad_injected_inputs_are_refused(inject, error, match):
    with pytest.raises(error, match=match):
        tiny_model()(IDS, **inject)


def test_good_injected_inputs_still_work():
    model = tiny_model()
    with no_grad():
        out = model(IDS, kv_prefix=[pair(), pair(batch=2)], kv_prefix_start=np.array([0, 2]))
        assert out.logits.shape == (2, 4, 16)
        assert model(IDS, prompt_embeds=kv((2, 3, 8))).logits.shape == (2, 4, 16)


@pytest.mark.parametrize(
    "layer, x, match",
    [
        (Linear(8, 3), np.ones((2, 5)), r"Linear\(in_features=8\): the input has shape \(2, 5\)"),
        (LayerNorm(8), np.ones((2, 5)), r"LayerNorm\(8\): the input has shape \(2, 5\)"),
    ],
)
def test_layers_name_an_input_of_the_wrong_width(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer(Tensor(x))


def test_an_embedding_refuses_float_and_out_of_range_ids():
    table = Embedding(4, 2)
    with pytest.raises(TypeError, match="ids must be integers"):
        table(np.array([0.5]))
    with pytest.raises(IndexError, match="id 4 is out of range for a table of 4 rows"):
        table(np.array([4]))


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (np.array([[1, 2], [3, 4]]), ValueError, r"need targets of shape \(2, 4\)"),
        (np.array([[1, 2, 3, 99], [1, 2, 3, 4]]), IndexError, "target 99 is out of range for 16 classes"),
        (np.array([[1, 2, -5, 4], [1, 2, 3, 4]]), IndexError, "target -5 is out of range"),
        (IDS.astype(float), TypeError, "targets must be integers"),
    ],
    ids=["shape", "too-large", "negative", "float"],
)
def test_bad_labels_are_refused(labels, error, match):
    model = tiny_model()
    with pytest.raises(error, match=match):
        model.lm_loss(model(IDS).logits, labels)


# ----------------------------------------------------------------------------- adapter config files


@pytest.fixture
def adapter_dir(tmp_path):
    base = tiny_model()
    get_peft_model(base, SMALL_PREFIX).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def rewrite(path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda p: p.write_text('{"format": "tinypft-adapter", '), "adapter_config.json is not valid JSON"),
        (lambda p: p.write_text("[1, 2]"), "adapter_config.json: not a tinypft adapter config"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), "adapter_config.json is not UTF-8 text"),
        (lambda p: rewrite(p, lambda r: r.pop("tensors")), "adapter_config.json: tensors is missing"),
        (lambda p: rewrite(p, lambda r: r.update(peft_config="prefix")),
         "adapter_config.json: peft_config is not a dict"),
        (lambda p: rewrite(p, lambda r: r["base_model"].pop("config")),
         "adapter_config.json: base_model.config is missing"),
        (lambda p: rewrite(p, lambda r: r["peft_config"].update(num_virtual_tokens=-3)),
         "adapter_config.json: peft_config: PrefixTuningConfig.num_virtual_tokens must be a positive"),
        (lambda p: rewrite(p, lambda r: r["peft_config"].update(method="lora")),
         "adapter_config.json: peft_config: unknown fine-tuning method 'lora'"),
    ],
    ids=["truncated", "not-an-object", "binary", "missing-field", "wrong-type", "missing-base-field",
         "bad-value", "unknown-method"],
)
def test_a_bad_adapter_config_names_the_file(adapter_dir, corrupt, match):
    corrupt(adapter_dir / "adapter_config.json")
    with pytest.raises(ValueError, match=match) as error:
        PeftModel.from_pretrained(tiny_model(), adapter_dir)
    assert str(adapter_dir) in str(error.value)


def test_a_good_adapter_config_still_loads(adapter_dir):
    model = PeftModel.from_pretrained(tiny_model(), adapter_dir)
    with no_grad():
        assert model(IDS).logits.shape == (2, 4, 16)


# ----------------------------------------------------------------------------- the other methods wrap cleanly


@pytest.mark.parametrize(
    "config", [FrozenConfig(), RandomSubsetConfig(num_params=5)], ids=["frozen", "random-subset"]
)
def test_methods_without_base_parameters_share_with_a_prompt(config):
    base = tiny_model()
    first, second = get_peft_model(base, config), get_peft_model(base, SMALL_PROMPT)
    with no_grad():
        first(IDS), second(IDS)
