"""Check analytic gradients against central finite differences, element by element.

For a function f of tensors x_1..x_n with output y, pick a fixed random direction r of y's shape
and check the scalar L = sum(y * r). For every element x_i[j] of every input that requires grad:

    numeric  = (L(x_i[j] + eps) - L(x_i[j] - eps)) / (2 eps)      (error O(eps^2))
    analytic = dL/dx_i[j] from backward()

and require |analytic - numeric| <= atol + rtol * |numeric| everywhere. Everything runs in float64:
in float32 the rounding error of L swamps the difference quotient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference one."""


@dataclass
class GradcheckReport:
    """What gradcheck measured: elements checked and the worst errors seen."""

    checked: int
    max_abs_error: float
    max_rel_error: float
    worst: str  # where the worst element (relative to its tolerance) was

    def __str__(self) -> str:
        errors = f"max abs err {self.max_abs_error:.2e}, max rel err {self.max_rel_error:.2e}"
        return f"{self.checked} elements, {errors}"


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> GradcheckReport:
    """Compare ``fn``'s backward with central differences on every element of every input needing grad.

    ``fn(*inputs)`` must be deterministic (no dropout) and return a Tensor. ``names`` labels the
    inputs in the error message (default ``input 0``, ``input 1``...). Raises ``GradcheckError``
    naming the input, the index, and the analytic and numeric values of the worst element;
    returns a ``GradcheckReport`` when all agree.
    """
    names = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    checked_inputs = [(name, t) for name, t in zip(names, inputs) if t.requires_grad]
    if not checked_inputs:
        raise ValueError("gradcheck: no input requires grad")
    for name, t in checked_inputs:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck: {name} is {t.dtype}; gradients can only be checked in float64")
        if not (t.data.flags.c_contiguous and t.data.flags.writeable):
            t.data = t.data.copy()  # perturbing below needs an array that reshape(-1) views, not copies

    out = fn(*inputs)
    direction = np.random.default_rng(seed).standard_normal(out.shape)  # fixed random projection

    def objective() -> float:
        with no_grad():
            return float(np.sum(fn(*inputs).data * direction))

    for _, t in checked_inputs:
        t.grad = None
    out.backward(direction)

    report = GradcheckReport(checked=0, max_abs_error=0.0, max_rel_error=0.0, worst="")
    worst_ratio, failure = 0.0, ""
    for name, t in checked_inputs:
        analytic = t.grad if t.grad is not None else np.zeros_like(t.data)
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input
        for j in range(flat.size):
            original = flat[j]
            flat[j] = original + eps
            plus = objective()
            flat[j] = original - eps
            minus = objective()
            flat[j] = original
            numeric = (plus - minus) / (2 * eps)
            a = float(analytic.reshape(-1)[j])
            err = abs(a - numeric)
            ratio = err / (atol + rtol * abs(numeric))
            report.checked += 1
            report.max_abs_error = max(report.max_abs_error, err)
            report.max_rel_error = max(
                report.max_rel_error, err / max(abs(numeric), 1e-12) if err > 0 else 0.0
            )
            if ratio >= worst_ratio:
                worst_ratio = ratio
                index = [int(i) for i in np.unravel_index(j, t.shape)] if t.ndim else []
                report.worst = f"{name}{index}: analytic {a:.10g}, numeric {numeric:.10g}"
                if ratio > 1:
                    failure = (
                        f"gradcheck failed: worst element {name}{index} (shape {t.shape}): "
                        f"analytic {a:.10g}, numeric {numeric:.10g}, abs err {err:.3g} "
                        f"> atol {atol:g} + rtol {rtol:g} * |numeric|"
                    )
    for _, t in checked_inputs:
        t.grad = None
    if failure:
        raise GradcheckError(failure)
    return report
