"""The layers a GPT-2 is built from, each a thin Module around a function of ``engine.functional``.

Every random initialization draws from ``engine.rng.get_rng()``, so after ``manual_seed(n)``
two constructions are bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..engine import functional as F
from ..engine import ops
from ..engine.autograd import Tensor
from ..engine.rng import get_rng
from .module import Module, Parameter


class Linear(Module):
    """y = x W^T + b:  x (..., in) -> y (..., out), W (out, in), b (out,).

    W and b start uniform in [-k, k] with k = 1/sqrt(in), which keeps the output's variance close
    to the input's (PyTorch's default).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        k = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(get_rng().uniform(-k, k, size=(out_features, in_features)))
        self.bias = Parameter(get_rng().uniform(-k, k, size=(out_features,))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Linear(in_features={self.in_features}): the input has shape {x.shape}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        has_bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={has_bias}"


class Embedding(Module):
    """A lookup table: ids (...) integer -> weight[ids] (..., dim), weight (num_embeddings, dim) ~ N(0, 1).

    The gradient of a row is the sum of the gradients at the positions that looked it up.
    An id outside [0, num_embeddings) raises an IndexError naming the id and the table size.
    """

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.weight = Parameter(get_rng().standard_normal((num_embeddings, dim)))

    def forward(self, ids: Any) -> Tensor:
        return ops.embedding(self.weight, ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last axis:  x (..., dim) -> (..., dim).

    weight starts at ones and bias at zeros, so a fresh LayerNorm only standardizes.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim))
        self.bias = Parameter(np.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"LayerNorm({self.dim}): the input has shape {x.shape}")
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1/(1-p); else identity."""

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GELU(Module):
    """GPT-2's GELU, x/2 * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class Tanh(Module):
    """y = tanh(x) (the Prefix-Tuning reparametrization MLP uses it)."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class ModuleList(Module):
    """A list of modules registered as children named "0", "1", ...: index, iterate, append, len."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        self.extend(modules)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def _index(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{type(self).__name__} index {index} is out of range for length {len(self)}")
        return str(index % len(self))

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return type(self)(list(self._modules.values())[index])
        return self._modules[self._index(index)]

    def __setitem__(self, index: int, module: Module) -> None:
        self.add_module(self._index(index), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))


class Sequential(ModuleList):
    """Modules applied one after the other: Sequential(a, b, c)(x) = c(b(a(x)))."""

    def __init__(self, *modules: Module):
        if len(modules) == 1 and not isinstance(modules[0], Module):  # Sequential([a, b]) from a slice
            modules = tuple(modules[0])
        super().__init__(modules)

    def forward(self, x: Any) -> Any:
        for module in self:
            x = module(x)
        return x
