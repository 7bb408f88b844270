"""Optimizers, learning-rate schedules and gradient clipping."""

from .optimizers import SGD, AdamW, Optimizer, clip_grad_norm_
from .schedules import SCHEDULES, Schedule, get_schedule, lr_at, lr_lambda, multiplier

__all__ = [
    "SCHEDULES", "SGD", "AdamW", "Optimizer", "Schedule", "clip_grad_norm_", "get_schedule", "lr_at",
    "lr_lambda", "multiplier",
]
