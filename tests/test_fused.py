"""The fused kernels against the composed reference versions: same values, same gradients.

Every kernel is checked three ways: its value agrees with the composed path (float32 loosely,
float64 tightly), its gradient passes a finite-difference gradcheck, and its gradient equals the
composed path's gradient. Further tests pin the promises of the fast path: no weight-gradient
matmul for a frozen weight, no writes into inputs or incoming gradients, float32 stays float32.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinypft import Tensor, gradcheck
from tinypft.engine import functional as F
from tinypft.engine import fused, ops, use_fused_kernels
from tinypft.threads import num_threads

Kernel = Callable[..., Tensor]
Shapes = list[tuple[int, ...]]


def tensors(shapes: Shapes, dtype: type = np.float64, seed: int = 0, scale: float = 1.0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal(s) * scale, requires_grad=True, dtype=dtype) for s in shapes]


def run(fn: Kernel, inputs: list[Tensor], fused_kernels: bool) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Value and input gradients of ``fn`` on one path, for a fixed random output gradient."""
    for t in inputs:
        t.grad = None
    with use_fused_kernels(fused_kernels):
        out = fn(*inputs)
        direction = np.random.default_rng(1).standard_normal(out.shape).astype(out.dtype)
        out.backward(direction)
    grads = [t.grad for t in inputs]
    for t in inputs:
        t.grad = None
    return out.data, grads


TIGHT = {"rtol": 1e-12, "atol": 1e-14}  # float64 values: a few roundings apart
TIGHT_GRAD = {"rtol": 1e-10, "atol": 1e-12}  # float64 gradients: the two paths sum in different orders
LOOSE = {"rtol": 2e-4, "atol": 2e-5}  # float32


def assert_paths_agree(fn: Kernel, inputs: list[Tensor], tol: dict, grad_tol: dict | None = None) -> None:
    value_c, grads_c = run(fn, inputs, fused_kernels=False)
    value_f, grads_f = run(fn, inputs, fused_kernels=True)
    assert value_f.dtype == value_c.dtype and value_f.shape == value_c.shape
    np.testing.assert_allclose(value_f, value_c, **tol, err_msg="values differ")
    for i, (gc, gf) in enumerate(zip(grads_c, grads_f)):
        assert (gc is None) == (gf is None), f"input {i}: gradient present on one path only"
        if gc is not None:
            assert gf.dtype == gc.dtype
            np.testing.assert_allclose(gf, gc, **(grad_tol or tol), err_msg=f"gradients of input {i} differ")


def check_kernel(fn: Kernel, shapes: Shapes, scale: float = 1.0) -> None:
    """float64: tight agreement and gradcheck of the fused path; float32: loose agreement."""
    inputs64 = tensors(shapes, np.float64, scale=scale)
    assert_paths_agree(fn, inputs64, TIGHT, TIGHT_GRAD)
    with use_fused_kernels(True):
        gradcheck(fn, inputs64)
    assert_paths_agree(fn, tensors(shapes, np.float32, scale=scale), LOOSE)


# ----------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4), (4,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear(x_shape: tuple[int, ...], with_bias: bool) -> None:
    if with_bias:
        check_kernel(lambda x, w, b: F.linear(x, w, b), [x_shape, (3, 4), (3,)])
    else:
        check_kernel(lambda x, w: F.linear(x, w), [x_shape, (3, 4)])


