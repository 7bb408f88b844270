"""A random subset of weight entries: BitFit's control (Ben Zaken, Ravfogel & Goldberg, ACL 2022).

Are bias terms special, or would any parameters of the same number do? The BitFit paper answers
by fine-tuning a random subset of the model's weights of the same size as BitFit's ("rand
uniform"), which does clearly worse. Here a fixed, seeded set of n entries is drawn uniformly from
the weight matrices of the chosen projections (by default every W_q, W_k, W_v, W_o, W_in, W_out
of every block), and each chosen matrix W (out, in) gets a trainable vector of deltas:

    W_eff = W + scatter(delta, index)      index (n_W,) flat positions in W, delta (n_W,) zeros at start
    dL/d delta = gather(dL/dW_eff, index)  = (dL/dW_eff).flat[index]

so only the subset's entries receive gradients, and W itself, a frozen parameter, never changes
(weight decay and all): the effective matrix exists only inside ``forward``. By default
n = sum over matrices of n_W is the number of biases BitFit trains on the same model (every
bias and LayerNorm beta, the head left out), and a classification head trains in full, as
BitFit's does, so the two train exactly the same number of scalars.

The indices follow from the config alone (seed, components, count) and the model's shapes, so an
adapter file stores only the deltas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import numpy as np

from ..engine.autograd import Context, Function
from ..model import GPT
from ..nn import Module, Parameter
from .bitfit import bitfit_parameter_names
from .config import BitFitConfig, RandomSubsetConfig
from .model import PeftModel

# component -> weight name (layer index i)
WEIGHT_NAMES: dict[str, str] = {
    "q": "blocks.{i}.attn.q_proj.weight",
    "k": "blocks.{i}.attn.k_proj.weight",
    "v": "blocks.{i}.attn.v_proj.weight",
    "o": "blocks.{i}.attn.o_proj.weight",
    "fc_in": "blocks.{i}.mlp.fc_in.weight",
    "fc_out": "blocks.{i}.mlp.fc_out.weight",
}


class AddAt(Function):
    """out = W + scatter(delta, index): W (out, in), delta (n,), index (n,) distinct flat positions.

    Backward: dL/dW = g (the identity) and dL/d delta = g.flat[index] (a gather).
    """

    @staticmethod
    def forward(ctx: Context, weight: np.ndarray, delta: np.ndarray, *, index: np.ndarray) -> np.ndarray:
        ctx.save_for_backward(index)
        out = weight.copy()  # (out, in)
        out.reshape(-1)[index] += delta
        return out

    @staticmethod
    def backward(ctx: Context, grad_out: np.ndarray) -> tuple[np.ndarray | None, ...]:
        (index,) = ctx.saved
        grad_weight = grad_out if ctx.needs_input_grad[0] else None
        grad_delta = grad_out.reshape(-1)[index] if ctx.needs_input_grad[1] else None  # (n,)
        return grad_weight, grad_delta


def bitfit_bias_count(model: GPT) -> int:
    """Scalars BitFit trains on ``model`` with its default components, the head left out."""
    params = dict(model.named_parameters())
    return sum(params[name].size for name in bitfit_parameter_names(model, BitFitConfig(include_head=False)))


def subset_indices(model: GPT, config: RandomSubsetConfig) -> dict[str, np.ndarray]:
    """weight name -> the sorted flat positions (n_W,) that train; matrices that got none are left out.

    n positions are drawn without replacement, uniformly over all entries of the chosen matrices
    together, from ``np.random.default_rng(config.seed)`` (not the global generator, so the subset
    depends on the config alone).
    """
    params = dict(model.named_parameters())
    names = [WEIGHT_NAMES[c].format(i=i) for i in range(model.config.n_layers) for c in config.components]
    names = [name for name in params if name in set(names)]  # the model's own order
    sizes = np.array([params[name].size for name in names])
    total = int(sizes.sum())
    n = bitfit_bias_count(model) if config.num_params is None else config.num_params
    if n > total:
        raise ValueError(f"RandomSubsetConfig: {n} entries asked for, the chosen weights have {total}")
    chosen = np.sort(np.random.default_rng(config.seed).choice(total, size=n, replace=False))  # (n,)
    starts = np.concatenate([[0], np.cumsum(sizes)])  # matrix j holds global positions starts[j]..starts[j+1]
    out = {}
    for j, name in enumerate(names):
        local = chosen[(chosen >= starts[j]) & (chosen < starts[j + 1])] - starts[j]
        if local.size:
            out[name] = local.astype(np.int64)
    return out


class SubsetDeltas(Module):
    """One delta vector (n_W,) per chosen weight, named after it (dots become underscores)."""

    def __init__(self, indices: dict[str, np.ndarray], dtype: np.dtype):
        super().__init__()
        for name, index in indices.items():
            delta = Parameter(np.zeros(index.size, dtype), dtype=dtype)  # (n_W,)
            self.register_parameter(name.replace(".", "_"), delta)


class RandomSubsetModel(PeftModel):
    """The frozen base model; a fixed random subset of its weight entries trains through deltas."""

    def __init__(self, base_model: GPT, peft_config: RandomSubsetConfig):
        super().__init__(base_model, peft_config)
        self.indices = subset_indices(base_model, peft_config)  # weight name -> (n_W,)
        self.deltas = SubsetDeltas(self.indices, base_model.wte.weight.dtype)  # zeros: W_eff = W at start

    def trained_base_names(self, base_model: GPT) -> list[str]:
        if self.peft_config.include_head and base_model.cls_head is not None:
            return [name for name, _ in base_model.named_parameters() if name.startswith("cls_head.")]
        return []

    @contextmanager
    def effective_weights(self) -> Iterator[None]:
        """The forward hook: inside the block each chosen Linear computes with W_eff = W +
        scatter(delta) (a graph node, so gradients reach the deltas); the base model's own
        parameters are put back after."""
        modules = dict(self.base_model.named_modules())
        with ExitStack() as stack:
            for name, index in self.indices.items():
                module = modules[name.rsplit(".", 1)[0]]
                delta = getattr(self.deltas, name.replace(".", "_"))
                effective = AddAt.apply(module.weight, delta, index=index)  # (out, in), W + scatter(delta)
                stack.enter_context(module.substituted("weight", effective))
            yield

    def effective_weight(self, name: str) -> np.ndarray:
        """W_eff (out, in) of the weight called ``name`` (the base weight itself if none of it trains)."""
        weight = dict(self.base_model.named_parameters())[name].data
        if name not in self.indices:
            return weight.copy()
        delta = getattr(self.deltas, name.replace(".", "_")).data
        return AddAt.forward(Context((False, False)), weight, delta, index=self.indices[name])

