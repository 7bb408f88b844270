"""Checkers for the lesson exercises: each tests a student's function against the library.

Every ``check_*`` function runs the student's code on several inputs and compares it with tinypft's
own version (or with finite differences). It prints one line when everything agrees and otherwise
raises an ``AssertionError`` that says which input failed, what was expected and what came back,
and gives a hint. A ``NotImplementedError`` raised by an unfinished exercise passes through
unchanged, so an empty stub reads as "not done yet" rather than as a wrong answer.

The checkers leave the engine's global state (default dtype, fused setting, random generator) as
they found it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import numpy as np

from ..engine import Tensor, default_dtype, fused_kernels_enabled, get_rng, gradcheck, set_fused_kernels
from ..engine import functional as F
from ..engine.autograd import Context, Function
from ..engine.gradcheck import GradcheckError
from ..engine.ops import unbroadcast
from ..model import GPT, CausalSelfAttention, GPTConfig

# ----------------------------------------------------------------------------- helpers


def _fail(check: str, message: str, hint: str | None = None) -> NoReturn:
    text = f"{check}: {message}"
    if hint:
        text += f"\nHint: {hint}"
    raise AssertionError(text)


def _passed(check: str, what: str) -> None:
    print(f"{check}: passed ({what}).")


def _call(check: str, where: str, fn: Callable[..., Any], *args: Any, hint: str | None = None) -> Any:
    """Call the student's function; any crash other than the stub's NotImplementedError becomes a failure."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:
        _fail(check, f"{where}: your function raised {type(exc).__name__}: {exc}", hint)


def _array(value: Any) -> np.ndarray:
    return value.data if isinstance(value, Tensor) else np.asarray(value)


def _show(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), precision=4, threshold=40, edgeitems=3, separator=", ")


