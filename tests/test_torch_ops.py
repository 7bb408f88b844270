"""Every op against PyTorch: the same float64 inputs give the same outputs and input gradients.

Agreement is required to a relative 1e-10 (``assert_allclose(rtol=1e-10, atol=1e-12)``); the worst
relative error seen, max|ours - torch| / max|torch| per compared array, is printed at the end.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tinypft.engine import Tensor, functional, get_rng, manual_seed, ops, use_fused_kernels

torch = pytest.importorskip("torch")
TF = torch.nn.functional

pytestmark = pytest.mark.torch

F64 = np.float64
RTOL, ATOL = 1e-10, 1e-12
WORST: dict[str, float] = {}  # case -> worst relative error over its output and gradients


@pytest.fixture(scope="module", autouse=True)
def _report_worst_relative_error(measurements: list[str]) -> Iterator[None]:
    """After the module, put the worst relative error against PyTorch in the terminal summary."""
    yield
    if WORST:
        name = max(WORST, key=WORST.__getitem__)
        measurements.append(
            f"worst relative error vs PyTorch over {len(WORST)} cases: {WORST[name]:.2e} ({name})"
        )


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    scale = float(np.max(np.abs(theirs), initial=0.0))
    diff = float(np.max(np.abs(ours - theirs), initial=0.0))
    return diff / scale if scale > 0 else diff


def assert_same(case: str, what: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape, f"{case} {what}: shape {ours.shape} vs torch {theirs.shape}"
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=f"{case} {what}")
    WORST[case] = max(WORST.get(case, 0.0), relative_error(ours, theirs))


def compare(case: str, ours: Callable[..., Tensor], theirs: Callable[..., Any], *arrays: np.ndarray) -> None:
    """Run both frameworks on copies of ``arrays`` and compare the output and every input gradient."""
    mine = [Tensor(a.copy(), requires_grad=True, dtype=F64) for a in arrays]
    ref = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    out, ref_out = ours(*mine), theirs(*ref)
    assert_same(case, "forward", out.numpy(), ref_out.detach().numpy())
    upstream = np.random.default_rng(99).standard_normal(out.shape)  # the same dL/d(out) for both
    out.backward(upstream)
    ref_out.backward(torch.from_numpy(upstream))
    for i, (t, r) in enumerate(zip(mine, ref)):
        assert_same(case, f"grad of input {i}", t.grad, r.grad.numpy())


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def positive(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


def away_from_zero(*shape: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)


# ----------------------------------------------------------------------------- elementwise

BROADCAST = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 4), (3, 1))]


@pytest.mark.parametrize(("sa", "sb"), BROADCAST, ids=str)
@pytest.mark.parametrize(
    ("name", "ours", "theirs"),
    [
        ("add", ops.add, torch.add),
        ("sub", ops.sub, torch.sub),
        ("mul", ops.mul, torch.mul),
        ("div", ops.div, torch.div),
    ],
    ids=["add", "sub", "mul", "div"],
)
def test_binary(name: str, ours: Callable, theirs: Callable, sa: tuple, sb: tuple) -> None:
    b = positive(*sb, seed=1) if name == "div" else normal(*sb, seed=1)
    compare(f"{name} {sa}{sb}", ours, theirs, normal(*sa), b)


UNARY = {
    "neg": (ops.neg, torch.neg, normal),
    "exp": (ops.exp, torch.exp, normal),
    "log": (ops.log, torch.log, positive),
    "sqrt": (ops.sqrt, torch.sqrt, positive),
    "tanh": (ops.tanh, torch.tanh, normal),
    "relu": (ops.relu, torch.relu, away_from_zero),
    "gelu": (ops.gelu, lambda t: TF.gelu(t, approximate="tanh"), lambda *s: 3 * normal(*s)),
}


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), ()], ids=str)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name: str, shape: tuple) -> None:
    ours, theirs, make = UNARY[name]
    compare(f"{name} {shape}", ours, theirs, make(*shape))


@pytest.mark.parametrize("p", [2.0, 3.0, 0.5, -1.5, 1.7])
def test_pow(p: float) -> None:
    compare(f"pow {p}", lambda x: x**p, lambda x: x**p, positive(3, 4))


def test_cast() -> None:
    compare("cast", lambda x: x.astype(np.float32).astype(F64), lambda x: x.float().double(), normal(3, 4))


# ----------------------------------------------------------------------------- matmul and reductions

MATMUL = [
    ((3, 4), (4, 5)),
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (3, 4, 2)),
    ((4,), (4, 5)),
    ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)),
    ((4,), (4,)),
]


@pytest.mark.parametrize(("sa", "sb"), MATMUL, ids=str)
def test_matmul(sa: tuple, sb: tuple) -> None:
    compare(f"matmul {sa}{sb}", ops.matmul, torch.matmul, normal(*sa), normal(*sb, seed=1))


AXES = [(None, False), (0, False), (1, True), ((0, 2), False), ((0, 2), True), (-1, False)]


def _dims(axis: Any, ndim: int) -> tuple[int, ...]:
    return tuple(range(ndim)) if axis is None else (axis,) if isinstance(axis, int) else axis


@pytest.mark.parametrize(("axis", "keepdims"), AXES, ids=str)
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_sum_mean(name: str, axis: Any, keepdims: bool) -> None:
    ours = ops.sum if name == "sum" else ops.mean
    theirs = torch.sum if name == "sum" else torch.mean
    compare(
        f"{name} {axis} {keepdims}",
        lambda x: ours(x, axis, keepdims),
        lambda x: theirs(x, dim=_dims(axis, 3), keepdim=keepdims),
        normal(2, 3, 4),
    )


@pytest.mark.parametrize(("axis", "keepdims"), AXES, ids=str)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_max_like_amax(axis: Any, keepdims: bool, ties: bool) -> None:
    x = np.round(normal(2, 3, 4)) if ties else normal(2, 3, 4)  # rounding makes many equal maxima
    compare(
        f"max {axis} {keepdims} {'ties' if ties else ''}",
        lambda t: ops.max(t, axis, keepdims),
        lambda t: torch.amax(t, dim=_dims(axis, 3), keepdim=keepdims),
        x,
    )


# ----------------------------------------------------------------------------- shape ops


def test_reshape_permute_transpose_broadcast() -> None:
    x = normal(2, 3, 4)
    compare("reshape", lambda t: t.reshape(6, 4), lambda t: t.reshape(6, 4), x)
    compare("permute", lambda t: t.permute(2, 0, 1), lambda t: t.permute(2, 0, 1), x)
    compare("transpose", lambda t: t.transpose(0, -1), lambda t: t.transpose(0, -1), x)
    compare(
        "broadcast_to", lambda t: t.broadcast_to((2, 3, 4)), lambda t: t.broadcast_to((2, 3, 4)), normal(3, 1)
    )


GETITEM = {
    "slices": (lambda x: x[1:, ::2], (3, 4)),
    "ellipsis": (lambda x: x[..., 1], (2, 3, 4)),
    "int array, repeats": (lambda x: x[np.array([0, 2, 0, 0])], (3, 4)),
    "2-d int array": (lambda x: x[:, np.array([[1, 1], [3, 1]])], (2, 4)),
    "paired int arrays": (lambda x: x[np.array([0, 1, 1]), np.array([2, 0, 2])], (2, 3)),
    "boolean mask": (lambda x: x[np.arange(12).reshape(3, 4) % 3 == 0], (3, 4)),
}


def _torch_index(index: Any) -> Any:
    """The same index for torch: integer arrays become LongTensors, boolean arrays BoolTensors."""
    if isinstance(index, tuple):
        return tuple(_torch_index(i) for i in index)
    return torch.from_numpy(index) if isinstance(index, np.ndarray) else index


@pytest.mark.parametrize("kind", list(GETITEM))
def test_getitem(kind: str) -> None:
    take, shape = GETITEM[kind]

    class Recorder:  # captures the index the lambda applies, to replay it on the torch tensor
        def __getitem__(self, index: Any) -> Any:
            return index

    index = take(Recorder())
    compare(f"getitem {kind}", lambda t: t[index], lambda t: t[_torch_index(index)], normal(*shape))


def test_concat_and_stack() -> None:
    compare(
        "concat",
        lambda a, b, c: ops.concat([a, b, c], axis=-1),
        lambda a, b, c: torch.cat([a, b, c], dim=-1),
        normal(2, 3),
        normal(2, 1, seed=1),
        normal(2, 2, seed=2),
    )
    compare(
        "stack",
        lambda a, b: ops.stack([a, b], axis=1),
        lambda a, b: torch.stack([a, b], dim=1),
        normal(3, 2),
        normal(3, 2, seed=1),
    )


@pytest.mark.parametrize(
    ("sc", "sa", "sb"), [((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), ()), ((4,), (2, 3, 1), (3, 4))], ids=str
)
def test_where(sc: tuple, sa: tuple, sb: tuple) -> None:
    cond = np.random.default_rng(5).random(sc) > 0.5
    compare(
        f"where {sc}{sa}{sb}",
        lambda a, b: ops.where(cond, a, b),
        lambda a, b: torch.where(torch.from_numpy(cond), a, b),
        normal(*sa),
        normal(*sb, seed=1),
    )


def test_masked_fill() -> None:
    mask = ~functional.causal_mask(3, 3)
    compare(
        "masked_fill",
        lambda x: x.masked_fill(mask, -7.5),
        lambda x: x.masked_fill(torch.from_numpy(mask), -7.5),
        normal(2, 3, 3),
    )


# ----------------------------------------------------------------------------- lookups and noise


def test_embedding_with_repeated_ids() -> None:
    ids = np.array([[0, 2, 0, 4], [4, 4, 1, 0]])
    compare(
        "embedding",
        lambda w: ops.embedding(w, ids),
        lambda w: TF.embedding(torch.from_numpy(ids), w),
        normal(5, 3),
    )


def test_dropout_matches_the_same_mask() -> None:
    p, shape = 0.3, (4, 5)
    manual_seed(11)
    keep = get_rng().random(shape, dtype=np.float32) >= p  # the draw ops.Dropout makes
    keep_t = torch.from_numpy(keep)

    def ours(x: Tensor) -> Tensor:
        manual_seed(11)
        return ops.dropout(x, p)

    compare("dropout", ours, lambda x: x * keep_t / (1 - p), normal(*shape))


# ----------------------------------------------------------------------------- composites

HAVE_FUSED = importlib.util.find_spec("tinypft.engine.fused") is not None
BOTH_PATHS = pytest.mark.parametrize(
    "fused",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_FUSED, reason="no fused kernels"))],
    ids=["composed", "fused"],
)


def _label(name: str, fused: bool) -> str:
    return f"{name} [fused]" if fused else name


@BOTH_PATHS
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(fused: bool, axis: int) -> None:
    x = 5 * normal(2, 3, 4)
    with use_fused_kernels(fused):
        compare(
            _label(f"softmax {axis}", fused),
            lambda t: functional.softmax(t, axis),
            lambda t: torch.softmax(t, axis),
            x,
        )
        compare(
            _label(f"log_softmax {axis}", fused),
            lambda t: functional.log_softmax(t, axis),
            lambda t: torch.log_softmax(t, axis),
            x,
        )


@BOTH_PATHS
def test_gelu(fused: bool) -> None:
    with use_fused_kernels(fused):
        compare(
            _label("functional.gelu", fused),
            functional.gelu,
            lambda t: TF.gelu(t, approximate="tanh"),
            3 * normal(4, 5),
        )


@BOTH_PATHS
def test_layer_norm(fused: bool) -> None:
    with use_fused_kernels(fused):
        compare(
            _label("layer_norm", fused),
            functional.layer_norm,
            lambda x, w, b: TF.layer_norm(x, (6,), w, b, eps=1e-5),
            normal(2, 3, 6),
            1 + normal(6, seed=1),
            normal(6, seed=2),
        )


@BOTH_PATHS
def test_linear(fused: bool) -> None:
    with use_fused_kernels(fused):
        compare(
            _label("linear", fused),
            functional.linear,
            TF.linear,
            normal(2, 3, 4),
            normal(5, 4, seed=1),
            normal(5, seed=2),
        )
        compare(
            _label("linear no bias", fused), functional.linear, TF.linear, normal(3, 4), normal(2, 4, seed=1)
        )


@BOTH_PATHS
def test_cross_entropy_with_ignore_index(fused: bool) -> None:
    targets = np.array([[1, -100, 4, 0], [2, 2, -100, 3]])
    targets_t = torch.from_numpy(targets).reshape(-1)
    with use_fused_kernels(fused):
        compare(
            _label("cross_entropy", fused),
            lambda x: functional.cross_entropy(x, targets),
            lambda x: TF.cross_entropy(x.reshape(-1, 5), targets_t, ignore_index=-100),
            3 * normal(2, 4, 5),
        )


def _torch_attention(q: Any, k: Any, v: Any, mask: np.ndarray | None) -> Any:
    """softmax(q k^T / sqrt(d), masked) v written out in torch, with the same masking value."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~torch.from_numpy(mask), torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) @ v


