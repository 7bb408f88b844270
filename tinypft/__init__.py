"""tinypft: parameter-efficient fine-tuning (BitFit, Prefix-Tuning, Prompt-Tuning) from first principles."""

__version__ = "0.1.0"

from .engine import (  # noqa: E402
    Function,
    GradcheckError,
    Tensor,
    default_dtype,
    get_default_dtype,
    gradcheck,
    manual_seed,
    no_grad,
    set_default_dtype,
)
from .engine.ops import (  # noqa: E402
    concat,
    embedding,
    exp,
    gelu,
    log,
    matmul,
    relu,
    sqrt,
    stack,
    tanh,
    where,
)
from .model import GPT, GPTConfig, load_pretrained  # noqa: E402
from .threads import get_num_threads, set_num_threads  # noqa: E402

__all__ = [
    "GPT",
    "Function",
    "GPTConfig",
    "GradcheckError",
    "Tensor",
    "__version__",
    "concat",
    "default_dtype",
    "embedding",
    "exp",
    "gelu",
    "get_default_dtype",
    "get_num_threads",
    "gradcheck",
    "load_pretrained",
    "log",
    "manual_seed",
    "matmul",
    "no_grad",
    "relu",
    "set_default_dtype",
    "set_num_threads",
    "sqrt",
    "stack",
    "tanh",
    "where",
]