def _compare(
    check: str,
    where: str,
    got: Any,
    expected: np.ndarray,
    hint: str | None = None,
    atol: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """Fail unless ``got`` has ``expected``'s shape and values (within the tolerances)."""
    got_array = _array(got)
    if got_array.dtype.kind not in "biuf":
        _fail(
            check,
            f"{where}: got {type(got).__name__} of {got_array.dtype}, expected an array of numbers",
            hint,
        )
    if got_array.shape != expected.shape:
        _fail(check, f"{where}: got shape {got_array.shape}, expected shape {expected.shape}", hint)
    if got_array.dtype.kind == "b" or expected.dtype.kind == "b":
        bad = got_array != expected
    else:
        with np.errstate(invalid="ignore"):
            bad = ~np.isclose(got_array, expected, atol=atol, rtol=rtol)
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    message = (
        f"{where}: {int(bad.sum())} of {bad.size} values differ; first at index {list(index)}: "
        f"got {_scalar(got_array[index])}, expected {_scalar(expected[index])}"
    )
    if expected.size <= 48:
        message += f"\n  got:      {_show(got_array)}\n  expected: {_show(expected)}"
    if got_array.dtype.kind == "f" and np.isnan(got_array).any():
        message += "\n  (your result contains NaN)"
    _fail(check, message, hint)


def _scalar(value: Any) -> str:
    return f"{float(value):.10g}" if np.asarray(value).dtype.kind == "f" else repr(value.item())


def _matches(got: Any, candidate: np.ndarray, atol: float = 1e-8) -> bool:
    got_array = _array(got)
    return (
        got_array.dtype.kind in "biuf"
        and got_array.shape == candidate.shape
        and bool(np.allclose(got_array, candidate, atol=atol, rtol=1e-6))
    )


@contextlib.contextmanager
def _engine_state() -> Iterator[None]:
    """Restore the global random generator (model construction draws from it) and the fused setting."""
    rng_state = get_rng().bit_generator.state
    fused = fused_kernels_enabled()
    try:
        yield
    finally:
        get_rng().bit_generator.state = rng_state
        set_fused_kernels(fused)


def _leaf(array: np.ndarray) -> Tensor:
    return Tensor(array, requires_grad=True, dtype=np.float64)


def _require_tensor_with_graph(check: str, where: str, out: Any, inputs: Sequence[Tensor]) -> Tensor:
    if not isinstance(out, Tensor):
        _fail(
            check,
            f"{where}: your function returned {type(out).__name__}, expected a tinypft Tensor",
            "build the result from Tensor operations (+, *, @, .sum(), .exp() ...) so gradients can flow",
        )
    if any(t.requires_grad for t in inputs) and not out.requires_grad:
        _fail(
            check,
            f"{where}: the result is not connected to the inputs (requires_grad is False)",
            "do not leave the graph: avoid .data, .numpy() and NumPy functions on the inputs",
        )
    return out


def _grads_of(out: Tensor, grad_out: np.ndarray, tensors: Sequence[Tensor]) -> list[np.ndarray]:
    """Backpropagate ``grad_out`` from ``out`` and return the gradients of ``tensors`` (zeros if none)."""
    for t in tensors:
        t.grad = None
    out.backward(grad_out)
    grads = [t.grad.copy() if t.grad is not None else np.zeros_like(t.data) for t in tensors]
    for t in tensors:
        t.grad = None
    return grads


# ----------------------------------------------------------------------------- lesson 1: autograd


class _Node:
    """A stand-in for a graph node: only ``_prev`` (the nodes it was computed from) matters."""

    def __init__(self, label: str, *prev: _Node):
        self.label = label
        self._prev = tuple(prev)

    def __repr__(self) -> str:
        return self.label


def _graphs() -> list[tuple[str, _Node, list[_Node]]]:
    """(name, root, nodes reachable from root) for a few graph shapes."""
    graphs = []
    a = _Node("a")
    graphs.append(("a single node", a, [a]))

    a = _Node("a")
    b = _Node("b", a)
    c = _Node("c", b)
    graphs.append(("a chain a -> b -> c", c, [a, b, c]))

    a = _Node("a")
    b, c = _Node("b", a), _Node("c", a)
    d = _Node("d", b, c)
    graphs.append(("a diamond (a feeds b and c, both feed d)", d, [a, b, c, d]))

    x = _Node("x")
    y = _Node("y", x, x)
    z = _Node("z", y, x)
    graphs.append(("x used twice by y = x * x, then z = y + x", z, [x, y, z]))

    rng = np.random.default_rng(0)
    nodes: list[_Node] = []
    for i in range(40):
        k = 0 if i < 3 else int(rng.integers(1, 3))
        parents = [nodes[int(j)] for j in rng.choice(i, size=k, replace=False)] if k else []
        nodes.append(_Node(f"n{i}", *parents))
    root = nodes[-1]
    seen, stack = {id(root)}, [root]
    while stack:
        for p in stack.pop()._prev:
            if id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    reachable = [n for n in nodes if id(n) in seen]
    graphs.append(("a random graph of 40 nodes (some of them not reachable from the root)", root, reachable))

    chain = [_Node("c0")]
    for i in range(1, 5000):
        chain.append(_Node(f"c{i}", chain[-1]))
    graphs.append(("a chain of 5000 nodes", chain[-1], chain))
    return graphs


def check_topological_sort(fn: Callable[[Any], Sequence[Any]]) -> None:
    """``fn(root)`` must return root and every node reachable through ``._prev``, each exactly once,
    every node after all the nodes in its ``._prev``; so the root comes last."""
    check = "check_topological_sort"
    graphs = _graphs()
    for name, root, reachable in graphs:
        try:
            order = fn(root)
        except NotImplementedError:
            raise
        except RecursionError:
            _fail(
                check,
                f"on {name}: RecursionError (Python allows about 1000 nested calls)",
                "walk the graph with an explicit stack (a list to append to and pop from), not recursion",
            )
        except Exception as exc:
            _fail(check, f"on {name}: your function raised {type(exc).__name__}: {exc}")
        if not isinstance(order, list | tuple):
            _fail(check, f"on {name}: returned {type(order).__name__}, expected a list of nodes")
        ids = [id(n) for n in order]
        if len(set(ids)) != len(ids):
            twice = next(n for n in order if ids.count(id(n)) > 1)
            _fail(
                check,
                f"on {name}: node {twice!r} appears more than once",
                "remember which nodes you have visited (a set of id(node)) and skip them",
            )
        wanted = {id(n) for n in reachable}
        missing = [n for n in reachable if id(n) not in set(ids)]
        if missing:
            _fail(
                check,
                f"on {name}: {len(missing)} reachable node(s) missing, e.g. {missing[0]!r}",
                "follow ._prev from every node you visit, not only from the root",
            )
        extra = [n for n in order if id(n) not in wanted]
        if extra:
            _fail(check, f"on {name}: node {extra[0]!r} is not reachable from the root but is in the order")
        position = {id(n): i for i, n in enumerate(order)}
        for node in order:
            for parent in node._prev:
                if position[id(parent)] > position[id(node)]:
                    shown = ", ".join(map(repr, order[:12])) + (", ..." if len(order) > 12 else "")
                    _fail(
                        check,
                        f"on {name}: node {node!r} comes before its input {parent!r} (order: {shown})",
                        "append a node only after all of its inputs have been appended (post-order)",
                    )
        if order[-1] is not root:
            _fail(
                check,
                f"on {name}: the root {root!r} should come last, it is at position {position[id(root)]}",
            )
    _passed(check, f"{len(graphs)} graphs, including a diamond and a 5000-node chain")


UNBROADCAST_CASES = [
    ((3, 3, 3), ()),
    ((3, 3), (3, 1)),
    ((2, 3, 4), (1, 4)),
    ((2, 3, 4), (4,)),
    ((2, 3, 4), (2, 1, 4)),
    ((2, 3), (1, 1)),
    ((4, 5), (4, 5)),
    ((2, 1, 3), (1, 3)),
]


def check_unbroadcast(fn: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]) -> None:
    """``fn(grad, shape)`` must sum a gradient of the broadcast shape back down to ``shape``."""
    check = "check_unbroadcast"
    rng = np.random.default_rng(1)
    hint = (
        "sum over the leading axes that broadcasting prepended, then (with keepdims=True) over every axis "
        "where shape has 1 but grad does not; finish with .reshape(shape)"
    )
    for grad_shape, shape in UNBROADCAST_CASES:
        grad = rng.standard_normal(grad_shape)
        before = grad.copy()
        got = _call(check, f"fn(grad of shape {grad_shape}, {shape})", fn, grad, shape, hint=hint)
        if not np.array_equal(grad, before):
            _fail(
                check, f"fn(grad of shape {grad_shape}, {shape}) modified grad in place", "return a new array"
            )
        if isinstance(got, Tensor):
            _fail(check, "your function returned a Tensor; it works on NumPy arrays and must return one")
        _compare(
            check,
            f"fn(grad of shape {grad_shape}, {shape})",
            np.asarray(got),
            unbroadcast(grad, shape),
            hint,
            atol=1e-12,
            rtol=1e-12,
        )
    _passed(check, f"{len(UNBROADCAST_CASES)} shape pairs, from (3, 3, 3) -> () to (2, 3, 4) -> (1, 4)")


MUL_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 4), (3, 1))]


def _backward_pair(check: str, where: str, op: type, ctx: Context, g: np.ndarray, hint: str | None) -> Any:
    grads = _call(check, where, op.backward, ctx, g, hint=hint)
    if not isinstance(grads, tuple | list) or len(grads) != 2:
        _fail(
            check,
            f"{where}: returned {grads!r:.80}, expected a tuple (da, db)",
            "backward returns one entry per input of forward, `return da, db` (None for one not needed)",
        )
    return grads


