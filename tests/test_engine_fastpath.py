"""The engine's fast paths keep their promises: an op that records nothing saves nothing and still
checks its inputs; the fused embedding backward equals the composed one; malloc tuning is harmless."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import pytest

import tinypft
from tinypft import Tensor, gradcheck, no_grad
from tinypft.engine import Context, Function, allocator, ops, use_fused_kernels
from tinypft.engine import functional as F


class Spy(Function):
    """out = 2 x; remembers the context forward received."""

    seen: list[Context] = []

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        Spy.seen.append(ctx)
        ctx.save_for_backward(x)
        return 2 * x

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        return (2 * g,)


@pytest.mark.parametrize("grad_mode", ["no_grad", "constant_input"])
def test_unrecorded_op_saves_nothing_and_builds_no_node(grad_mode: str) -> None:
    Spy.seen.clear()
    x = Tensor(np.ones(3), requires_grad=grad_mode == "no_grad")
    if grad_mode == "no_grad":
        with no_grad():
            out = Spy.apply(x)
    else:
        out = Spy.apply(x)
    (ctx,) = Spy.seen
    assert ctx.needs_input_grad == (False,) and ctx.saved == ()
    assert not out.requires_grad and out.is_leaf and out.grad is None
    np.testing.assert_array_equal(out.data, [2.0, 2.0, 2.0])


def test_recorded_op_still_saves_and_backpropagates() -> None:
    Spy.seen.clear()
    x = Tensor(np.ones(3), requires_grad=True)
    out = Spy.apply(x)
    (ctx,) = Spy.seen
    assert ctx.needs_input_grad == (True,) and len(ctx.saved) == 1
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


def test_unrecorded_op_still_refuses_mixed_dtypes_and_returns_arrays() -> None:
    a, b = Tensor(np.ones(2), dtype=np.float32), Tensor(np.ones(2), dtype=np.float64)
    with no_grad(), pytest.raises(TypeError, match="cannot mix dtypes float32 and float64"):
        _ = a + b
    with no_grad():
        total = Tensor(np.ones(3)).sum()  # NumPy returns a scalar from a full reduction
    assert isinstance(total.data, np.ndarray) and total.data.shape == ()


def test_permute_errors_and_gradient() -> None:
    x = Tensor(np.arange(24.0).reshape(2, 3, 4), requires_grad=True, dtype=np.float64)
    for axes in [(0, 0, 1), (0, 1, 5), (0, 1)]:
        with pytest.raises(ValueError, match="is not a permutation"):
            x.permute(*axes)
    weights = Tensor(np.arange(24.0).reshape(4, 2, 3), dtype=np.float64)
    gradcheck(lambda t: t.permute(2, -3, 1) * weights, [x])


@pytest.mark.parametrize("ids_shape", [(2, 5), (7,), (0,)])
def test_embedding_fused_and_composed_backward_agree(ids_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, ids_shape)  # repeated ids: their gradients must add up
    grads = {}
    for fused in (True, False):
        weight = Tensor(rng.standard_normal((6, 3)), requires_grad=True, dtype=np.float64)
        weight.data[...] = np.arange(18.0).reshape(6, 3)
        direction = np.random.default_rng(1).standard_normal((*ids_shape, 3))
        with use_fused_kernels(fused):
            out = ops.embedding(weight, ids)
        out.backward(direction)
        grads[fused] = weight.grad
        with use_fused_kernels(fused):
            gradcheck(lambda w: ops.embedding(w, ids), [weight])
    np.testing.assert_allclose(grads[True], grads[False], rtol=1e-12, atol=1e-14)


def test_embedding_path_is_chosen_at_forward_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    original = ops.embedding_backward
    monkeypatch.setattr(ops, "embedding_backward", lambda *a, **k: calls.append(a) or original(*a, **k))
    weight = Tensor(np.ones((4, 2)), requires_grad=True)
    with use_fused_kernels(False):
        out = ops.embedding(weight, np.array([1, 1, 3]))
    out.sum().backward()  # outside the block: still the composed reference (np.add.at)
    assert calls == []
    out = ops.embedding(weight, np.array([1, 1, 3]))
    out.sum().backward()
    assert len(calls) == 1
    np.testing.assert_array_equal(weight.grad[:, 0], [0.0, 4.0, 0.0, 2.0])


def test_tune_malloc_is_safe_to_call() -> None:
    result = allocator.tune_malloc()
    assert result is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert allocator.malloc_tuned() is result
    assert allocator.tune_malloc() is result  # twice is fine
    with tinypft.default_dtype(np.float64):  # and the engine still computes the same things
        x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
        gradcheck(lambda t: F.layer_norm(t, Tensor(np.ones(3)), Tensor(np.zeros(3))), [x])


def test_tune_malloc_does_nothing_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    assert allocator.tune_malloc() is False
    assert allocator.malloc_tuned() is False
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert allocator.tune_malloc() is False
