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

The arithmetic of three kernels is also a set of plain functions on arrays, which can write into
given arrays: ``gelu_forward`` and ``gelu_backward``, ``layer_norm_forward``, ``layer_norm_backward``
and ``layer_norm_weight_grads``, ``attention_forward`` and ``attention_backward``. The kernels call
them; so do the fast cached decoding step (``model/decode.py``, without autograd; checked by
``tests/test_fast_decode.py``) and the transformer block as one node (``model/fused_block.py``,
which runs them on each thread's rows; checked by ``tests/test_fused_block.py``).

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

Each kernel cuts its work into independent pieces that ``tinypft.threads`` runs at once, on
``set_num_threads(n)`` threads: blocks of output rows of a GEMM, blocks of whole sequences for
attention, blocks of rows for the elementwise passes. In ``Linear.backward`` and ``LayerNorm.backward``
a leaf weight's gradient is started with ``threads.later`` and finished by whichever thread is free
while backward goes on (``Tensor.backward`` waits for it at the end); otherwise dx and dW run side by side.
A piece is the same arithmetic on its own rows, so the results do not depend on the thread count
(``tests/test_fused.py::test_kernels_split_over_threads_give_the_same_numbers``); small arrays
(decoding) stay in one piece, with no threading overhead.

Notation: ``g`` is dL/d(out); reductions over the last axis keep it (``keepdims=True``) so the
result broadcasts back. Reductions call the ufunc's ``reduce`` (``np.add.reduce`` is what
``ndarray.sum`` computes, without its wrapper's overhead, which counts on decoding's tiny arrays).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np

from ..threads import later, parallel, parallel_for, pieces
from .autograd import Context, Function, Tensor
from .ops import GELU_C, unbroadcast

GELU_A = 0.044715
GEMM_PIECE = 1 << 21  # multiply-adds: a GEMM is cut into pieces of at least this much work
ELEMENTWISE_PIECE = 1 << 15  # elements: an elementwise pass is cut into pieces of at least this many


