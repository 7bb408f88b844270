"""Reverse-mode automatic differentiation over NumPy arrays.

Three ideas make the whole engine:

1. A ``Tensor`` wraps an ``np.ndarray`` (``.data``) and, when it needs one, a gradient (``.grad``).
2. Every operation is a ``Function`` with ``forward`` (arrays in, array out) and ``backward``
   (the gradient of the output in, the gradients of the inputs out) written side by side.
   ``Function.apply`` runs ``forward`` and, if any input requires a gradient, records a ``Node``
   that remembers the function, its context and its inputs.
3. ``Tensor.backward`` sorts the recorded graph topologically (iteratively: no recursion limit)
   and applies the chain rule from the output back to the leaves:

       dL/dx = sum over the uses y = f(x, ...) of  f.backward(dL/dy)[x]

   A leaf's sum is added to its ``.grad`` once the walk is over (a fast kernel may still be
   computing a weight gradient on another thread until then: ``threads.later``).

Gradients of inputs that do not require one are never computed: ``ctx.needs_input_grad`` tells
each backward which of its inputs to skip, so a frozen weight costs no weight-gradient matmul.

In-place changes are caught, not silently differentiated wrongly: every write through the
library counts as a change of the tensor (its version) and of the memory it wrote, and
``backward`` refuses to use an array an op saved for it whose memory was written since that op's
forward (see ``Tensor.version``).

Besides, this module keeps the engine's three switches: ``no_grad`` (record no graph), the default
float dtype, and ``use_fused_kernels`` (the fast kernels of ``fused.py`` or the composed reference).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..threads import wait_later

# Tensor's operators call the functions of ops.py (``x + y`` is ``ops.add(x, y)``), and ops.py imports this
# module for Tensor and Function. To keep the imports one-way, this module imports ops for type checkers
# only; at run time ops.py binds the name ``ops`` here as its last line, before any operator can run.
if TYPE_CHECKING:
    from . import ops

# ----------------------------------------------------------------------------- global state

_default_dtype: np.dtype = np.dtype(np.float32)
_grad_enabled: bool = True
_fused_kernels: bool = True
_changes: int = 0  # in-place changes counted so far, in all tensors together: a clock
# id of an array that owns memory -> [weak reference to it, the clock at its last counted change]
_changed_memory: dict[int, list[Any]] = {}


def set_default_dtype(dtype: Any) -> None:
    """Set the float dtype new tensors get (float32 for training, float64 for gradient checks)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"default dtype must be float32 or float64, got {dtype}")
    _default_dtype = dtype


