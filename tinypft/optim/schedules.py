"""Learning-rate schedules: lr(step) = base_lr * multiplier(step).

With ``w`` warmup steps and ``T`` total steps, every schedule first warms up linearly,
multiplier = step / w for step < w, and then

    constant:  1
    linear:    (T - step) / (T - w)                                falls to 0 at step T
    cosine:    (1 + cos(pi * (step - w) / (T - w))) / 2            falls to 0 at step T

and stays 0 after step T for the decaying ones. These are Hugging Face's ``get_*_schedule_with_warmup``
multipliers, applied like ``torch.optim.lr_scheduler.LambdaLR``: the optimizer's lr is set to
lr(0) at construction and to lr(n) after the n-th call of ``step()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .optimizers import Optimizer

SCHEDULES = ("constant", "linear", "cosine")


def multiplier(step: int, name: str, warmup_steps: int, total_steps: int) -> float:
    """The factor that multiplies the base lr at ``step`` (see the module docstring)."""
    _check(name, warmup_steps, total_steps)
    if step < warmup_steps:
        return step / warmup_steps
    if name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))  # 0 -> 1 over the decay
    if name == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(step: int, base_lr: float, name: str, warmup_steps: int, total_steps: int) -> float:
    """The learning rate at ``step``: ``base_lr * multiplier(step, ...)``."""
    return base_lr * multiplier(step, name, warmup_steps, total_steps)


def lr_lambda(name: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """``step -> multiplier`` (what ``torch.optim.lr_scheduler.LambdaLR`` takes)."""
    _check(name, warmup_steps, total_steps)
    return lambda step: multiplier(step, name, warmup_steps, total_steps)


def _check(name: str, warmup_steps: int, total_steps: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0 <= warmup_steps <= total_steps or total_steps < 1:
        raise ValueError(
            "schedule needs 0 <= warmup_steps <= total_steps and total_steps >= 1, "
            f"got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )


class Schedule:
    """Sets every parameter group's ``lr`` to ``lr_at(step, group's base lr, ...)``.

    Call ``step()`` once after each ``optimizer.step()``. ``state_dict()`` holds plain numbers.
    """

    def __init__(self, optimizer: Optimizer, name: str, warmup_steps: int, total_steps: int):
        _check(name, warmup_steps, total_steps)
        self.optimizer = optimizer
        self.name, self.warmup_steps, self.total_steps = name, warmup_steps, total_steps
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def get_lr(self) -> list[float]:
        """The learning rate of each group at the current step."""
        factor = multiplier(self.last_step, self.name, self.warmup_steps, self.total_steps)
        return [base * factor for base in self.base_lrs]

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
            "base_lrs": list(self.base_lrs), "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check(state["name"], state["warmup_steps"], state["total_steps"])
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"Schedule.load_state_dict: {len(state['base_lrs'])} base lrs saved, "
                f"the optimizer has {len(self.optimizer.param_groups)} groups"
            )
        self.name = state["name"]
        self.warmup_steps, self.total_steps = int(state["warmup_steps"]), int(state["total_steps"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        self.last_step = int(state["last_step"])
        self._apply()


def get_schedule(name: str, optimizer: Optimizer, warmup_steps: int, total_steps: int) -> Schedule:
    """A ``Schedule`` named ``"constant"``, ``"linear"`` or ``"cosine"`` (all with linear warmup)."""
    return Schedule(optimizer, name, warmup_steps, total_steps)
