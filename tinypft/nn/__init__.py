"""Modules and layers: ``Parameter``, ``Module`` and the building blocks of a GPT-2."""

from ..engine import functional
from .layers import GELU, Dropout, Embedding, LayerNorm, Linear, ModuleList, Sequential, Tanh
from .module import Module, Parameter

__all__ = [
    "GELU", "Dropout", "Embedding", "LayerNorm", "Linear", "Module", "ModuleList", "Parameter", "Sequential",
    "Tanh", "functional",
]
