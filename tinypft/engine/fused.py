"""Fused kernels: fast versions of the composites of ``functional.py``, one Function each.

The composites of ``functional.py`` are the definitions; each kernel here computes the same function
faster, and each composite hands its work to its kernel while the fused kernels are switched on
(``use_fused_kernels``, on by default). What each kernel must agree with, and the tests that check it:

    kernel        reference (the definition)     agreement checked by
    Linear        functional.linear               tests/test_fused.py::test_linear
    GELU          ops.GELU (functional.gelu)      tests/test_fused.py::test_gelu
    Softmax       functional.softmax              tests/test_fused.py::test_softmax
    LayerNorm     functional.layer_norm           tests/test_fused.py::test_layer_norm
    CrossEntropy  functional.cross_entropy        tests/test_fused.py::test_cross_entropy
    Attention     functional.attention            tests/test_fused.py::test_attention

Each of those tests compares values and gradients on both paths and gradchecks the kernel;
``tinypft selftest`` gradchecks every kernel again and requires its forward values to match the
reference to 1e-10 in float64 (its ``[fused]`` rows).

The arithmetic of three forwards is also a plain function on arrays (``gelu_forward``,
``layer_norm_forward``, ``attention_forward``): the fast cached decoding step (``model/decode.py``)
runs them without autograd, and ``tests/test_fast_decode.py`` checks it against the general path.

The composed versions record one graph node per primitive and allocate a fresh array at every
step. Here each kernel is one node whose backward is derived by hand (the math is in each
docstring), and the arithmetic reuses the arrays the kernel itself allocated (``out=`` and in-place
ufuncs). Three rules keep that safe:

* never write into an input array, into the incoming gradient ``g``, or into an array saved by
  another op (they may be shared);
* never write into this kernel's own saved arrays in ``backward`` (``retain_graph=True`` may run
  it twice);
* compute only the gradients that ``ctx.needs_input_grad`` asks for: a frozen weight costs no
  weight-gradient matmul.

Notation: ``g`` is dL/d(out); reductions over the last axis keep it (``keepdims=True``) so the
result broadcasts back. Reductions call the ufunc's ``reduce`` (``np.add.reduce`` is what
``ndarray.sum`` computes, without its wrapper's overhead, which counts on decoding's tiny arrays).
"""

from __future__ import annotations

import numpy as np

from .autograd import Context, Function, Tensor
from .ops import GELU_C, unbroadcast

GELU_A = 0.044715

# ----------------------------------------------------------------------------- linear


class Linear(Function):
    """y = x W^T + b for x (..., in), W (out, in), b (out,), as one GEMM on x viewed as (N, in).

    dx = g W            (N, out) @ (out, in)
    dW = g^T x          (out, N) @ (N, in): the sum over all N rows in one GEMM
    db = sum_rows g     (out,)
    """

    @staticmethod
    def forward(
        ctx: Context, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None
    ) -> np.ndarray:
        x2 = x.reshape(-1, x.shape[-1])  # (N, in), a view when x is contiguous
        y = np.matmul(x2, weight.T)  # (N, out); weight.T is a view, BLAS reads it transposed
        if bias is not None:
            y += bias
        needs = ctx.needs_input_grad
        # keep only what backward will read: x for dW, W for dx
        ctx.save_for_backward(x.shape, x2 if needs[1] else None, weight if needs[0] else None)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x_shape, x2, weight = ctx.saved
        needs = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        dx = np.matmul(g2, weight).reshape(x_shape) if needs[0] else None  # (..., in)
        dw = np.matmul(g2.T, x2) if needs[1] else None  # (out, in)
        if len(needs) == 2:
            return dx, dw
        db = g2.sum(axis=0) if needs[2] else None  # (out,)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


