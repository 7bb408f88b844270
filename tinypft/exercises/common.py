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


class Refused(AssertionError):
    """The failure of a submission that uses tinypft's own implementation of the exercise."""


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
    except (NotImplementedError, Refused):
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


# ------------------------------------------------------------------------ refusing the library's own code

_LOADS = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"}
_ATTRS = {"LOAD_ATTR", "LOAD_METHOD"}


def _is_library(value: Any) -> bool:
    """Is ``value`` a function or class defined inside the tinypft package?"""
    return str(getattr(value, "__module__", "") or "").startswith("tinypft")


def _functions_of(value: Any) -> list[Any]:
    """The Python functions a submission consists of: itself, or a class's methods (base classes too,
    up to the library's), unwrapping bound methods, static methods, partials and decorators."""
    import functools
    import inspect

    if isinstance(value, functools.partial):
        return [value.func, *[a for a in value.args if callable(a)], *_functions_of(value.func)]
    if inspect.ismethod(value):
        return _functions_of(value.__func__)
    if isinstance(value, staticmethod | classmethod):
        return _functions_of(value.__func__)
    if inspect.isclass(value):
        found = []
        for klass in value.__mro__:
            if _is_library(klass) or klass is object:
                continue
            for member in vars(klass).values():
                if isinstance(member, staticmethod | classmethod | property):
                    member = member.__func__ if not isinstance(member, property) else member.fget
                if inspect.isfunction(member):
                    found.append(member)
        return found
    if inspect.isfunction(value):
        wrapped = getattr(value, "__wrapped__", None)
        return [value] + ([wrapped] if wrapped is not None else [])
    return []


def _code_objects(code: Any) -> Iterator[Any]:
    """A code object and every code object nested in it (inner functions, lambdas, comprehensions)."""
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from _code_objects(const)


def _resolve(name: str, fn: Any) -> Any:
    """The value a name read by ``fn`` refers to: its closure, its globals, or a builtin."""
    import builtins

    code = fn.__code__
    if fn.__closure__ and name in code.co_freevars:
        try:
            return fn.__closure__[code.co_freevars.index(name)].cell_contents
        except ValueError:  # an empty cell
            return None
    if name in fn.__globals__:
        return fn.__globals__[name]
    return getattr(builtins, name, None)


def library_uses(
    submission: Any, forbidden: dict[str, Any], attributes: dict[str, str] | None = None
) -> tuple[str, str] | None:
    """How ``submission`` uses one of the ``forbidden`` library objects (label -> object), if it does.

    Returns ``(how, label)`` with ``how`` one of "is", "subclasses", "calls", or None. The submission's
    code is read, not run: every name it loads (globals, closure cells, imports inside the function)
    and every attribute chain on it (``ops.Mul``, ``tinypft.engine.functional.attention``) is resolved
    and compared, by identity, with the forbidden objects; functions and classes of the student's own
    that it uses are read in the same way. ``attributes`` (attribute name -> label) refuses reading an
    attribute of that name on anything, e.g. ``config.num_parameters``.
    """
    import dis
    import importlib
    import inspect

    attributes = attributes or {}
    targets = {id(obj): label for label, obj in forbidden.items()}
    for label, obj in forbidden.items():
        if hasattr(obj, "__func__"):  # a bound or class method: its function, whoever it is bound to
            targets.setdefault(id(obj.__func__), label)
    for label, obj in forbidden.items():
        for member in vars(obj).values() if inspect.isclass(obj) else ():
            member = getattr(member, "__func__", member)
            if inspect.isfunction(member):
                targets.setdefault(id(member), label)  # a library class's methods, e.g. ops.Mul.backward

    def forbidden_label(value: Any) -> str | None:
        for candidate in (value, getattr(value, "__func__", None), getattr(value, "__wrapped__", None)):
            if candidate is not None and id(candidate) in targets:
                return targets[id(candidate)]
        return None

    top = forbidden_label(submission)
    if top is not None:
        return "is", top
    if inspect.isclass(submission):
        for base in submission.__mro__[1:]:
            if id(base) in targets:
                return "subclasses", targets[id(base)]
    seen: set[int] = set()
    pending = list(_functions_of(submission))
    while pending:
        fn = pending.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if forbidden_label(fn) is not None:
            return "calls", forbidden_label(fn)
        if not hasattr(fn, "__code__"):
            continue
        for default in (fn.__defaults__ or ()) + tuple((fn.__kwdefaults__ or {}).values()):
            if forbidden_label(default) is not None:
                return "calls", forbidden_label(default)
        for code in _code_objects(fn.__code__):
            chain: Any = None
            module: Any = None
            for ins in dis.get_instructions(code):
                if ins.opname in _ATTRS and ins.argval in attributes:
                    return "calls", attributes[ins.argval]
                if ins.opname in _LOADS:
                    chain = _resolve(ins.argval, fn)
                elif ins.opname in _ATTRS and chain is not None:
                    chain = getattr(chain, ins.argval, None)
                elif ins.opname == "IMPORT_NAME" and str(ins.argval).startswith("tinypft"):
                    module = importlib.import_module(ins.argval)
                    chain = module
                    continue
                elif ins.opname == "IMPORT_FROM" and module is not None:
                    chain = getattr(module, ins.argval, None)
                else:
                    chain = None
                    if not ins.opname.startswith("STORE_") and ins.opname != "POP_TOP":
                        module = None
                    continue
                if chain is None:
                    continue
                label = forbidden_label(chain)
                if label is not None:
                    return "calls", label
                if not _is_library(chain) and (inspect.isfunction(chain) or inspect.isclass(chain)):
                    pending.extend(_functions_of(chain))  # the student's own helper: read it too
    return None


def refuse_library(
    check: str, submission: Any, forbidden: dict[str, Any], attributes: dict[str, str] | None = None
) -> None:
    """Fail when the submission is, subclasses or calls tinypft's own implementation of the exercise
    (see ``library_uses``): the message names what was refused and why."""
    found = library_uses(submission, forbidden, attributes)
    if found is None:
        return
    how, label = found
    kind = "class" if isinstance(submission, type) else "function"
    raise Refused(f"{check}: your {kind} {how} tinypft's own {label}; the exercise is to write it yourself\n"
                  "Hint: use NumPy and the Tensor operations the exercise names, not the library function "
                  "it is checked against")


@contextlib.contextmanager
def forbid_forward(check: str, module: Any, label: str) -> Iterator[None]:
    """Within the block, calling ``module`` (or its ``forward``) fails the check: the exercise rebuilds
    that forward pass from the module's parts, so running the module itself is refusing to do it."""
    original = module.forward

    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise Refused(f"{check}: your function calls tinypft's own {label}; the exercise is to write it "
                      "yourself\nHint: use the module's parts (its projections, layers and tables), not the "
                      "module itself")

    module.forward = refused
    try:
        yield
    finally:
        module.forward = original
