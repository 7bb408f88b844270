"""What to run when a method underperforms: each check returns a small result that prints as one
line or a short table.

    from tinypft import diagnostics, recipe

    scores = recipe.evaluate(model, data, "dev")
    print(diagnostics.output_spread(scores.outputs))          # one text for every input?
    print(diagnostics.ser_parts(scores.outputs, scores.examples))  # which values are missing, invented
    print(diagnostics.step_zero(model, data))                 # loss and gradient norms before step 1
    print(diagnostics.lr_sweep(make_model, data, [1e-3, 1e-2, 1e-1], steps=50))
    print(diagnostics.text_prompt_baseline(base, data, "Describe the restaurant:"))

``output_spread``        share of distinct outputs and the most common one; flags constant output
``ser_parts``            the slot error rate split into missing and invented values per slot
``step_zero``            the loss at step 0 and the gradient norm reaching each trainable tensor
``lr_sweep``             the validation loss after a short run per learning rate
``text_prompt_baseline`` the frozen model with a plain-text instruction before each input
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import recipe
from .data.lexicon import slot_errors
from .experiments.finetune import TaskData, evenly_spaced, loss_function
from .train import pad_batch
from .train.trainer import mean_loss

__all__ = [
    "CONSTANT_SHARE",
    "ZERO_GRAD",
    "GradNorm",
    "LrSweep",
    "OutputSpread",
    "SerParts",
    "StepZero",
    "group_name",
    "lr_sweep",
    "output_spread",
    "ser_parts",
    "step_zero",
    "text_prompt_baseline",
    "with_instruction",
]

CONSTANT_SHARE = 0.9  # outputs count as constant when the most common one is at least this share
ZERO_GRAD = 1e-6  # a gradient counts as zero when its norm is at most this times the largest one


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# ----------------------------------------------------------------------------- outputs


@dataclass
class OutputSpread:
    """How varied a model's outputs are. ``constant`` is True when one output makes up at least
    ``threshold`` of them (default ``CONSTANT_SHARE``, 90%): the model answers without reading
    its input (one sentence for every MR, one class for every example)."""

    n: int
    distinct: int
    most_common: str
    most_common_count: int
    threshold: float = CONSTANT_SHARE

    @property
    def distinct_share(self) -> float:
        """Distinct outputs / outputs: 1 when every output differs, 1/n when all are the same."""
        return self.distinct / self.n

    @property
    def most_common_share(self) -> float:
        return self.most_common_count / self.n

    @property
    def constant(self) -> bool:
        return self.most_common_share >= self.threshold

    def __str__(self) -> str:
        verdict = "CONSTANT output" if self.constant else "varied output"
        return (f"{verdict}: {self.distinct} distinct of {self.n}; the most common, "
                f"{_short(self.most_common)!r}, is {self.most_common_share:.0%} of them")


def output_spread(outputs: Sequence[str], threshold: float = CONSTANT_SHARE) -> OutputSpread:
    """The spread of ``outputs`` (generated texts or predicted label words), compared as written."""
    if not outputs:
        raise ValueError("output_spread: no outputs")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    (top, count), = Counter(outputs).most_common(1)
    return OutputSpread(n=len(outputs), distinct=len(set(outputs)), most_common=top, most_common_count=count,
                        threshold=threshold)


# ----------------------------------------------------------------------------- slot errors


@dataclass
class SerParts:
    """The slot error rate, SER = (missing + invented) / slots, split by slot.

    ``missing[s]``: MR values of slot ``s`` that no output expresses; ``invented[s]``: values of
    ``s`` that outputs state and their MR does not have (``entity``: a venue or landmark name that
    is neither the MR's name nor its near). Invented values come on top of the missing ones, so an
    output that states the wrong food both misses the MR's food and invents another: two errors
    for one slot. That is how SER exceeds 1."""

    slots: int  # MR slots over all inputs: the denominator
    in_mrs: dict[str, int]  # slot -> how many MRs have it
    missing: dict[str, int]
    invented: dict[str, int]

    @property
    def total_missing(self) -> int:
        return sum(self.missing.values())

    @property
    def total_invented(self) -> int:
        return sum(self.invented.values())

    @property
    def ser(self) -> float:
        return (self.total_missing + self.total_invented) / self.slots

    def __str__(self) -> str:
        names = list(self.in_mrs) + sorted(set(self.invented) - set(self.in_mrs))
        width = max(len(name) for name in ["slot", *names])
        lines = [f"{'slot':{width}} {'in MRs':>7} {'missing':>8} {'invented':>9}"]
        for name in names:
            lines.append(f"{name:{width}} {self.in_mrs.get(name, 0):7d} {self.missing.get(name, 0):8d} "
                         f"{self.invented.get(name, 0):9d}")
        lines.append(f"SER = ({self.total_missing} missing + {self.total_invented} invented) "
                     f"/ {self.slots} slots = {self.ser:.3f}")
        return "\n".join(lines)


def ser_parts(
    outputs: Sequence[str], mrs: Sequence[Mapping[str, str] | Any], entities: Iterable[str] | None = None
) -> SerParts:
    """Count the slot errors of ``outputs`` against their MRs (``{slot: value}`` dicts or
    ``E2EExample``s) with the detector behind the SER (``tinypft.data.lexicon.slot_errors``), so
    ``ser_parts(...).ser`` equals ``tinypft.train.metrics.slot_error_rate`` on the same inputs."""
    if len(outputs) != len(mrs):
        raise ValueError(f"ser_parts: {len(outputs)} outputs but {len(mrs)} MRs")
    in_mrs: Counter[str] = Counter()
    missing: Counter[str] = Counter()
    invented: Counter[str] = Counter()
    for text, mr in zip(outputs, mrs):
        slots = getattr(mr, "slots", mr)  # (slot -> value)
        in_mrs.update(list(slots))  # the slot names
        found = slot_errors(text, slots, entities)
        missing.update(error.split("[", 1)[0] for error in found["missing"])  # "food[French]" -> "food"
        invented.update(error.split("[", 1)[0] for error in found["hallucinated"])
    total = sum(in_mrs.values())
    if total == 0:
        raise ValueError("ser_parts: the MRs have no slots")
    order = sorted(in_mrs, key=lambda s: -in_mrs[s])
    return SerParts(slots=total, in_mrs={s: in_mrs[s] for s in order}, missing=dict(missing),
                    invented=dict(invented))


# ----------------------------------------------------------------------------- step 0


@dataclass
class GradNorm:
    """The gradient reaching one trainable tensor (or a group of them) before any update."""

    name: str
    tensors: int
    size: int  # scalars
    norm: float  # ||g||_2 over all of the group's scalars
    zero: bool  # norm <= ZERO_GRAD * the largest norm of the model's tensors (or exactly 0)
    finite: bool


@dataclass
class StepZero:
    """The loss at step 0 and the gradient norms, per tensor and per group (the name with its
    layer index replaced by ``*``: ``base_model.blocks.*.attn.k_proj.bias``)."""

    loss: float
    examples: int
    tensors: list[GradNorm]
    groups: list[GradNorm]

    @property
    def zero(self) -> list[str]:
        """Tensors that get no gradient: training cannot move them."""
        return [t.name for t in self.tensors if t.zero]

    @property
    def nonfinite(self) -> list[str]:
        """Tensors whose gradient holds inf or nan."""
        return [t.name for t in self.tensors if not t.finite]

    def __str__(self) -> str:
        width = max(len(g.name) for g in self.groups)
        lines = [f"step 0: loss {self.loss:.4f} on {self.examples} training examples; "
                 "gradient norm per group",
                 f"{'group':{width}} {'tensors':>7} {'scalars':>9} {'grad norm':>10}"]
        for g in self.groups:
            flag = "  NON-FINITE" if not g.finite else "  ZERO" if g.zero else ""
            lines.append(f"{g.name:{width}} {g.tensors:7d} {g.size:9,d} {g.norm:10.3e}{flag}")
        return "\n".join(lines)


def group_name(name: str) -> str:
    """A parameter's name with its layer index replaced by ``*`` (``blocks.3.`` and ``blocks_3_``)."""
    return re.sub(r"(?<=[._])\d+(?=[._])", "*", name)


def step_zero(model: Any, data: TaskData, batches: int = 2, batch_size: int = 8) -> StepZero:
    """Run the training loss forward and backward on ``batches`` batches of ``batch_size`` evenly
    spaced training examples, with no update, and report the loss and the gradient reaching each
    trainable tensor: the mean of the batches' gradients, as one step on all of them would see it
    before clipping.

    A tensor with no gradient cannot train (BitFit's key biases: adding b_k shifts every score
    of a query by the same q . b_k, which softmax ignores); one with a non-finite gradient breaks
    the run. The model's gradients are cleared before and after; its weights do not change.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("step_zero: the model has no trainable parameters")
    examples = evenly_spaced(recipe.fitting_examples(model, data.train), batches * batch_size)
    if not examples:
        raise ValueError("step_zero: no training example fits the model")
    pad_id = (data.tokenizer or recipe.load_tokenizer()).pad_id
    loss_fn = loss_function(model)
    was_training = getattr(model, "training", False)
    model.train()
    for _, p in trainable:
        p.grad = None
    chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
    losses = []
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # inf and nan are reported below
        for chunk in chunks:
            loss = loss_fn(model, pad_batch(chunk, pad_id))
            loss.backward()  # gradients add up over the chunks
            losses.append(float(loss.item()))
        grads = {name: np.zeros(p.shape) if p.grad is None else p.grad / len(chunks) for name, p in trainable}
    for _, p in trainable:
        p.grad = None
    model.train(was_training)

    with np.errstate(invalid="ignore", over="ignore"):
        norms = {name: float(np.sqrt(np.sum(np.square(g, dtype=np.float64)))) for name, g in grads.items()}
    largest = max((n for n in norms.values() if math.isfinite(n)), default=0.0)

    def summary(name: str, members: list[str]) -> GradNorm:
        norm = float(math.sqrt(sum(norms[m] ** 2 for m in members)))
        finite = all(bool(np.isfinite(grads[m]).all()) for m in members)
        return GradNorm(name=name, tensors=len(members), size=sum(grads[m].size for m in members), norm=norm,
                        zero=finite and norm <= ZERO_GRAD * largest, finite=finite)

    groups: dict[str, list[str]] = {}
    for name in grads:
        groups.setdefault(group_name(name), []).append(name)
    return StepZero(
        loss=float(np.mean(losses)), examples=len(examples),
        tensors=[summary(name, [name]) for name in grads],
        groups=[summary(group, members) for group, members in groups.items()],
    )


# ----------------------------------------------------------------------------- learning rate


@dataclass
class LrSweep:
    """Short runs, one per learning rate: the training loss over the last steps and the loss on
    ``data.valid`` at the end; ``best_lr`` has the lowest validation loss."""

    steps: int
    lrs: list[float]
    train_loss: list[float]  # mean over the last tenth of the steps (at least 1)
    valid_loss: list[float]  # nan when the run diverged
    results: list[Any] = field(default_factory=list, repr=False)  # the TrainResults

    @property
    def best_lr(self) -> float:
        finite = [(loss, lr) for lr, loss in zip(self.lrs, self.valid_loss) if math.isfinite(loss)]
        if not finite:
            raise ValueError("lr_sweep: every run diverged")
        return min(finite)[1]

    def __str__(self) -> str:
        best = self.best_lr if any(math.isfinite(v) for v in self.valid_loss) else None
        lines = [f"{'lr':>9} {'train loss':>11} {'valid loss':>11}   ({self.steps} steps each)"]
        for lr, tr, va in zip(self.lrs, self.train_loss, self.valid_loss):
            lines.append(f"{lr:9.3g} {tr:11.4f} {va:11.4f}" + ("   <- best" if lr == best else ""))
        return "\n".join(lines)


def lr_sweep(
    make_model: Callable[[], Any], data: TaskData, lrs: Sequence[float], steps: int, *, seed: int = 0,
    batch_size: int = 8, progress: bool = False,
) -> LrSweep:
    """Train a fresh model from ``make_model()`` for ``steps`` steps at each learning rate
    (``recipe.train``, same seed and batches), then measure its loss on ``data.valid`` (load the
    data with ``select="dev"`` or ``"heldout"``). The validation loss is cheap next to decoding,
    and for a short run it ranks learning rates before BLEU can."""
    if not lrs:
        raise ValueError("lr_sweep: no learning rates")
    if not data.valid:
        raise ValueError("lr_sweep: data.valid is empty; load the task with select='dev' or 'heldout'")
    pad_id = (data.tokenizer or recipe.load_tokenizer()).pad_id
    train_loss, valid_loss, results = [], [], []
    for lr in lrs:
        model = make_model()
        result = recipe.train(model, data, steps=steps, lr=lr, seed=seed, batch_size=batch_size,
                              progress=progress)
        tail = max(1, steps // 10)
        train_loss.append(float(np.mean(result.train_loss[-tail:])))
        valid = recipe.fitting_examples(model, data.valid)
        loss = mean_loss(model, valid, batch_size, pad_id, loss_function(model))
        valid_loss.append(loss if math.isfinite(loss) else math.nan)
        results.append(result)
    return LrSweep(steps=steps, lrs=list(lrs), train_loss=train_loss, valid_loss=valid_loss, results=results)


# ----------------------------------------------------------------------------- hard prompt


def with_instruction(example: Any, prompt_text: str) -> Any:
    """``example`` with ``prompt_text`` and a space before its source (an ``E2EExample``'s MR, or
    the first item of a ``(source, ...)`` pair); the rest (slots, references, label) unchanged."""
    if isinstance(example, tuple):
        return (f"{prompt_text} {example[0]}", *example[1:])
    return dataclasses.replace(example, mr=f"{prompt_text} {example.mr}")


def text_prompt_baseline(
    base: Any, data: TaskData, prompt_text: str, split: str = "dev", *, max_new_tokens: int = 64,
    batch_size: int = 32,
) -> recipe.Evaluation:
    """The hard-prompt baseline of prompt tuning: the frozen model, nothing trained, with the
    plain-text instruction ``prompt_text`` before each input (``[bos] prompt_text source [sep]``),
    scored like every other run (``recipe.evaluate``). The evaluation's ``examples`` are the
    inputs as the model saw them."""
    if split not in recipe.SPLITS:
        raise ValueError(f"split must be one of {', '.join(recipe.SPLITS)}, got {split!r}")
    examples = [with_instruction(ex, prompt_text) for ex in getattr(data, split)]
    return recipe.evaluate_examples(base, data, examples, split, max_new_tokens=max_new_tokens,
                                    batch_size=batch_size)
