"""Checkers for lesson 1 (automatic differentiation): a topological sort of the graph, summing a
broadcast gradient back to its input's shape, a ``Function`` with its backward, and the central
difference that gradient checks compare with.

Each checker reports as ``common`` describes: one line when everything agrees, else an
``AssertionError`` naming the input, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..engine import Tensor, gradcheck
from ..engine.autograd import Context, Function, _topological_order
from ..engine.gradcheck import GradcheckError
from ..engine.ops import Mul, unbroadcast
from .common import call_student, compare_arrays, fail, float64_leaf, passed, refuse_library

# What each checker refuses: tinypft's own implementation of the exercise (label -> object).
LIBRARY: dict[str, dict[str, Any]] = {
    "topological_sort": {"topological sort (tinypft.engine.autograd._topological_order)": _topological_order},
    "unbroadcast": {"unbroadcast (tinypft.engine.ops.unbroadcast)": unbroadcast},
    "mul": {"Mul (tinypft.engine.ops.Mul)": Mul},
    "central_difference": {"gradcheck (tinypft.engine.gradcheck.gradcheck)": gradcheck},
}



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
    refuse_library(check, fn, LIBRARY["topological_sort"])
    graphs = _graphs()
    for name, root, reachable in graphs:
        try:
            order = fn(root)
        except NotImplementedError:
            raise
        except RecursionError:
            fail(
                check,
                f"on {name}: RecursionError (Python allows about 1000 nested calls)",
                "walk the graph with an explicit stack (a list to append to and pop from), not recursion",
            )
        except Exception as exc:
            fail(check, f"on {name}: your function raised {type(exc).__name__}: {exc}")
        if not isinstance(order, list | tuple):
            fail(check, f"on {name}: returned {type(order).__name__}, expected a list of nodes")
        ids = [id(n) for n in order]
        if len(set(ids)) != len(ids):
            twice = next(n for n in order if ids.count(id(n)) > 1)
            fail(
                check,
                f"on {name}: node {twice!r} appears more than once",
                "remember which nodes you have visited (a set of id(node)) and skip them",
            )
        wanted = {id(n) for n in reachable}
        missing = [n for n in reachable if id(n) not in set(ids)]
        if missing:
            fail(
                check,
                f"on {name}: {len(missing)} reachable node(s) missing, e.g. {missing[0]!r}",
                "follow ._prev from every node you visit, not only from the root",
            )
        extra = [n for n in order if id(n) not in wanted]
        if extra:
            fail(check, f"on {name}: node {extra[0]!r} is not reachable from the root but is in the order")
        position = {id(n): i for i, n in enumerate(order)}
        for node in order:
            for parent in node._prev:
                if position[id(parent)] > position[id(node)]:
                    shown = ", ".join(map(repr, order[:12])) + (", ..." if len(order) > 12 else "")
                    fail(
                        check,
                        f"on {name}: node {node!r} comes before its input {parent!r} (order: {shown})",
                        "append a node only after all of its inputs have been appended (post-order)",
                    )
        if order[-1] is not root:
            fail(
                check,
                f"on {name}: the root {root!r} should come last, it is at position {position[id(root)]}",
            )
    passed(check, f"{len(graphs)} graphs, including a diamond and a 5000-node chain")


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
    refuse_library(check, fn, LIBRARY["unbroadcast"])
    rng = np.random.default_rng(1)
    hint = (
        "sum over the leading axes that broadcasting prepended, then (with keepdims=True) over every axis "
        "where shape has 1 but grad does not; finish with .reshape(shape)"
    )
    for grad_shape, shape in UNBROADCAST_CASES:
        grad = rng.standard_normal(grad_shape)
        before = grad.copy()
        got = call_student(check, f"fn(grad of shape {grad_shape}, {shape})", fn, grad, shape, hint=hint)
        if not np.array_equal(grad, before):
            fail(
                check, f"fn(grad of shape {grad_shape}, {shape}) modified grad in place", "return a new array"
            )
        if isinstance(got, Tensor):
            fail(check, "your function returned a Tensor; it works on NumPy arrays and must return one")
        compare_arrays(
            check,
            f"fn(grad of shape {grad_shape}, {shape})",
            np.asarray(got),
            unbroadcast(grad, shape),
            hint,
            atol=1e-12,
            rtol=1e-12,
        )
    passed(check, f"{len(UNBROADCAST_CASES)} shape pairs, from (3, 3, 3) -> () to (2, 3, 4) -> (1, 4)")


MUL_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 4), (3, 1))]


def _backward_pair(check: str, where: str, op: type, ctx: Context, g: np.ndarray, hint: str | None) -> Any:
    grads = call_student(check, where, op.backward, ctx, g, hint=hint)
    if not isinstance(grads, tuple | list) or len(grads) != 2:
        fail(
            check,
            f"{where}: returned {grads!r:.80}, expected a tuple (da, db)",
            "backward returns one entry per input of forward, `return da, db` (None for one not needed)",
        )
    return grads


def check_mul_backward(op: type) -> None:
    """``op`` must be a ``Function`` computing a * b, with a backward that sums broadcast axes back,
    returns None for an input whose ``ctx.needs_input_grad`` is False, and passes a gradcheck."""
    check = "check_mul_backward"
    refuse_library(check, op, LIBRARY["mul"])
    if not (isinstance(op, type) and issubclass(op, Function)):
        fail(
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
        out = call_student(check, f"{where}: forward", op.forward, ctx, a, b)
        compare_arrays(check, f"{where}: forward", out, a * b,
                       "forward returns the elementwise product a * b")
        grads = _backward_pair(check, f"{where}: backward", op, ctx, g, shape_hint)
        da_hint = f"da = g * b (by the product rule), summed to a's shape; {shape_hint}"
        compare_arrays(check, f"{where}: da", grads[0], unbroadcast(g * b, a.shape), da_hint)
        db_hint = f"db = g * a (by the product rule), summed to b's shape; {shape_hint}"
        compare_arrays(check, f"{where}: db", grads[1], unbroadcast(g * a, b.shape), db_hint)
    for where, a, b, g in cases:  # one input frozen
        for needs in ((True, False), (False, True)):
            ctx = Context(needs)
            op.forward(ctx, a, b)
            label = f"{where}: backward with needs_input_grad={needs}"
            grads = _backward_pair(check, label, op, ctx, g, None)
            frozen, live = needs.index(False), needs.index(True)
            expected = unbroadcast(g * b, a.shape) if live == 0 else unbroadcast(g * a, b.shape)
            compare_arrays(check, f"{where}: d{'ab'[live]} with needs_input_grad={needs}", grads[live],
                           expected)
            if grads[frozen] is not None:
                fail(
                    check,
                    f"{where}: backward with ctx.needs_input_grad={needs} computed a gradient for "
                    f"{'ab'[frozen]}, which does not need one",
                    "return None for an input whose ctx.needs_input_grad entry is False: "
                    "a frozen input should cost no work",
                )
    for where, a, b, _ in cases:  # through the graph: apply, then backward
        try:
            gradcheck(lambda x, y: op.apply(x, y), [float64_leaf(a), float64_leaf(b)], names=["a", "b"])
        except NotImplementedError:
            raise
        except GradcheckError as exc:
            fail(check, f"{where}: through the graph (op.apply and .backward()): {exc}")
    passed(check, f"{len(MUL_SHAPES)} shape pairs with broadcasting, frozen inputs, and gradcheck")


def check_central_difference(
    fn: Callable[[Callable[[np.ndarray], float], np.ndarray, float], np.ndarray],
) -> None:
    """``fn(f, x, eps)`` must return the array of (f(x + eps e_j) - f(x - eps e_j)) / (2 eps), x's shape,
    leaving ``x`` as it found it."""
    check = "check_central_difference"
    refuse_library(check, fn, LIBRARY["central_difference"])
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
        got = call_student(check, f"{name}, eps={eps}", fn, f, x, eps)
        if got is None:
            fail(check, f"{name}: your function returned None", "return the array of difference quotients")
        if not np.array_equal(x, x_before):
            fail(
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
                fail(
                    check,
                    f"{name}, eps={eps}: this is the one-sided difference (f(x + eps) - f(x)) / eps",
                    "use the central difference (f(x + eps) - f(x - eps)) / (2 eps): its error is O(eps^2), "
                    "the one-sided one's is O(eps)",
                )
            everything = (f(x + eps) - f(x - eps)) / (2 * eps)
            if np.allclose(got_array, everything, atol=tol):
                fail(
                    check,
                    f"{name}: every entry is the same number, the change of f when ALL of x moves",
                    "perturb one element at a time: only x[j] moves when computing entry j",
                )
        compare_arrays(
            check,
            f"{name}, eps={eps} (compared with the exact derivative, tolerance {tol:g})",
            got_array,
            expected,
            "entry j is (f(x + eps e_j) - f(x - eps e_j)) / (2 eps) with e_j the j-th unit "
            "array; work in float64",
            atol=tol,
            rtol=0,
        )
    passed(check, f"{len(cases)} functions, against their exact derivatives")