# ----------------------------------------------------------------------------- gelu


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GELU on an array: y = x s, s = sigmoid(2u) (see ``GELU``); returns y and s, which backward needs."""
    s = np.multiply(x, x, out=np.empty_like(x))  # (...); out= keeps even a 0-d result an array
    s *= -2 * GELU_C * GELU_A
    s -= 2 * GELU_C
    s *= x  # -2u
    with np.errstate(over="ignore"):  # exp(-2u) = inf for very negative x gives s = 0, the exact limit
        np.exp(s, out=s)
    s += 1
    np.reciprocal(s, out=s)  # s = sigmoid(2u)
    return np.multiply(x, s, out=np.empty_like(x)), s  # (...) each


class GELU(Function):
    """GPT-2's GELU: y = x/2 (1 + tanh(u)),  u = c (x + a x^3),  c = sqrt(2/pi),  a = 0.044715.

    (1 + tanh(u))/2 is the sigmoid s = 1 / (1 + exp(-2u)), so y = x s: one exp instead of a tanh
    (which costs twice as much). With du/dx = c (1 + 3 a x^2):
        dx = g [ s + 2 x s (1 - s) du/dx ]
    """

    @staticmethod
    def forward(ctx: Context, x: np.ndarray) -> np.ndarray:
        y, s = gelu_forward(x)
        ctx.save_for_backward(x, s)
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x, s = ctx.saved
        dx = np.multiply(x, x, out=np.empty_like(x))  # (...)
        dx *= 6 * GELU_A * GELU_C
        dx += 2 * GELU_C  # 2 du/dx
        dx *= x
        s_ds = np.subtract(1, s, out=np.empty_like(s))  # (...)
        s_ds *= s  # s (1 - s)
        dx *= s_ds
        dx += s
        dx *= g
        return (dx,)


def gelu(x: Tensor) -> Tensor:
    return GELU.apply(x)


# ----------------------------------------------------------------------------- softmax


def _exp_normalize(shifted: np.ndarray, axis: int) -> np.ndarray:
    """Turn ``shifted`` = x - max(x) (an array the caller owns) into softmax(x) in place."""
    np.exp(shifted, out=shifted)
    shifted /= np.add.reduce(shifted, axis=axis, keepdims=True)
    return shifted


class Softmax(Function):
    """y = exp(x - m) / sum exp(x - m) along ``axis`` (m the max, for stability).

    dy_i/dx_j = y_i (delta_ij - y_j), so  dx = y * (g - sum(g * y, axis)).
    """

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, axis: int) -> np.ndarray:
        y = _exp_normalize(x - x.max(axis=axis, keepdims=True), axis)  # shifted: exp cannot overflow
        ctx.save_for_backward(y, axis)
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        y, axis = ctx.saved
        dx = g * y
        dot = dx.sum(axis=axis, keepdims=True)  # sum(g * y)
        np.subtract(g, dot, out=dx)
        dx *= y
        return (dx,)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    return Softmax.apply(x, axis=axis)


# ----------------------------------------------------------------------------- layer norm


def layer_norm_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm of x (..., d) on arrays (see ``LayerNorm``): returns y (..., d), mean and rstd (..., 1)."""
    mean = np.add.reduce(x, axis=-1, keepdims=True)  # (..., 1); ndarray.mean is the same sum, more Python
    mean /= x.shape[-1]
    y = x - mean  # (..., d), centred
    var = np.vecdot(y, y)[..., None]  # (..., 1), sum of squares
    var /= x.shape[-1]  # biased variance
    var += eps
    rstd = np.sqrt(var, out=var)
    np.reciprocal(rstd, out=rstd)  # (..., 1)
    y *= rstd  # x_hat
    y *= weight
    y += bias
    return y, mean, rstd


class LayerNorm(Function):
    """y = x_hat * w + b over the last axis (size d),  x_hat = (x - mean) * rstd,  rstd = 1/sqrt(var + eps).

    With gw = g * w and means over the last axis:
        dx = rstd * (gw - mean(gw) - x_hat * mean(gw * x_hat))
        dw = sum(g * x_hat),  db = sum(g)   (sums over all leading axes)
    Only mean and rstd (one number per row) are saved: backward recomputes x_hat from x, which
    is cheaper than keeping a second (..., d) array alive from forward to backward.
    """

    @staticmethod
    def forward(ctx: Context, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
        y, mean, rstd = layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight)
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x, mean, rstd, weight = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        d = x.shape[-1]
        x_hat = x - mean  # (..., d)
        x_hat *= rstd
        dx = dw = db = None
        if need_w:
            dw = np.einsum("nd,nd->d", g.reshape(-1, d), x_hat.reshape(-1, d))  # (d,)
        if need_b:
            db = g.reshape(-1, d).sum(axis=0)  # (d,)
        if need_x:
            dx = g * weight  # (..., d), gw
            mean_gw = dx.mean(axis=-1, keepdims=True)  # (..., 1)
            mean_gwx = np.vecdot(dx, x_hat)[..., None]  # (..., 1)
            mean_gwx /= d
            x_hat *= mean_gwx
            dx -= x_hat
            dx -= mean_gw
            dx *= rstd
        return dx, dw, db


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    return LayerNorm.apply(x, weight, bias, eps=eps)


# ----------------------------------------------------------------------------- cross entropy