@pytest.mark.parametrize("shape", [(), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_gelu(shape: tuple[int, ...], scale: float) -> None:
    check_kernel(F.gelu, [shape], scale=scale)


def test_gelu_saturates_without_warnings() -> None:
    x = Tensor(np.array([-200.0, -30.0, 0.0, 30.0, 200.0]), requires_grad=True)
    with use_fused_kernels(True), np.errstate(over="raise", invalid="raise", divide="raise"):
        y = F.gelu(x)
        y.backward(np.ones(5, np.float32))
    np.testing.assert_allclose(y.data, [0, 0, 0, 30, 200], atol=1e-6)
    np.testing.assert_allclose(x.grad, [0, 0, 0.5, 1, 1], atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis: int) -> None:
    check_kernel(lambda x: F.softmax(x, axis), [(3, 4, 5)], scale=3.0)


@pytest.mark.parametrize("x_shape", [(5, 6), (2, 3, 6)])
def test_layer_norm(x_shape: tuple[int, ...]) -> None:
    check_kernel(lambda x, w, b: F.layer_norm(x, w, b, 1e-5), [x_shape, (6,), (6,)])


def test_layer_norm_eps_matters() -> None:
    x = tensors([(3, 4)], scale=1e-3)[0]  # variance of the order of eps
    w, b = tensors([(4,), (4,)], seed=1)
    assert_paths_agree(lambda x, w, b: F.layer_norm(x, w, b, 1e-5), [x, w, b], TIGHT, TIGHT_GRAD)
    with use_fused_kernels(True):
        gradcheck(lambda x, w, b: F.layer_norm(x, w, b, 1e-5), [x, w, b])


@pytest.mark.parametrize(
    "targets",
    [
        np.array([[1, 4, 3], [0, 2, 2]]),  # every position counts
        np.array([[1, -100, 3], [-100, 2, 0]]),  # ignore_index at some positions
        np.array([[-100, -100, -100], [-100, 2, -100]]),  # a single counted position
    ],
)
def test_cross_entropy(targets: np.ndarray) -> None:
    check_kernel(lambda z: F.cross_entropy(z, targets), [(2, 3, 5)], scale=3.0)


def test_cross_entropy_computes_counted_rows_alike_in_place_or_gathered() -> None:
    """Mostly counted rows are computed in place (the ignored ones get exactly zero gradient), mostly
    ignored ones by gathering the counted rows: a counted row gets the same numbers either way."""
    rng = np.random.default_rng(5)
    counted = rng.standard_normal((4, 7)).astype(np.float32) * 3
    targets = np.array([2, 0, 6, 3])
    results = []
    for extra in (1, 5):  # 4 of 5 rows count (in place), 4 of 9 (gathered)
        ignored = rng.standard_normal((extra, 7)).astype(np.float32)
        z = Tensor(np.concatenate([counted, ignored]), requires_grad=True)
        with use_fused_kernels(True):
            loss = F.cross_entropy(z, np.concatenate([targets, np.full(extra, -100)]))
        loss.backward()
        assert np.all(z.grad[4:] == 0)
        results.append((loss.data, z.grad[:4]))
    assert results[0][0].tobytes() == results[1][0].tobytes()
    assert results[0][1].tobytes() == results[1][1].tobytes()


def test_cross_entropy_custom_ignore_index_and_2d_logits() -> None:
    targets = np.array([0, 7, 2, 7])
    check_kernel(lambda z: F.cross_entropy(z, targets, ignore_index=7), [(4, 5)])


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    logits = Tensor(np.array([[1e4, 0.0, -1e4], [5e3, 5e3, 0.0]]), requires_grad=True)  # float32
    with use_fused_kernels(True), np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = F.cross_entropy(logits, np.array([0, 1]))
        loss.backward()
    np.testing.assert_allclose(loss.item(), np.log(2) / 2, rtol=1e-6)
    np.testing.assert_allclose(logits.grad, [[0, 0, 0], [0.25, -0.25, 0]], atol=1e-7)


def _padding_mask(B: int, Tq: int, Tk: int) -> np.ndarray:
    """(B, 1, Tq, Tk): causal, and in batch row 1 the first key is padding."""
    keys = np.ones((B, Tk), bool)
    keys[1, 0] = False
    return F.causal_mask(Tq, Tk)[None, None] & keys[:, None, None, :]


def _fully_masked_mask(B: int, Tq: int, Tk: int) -> np.ndarray:
    """(B, 1, Tq, Tk): causal, with query 0 of batch row 0 allowed to see nothing."""
    mask = np.broadcast_to(F.causal_mask(Tq, Tk), (B, 1, Tq, Tk)).copy()
    mask[0, 0, 0, :] = False
    return mask


@pytest.mark.parametrize(
    "Tq, Tk, make_mask",
    [
        (4, 4, None),
        (4, 4, lambda B, Tq, Tk: F.causal_mask(Tq, Tk)),
        (3, 5, lambda B, Tq, Tk: F.causal_mask(Tq, Tk)),  # keys in front: a prefix or a KV cache
        (1, 5, lambda B, Tq, Tk: F.causal_mask(Tq, Tk)),  # one new query against a cache
        (3, 5, _padding_mask),
        (3, 5, _fully_masked_mask),
    ],
)
def test_attention(Tq: int, Tk: int, make_mask: Callable | None) -> None:
    B, H, d = 2, 2, 4
    mask = None if make_mask is None else make_mask(B, Tq, Tk)
    check_kernel(lambda q, k, v: F.attention(q, k, v, mask), [(B, H, Tq, d), (B, H, Tk, d), (B, H, Tk, d)])


def test_attention_fully_masked_row_is_uniform() -> None:
    q, k, v = tensors([(2, 1, 3, 4), (2, 1, 5, 4), (2, 1, 5, 4)])
    with use_fused_kernels(True):
        out = F.attention(q, k, v, _fully_masked_mask(2, 3, 5))
    assert np.isfinite(out.data).all()
    np.testing.assert_allclose(out.data[0, 0, 0], v.data[0, 0].mean(axis=0), rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 5), extra=st.integers(0, 3),
    d=st.integers(1, 6), causal=st.booleans(), seed=st.integers(0, 2**16),
)
def test_attention_any_shape(B: int, H: int, Tq: int, extra: int, d: int, causal: bool, seed: int) -> None:
    Tk = Tq + extra
    mask = F.causal_mask(Tq, Tk) if causal else None
    inputs = tensors([(B, H, Tq, d), (B, H, Tk, d), (B, H, Tk, d)], seed=seed)
    assert_paths_agree(lambda q, k, v: F.attention(q, k, v, mask), inputs, TIGHT, TIGHT_GRAD)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), d=st.integers(2, 9), scale=st.floats(1e-2, 1e2), seed=st.integers(0, 2**16))
