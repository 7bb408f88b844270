"""Broadcasting: ``unbroadcast`` sums gradients back to each input's own shape."""

from __future__ import annotations

import numpy as np
import pytest

from tinypft.engine import Tensor, gradcheck, ops, unbroadcast

F64 = np.float64

UNBROADCAST_CASES = [
    ((), (3, 3, 3)),
    ((1,), (3, 3, 3)),
    ((3, 1), (3, 3)),
    ((1, 3), (3, 3)),
    ((1, 4), (2, 3, 4)),
    ((4,), (2, 3, 4)),
    ((2, 1, 4), (2, 3, 4)),
    ((1, 1, 1), (2, 3, 4)),
    ((3, 1), (2, 3, 4)),
    ((2, 3, 4), (2, 3, 4)),
    ((2, 1, 1, 5), (3, 2, 4, 6, 5)),
]


def reference_unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The slow, obvious version: add every element of grad into the input element it came from."""
    out = np.zeros(shape)
    padded = (1,) * (grad.ndim - len(shape)) + shape
    for index in np.ndindex(grad.shape):
        source = tuple(0 if n == 1 else i for i, n in zip(index, padded))
        out.reshape(padded)[source] += grad[index]
    return out


@pytest.mark.parametrize(("shape", "target"), UNBROADCAST_CASES, ids=str)
def test_unbroadcast_sums_back_to_the_input_shape(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    grad = np.random.default_rng(0).standard_normal(target)
    result = unbroadcast(grad, shape)
    assert result.shape == shape
    np.testing.assert_allclose(result, reference_unbroadcast(grad, shape), rtol=1e-12, atol=1e-12)


def test_unbroadcast_of_a_scalar_is_the_total() -> None:
    grad = np.arange(27.0).reshape(3, 3, 3)
    assert unbroadcast(grad, ()).shape == ()
    assert float(unbroadcast(grad, ())) == grad.sum()


def test_unbroadcast_keeps_length_one_axes_that_were_not_stretched() -> None:
    grad = np.ones((2, 1, 4))
    result = unbroadcast(grad, (1, 4))  # axis 0 prepended, the length-1 axis was length 1 already
    np.testing.assert_array_equal(result, np.full((1, 4), 2.0))


# ----------------------------------------------------------------------------- every binary op

BINARY_SHAPES = [
    ((), (3, 3, 3)),
    ((3, 1), (3, 3)),
    ((1, 4), (2, 3, 4)),
    ((4,), (2, 3, 4)),
    ((2, 1, 4), (2, 3, 4)),
    ((2, 1, 4), (3, 1)),
    ((3, 3), (3, 3)),
]


def _inputs(sa: tuple[int, ...], sb: tuple[int, ...], positive_b: bool = False) -> list[Tensor]:
    rng = np.random.default_rng(1)
    b = rng.uniform(0.5, 2.0, sb) if positive_b else rng.standard_normal(sb)
    return [
        Tensor(rng.standard_normal(sa), requires_grad=True, dtype=F64),
        Tensor(b, requires_grad=True, dtype=F64),
    ]


def _where(a: Tensor, b: Tensor) -> Tensor:
    cond = np.random.default_rng(2).random(np.broadcast_shapes(a.shape, b.shape)) > 0.5
    return ops.where(cond, a, b)


BINARY_OPS = {"add": ops.add, "sub": ops.sub, "mul": ops.mul, "div": ops.div, "where": _where}


@pytest.mark.parametrize("name", list(BINARY_OPS))
@pytest.mark.parametrize(("sa", "sb"), BINARY_SHAPES, ids=str)
@pytest.mark.parametrize("swap", [False, True], ids=["ab", "ba"])
def test_binary_op_gradients_have_their_inputs_shapes(name: str, sa: tuple, sb: tuple, swap: bool) -> None:
    if swap:
        sa, sb = sb, sa
    a, b = _inputs(sa, sb, positive_b=name == "div")
    op = BINARY_OPS[name]
    out = op(a, b)
    assert out.shape == np.broadcast_shapes(sa, sb)
    out.backward(np.ones(out.shape))
    assert a.grad.shape == sa and b.grad.shape == sb
    gradcheck(op, [a, b], names=["a", "b"])


def test_broadcast_gradient_values() -> None:
    a = Tensor(np.ones((3, 1)), requires_grad=True, dtype=F64)
    b = Tensor(np.arange(4.0), requires_grad=True, dtype=F64)
    (a * b).sum().backward()  # out[i, j] = a[i] * b[j]
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 6.0))  # sum_j b[j]
    np.testing.assert_array_equal(b.grad, np.full(4, 3.0))  # sum_i a[i]


def test_where_with_a_broadcast_condition() -> None:
    cond = np.array([[True], [False]])  # (2, 1) against (2, 3) and (3,)
    a, b = _inputs((2, 3), (3,))
    out = ops.where(cond, a, b)
    out.backward(np.ones(out.shape))
    np.testing.assert_array_equal(a.grad, [[1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(b.grad, [1, 1, 1])
    gradcheck(lambda x, y: ops.where(cond, x, y), [a, b])


def test_scalar_constant_broadcasts_without_a_gradient() -> None:
    a = Tensor(np.ones((2, 3)), requires_grad=True, dtype=F64)
    (a * 2.0 + 1.0).sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((2, 3), 2.0))


# ----------------------------------------------------------------------------- matmul batch dims

MATMUL_SHAPES = [
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (3, 4, 2)),
    ((1, 3, 4), (2, 4, 5)),
    ((5, 1, 2, 3), (1, 4, 3, 2)),
    ((4,), (2, 4, 3)),
    ((2, 3, 4), (4,)),
    ((4,), (4,)),
]


@pytest.mark.parametrize(("sa", "sb"), MATMUL_SHAPES, ids=str)
def test_matmul_batch_gradients_have_their_inputs_shapes(sa: tuple, sb: tuple) -> None:
    a, b = _inputs(sa, sb)
    out = a @ b
    assert out.shape == np.matmul(np.zeros(sa), np.zeros(sb)).shape
    out.backward(np.ones(out.shape))
    assert a.grad.shape == sa and b.grad.shape == sb
    gradcheck(ops.matmul, [a, b], names=["a", "b"])


def test_matmul_broadcast_batch_gradient_is_summed() -> None:
    a = Tensor(np.ones((3, 2, 4)), requires_grad=True, dtype=F64)  # 3 batches share one b
    b = Tensor(np.ones((4, 5)), requires_grad=True, dtype=F64)
    (a @ b).sum().backward()
    np.testing.assert_array_equal(b.grad, np.full((4, 5), 6.0))  # 3 batches x 2 rows


def test_incompatible_broadcast_names_both_shapes() -> None:
    a, b = _inputs((2, 3), (4,))
    for op in (ops.add, ops.sub, ops.mul, ops.div):
        with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
            op(a, b)
