"""The training loop: AdamW on the trainable parameters, warmup schedule, clipping, evaluation,
checkpoints, and resumption that continues exactly where an interrupted run stopped.

One step:

    batch = padded examples number i of epoch e          (order from (seed, e): see batching.py)
    loss  = loss_fn(model, batch)                        (target tokens only: labels are -100 elsewhere)
    loss.backward(); clip_grad_norm_(grad_clip); optimizer.step(); schedule.step()

Only parameters with ``requires_grad`` reach the optimizer, so frozen ones get no state and stay
bit-identical: that is what makes BitFit, Prefix- and Prompt-Tuning parameter-efficient.

Everything random in a step comes from two sources: the batch order, a function of
``(seed, epoch)``, and dropout, drawn from the global generator. A checkpoint stores the
generator's state next to the weights, the optimizer's moments and the schedule, so a resumed run
draws the same dropout masks and sees the same batches as an uninterrupted one, and ends with
bit-identical weights.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data.tokenizer import Tokenizer
from ..engine import Tensor, get_rng, manual_seed, no_grad
from ..optim import AdamW, Schedule, clip_grad_norm_
from ..serialization import read_json
from .batching import Batch, Example, eval_batches, num_batches, step_batch
from .checkpoints import (
    LATEST,
    join_optimizer_state,
    load_latest_checkpoint,
    save_checkpoint,
    split_optimizer_state,
)

LossFn = Callable[[Any, Batch], Tensor]
EvalFn = Callable[[Any], "float | dict[str, float]"]

# Settings a resumed run must share with the run that wrote the checkpoint.
_RESUME_MUST_MATCH = (
    "lr", "weight_decay", "betas", "eps", "warmup_steps", "schedule", "max_steps", "epochs", "batch_size",
    "grad_clip", "seed", "pad_id", "eval_every", "best_metric", "best_mode", "patience",
)


@dataclass
class TrainConfig:
    """How to train. ``max_steps`` (if set) wins over ``epochs``; 0 for an ``*_every`` means never
    (evaluation still runs once at the end when there is something to evaluate)."""

    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW); applied to matrices only, never to biases or LayerNorm
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "linear"  # constant | linear | cosine, each after linear warmup
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 8
    eval_batch_size: int | None = None  # default: batch_size
    grad_clip: float | None = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    keep_checkpoints: int = 2
    seed: int = 0
    log_every: int = 10  # the progress bar shows the mean loss of the last log_every steps
    progress: bool = True
    pad_id: int = Tokenizer.pad_id
    best_metric: str = "loss"  # the evaluation number that decides the best step
    best_mode: str = "min"  # "min" for a loss, "max" for BLEU or accuracy
    keep_best: bool = False  # at the end, put the best evaluated weights back into the model
    patience: int | None = None  # stop after this many evaluations without improvement

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON gives a list back
        if self.best_mode not in ("min", "max"):
            raise ValueError(f"TrainConfig.best_mode must be 'min' or 'max', got {self.best_mode!r}")
        if self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1) or self.epochs < 1:
            raise ValueError("TrainConfig: batch_size, epochs and max_steps must be positive")


@dataclass
class TrainResult:
    """What happened: per-step train loss and lr, every evaluation, the best one, and the speed."""

    steps: int
    train_loss: list[float] = field(default_factory=list)  # one per step
    lr: list[float] = field(default_factory=list)  # the lr each step used
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step": s, metric: value, ...}
    best: dict[str, float] | None = None  # the best entry of evals
    stopped_early: bool = False
    seconds: float = 0.0  # wall time, evaluation and checkpoints included
    train_seconds: float = 0.0  # time in training steps only
    tokens: int = 0  # real (non-padding) tokens trained on
    resumed_from: int | None = None

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.train_seconds if self.train_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tokens_per_sec": self.tokens_per_sec}


# ----------------------------------------------------------------------------- losses


def lm_batch_loss(model: Any, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy over the target tokens of a batch (the default ``loss_fn``)."""
    out = model(batch.ids, attention_mask=batch.attention_mask)
    return model.lm_loss(out.logits, batch.labels)


def _num_targets(batch: Batch) -> int:
    return int((batch.labels[:, 1:] != -100).sum())  # position t predicts labels[t + 1]


def mean_loss(
    model: Any, examples: Sequence[Example], batch_size: int, pad_id: int, loss_fn: LossFn = lm_batch_loss
) -> float:
    """The loss over all target tokens of ``examples`` (batches weighted by their target count),
    in eval mode without gradients; the model's mode is restored afterwards."""
    was_training = getattr(model, "training", True)
    model.eval()
    total, count = 0.0, 0
    with no_grad():
        for batch in eval_batches(examples, batch_size, pad_id):
            n = _num_targets(batch)
            if n:
                total += float(loss_fn(model, batch).item()) * n
                count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("mean_loss: the examples have no target tokens")
    return total / count


# ----------------------------------------------------------------------------- setup