def test_layer_norm_and_softmax_any_shape(rows: int, d: int, scale: float, seed: int) -> None:
    x, w, b = tensors([(rows, d), (d,), (d,)], seed=seed, scale=scale)
    assert_paths_agree(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b], TIGHT, TIGHT_GRAD)
    assert_paths_agree(lambda x: F.softmax(x, -1), [x], TIGHT, TIGHT_GRAD)


# ----------------------------------------------------------------------------- promises of the fast path


def test_fused_is_the_default() -> None:
    code = "from tinypft.engine import fused_kernels_enabled; print(fused_kernels_enabled())"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.stdout.strip() == "True"


class _CountingMatmul:
    def __init__(self) -> None:
        self.calls = 0
        self.matmul = np.matmul

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        self.calls += 1
        return self.matmul(*args, **kwargs)


@pytest.mark.parametrize("x_requires_grad, expected", [(True, 1), (False, 0)])
def test_frozen_weight_costs_no_weight_gradient_matmul(
    monkeypatch: pytest.MonkeyPatch, x_requires_grad: bool, expected: int
) -> None:
    x, w, b = tensors([(2, 3, 4), (5, 4), (5,)], np.float32)
    x.requires_grad = x_requires_grad
    w.requires_grad = False  # BitFit: only the bias trains
    with use_fused_kernels(True):
        y = F.linear(x, w, b)
        counter = _CountingMatmul()
        monkeypatch.setattr(fused.np, "matmul", counter)
        y.backward(np.ones(y.shape, np.float32))
    assert counter.calls == expected  # dx = g W when x needs it; never dW = g^T x
    assert w.grad is None and b.grad is not None
    np.testing.assert_allclose(b.grad, np.full(5, 6.0))


def test_attention_computes_only_the_gradients_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, v = tensors([(1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)], np.float32)
    q.requires_grad = k.requires_grad = False  # e.g. only a value prefix trains
    with use_fused_kernels(True):
        out = F.attention(q, k, v, F.causal_mask(3, 5))
        counter = _CountingMatmul()
        monkeypatch.setattr(fused.np, "matmul", counter)
        out.backward(np.ones(out.shape, np.float32))
    assert counter.calls == 1  # dV = P^T g only
    assert q.grad is None and k.grad is None and v.grad.shape == v.shape


