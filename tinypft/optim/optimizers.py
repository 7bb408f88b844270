"""Optimizers (SGD, AdamW) and gradient clipping, with PyTorch's exact update rules.

An optimizer holds parameter groups, each a dict ``{"params": [...], "lr": ..., ...}`` whose
hyperparameters a scheduler may change between steps. ``step()`` updates every parameter's
array in place (``p.data`` keeps its identity), so anything holding a reference sees the update.
Only parameters that require grad are kept: a frozen parameter gets no state and is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..engine.autograd import Tensor, no_grad
from ..threads import parallel

ParamsLike = Iterable[Tensor] | Iterable[dict[str, Any]]
PARALLEL_UPDATE_SIZE = 1 << 14  # elements: a parameter this large is updated on a thread of its own


class Optimizer:
    """Base class: parameter groups, per-parameter state, zero_grad, state_dict / load_state_dict.

    Subclasses implement ``update(param, grad, state, group)`` for one parameter. ``step`` runs the
    updates of different parameters at the same time (``tinypft.set_num_threads``), so an update
    must touch only its own parameter and state.
    """

    def __init__(self, params: ParamsLike, defaults: dict[str, Any]):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[Tensor, dict[str, Any]] = {}  # parameter -> its buffers (created at its first step)
        seen: set[int] = set()
        for group in groups:
            trainable = [p for p in group["params"] if p.requires_grad]
            for p in trainable:
                if id(p) in seen:
                    raise ValueError(f"{type(self).__name__}: a parameter of shape {p.shape} is given twice")
                seen.add(id(p))
            self.param_groups.append({**defaults, **group, "params": trainable})
        if not seen:
            raise ValueError(f"{type(self).__name__}: no parameter requires grad; nothing to optimize")

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @no_grad()
    def step(self) -> None:
        """Apply one update to every parameter that has a gradient.

        Each update is an in-place change, so it bumps the parameter's version: a graph recorded
        before the step refuses to backpropagate through the old values (``Tensor.version``).
        A parameter its model has dropped (``Parameter.removed_by``, set by a prefix's ``merge``)
        is an error: the step would train a tensor the model no longer reads.
        """
        updates = []  # (parameter, its state, its group), in the order of the groups
        for group in self.param_groups:
            for p in group["params"]:
                removed_by = getattr(p, "removed_by", None)
                if removed_by is not None:
                    raise RuntimeError(
                        f"{type(self).__name__}.step(): a parameter of shape {p.shape} was removed from its "
                        f"model by {removed_by}; this optimizer would train tensors the model no longer "
                        "uses. Build a new optimizer over the model's parameters"
                    )
                if p.grad is not None:
                    updates.append((p, self.state.setdefault(p, {}), group))
        # Each update reads and writes only its own parameter and state, so large ones run side by side
        # on tinypft's threads (the largest first, so that the threads finish together): the same
        # numbers. Small ones are mostly Python, which holds the GIL: they run in turn, as one task.
        updates.sort(key=lambda update: -update[0].size)
        large = [u for u in updates if u[0].size >= PARALLEL_UPDATE_SIZE]
        small = updates[len(large):]
        tasks = [lambda u=u: self.update(u[0], u[0].grad, u[1], u[2]) for u in large]
        if small:
            tasks.append(lambda: [self.update(p, p.grad, state, group) for p, state, group in small])
        parallel(tasks)
        for p, _, _ in updates:
            p.bump_version()

    def update(self, p: Tensor, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def _all_params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """Plain arrays and numbers, for checkpoints:

            {"state": {position: {buffer name: array or number}},
             "param_groups": [{hyperparameter: value, ..., "params": [positions]}]}

        Parameters are identified by their position across the groups, so the same model and
        optimizer construction in a new process can resume from it. Arrays are copies.
        """
        params = self._all_params()
        state = {
            i: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self.state[p].items()}
            for i, p in enumerate(params)
            if p in self.state
        }
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            hyperparameters = {k: v for k, v in group.items() if k != "params"}
            groups.append({**hyperparameters, "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore hyperparameters and buffers saved by ``state_dict``; keys may be strings (JSON)."""
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the saved groups hold "
                f"{[len(g['params']) for g in saved_groups]} parameters, "
                f"this optimizer's hold {[len(g['params']) for g in self.param_groups]}"
            )
        params = self._all_params()
        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, buffers in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < len(params):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: state for parameter {i} of {len(params)}"
                )
            p, restored = params[i], {}
            for name, value in buffers.items():
                if isinstance(value, np.ndarray):
                    if value.shape != p.shape:
                        raise ValueError(
                            f"{type(self).__name__}.load_state_dict: {name!r} of parameter {i} has shape "
                            f"{value.shape}, the parameter has {p.shape}"
                        )
                    value = value.astype(p.dtype, copy=True)
                restored[name] = value
            new_state[p] = restored
        for group, saved in zip(self.param_groups, saved_groups):
            for k, v in saved.items():
                if k != "params":
                    group[k] = tuple(v) if isinstance(v, list) else v  # JSON turns tuples (betas) into lists
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay (PyTorch semantics):

        g = grad + weight_decay * p
        b = momentum * b + g        (b = g at the first step)
        p = p - lr * b              (p - lr * g without momentum)
    """

    def __init__(self, params: ParamsLike, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        _check_setting("SGD", "lr", lr, lo=0.0)
        _check_setting("SGD", "momentum", momentum, lo=0.0)
        _check_setting("SGD", "weight_decay", weight_decay, lo=0.0)
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def update(self, p: Tensor, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data  # a new array: p.grad stays as it was
        if group["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, dtype=p.dtype)
            else:
                buf *= group["momentum"]
                buf += grad
            grad = buf
        p.data -= group["lr"] * grad


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), in ``torch.optim.AdamW``'s order. At step t:

        p = p * (1 - lr * weight_decay)                       decay, independent of the gradient
        m = beta1 * m + (1 - beta1) * g                       first moment
        v = beta2 * v + (1 - beta2) * g^2                     second moment
        p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    m and v (``exp_avg``, ``exp_avg_sq``) have the parameter's dtype; all arithmetic is in place.
    """

    def __init__(
        self,
        params: ParamsLike,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        _check_setting("AdamW", "lr", lr, lo=0.0)
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise ValueError(f"AdamW: betas must be a pair (beta1, beta2), got {betas!r}")
        _check_setting("AdamW", "betas[0]", betas[0], lo=0.0, below=1.0)
        _check_setting("AdamW", "betas[1]", betas[1], lo=0.0, below=1.0)
        _check_setting("AdamW", "eps", eps, above=0.0)
        _check_setting("AdamW", "weight_decay", weight_decay, lo=0.0)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def update(self, p: Tensor, grad: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        if not state:
            state.update(step=0, exp_avg=np.zeros_like(p.data), exp_avg_sq=np.zeros_like(p.data))
        state["step"] += 1
        t, lr, eps, wd = state["step"], group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        param, m, v = p.data, state["exp_avg"], state["exp_avg_sq"]
        scratch = np.empty_like(param)

        param *= 1.0 - lr * wd
        np.multiply(grad, 1.0 - beta1, out=scratch)  # m = beta1 m + (1 - beta1) g
        m *= beta1
        m += scratch
        np.multiply(grad, grad, out=scratch)  # v = beta2 v + (1 - beta2) g^2
        scratch *= 1.0 - beta2
        v *= beta2
        v += scratch
        np.sqrt(v, out=scratch)  # denominator: sqrt(v) / sqrt(1 - beta2^t) + eps
        scratch /= math.sqrt(1.0 - beta2**t)
        scratch += eps
        np.divide(m, scratch, out=scratch)  # p -= lr / (1 - beta1^t) * m / denominator
        scratch *= lr / (1.0 - beta1**t)
        param -= scratch


def _check_setting(
    optimizer: str, name: str, value: Any, lo: float | None = None, above: float | None = None,
    below: float | None = None,
) -> None:
    """Refuse a hyperparameter that is not a finite real number in its range (lo <= value, above <
    value, value < below): NaN, for one, compares False with everything and would pass a plain
    ``value < 0`` test, then turn every parameter into NaN at the first step."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{optimizer}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{optimizer}: {name} must be finite, got {value}")
    if lo is not None and not value >= lo:
        raise ValueError(f"{optimizer}: {name} must be >= {lo}, got {value}")
    if above is not None and not value > above:
        raise ValueError(f"{optimizer}: {name} must be > {above}, got {value}")
    if below is not None and not value < below:
        raise ValueError(f"{optimizer}: {name} must be < {below}, got {value}")


def clip_grad_norm_(parameters: Iterable[Tensor] | Tensor, max_norm: float) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

        total = sqrt(sum over parameters of sum(grad^2))
        if total + 1e-6 > max_norm:  grad *= max_norm / (total + 1e-6)     (in place)

    Returns ``total``, the norm before clipping (PyTorch's semantics and eps). Parameters without
    a gradient are skipped. A non-finite norm leaves the gradients untouched so the caller can
    detect it and skip the step.
    """
    _check_setting("clip_grad_norm_", "max_norm", max_norm, above=0.0)
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))  # vdot flattens and sums in one pass
    scale = max_norm / (total + 1e-6)
    if scale < 1.0 and math.isfinite(total):
        for g in grads:
            g *= scale
    return total
