"""``tinypft selftest``: gradient-check every primitive op and composite in float64.

Each check runs ``gradcheck`` (central finite differences against ``backward``) on a few small
inputs, including broadcasting cases, with values chosen away from the points where an op is not
differentiable: ``relu`` away from 0, ``log``/``sqrt``/``div`` on positive inputs away from 0,
``max`` on inputs without ties. The composites of ``functional`` are checked with the composed
reference versions and, when ``tinypft.engine.fused`` exists, again with the fused kernels
(rows labelled ``[fused]``; their forward values must also match the reference ones).

    >>> from tinypft.engine.selftest import run_selftest
    >>> results = run_selftest(verbose=False)  # verbose=True prints the table
    >>> all(r.passed for r in results)
    True
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from . import functional as F
from . import ops
from .autograd import Tensor, no_grad, use_fused_kernels
from .gradcheck import gradcheck
from .rng import get_rng, manual_seed

FUSED_MODULE = "tinypft.engine.fused"
FUSED_FORWARD_ATOL = 1e-10  # a fused kernel's forward must match the composed one this closely (float64)


# ----------------------------------------------------------------------------- records


@dataclass
class Case:
    """One gradcheck: ``fn(*inputs)`` with ``eps`` as the finite-difference step."""

    fn: Callable[..., Tensor]
    inputs: list[Tensor]
    eps: float = 1e-6

    @property
    def shapes(self) -> str:
        """Input shapes like ``2x3,3`` (``()`` for a scalar)."""
        return ",".join("x".join(map(str, t.shape)) or "()" for t in self.inputs)


@dataclass
class Check:
    """A row of the table: an op name and a builder of its cases from a random generator."""

    name: str
    build: Callable[[np.random.Generator], list[Case]]
    composite: bool = False  # a ``functional`` composite: also checked with the fused kernels


@dataclass
class SelftestResult:
    """The outcome of one row: the worst errors over all its cases, and PASS/FAIL."""

    name: str
    shapes: list[str]
    checked: int = 0  # input elements compared
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    passed: bool = True
    messages: list[str] = field(default_factory=list)  # why it failed


# ----------------------------------------------------------------------------- input helpers


def _leaf(array: np.ndarray) -> Tensor:
    """A float64 tensor that requires grad."""
    return Tensor(array, requires_grad=True, dtype=np.float64)


def _normal(rng: np.random.Generator, *shape: int) -> Tensor:
    return _leaf(rng.standard_normal(shape))


def _positive(rng: np.random.Generator, *shape: int) -> Tensor:
    """Values in [0.5, 2]: safe for log, sqrt and as a divisor."""
    return _leaf(rng.uniform(0.5, 2.0, shape))


def _nonzero(rng: np.random.Generator, *shape: int) -> Tensor:
    """Values with |x| in [0.1, 2]: far from relu's kink at 0 (eps is 1e-6)."""
    return _leaf(rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape))


def _distinct(rng: np.random.Generator, *shape: int) -> Tensor:
    """Values at least 0.05 apart: no ties, so max has a single winner that eps cannot change."""
    size = int(np.prod(shape))
    values = rng.permutation(size) * 0.1 + rng.uniform(-0.025, 0.025, size)
    return _leaf(values.reshape(shape) - 0.05 * size)


def _ids(rng: np.random.Generator, high: int, *shape: int) -> np.ndarray:
    return rng.integers(0, high, shape)


# ----------------------------------------------------------------------------- primitive checks

BROADCAST_PAIRS = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4)), ((), (2, 3)), ((2, 1, 4), (3, 1))]


def _binary(op: Callable[[Tensor, Tensor], Tensor], positive_b: bool = False) -> Callable[..., list[Case]]:
    def build(rng: np.random.Generator) -> list[Case]:
        make_b = _positive if positive_b else _normal
        return [Case(op, [_normal(rng, *sa), make_b(rng, *sb)]) for sa, sb in BROADCAST_PAIRS]

    return build


