"""The primitive operations: each a ``Function`` with its forward and backward side by side.

Notation in the docstrings: ``g`` is dL/d(out), the gradient arriving from above; each backward
returns dL/d(input) for every tensor input (``None`` for inputs that need no gradient).

Broadcasting has one rule, ``unbroadcast``: if an input was stretched to the output's shape in
the forward pass, its gradient is summed back over the stretched axes in the backward pass.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..threads import later
from . import autograd
from .autograd import Context, Function, Tensor, as_tensor, fused_kernels_enabled
from .rng import get_rng

Axis = int | tuple[int, ...] | None


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    Broadcasting prepends axes and stretches axes of length 1, so the gradient sums over the
    prepended axes and over every axis where ``shape`` has 1 but ``grad`` does not.
    Example: (2, 3, 4) -> (1, 4) sums axes 0 and 1 and keeps a length-1 axis.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    stretched = [extra + i for i, n in enumerate(shape) if n == 1 and grad.shape[extra + i] != 1]
    summed = grad.sum(axis=tuple(range(extra)) + tuple(stretched), keepdims=True)
    return summed.reshape(shape)


def _binary(a: Any, b: Any) -> tuple[Tensor, Tensor]:
    """Turn Python numbers and arrays into constant tensors of the other operand's dtype."""
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    if not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    return a, b