def check_mul_backward(op: type) -> None:
    """``op`` must be a ``Function`` computing a * b, with a backward that sums broadcast axes back,
    returns None for an input whose ``ctx.needs_input_grad`` is False, and passes a gradcheck."""
    check = "check_mul_backward"
    if not (isinstance(op, type) and issubclass(op, Function)):
        _fail(
            check,
            f"expected a subclass of tinypft.Function, got {op!r}",
            "write `class MyMul(Function):` with static methods forward(ctx, a, b) and backward(ctx, g)",
        )
    rng = np.random.default_rng(2)
    shape_hint = (
        "each gradient must have its input's shape: unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)"
    )
    cases = []
    for sa, sb in MUL_SHAPES:
        a, b = np.asarray(rng.standard_normal(sa)), np.asarray(rng.standard_normal(sb))
        cases.append((f"a {sa} * b {sb}", a, b, rng.standard_normal(np.broadcast_shapes(sa, sb))))
    for where, a, b, g in cases:  # forward and backward called directly, both gradients needed
        ctx = Context((True, True))
        out = _call(check, f"{where}: forward", op.forward, ctx, a, b)
        _compare(check, f"{where}: forward", out, a * b, "forward returns the elementwise product a * b")
        grads = _backward_pair(check, f"{where}: backward", op, ctx, g, shape_hint)
        da_hint = f"da = g * b (by the product rule), summed to a's shape; {shape_hint}"
        _compare(check, f"{where}: da", grads[0], unbroadcast(g * b, a.shape), da_hint)
        db_hint = f"db = g * a (by the product rule), summed to b's shape; {shape_hint}"
        _compare(check, f"{where}: db", grads[1], unbroadcast(g * a, b.shape), db_hint)
    for where, a, b, g in cases:  # one input frozen
        for needs in ((True, False), (False, True)):
            ctx = Context(needs)
            op.forward(ctx, a, b)
            label = f"{where}: backward with needs_input_grad={needs}"
            grads = _backward_pair(check, label, op, ctx, g, None)
            frozen, live = needs.index(False), needs.index(True)
            expected = unbroadcast(g * b, a.shape) if live == 0 else unbroadcast(g * a, b.shape)
            _compare(check, f"{where}: d{'ab'[live]} with needs_input_grad={needs}", grads[live], expected)
            if grads[frozen] is not None:
                _fail(
                    check,
                    f"{where}: backward with ctx.needs_input_grad={needs} computed a gradient for "
                    f"{'ab'[frozen]}, which does not need one",
                    "return None for an input whose ctx.needs_input_grad entry is False: "
                    "a frozen input should cost no work",
                )
    for where, a, b, _ in cases:  # through the graph: apply, then backward
        try:
            gradcheck(lambda x, y: op.apply(x, y), [_leaf(a), _leaf(b)], names=["a", "b"])
        except NotImplementedError:
            raise
        except GradcheckError as exc:
            _fail(check, f"{where}: through the graph (op.apply and .backward()): {exc}")
    _passed(check, f"{len(MUL_SHAPES)} shape pairs with broadcasting, frozen inputs, and gradcheck")


def check_central_difference(
    fn: Callable[[Callable[[np.ndarray], float], np.ndarray, float], np.ndarray],
) -> None:
    """``fn(f, x, eps)`` must return the array of (f(x + eps e_j) - f(x - eps e_j)) / (2 eps), x's shape,
    leaving ``x`` as it found it."""
    check = "check_central_difference"
    cases: list[
        tuple[
            str, Callable[[np.ndarray], float], Callable[[np.ndarray], np.ndarray], np.ndarray, float, float
        ]
    ] = [
        (
            "f(x) = sum(x**3), x of shape (2, 2)",
            lambda x: float(np.sum(x**3)),
            lambda x: 3 * x**2,
            np.array([[1.0, 2.0], [-1.5, 0.5]]),
            1e-3,
            1e-5,
        ),
        (
            "f(x) = sum(sin(x) * x), x of shape (5,)",
            lambda x: float(np.sum(np.sin(x) * x)),
            lambda x: np.cos(x) * x + np.sin(x),
            np.linspace(-2.0, 2.0, 5),
            1e-5,
            1e-8,
        ),
        (
            "f(x) = x[0] * x[1] + x[1]**2, x of shape (2,)",
            lambda x: float(x[0] * x[1] + x[1] ** 2),
            lambda x: np.array([x[1], x[0] + 2 * x[1]]),
            np.array([0.7, -1.2]),
            1e-5,
            1e-8,
        ),
        (
            "f(x) = exp(x).sum() on a (2, 3, 2) array",
            lambda x: float(np.exp(x).sum()),
            np.exp,
            np.random.default_rng(3).standard_normal((2, 3, 2)),
            1e-5,
            1e-8,
        ),
    ]
    for name, f, df, x, eps, tol in cases:
        x_before = x.copy()
        got = _call(check, f"{name}, eps={eps}", fn, f, x, eps)
        if got is None:
            _fail(check, f"{name}: your function returned None", "return the array of difference quotients")
        if not np.array_equal(x, x_before):
            _fail(
                check,
                f"{name}: x was changed by your function",
                "after evaluating f at x + eps and x - eps, put the original value back",
            )
        got_array = np.asarray(got, dtype=np.float64)
        expected = df(x)
        if got_array.shape == expected.shape and not np.allclose(got_array, expected, atol=tol, rtol=0):
            flat = x.reshape(-1).copy()
            forward = np.empty_like(flat)
            for j in range(flat.size):
                step = flat.copy()
                step[j] += eps
                forward[j] = (f(step.reshape(x.shape)) - f(x)) / eps
            if np.allclose(got_array.reshape(-1), forward, atol=1e-8, rtol=1e-9):
                _fail(
                    check,
                    f"{name}, eps={eps}: this is the one-sided difference (f(x + eps) - f(x)) / eps",
                    "use the central difference (f(x + eps) - f(x - eps)) / (2 eps): its error is O(eps^2), "
                    "the one-sided one's is O(eps)",
                )
            everything = (f(x + eps) - f(x - eps)) / (2 * eps)
            if np.allclose(got_array, everything, atol=tol):
                _fail(
                    check,
                    f"{name}: every entry is the same number, the change of f when ALL of x moves",
                    "perturb one element at a time: only x[j] moves when computing entry j",
                )
        _compare(
            check,
            f"{name}, eps={eps} (compared with the exact derivative, tolerance {tol:g})",
            got_array,
            expected,
            "entry j is (f(x + eps e_j) - f(x - eps e_j)) / (2 eps) with e_j the j-th unit "
            "array; work in float64",
            atol=tol,
            rtol=0,
        )
    _passed(check, f"{len(cases)} functions, against their exact derivatives")


# ----------------------------------------------------------------------------- lesson 2: transformer


