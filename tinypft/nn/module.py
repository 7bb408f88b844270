"""``Parameter`` and ``Module``: the bookkeeping that turns tensors into a trainable model.

A ``Module`` owns named parameters and named sub-modules. Assigning an attribute registers it:

    self.q_proj = Linear(d, d)          # a sub-module, named "q_proj"
    self.weight = Parameter(array)      # a parameter, named "weight"
    self.config = config                # anything else is a plain attribute

so the full name of every parameter is the dotted path to it, ``blocks.0.attn.q_proj.bias``.
Those names key ``state_dict()`` and ``load_state_dict()`` and let fine-tuning methods select
parameters (BitFit trains exactly the ones ending in ``.bias``). A registered name is kept in the
registry (for traversal) and as an ordinary attribute (so ``block.attn.q_proj.weight`` is a plain
attribute read); assignment and ``del`` keep the two in step, and ``substituted`` swaps a parameter
for a computed tensor for the length of a ``with`` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..engine.autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module registers as trainable; requires grad unless told otherwise.

    Float data is converted to the default dtype (like any Tensor) unless ``dtype`` is given.
    ``removed_by`` names what dropped the parameter from its model for good (a prefix encoder's
    ``merge``): an optimizer still holding it refuses to step, since updating it changes nothing.
    """

    removed_by: str | None = None

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of every layer and model: registration, traversal, train/eval, state dicts.

    Subclasses call ``super().__init__()`` first, assign parameters and sub-modules as
    attributes, and define ``forward``; calling the module calls ``forward``.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})  # name -> Parameter, in assignment order
        object.__setattr__(self, "_modules", {})  # name -> Module, in assignment order
        self.training = True

    # ------------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before setting {name!r}")
        if isinstance(value, Parameter):
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            self.add_module(name, value)
        elif name in self._parameters and value is not None:
            raise TypeError(
                f"cannot assign {type(value).__name__} to parameter {name!r} of {type(self).__name__} "
                "(a Parameter or None is expected; wrap arrays with Parameter(...))"
            )
        elif name in self._modules and value is not None:
            raise TypeError(
                f"cannot assign {type(value).__name__} to sub-module {name!r} (a Module or None is expected)"
            )
        else:  # a plain attribute (None unregisters a parameter or sub-module of that name)
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Reached only when normal lookup fails: every registered name is also an ordinary attribute.
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter) -> None:
        """Register ``param`` under ``name`` (re-assigning a name keeps its position in the order)."""
        if not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter, got {type(param).__name__}")
        _check_name(name)
        self._modules.pop(name, None)
        self._parameters[name] = param
        self.__dict__[name] = param  # also an ordinary attribute: reading it costs what any attribute costs

    @contextmanager
    def substituted(self, name: str, tensor: Tensor) -> Iterator[None]:
        """Within the block, parameter ``name`` reads as ``tensor`` (e.g. a computed W + delta, a graph
        node through which gradients flow); the Parameter is put back after, even on an exception."""
        if name not in self._parameters:
            raise KeyError(f"{type(self).__name__} has no parameter {name!r}")
        param = self._parameters[name]
        self._parameters[name] = self.__dict__[name] = tensor
        try:
            yield
        finally:
            self._parameters[name] = self.__dict__[name] = param

    def add_module(self, name: str, module: Module) -> None:
        """Register ``module`` as a child named ``name`` (what attribute assignment does)."""
        if not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got {type(module).__name__}")
        _check_name(name)
        self._parameters.pop(name, None)
        self._modules[name] = module
        self.__dict__[name] = module  # also an ordinary attribute, as for parameters

    # ------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # ------------------------------------------------------------------ traversal
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules with their attribute names."""
        yield from self._modules.items()

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module (named ``prefix``) and every descendant, depth first, each once."""
        seen: set[int] = set()
        stack: list[tuple[str, Module]] = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(_join(name, child_name), child) for child_name, child in module._modules.items()]
            stack.extend(reversed(children))  # reversed: the first child is visited first

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs, depth first: a module's own parameters, then its children's.

        A parameter registered twice (tied weights) comes once, under the first name met.
        """
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for module_name, module in modules:
            for name, param in module._parameters.items():
                if id(param) not in seen:
                    seen.add(id(param))
                    yield _join(module_name, name), param

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def get_submodule(self, target: str) -> Module:
        """The sub-module at a dotted path (``"blocks.0.attn"``); ``""`` is this module."""
        module: Module = self
        if not target:
            return module
        walked: list[str] = []
        for part in target.split("."):
            if part not in module._modules:
                where = ".".join(walked) or type(self).__name__
                raise AttributeError(
                    f"no sub-module {part!r} in {where} (while resolving {target!r}); "
                    f"its children are: {', '.join(module._modules) or 'none'}"
                )
            module = module._modules[part]
            walked.append(part)
        return module

    def get_parameter(self, target: str) -> Parameter:
        """The parameter at a dotted path (``"blocks.0.attn.q_proj.bias"``)."""
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if name not in module._parameters:
            raise AttributeError(
                f"no parameter {name!r} in {module_path or type(self).__name__} "
                f"(while resolving {target!r}); "
                f"its parameters are: {', '.join(module._parameters) or 'none'}"
            )
        return module._parameters[name]

    # ------------------------------------------------------------------ modes and gradients
    def train(self, mode: bool = True) -> Module:
        """Set ``training`` on this module and every descendant (dropout reads it)."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Freeze (False) or unfreeze (True) every parameter."""
        for param in self.parameters():
            param.requires_grad = requires_grad
        return self

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``.grad = None``; the next backward starts afresh)."""
        for param in self.parameters():
            param.grad = None

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalars in the parameters (shared ones counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ state dicts
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter's array keyed by dotted name (same keys as ``named_parameters``)."""
        return {name: param.data.copy() for name, param in self.named_parameters()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy arrays into the existing parameters (in place), cast to each parameter's dtype.

        Everything is checked before anything is copied. Shape mismatches and integer arrays
        for float parameters are always errors; with ``strict`` missing and unexpected keys are
        too. One ValueError lists every problem. Returns ``(missing, unexpected)`` keys.
        """
        params = dict(self.named_parameters())
        missing = [name for name in params if name not in state]
        unexpected = [name for name in state if name not in params]
        wrong_shape: list[str] = []
        wrong_kind: list[str] = []
        arrays: dict[str, np.ndarray] = {}
        for name, param in params.items():
            if name not in state:
                continue
            value = state[name]
            array = np.asarray(value.data if isinstance(value, Tensor) else value)
            if array.shape != param.shape:
                wrong_shape.append(f"{name}: checkpoint {array.shape} vs model {param.shape}")
            elif array.dtype.kind != param.dtype.kind:  # float16 -> float32 is fine, int64 -> float32 is not
                wrong_kind.append(f"{name}: checkpoint {array.dtype} vs model {param.dtype}")
            arrays[name] = array

        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if wrong_shape:
            problems.append(f"shape mismatches ({len(wrong_shape)}): " + "; ".join(wrong_shape))
        if wrong_kind:
            problems.append(f"dtype mismatches ({len(wrong_kind)}): " + "; ".join(wrong_kind))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}:\n  " + "\n  ".join(problems))

        for name, array in arrays.items():
            params[name].copy_(array)  # in place, cast e.g. float16 -> float32; counts as a change
        return missing, unexpected

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        """One line of settings shown inside ``Name(...)``; layers override it."""
        return ""

    def __repr__(self) -> str:
        """A nested tree like PyTorch's: ``Name(\\n  (child): Child(...)\\n)``."""
        lines = self.extra_repr().split("\n") if self.extra_repr() else []
        for name, child in self._modules.items():
            child_repr = repr(child).replace("\n", "\n  ")  # indent the child's own lines
            lines.append(f"({name}): {child_repr}")
        if not self._modules:  # a leaf: everything on one line
            return f"{type(self).__name__}({', '.join(lines)})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"invalid parameter or module name {name!r}: a non-empty string without dots")
