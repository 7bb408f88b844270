"""Every primitive and composite gradchecked on hypothesis-generated shapes and values.

Values are kept away from the points where an op has no derivative (relu at 0, log/sqrt/div near
0, ties of max), since finite differences straddling a kink disagree with any backward.
"""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinypft.engine import (
    Function,
    GradcheckError,
    Tensor,
    functional,
    gradcheck,
    manual_seed,
    ops,
    use_fused_kernels,
)

SETTINGS = settings(deadline=None, max_examples=15, derandomize=True)
F64 = np.float64


def leaf(array: np.ndarray) -> Tensor:
    return Tensor(np.array(array, dtype=F64), requires_grad=True, dtype=F64)


# ----------------------------------------------------------------------------- strategies

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def values(shape: tuple[int, ...], low: float = -2.0, high: float = 2.0) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(F64, shape, elements=st.floats(low, high, allow_nan=False, allow_infinity=False))


def away_from_zero(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """|x| in [0.1, 2]: a step of 1e-6 never crosses 0."""
    return hnp.arrays(F64, shape, elements=st.floats(0.1, 2.0) | st.floats(-2.0, -0.1))


def distinct(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Values at least 0.01 apart (no ties): unique integers scaled down."""
    return hnp.arrays(np.int64, shape, elements=st.integers(-500, 500), unique=True).map(lambda a: a * 0.01)


@st.composite
def tensor_of(draw: st.DrawFn, shape_strategy: st.SearchStrategy = shapes, kind: str = "any") -> Tensor:
    shape = draw(shape_strategy)
    make = {"any": values, "positive": lambda s: values(s, 0.5, 3.0), "nonzero": away_from_zero}[kind]
    return leaf(draw(make(shape)))


@st.composite
def broadcast_pair(draw: st.DrawFn, positive_b: bool = False) -> tuple[Tensor, Tensor]:
    """Two tensors whose shapes broadcast together (including scalars and length-1 axes)."""
    sa, sb = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3)).input_shapes
    b = values(sb, 0.5, 3.0) if positive_b else values(sb)
    return leaf(draw(values(sa))), leaf(draw(b))


@st.composite
def matmul_pair(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    """Operands of a valid matmul: 1-D vectors, matrices, and batches with broadcasting batch dims."""
    n, k, m = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    batch_a, batch_b = draw(
        hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3)
    ).input_shapes
    sa = draw(st.sampled_from([(k,), (*batch_a, n, k)]))
    sb = draw(st.sampled_from([(k,), (*batch_b, k, m)]))
    return leaf(draw(values(sa))), leaf(draw(values(sb)))


@st.composite
def reduction_case(draw: st.DrawFn, tie_free: bool = False) -> tuple[Tensor, object, bool]:
    shape = draw(nonempty_shapes)
    axis = draw(
        st.none() | st.integers(-len(shape), len(shape) - 1) | hnp.valid_tuple_axes(len(shape), min_size=1)
    )
    array = draw(distinct(shape) if tie_free else values(shape))
    return leaf(array), axis, draw(st.booleans())


def check(fn, inputs, **kwargs) -> None:  # noqa: ANN001
    report = gradcheck(fn, inputs, **kwargs)
    assert report.checked == sum(t.size for t in inputs if t.requires_grad)


# ----------------------------------------------------------------------------- elementwise


@pytest.mark.parametrize("op", [ops.add, ops.sub, ops.mul, ops.div], ids=["add", "sub", "mul", "div"])
@SETTINGS
@given(data=st.data())
def test_binary_ops(op, data: st.DataObject) -> None:  # noqa: ANN001
    a, b = data.draw(broadcast_pair(positive_b=op is ops.div))
    check(op, [a, b])


@pytest.mark.parametrize(
    ("op", "kind"),
    [
        (ops.neg, "any"),
        (ops.exp, "any"),
        (ops.log, "positive"),
        (ops.sqrt, "positive"),
        (ops.tanh, "any"),
        (ops.relu, "nonzero"),
        (ops.gelu, "any"),
    ],
    ids=["neg", "exp", "log", "sqrt", "tanh", "relu", "gelu"],
)
@SETTINGS
@given(data=st.data())
def test_unary_ops(op, kind: str, data: st.DataObject) -> None:  # noqa: ANN001
    check(op, [data.draw(tensor_of(kind=kind))])


@SETTINGS
@given(x=tensor_of(kind="positive"), p=st.sampled_from([2.0, 3.0, 0.5, -1.0, -1.5, 1.7]))
def test_pow(x: Tensor, p: float) -> None:
    check(lambda t: t**p, [x])


@SETTINGS
@given(x=tensor_of(), p=st.sampled_from([2, 3]))
def test_pow_integer_exponent_on_negative_values(x: Tensor, p: int) -> None:
    check(lambda t: t**p, [x])


# ----------------------------------------------------------------------------- matmul and reductions


@SETTINGS
@given(pair=matmul_pair())
def test_matmul(pair: tuple[Tensor, Tensor]) -> None:
    check(ops.matmul, list(pair))


@pytest.mark.parametrize("op", [ops.sum, ops.mean], ids=["sum", "mean"])
@SETTINGS
@given(case=reduction_case())
def test_sum_mean(op, case: tuple[Tensor, object, bool]) -> None:  # noqa: ANN001
    x, axis, keepdims = case
    check(lambda t: op(t, axis, keepdims), [x])


@SETTINGS
@given(case=reduction_case(tie_free=True))
def test_max(case: tuple[Tensor, object, bool]) -> None:
    x, axis, keepdims = case
    check(lambda t: ops.max(t, axis, keepdims), [x])


# ----------------------------------------------------------------------------- shape ops


@SETTINGS
@given(x=tensor_of(nonempty_shapes), data=st.data())
def test_reshape(x: Tensor, data: st.DataObject) -> None:
    sides = data.draw(st.permutations([*x.shape, 1]))  # same elements, another arrangement
    check(lambda t: t.reshape(tuple(sides)), [x])
    check(lambda t: t.reshape(-1), [x])


@SETTINGS
@given(x=tensor_of(nonempty_shapes), data=st.data())
def test_permute_and_transpose(x: Tensor, data: st.DataObject) -> None:
    axes = data.draw(st.permutations(range(x.ndim)))
    check(lambda t: t.permute(*axes), [x])
    if x.ndim >= 2:
        check(lambda t: t.transpose(0, -1), [x])


@SETTINGS
@given(data=st.data())
def test_broadcast_to(data: st.DataObject) -> None:
    result = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=1, max_dims=3, max_side=3))
    x = leaf(data.draw(values(result.input_shapes[0])))
    check(lambda t: t.broadcast_to(result.result_shape), [x])


@SETTINGS
@given(x=tensor_of(nonempty_shapes), data=st.data())
def test_getitem_basic(x: Tensor, data: st.DataObject) -> None:
    index = data.draw(hnp.basic_indices(x.shape, allow_newaxis=True, allow_ellipsis=True))
    check(lambda t: t[index], [x])


@SETTINGS
@given(x=tensor_of(nonempty_shapes), data=st.data())
def test_getitem_integer_arrays_with_repeats(x: Tensor, data: st.DataObject) -> None:
    index = data.draw(
        hnp.integer_array_indices(x.shape, result_shape=hnp.array_shapes(max_dims=2, max_side=5))
    )
    check(lambda t: t[index], [x])


@SETTINGS
@given(x=tensor_of(nonempty_shapes), data=st.data())
def test_getitem_boolean_mask(x: Tensor, data: st.DataObject) -> None:
    mask = data.draw(hnp.arrays(np.bool_, x.shape))
    check(lambda t: t[mask], [x])


@SETTINGS
@given(data=st.data())
def test_concat(data: st.DataObject) -> None:
    base = list(data.draw(nonempty_shapes))
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    tensors = [
        leaf(data.draw(values(tuple(base[: axis % len(base)] + [n] + base[axis % len(base) + 1 :]))))
        for n in sizes
    ]
    check(lambda *ts: ops.concat(list(ts), axis=axis), tensors)


@SETTINGS
@given(data=st.data())
def test_stack(data: st.DataObject) -> None:
    shape = data.draw(shapes)
    count = data.draw(st.integers(1, 3))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    tensors = [leaf(data.draw(values(shape))) for _ in range(count)]
    check(lambda *ts: ops.stack(list(ts), axis=axis), tensors)


@SETTINGS
@given(data=st.data())
def test_where(data: st.DataObject) -> None:
    sc, sa, sb = data.draw(
        hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3)
    ).input_shapes
    cond = data.draw(hnp.arrays(np.bool_, sc))
    check(lambda a, b: ops.where(cond, a, b), [leaf(data.draw(values(sa))), leaf(data.draw(values(sb)))])


@SETTINGS
@given(data=st.data(), value=st.floats(-3.0, 3.0))
def test_masked_fill(data: st.DataObject, value: float) -> None:
    sx, sm = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3)).input_shapes
    x = leaf(data.draw(values(sx)))
    mask = data.draw(hnp.arrays(np.bool_, sm))
    if np.broadcast_shapes(sx, sm) != sx:  # masked_fill keeps x's shape only when the mask fits inside it
        mask = np.broadcast_to(mask, np.broadcast_shapes(sx, sm))
    check(lambda t: t.masked_fill(mask, value), [x])


# ----------------------------------------------------------------------------- lookups, noise, casts


@SETTINGS
@given(data=st.data())
def test_embedding_with_repeated_ids(data: st.DataObject) -> None:
    rows, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    ids = data.draw(
        hnp.arrays(np.int64, hnp.array_shapes(max_dims=2, max_side=6), elements=st.integers(0, rows - 1))
    )
    weight = leaf(data.draw(values((rows, dim))))
    check(lambda w: ops.embedding(w, ids), [weight])


@SETTINGS
@given(x=tensor_of(nonempty_shapes), p=st.floats(0.1, 0.8), seed=st.integers(0, 1000))
def test_dropout_with_a_fixed_mask(x: Tensor, p: float, seed: int) -> None:
    def fn(t: Tensor) -> Tensor:
        manual_seed(seed)  # the same mask at every evaluation
        return ops.dropout(t, p)

    check(fn, [x])


@SETTINGS
@given(data=st.data())
def test_cast_round_trip(data: st.DataObject) -> None:
    # float32-representable values in [1.25, 1.75] stepped by eps = 2^-8 stay representable: exact
    shape = data.draw(nonempty_shapes)
    x = leaf(data.draw(values(shape, 1.25, 1.75)).astype(np.float32))
    check(lambda t: (t.astype(np.float32) * 3.0).astype(F64), [x], eps=2.0**-8)


# ----------------------------------------------------------------------------- composites


HAVE_FUSED = importlib.util.find_spec("tinypft.engine.fused") is not None
# composites run with the composed reference and again with the fused kernels (when present)
BOTH_PATHS = pytest.mark.parametrize(
    "fused",
    [False, pytest.param(True, marks=pytest.mark.skipif(not HAVE_FUSED, reason="no fused kernels"))],
    ids=["composed", "fused"],
)


@st.composite
def last_axis_case(draw: st.DrawFn) -> tuple[Tensor, int]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    return leaf(draw(values(shape, -4.0, 4.0))), draw(st.integers(-len(shape), len(shape) - 1))


@BOTH_PATHS
@pytest.mark.parametrize("op", [functional.softmax, functional.log_softmax], ids=["softmax", "log_softmax"])
@SETTINGS
@given(case=last_axis_case())
def test_softmax_family(fused: bool, op, case: tuple[Tensor, int]) -> None:  # noqa: ANN001
    x, axis = case
    with use_fused_kernels(fused):
        check(lambda t: op(t, axis=axis), [x])


@BOTH_PATHS
@SETTINGS
@given(data=st.data())
def test_layer_norm(fused: bool, data: st.DataObject) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=5))
    d = shape[-1]
    x, w, b = leaf(data.draw(values(shape))), leaf(data.draw(values((d,)))), leaf(data.draw(values((d,))))
    with use_fused_kernels(fused):
        check(functional.layer_norm, [x, w, b])


@BOTH_PATHS
@SETTINGS
@given(data=st.data())
def test_linear(fused: bool, data: st.DataObject) -> None:
    batch = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
    d_in, d_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    inputs = [leaf(data.draw(values((*batch, d_in)))), leaf(data.draw(values((d_out, d_in))))]
    if data.draw(st.booleans()):
        inputs.append(leaf(data.draw(values((d_out,)))))  # with a bias
    with use_fused_kernels(fused):
        check(functional.linear, inputs)


@BOTH_PATHS
@SETTINGS
@given(data=st.data())
def test_cross_entropy_with_ignore_index(fused: bool, data: st.DataObject) -> None:
    batch = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, max_side=4))
    classes = data.draw(st.integers(2, 5))
    targets = data.draw(hnp.arrays(np.int64, batch, elements=st.sampled_from([-100, *range(classes)])))
    if np.all(targets == -100):
        targets.flat[0] = classes - 1  # at least one position must count
    logits = leaf(data.draw(values((*batch, classes), -4.0, 4.0)))
    with use_fused_kernels(fused):
        check(lambda t: functional.cross_entropy(t, targets), [logits])


@BOTH_PATHS
@settings(deadline=None, max_examples=10, derandomize=True)
@given(data=st.data())
def test_attention_with_causal_mask(fused: bool, data: st.DataObject) -> None:
    b, h, d = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    tq = data.draw(st.integers(1, 3))
    tk = data.draw(st.integers(tq, 4))  # extra keys in front act as a prefix
    mask = functional.causal_mask(tq, tk) if data.draw(st.booleans()) else None
    q = leaf(data.draw(values((b, h, tq, d))))
    k, v = (leaf(data.draw(values((b, h, tk, d)))) for _ in range(2))
    with use_fused_kernels(fused):
        check(lambda *t: functional.attention(*t, mask=mask), [q, k, v])


@BOTH_PATHS
@SETTINGS
@given(x=tensor_of())
def test_functional_gelu(fused: bool, x: Tensor) -> None:
    with use_fused_kernels(fused):
        check(functional.gelu, [x])


# ----------------------------------------------------------------------------- numerical stability


def stable_log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@BOTH_PATHS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_and_log_softmax_stable_for_huge_inputs(fused: bool, dtype: type) -> None:
    raw = np.random.default_rng(0).standard_normal((4, 7)) * 1e5
    raw[0] = 1e5  # a row of ties at a huge value
    x = Tensor(raw, dtype=dtype)
    expected_log = stable_log_softmax(raw.astype(dtype).astype(np.float64))
    with use_fused_kernels(fused):
        logp = functional.log_softmax(x).numpy()
        p = functional.softmax(x).numpy()
    assert np.all(np.isfinite(logp)) and np.all(np.isfinite(p))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(logp, expected_log, rtol=tol, atol=tol)
    np.testing.assert_allclose(p, np.exp(expected_log), rtol=tol, atol=tol)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=tol)


@BOTH_PATHS
def test_softmax_gradient_finite_for_huge_inputs(fused: bool) -> None:
    x = Tensor(np.array([[1e5, 0.0, -1e5], [3e5, 3e5, 1.0]]), requires_grad=True, dtype=F64)
    with use_fused_kernels(fused):
        (functional.log_softmax(x) * 1.5).sum().backward()
        assert np.all(np.isfinite(x.grad))
        x.grad = None
        (functional.softmax(x) ** 2).sum().backward()
    assert np.all(np.isfinite(x.grad))


@BOTH_PATHS
def test_cross_entropy_averages_only_counted_targets(fused: bool) -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 5, 6))
    targets = rng.integers(0, 6, (2, 5))
    targets[0, 1] = targets[1, 3] = targets[1, 4] = -100
    keep = targets != -100
    expected = -np.mean(stable_log_softmax(logits)[keep, targets[keep]])
    with use_fused_kernels(fused):
        assert functional.cross_entropy(Tensor(logits, dtype=F64), targets).item() == pytest.approx(
            expected, rel=1e-13
        )
        logits[0, 1] = 1e3  # the ignored positions change nothing
        assert functional.cross_entropy(Tensor(logits, dtype=F64), targets).item() == pytest.approx(
            expected, rel=1e-13
        )
        other = np.where(targets == -100, 7, targets)  # another ignore_index is honoured
        with pytest.raises(IndexError, match="7"):
            functional.cross_entropy(Tensor(logits, dtype=F64), other)
        loss = functional.cross_entropy(Tensor(logits, dtype=F64), other, ignore_index=7).item()
    assert loss == pytest.approx(expected, rel=1e-13)


@BOTH_PATHS
def test_cross_entropy_gradient_is_zero_on_ignored_rows(fused: bool) -> None:
    logits = leaf(np.random.default_rng(1).standard_normal((4, 3)))
    with use_fused_kernels(fused):
        functional.cross_entropy(logits, np.array([2, -100, 0, -100])).backward()
    np.testing.assert_array_equal(logits.grad[[1, 3]], 0.0)
    assert np.all(logits.grad[[0, 2]] != 0.0)


# ----------------------------------------------------------------------------- the checker itself


class ScaledSquare(Function):
    """out = x^2 with a backward off by 10%: gradcheck must notice."""

    @staticmethod
    def forward(ctx, x: np.ndarray) -> np.ndarray:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g: np.ndarray) -> tuple[np.ndarray]:  # noqa: ANN001
        (x,) = ctx.saved
        return (1.1 * 2 * x * g,)


def _analytic_and_numeric(message: str) -> tuple[float, float]:
    found = re.search(r"analytic (\S+), numeric (\S+),", message)
    assert found, message
    return float(found[1]), float(found[2])


def test_gradcheck_catches_a_wrong_backward() -> None:
    x = leaf(np.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]]))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda t: ScaledSquare.apply(t).sum(), [x], names=["x"])
    message = str(info.value)
    assert "x[0, 2]" in message  # the worst element: the largest |2x|
    analytic, numeric = _analytic_and_numeric(message)
    assert analytic / numeric == pytest.approx(1.1, rel=1e-6)


def test_gradcheck_names_the_worst_element_of_the_right_input() -> None:
    a, b = leaf(np.array([0.1, 0.2])), leaf(np.array([3.0, -4.0, 0.5]))
    with pytest.raises(GradcheckError, match=r"weights\[1\]") as info:
        gradcheck(lambda p, q: p.sum() + ScaledSquare.apply(q).sum(), [a, b], names=["bias", "weights"])
    analytic, numeric = _analytic_and_numeric(str(info.value))
    assert analytic / numeric == pytest.approx(1.1, rel=1e-6)


def test_gradcheck_passes_a_correct_backward_and_reports() -> None:
    x = leaf(np.array([0.5, -1.0, 2.0]))
    report = gradcheck(lambda t: t * t, [x], names=["x"])
    assert report.checked == 3 and report.max_abs_error < 1e-8 and report.worst.startswith("x[")
    assert x.grad is None  # gradcheck leaves no gradient behind


def test_gradcheck_refuses_float32() -> None:
    x = Tensor(np.ones(3), requires_grad=True, dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        gradcheck(lambda t: t * t, [x])


def test_gradcheck_needs_an_input_that_requires_grad() -> None:
    with pytest.raises(ValueError, match="requires grad"):
        gradcheck(lambda t: t * 2.0, [Tensor(np.ones(3), dtype=F64)])


@pytest.mark.parametrize(
    "make", [lambda a: a.T, lambda a: np.broadcast_to(a[:1], a.shape)], ids=["transposed", "readonly"]
)
def test_gradcheck_perturbs_non_contiguous_and_readonly_inputs(make) -> None:  # noqa: ANN001
    base = np.random.default_rng(0).standard_normal((3, 3))
    x = Tensor(make(base), requires_grad=True, dtype=F64)
    assert not (x.data.flags.c_contiguous and x.data.flags.writeable)
    gradcheck(lambda t: (t * t).sum(axis=0), [x])