def check_causal_mask(fn: Callable[[int, int], np.ndarray]) -> None:
    """``fn(num_queries, num_keys)`` must equal ``functional.causal_mask``: boolean, True where allowed."""
    check = "check_causal_mask"
    sizes = [(1, 1), (4, 4), (5, 5), (1, 5), (3, 7), (2, 3)]
    hint = (
        "queries are the LAST num_queries positions: query i sits at key position num_keys - num_queries + i "
        "and may see every key up to and including that position"
    )
    for tq, tk in sizes:
        got = _call(check, f"fn({tq}, {tk})", fn, tq, tk)
        got_array = np.asarray(got)
        if got_array.shape != (tq, tk):
            _fail(
                check,
                f"fn({tq}, {tk}): got shape {got_array.shape}, expected shape {(tq, tk)}",
                "rows are queries, columns are keys",
            )
        if got_array.dtype != np.bool_:
            _fail(
                check,
                f"fn({tq}, {tk}): got dtype {got_array.dtype}, expected bool",
                "compare positions (<=) to get a boolean array; True means 'may attend'",
            )
        expected = F.causal_mask(tq, tk)
        if tq != tk and np.array_equal(got_array, np.tril(np.ones((tq, tk), bool))):
            _fail(
                check,
                f"fn({tq}, {tk}): this is tril of ones, which ignores the keys in front of the queries\n"
                f"  got:\n{got_array.astype(int)}\n  expected:\n{expected.astype(int)}",
                hint,
            )
        if np.array_equal(got_array, ~expected):
            _fail(
                check,
                f"fn({tq}, {tk}): True and False are swapped",
                "True means the query MAY attend to the key",
            )
        if not np.array_equal(got_array, expected):
            _fail(
                check,
                f"fn({tq}, {tk}): wrong mask\n  got:\n{got_array.astype(int)}\n"
                f"  expected:\n{expected.astype(int)}",
                hint,
            )
    _passed(check, f"{len(sizes)} sizes, including fewer queries than keys, as with a KV cache")


def _layer_norm_variants(x: Tensor, w: Tensor, b: Tensor, eps: float) -> list[tuple[np.ndarray, str]]:
    xd, wd, bd = x.data, w.data, b.data
    mu = xd.mean(-1, keepdims=True)
    return [
        (
            (xd - mu) / np.sqrt(xd.var(-1, ddof=1, keepdims=True) + eps) * wd + bd,
            "this divides the variance by d - 1; LayerNorm uses the biased variance mean((x - mean)^2)",
        ),
        (
            (xd - mu) / (np.sqrt(xd.var(-1, keepdims=True)) + eps) * wd + bd,
            "eps goes inside the square root: (x - mean) / sqrt(var + eps)",
        ),
        (
            (xd - mu) / np.sqrt(xd.var(-1, keepdims=True) + eps),
            "the result must be scaled by weight and shifted by bias: x_hat * weight + bias",
        ),
        (
            (xd - xd.mean()) / np.sqrt(xd.var() + eps) * wd + bd,
            "normalize each row over the LAST axis only (axis=-1, keepdims=True), not over the whole tensor",
        ),
    ]


def check_layer_norm(fn: Callable[[Tensor, Tensor, Tensor, float], Tensor]) -> None:
    """``fn(x, weight, bias, eps)``, built from Tensor ops, must match ``functional.layer_norm`` in value
    and gradient."""
    check = "check_layer_norm"
    rng = np.random.default_rng(4)
    cases = [((4, 6), 1.0, 0.0), ((2, 3, 5), 5.0, 10.0), ((1, 8), 3.0, -100.0), ((3, 1, 4), 0.1, 0.0)]
    for shape, scale, shift in cases:
        d = shape[-1]
        x = _leaf(rng.standard_normal(shape) * scale + shift)
        w, b = _leaf(rng.standard_normal(d) + 1.0), _leaf(rng.standard_normal(d))
        where = f"x of shape {shape} (values around {shift:g}, spread {scale:g})"
        out = _call(check, where, fn, x, w, b, 1e-5)
        out = _require_tensor_with_graph(check, where, out, [x, w, b])
        with _engine_state():
            set_fused_kernels(False)
            ref = F.layer_norm(x, w, b, 1e-5)
        if not _matches(out, ref.data):
            for candidate, hint in _layer_norm_variants(x, w, b, 1e-5):
                if _matches(out, candidate):
                    _fail(check, f"{where}: the values are wrong", hint)
        _compare(
            check,
            f"{where}: output",
            out,
            ref.data,
            "y = (x - mean) / sqrt(var + eps) * weight + bias; mean, var over the last axis, keepdims=True",
        )
        g = rng.standard_normal(shape)
        got_grads = _call(check, f"{where}: backward", _grads_of, out, g, [x, w, b])
        ref_grads = _grads_of(ref, g, [x, w, b])
        for label, got_g, ref_g in zip(("x", "weight", "bias"), got_grads, ref_grads):
            _compare(
                check,
                f"{where}: gradient of {label}",
                got_g,
                ref_g,
                "the values agree but the gradients do not: is part of the computation done in NumPy?",
            )
    _passed(check, f"{len(cases)} inputs, values and the gradients of x, weight and bias")


def _attention_variants(
    q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None
) -> list[tuple[np.ndarray, str]]:
    qd, kd, vd = q.data, k.data, v.data
    d = qd.shape[-1]

    def attend(scores: np.ndarray, axis: int = -1, fill: float | None = None) -> np.ndarray:
        if mask is not None:
            scores = np.where(mask, scores, np.finfo(scores.dtype).min if fill is None else fill)
        scores = scores - scores.max(axis=axis, keepdims=True)
        w = np.exp(scores)
        return (w / w.sum(axis=axis, keepdims=True)) @ vd

    raw = qd @ np.swapaxes(kd, -1, -2)
    variants = [
        (attend(raw), "divide the scores q k^T by sqrt(d), d = q.shape[-1] (the head size)"),
        (attend(raw / d), "the scale is 1 / sqrt(d), not 1 / d"),
    ]
    if raw.shape[-1] == raw.shape[-2]:
        variants.append((attend(raw / np.sqrt(d), axis=-2), "softmax over the KEYS: the last axis (axis=-1)"))
    if mask is not None:
        unmasked = np.exp(raw / np.sqrt(d) - (raw / np.sqrt(d)).max(-1, keepdims=True))
        variants.append(
            (
                (unmasked / unmasked.sum(-1, keepdims=True)) @ vd,
                "apply the mask: scores where mask is False must get (almost) zero weight",
            )
        )
        variants.append(
            (
                attend(raw / np.sqrt(d), fill=0.0),
                "masked scores must become very negative "
                "(np.finfo(dtype).min), not 0, so that softmax gives them weight 0",
            )
        )
        flipped = np.where(mask, np.finfo(raw.dtype).min, raw / np.sqrt(d))
        flipped = np.exp(flipped - flipped.max(-1, keepdims=True))
        variants.append(
            (
                (flipped / flipped.sum(-1, keepdims=True)) @ vd,
                "the mask is True where attending is ALLOWED: fill the scores where it is False (~mask)",
            )
        )
    return variants