CASES: dict[str, tuple[Kernel, Shapes]] = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
    "gelu": (F.gelu, [(3, 4)]),
    "softmax": (lambda x: F.softmax(x, -1), [(3, 4)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [(3, 4), (4,), (4,)]),
    "cross_entropy": (lambda z: F.cross_entropy(z, np.array([[1, -100], [0, 2]])), [(2, 2, 3)]),
    "attention": (
        lambda q, k, v: F.attention(q, k, v, F.causal_mask(3, 5)),
        [(1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_inputs_and_incoming_gradient_are_not_modified(name: str) -> None:
    fn, shapes = CASES[name]
    inputs = tensors(shapes, np.float32)
    before = [t.data.copy() for t in inputs]
    with use_fused_kernels(True):
        out = fn(*inputs)
        g = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
        g_before = g.copy()
        out.backward(g)  # the output's own node receives this very array
    for t, b in zip(inputs, before):
        np.testing.assert_array_equal(t.data, b)
    np.testing.assert_array_equal(g, g_before)


@pytest.mark.parametrize("name", CASES)
def test_backward_twice_with_retained_graph(name: str) -> None:
    """A second backward through the same nodes gives the same gradients (saved arrays are intact)."""
    fn, shapes = CASES[name]
    inputs = tensors(shapes, np.float64)
    with use_fused_kernels(True):
        out = fn(*inputs)
        g = np.random.default_rng(1).standard_normal(out.shape)
        out.backward(g, retain_graph=True)
        first = [t.grad.copy() for t in inputs]
        out.backward(g)
    for t, f in zip(inputs, first):
        np.testing.assert_allclose(t.grad, 2 * f, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", CASES)
def test_float32_stays_float32(name: str) -> None:
    fn, shapes = CASES[name]
    inputs = tensors(shapes, np.float32)
    with use_fused_kernels(True):
        out = fn(*inputs)
        out.backward(np.ones(out.shape, np.float32))
    assert out.dtype == np.float32
    assert all(t.grad.dtype == np.float32 for t in inputs)


# ----------------------------------------------------------------------------- kernels split over threads

SPLIT_CASES: dict[str, tuple[Kernel, Shapes]] = {
    **CASES,
    "linear_no_bias": (lambda x, w: F.linear(x, w), [(3, 5, 4), (6, 4)]),
    "linear_frozen_weight": (lambda x, w, b: F.linear(x, w.detach(), b), [(3, 5, 4), (6, 4), (6,)]),
    "attention_padding": (
        lambda q, k, v: F.attention(q, k, v, _padding_mask(4, 3, 5)),
        [(4, 2, 3, 4), (4, 2, 5, 4), (4, 2, 5, 4)],
    ),
    "attention_fully_masked": (
        lambda q, k, v: F.attention(q, k, v, _fully_masked_mask(3, 3, 5)),
        [(3, 2, 3, 4), (3, 2, 5, 4), (3, 2, 5, 4)],
    ),
    "attention_shared_keys": (  # keys and values broadcast over the batch, e.g. a prefix
        lambda q, k, v: F.attention(q, k, v, F.causal_mask(3, 5)),
        [(4, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)],
    ),
    "cross_entropy_ignored_rows": (
        lambda z: F.cross_entropy(z, np.array([[1, -100, 2], [0, 2, -100], [-100, 1, 1]])),
        [(3, 3, 4)],
    ),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", SPLIT_CASES)
def test_kernels_split_over_threads_give_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch, name: str, dtype: type
) -> None:
    """With pieces as small as one row or sequence, two threads give exactly the numbers of one
    thread (each piece is the same arithmetic on its own rows), and they agree with the composed path."""
    monkeypatch.setattr(fused, "GEMM_PIECE", 1)
    monkeypatch.setattr(fused, "ELEMENTWISE_PIECE", 1)
    fn, shapes = SPLIT_CASES[name]
    inputs = tensors(shapes, dtype)
    with num_threads(1):
        value_1, grads_1 = run(fn, inputs, fused_kernels=True)
    with num_threads(2):
        value_2, grads_2 = run(fn, inputs, fused_kernels=True)
        exact = dtype == np.float64
        assert_paths_agree(fn, inputs, TIGHT if exact else LOOSE, TIGHT_GRAD if exact else LOOSE)
    np.testing.assert_array_equal(value_2, value_1)
    for g1, g2 in zip(grads_1, grads_2):
        np.testing.assert_array_equal(g2, g1)


def test_threads_split_a_real_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """At two threads a large enough GEMM really is cut into two row blocks, one per thread."""
    seen: set[str] = set()
    matmul = np.matmul

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        seen.add(threading.current_thread().name)
        time.sleep(0.05)  # holds this block long enough for the other thread to take the next one
        return matmul(*args, **kwargs)

    x, w = tensors([(1024, 64), (64, 64)], np.float32)
    monkeypatch.setattr(fused.np, "matmul", spy)
    with num_threads(2), use_fused_kernels(True):
        y = F.linear(x, w)
    assert len(seen) == 2
    np.testing.assert_allclose(y.data, x.data @ w.data.T, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- weight gradients read later


def _linear_then_mul(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """(x * 2) W^T + b: backward runs Linear's, then Mul's (which the weight gradient need not wait for)."""
    return F.linear(x * 2.0, w, b)


def test_weight_gradients_of_leaves_finish_while_backward_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """At two threads a leaf weight's dW is started with ``threads.later``: the next op's backward
    runs before it is done, and ``Tensor.backward`` returns only once it is (same numbers as one thread)."""
    x, w, b = tensors([(64, 16), (8, 16), (8,)], np.float32)
    with num_threads(1):
        _, expected = run(_linear_then_mul, [x, w, b], fused_kernels=True)
    events: list[str] = []
    matmul, mul_backward = np.matmul, ops.Mul.backward

    def slow_dw(a: Any, c: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        if a.shape == (8, 64):  # g^T x: the weight gradient
            time.sleep(0.2)
            result = matmul(a, c, *args, **kwargs)
            events.append("dW done")
            return result
        return matmul(a, c, *args, **kwargs)

    def recorded_mul_backward(ctx: Any, g: np.ndarray) -> tuple:
        events.append("Mul.backward")
        return mul_backward(ctx, g)

    monkeypatch.setattr(fused.np, "matmul", slow_dw)
    monkeypatch.setattr(ops.Mul, "backward", staticmethod(recorded_mul_backward))
    with num_threads(2):
        _, got = run(_linear_then_mul, [x, w, b], fused_kernels=True)
    assert events == ["Mul.backward", "dW done"]  # the earlier op did not wait for dW
    for g1, g2 in zip(expected, got):
        np.testing.assert_array_equal(g2, g1)


def test_weight_that_is_computed_gets_its_gradient_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A weight that is not a leaf (here W * 1) passes its gradient to another op's backward, which
    reads it at once: nothing is started with ``later`` then, and the gradients are right."""
    x, w, b, scale = tensors([(64, 16), (16, 16), (16,), (16,)], np.float64)
    started: list[int] = []
    later = fused.later
    monkeypatch.setattr(fused, "later", lambda tasks: (started.append(len(tasks)), later(tasks)))

    def computed_weight(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.linear(x, w * 1.0, b)

    def computed_scale(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return F.layer_norm(x, w * 1.0, b)

    with num_threads(2):
        assert_paths_agree(computed_weight, [x, w, b], TIGHT, TIGHT_GRAD)
        assert_paths_agree(computed_scale, [x, scale, b], TIGHT, TIGHT_GRAD)
        assert started == []
        assert_paths_agree(F.linear, [x, w, b], TIGHT, TIGHT_GRAD)
        assert started == [2]  # dW and db of the leaf weights
        assert_paths_agree(F.layer_norm, [x, scale, b], TIGHT, TIGHT_GRAD)
        assert started == [2, 2]  # dw and db of the leaf scale and shift


def test_a_leaf_used_twice_sums_its_gradients_in_order() -> None:
    """A weight used by two layers (tied) gets both contributions, summed as one thread sums them."""
    x, w = tensors([(32, 12), (12, 12)], np.float32)

    def twice(x: Tensor, w: Tensor) -> Tensor:
        return F.linear(F.linear(x, w, None).tanh(), w, None)

    with num_threads(1):
        _, expected = run(twice, [x, w], fused_kernels=True)
    with num_threads(2):
        _, got = run(twice, [x, w], fused_kernels=True)
    for g1, g2 in zip(expected, got):
        np.testing.assert_array_equal(g2, g1)
    x64, w64 = tensors([(32, 12), (12, 12)], np.float64)
    with num_threads(2), use_fused_kernels(True):
        gradcheck(twice, [x64, w64])


def test_later_runs_its_tasks_and_passes_on_their_errors() -> None:
    """``later`` runs its tasks at once on one thread, on the pool otherwise; ``wait_later`` waits for
    them all and raises a task's exception; the pool still works afterwards."""
    from tinypft import threads

    done: list[int] = []
    with num_threads(1):
        threads.later([lambda: done.append(1)])
        assert done == [1]
        threads.wait_later()
    with num_threads(2):
        threads.later([])  # nothing to start, nothing to wait for
        threads.later([lambda: (time.sleep(0.05), done.append(2))])
        threads.later([lambda: done.append(3), lambda: 1 / 0])
        with pytest.raises(ZeroDivisionError):
            threads.wait_later()
        assert sorted(done) == [1, 2, 3]
        threads.wait_later()  # nothing left to wait for
        threads.later([lambda: done.append(4)])
        threads.wait_later()
        assert done[-1] == 4
        # a finished task lets go of what it holds at once, not at wait_later (memory)
        array = np.ones(1000)
        held = weakref.ref(array)
        threads.later([lambda a=array: a.sum()])
        del array
        deadline = time.monotonic() + 10
        while held() is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert held() is None
        threads.wait_later()


# ----------------------------------------------------------------------------- embedding backward


@pytest.mark.parametrize("ids_shape, num_rows", [((4, 6), 5), ((7,), 100), ((0,), 3), ((2, 3), 1)])
def test_embedding_backward_matches_scatter_add(ids_shape: tuple[int, ...], num_rows: int) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, num_rows, ids_shape)  # repeated ids, and (for 100 rows) unused rows
    grad = rng.standard_normal((*ids_shape, 3)).astype(np.float32)
    expected = np.zeros((num_rows, 3), np.float32)
    np.add.at(expected, ids.reshape(-1), grad.reshape(-1, 3))
    for id_dtype in (np.int64, np.uint16):
        got = ops.embedding_backward(ids.astype(id_dtype), grad, num_rows)
        assert got.shape == (num_rows, 3) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_mask_bias_is_reused_only_for_a_read_only_mask() -> None:
    """GPT passes one read-only mask to every layer: its bias is computed once. A writable mask may
    change between calls, so its bias is computed afresh each time."""
    mask = np.tril(np.ones((5, 5), bool))[None, None].repeat(2, axis=0)  # (2, 1, 5, 5)
    mask[1, 0, 3] = False  # a query that attends to nothing
    bias, empty = fused.mask_bias(mask, np.dtype(np.float32))
    assert empty and bias.dtype == np.float32
    np.testing.assert_array_equal(bias, np.where(mask, 0, np.finfo(np.float32).min))
    assert fused.mask_bias(mask, np.dtype(np.float32))[0] is not bias  # writable: not reused
    mask[0, 0, 4, 0] = False  # ... and indeed changed
    assert fused.mask_bias(mask, np.dtype(np.float32))[0][0, 0, 4, 0] == np.finfo(np.float32).min
    mask.flags.writeable = False
    first = fused.mask_bias(mask, np.dtype(np.float32))[0]
    assert fused.mask_bias(mask, np.dtype(np.float32))[0] is first  # read-only: reused
    assert fused.mask_bias(mask, np.dtype(np.float64))[0].dtype == np.float64  # another dtype: its own
    assert fused.mask_bias(np.ones((3, 3), bool), np.dtype(np.float32)) == (None, False)