def make_optimizer(model: Any, config: TrainConfig) -> tuple[AdamW, list[tuple[str, Tensor]]]:
    """AdamW over the trainable parameters: matrices decay, vectors (biases, LayerNorm) do not.

    Returns the optimizer and the trainable ``(name, parameter)`` pairs in its order.
    """
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("train: the model has no parameter with requires_grad; nothing to train")
    decay = [p for _, p in trainable if p.ndim >= 2]
    no_decay = [p for _, p in trainable if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    optimizer = AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    order = {id(p): i for i, p in enumerate(p for g in groups for p in g["params"])}
    trainable.sort(key=lambda item: order[id(item[1])])
    return optimizer, trainable


def total_steps(n_examples: int, config: TrainConfig) -> int:
    """``max_steps`` if set, else ``epochs`` passes over the data."""
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * num_batches(n_examples, config.batch_size)


# ----------------------------------------------------------------------------- the loop


def train(
    model: Any,
    train_examples: Sequence[Example],
    config: TrainConfig,
    eval_examples: Sequence[Example] | None = None,
    eval_fn: EvalFn | None = None,
    loss_fn: LossFn | None = None,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``(ids, labels)`` examples; see the module docstring.

    The global generator is seeded with ``config.seed`` first, so a run depends only on its
    config and the model's initial weights.

    Evaluation gives ``{"loss": mean loss on eval_examples}`` and/or the numbers ``eval_fn(model)``
    returns (a float counts as ``{"loss": value}``). With ``resume`` the latest checkpoint in
    ``config.checkpoint_dir`` is loaded if there is one (otherwise training starts afresh).
    ``callback(step, loss)`` runs after every step, after any checkpoint of that step; an
    exception it raises (e.g. KeyboardInterrupt) stops training, and the last checkpoint remains.
    """
    if len(train_examples) == 0:
        raise ValueError("train: no training examples")
    loss_fn = loss_fn or lm_batch_loss
    has_eval = eval_examples is not None or eval_fn is not None
    n, total = len(train_examples), total_steps(len(train_examples), config)

    optimizer, trainable = make_optimizer(model, config)
    schedule = Schedule(optimizer, config.schedule, config.warmup_steps, total)
    params = [p for _, p in trainable]
    manual_seed(config.seed)  # dropout draws from here on depend on the seed only
    result = TrainResult(steps=0)
    best_params: dict[str, np.ndarray] = {}
    bad_evals = 0

    if resume and config.checkpoint_dir is not None:
        loaded = load_latest_checkpoint(config.checkpoint_dir)
        if loaded is not None:
            bad_evals = _restore(loaded, config, n, trainable, optimizer, schedule, result, best_params)

    def evaluate() -> dict[str, float]:
        metrics: dict[str, float] = {}
        if eval_examples is not None:
            batch_size = config.eval_batch_size or config.batch_size
            metrics["loss"] = mean_loss(model, eval_examples, batch_size, config.pad_id, loss_fn)
        if eval_fn is not None:
            model.eval()
            with no_grad():
                value = eval_fn(model)
            model.train()
            if np.isscalar(value):
                value = {"loss": value}
            metrics.update({k: float(v) for k, v in value.items()})
        if config.best_metric not in metrics:
            raise KeyError(f"train: evaluation gave {sorted(metrics)}, no best_metric {config.best_metric!r}")
        return {"step": result.steps, **metrics}

    def checkpoint() -> None:
        arrays, state = _checkpoint_state(
            config, n, trainable, optimizer, schedule, result, best_params, bad_evals
        )
        save_checkpoint(config.checkpoint_dir, result.steps, arrays, state, keep=config.keep_checkpoints)

    model.train()
    start_time = time.perf_counter() - result.seconds
    bar = tqdm(total=total, initial=result.steps, disable=not config.progress, desc="train")
    try:
        while result.steps < total and not result.stopped_early:
            batch = step_batch(train_examples, result.steps, config.batch_size, config.seed, config.pad_id)

            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = _step(model, batch, loss_fn, optimizer, schedule, params, config.grad_clip, result.steps)
            result.train_seconds += time.perf_counter() - t0
            result.steps += 1
            result.tokens += batch.num_tokens
            result.train_loss.append(loss)
            result.lr.append(lr)
            bar.update(1)
            if config.log_every and result.steps % config.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(result.train_loss[-config.log_every:]):.4f}", lr=f"{lr:.2e}")

            last = result.steps == total
            if has_eval and ((config.eval_every and result.steps % config.eval_every == 0) or last):
                bad_evals = record_eval(evaluate(), config, result, trainable, best_params, bad_evals)
                shown = ", ".join(f"{k} {v:.4f}" for k, v in result.evals[-1].items() if k != "step")
                if config.progress:
                    bar.write(f"step {result.steps}: {shown}")
            result.seconds = time.perf_counter() - start_time
            if config.checkpoint_dir is not None and (
                (config.checkpoint_every and result.steps % config.checkpoint_every == 0)
                or last or result.stopped_early
            ):
                checkpoint()
            if callback is not None:
                callback(result.steps, loss)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start_time
    if config.keep_best and best_params:
        for name, p in trainable:
            p.data[...] = best_params[name]
    return result


def _step(
    model: Any, batch: Batch, loss_fn: LossFn, optimizer: AdamW, schedule: Schedule,
    params: list[Tensor], grad_clip: float | None, step: int,
) -> float:
    """One optimization step; returns the loss before the update."""
    optimizer.zero_grad()
    loss = loss_fn(model, batch)
    value = float(loss.item())
    if not math.isfinite(value):
        raise FloatingPointError(f"train: loss {value} at step {step + 1}; lower the lr or check the data")
    loss.backward()
    if grad_clip:
        clip_grad_norm_(params, grad_clip)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()  # free the gradients until the next step
    return value


def record_eval(
    metrics: dict[str, float], config: TrainConfig, result: TrainResult,
    trainable: list[tuple[str, Tensor]], best_params: dict[str, np.ndarray], bad_evals: int,
) -> int:
    """Append an evaluation, track the best one (and its weights if kept); returns the patience count."""
    result.evals.append(metrics)
    value, sign = metrics[config.best_metric], (1.0 if config.best_mode == "min" else -1.0)
    if result.best is None or sign * value < sign * result.best[config.best_metric]:
        result.best = dict(metrics)
        if config.keep_best:
            best_params.update({name: p.data.copy() for name, p in trainable})
        return 0
    bad_evals += 1
    if config.patience is not None and bad_evals >= config.patience:
        result.stopped_early = True
    return bad_evals


# ----------------------------------------------------------------------------- checkpoint contents


def _checkpoint_state(
    config: TrainConfig, n_examples: int, trainable: list[tuple[str, Tensor]], optimizer: AdamW,
    schedule: Schedule, result: TrainResult, best_params: dict[str, np.ndarray], bad_evals: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Everything a resumed run needs: arrays for safetensors, the rest for JSON."""
    arrays = {f"param.{name}": p.data for name, p in trainable}
    arrays.update({f"best.{name}": value for name, value in best_params.items()})
    optim_arrays, optim_rest = split_optimizer_state(optimizer.state_dict())
    arrays.update(optim_arrays)
    per_epoch = num_batches(n_examples, config.batch_size)
    state = {
        "config": dataclasses.asdict(config),
        "trainable": [name for name, _ in trainable],
        "n_examples": n_examples,
        "batch_order": {  # derivable from the step, stored to make the position explicit
            "seed": config.seed, "epoch": result.steps // per_epoch, "batch": result.steps % per_epoch,
        },
        "rng": get_rng().bit_generator.state,
        "optimizer": optim_rest,
        "schedule": schedule.state_dict(),
        "result": dataclasses.asdict(result),
        "bad_evals": bad_evals,
    }
    return arrays, state


def _restore(
    loaded: tuple[dict[str, np.ndarray], dict[str, Any]], config: TrainConfig, n_examples: int,
    trainable: list[tuple[str, Tensor]], optimizer: AdamW, schedule: Schedule,
    result: TrainResult, best_params: dict[str, np.ndarray],
) -> int:
    """Load a checkpoint into the model, optimizer, schedule, generator and result; returns bad_evals."""
    arrays, state = loaded
    saved = TrainConfig(**state["config"])
    changed = [k for k in _RESUME_MUST_MATCH if getattr(saved, k) != getattr(config, k)]
    if changed:
        diffs = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"train: cannot resume with different settings ({diffs})")
    names = [name for name, _ in trainable]
    if state["trainable"] != names or state["n_examples"] != n_examples:
        raise ValueError(
            "train: the checkpoint was written for other trainable parameters or another dataset "
            f"({len(state['trainable'])} parameters, {state['n_examples']} examples; "
            f"now {len(names)} parameters, {n_examples} examples)"
        )
    for name, p in trainable:
        value = arrays[f"param.{name}"]
        if value.shape != p.shape:
            raise ValueError(f"train: checkpoint {name} has shape {value.shape}, the model {p.shape}")
        p.data[...] = value
        if f"best.{name}" in arrays:
            best_params[name] = arrays[f"best.{name}"]
    optimizer.load_state_dict(join_optimizer_state(arrays, state["optimizer"]))
    schedule.load_state_dict(state["schedule"])
    get_rng().bit_generator.state = state["rng"]
    saved_result = state["result"]
    for key, value in saved_result.items():
        setattr(result, key, value)
    result.resumed_from = state["step"]
    return int(state["bad_evals"])


def latest_step(checkpoint_dir: str | Path) -> int | None:
    """The step of the newest checkpoint in ``checkpoint_dir``, or None."""
    path = Path(checkpoint_dir) / LATEST
    return int(read_json(path)["step"]) if path.is_file() else None