def check_attention(fn: Callable[[Tensor, Tensor, Tensor, np.ndarray | None], Tensor]) -> None:
    """``fn(q, k, v, mask)`` must match ``functional.attention`` in value and gradient.

    q (B, H, Tq, d), k and v (B, H, Tk, d), mask boolean broadcastable to (B, H, Tq, Tk) or None."""
    check = "check_attention"
    rng = np.random.default_rng(5)
    padding = np.ones((2, 1, 4, 4), bool)
    padding[1, :, :, :2] = False  # row 1: its first two keys are padding
    padding[1, :, :2, :] = False  # ... and so are its first two queries, whose rows are then fully masked
    cases = [
        ("no mask, B=1, H=1, T=4, d=3", (1, 1, 4, 3), (1, 1, 4, 3), None),
        ("causal mask (5, 5), B=2, H=2, d=4", (2, 2, 5, 4), (2, 2, 5, 4), F.causal_mask(5, 5)),
        (
            "3 queries, 6 keys (a KV cache), causal mask (3, 6)",
            (2, 2, 3, 4),
            (2, 2, 6, 4),
            F.causal_mask(3, 6),
        ),
        (
            "padding mask (2, 1, 4, 4) with fully masked rows",
            (2, 3, 4, 2),
            (2, 3, 4, 2),
            padding & F.causal_mask(4, 4),
        ),
    ]
    for name, q_shape, kv_shape, mask in cases:
        q, k, v = (
            _leaf(rng.standard_normal(q_shape)),
            _leaf(rng.standard_normal(kv_shape)),
            _leaf(rng.standard_normal(kv_shape)),
        )
        out = _call(check, name, fn, q, k, v, mask)
        out = _require_tensor_with_graph(check, name, out, [q, k, v])
        with _engine_state():
            set_fused_kernels(False)
            ref = F.attention(q, k, v, mask)
        got = _array(out)
        if got.shape == ref.shape and np.isnan(got).any():
            _fail(
                check,
                f"{name}: your output contains NaN",
                "a query whose keys are all masked gets NaN when masked scores are -inf; "
                "fill them with np.finfo(scores.dtype).min instead, which gives such a row uniform weights",
            )
        if not _matches(out, ref.data):
            for candidate, hint in _attention_variants(q, k, v, mask):
                if _matches(out, candidate):
                    _fail(check, f"{name}: the values are wrong", hint)
        _compare(
            check,
            f"{name}: output",
            out,
            ref.data,
            "softmax(q k^T / sqrt(d), masked where mask is False) @ v, softmax over the last axis",
        )
        g = rng.standard_normal(ref.shape)
        for label, got_g, ref_g in zip(
            "qkv",
            _call(check, f"{name}: backward", _grads_of, out, g, [q, k, v]),
            _grads_of(ref, g, [q, k, v]),
        ):
            _compare(
                check,
                f"{name}: gradient of {label}",
                got_g,
                ref_g,
                "the values agree but the gradients do not: is part of the computation done in NumPy?",
            )
    _passed(
        check,
        f"{len(cases)} cases: no mask, causal, KV-cache offset, padding; values and gradients of q, k, v",
    )


def _attention_module(d_model: int, n_heads: int, seed: int) -> CausalSelfAttention:
    with _engine_state():
        config = GPTConfig(vocab_size=8, context_length=8, d_model=d_model, n_layers=1, n_heads=n_heads)
        with default_dtype(np.float64):
            attn = CausalSelfAttention(config)
    rng = np.random.default_rng(seed)
    for _, p in attn.named_parameters():
        p.data[...] = rng.normal(0.0, 0.5, size=p.shape)  # random biases too, so that every one matters
    return attn


def _split_heads_wrongly(attn: CausalSelfAttention, x: Tensor, mask: np.ndarray) -> np.ndarray:
    B, T, d = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, v = (p(x).reshape(B, H, T, hd) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    y = F.attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d)
    return attn.o_proj(y).data


def _without_output_projection(attn: CausalSelfAttention, x: Tensor, mask: np.ndarray) -> np.ndarray:
    B, T, d = x.shape
    q, k, v = (attn.split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return F.attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d).data


