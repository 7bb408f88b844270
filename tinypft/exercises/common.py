"""What every checker shares: how it calls the student's code, compares, fails and passes.

A checker (``check_*`` in the ``lessonNN_*.py`` modules) runs the student's function on several
inputs and compares each result with tinypft's own version (or with finite differences). It prints
one line, ``check_x: passed (what was tried).``, when everything agrees, and otherwise raises an
``AssertionError`` that says which input failed, what was expected and what came back, followed by
a ``Hint:`` line. A ``NotImplementedError`` raised by an unfinished exercise passes through
unchanged, so an empty stub reads as "not done yet" rather than as a wrong answer.

The checkers leave the engine's global state (default dtype, fused setting, random generator) as
they found it: they build models and reference results inside ``preserved_engine_state()``, and
change the default dtype only within ``default_dtype(...)``.

The helpers that report take the checker's name ``check`` first (it starts every message) and
``where``, a description of the input being tried (it follows the name).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import numpy as np

from ..engine import Tensor, fused_kernels_enabled, get_rng, set_fused_kernels

# ----------------------------------------------------------------------------- reporting


def fail(check: str, message: str, hint: str | None = None) -> NoReturn:
    """Raise the ``AssertionError`` the student sees: ``check: message``, then ``Hint: hint`` if given."""
    text = f"{check}: {message}"
    if hint:
        text += f"\nHint: {hint}"
    raise AssertionError(text)


def passed(check: str, what: str) -> None:
    """Print the one line of a checker that found nothing wrong; ``what`` says what it tried."""
    print(f"{check}: passed ({what}).")


def call_student(check: str, where: str, fn: Callable[..., Any], *args: Any, hint: str | None = None) -> Any:
    """``fn(*args)``; a crash other than a stub's NotImplementedError becomes a failure naming ``where``."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:
        fail(check, f"{where}: your function raised {type(exc).__name__}: {exc}", hint)


# ----------------------------------------------------------------------------- comparing results


def as_array(value: Any) -> np.ndarray:
    """A Tensor's data, or anything else as a NumPy array."""
    return value.data if isinstance(value, Tensor) else np.asarray(value)


def _show(a: np.ndarray) -> str:
    """A short printout of an array: 4 decimals, at most 3 items at each end of a long axis."""
    return np.array2string(np.asarray(a), precision=4, threshold=40, edgeitems=3, separator=", ")


def compare_arrays(
    check: str,
    where: str,
    got: Any,
    expected: np.ndarray,
    hint: str | None = None,
    atol: float = 1e-8,
    rtol: float = 1e-6,
) -> None:
    """Fail unless ``got`` has ``expected``'s shape and values: |got - expected| <= atol + rtol |expected|
    everywhere (booleans compared exactly). The message names the first differing index and, for
    arrays of at most 48 values, shows both in full."""
    got_array = as_array(got)
    if got_array.dtype.kind not in "biuf":
        fail(
            check,
            f"{where}: got {type(got).__name__} of {got_array.dtype}, expected an array of numbers",
            hint,
        )
    if got_array.shape != expected.shape:
        fail(check, f"{where}: got shape {got_array.shape}, expected shape {expected.shape}", hint)
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
    fail(check, message, hint)


def _scalar(value: Any) -> str:
    """One entry of an array as text: a float to 10 significant digits, anything else by repr."""
    return f"{float(value):.10g}" if np.asarray(value).dtype.kind == "f" else repr(value.item())


def matches(got: Any, candidate: np.ndarray, atol: float = 1e-8) -> bool:
    """Does ``got`` have ``candidate``'s shape and values? Checkers use it to recognize the result of
    a common mistake (a candidate) and give that mistake's hint."""
    got_array = as_array(got)
    return (
        got_array.dtype.kind in "biuf"
        and got_array.shape == candidate.shape
        and bool(np.allclose(got_array, candidate, atol=atol, rtol=1e-6))
    )


# ----------------------------------------------------------------------------- tensors and gradients


@contextlib.contextmanager
def preserved_engine_state() -> Iterator[None]:
    """Restore the global random generator (model construction draws from it) and the fused setting."""
    rng_state = get_rng().bit_generator.state
    fused = fused_kernels_enabled()
    try:
        yield
    finally:
        get_rng().bit_generator.state = rng_state
        set_fused_kernels(fused)


def float64_leaf(array: np.ndarray) -> Tensor:
    """A float64 leaf Tensor that requires grad: an input whose gradient a checker compares."""
    return Tensor(array, requires_grad=True, dtype=np.float64)


def require_tensor_with_graph(check: str, where: str, out: Any, inputs: Sequence[Tensor]) -> Tensor:
    """Fail unless ``out`` is a Tensor connected to the graph of ``inputs`` (so gradients can reach them)."""
    if not isinstance(out, Tensor):
        fail(
            check,
            f"{where}: your function returned {type(out).__name__}, expected a tinypft Tensor",
            "build the result from Tensor operations (+, *, @, .sum(), .exp() ...) so gradients can flow",
        )
    if any(t.requires_grad for t in inputs) and not out.requires_grad:
        fail(
            check,
            f"{where}: the result is not connected to the inputs (requires_grad is False)",
            "do not leave the graph: avoid .data, .numpy() and NumPy functions on the inputs",
        )
    return out


def gradients_of(out: Tensor, grad_out: np.ndarray, tensors: Sequence[Tensor]) -> list[np.ndarray]:
    """Backpropagate ``grad_out`` from ``out`` and return the gradients of ``tensors`` (zeros if none)."""
    for t in tensors:
        t.grad = None
    out.backward(grad_out)
    grads = [t.grad.copy() if t.grad is not None else np.zeros_like(t.data) for t in tensors]
    for t in tensors:
        t.grad = None
    return grads
