"""The mini-transformer: gradients, masks, extension points, errors, and agreement with PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinypft
from tinypft.engine import Tensor, use_fused_kernels
from tinypft.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def float64_by_default():
    with tinypft.default_dtype(np.float64):
        yield


TINY = dict(vocab_size=16, context_length=12, d_model=8, n_layers=2, n_heads=2)


def make_model(dtype=np.float64, seed: int = 0, **overrides) -> GPT:
    tinypft.manual_seed(seed)
    with tinypft.default_dtype(dtype):
        model = GPT(GPTConfig(**{**TINY, **overrides}))
    # Random (not zero) biases and LayerNorm parameters, so that every one of them matters in the checks.
    rng = np.random.default_rng(seed + 1)
    for name, p in model.named_parameters():
        if name.endswith("bias") or "ln" in name:
            p.data[...] = rng.normal(0.0, 0.3, size=p.shape) + (1.0 if name.endswith("ln_1.weight") else 0.0)
    return model


def ids_for(model: GPT, B: int, T: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, (B, T))


def test_parameter_names_and_count():
    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    for i in range(2):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert f"blocks.{i}.attn.{proj}.weight" in names and f"blocks.{i}.attn.{proj}.bias" in names
        for layer in ("mlp.fc_in", "mlp.fc_out", "ln_1", "ln_2"):
            assert f"blocks.{i}.{layer}.bias" in names
    assert model.num_parameters() == model.config.num_parameters()
    assert "lm_head" not in " ".join(names)  # the head is tied to wte


@pytest.mark.parametrize("fused", [False, True])
def test_whole_model_gradcheck_every_parameter(fused):
    model = make_model()
    ids = ids_for(model, 2, 5)
    labels = ids.copy()
    labels[0, :2] = -100
    names, params = zip(*model.named_parameters())

    def loss_fn(*_params: Tensor) -> Tensor:
        out = model(ids, attention_mask=np.array([[1] * 5, [1, 1, 1, 1, 0]]))
        return model.lm_loss(out.logits, labels)

    with use_fused_kernels(fused):
        report = tinypft.gradcheck(loss_fn, list(params), names=list(names))
    assert report.checked == model.num_parameters()


def test_padding_does_not_change_real_positions():
    model = make_model()
    ids = ids_for(model, 1, 6)
    plain = model(ids).logits.data
    right = model(np.concatenate([ids, [[0, 0]]], 1), attention_mask=np.array([[1] * 6 + [0, 0]])).logits.data
    left = model(np.concatenate([[[0, 0]], ids], 1), attention_mask=np.array([[0, 0] + [1] * 6])).logits.data
    np.testing.assert_allclose(right[:, :6], plain, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(left[:, 2:], plain, rtol=1e-12, atol=1e-12)


def test_cache_as_kv_prefix_continues_the_sequence():
    """Keys/values of a first chunk, given as a kv prefix, reproduce the logits of the whole sequence."""
    model = make_model()
    ids = ids_for(model, 2, 8)
    full = model(ids).logits.data
    first = model(ids[:, :3], use_cache=True)
    prefix = list(zip(first.cache.keys, first.cache.values))
    rest = model(ids[:, 3:], kv_prefix=prefix).logits.data
    np.testing.assert_allclose(rest, full[:, 3:], rtol=1e-12, atol=1e-12)
    step = model(ids[:, 3:], cache=first.cache).logits.data  # the same through the cache path
    np.testing.assert_allclose(step, full[:, 3:], rtol=1e-12, atol=1e-12)


def test_prompt_embeds_equal_token_embeddings_at_the_front():
    model = make_model()
    ids = ids_for(model, 2, 7)
    full = model(ids).logits.data
    prompt = model.wte(ids[:1, :3])  # (1, 3, d), broadcast over the batch
    out = model(ids[:, 3:], prompt_embeds=Tensor(np.broadcast_to(prompt.data, (1, 3, 8))))
    assert out.logits.shape == (2, 4, 16)  # trimmed to the token positions
    np.testing.assert_allclose(out.logits.data[0], full[0, 3:], rtol=1e-12, atol=1e-12)


def test_infix_prefix_is_invisible_before_its_start():
    model = make_model()
    ids = ids_for(model, 1, 6)
    rng = np.random.default_rng(3)
    H, hd = 2, 4
    prefix = [
        (Tensor(rng.normal(size=(1, H, 2, hd))), Tensor(rng.normal(size=(1, H, 2, hd)))) for _ in range(2)
    ]
    positions = np.arange(6)[None]
    plain = model(ids, position_ids=positions).logits.data
    infix = model(ids, position_ids=positions, kv_prefix=prefix, kv_prefix_start=np.array([3])).logits.data
    np.testing.assert_allclose(infix[:, :3], plain[:, :3], rtol=1e-12, atol=1e-12)
    assert np.abs(infix[:, 3:] - plain[:, 3:]).max() > 1e-6  # the infix changes what comes after it


def test_classification_head_reads_the_last_real_token():
    model = make_model()
    model.add_classification_head(3)
    ids = ids_for(model, 1, 5)
    padded = np.concatenate([ids, [[0, 0]]], 1)
    a = model(ids).cls_logits.data
    b = model(padded, attention_mask=np.array([[1] * 5 + [0, 0]])).cls_logits.data
    assert a.shape == (1, 3)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_bad_inputs_are_clear_errors():
    model = make_model()
    with pytest.raises(IndexError, match="token id 16 is out of range for vocab_size 16"):
        model(np.array([[1, 16]]))
    with pytest.raises(ValueError, match="too long"):
        model(np.zeros((1, 13), dtype=np.int64))
    prefix = [(Tensor(np.zeros((1, 2, 3, 4))), Tensor(np.zeros((1, 2, 3, 4))))] * 2
    with pytest.raises(ValueError, match="3 prefix"):
        model(np.zeros((1, 10), dtype=np.int64), kv_prefix=prefix)  # 10 + 3 > 12
    with pytest.raises(TypeError, match="integers"):
        model(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=10, n_heads=3)


def test_dropout_is_seeded_and_off_in_eval():
    model = make_model(dtype=np.float32, dropout=0.3)
    ids = ids_for(model, 2, 6)
    tinypft.manual_seed(5)
    a = model(ids).logits.data
    tinypft.manual_seed(5)
    b = model(ids).logits.data
    np.testing.assert_array_equal(a, b)
    model.eval()
    np.testing.assert_array_equal(model(ids).logits.data, model(ids).logits.data)


# ----------------------------------------------------------------------------- PyTorch cross-check


def test_logits_and_every_gradient_equal_pytorch():
    torch = pytest.importorskip("torch")
    from tinypft.model.torch_twin import build_torch_gpt

    model = make_model(vocab_size=20, context_length=16, d_model=12, n_layers=2, n_heads=3)
    ids = ids_for(model, 3, 9, seed=4)
    mask = np.ones((3, 9), dtype=np.int64)
    mask[1, 7:] = 0
    mask[2, :2] = 0  # left padding
    labels = np.where(mask == 1, ids, -100)
    twin = build_torch_gpt(model, torch.float64)
    t_logits = twin(torch.from_numpy(ids), torch.from_numpy(mask))
    logits = model(ids, attention_mask=mask).logits
    real = mask.astype(bool)
    np.testing.assert_allclose(logits.data[real], t_logits.detach().numpy()[real], rtol=1e-10, atol=1e-12)

    loss = model.lm_loss(logits, labels)
    loss.backward()
    t_targets = torch.full((3, 9), -100)
    t_targets[:, :-1] = torch.from_numpy(labels[:, 1:])
    t_loss = torch.nn.functional.cross_entropy(
        t_logits.reshape(-1, 20), t_targets.reshape(-1), ignore_index=-100
    )
    t_loss.backward()
    assert abs(loss.item() - t_loss.item()) < 1e-12
    t_params = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, t_params[name].grad.numpy(), rtol=1e-9, atol=1e-13, err_msg=name)


def test_kv_prefix_equals_pytorch():
    torch = pytest.importorskip("torch")
    from tinypft.model.torch_twin import build_torch_gpt

    model = make_model()
    ids = ids_for(model, 2, 5)
    rng = np.random.default_rng(1)
    raw = [(rng.normal(size=(1, 2, 3, 4)), rng.normal(size=(1, 2, 3, 4))) for _ in range(2)]
    ours = model(ids, kv_prefix=[(Tensor(k), Tensor(v)) for k, v in raw]).logits.data
    theirs = build_torch_gpt(model, torch.float64)(
        torch.from_numpy(ids), kv_prefix=[(torch.from_numpy(k), torch.from_numpy(v)) for k, v in raw]
    )
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Hugging Face layout


def _hf_forward(hf: dict, cfg: dict, ids: np.ndarray) -> np.ndarray:
    """GPT-2 written directly on the Hugging Face tensors (Conv1D: y = x W + b; fused c_attn)."""
    torch = pytest.importorskip("torch")
    t = {k: torch.from_numpy(v).double() for k, v in hf.items()}
    d, H = cfg["n_embd"], cfg["n_head"]
    B, T = ids.shape
    x = t["wte.weight"][torch.from_numpy(ids)] + t["wpe.weight"][:T]
    ln = torch.nn.functional.layer_norm
    for i in range(cfg["n_layer"]):
        p = f"h.{i}."
        h = ln(x, (d,), t[p + "ln_1.weight"], t[p + "ln_1.bias"], cfg["layer_norm_epsilon"])
        q, k, v = (h @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]).split(d, dim=-1)
        q, k, v = (z.view(B, T, H, d // H).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + y.transpose(1, 2).reshape(B, T, d) @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
        h = ln(x, (d,), t[p + "ln_2.weight"], t[p + "ln_2.bias"], cfg["layer_norm_epsilon"])
        h = torch.nn.functional.gelu(
            h @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"], approximate="tanh"
        )
        x = x + h @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
    x = ln(x, (d,), t["ln_f.weight"], t["ln_f.bias"], cfg["layer_norm_epsilon"])
    return (x @ t["wte.weight"].T).numpy()


def test_from_hf_gpt2_loads_a_checkpoint_in_that_layout(tmp_path):
    from safetensors.numpy import save_file

    cfg = {
        "vocab_size": 30,
        "n_positions": 16,
        "n_embd": 12,
        "n_layer": 2,
        "n_head": 3,
        "layer_norm_epsilon": 1e-5,
        "model_type": "gpt2",
    }
    rng = np.random.default_rng(0)
    d, f = 12, 48
    hf = {
        "wte.weight": rng.normal(size=(30, d)),
        "wpe.weight": rng.normal(size=(16, d)),
        "ln_f.weight": rng.normal(size=d),
        "ln_f.bias": rng.normal(size=d),
    }
    for i in range(2):
        p = f"h.{i}."
        hf |= {
            p + "ln_1.weight": rng.normal(size=d),
            p + "ln_1.bias": rng.normal(size=d),
            p + "ln_2.weight": rng.normal(size=d),
            p + "ln_2.bias": rng.normal(size=d),
            p + "attn.c_attn.weight": rng.normal(size=(d, 3 * d)) * 0.3,
            p + "attn.c_attn.bias": rng.normal(size=3 * d),
            p + "attn.c_proj.weight": rng.normal(size=(d, d)) * 0.3,
            p + "attn.c_proj.bias": rng.normal(size=d),
            p + "mlp.c_fc.weight": rng.normal(size=(d, f)) * 0.3,
            p + "mlp.c_fc.bias": rng.normal(size=f),
            p + "mlp.c_proj.weight": rng.normal(size=(f, d)) * 0.3,
            p + "mlp.c_proj.bias": rng.normal(size=d),
        }
    hf = {k: v.astype(np.float32) for k, v in hf.items()}
    save_file(hf, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg))

    model = GPT.from_hf_gpt2(tmp_path)
    assert model.config.d_model == 12 and model.config.context_length == 16
    np.testing.assert_array_equal(
        model.blocks[1].attn.k_proj.bias.data, hf["h.1.attn.c_attn.bias"][d : 2 * d]
    )
    ids = rng.integers(0, 30, (2, 7))
    expected = _hf_forward(hf, cfg, ids)
    np.testing.assert_allclose(model(ids).logits.data, expected, rtol=1e-10, atol=1e-10)

    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_embd": 15}))
    with pytest.raises(ValueError, match="c_attn"):
        GPT.from_hf_gpt2(tmp_path)