def _rows(a: np.ndarray) -> np.ndarray:
    """``a`` as a 2-d array of rows (..., n) -> (N, n), a view when ``a`` is contiguous (0-d: (1, 1))."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def _min_rows(row_size: int, work: int | None = None) -> int:
    """How many rows of ``row_size`` items (``work`` in all, ELEMENTWISE_PIECE by default) make a
    piece worth its own thread."""
    work = ELEMENTWISE_PIECE if work is None else work
    return max(1, -(-work // max(row_size, 1)))

# ----------------------------------------------------------------------------- linear


class Linear(Function):
    """y = x W^T + b for x (..., in), W (out, in), b (out,), as one GEMM on x viewed as (N, in).

    dx = g W            (N, out) @ (out, in)
    dW = g^T x          (out, N) @ (N, in): the sum over all N rows in one GEMM
    db = sum_rows g     (out,)

    When W and b are leaves (``weights_are_leaves``, the usual case: a model's parameters), nothing
    reads dW and db before backward ends: when dW is wanted, the two are started with
    ``threads.later`` and computed by whichever thread is free, while dx and the ops after it go on
    (``Tensor.backward`` waits for them before it touches ``.grad``). db alone (BitFit) is too little
    work to run beside dx that way: then dx and db are cut into pieces for the threads as usual.
    """

    @staticmethod
    def forward(
        ctx: Context, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
        weights_are_leaves: bool = False,
    ) -> np.ndarray:
        x2 = x.reshape(-1, x.shape[-1])  # (N, in), a view when x is contiguous
        y = np.empty((x2.shape[0], weight.shape[0]), dtype=x.dtype)  # (N, out)

        def rows(s: slice) -> None:  # y[s] = x[s] W^T + b; weight.T is a view, BLAS reads it transposed
            np.matmul(x2[s], weight.T, out=y[s])
            if bias is not None:
                y[s] += bias

        parallel_for(x2.shape[0], rows, _min_rows(weight.size, GEMM_PIECE))
        needs = ctx.needs_input_grad
        # keep only what backward will read: x for dW, W for dx
        ctx.save_for_backward(
            x.shape, x2 if needs[1] else None, weight if needs[0] else None, weights_are_leaves
        )
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x_shape, x2, weight, weights_are_leaves = ctx.saved
        needs = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1])  # (N, out)
        (N, n_out), n_in = g2.shape, x_shape[-1]
        dx = np.empty((N, n_in), dtype=g.dtype) if needs[0] else None  # (N, in)
        dw = np.empty((n_out, n_in), dtype=g.dtype) if needs[1] else None  # (out, in)
        db = np.empty(n_out, dtype=g.dtype) if len(needs) == 3 and needs[2] else None  # (out,)
        dx_rows = _min_rows(n_out * n_in, GEMM_PIECE)
        if weights_are_leaves and dw is not None:  # dW and db finish on a free thread; dx is needed now
            weight_tasks = [lambda: np.matmul(g2.T, x2, out=dw)]
            if db is not None:
                weight_tasks.append(lambda: np.add.reduce(g2, axis=0, out=db))
            later(weight_tasks)
            if dx is not None:
                parallel_for(N, lambda s: np.matmul(g2[s], weight, out=dx[s]), dx_rows)
        else:
            # the products are independent (and cost the same): each is cut into blocks of its output
            # rows, as many as there are threads for it (on two threads: dx on one, dW on the other)
            products = (dx is not None) + (dw is not None)
            tasks = []
            if dx is not None:
                for s in pieces(N, dx_rows, share=products):
                    tasks.append(lambda s=s: np.matmul(g2[s], weight, out=dx[s]))
            if dw is not None:
                for s in pieces(n_out, _min_rows(N * n_in, GEMM_PIECE), share=products):
                    tasks.append(lambda s=s: np.matmul(g2[:, s].T, x2, out=dw[s]))
            if db is not None:
                for s in pieces(n_out, _min_rows(N)):
                    tasks.append(lambda s=s: np.add.reduce(g2[:, s], axis=0, out=db[s]))
            parallel(tasks)
        dx = None if dx is None else dx.reshape(x_shape)
        return (dx, dw) if len(needs) == 2 else (dx, dw, db)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    leaves = weight.is_leaf and (bias is None or bias.is_leaf)
    if bias is None:
        return Linear.apply(x, weight, weights_are_leaves=leaves)
    return Linear.apply(x, weight, bias, weights_are_leaves=leaves)


# ----------------------------------------------------------------------------- gelu


def gelu_forward(
    x: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """GELU on an array: y = x s, s = sigmoid(2u) (see ``GELU``); returns y and s, which backward needs
    (written into ``out`` = (y, s), contiguous arrays of x's shape, when given)."""
    y, s = out or (np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype))  # (...) each, contiguous (0-d too)
    x2, y2, s2 = _rows(x), _rows(y), _rows(s)

    def rows(r: slice) -> None:
        xr, sr = x2[r], s2[r]
        np.multiply(xr, xr, out=sr)
        sr *= -2 * GELU_C * GELU_A
        sr -= 2 * GELU_C
        sr *= xr  # -2u
        with np.errstate(over="ignore"):  # exp(-2u) = inf for very negative x gives s = 0, the exact limit
            np.exp(sr, out=sr)
        sr += 1
        np.reciprocal(sr, out=sr)  # s = sigmoid(2u)
        np.multiply(xr, sr, out=y2[r])

    parallel_for(x2.shape[0], rows, _min_rows(x2.shape[1]))
    return y, s


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
        return (gelu_backward(x, s, g),)


def gelu_backward(x: np.ndarray, s: np.ndarray, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """GELU's dx for x, its saved s and the incoming g (see ``GELU``), written into ``out`` (a
    contiguous array of x's shape) when given."""
    dx = np.empty(x.shape, x.dtype) if out is None else out  # (...), contiguous
    s_ds = np.empty(x.shape, x.dtype)  # (...), contiguous
    x2, s2, g2, dx2, s_ds2 = _rows(x), _rows(s), _rows(g), _rows(dx), _rows(s_ds)

    def rows(r: slice) -> None:
        xr, sr, d, t = x2[r], s2[r], dx2[r], s_ds2[r]
        np.multiply(xr, xr, out=d)
        d *= 6 * GELU_A * GELU_C
        d += 2 * GELU_C  # 2 du/dx
        d *= xr
        np.subtract(1, sr, out=t)
        t *= sr  # s (1 - s)
        d *= t
        d += sr
        d *= g2[r]

    parallel_for(x2.shape[0], rows, _min_rows(x2.shape[1]))
    return dx


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
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
    out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm of x (..., d) on arrays (see ``LayerNorm``): returns y (..., d), mean and rstd (..., 1)
    (written into ``out`` = (y, mean, rstd), contiguous arrays of those shapes, when given)."""
    d = x.shape[-1]
    y, mean, rstd = out or (
        np.empty(x.shape, x.dtype),  # (..., d)
        np.empty((*x.shape[:-1], 1), x.dtype),  # (..., 1)
        np.empty((*x.shape[:-1], 1), x.dtype),  # (..., 1)
    )
    x2, y2, mean2, rstd2 = _rows(x), _rows(y), _rows(mean), _rows(rstd)

    def rows(r: slice) -> None:
        m, yr, sd = mean2[r], y2[r], rstd2[r]
        np.add.reduce(x2[r], axis=-1, keepdims=True, out=m)  # ndarray.mean is the same sum, more Python
        m /= d
        np.subtract(x2[r], m, out=yr)  # centred
        np.copyto(sd, np.vecdot(yr, yr)[:, None])  # sum of squares
        sd /= d  # biased variance
        sd += eps
        np.sqrt(sd, out=sd)
        np.reciprocal(sd, out=sd)
        yr *= sd  # x_hat
        yr *= weight
        yr += bias

    parallel_for(x2.shape[0], rows, _min_rows(d))
    return y, mean, rstd


class LayerNorm(Function):
    """y = x_hat * w + b over the last axis (size d),  x_hat = (x - mean) * rstd,  rstd = 1/sqrt(var + eps).

    With gw = g * w and means over the last axis:
        dx = rstd * (gw - mean(gw) - x_hat * mean(gw * x_hat))
        dw = sum(g * x_hat),  db = sum(g)   (sums over all leading axes)
    Only mean and rstd (one number per row) are saved: backward recomputes x_hat from x, which
    is cheaper than keeping a second (..., d) array alive from forward to backward. As in
    ``Linear``, dw and db are started with ``threads.later`` when w and b are leaves.
    """

    @staticmethod
    def forward(
        ctx: Context, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
        weights_are_leaves: bool = False,
    ) -> np.ndarray:
        y, mean, rstd = layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(x, mean, rstd, weight, weights_are_leaves)
        return y

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        x, mean, rstd, weight, weights_are_leaves = ctx.saved
        need_x, need_w, need_b = ctx.needs_input_grad
        x_hat, dx = layer_norm_backward(x, mean, rstd, weight, g, need_x)
        dw, db, tasks = layer_norm_weight_grads(g, x_hat, need_w, need_b)
        # nothing reads a leaf's gradient before backward ends: then the sums may finish later
        (later if weights_are_leaves else parallel)(tasks)
        return dx, dw, db


def layer_norm_backward(
    x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, weight: np.ndarray, g: np.ndarray, need_dx: bool,
    out: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """LayerNorm's x_hat (recomputed from x, mean and rstd) and dx (None unless ``need_dx``), each
    (..., d) (see ``LayerNorm``); written into ``out`` = (x_hat, dx), contiguous, when given."""
    d = x.shape[-1]
    x_hat, dx = out or (np.empty(x.shape, x.dtype), np.empty(x.shape, x.dtype) if need_dx else None)
    x2, g2, mean2, rstd2, x_hat2 = _rows(x), _rows(g), _rows(mean), _rows(rstd), _rows(x_hat)
    dx2 = None if dx is None else _rows(dx)

    def rows(r: slice) -> None:
        xh = x_hat2[r]
        np.subtract(x2[r], mean2[r], out=xh)
        xh *= rstd2[r]
        if dx2 is None:
            return
        dxr = dx2[r]
        np.multiply(g2[r], weight, out=dxr)  # gw
        mean_gw = np.add.reduce(dxr, axis=-1, keepdims=True)  # (rows, 1)
        mean_gw /= d
        mean_gwx = np.vecdot(dxr, xh)[:, None]  # (rows, 1)
        mean_gwx /= d
        dxr -= xh * mean_gwx
        dxr -= mean_gw
        dxr *= rstd2[r]

    parallel_for(x2.shape[0], rows, _min_rows(d))
    return x_hat, dx


def layer_norm_weight_grads(
    g: np.ndarray, x_hat: np.ndarray, need_w: bool, need_b: bool
) -> tuple[np.ndarray | None, np.ndarray | None, list[Callable[[], None]]]:
    """Empty dw and db (d,) (None where not needed) and the two tasks that fill them, the sums
    over all rows dw = sum(g * x_hat), db = sum(g), for the caller to run."""
    g2, x_hat2 = _rows(g), _rows(x_hat)
    d = x_hat2.shape[1]
    dw = np.empty(d, x_hat.dtype) if need_w else None  # (d,)
    db = np.empty(d, x_hat.dtype) if need_b else None  # (d,)
    tasks = []
    if dw is not None:
        tasks.append(lambda: np.einsum("nd,nd->d", g2, x_hat2, out=dw))
    if db is not None:
        tasks.append(lambda: np.add.reduce(g2, axis=0, out=db))
    return dw, db, tasks


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    return LayerNorm.apply(x, weight, bias, eps=eps, weights_are_leaves=weight.is_leaf and bias.is_leaf)


# ----------------------------------------------------------------------------- cross entropy


class CrossEntropy(Function):
    """loss = mean over the n counted rows r of  logsumexp(z_r) - z_r[t_r],  z the logits as (N, C).

    d loss / d z_r = (softmax(z_r) - onehot(t_r)) / n for a counted row, 0 for an ignored one.

    When most rows count (a language model's loss ignores one position per sequence), every row
    is computed in place and the ignored ones are left out of the mean and given a zero gradient:
    no copy of the counted logits and no scatter of their gradient into a zeroed (N, C) array.
    Otherwise only the counted rows are gathered and computed. Either way a counted row gets the
    same arithmetic.
    """

    @staticmethod
    def forward(ctx: Context, logits: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> np.ndarray:
        flat = logits.reshape(-1, logits.shape[-1])  # (N, C)
        (N, C), n = flat.shape, rows.size
        every_row = 2 * n >= N  # compute all N rows (in place) rather than gather the n counted ones
        if every_row:
            picked_targets = np.zeros(N, targets.dtype)  # (N,): an ignored row picks class 0, never used
            picked_targets[rows] = targets[rows]
        else:
            picked_targets = targets[rows]  # (n,)
        m = len(picked_targets)  # rows computed
        e = np.empty((m, C), logits.dtype)  # softmax numerators exp(z - max z)
        total = np.empty((m, 1), logits.dtype)  # their sums
        target_logit = np.empty(m, logits.dtype)  # z_t - max z

        def computed_rows(r: slice) -> None:
            z = flat[r] if every_row else flat[rows[r]]  # (rows, C)
            er = e[r]
            np.subtract(z, np.maximum.reduce(z, axis=1, keepdims=True), out=er)  # shifted: <= 0
            target_logit[r] = er[np.arange(len(er)), picked_targets[r]]
            np.exp(er, out=er)
            np.add.reduce(er, axis=1, keepdims=True, out=total[r])

        parallel_for(m, computed_rows, _min_rows(C))
        losses = np.log(total[:, 0]) - target_logit  # (m,)
        loss = np.mean(losses if m == n else losses[rows])  # the n counted rows, in order
        ignored = None  # (N,) True at the rows computed but not counted
        if m != n:
            ignored = np.ones(N, bool)
            ignored[rows] = False
        ctx.save_for_backward(logits.shape, n, rows, picked_targets, e, total, ignored)
        return np.asarray(loss, dtype=logits.dtype)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        shape, n, rows, picked_targets, e, total, ignored = ctx.saved
        g_n = g / n
        dz = np.empty(e.shape, e.dtype)  # (rows computed, C)

        def computed_rows(r: slice) -> None:
            d = dz[r]
            np.multiply(e[r], g_n / total[r], out=d)  # softmax * g/n
            d[np.arange(len(d)), picked_targets[r]] -= g_n
            if ignored is not None:
                d[ignored[r]] = 0  # a row that does not count has no gradient

        parallel_for(len(dz), computed_rows, _min_rows(e.shape[1]))
        num_rows = int(np.prod(shape[:-1]))
        if len(dz) == num_rows:  # every row was computed
            return (dz.reshape(shape),)
        dflat = np.zeros((num_rows, shape[-1]), dtype=dz.dtype)  # (N, C)
        dflat[rows] = dz
        return (dflat.reshape(shape),)


def cross_entropy(logits: Tensor, flat_targets: np.ndarray, rows: np.ndarray) -> Tensor:
    return CrossEntropy.apply(logits, targets=flat_targets, rows=rows)


# ----------------------------------------------------------------------------- attention


def _sequences(a: np.ndarray, s: slice, batch: int) -> np.ndarray:
    """The sequences ``s`` of an attention operand (B, ...) whose batch is ``batch``; the operand itself
    when it is broadcast over the batch (batch axis 1, or no batch axis)."""
    return a[s] if a.ndim == 4 and a.shape[0] == batch else a


def _over_sequences(body: Callable[[slice], None], batch: tuple[int, ...], Tq: int, Tk: int, d: int) -> None:
    """``body(s)`` for blocks s of the B sequences of attention operands (B, H, Tq|Tk, d), in parallel;
    ``body(slice(None))`` (everything) unless they are 4-d. A sequence costs about H Tq Tk d multiply-adds."""
    if len(batch) != 2:
        body(slice(None))
        return
    parallel_for(batch[0], body, _min_rows(batch[1] * Tq * Tk * d, GEMM_PIECE))


def _heads_side_by_side(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An empty (B, H, T, d) array laid out as (B, T, H, d): the view the model gets by splitting
    heads, so that merging them back (permute, then reshape to (B, T, H d)) and the gradients of the
    split (reshape of the permuted view) need no copy. Any other shape: a plain contiguous array."""
    if len(shape) != 4:
        return np.empty(shape, dtype)
    B, H, T, d = shape
    return np.empty((B, T, H, d), dtype).transpose(0, 2, 1, 3)


def attention_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, score_bias: np.ndarray | None,
    into: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention on arrays (see ``Attention``): returns out = P V (B, H, Tq, d) and P (B, H, Tq, Tk)
    (written into ``into`` = (out, P) when given).

    ``score_bias`` (broadcastable to (B, H, Tq, Tk)) is added to the scores: 0 where attending is
    allowed, the dtype's minimum where it is not; None when every key is visible. Sequences are
    independent: blocks of them run on the threads of ``tinypft.threads``.
    """
    scale = q.shape[-1] ** -0.5  # a Python float: keeps float32 float32
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])  # (B, H)
    Tq, Tk = q.shape[-2], k.shape[-2]
    out, p = into or (
        _heads_side_by_side((*batch, Tq, v.shape[-1]), q.dtype),  # (B, H, Tq, d)
        np.empty((*batch, Tq, Tk), q.dtype),  # (B, H, Tq, Tk)
    )
    B = batch[0] if len(batch) == 2 else 0

    def sequences(s: slice) -> None:
        q_s, k_s, v_s, p_s = _sequences(q, s, B), _sequences(k, s, B), _sequences(v, s, B), p[s]
        np.matmul(q_s * scale, np.swapaxes(k_s, -1, -2), out=p_s)  # the scores S
        if score_bias is not None:
            p_s += _sequences(score_bias, s, B)
        p_s -= np.maximum.reduce(p_s, axis=-1, keepdims=True)
        _exp_normalize(p_s, axis=-1)  # P
        np.matmul(p_s, v_s, out=out[s])

    _over_sequences(sequences, batch, Tq, Tk, q.shape[-1])
    return out, p


_last_mask: list = [None]  # (weak reference to a read-only mask, dtype, its score bias, fully masked rows?)


def mask_bias(mask: np.ndarray | None, dtype: np.dtype) -> tuple[np.ndarray | None, bool]:
    """What attention adds to the scores for a boolean ``mask`` (True: may attend): 0 where attending
    is allowed and the dtype's minimum where it is not (None when nothing is masked), and whether
    some query may attend to nothing.

    A model passes the same mask to each of its layers. A read-only mask cannot change between
    them (GPT makes its mask read-only), so the result for the last read-only mask is kept and
    reused: the layers after the first skip the (B, 1, S, Tk) ``np.where`` and the row check.
    """
    if mask is None:
        return None, False
    last = _last_mask[0]
    if last is not None and last[0]() is mask and last[1] == dtype:
        return last[2], last[3]
    bias, empty_rows = None, False
    if not mask.all():  # an all-True mask (one prompt, decoding) changes nothing
        bias = np.where(mask, 0, np.finfo(dtype).min)  # e.g. (Tq, Tk) or (B, 1, Tq, Tk)
        empty_rows = not mask.any(axis=-1).all()  # some query may attend to nothing
    if not mask.flags.writeable:
        _last_mask[0] = (weakref.ref(mask), dtype, bias, empty_rows)
    return bias, empty_rows


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
        bias, empty_rows = mask_bias(mask, q.dtype)
        out, p = attention_forward(q, k, v, bias)  # (B, H, Tq, d), (B, H, Tq, Tk)
        ctx.save_for_backward(q, k, v, p, out, mask if empty_rows else None, q.shape[-1] ** -0.5)
        return out

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        q, k, v, p, out, empty_row_mask, scale = ctx.saved
        need_q, need_k, need_v = ctx.needs_input_grad
        batch = p.shape[:-2]  # (B, H)
        dq = _heads_side_by_side((*batch, *q.shape[-2:]), q.dtype) if need_q else None  # (B, H, Tq, d)
        dk = _heads_side_by_side((*batch, *k.shape[-2:]), k.dtype) if need_k else None  # (B, H, Tk, d)
        dv = _heads_side_by_side((*batch, *v.shape[-2:]), v.dtype) if need_v else None  # (B, H, Tk, d)
        attention_backward(q, k, v, p, out, g, empty_row_mask, scale, into=(dq, dk, dv))
        dq = None if dq is None else unbroadcast(dq, q.shape)
        dk = None if dk is None else unbroadcast(dk, k.shape)
        dv = None if dv is None else unbroadcast(dv, v.shape)
        return dq, dk, dv


def attention_backward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, p: np.ndarray, out: np.ndarray, g: np.ndarray,
    empty_row_mask: np.ndarray | None, scale: float,
    into: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
) -> None:
    """Attention's dQ, dK, dV (see ``Attention``) written into ``into`` (None: not wanted), each
    (B, H, T, d) over the batch of p (B, H, Tq, Tk), from what forward returned (out, P) and g."""
    dq, dk, dv = into
    batch = p.shape[:-2]  # (B, H)
    B = batch[0] if len(batch) == 2 else 0

    def sequences(s: slice) -> None:
        p_s, g_s = p[s], g[s]
        if dv is not None:
            np.matmul(np.swapaxes(p_s, -1, -2), g_s, out=dv[s])
        if dq is None and dk is None:
            return
        ds = np.matmul(g_s, np.swapaxes(_sequences(v, s, B), -1, -2))  # dP
        ds -= np.vecdot(g_s, out[s])[..., None]  # sum(dP * P)
        ds *= p_s  # dS
        if empty_row_mask is not None:
            np.copyto(ds, 0, where=~_sequences(empty_row_mask, s, B))
        if dq is not None:
            np.matmul(ds, _sequences(k, s, B), out=dq[s])
            dq[s] *= scale
        if dk is not None:
            np.matmul(np.swapaxes(ds, -1, -2), _sequences(q, s, B), out=dk[s])
            dk[s] *= scale

    _over_sequences(sequences, batch, p.shape[-2], p.shape[-1], q.shape[-1])


def attention(q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None = None) -> Tensor:
    if mask is not None:
        mask = np.asarray(mask.data if isinstance(mask, Tensor) else mask, dtype=bool)
    return Attention.apply(q, k, v, mask=mask)
