"""Train a tinypft model in PyTorch: the same loop as ``tinypft.train.train``, run on a float32 twin.

``torch_train`` has ``train``'s signature. It builds the model's PyTorch twin
(``tinypft.model.torch_twin.build_torch``: the same architecture, the same parameter names, the
same trainable set), trains it exactly as ``train`` would (the same batches in the same order,
AdamW with decay on matrices only, the same warmup and decay, clipping at 1, next-token
cross-entropy on target tokens), and copies the weights back into the tinypft model. Held-out
evaluation copies the weights back and calls tinypft's own ``mean_loss``, so the numbers the two
engines report are computed the same way.

It exists to tell a bug from a method: if a recipe gives the same numbers whichever engine trains,
tinypft's ops are not what limits it. This module imports PyTorch; tinypft imports this module
only when a run asks for the PyTorch engine, and never needs PyTorch otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from tqdm.auto import tqdm

from ..model.torch_twin import build_torch
from ..optim.schedules import lr_lambda
from ..peft import (
    BitFitConfig,
    FullFinetuneConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    get_peft_model,
)
from ..train import TrainConfig, TrainResult
from ..train.batching import Example, step_batch
from ..train.trainer import lm_batch_loss, mean_loss, record_eval, total_steps


def twin_method(model: PeftModel) -> str:
    """The twin's name for what ``model`` trains; only what ``build_torch`` mirrors is accepted."""
    config = model.peft_config
    if isinstance(config, PrefixTuningConfig):
        if config.mode != "prefix" or not config.prefix_projection:
            raise ValueError("torch_train: the PyTorch twin mirrors prefix mode with the MLP only "
                             f"(got mode={config.mode!r}, prefix_projection={config.prefix_projection})")
        return "prefix"
    kinds = {FullFinetuneConfig: "full", BitFitConfig: "bitfit", PromptTuningConfig: "prompt"}
    for kind, name in kinds.items():
        if isinstance(config, kind):
            return name
    raise ValueError(f"torch_train: no PyTorch twin for {type(config).__name__}")


def copy_back(twin: Any, model: Any) -> None:
    """Write the twin's current weights into the tinypft model, name by name."""
    state = twin.state_dict()
    for name, p in model.named_parameters():
        p.data[...] = state[name].detach().numpy().astype(p.data.dtype)


def torch_train(
    model: Any,
    train_examples: Sequence[Example],
    config: TrainConfig,
    eval_examples: Sequence[Example] | None = None,
    eval_fn: Any = None,
    loss_fn: Any = None,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """``tinypft.train.train`` with the steps taken in PyTorch; ``model`` (a GPT or a PeftModel)
    holds the trained weights afterwards. Checkpoints, resuming, ``eval_fn`` and losses other than
    the LM loss are not mirrored: asking for them is an error, not a silent difference."""
    if loss_fn not in (None, lm_batch_loss):
        raise ValueError("torch_train: only the LM loss on target tokens is mirrored")
    if eval_fn is not None or resume or config.checkpoint_dir is not None:
        raise ValueError("torch_train: eval_fn, resume and checkpoint_dir are not mirrored")
    if len(train_examples) == 0:
        raise ValueError("train: no training examples")
    peft = model if isinstance(model, PeftModel) else get_peft_model(model, FullFinetuneConfig())
    twin = build_torch(peft, twin_method(peft))
    total = total_steps(len(train_examples), config)

    named = [(name, p) for name, p in twin.named_parameters() if p.requires_grad]
    groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas,
                                  eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.schedule, config.warmup_steps, total))
    torch.manual_seed(config.seed)
    result = TrainResult(steps=0)
    trainable = [(name, p) for name, p in peft.named_parameters() if p.requires_grad]
    best_params: dict[str, np.ndarray] = {}  # tinypft's copies of the best evaluation's weights
    bad_evals = 0

    def evaluate() -> dict[str, float]:
        copy_back(twin, peft)
        loss = mean_loss(peft, eval_examples, config.eval_batch_size or config.batch_size, config.pad_id)
        return {"step": result.steps, "loss": loss}

    twin.train()
    start = time.perf_counter()
    bar = tqdm(total=total, disable=not config.progress, desc="train (torch)")
    try:
        while result.steps < total and not result.stopped_early:
            batch = step_batch(train_examples, result.steps, config.batch_size, config.seed, config.pad_id)
            t0 = time.perf_counter()
            ids = torch.from_numpy(np.asarray(batch.ids, dtype=np.int64))  # (B, T)
            labels = torch.from_numpy(np.asarray(batch.labels, dtype=np.int64))  # (B, T)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.zero_grad(set_to_none=True)
            logits = twin(ids)  # (B, T, V); right padding: causal attention keeps pads out of real tokens
            loss = TF.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                    ignore_index=-100)
            value = float(loss.detach())
            if not np.isfinite(value):
                raise FloatingPointError(f"train: loss {value} at step {result.steps + 1}")
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in named], config.grad_clip)
            optimizer.step()
            scheduler.step()
            result.train_seconds += time.perf_counter() - t0
            result.steps += 1
            result.tokens += batch.num_tokens
            result.train_loss.append(value)
            result.lr.append(lr)
            bar.update(1)
            last = result.steps == total
            if eval_examples is not None and ((config.eval_every and result.steps % config.eval_every == 0)
                                              or last):
                bad_evals = record_eval(evaluate(), config, result, trainable, best_params, bad_evals)
            if callback is not None:
                callback(result.steps, value)
    finally:
        bar.close()
    copy_back(twin, peft)
    if config.keep_best and best_params:
        for name, p in trainable:
            p.data[...] = best_params[name]
    result.seconds = time.perf_counter() - start
    return result