def check_multi_head_attention(fn: Callable[[CausalSelfAttention, Tensor, np.ndarray], Tensor]) -> None:
    """``fn(attn, x, mask)`` must equal ``attn(x, mask)[0]`` for a ``CausalSelfAttention`` ``attn``, in value
    and in the gradients of x and of every projection's weight and bias."""
    check = "check_multi_head_attention"
    rng = np.random.default_rng(6)
    cases = [(8, 2, 1, 5), (12, 3, 2, 4), (8, 1, 2, 3), (8, 4, 1, 6)]
    for i, (d, H, B, T) in enumerate(cases):
        attn = _attention_module(d, H, seed=10 + i)
        x = _leaf(rng.standard_normal((B, T, d)))
        mask = F.causal_mask(T, T)[None, None] & np.ones((B, 1, 1, T), bool)  # (B, 1, T, T)
        if B > 1:
            mask[1, :, :, 0] = False  # the second row's first token is padding
        where = f"d_model={d}, n_heads={H}, x of shape {(B, T, d)}"
        out = _call(check, where, fn, attn, x, mask)
        out = _require_tensor_with_graph(check, where, out, [x])
        ref, _ = attn(x, mask)
        if not _matches(out, ref.data):
            with _engine_state():
                if _matches(out, _split_heads_wrongly(attn, x, mask)):
                    _fail(
                        check,
                        f"{where}: the heads are split wrongly",
                        "reshape (B, T, d) to (B, T, H, hd), then permute(0, 2, 1, 3) to (B, H, T, hd); "
                        "reshaping straight to (B, H, T, hd) mixes positions and heads",
                    )
                if _matches(out, _without_output_projection(attn, x, mask)):
                    _fail(
                        check,
                        f"{where}: the output projection is missing",
                        "after merging the heads back to (B, T, d), apply attn.o_proj",
                    )
        _compare(
            check,
            f"{where}: output",
            out,
            ref.data,
            "q = split_heads(attn.q_proj(x)), same for k, v; attention(q, k, v, mask); merge; attn.o_proj",
        )
        names, params = zip(*attn.named_parameters())
        g = rng.standard_normal(ref.shape)
        got_grads = _call(check, f"{where}: backward", _grads_of, out, g, [x, *params])
        ref_grads = _grads_of(ref, g, [x, *params])
        for label, got_g, ref_g in zip(("x", *names), got_grads, ref_grads):
            _compare(
                check,
                f"{where}: gradient of {label}",
                got_g,
                ref_g,
                "use the module's own projections (attn.q_proj, ...) so its parameters get their gradients",
            )
    _passed(
        check, f"{len(cases)} configurations, 1 to 4 heads; values and gradients of x and all 8 parameters"
    )


def _parameter_parts(config: GPTConfig) -> dict[str, int]:
    d, f, L = config.d_model, int(config.d_ff or 4 * config.d_model), config.n_layers
    return {
        "token embeddings wte (vocab_size x d_model)": config.vocab_size * d,
        "position embeddings wpe (context_length x d_model)": config.context_length * d,
        "the q, k, v, o projection weights (4 d^2 per block)": L * 4 * d * d,
        "the q, k, v, o projection biases (4 d per block)": L * 4 * d,
        "the MLP weights (2 d d_ff per block)": L * 2 * d * f,
        "the MLP biases (d_ff + d per block)": L * (f + d),
        "the two LayerNorms of each block (weight and bias: 4 d per block)": L * 4 * d,
        "the final LayerNorm ln_f (2 d)": 2 * d,
    }


def check_parameter_count(fn: Callable[[GPTConfig], int]) -> None:
    """``fn(config)`` must return the number of parameters of ``GPT(config)`` (the LM head is tied to wte)."""
    check = "check_parameter_count"
    configs = [
        GPTConfig(vocab_size=16, context_length=12, d_model=8, n_layers=2, n_heads=2),
        GPTConfig(vocab_size=50, context_length=20, d_model=12, n_layers=1, n_heads=3, d_ff=20),
        GPTConfig(vocab_size=30, context_length=8, d_model=16, n_layers=3, n_heads=4),
        GPTConfig(),
        GPTConfig(vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12),
    ]
    for i, config in enumerate(configs):
        if i < 3:
            with _engine_state():
                expected = GPT(config).num_parameters()
        else:
            expected = config.num_parameters()
        where = (
            f"GPTConfig(vocab_size={config.vocab_size}, context_length={config.context_length}, "
            f"d_model={config.d_model}, n_layers={config.n_layers}, n_heads={config.n_heads}, "
            f"d_ff={config.d_ff})"
        )
        got = _call(check, where, fn, config)
        if not isinstance(got, int | np.integer):
            _fail(check, f"{where}: returned {type(got).__name__}, expected an int")
        if got == expected:
            continue
        diff = int(got) - expected
        parts = _parameter_parts(config)
        culprits = [name for name, n in parts.items() if abs(diff) == n]
        if diff == config.vocab_size * config.d_model:
            hint = "the LM head is tied to the token embeddings (logits = h @ wte^T): count the table once"
        elif culprits:
            hint = f"you {'counted twice' if diff > 0 else 'left out'} " + " or ".join(culprits)
        else:
            hint = "count, per part: " + "; ".join(parts)
        _fail(check, f"{where}: got {got}, expected {expected} (difference {diff:+d})", hint)
    _passed(check, f"{len(configs)} configurations, up to the size of GPT-2 small, 124M parameters")


# ----------------------------------------------------------------------------- lesson 3: pretraining


def _reference_pair_counts(words: dict[tuple[int, ...], int], weighted: bool = True,
                           distinct: bool = False) -> dict[tuple[int, int], int]:
    """Adjacent-pair counts of ``{word (token ids): count}``; the flags give two common mistakes."""
    counts: dict[tuple[int, int], int] = {}
    for word, n in words.items():
        pairs = list(zip(word, word[1:]))
        for pair in dict.fromkeys(pairs) if distinct else pairs:
            counts[pair] = counts.get(pair, 0) + (n if weighted else 1)
    return counts


def _as_pair_counts(check: str, where: str, got: Any) -> dict[tuple[int, int], int]:
    """The student's pair counts as a plain dict without zero entries (a Counter may keep zeros)."""
    if not hasattr(got, "items"):
        _fail(
            check,
            f"{where}: returned {type(got).__name__}, expected a dict (or Counter) mapping pairs to counts",
            "collections.Counter() is a dict that starts every count at 0: counts[pair] += n",
        )
    result = {}
    for pair, n in got.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            _fail(check, f"{where}: the key {pair!r} is not a pair", "key the counts by tuples (a, b) of ids")
        if n:
            result[(int(pair[0]), int(pair[1]))] = n
    return result