def get_default_dtype() -> np.dtype:
    """The float dtype new tensors get."""
    return _default_dtype


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Context manager: ``with default_dtype(np.float64): ...`` then restore the previous one."""
    previous = _default_dtype
    set_default_dtype(dtype)
    try:
        yield
    finally:
        set_default_dtype(previous)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Inside this block no graph is recorded (inference, evaluation, optimizer updates)."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def set_fused_kernels(enabled: bool) -> None:
    """Run the fused kernels of ``fused.py`` (fast; the default) or the composed reference versions.

    The composites of ``functional.py`` (and the embedding's backward) read this switch when they run:
    on, each hands its work to one fused ``Function`` with a hand-derived backward; off, it is
    computed from primitives, the definition the fused kernels are tested against.
    """
    global _fused_kernels
    _fused_kernels = bool(enabled)


def fused_kernels_enabled() -> bool:
    """Whether the composites run as fused kernels (True unless switched off)."""
    return _fused_kernels


@contextlib.contextmanager
def use_fused_kernels(enabled: bool) -> Iterator[None]:
    """Context manager: ``with use_fused_kernels(False): ...`` runs the composed reference versions."""
    previous = _fused_kernels
    set_fused_kernels(enabled)
    try:
        yield
    finally:
        set_fused_kernels(previous)


# ----------------------------------------------------------------------------- functions


class Context:
    """What ``forward`` hands to ``backward``: saved arrays and any other values it needs."""

    def __init__(self, needs_input_grad: tuple[bool, ...]):
        self.needs_input_grad = needs_input_grad
        self.saved: tuple[Any, ...] = ()

    def save_for_backward(self, *values: Any) -> None:
        self.saved = values


class Function:
    """An operation with its derivative. Subclasses define two static methods:

    ``forward(ctx, *arrays, **options) -> np.ndarray``
    ``backward(ctx, grad_out) -> tuple[np.ndarray | None, ...]`` (one entry per tensor input;
    ``None`` where ``ctx.needs_input_grad`` is False).
    """

    @staticmethod
    def forward(ctx: Context, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad_out: np.ndarray) -> tuple[np.ndarray | None, ...]:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: Tensor, **kwargs: Any) -> Tensor:
        """Run forward on the inputs' arrays; record a graph node if a gradient is needed.

        Two paths. When gradients are off (``no_grad``) or no input requires one, nothing is
        recorded: forward gets a throw-away ``_Unrecorded`` context whose ``save_for_backward``
        keeps nothing, so no array outlives the call. Cached decoding runs about 100 ops per
        token on tiny arrays, so this path is kept to a few attribute reads besides forward.
        """
        if len(inputs) > 1:
            _check_same_float_dtype(cls.__name__, inputs)
        if _grad_enabled:
            for t in inputs:
                if t._requires_grad:
                    return cls._apply_recorded(inputs, kwargs)
        ctx = _Unrecorded((False,) * len(inputs))
        return Tensor._wrap(cls.forward(ctx, *[t._data for t in inputs], **kwargs))

    @classmethod
    def _apply_recorded(cls, inputs: tuple[Tensor, ...], kwargs: dict[str, Any]) -> Tensor:
        """The recording path: forward with a real Context, then a Node that backward will visit."""
        ctx = Context(tuple([t._requires_grad for t in inputs]))
        out = Tensor._wrap(cls.forward(ctx, *[t._data for t in inputs], **kwargs))
        out.requires_grad = True  # the setter refuses a non-float output
        out._node = Node(cls, ctx, inputs, _changes)
        return out


class _Unrecorded(Context):
    """The context of an op that records no node: every input's ``needs_input_grad`` is False
    and ``save_for_backward`` drops what it is given (no backward will ever read it)."""

    def save_for_backward(self, *values: Any) -> None:
        pass


class Node:
    """One recorded application of a Function: how the tensor that owns it was computed.

    ``changes`` is the engine's count of in-place changes when the forward ran; memory written
    later has a larger count in ``_changed_memory`` (see ``Tensor.version``).
    """

    __slots__ = ("fn", "ctx", "inputs", "changes")

    def __init__(self, fn: type[Function], ctx: Context, inputs: Sequence[Tensor], changes: int = 0):
        self.fn, self.ctx, self.inputs, self.changes = fn, ctx, tuple(inputs), changes


class _Released:
    """Stands in for a node whose saved arrays were freed by ``backward``."""


RELEASED = _Released()


def _memory_owner(array: np.ndarray) -> Any:
    """The object that owns ``array``'s memory: the array itself, or the base a view looks into."""
    return array if array.base is None else array.base


def _record_change(array: np.ndarray) -> None:
    """Note that ``array``'s memory was written now (at clock ``_changes``). The entry is keyed by
    the owner's id and dropped when the owner is freed, so the table holds live memory only."""
    owner = array if array.base is None else array.base
    key = id(owner)
    entry = _changed_memory.get(key)
    if entry is not None:  # the usual case: an optimizer writes the same parameters every step
        entry[1] = _changes
        return
    try:
        ref = weakref.ref(owner, lambda _, key=key: _changed_memory.pop(key, None))
    except TypeError:  # memory owned by a non-array (a bytes buffer): kept for good
        ref = None
    _changed_memory[key] = [ref, _changes]


def _check_unchanged(node: Node, out: Tensor) -> None:
    """Raise if the memory of an array that ``node``'s forward saved for backward was written
    since that forward: the gradient would read values the forward never saw. Changed tensors
    whose values the backward does not read (the inputs of an ``add``) are fine."""
    for saved in node.ctx.saved:
        if type(saved) is not np.ndarray:
            continue
        owner = _memory_owner(saved)
        entry = _changed_memory.get(id(owner))
        if entry is None or entry[1] <= node.changes:
            continue
        tensors = (*node.inputs, out)
        named = [i for i, t in enumerate(tensors) if _memory_owner(t._data) is owner]
        if not named:
            what = f"an array of shape {saved.shape}"
        elif named[0] == len(node.inputs):
            what = f"its output (shape {out.shape})"
        else:
            what = f"its input {named[0]} (shape {tensors[named[0]].shape})"
        raise RuntimeError(
            f"backward(): {node.fn.__name__} saved {what} for the gradient, and that memory was "
            "modified in place after the forward pass (by an optimizer step, copy_, or an "
            "assignment to .data); the gradient would use the new values. Change tensors after "
            "backward(), or run the forward again"
        )


def _check_same_float_dtype(op: str, inputs: Sequence[Tensor]) -> None:
    """Refuse float inputs of two different dtypes (integer ids and bool masks may accompany them)."""
    first = None
    for t in inputs:
        dtype = t._data.dtype
        if dtype.kind == "f":
            if first is None:
                first = dtype
            elif dtype != first:
                names = " and ".join(sorted((str(first), str(dtype))))
                raise TypeError(f"{op}: cannot mix dtypes {names}; convert one side with .astype()")


# ----------------------------------------------------------------------------- tensor


class Tensor:
    """An n-dimensional array that can record how it was computed and backpropagate through it.

    Float data gets the default dtype (float32 unless ``set_default_dtype`` changed it) unless
    ``dtype`` is given; integer data (token ids) stays integer and can never require a gradient.

    ``version`` counts the in-place changes made through the library: assigning ``t.data = ...``,
    augmented assignment (``t.data -= lr * g``, which assigns ``t.data`` back), ``copy_``, an
    optimizer's ``step``, ``load_state_dict``. Each change also marks the memory it wrote (the
    array, or the array a view looks into) with the engine's running count of changes, and every
    graph node remembers that count at its forward. ``backward`` raises, naming the op, when an
    array the op saved for its gradient (``ctx.save_for_backward``) lives in memory written after
    that forward, through this tensor or any other viewing the same memory (a ``detach()``, a
    transpose, a slice), instead of computing a gradient from values the forward never saw. A
    tensor whose values its backward does not read (an input of ``add``), or whose ``.data`` was
    replaced by a new array (the saved one is untouched), is fine.

    The limit: a raw NumPy write into the array, ``t.data[...] = x`` or ``np.copyto(t.data, x)``,
    goes around the tensor and is not seen; write with ``t.copy_(x)``, or call
    ``t.bump_version()`` after such a write. The cost: one integer compared per graph node in
    backward, and a dictionary update per change (an optimizer step makes one per parameter).
    """

    __array_priority__ = 1000  # so that `ndarray + Tensor` calls Tensor.__radd__
    _version = 0  # in-place changes of this tensor (a class default: set on the instance at its first change)

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        if isinstance(data, Tensor):
            data = data.data
        array = np.asarray(data, dtype=dtype)
        if dtype is None and array.dtype.kind not in "iub":  # floats of any width become the default
            array = array.astype(_default_dtype, copy=False)
        self._data: np.ndarray = array
        self.grad: np.ndarray | None = None
        self._requires_grad = False
        self._node: Node | _Released | None = None
        self.requires_grad = requires_grad

    @classmethod
    def _wrap(cls, array: np.ndarray) -> Tensor:
        """Wrap a result array as-is (no dtype conversion): the ops' outputs.

        NumPy returns a scalar, not a 0-d array, from full reductions and from arithmetic on 0-d
        arrays; ``asarray`` turns it back into an array so ``.data`` is always an ``np.ndarray``.
        """
        t = cls.__new__(cls)
        t._data = array if type(array) is np.ndarray else np.asarray(array)
        t.grad, t._requires_grad, t._node = None, False, None
        return t

    # -- the array and its version
    @property
    def data(self) -> np.ndarray:
        """The values (an ``np.ndarray``). Assigning to it counts as an in-place change (``version``)."""
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        self._data = value if type(value) is np.ndarray else np.asarray(value)
        self.bump_version()

    @property
    def version(self) -> int:
        """How many in-place changes of this tensor the library has counted (see the class docstring)."""
        return self._version

    def bump_version(self) -> None:
        """Count an in-place change; call it after writing into ``.data`` around the library
        (``t.data[...] = x``), which no version counter can see by itself."""
        global _changes
        _changes += 1
        self._version += 1
        _record_change(self._data)

    def copy_(self, value: Any) -> Tensor:
        """Write ``value`` into this tensor's array in place (broadcast, cast to its dtype) and
        count the change: ``.data`` keeps its identity, so views and optimizers see the new values."""
        np.copyto(self._data, value._data if isinstance(value, Tensor) else value, casting="same_kind")
        self.bump_version()
        return self

    # -- gradient bookkeeping
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if value and self._data.dtype.kind != "f":
            raise TypeError(f"only float tensors can require grad, this one is {self._data.dtype}")
        self._requires_grad = bool(value)

    def requires_grad_(self, value: bool = True) -> Tensor:
        self.requires_grad = value
        return self

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def zero_grad(self) -> None:
        self.grad = None

    def detach(self) -> Tensor:
        """The same data, cut off from the graph."""
        return Tensor._wrap(self._data)

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is dL/d(self); it may be omitted only when self is a scalar (then it is 1).
        The graph's saved arrays are freed afterwards unless ``retain_graph`` is True.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad (no graph was recorded)")
        if isinstance(self._node, _Released):
            raise RuntimeError(
                "backward() through a graph that was already released; "
                "call the first backward with retain_graph=True to backpropagate twice"
            )
        if grad is None:
            if self._data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar output, this one has shape {self.shape}; "
                    "pass grad= of the same shape (or reduce with .sum() first)"
                )
            grad = np.ones_like(self._data)
        grad = np.asarray(grad._data if isinstance(grad, Tensor) else grad, dtype=self._data.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): grad has shape {grad.shape} but the tensor has shape {self.shape}")

        # dL/d(tensor) summed so far, for the tensors inside the graph; a leaf's contributions are
        # kept in order and summed into .grad at the end (a kernel may still be computing one of
        # them on another thread: a weight gradient started with ``threads.later``)
        grads: dict[int, np.ndarray] = {}
        leaf_grads: dict[int, tuple[Tensor, list[np.ndarray]]] = {}
        _add_grad(grads, leaf_grads, self, grad)
        try:
            for tensor in reversed(_topological_order(self)):
                node = tensor._node
                if node is None:  # a leaf: its gradient is summed after the loop
                    continue
                if node is RELEASED:
                    raise RuntimeError("backward() reached a part of the graph that was already released")
                g = grads.pop(id(tensor), None)
                if g is not None:
                    if node.changes != _changes:  # something was changed in place since this forward
                        _check_unchanged(node, tensor)
                    for inp, ig in zip(node.inputs, node.fn.backward(node.ctx, g)):
                        if ig is None or not inp._requires_grad:
                            continue
                        if ig.shape != inp._data.shape:  # a bug in an op's backward, never the user's fault
                            raise RuntimeError(
                                f"{node.fn.__name__}.backward gave shape {ig.shape} for input {inp.shape}"
                            )
                        _add_grad(grads, leaf_grads, inp, ig)
                if not retain_graph:
                    tensor._node = RELEASED  # frees the saved arrays and the references to inputs
        finally:
            wait_later()  # every gradient a kernel started is complete
        for leaf, contributions in leaf_grads.values():  # accumulate into .grad
            g = contributions[0]
            for more in contributions[1:]:
                g = g + more
            leaf.grad = g.copy() if leaf.grad is None else leaf.grad + g

    # -- conversions
    def numpy(self) -> np.ndarray:
        return self._data

    def item(self) -> float:
        return self._data.item()

    def astype(self, dtype: Any) -> Tensor:
        """A copy with another dtype (differentiable for float to float)."""
        return ops.cast(self, np.dtype(dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self._data, precision=4, threshold=20, edgeitems=2, prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{grad})"

    # -- operators: thin aliases of the functions in ops.py (see ``ops`` at the top of this module)
    def __add__(self, other: Any) -> Tensor:
        return ops.add(self, other)

    def __radd__(self, other: Any) -> Tensor:
        return ops.add(other, self)

    def __sub__(self, other: Any) -> Tensor:
        return ops.sub(self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return ops.sub(other, self)

    def __mul__(self, other: Any) -> Tensor:
        return ops.mul(self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return ops.mul(other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return ops.div(self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return ops.div(other, self)

    def __neg__(self) -> Tensor:
        return ops.neg(self)

    def __pow__(self, exponent: float) -> Tensor:
        return ops.pow(self, exponent)

    def __matmul__(self, other: Any) -> Tensor:
        return ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return ops.matmul(other, self)

    def __getitem__(self, index: Any) -> Tensor:
        return ops.getitem(self, index)

    def exp(self) -> Tensor:
        return ops.exp(self)

    def log(self) -> Tensor:
        return ops.log(self)

    def sqrt(self) -> Tensor:
        return ops.sqrt(self)

    def tanh(self) -> Tensor:
        return ops.tanh(self)

    def relu(self) -> Tensor:
        return ops.relu(self)

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return ops.sum(self, axis, keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return ops.mean(self, axis, keepdims)

    def max(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return ops.max(self, axis, keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        return ops.reshape(
            self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        )

    def permute(self, *axes: int) -> Tensor:
        return ops.permute(self, axes[0] if len(axes) == 1 and isinstance(axes[0], tuple | list) else axes)

    def transpose(self, axis0: int = -2, axis1: int = -1) -> Tensor:
        return ops.transpose(self, axis0, axis1)

    @property
    def T(self) -> Tensor:
        return ops.transpose(self, -2, -1)

    def broadcast_to(self, shape: tuple[int, ...]) -> Tensor:
        return ops.broadcast_to(self, shape)

    def masked_fill(self, mask: Any, value: float) -> Tensor:
        return ops.masked_fill(self, mask, value)


def _add_grad(
    grads: dict[int, np.ndarray], leaf_grads: dict[int, tuple[Tensor, list[np.ndarray]]],
    tensor: Tensor, g: np.ndarray,
) -> None:
    """Add one contribution ``g`` to dL/d(tensor): summed at once inside the graph, kept for later
    (in order) for a leaf."""
    if tensor._node is None:
        leaf_grads.setdefault(id(tensor), (tensor, []))[1].append(g)
        return
    previous = grads.get(id(tensor))
    grads[id(tensor)] = g if previous is None else previous + g


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors of the graph below ``root``, each after all of its inputs (iterative DFS post-order).

    Only tensors that require grad are visited: nothing flows into the others.
    """
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        tensor, inputs_done = stack.pop()
        if inputs_done:  # every input of this tensor is already in the order
            order.append(tensor)
            continue
        key = id(tensor)
        if key in visited:
            continue
        visited.add(key)
        stack.append((tensor, True))
        node = tensor._node
        if node is not None and node is not RELEASED:
            for inp in node.inputs:
                if inp._requires_grad and id(inp) not in visited:
                    stack.append((inp, False))
    return order


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """Turn a Python number or array into a constant Tensor (matching ``like``'s float dtype)."""
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    if like is not None and like.dtype.kind == "f" and array.dtype.kind in "fiu":
        return Tensor(array, dtype=like.dtype)  # explicit dtype: not converted to the default one
    return Tensor(array)