def _elementwise(op: str, ufunc: np.ufunc, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ufunc(a, b)``, with NumPy's error for shapes that do not broadcast reworded to name the op:
    "add: shapes (2, 3) and (4,) cannot be broadcast together". Every binary forward computes through it."""
    try:
        return ufunc(a, b)
    except ValueError:
        raise ValueError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together") from None


# ----------------------------------------------------------------------------- elementwise binary


class Add(Function):
    """out = a + b;  da = g,  db = g  (each summed back to its own shape)."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a.shape, b.shape)
        return _elementwise("add", np.add, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        a_shape, b_shape = ctx.saved
        da = unbroadcast(g, a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(g, b_shape) if ctx.needs_input_grad[1] else None
        return da, db


class Sub(Function):
    """out = a - b;  da = g,  db = -g."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a.shape, b.shape)
        return _elementwise("sub", np.subtract, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        a_shape, b_shape = ctx.saved
        da = unbroadcast(g, a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-g, b_shape) if ctx.needs_input_grad[1] else None
        return da, db


class Mul(Function):
    """out = a * b;  da = g * b,  db = g * a."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a, b)
        return _elementwise("mul", np.multiply, a, b)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        a, b = ctx.saved
        da = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    """out = a / b;  da = g / b,  db = -g * a / b**2 = -g * out / b."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = _elementwise("div", np.divide, a, b)
        ctx.save_for_backward(a.shape, b, out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        a_shape, b, out = ctx.saved
        g_over_b = g / b
        da = unbroadcast(g_over_b, a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-g_over_b * out, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


# ----------------------------------------------------------------------------- elementwise unary


class Neg(Function):
    """out = -x;  dx = -g."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        return -x

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        return (-g,)


class Pow(Function):
    """out = x ** p for a constant p;  dx = g * p * x ** (p - 1)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, exponent: float) -> np.ndarray:
        ctx.save_for_backward(x, exponent)
        return x**exponent

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x, p = ctx.saved
        return (g * (p * x ** (p - 1)),)


class Exp(Function):
    """out = exp(x);  dx = g * out."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        out = np.exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (out,) = ctx.saved
        return (g * out,)


class Log(Function):
    """out = log(x);  dx = g / x."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(x)
        return np.log(x)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (x,) = ctx.saved
        return (g / x,)


class Sqrt(Function):
    """out = sqrt(x);  dx = g / (2 * out)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        out = np.sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (out,) = ctx.saved
        return (g / (2 * out),)


class Tanh(Function):
    """out = tanh(x);  dx = g * (1 - out**2)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        out = np.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (out,) = ctx.saved
        return (g * (1 - out * out),)


class ReLU(Function):
    """out = max(x, 0);  dx = g where x > 0, else 0."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(x > 0)
        return np.maximum(x, 0)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (positive,) = ctx.saved
        return (g * positive,)


GELU_C = float(np.sqrt(2.0 / np.pi))


class GELU(Function):
    """GPT-2's tanh approximation: out = x/2 * (1 + tanh(u)),  u = c * (x + 0.044715 x^3),  c = sqrt(2/pi).

    dx = g * [ (1 + t)/2 + x/2 * (1 - t^2) * c * (1 + 3 * 0.044715 x^2) ],  t = tanh(u).
    """

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        t = np.tanh(GELU_C * (x + 0.044715 * (x * x * x)))
        ctx.save_for_backward(x, t)
        return 0.5 * x * (1 + t)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x, t = ctx.saved
        du_dx = GELU_C * (1 + 3 * 0.044715 * (x * x))
        return (g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du_dx),)


class Cast(Function):
    """out = x converted to another float dtype;  dx = g converted back."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, dtype: np.dtype) -> np.ndarray:
        ctx.save_for_backward(x.dtype)
        return x.astype(dtype)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (dtype,) = ctx.saved
        return (g.astype(dtype),)


# ----------------------------------------------------------------------------- matmul


class MatMul(Function):
    """out = a @ b, batched over leading axes that broadcast (NumPy matmul semantics).

    For a (..., n, k) and b (..., k, m):  da = g @ b^T,  db = a^T @ g  (each summed back over
    broadcast batch axes). A 1-D operand is treated as a row (a) or column (b) vector.
    Only the gradients that are needed are computed: a frozen ``b`` costs no ``a^T @ g`` matmul.
    """

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(
                f"matmul: operands must have at least 1 dimension, got shapes {a.shape} and {b.shape}"
            )
        k_a, k_b = a.shape[-1], b.shape[0] if b.ndim == 1 else b.shape[-2]
        if k_a != k_b:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} are incompatible (inner dimensions {k_a} != {k_b})"
            )
        ctx.save_for_backward(a, b)
        if b.ndim == 2 and a.ndim > 2:  # (..., n, k) @ (k, m): one large GEMM instead of a batch loop
            return np.matmul(a.reshape(-1, k_a), b).reshape(*a.shape[:-1], b.shape[-1])
        try:
            return np.matmul(a, b)
        except ValueError:
            raise ValueError(
                f"matmul: batch dimensions of {a.shape} and {b.shape} cannot be broadcast"
            ) from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        a, b = ctx.saved
        a2 = a[None, :] if a.ndim == 1 else a  # (n=1, k)
        b2 = b[:, None] if b.ndim == 1 else b  # (k, m=1)
        if b.ndim == 1:
            g = g[..., None]
        if a.ndim == 1:
            g = g[..., None, :]
        da = db = None
        if ctx.needs_input_grad[0]:
            da = unbroadcast(np.matmul(g, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if ctx.needs_input_grad[1]:
            if b2.ndim == 2 and a2.ndim > 2:  # sum over every batch row in one GEMM: (k, N) @ (N, m)
                k, m = b2.shape
                db = np.matmul(a2.reshape(-1, k).T, g.reshape(-1, m)).reshape(b.shape)
            else:
                db = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g), b2.shape).reshape(b.shape)
        return da, db


# ----------------------------------------------------------------------------- reductions


def _normalize_axes(axis: Axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(ax % ndim for ax in axes))


def _expand_reduced(g: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Give a reduced gradient its reduced axes back (as length 1), ready to broadcast."""
    return g if keepdims else np.expand_dims(g, axes)


class Sum(Function):
    """out = x summed over ``axes``;  dx = g broadcast back to x's shape."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        ctx.save_for_backward(x.shape, axes, keepdims)
        return np.sum(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        shape, axes, keepdims = ctx.saved
        return (np.broadcast_to(_expand_reduced(g, axes, keepdims), shape),)


class Mean(Function):
    """out = mean of x over ``axes`` (n elements each);  dx = g / n broadcast back."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        ctx.save_for_backward(x.shape, axes, keepdims)
        return np.mean(x, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        shape, axes, keepdims = ctx.saved
        n = int(np.prod([shape[ax] for ax in axes]))
        return (np.broadcast_to(_expand_reduced(g, axes, keepdims) / n, shape),)


class Max(Function):
    """out = max of x over ``axes``;  dx = g at the maxima, split evenly between ties, else 0."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
        out = np.max(x, axis=axes, keepdims=True)
        ctx.save_for_backward(x, out, axes, keepdims)
        return out if keepdims else np.squeeze(out, axis=axes)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x, out, axes, keepdims = ctx.saved
        is_max = (x == out).astype(x.dtype)  # in x's dtype, so a float32 gradient stays float32
        share = is_max / np.sum(is_max, axis=axes, keepdims=True)
        return (share * _expand_reduced(g, axes, keepdims),)


# ----------------------------------------------------------------------------- shape


class Reshape(Function):
    """out = x with a new shape (same elements);  dx = g reshaped back."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        ctx.save_for_backward(x.shape)
        try:
            return x.reshape(shape)
        except ValueError:
            raise ValueError(
                f"reshape: cannot reshape a tensor of shape {x.shape} into {tuple(shape)}"
            ) from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (shape,) = ctx.saved
        return (g.reshape(shape),)


class Permute(Function):
    """out = x with its axes reordered;  dx = g with the inverse order."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        try:
            out = x.transpose(axes)  # a view; refuses repeated or out-of-range axes
        except ValueError:
            raise ValueError(
                f"permute: {tuple(axes)} is not a permutation of the axes of a {x.ndim}-d tensor"
            ) from None
        ctx.save_for_backward(axes)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (axes,) = ctx.saved
        inverse = [0] * g.ndim  # out axis i came from input axis axes[i], so it goes back there
        for i, ax in enumerate(axes):
            inverse[ax % g.ndim] = i
        return (g.transpose(inverse),)


class BroadcastTo(Function):
    """out = x stretched to ``shape``;  dx = unbroadcast(g, x.shape)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        ctx.save_for_backward(x.shape)
        try:
            return np.broadcast_to(x, shape)
        except ValueError:
            raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {tuple(shape)}") from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (shape,) = ctx.saved
        return (unbroadcast(g, shape),)


def _is_basic_index(index: Any) -> bool:
    """True for ints, slices, None and Ellipsis (no repeated elements possible)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, int | slice | type(None) | type(Ellipsis)) for p in parts)


class GetItem(Function):
    """out = x[index] (slices, ints, integer or boolean arrays);  dx = g scattered back into zeros.

    With integer arrays an element can be picked more than once, so the scatter must add
    (``np.add.at``) rather than assign.
    """

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, index: Any) -> np.ndarray:
        ctx.save_for_backward(x.shape, x.dtype, index)
        return x[index]

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        shape, dtype, index = ctx.saved
        dx = np.zeros(shape, dtype=dtype)
        if _is_basic_index(index):
            dx[index] = g
        else:
            np.add.at(dx, index, g)
        return (dx,)


class Concat(Function):
    """out = [x_0, x_1, ...] joined along ``axis``;  dx_i = the slice of g that x_i filled."""

    @staticmethod
    def forward(ctx: Context, *xs: np.ndarray, axis: int) -> np.ndarray:
        ctx.save_for_backward(axis, [x.shape[axis] for x in xs])
        try:
            return np.concatenate(xs, axis=axis)
        except ValueError:
            shapes = ", ".join(str(x.shape) for x in xs)
            raise ValueError(f"concat: shapes {shapes} do not match except along axis {axis}") from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        axis, sizes = ctx.saved
        pieces = np.split(g, np.cumsum(sizes)[:-1], axis=axis)
        return tuple(p if need else None for p, need in zip(pieces, ctx.needs_input_grad))


class Stack(Function):
    """out = [x_0, x_1, ...] stacked along a new ``axis``;  dx_i = g taken at index i of that axis."""

    @staticmethod
    def forward(ctx: Context, *xs: np.ndarray, axis: int) -> np.ndarray:
        ctx.save_for_backward(axis)
        try:
            return np.stack(xs, axis=axis)
        except ValueError:
            shapes = ", ".join(str(x.shape) for x in xs)
            raise ValueError(f"stack: all shapes must be equal, got {shapes}") from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (axis,) = ctx.saved
        return tuple(
            np.take(g, i, axis=axis) if need else None for i, need in enumerate(ctx.needs_input_grad)
        )


class Where(Function):
    """out = a where cond else b (cond a boolean array, broadcast);  da = g where cond,  db = g elsewhere."""

    @staticmethod
    def forward(ctx: Context, a: np.ndarray, b: np.ndarray, cond: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(a.shape, b.shape, cond)
        try:
            return np.where(cond, a, b)
        except ValueError:
            raise ValueError(
                f"where: shapes {cond.shape}, {a.shape} and {b.shape} cannot be broadcast"
            ) from None

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        a_shape, b_shape, cond = ctx.saved
        zero = np.zeros((), dtype=g.dtype)
        da = unbroadcast(np.where(cond, g, zero), a_shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(np.where(cond, zero, g), b_shape) if ctx.needs_input_grad[1] else None
        return da, db


# ----------------------------------------------------------------------------- lookups and noise


def embedding_backward(
    ids: np.ndarray, grad: np.ndarray, num_rows: int, out: np.ndarray | None = None
) -> np.ndarray:
    """dweight (num_rows, dim): the rows of ``grad`` (..., dim) summed by their id in ``ids`` (...).

    Sorting the ids puts equal ids next to each other, so each run of equal ids is one
    contiguous block summed by ``np.add.reduceat``: much faster than the scatter ``np.add.at``.
    ``out``, when given, is a zeroed (num_rows, dim) array to write into.
    """
    flat_ids = ids.reshape(-1)  # (N,)
    flat_grad = grad.reshape(flat_ids.size, grad.shape[-1])  # (N, dim)
    dweight = np.zeros((num_rows, grad.shape[-1]), dtype=grad.dtype) if out is None else out
    if flat_ids.size == 0:
        return dweight
    order = np.argsort(flat_ids, kind="stable")
    sorted_ids = flat_ids[order]  # (N,)
    starts = np.flatnonzero(np.concatenate(([True], sorted_ids[1:] != sorted_ids[:-1])))  # where runs begin
    dweight[sorted_ids[starts]] = np.add.reduceat(flat_grad[order], starts, axis=0)
    return dweight


class Embedding(Function):
    """out[..., :] = weight[ids[...], :];  dweight = g scatter-added into the looked-up rows.

    A token id that occurs several times receives the sum of its gradients: ``np.add.at`` on the
    composed path (the reference), ``embedding_backward`` (sorted ids, one ``reduceat``) when the
    fused kernels were on at forward time. Then, when the weight is a leaf (``weight_is_leaf``:
    nothing reads its gradient before backward ends), that sum is started with ``threads.later``
    and finished by whichever thread is free, as ``fused.Linear`` does with dW.
    """

    @staticmethod
    def forward(
        ctx: Context, weight: np.ndarray, ids: np.ndarray, fused: bool = False, weight_is_leaf: bool = False
    ) -> np.ndarray:
        if ids.dtype.kind not in "iu":
            raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
            bad = ids.max() if ids.max() >= weight.shape[0] else ids.min()
            raise IndexError(f"embedding: id {bad} is out of range for a table of {weight.shape[0]} rows")
        ctx.save_for_backward(weight.shape, ids, fused, weight_is_leaf)
        return weight[ids]

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        shape, ids, fused, weight_is_leaf = ctx.saved
        if fused and weight_is_leaf:
            dweight = np.zeros(shape, dtype=g.dtype)
            later([lambda: embedding_backward(ids, g, shape[0], out=dweight)])
            return (dweight,)
        if fused:
            return (embedding_backward(ids, g, shape[0]),)
        dweight = np.zeros(shape, dtype=g.dtype)
        np.add.at(dweight, ids.reshape(-1), g.reshape(-1, shape[1]))
        return (dweight,)


class Dropout(Function):
    """out = x * m / (1 - p) with m ~ Bernoulli(1 - p) from the seeded generator;  dx = g * m / (1 - p)."""

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, p: float) -> np.ndarray:
        scale = np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
        mask = (get_rng().random(x.shape, dtype=np.float32) >= p) * scale
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (mask,) = ctx.saved
        return (g * mask,)


# ----------------------------------------------------------------------------- functional interface


def add(a: Any, b: Any) -> Tensor:
    return Add.apply(*_binary(a, b))


def sub(a: Any, b: Any) -> Tensor:
    return Sub.apply(*_binary(a, b))


def mul(a: Any, b: Any) -> Tensor:
    return Mul.apply(*_binary(a, b))


def div(a: Any, b: Any) -> Tensor:
    return Div.apply(*_binary(a, b))


def neg(x: Tensor) -> Tensor:
    return Neg.apply(x)


def pow(x: Tensor, exponent: float) -> Tensor:  # noqa: A001 (mirrors the operator's name)
    if isinstance(exponent, Tensor):
        raise TypeError(
            "pow: the exponent must be a Python number (use exp(b * log(a)) for a tensor exponent)"
        )
    return Pow.apply(x, exponent=float(exponent))


def exp(x: Tensor) -> Tensor:
    return Exp.apply(x)


def log(x: Tensor) -> Tensor:
    return Log.apply(x)


def sqrt(x: Tensor) -> Tensor:
    return Sqrt.apply(x)


def tanh(x: Tensor) -> Tensor:
    return Tanh.apply(x)


def relu(x: Tensor) -> Tensor:
    return ReLU.apply(x)


def gelu(x: Tensor) -> Tensor:
    return GELU.apply(x)


def cast(x: Tensor, dtype: np.dtype) -> Tensor:
    if x.dtype == dtype:
        return x
    if dtype.kind != "f" and x.requires_grad:
        raise TypeError(f"cast: cannot cast a tensor that requires grad to {dtype}")
    return Cast.apply(x, dtype=dtype)


def matmul(a: Any, b: Any) -> Tensor:
    return MatMul.apply(*_binary(a, b))


def sum(x: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Sum.apply(x, axes=_normalize_axes(axis, x.ndim), keepdims=keepdims)


def mean(x: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:
    return Mean.apply(x, axes=_normalize_axes(axis, x.ndim), keepdims=keepdims)


def max(x: Tensor, axis: Axis = None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Max.apply(x, axes=_normalize_axes(axis, x.ndim), keepdims=keepdims)


def reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return Reshape.apply(x, shape=tuple(shape))


def permute(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    return Permute.apply(x, axes=tuple(axes))


def transpose(x: Tensor, axis0: int = -2, axis1: int = -1) -> Tensor:
    """Swap two axes (a permute)."""
    axes = list(range(x.ndim))
    axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
    return permute(x, tuple(axes))


def broadcast_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return BroadcastTo.apply(x, shape=tuple(shape))


def getitem(x: Tensor, index: Any) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem.apply(x, index=index)


def concat(tensors: list[Tensor], axis: int = 0) -> Tensor:
    if not tensors:
        raise ValueError("concat: needs at least one tensor")
    return Concat.apply(*[as_tensor(t) for t in tensors], axis=axis)


def stack(tensors: list[Tensor], axis: int = 0) -> Tensor:
    if not tensors:
        raise ValueError("stack: needs at least one tensor")
    return Stack.apply(*[as_tensor(t) for t in tensors], axis=axis)


def where(cond: Any, a: Any, b: Any) -> Tensor:
    """Elementwise ``a if cond else b``; ``cond`` is a boolean array (never differentiated)."""
    cond = np.asarray(cond.data if isinstance(cond, Tensor) else cond)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: the condition must be a boolean array, got dtype {cond.dtype}")
    a, b = _binary(a, b)
    return Where.apply(a, b, cond=cond)


def masked_fill(x: Tensor, mask: Any, value: float) -> Tensor:
    """``x`` with ``value`` wherever ``mask`` is True (e.g. -inf above the diagonal for attention)."""
    return where(mask, as_tensor(value, like=x), x)


def embedding(weight: Tensor, ids: Any) -> Tensor:
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``ids`` (...): shape (..., dim)."""
    ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    return Embedding.apply(weight, ids=ids, fused=fused_kernels_enabled(), weight_is_leaf=weight.is_leaf)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p); identity when not training."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return Dropout.apply(x, p=p)


autograd.ops = sys.modules[__name__]  # Tensor's operators call the functions above (see autograd.py)