def _unary(
    op: Callable[[Tensor], Tensor], make: Callable[..., Tensor] = _normal
) -> Callable[..., list[Case]]:
    def build(rng: np.random.Generator) -> list[Case]:
        return [Case(op, [make(rng, *shape)]) for shape in [(3, 4), (2, 3, 2), ()]]

    return build


def _pow(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda x: x**2, [_normal(rng, 3, 4)]),
        Case(lambda x: x**3, [_normal(rng, 2, 3)]),
        Case(lambda x: x**0.5, [_positive(rng, 4)]),
        Case(lambda x: x**-1.5, [_positive(rng, 2, 2)]),
    ]


def _matmul(rng: np.random.Generator) -> list[Case]:
    shapes = [
        ((3, 4), (4, 5)),  # plain
        ((2, 3, 4), (4, 5)),  # batch @ matrix (one large GEMM)
        ((2, 1, 3, 4), (3, 4, 2)),  # broadcast batch dims
        ((3, 4), (2, 4, 5)),  # matrix @ batch
        ((4,), (4, 5)),  # vector @ matrix
        ((2, 3, 4), (4,)),  # batch @ vector
        ((4,), (2, 4, 3)),  # vector @ batch
        ((4,), (4,)),  # dot product
    ]
    return [Case(ops.matmul, [_normal(rng, *sa), _normal(rng, *sb)]) for sa, sb in shapes]


def _reduction(op: Callable[..., Tensor], make: Callable[..., Tensor] = _normal) -> Callable[..., list[Case]]:
    def build(rng: np.random.Generator) -> list[Case]:
        options = [(None, False), (1, False), ((0, 2), True), (-1, True), ((0, 1, 2), False)]
        return [Case(lambda x, a=axis, k=keep: op(x, a, k), [make(rng, 2, 3, 4)]) for axis, keep in options]

    return build


def _reshape(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda x: x.reshape(6, 4), [_normal(rng, 2, 3, 4)]),
        Case(lambda x: x.reshape(-1), [_normal(rng, 3, 4)]),
        Case(lambda x: x.reshape(1, 1), [_normal(rng)]),
    ]


def _permute(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda x: x.permute(2, 0, 1), [_normal(rng, 2, 3, 4)]),
        Case(lambda x: x.permute(1, 0), [_normal(rng, 3, 2)]),
        Case(lambda x: x.permute(0, 3, 1, 2), [_normal(rng, 2, 1, 3, 2)]),
    ]


def _transpose(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda x: x.transpose(-2, -1), [_normal(rng, 2, 3, 4)]),
        Case(lambda x: x.T, [_normal(rng, 3, 2)]),
        Case(lambda x: x.transpose(0, 2), [_normal(rng, 2, 3, 4)]),
    ]


def _broadcast_to(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda x: x.broadcast_to((2, 3, 4)), [_normal(rng, 3, 1)]),
        Case(lambda x: x.broadcast_to((2, 3)), [_normal(rng)]),
        Case(lambda x: x.broadcast_to((3, 4)), [_normal(rng, 4)]),
    ]


def _getitem(rng: np.random.Generator) -> list[Case]:
    mask = np.array([[True, False, True, True], [False, True, False, True], [True, True, False, False]])
    return [
        Case(lambda x: x[1:, ::2], [_normal(rng, 3, 4)]),
        Case(lambda x: x[..., 1], [_normal(rng, 2, 3, 4)]),
        Case(lambda x: x[np.array([0, 2, 0, 0])], [_normal(rng, 3, 4)]),  # repeated rows add up
        Case(lambda x: x[:, np.array([[1, 1], [3, 1]])], [_normal(rng, 2, 4)]),
        Case(lambda x: x[np.array([0, 1, 1]), np.array([2, 0, 2])], [_normal(rng, 2, 3)]),
        Case(lambda x: x[mask], [_normal(rng, 3, 4)]),
    ]


def _concat(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda a, b: ops.concat([a, b], axis=0), [_normal(rng, 2, 3), _normal(rng, 4, 3)]),
        Case(
            lambda a, b, c: ops.concat([a, b, c], axis=-1),
            [_normal(rng, 2, 3), _normal(rng, 2, 1), _normal(rng, 2, 2)],
        ),
    ]