def check_count_pairs(fn: Callable[[dict[tuple[int, ...], int]], dict[tuple[int, int], int]]) -> None:
    """``fn(words)``, with ``words`` mapping a word (a tuple of token ids) to how often it occurs, must
    count every pair of adjacent ids, each occurrence weighted by its word's count."""
    check = "check_count_pairs"
    text = "the cat sat on the mat; the cats saw the hat"
    words_of_text: dict[tuple[int, ...], int] = {}
    for word in text.replace(";", " ;").split(" "):
        key = tuple((" " + word).encode("utf-8"))
        words_of_text[key] = words_of_text.get(key, 0) + 1
    cases = [
        ("one word (1, 2, 3) seen once", {(1, 2, 3): 1}),
        ("words seen several times: {(1, 2, 3): 2, (2, 3): 5}", {(1, 2, 3): 2, (2, 3): 5}),
        ("a word of one token has no pairs: {(7,): 4, (7, 8): 1}", {(7,): 4, (7, 8): 1}),
        ("a repeated token: {(5, 5, 5): 3}", {(5, 5, 5): 3}),
        (f"the bytes of the words of {text!r}", words_of_text),
    ]
    for where, words in cases:
        before = dict(words)
        got = _as_pair_counts(check, where, _call(check, where, fn, words))
        if words != before:
            _fail(check, f"{where}: your function changed its input", "count, but do not modify words")
        expected = _reference_pair_counts(words)
        if got == expected:
            continue
        if got == _reference_pair_counts(words, weighted=False):
            hint = "a word that occurs n times contributes each of its pairs n times: add the word's count"
        elif got == _reference_pair_counts(words, distinct=True):
            hint = ("count every occurrence of a pair, also twice in one word: (5, 5, 5) holds (5, 5) at two "
                    "positions (the tokenizer counts both, although only one of them can merge)")
        else:
            hint = "for each word and count n: for each pair in zip(word, word[1:]): counts[pair] += n"
        wrong = sorted(set(got) | set(expected), key=lambda p: (p not in expected, p))
        first = next(p for p in wrong if got.get(p, 0) != expected.get(p, 0))
        _fail(
            check,
            f"{where}: the pair {first} has count {got.get(first, 0)}, expected {expected.get(first, 0)} "
            f"({len([p for p in wrong if got.get(p, 0) != expected.get(p, 0)])} pair(s) differ)",
            hint,
        )
    _passed(check, f"{len(cases)} word tables, with repeated words and repeated tokens")


def check_merge_pair(fn: Callable[[list[int], tuple[int, int], int], list[int]]) -> None:
    """``fn(ids, pair, new_id)`` must return a new list in which every occurrence of ``pair`` is replaced
    by ``new_id``, scanning left to right without overlaps (as ``Tokenizer`` encodes)."""
    from ..data.tokenizer import _merge

    check = "check_merge_pair"
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 9),
        ([5, 1, 2], (1, 2), 9),
        ([1, 3, 2], (1, 2), 9),
        ([2, 1, 2, 1], (1, 2), 9),
        ([4, 4, 4], (4, 4), 9),
        ([4, 4, 4, 4], (4, 4), 9),
        ([7], (7, 7), 9),
        ([], (1, 2), 9),
        (list(b"the theme of these"), (ord("t"), ord("h")), 300),
    ]
    for ids, pair, new_id in cases:
        where = f"fn({ids}, {pair}, {new_id})"
        before = list(ids)
        got = _call(check, where, fn, ids, pair, new_id)
        if ids != before:
            _fail(
                check,
                f"{where}: your function changed the list it was given (it is now {ids})",
                "build and return a new list; the caller still needs the old one",
            )
        if got is None:
            _fail(check, f"{where}: your function returned None", "return the new list of ids")
        try:
            got_list = [int(i) for i in got]
        except (TypeError, ValueError):
            _fail(check, f"{where}: returned {got!r:.80}, expected a list of ints")
        expected = _merge(ids, pair, new_id)
        if got_list == expected:
            continue
        hint = (
            "walk with an index i: if (ids[i], ids[i + 1]) is the pair, emit new_id and move on by 2, "
            "else emit ids[i] and move on by 1"
        )
        if pair[0] == pair[1] and got_list.count(new_id) > expected.count(new_id):
            hint = "occurrences may not overlap: in (4, 4, 4) only the first two 4s merge, the third stays"
        elif pair[0] == pair[1]:
            hint = "after a merge, go on from the position after the pair: (4, 4, 4, 4) becomes (9, 9)"
        _fail(check, f"{where}: got {got_list}, expected {expected}", hint)
    _passed(check, f"{len(cases)} sequences, including overlapping pairs like (4, 4, 4)")


def _lm_loss_variants(logits: np.ndarray, labels: np.ndarray) -> list[tuple[float, str]]:
    """Losses of common mistakes with the hint that explains each."""
    def nll(targets: np.ndarray, denominator: str = "counted") -> float:
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        counted = targets != -100
        picked = np.take_along_axis(logp, np.where(counted, targets, 0)[..., None], -1)[..., 0]
        total = -(picked * counted).sum()
        return float(total / {"counted": counted.sum(), "all": targets.size, "none": 1}[denominator])

    shifted = np.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    backwards = np.full_like(labels, -100)
    backwards[:, 1:] = labels[:, :-1]
    return [
        (nll(labels), "no shift: the logits at position t predict the token at t + 1, so position t is "
                      "scored against labels[:, t + 1] (and the last position predicts nothing)"),
        (nll(backwards), "shifted the wrong way: position t predicts labels[:, t + 1], not labels[:, t - 1]"),
        (nll(shifted, "all"), "average over the counted targets only: divide by the number of targets "
                              "that are not -100, not by the number of positions"),
        (nll(shifted, "none"), "the loss is the mean over the counted targets, not their sum"),
    ]