@BOTH_PATHS
@pytest.mark.parametrize(("tq", "tk", "masked"), [(4, 4, True), (2, 5, True), (3, 3, False)], ids=str)
def test_attention(fused: bool, tq: int, tk: int, masked: bool) -> None:
    mask = functional.causal_mask(tq, tk) if masked else None
    q, k, v = normal(2, 2, tq, 3), normal(2, 2, tk, 3, seed=1), normal(2, 2, tk, 3, seed=2)
    with use_fused_kernels(fused):
        compare(
            _label(f"attention {tq}x{tk}", fused),
            lambda *t: functional.attention(*t, mask=mask),
            lambda *t: _torch_attention(*t, mask),
            q,
            k,
            v,
        )
        # and torch's own kernel (True in a boolean attn_mask means "may attend", as here)
        sdpa_mask = None if mask is None else torch.from_numpy(mask)
        compare(
            _label(f"attention {tq}x{tk} vs sdpa", fused),
            lambda *t: functional.attention(*t, mask=mask),
            lambda *t: TF.scaled_dot_product_attention(*t, attn_mask=sdpa_mask),
            q,
            k,
            v,
        )


# ----------------------------------------------------------------------------- summary


def test_worst_relative_error_is_below_1e_10() -> None:
    """Runs last in this file: every comparison above stayed within a relative 1e-10."""
    if not WORST:
        pytest.skip("no comparisons ran")
    name = max(WORST, key=WORST.__getitem__)
    print(f"worst relative error vs PyTorch: {WORST[name]:.2e} ({name}), over {len(WORST)} cases")
    assert WORST[name] < 1e-10