def _stack(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda a, b, c: ops.stack([a, b, c], axis=0), [_normal(rng, 2, 3) for _ in range(3)]),
        Case(lambda a, b: ops.stack([a, b], axis=-1), [_normal(rng, 3, 2) for _ in range(2)]),
    ]


def _where(rng: np.random.Generator) -> list[Case]:
    cases = []
    for cond_shape, sa, sb in [((3, 4), (3, 4), (3, 4)), ((3, 1), (1, 4), ()), ((4,), (2, 3, 1), (3, 4))]:
        cond = rng.random(cond_shape) > 0.5
        cases.append(Case(lambda a, b, c=cond: ops.where(c, a, b), [_normal(rng, *sa), _normal(rng, *sb)]))
    return cases


def _masked_fill(rng: np.random.Generator) -> list[Case]:
    mask = rng.random((3, 4)) > 0.5
    causal = ~F.causal_mask(3, 3)
    return [
        # a moderate fill value: a huge one would swamp the finite differences of sum(out * r)
        Case(lambda x: x.masked_fill(mask, -3.0), [_normal(rng, 3, 4)]),
        Case(lambda x: x.masked_fill(causal, 0.0), [_normal(rng, 2, 3, 3)]),  # the mask broadcasts
    ]


def _embedding(rng: np.random.Generator) -> list[Case]:
    ids = _ids(rng, 3, 2, 5)
    return [
        Case(lambda w: ops.embedding(w, np.array([[0, 2, 0], [4, 4, 1]])), [_normal(rng, 5, 3)]),
        Case(lambda w: ops.embedding(w, np.array([3, 3, 3])), [_normal(rng, 4, 2)]),
        Case(lambda w: ops.embedding(w, ids), [_normal(rng, 3, 4)]),
    ]


def _dropout(rng: np.random.Generator) -> list[Case]:
    def seeded(p: float) -> Callable[[Tensor], Tensor]:
        def fn(x: Tensor) -> Tensor:
            manual_seed(1234)  # the same mask at every evaluation, or finite differences mean nothing
            return ops.dropout(x, p)

        return fn

    return [Case(seeded(0.3), [_normal(rng, 3, 4)]), Case(seeded(0.5), [_normal(rng, 2, 3, 4)])]


def _cast(rng: np.random.Generator) -> list[Case]:
    # Inputs exactly representable in float32, in [1, 2), perturbed by eps = 2^-8: x +- eps stays
    # exactly representable, so the float32 round trip loses nothing and the check is exact.
    def fn(x: Tensor) -> Tensor:
        return (x.astype(np.float32) * 3.0).astype(np.float64)

    values = rng.uniform(1.1, 1.9, (3, 4)).astype(np.float32).astype(np.float64)
    return [Case(fn, [_leaf(values)], eps=2.0**-8)]


# ----------------------------------------------------------------------------- composite checks


def _linear(rng: np.random.Generator) -> list[Case]:
    return [
        Case(F.linear, [_normal(rng, 2, 3, 4), _normal(rng, 5, 4), _normal(rng, 5)]),
        Case(F.linear, [_normal(rng, 3, 4), _normal(rng, 2, 4)]),  # no bias
    ]


def _softmax_like(op: Callable[..., Tensor]) -> Callable[..., list[Case]]:
    def build(rng: np.random.Generator) -> list[Case]:
        return [
            Case(lambda x: op(x, axis=-1), [_normal(rng, 3, 5)]),
            Case(lambda x: op(x, axis=1), [_normal(rng, 2, 3, 4)]),
            Case(lambda x: op(x * 30.0, axis=-1), [_normal(rng, 2, 4)]),  # large logits
        ]

    return build


def _layer_norm(rng: np.random.Generator) -> list[Case]:
    return [
        Case(F.layer_norm, [_normal(rng, 2, 3, 5), _normal(rng, 5), _normal(rng, 5)]),
        Case(F.layer_norm, [_normal(rng, 4, 6), _normal(rng, 6), _normal(rng, 6)]),
    ]


