"""Tests of tinypft.nn: registration, traversal, state dicts, printing, copying, and each layer's math."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import tinypft
from tinypft import Tensor
from tinypft.engine.rng import manual_seed
from tinypft.nn import (
    GELU,
    Dropout,
    Embedding,
    LayerNorm,
    Linear,
    Module,
    ModuleList,
    Parameter,
    Sequential,
    Tanh,
)


class Block(Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln = LayerNorm(d)
        self.proj = Linear(d, d)
        self.drop = Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.proj(self.ln(x)))


class TinyLM(Module):
    """Embedding -> blocks -> head tied to the embedding."""

    def __init__(self, vocab: int = 7, d: int = 4, n_blocks: int = 2):
        super().__init__()
        self.wte = Embedding(vocab, d)
        self.blocks = ModuleList([Block(d) for _ in range(n_blocks)])
        self.ln_f = LayerNorm(d)
        self.head = Linear(d, vocab, bias=False)
        self.head.weight = self.wte.weight  # tied: the same Parameter registered twice
        self.scale = Tensor(np.ones(d))  # a plain Tensor: not a parameter
        self.vocab = vocab

    def forward(self, ids: np.ndarray) -> Tensor:
        x = self.wte(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


BLOCK_NAMES = ["ln.weight", "ln.bias", "proj.weight", "proj.bias"]
BLOCKS_NAMES = [f"blocks.{i}.{name}" for i in range(2) for name in BLOCK_NAMES]
TINY_NAMES = ["wte.weight", *BLOCKS_NAMES, "ln_f.weight", "ln_f.bias"]


# ----------------------------------------------------------------------------- registration


def test_named_parameters_are_dotted_in_registration_order():
    model = TinyLM()
    assert [name for name, _ in model.named_parameters()] == TINY_NAMES
    assert model.get_parameter("blocks.1.proj.bias") is model.blocks[1].proj.bias
    assert [name for name, _ in model.named_children()] == ["wte", "blocks", "ln_f", "head"]
    assert list(model.children())[1] is model.blocks
    names = [name for name, _ in model.named_modules()]
    assert names[:4] == ["", "wte", "blocks", "blocks.0"]
    assert len(list(model.modules())) == len(names) == 1 + 1 + 1 + 2 * 4 + 1 + 1


def test_plain_tensors_and_values_are_not_registered():
    model = TinyLM()
    assert all(p is not model.scale for p in model.parameters())
    assert model.vocab == 7 and "scale" not in dict(model.named_parameters())


def test_assigning_a_tensor_to_a_parameter_name_is_an_error():
    lin = Linear(2, 3)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = Tensor(np.zeros((3, 2)))
    lin.bias = None  # None unregisters
    assert [n for n, _ in lin.named_parameters()] == ["weight"]
    lin.bias = Parameter(np.zeros(3))
    assert [n for n, _ in lin.named_parameters()] == ["weight", "bias"]


def test_replacing_a_submodule_keeps_its_position():
    model = TinyLM()
    model.blocks[0].proj = Linear(4, 4, bias=False)
    model.wte = Embedding(7, 4)
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "wte.weight" and "blocks.0.proj.bias" not in names
    assert names.index("blocks.0.proj.weight") < names.index("blocks.1.ln.weight")


def test_shared_parameter_appears_once_and_is_counted_once():
    model = TinyLM(vocab=7, d=4)
    params = list(model.parameters())
    assert sum(p is model.wte.weight for p in params) == 1
    per_block = 4 + 4 + 16 + 4
    assert model.num_parameters() == 7 * 4 + 2 * per_block + 8
    assert "head.weight" not in model.state_dict()
    assert model.get_parameter("head.weight") is model.wte.weight


def test_get_submodule_and_get_parameter_errors_name_the_missing_part():
    model = TinyLM()
    assert model.get_submodule("blocks.0.proj") is model.blocks[0].proj
    assert model.get_submodule("") is model
    with pytest.raises(AttributeError, match="'attn'.*blocks.0.*ln, proj, drop"):
        model.get_submodule("blocks.0.attn.q_proj")
    with pytest.raises(AttributeError, match="'gain'.*weight, bias"):
        model.get_parameter("ln_f.gain")


def test_module_without_super_init_gets_a_clear_error():
    class Broken(Module):
        def __init__(self):
            self.lin = Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Broken()


# ----------------------------------------------------------------------------- modes and gradients


def test_train_and_eval_propagate_and_switch_dropout():
    model = TinyLM()
    assert model.eval() is model
    assert all(not m.training for m in model.modules())
    x = Tensor(np.ones((2, 3, 4)))
    drop = model.blocks[0].drop
    assert np.array_equal(drop(x).data, x.data)  # identity in eval
    model.train()
    assert all(m.training for m in model.modules())
    out = drop(x).data
    assert set(np.unique(out)) <= {0.0, 2.0} and (out == 0).any()


def test_requires_grad_and_zero_grad():
    model = TinyLM()
    model.requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == 0
    model.blocks[1].proj.requires_grad_(True)
    assert model.num_parameters(trainable_only=True) == 16 + 4

    model.requires_grad_(True)
    model(np.array([[1, 2, 3]])).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_tied_weight_receives_gradient_from_both_uses():
    with tinypft.default_dtype(np.float64):
        model = TinyLM().eval()  # no dropout: the two passes must be the same function
    model(np.array([[1, 2]])).sum().backward()
    lookup_only = model.wte.weight.grad.copy()
    model.zero_grad()
    model.head.weight = Parameter(model.wte.weight.data.copy(), dtype=np.float64)  # untie
    model(np.array([[1, 2]])).sum().backward()
    assert np.allclose(model.wte.weight.grad + model.head.weight.grad, lookup_only)


# ----------------------------------------------------------------------------- state dicts


def test_state_dict_round_trip_copies_in_place():
    manual_seed(0)
    source = TinyLM()
    target = TinyLM()
    weight_array = target.wte.weight.data
    state = source.state_dict()
    assert list(state) == TINY_NAMES
    state["ln_f.bias"][:] = 5.0  # a copy: the model is unaffected
    assert not np.any(source.ln_f.bias.data == 5.0)

    target.load_state_dict(source.state_dict())
    assert target.wte.weight.data is weight_array  # copied into the existing array
    for (name, p), q in zip(source.named_parameters(), target.parameters()):
        assert np.array_equal(p.data, q.data), name
    assert target.head.weight is target.wte.weight  # still tied


def test_load_state_dict_casts_to_the_parameter_dtype():
    model = TinyLM()
    half = {k: v.astype(np.float16) for k, v in TinyLM().state_dict().items()}
    model.load_state_dict(half)
    assert model.wte.weight.dtype == np.float32
    assert np.array_equal(model.wte.weight.data, half["wte.weight"].astype(np.float32))


def test_strict_load_lists_every_problem_and_changes_nothing():
    model = TinyLM()
    before = model.state_dict()
    state = model.state_dict()
    del state["ln_f.bias"], state["blocks.0.ln.weight"]
    state["lm_head.weight"] = np.zeros((7, 4))
    state["blocks.1.proj.weight"] = np.zeros((4, 5))
    state["wte.weight"] = state["wte.weight"] + 1.0
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    for expected in [
        "missing keys (2)", "ln_f.bias", "blocks.0.ln.weight", "unexpected keys (1)", "lm_head.weight",
        "blocks.1.proj.weight: checkpoint (4, 5) vs model (4, 4)",
    ]:
        assert expected in message
    for name, array in model.state_dict().items():
        assert np.array_equal(array, before[name]), name


def test_non_strict_load_reports_keys_but_rejects_shape_mismatches():
    model = TinyLM()
    partial = {"ln_f.bias": np.full(4, 3.0), "extra": np.zeros(1)}
    missing, unexpected = model.load_state_dict(partial, strict=False)
    assert unexpected == ["extra"] and "ln_f.bias" not in missing and len(missing) == len(TINY_NAMES) - 1
    assert np.all(model.ln_f.bias.data == 3.0)
    with pytest.raises(ValueError, match=r"ln_f.bias: checkpoint \(5,\) vs model \(4,\)"):
        model.load_state_dict({"ln_f.bias": np.zeros(5)}, strict=False)


def test_load_rejects_integer_arrays_for_float_parameters():
    with pytest.raises(ValueError, match="ln_f.bias: checkpoint int64 vs model float32"):
        TinyLM().load_state_dict({"ln_f.bias": np.zeros(4, dtype=np.int64)}, strict=False)


# ----------------------------------------------------------------------------- printing and copying


def test_repr_is_a_nested_tree():
    class Wrapper(Module):
        def __init__(self):
            super().__init__()
            self.body = Sequential(Linear(3, 2, bias=False), GELU())
            self.norm = LayerNorm(2)

        def extra_repr(self) -> str:
            return "tag=1"

    assert repr(Wrapper()) == (
        "Wrapper(\n"
        "  tag=1\n"
        "  (body): Sequential(\n"
        "    (0): Linear(in_features=3, out_features=2, bias=False)\n"
        "    (1): GELU()\n"
        "  )\n"
        "  (norm): LayerNorm(2, eps=1e-05)\n"
        ")"
    )
    assert repr(Embedding(512, 128)) == "Embedding(512, 128)"
    assert repr(Dropout(0.1)) == "Dropout(p=0.1)"


def test_deepcopy_is_independent_and_keeps_ties():
    model = TinyLM()
    clone = copy.deepcopy(model)
    assert clone.head.weight is clone.wte.weight and clone.wte.weight is not model.wte.weight
    assert [n for n, _ in clone.named_parameters()] == TINY_NAMES
    clone.ln_f.weight.data[:] = 7.0
    assert not np.any(model.ln_f.weight.data == 7.0)
    ids = np.array([[0, 1, 2]])
    model.eval(), clone.eval()
    assert np.allclose(copy.deepcopy(model)(ids).data, model(ids).data)


def test_num_parameters_trainable_only():
    model = Sequential(Linear(3, 4), LayerNorm(4))
    assert model.num_parameters() == 12 + 4 + 4 + 4
    model[0].weight.requires_grad = False
    assert model.num_parameters(trainable_only=True) == 4 + 4 + 4
    assert model.num_parameters() == 24


# ----------------------------------------------------------------------------- layers


def test_seeded_init_is_reproducible():
    manual_seed(123)
    a = TinyLM()
    manual_seed(123)
    b = TinyLM()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert np.array_equal(p.data, q.data), name
    manual_seed(124)
    assert not np.array_equal(TinyLM().wte.weight.data, a.wte.weight.data)


def test_parameter_defaults():
    p = Parameter(np.zeros(3, dtype=np.float16))
    assert p.requires_grad and p.dtype == np.float32
    assert not Parameter(np.zeros(2), requires_grad=False).requires_grad
    with tinypft.default_dtype(np.float64):
        assert Parameter([1.0]).dtype == np.float64
    with pytest.raises(TypeError):
        Parameter(np.arange(3))


def test_linear_matches_numpy_and_init_bounds():
    lin = Linear(5, 3)
    bound = 1 / np.sqrt(5)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound
    assert lin.weight.data.std() > bound / 4  # spread over the interval, not all zeros
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    expected = x @ lin.weight.data.T + lin.bias.data
    assert np.allclose(lin(Tensor(x)).data, expected, atol=1e-6)
    assert Linear(5, 3, bias=False).bias is None


def test_layer_norm_matches_numpy():
    ln = LayerNorm(6, eps=1e-3)
    assert np.all(ln.weight.data == 1) and np.all(ln.bias.data == 0)
    rng = np.random.default_rng(1)
    ln.weight.data[:] = rng.standard_normal(6)
    ln.bias.data[:] = rng.standard_normal(6)
    x = rng.standard_normal((3, 6)) * 4 + 2
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-3) * ln.weight.data + ln.bias.data
    assert np.allclose(ln(Tensor(x)).data, expected, atol=1e-5)


def test_embedding_matches_numpy_and_checks_ids():
    emb = Embedding(10, 3)
    ids = np.array([[0, 9, 9], [4, 1, 0]])
    assert np.array_equal(emb(ids).data, emb.weight.data[ids])
    assert np.array_equal(emb(Tensor(ids)).data, emb.weight.data[ids])
    assert abs(emb.weight.data.std() - 1) < 0.5
    with pytest.raises(IndexError, match="id 10 .* 10 rows"):
        emb(np.array([1, 10]))


def test_module_list_and_sequential():
    layers = ModuleList([Linear(2, 2), Tanh()])
    layers.append(GELU())
    assert len(layers) == 3 and isinstance(layers[-1], GELU)
    assert [type(m).__name__ for m in layers] == ["Linear", "Tanh", "GELU"]
    assert [n for n, _ in layers.named_children()] == ["0", "1", "2"]
    assert isinstance(layers[1:], ModuleList) and len(layers[1:]) == 2
    layers[1] = Linear(2, 2)
    assert [n for n, _ in layers.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    with pytest.raises(IndexError):
        layers[3]

    seq = Sequential(Linear(2, 3), Tanh(), Linear(3, 1))
    x = Tensor(np.array([[0.5, -1.0]]))
    hidden = np.tanh(x.data @ seq[0].weight.data.T + seq[0].bias.data)
    expected = hidden @ seq[2].weight.data.T + seq[2].bias.data
    assert np.allclose(seq(x).data, expected, atol=1e-6)
    assert isinstance(seq[:2], Sequential)


def test_nn_reexports_functional():
    assert tinypft.nn.functional is tinypft.engine.functional


# ----------------------------------------------------------------------------- gradient checks


def _check_module(module: Module, x: Tensor) -> None:
    params = list(module.named_parameters())
    names = ["input"] + [name for name, _ in params]
    tinypft.gradcheck(lambda inp, *_: module(inp), [x] + [p for _, p in params], names=names)


def test_gradcheck_linear():
    with tinypft.default_dtype(np.float64):
        lin = Linear(4, 3)
        x = Tensor(np.random.default_rng(2).standard_normal((2, 5, 4)), requires_grad=True)
    _check_module(lin, x)


def test_gradcheck_layer_norm():
    rng = np.random.default_rng(3)
    with tinypft.default_dtype(np.float64):
        ln = LayerNorm(5)
        x = Tensor(rng.standard_normal((3, 5)) * 2, requires_grad=True)
    ln.weight.data[:] = rng.standard_normal(5)
    ln.bias.data[:] = rng.standard_normal(5)
    _check_module(ln, x)


def test_gradcheck_embedding_weight_with_repeated_ids():
    with tinypft.default_dtype(np.float64):
        emb = Embedding(6, 3)
    ids = np.array([[1, 5, 1], [0, 1, 5]])
    tinypft.gradcheck(lambda w: emb(ids), [emb.weight], names=["weight"])


def test_gradcheck_sequential_with_gelu_and_tanh():
    with tinypft.default_dtype(np.float64):
        net = Sequential(Linear(3, 4), GELU(), Linear(4, 2), Tanh())
        x = Tensor(np.random.default_rng(4).standard_normal((2, 3)), requires_grad=True)
    report = tinypft.gradcheck(lambda inp, *_: net(inp), [x, *net.parameters()])
    assert report.checked == 6 + 12 + 4 + 8 + 2
