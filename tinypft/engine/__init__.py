"""The autograd engine: tensors, primitive ops, composites and the gradient checker."""

from . import functional, ops
from .autograd import (
    Context,
    Function,
    Tensor,
    as_tensor,
    default_dtype,
    fused_kernels_enabled,
    get_default_dtype,
    is_grad_enabled,
    no_grad,
    set_default_dtype,
    set_fused_kernels,
    use_fused_kernels,
)
from .gradcheck import GradcheckError, GradcheckReport, gradcheck
from .ops import unbroadcast
from .rng import get_rng, manual_seed

__all__ = [
    "Context", "Function", "GradcheckError", "GradcheckReport", "Tensor", "as_tensor", "default_dtype",
    "functional", "fused_kernels_enabled", "get_default_dtype", "get_rng", "gradcheck", "is_grad_enabled",
    "manual_seed", "no_grad", "ops", "set_default_dtype", "set_fused_kernels", "unbroadcast",
    "use_fused_kernels",
]