def _cross_entropy(rng: np.random.Generator) -> list[Case]:
    return [
        Case(lambda x: F.cross_entropy(x, np.array([1, -100, 4, 0])), [_normal(rng, 4, 5)]),
        Case(lambda x: F.cross_entropy(x, np.array([[0, 3, -100], [2, 2, 1]])), [_normal(rng, 2, 3, 4)]),
    ]


def _attention(rng: np.random.Generator) -> list[Case]:
    def masked(mask: np.ndarray | None) -> Callable[..., Tensor]:
        return lambda q, k, v: F.attention(q, k, v, mask)

    return [
        Case(masked(F.causal_mask(4, 4)), [_normal(rng, 1, 2, 4, 3) for _ in range(3)]),
        # 2 queries over 5 keys: the first 3 keys (a prefix) are visible to every query
        Case(
            masked(F.causal_mask(2, 5)),
            [_normal(rng, 2, 1, 2, 3), _normal(rng, 2, 1, 5, 3), _normal(rng, 2, 1, 5, 3)],
        ),
        Case(masked(None), [_normal(rng, 1, 1, 3, 2) for _ in range(3)]),
    ]


CHECKS: list[Check] = [
    Check("add", _binary(ops.add)),
    Check("sub", _binary(ops.sub)),
    Check("mul", _binary(ops.mul)),
    Check("div", _binary(ops.div, positive_b=True)),
    Check("neg", _unary(ops.neg)),
    Check("pow", _pow),
    Check("exp", _unary(ops.exp)),
    Check("log", _unary(ops.log, _positive)),
    Check("sqrt", _unary(ops.sqrt, _positive)),
    Check("tanh", _unary(ops.tanh)),
    Check("relu", _unary(ops.relu, _nonzero)),
    Check("gelu", _unary(F.gelu), composite=True),
    Check("matmul", _matmul),
    Check("sum", _reduction(ops.sum)),
    Check("mean", _reduction(ops.mean)),
    Check("max", _reduction(ops.max, _distinct)),
    Check("reshape", _reshape),
    Check("permute", _permute),
    Check("transpose", _transpose),
    Check("broadcast_to", _broadcast_to),
    Check("getitem", _getitem),
    Check("concat", _concat),
    Check("stack", _stack),
    Check("where", _where),
    Check("masked_fill", _masked_fill),
    Check("embedding", _embedding),
    Check("dropout", _dropout),
    Check("cast", _cast),
    Check("linear", _linear, composite=True),
    Check("softmax", _softmax_like(F.softmax), composite=True),
    Check("log_softmax", _softmax_like(F.log_softmax), composite=True),
    Check("layer_norm", _layer_norm, composite=True),
    Check("cross_entropy", _cross_entropy, composite=True),
    Check("attention", _attention, composite=True),
]


# ----------------------------------------------------------------------------- running


def _run_check(check: Check, rng: np.random.Generator, fused: bool) -> SelftestResult:
    """Gradcheck every case of ``check`` with the fused kernels on or off."""
    label = f"{check.name} [fused]" if fused else check.name
    with use_fused_kernels(fused):
        try:
            cases = check.build(rng)
        except Exception as exc:  # a broken op can fail while the inputs are being prepared
            return SelftestResult(label, [], passed=False, messages=[f"{type(exc).__name__}: {exc}"])
        result = SelftestResult(label, [case.shapes for case in cases])
        for case in cases:
            try:
                if fused:
                    _check_fused_forward(case)
                report = gradcheck(case.fn, case.inputs, eps=case.eps)
            except Exception as exc:  # GradcheckError, or any error raised by the op itself
                result.passed = False
                result.messages.append(f"{case.shapes}: {type(exc).__name__}: {exc}")
                continue
            result.checked += report.checked
            result.max_abs_error = max(result.max_abs_error, report.max_abs_error)
            result.max_rel_error = max(result.max_rel_error, report.max_rel_error)
    return result


