"""The Tensor and its backward pass: accumulation, errors, graph release, no_grad, dtypes, frozen inputs."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from tinypft.engine import (
    Tensor,
    default_dtype,
    functional,
    get_default_dtype,
    manual_seed,
    no_grad,
    ops,
    set_default_dtype,
)


def leaf(*shape: int, seed: int = 0, dtype: type = np.float64) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True, dtype=dtype)


# ----------------------------------------------------------------------------- accumulation


def test_grad_accumulates_across_backward_calls_until_zeroed() -> None:
    x = leaf(3)
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 2.0))
    (x * 3.0).sum().backward()  # a new graph, same leaf: gradients add up
    np.testing.assert_array_equal(x.grad, np.full(3, 5.0))
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 3.0))


def test_diamond_graph_sums_the_gradients_of_both_paths() -> None:
    x = leaf(4)
    a = x * 3.0
    b = x.exp()
    (a + b).sum().backward()  # x reaches the output through a and through b
    np.testing.assert_allclose(x.grad, 3.0 + np.exp(x.data), rtol=1e-15)


def test_tensor_used_twice_in_one_op() -> None:
    x = leaf(3)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data, rtol=1e-15)


def test_backward_with_explicit_gradient() -> None:
    x = leaf(2, 3)
    g = np.arange(6.0).reshape(2, 3)
    (x * 2.0).backward(g)
    np.testing.assert_array_equal(x.grad, 2 * g)


# ----------------------------------------------------------------------------- clear errors


def test_backward_of_non_scalar_without_grad_is_a_clear_error() -> None:
    y = leaf(2, 3) * 2.0
    with pytest.raises(RuntimeError, match=r"scalar output.*\(2, 3\)"):
        y.backward()


def test_backward_with_wrong_grad_shape_is_a_clear_error() -> None:
    y = leaf(2, 3) * 2.0
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        y.backward(np.ones(3))


def test_backward_on_a_tensor_without_graph_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(3)).sum().backward()


def test_backward_twice_needs_retain_graph() -> None:
    x = leaf(3)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="released"):
        loss.backward()


def test_backward_twice_with_retain_graph_accumulates() -> None:
    x = leaf(3)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data, rtol=1e-15)


def test_backward_into_a_released_subgraph_is_a_clear_error() -> None:
    x = leaf(3)
    h = x.exp()
    h.sum().backward()  # releases h's node
    with pytest.raises(RuntimeError, match="released"):
        (h * 2.0).sum().backward()


# ----------------------------------------------------------------------------- scale and memory


def test_long_chain_backpropagates_without_recursion_error() -> None:
    x = leaf(1)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001**10_000], rtol=1e-10)


def test_graph_is_released_after_backward() -> None:
    x = leaf(5)
    hidden = x.exp()  # an intermediate tensor, kept alive only by the graph once we drop our name
    ref = weakref.ref(hidden)
    out = (hidden * 2.0).sum()
    del hidden
    gc.collect()
    assert ref() is not None, "before backward the output's graph must keep the intermediate alive"
    out.backward()
    del out
    gc.collect()
    assert ref() is None, "after backward and dropping the output nothing may keep the intermediate alive"


def test_graph_is_not_released_with_retain_graph() -> None:
    x = leaf(5)
    hidden = x.exp()
    ref = weakref.ref(hidden)
    out = (hidden * 2.0).sum()
    del hidden
    out.backward(retain_graph=True)
    gc.collect()
    assert ref() is not None


def test_backward_frees_the_intermediate_even_while_the_output_lives() -> None:
    x = leaf(5)
    hidden = x.exp()
    ref = weakref.ref(hidden)
    out = (hidden * 2.0).sum()
    del hidden
    out.backward()
    gc.collect()
    assert ref() is None  # the released node no longer references its inputs
    assert out.shape == ()


# ----------------------------------------------------------------------------- no_grad and detach


def test_no_grad_records_no_graph() -> None:
    x = leaf(3)
    with no_grad():
        y = (x * 2.0).exp().sum()
    assert not y.requires_grad
    assert y._node is None
    assert y.is_leaf
    z = x * 2.0  # recording resumes after the block
    assert z.requires_grad and not z.is_leaf


def test_no_grad_restores_state_after_an_exception() -> None:
    x = leaf(3)
    with pytest.raises(ZeroDivisionError), no_grad():
        raise ZeroDivisionError
    assert (x * 2.0).requires_grad


def test_detach_numpy_item_shape_dtype() -> None:
    x = leaf(2, 3)
    y = x * 2.0
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(d.numpy(), y.numpy())
    assert isinstance(y.numpy(), np.ndarray) and y.numpy() is y.data
    assert isinstance(y.sum().numpy(), np.ndarray)  # a full reduction still gives an array, not a scalar
    assert d.shape == (2, 3) and d.dtype == np.float64 and d.ndim == 2 and d.size == 6 and len(d) == 2
    s = y.sum()
    assert isinstance(s.item(), float) and s.item() == pytest.approx(float(y.data.sum()))
    with pytest.raises(RuntimeError, match="does not require grad"):
        d.sum().backward()  # nothing flows through a detached tensor


def test_detached_branch_gets_no_gradient() -> None:
    x = leaf(3)
    (x * x.detach()).sum().backward()  # d/dx of x * const
    np.testing.assert_allclose(x.grad, x.data, rtol=1e-15)


# ----------------------------------------------------------------------------- dtypes


def test_float32_by_default() -> None:
    assert get_default_dtype() == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.ones(3, dtype=np.float64)).dtype == np.float32  # floats become the default dtype
    assert Tensor([1, 2]).dtype.kind == "i"  # integers (token ids) stay integer
    assert Tensor(np.ones(3), dtype=np.float64).dtype == np.float64  # an explicit dtype wins


def test_set_default_dtype_and_context() -> None:
    set_default_dtype(np.float64)
    assert Tensor([1.0]).dtype == np.float64
    set_default_dtype(np.float32)
    with default_dtype(np.float64):
        assert Tensor([1.0]).dtype == np.float64
    assert Tensor([1.0]).dtype == np.float32
    with pytest.raises(TypeError, match="float16"):
        set_default_dtype(np.float16)


def test_float32_gradients_stay_float32() -> None:
    x = leaf(3, 4, dtype=np.float32)
    w = leaf(4, 2, seed=1, dtype=np.float32)
    loss = (
        (x @ w).sum()
        + x.max(axis=1).sum()
        + x.mean()
        + functional.softmax(x).sum()
        + functional.cross_entropy(x, np.array([0, 1, -100]))
        + (x[np.array([0, 0])] * 2.0).sum()
    )
    assert loss.dtype == np.float32
    loss.backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32


def test_python_constants_take_the_tensors_dtype() -> None:
    x = leaf(3)  # float64 while the default dtype is float32
    for y in (
        x * 2.0,
        2.0 - x,
        x / 3,
        x.masked_fill(np.array([True, False, True]), -1.0),
        ops.where(x.data > 0, x, 0.0),
    ):
        assert y.dtype == np.float64
    with default_dtype(np.float64):
        assert (leaf(3, dtype=np.float32) + 1.0).dtype == np.float32


def test_integer_tensor_cannot_require_grad() -> None:
    with pytest.raises(TypeError, match="int"):
        Tensor([1, 2, 3], requires_grad=True)
    ids = Tensor([1, 2, 3])
    with pytest.raises(TypeError):
        ids.requires_grad = True


def test_mixing_float32_and_float64_names_both_dtypes() -> None:
    a = leaf(3, dtype=np.float32)
    b = leaf(3, dtype=np.float64)
    with pytest.raises(TypeError, match=r"float32.*float64|float64.*float32"):
        a + b
    with pytest.raises(TypeError, match=r"float32.*float64|float64.*float32"):
        a @ b
    (a.astype(np.float64) + b).sum().backward()  # the fix the message suggests works
    assert a.grad.dtype == np.float32


def test_matmul_of_incompatible_shapes_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        leaf(2, 3) @ leaf(4, 5)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(5, 4, 2\)"):  # batch dims that do not broadcast
        leaf(2, 3, 4) @ leaf(5, 4, 2)


# ----------------------------------------------------------------------------- frozen inputs


@pytest.fixture
def matmul_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Count (and record the shapes of) every np.matmul call the ops make."""
    calls: list[tuple[int, ...]] = []
    real = np.matmul

    def counting(a, b, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(np.shape(a))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(ops.np, "matmul", counting)
    return calls


@pytest.mark.parametrize("x_shape", [(3, 4), (2, 3, 4)])
@pytest.mark.parametrize(
    ("x_grad", "w_grad", "expected"), [(True, False, 1), (False, True, 1), (True, True, 2)]
)
def test_frozen_inputs_cost_no_matmul(
    matmul_calls: list[tuple[int, ...]], x_shape: tuple[int, ...], x_grad: bool, w_grad: bool, expected: int
) -> None:
    x = Tensor(np.ones(x_shape), requires_grad=x_grad, dtype=np.float64)
    w = Tensor(np.ones((4, 5)), requires_grad=w_grad, dtype=np.float64)
    y = x @ w
    assert len(matmul_calls) == 1  # the forward product
    matmul_calls.clear()
    y.sum().backward()
    assert len(matmul_calls) == expected
    assert (x.grad is None) != x_grad and (w.grad is None) != w_grad


def test_frozen_weight_gets_no_grad_in_a_deeper_graph() -> None:
    x = leaf(2, 3)
    w = Tensor(np.ones((3, 3)), dtype=np.float64)  # frozen
    b = leaf(3, seed=1)
    functional.layer_norm((x @ w).tanh(), Tensor(np.ones(3), dtype=np.float64), b).sum().backward()
    assert w.grad is None
    assert x.grad is not None and b.grad is not None


# ----------------------------------------------------------------------------- randomness


def test_manual_seed_makes_dropout_masks_identical() -> None:
    x = Tensor(np.ones((8, 16)))
    manual_seed(7)
    first = ops.dropout(x, 0.5).numpy()
    manual_seed(7)
    second = ops.dropout(x, 0.5).numpy()
    third = ops.dropout(x, 0.5).numpy()  # the generator moved on: a different mask
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(second, third)
    assert set(np.unique(first)) <= {0.0, 2.0}


def test_dropout_backward_uses_the_forward_mask() -> None:
    x = leaf(6, 5)
    y = ops.dropout(x, 0.4)
    y.backward(np.ones(y.shape))
    kept = y.data != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_array_equal(x.grad, np.where(kept, 1 / 0.6, 0.0))