class CrossEntropy(Function):
    """loss = mean over the n counted rows r of  logsumexp(z_r) - z_r[t_r],  z the logits as (N, C).

    d loss / d z_r = (softmax(z_r) - onehot(t_r)) / n for a counted row, 0 for an ignored one.
    """

    @staticmethod
    def forward(ctx: Context, logits: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        flat = logits.reshape(-1, logits.shape[-1])  # (N, C)
        z = flat[rows] if rows.size < flat.shape[0] else flat  # (n, C): only the rows that count
        picked = np.arange(rows.size), targets[rows]
        e = z - z.max(axis=1, keepdims=True)  # (n, C), shifted: <= 0
        target_logit = e[picked]  # (n,)
        np.exp(e, out=e)
        total = e.sum(axis=1, keepdims=True)  # (n, 1)
        loss = np.mean(np.log(total[:, 0]) - target_logit)
        ctx.save_for_backward(logits.shape, flat.shape[0], rows, picked, e, total)
        return np.asarray(loss, dtype=logits.dtype)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        shape, num_rows, rows, picked, e, total = ctx.saved
        n = rows.size
        dz = e * ((g / n) / total)  # (n, C): softmax * g/n
        dz[picked] -= g / n
        if n == num_rows:
            return (dz.reshape(shape),)
        dflat = np.zeros((num_rows, shape[-1]), dtype=dz.dtype)  # (N, C)
        dflat[rows] = dz
        return (dflat.reshape(shape),)


def cross_entropy(logits: Tensor, flat_targets: np.ndarray, rows: np.ndarray) -> Tensor:
    return CrossEntropy.apply(logits, targets=flat_targets, rows=rows)


# ----------------------------------------------------------------------------- attention


def attention_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, score_bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Attention on arrays (see ``Attention``): returns out = P V (B, H, Tq, d) and P (B, H, Tq, Tk).

    ``score_bias`` (broadcastable to (B, H, Tq, Tk)) is added to the scores: 0 where attending is
    allowed, the dtype's minimum where it is not; None when every key is visible.
    """
    scale = q.shape[-1] ** -0.5  # a Python float: keeps float32 float32
    p = np.matmul(q * scale, np.swapaxes(k, -1, -2))  # (B, H, Tq, Tk), the scores S
    if score_bias is not None:
        p += score_bias
    p -= np.maximum.reduce(p, axis=-1, keepdims=True)
    _exp_normalize(p, axis=-1)  # (B, H, Tq, Tk), P
    return np.matmul(p, v), p


class Attention(Function):
    """out = P V,  P = softmax(S),  S = Q K^T * s with masked scores set to the dtype's minimum.

    q (B, H, Tq, d), k and v (B, H, Tk, d), s = 1/sqrt(d). Backward (all batched matmuls):
        dV = P^T g
        dP = g V^T
        dS = P * (dP - sum(dP * P, -1))      and  sum_j dP_ij P_ij = g_i . out_i  (no Tk-sized product)
        dQ = dS K * s,   dK = dS^T Q * s
    The scale is applied to Q (Tq x d numbers) rather than to S (Tq x Tk). Masking adds the
    dtype's minimum, which is the same as setting it (every score is far below half the spacing
    of floats that large, so the sum rounds to the minimum) and cheaper than a masked copy.
    A masked score is a constant, so dS is 0 there; P is already 0 there except on fully masked
    rows (uniform P), which are zeroed explicitly.
    """

    @staticmethod
    def forward(
        ctx: Context, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None
    ) -> np.ndarray:
        score_bias, empty_rows = None, False
        if mask is not None and not mask.all():  # an all-True mask (one prompt, decoding) changes nothing
            score_bias = np.where(mask, 0, np.finfo(q.dtype).min)  # e.g. (Tq, Tk) or (B, 1, Tq, Tk)
            empty_rows = not mask.any(axis=-1).all()  # some query may attend to nothing
        out, p = attention_forward(q, k, v, score_bias)  # (B, H, Tq, d), (B, H, Tq, Tk)
        ctx.save_for_backward(q, k, v, p, out, mask if empty_rows else None, q.shape[-1] ** -0.5)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        q, k, v, p, out, empty_row_mask, scale = ctx.saved
        need_q, need_k, need_v = ctx.needs_input_grad
        dq = dk = dv = None
        if need_v:
            dv = unbroadcast(np.matmul(np.swapaxes(p, -1, -2), g), v.shape)  # (B, H, Tk, d)
        if need_q or need_k:
            ds = np.matmul(g, np.swapaxes(v, -1, -2))  # (B, H, Tq, Tk), dP
            ds -= np.vecdot(g, out)[..., None]  # (B, H, Tq, 1), sum(dP * P)
            ds *= p  # dS
            if empty_row_mask is not None:
                np.copyto(ds, 0, where=~empty_row_mask)
            if need_q:
                dq = np.matmul(ds, k)  # (B, H, Tq, d)
                dq *= scale
                dq = unbroadcast(dq, q.shape)
            if need_k:
                dk = np.matmul(np.swapaxes(ds, -1, -2), q)  # (B, H, Tk, d)
                dk *= scale
                dk = unbroadcast(dk, k.shape)
        return dq, dk, dv


def attention(q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None = None) -> Tensor:
    if mask is not None:
        mask = np.asarray(mask.data if isinstance(mask, Tensor) else mask, dtype=bool)
    return Attention.apply(q, k, v, mask=mask)