def check_lm_loss(fn: Callable[[np.ndarray, np.ndarray], float]) -> None:
    """``fn(logits, labels)`` with NumPy arrays, logits (B, T, V) and integer labels (B, T) aligned with the
    input ids, must return ``GPT.lm_loss``: the mean next-token cross-entropy, position t scored against
    ``labels[:, t + 1]``, targets of -100 skipped."""
    check = "check_lm_loss"
    rng = np.random.default_rng(7)
    source_and_padding = rng.integers(0, 7, (2, 6))
    source_and_padding[0, :3] = -100  # a source that is not learned
    source_and_padding[1, 4:] = -100  # padding
    first_ignored = rng.integers(0, 6, (3, 5))
    first_ignored[:, 0] = -100
    normal = rng.standard_normal
    cases = [
        ("B=1, T=4, V=5, every label counts", normal((1, 4, 5)), rng.integers(0, 5, (1, 4))),
        ("B=2, T=6, V=7, -100 on a source and on padding", normal((2, 6, 7)), source_and_padding),
        ("B=3, T=5, V=6, the first label of each row -100", 3 * normal((3, 5, 6)), first_ignored),
        ("B=2, T=5, V=8, logits of size 1000", 1000 * normal((2, 5, 8)), rng.integers(0, 8, (2, 5))),
    ]
    crash_hint = "a label of -100 is not a class: skip those targets"
    for where, logits, labels in cases:
        logits_before, labels_before = logits.copy(), labels.copy()
        got = _call(check, where, fn, logits, labels, hint=crash_hint)
        if not (np.array_equal(logits, logits_before) and np.array_equal(labels, labels_before)):
            _fail(check, f"{where}: your function changed its inputs", "build new arrays (np.full_like)")
        try:
            value = float(_array(got))
        except (TypeError, ValueError):
            _fail(check, f"{where}: returned {got!r:.80}, expected a number")
        targets = np.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]
        with _engine_state():
            set_fused_kernels(False)
            expected = float(F.cross_entropy(Tensor(logits, dtype=np.float64), targets).item())
        if np.isclose(value, expected, rtol=1e-9, atol=1e-9):
            continue
        if not np.isfinite(value):
            _fail(
                check,
                f"{where}: got {value}, expected {expected:.10g}",
                "exp of a logit of 1000 overflows: subtract each row's maximum before exp "
                "(log softmax(z) = z - m - log sum exp(z - m))",
            )
        hint = "shift (targets[:, :-1] = labels[:, 1:]), log-softmax each row, pick the targets, average"
        for candidate, candidate_hint in _lm_loss_variants(logits, labels):
            if np.isclose(value, candidate, rtol=1e-9, atol=1e-9):
                hint = candidate_hint
                break
        _fail(check, f"{where}: got {value:.10g}, expected {expected:.10g}", hint)
    _passed(check, f"{len(cases)} batches, with -100 labels and very large logits")


class _ReadTooFar(Exception):
    """Raised by the checker's endless document stream when a function reads far more than it needs."""


def _endless_documents(limit: int) -> Iterator[list[int]]:
    """Documents 0, 1, 2, ... of lengths 1 to 9 (ids 1..50); fails after ``limit`` documents."""
    rng = np.random.default_rng(8)
    for i in range(limit):
        yield [int(t) for t in rng.integers(1, 50, int(rng.integers(1, 10)))]
        if i == limit - 1:
            raise _ReadTooFar


def check_pack_documents(fn: Callable[..., np.ndarray]) -> None:
    """``fn(documents, context_length, eos_id, max_windows=None)`` must equal
    ``tinypft.train.pack_documents(...).windows``: ``doc eos doc eos ...`` cut into rows of
    ``context_length`` tokens, the incomplete tail dropped, reading no further than ``max_windows`` needs."""
    from ..train.batching import pack_documents as reference

    check = "check_pack_documents"
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    cases: list[tuple[str, list[list[int]], int, int, int | None]] = [
        ("3 documents, 12 tokens with eos, windows of 4", docs, 4, 0, None),
        ("one document of 5 tokens, windows of 4 (an incomplete tail)", [[1, 2, 3, 4, 5]], 4, 0, None),
        ("a document longer than a window", [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12]], 3, 99, None),
        ("an empty document among others", [[1, 2], [], [3, 4, 5]], 2, 0, None),
        ("fewer tokens than one window", [[1, 2]], 8, 0, None),
        ("max_windows=2", docs * 3, 4, 0, 2),
    ]
    hint = "stream = doc + [eos] for every doc; n = len(stream) // context_length; reshape(n, context_length)"
    for where, documents, T, eos, max_windows in cases:
        args = (iter([list(d) for d in documents]), T, eos) + (() if max_windows is None else (max_windows,))
        call = f"{where}: fn(documents, {T}, {eos}{'' if max_windows is None else f', {max_windows}'})"
        generator_hint = "documents may be a generator (no len(), no indexing): loop over it once"
        got = _call(check, call, fn, *args, hint=generator_hint)
        expected = reference(documents, T, eos, max_windows).windows
        got_array = np.asarray(got)
        if got_array.dtype.kind not in "iu":
            _fail(
                check,
                f"{call}: got an array of dtype {got_array.dtype}, expected integers",
                "token ids are integers: np.asarray(stream, dtype=np.int64)",
            )
        if got_array.shape == expected.shape and np.array_equal(got_array, expected):
            continue
        flat = got_array.reshape(-1).tolist()
        right = [t for d in documents for t in [*d, eos]][: len(flat)]
        without_eos = [t for d in documents for t in d][: len(flat)]
        eos_first = [t for d in documents for t in [eos, *d]][: len(flat)]
        if flat and flat != right and flat == without_eos:
            problem = "put eos after every document: the model learns where documents end from it"
        elif flat and flat != right and flat == eos_first:
            problem = "eos goes after each document, not before it"
        elif got_array.ndim == 2 and got_array.shape[0] == expected.shape[0] + 1:
            problem = "drop the incomplete tail: a window shorter than context_length is never padded"
        elif got_array.ndim == 2 and got_array.shape[0] > expected.shape[0] + 1:
            problem = "windows do not overlap: window i holds stream[i * T : (i + 1) * T]"
        else:
            problem = hint
        if got_array.shape != expected.shape:
            _fail(check, f"{call}: got shape {got_array.shape}, expected {expected.shape}", problem)
        _fail(check, f"{call}: got\n{got_array}\n  expected\n{expected}", problem)
    endless = "an endless stream of documents, max_windows=5"
    try:
        got = _call(check, endless, fn, _endless_documents(10_000), 16, 0, 5)
    except AssertionError as err:
        if isinstance(err.__context__, _ReadTooFar):
            _fail(
                check,
                "an endless stream of documents, max_windows=5: your function read 10,000 documents "
                "and would have read on forever",
                "stop reading as soon as the stream holds max_windows * context_length tokens",
            )
        raise
    expected = reference(_endless_documents(10_000), 16, 0, 5).windows
    _compare(check, "an endless stream of documents, max_windows=5", np.asarray(got), expected, hint)
    _passed(check, f"{len(cases) + 1} cases, including a document longer than a window and an endless stream")