def _check_fused_forward(case: Case) -> None:
    """A fused kernel must compute the same values as the composed reference."""
    with no_grad():
        fused_out = case.fn(*case.inputs).data
        with use_fused_kernels(False):
            reference = case.fn(*case.inputs).data
    diff = float(np.max(np.abs(fused_out - reference), initial=0.0))
    if not diff <= FUSED_FORWARD_ATOL:
        raise AssertionError(f"fused forward differs from the composed reference by {diff:.3g}")


def fused_available() -> bool:
    """True when the fused kernels module is present (it may be added after the engine)."""
    return importlib.util.find_spec(FUSED_MODULE) is not None


def _run_fused_checks(rng: np.random.Generator) -> list[SelftestResult]:
    """The composites again, with every fused kernel the fused module provides."""
    try:
        kernels = importlib.import_module(FUSED_MODULE)
    except Exception as exc:
        return [SelftestResult("fused (import)", [], passed=False, messages=[f"{type(exc).__name__}: {exc}"])]
    return [
        _run_check(check, rng, fused=True)
        for check in CHECKS
        if check.composite and hasattr(kernels, check.name)
    ]


def run_selftest(
    seed: int = 0, fused: bool | None = None, verbose: bool = True, out: TextIO | None = None
) -> list[SelftestResult]:
    """Gradcheck every op and composite and return one ``SelftestResult`` per row.

    ``fused``: None checks the composites with the fused kernels too when they exist, False skips
    them, True requires them. With ``verbose`` the table is printed to ``out`` (default stdout).
    The global random generator (dropout reseeds it) is left as it was.
    """
    rng = np.random.default_rng(seed)
    saved_state = get_rng().bit_generator.state
    start = time.perf_counter()
    try:
        results = [_run_check(check, rng, fused=False) for check in CHECKS]
        if fused is None:
            fused = fused_available()
        if fused:
            results += _run_fused_checks(rng)
    finally:
        get_rng().bit_generator.state = saved_state
    elapsed = time.perf_counter() - start
    if verbose:
        print(format_results(results, elapsed), file=out if out is not None else sys.stdout)
    return results


def format_results(results: list[SelftestResult], elapsed: float | None = None) -> str:
    """The aligned table, the reasons for any failure, and a one-line summary."""
    header = ("op", "shapes tried", "max abs err", "max rel err", "result")
    rows = [
        (
            r.name,
            "  ".join(r.shapes),
            f"{r.max_abs_error:.1e}",
            f"{r.max_rel_error:.1e}",
            "PASS" if r.passed else "FAIL",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        name, shapes, abs_err, rel_err, status = row
        return (
            f"{name:<{widths[0]}}  {shapes:<{widths[1]}}  {abs_err:>{widths[2]}}  "
            f"{rel_err:>{widths[3]}}  {status}"
        )

    lines = [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]
    failed = [r for r in results if not r.passed]
    for r in failed:
        lines += [f"FAIL {r.name}: {message}" for message in r.messages]
    passed = len(results) - len(failed)
    worst_abs = max((r.max_abs_error for r in results), default=0.0)
    checked = sum(r.checked for r in results)
    timing = f" in {elapsed:.1f} s" if elapsed is not None else ""
    lines.append("(rel err = |analytic - numeric| / |numeric|: it grows only where a gradient is close to 0)")
    lines.append(
        f"selftest: {passed}/{len(results)} checks passed ({checked} gradient elements, "
        f"worst abs err {worst_abs:.1e}){timing}"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tinypft selftest``."""
    parser.add_argument("--seed", type=int, default=0, help="seed of the random test inputs (default 0)")
    parser.add_argument("--no-fused", action="store_true", help="skip the fused kernels even if they exist")


def run(args: argparse.Namespace) -> int:
    """Run the self-test; exit status 0 when every row passes, 1 otherwise."""
    results = run_selftest(seed=args.seed, fused=False if args.no_fused else None)
    return 0 if all(r.passed for r in results) else 1
