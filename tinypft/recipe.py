"""The fine-tuning recipe in a few calls: load a task, wrap a model, train it, score it, merge it.

    from tinypft import recipe
    from tinypft.model import load_pretrained
    from tinypft.peft import BitFitConfig

    tokenizer = recipe.load_tokenizer()
    base, _ = load_pretrained("small")
    data = recipe.load_task("e2e", tokenizer, eval_size=100)   # train / valid / dev / test, MRs as tables
    model = recipe.get_peft_model(base, BitFitConfig())        # seeded wrap (seed 0)
    result = recipe.train(model, data, steps=600, select="dev")  # lr None: the method's default
    scores = recipe.evaluate(model, data, "dev")               # BLEU, SER, names its venue, distinct share
    print(scores)
    merged = recipe.merge(model)                               # a plain GPT (BitFit, random subset, full)

Each call is a thin layer over the code ``tinypft finetune`` runs (``tinypft.experiments.finetune``),
so the same settings give the same numbers to the last digit as the command:

    load_task     finetune.load_task                (the command's data, subsets and validation set)
    method_config finetune.method_config            (the experiments' defaults for a method)
    train         finetune.make_train_config + tinypft.train.train, then finetune.for_inference
    evaluate      finetune.score                    (evaluate_generation, or the label words' logits)

The recipe covers what the methods train through the language-model head. The frozen baseline's
linear probe on a classification task (a new head) is the command's:
``tinypft finetune --method frozen --task rating``.

When a method underperforms, ``tinypft.diagnostics`` has what to run next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .data import Tokenizer, load_tokenizer
from .engine import manual_seed
from .experiments import finetune
from .experiments.finetune import TaskData
from .model import GPT
from .peft import PeftConfig, PeftModel
from .peft import get_peft_model as _wrap
from .peft.random_subset import RandomSubsetModel
from .train import TrainResult
from .train import train as _train

__all__ = [
    "Evaluation",
    "TaskData",
    "evaluate",
    "evaluate_examples",
    "fitting_examples",
    "get_peft_model",
    "load_task",
    "load_tokenizer",
    "merge",
    "method_config",
    "train",
]

SPLITS: tuple[str, ...] = ("dev", "test", "seen", "unseen")
MERGEABLE: tuple[str, ...] = ("full", "frozen", "bitfit", "random_subset")  # methods that only change weights


def load_task(
    task: str = "e2e",
    tokenizer: Tokenizer | None = None,
    *,
    eval_size: int | None = None,
    train_size: int | None = None,
    train_unit: str = "mr",
    seed: int = 0,
    source: str = "table",
    select: str | None = "dev",
    unseen: str | None = None,
) -> TaskData:
    """A task's data, as ``tinypft finetune --task TASK`` reads it.

    Args:
        task: "e2e" (MR -> text), "rating" (reference -> low | average | high), "match"
            (MR || reference -> yes | no) or "webnlg".
        tokenizer: default: the project's (``load_tokenizer()``).
        eval_size: score a fixed, evenly spaced subset of this many dev/test examples; None: all.
        train_size: train on a seeded subset of this many MRs (e2e) or examples; None: all.
        train_unit: e2e: ``train_size`` counts MRs (with all their references) or "pair"s.
        seed: draws the ``train_size`` subset (dev and test never depend on it).
        source: "table" (``name : The Eagle | food : French``) or "mr" (as in the data file).
        select: what ``data.valid`` (the validation loss of ``train(select=...)``) holds: "dev",
            "heldout" (100 training MRs set aside, never trained on; e2e) or None (nothing).
        unseen: e2e, "slot=value,value": MRs with these values never train; ``data.seen`` and
            ``data.unseen`` split the test MRs by them.

    Returns:
        ``TaskData``: ``train`` and ``valid`` encoded as ``(ids, labels)`` (labels -100 off the
        target), ``dev`` and ``test`` raw (``E2EExample``s or ``(source, label word)`` pairs),
        ``label_words`` for a classification task. Nothing is dropped for length here: ``train``
        drops what does not fit the model it trains.
    """
    tokenizer = tokenizer or load_tokenizer()
    # The method only decides whether a frozen model trains a probe, which the recipe does not do.
    settings = finetune.FinetuneSettings(
        method="full", task=task, source=source, train_size=train_size, train_unit=train_unit, seed=seed,
        eval_size=eval_size, select=select, unseen=unseen,
    )
    return finetune.load_task(settings, tokenizer, max_length=None)


def method_config(method: str, data: TaskData, seed: int = 0, **options: Any) -> PeftConfig:
    """The config ``tinypft finetune --method METHOD`` uses on ``data``'s task: the method's
    defaults (``tinypft.experiments.methods``), with ``options`` overriding them
    (``num_virtual_tokens``, ``init``, ``init_text``, ``mode``, ``prefix_projection``,
    ``encoder_hidden_size``). ``seed`` draws random_subset's entries."""
    return finetune.method_config(method, data, data.tokenizer or load_tokenizer(), seed=seed, **options)


def get_peft_model(model: GPT, config: PeftConfig, seed: int | None = 0) -> PeftModel:
    """``tinypft.peft.get_peft_model`` after seeding the global generator with ``seed`` (None:
    leave it as it is), so a prefix's or a prompt's random start is the one the command draws."""
    if seed is not None:
        manual_seed(seed)
    return _wrap(model, config)


def _method(model: Any) -> str:
    config = getattr(model, "peft_config", None)
    if config is None:
        raise TypeError(
            f"expected a PeftModel, got {type(model).__name__}; wrap it first: "
            "recipe.get_peft_model(model, config) (FullFinetuneConfig trains every parameter)"
        )
    return config.method


def fitting_examples(model: Any, examples: Sequence[Any]) -> list[Any]:
    """The encoded ``(ids, labels)`` examples that fit ``model``'s context after its P virtual
    tokens (as the command's ``load_task`` keeps them; longer ones are left out, not cut)."""
    room = model.config.context_length - getattr(model, "num_virtual_tokens", 0)
    return [ex for ex in examples if len(ex[0]) <= room]


def train(
    model: PeftModel,
    data: TaskData,
    *,
    steps: int | None = None,
    epochs: int = 1,
    lr: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
    warmup_ratio: float = 0.05,
    select: str | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train what the model's method trains on ``data.train``, as ``tinypft finetune`` does.

    AdamW with linear warmup (``warmup_ratio`` of the steps) and linear decay, gradient clipping
    at 1, batches of ``batch_size`` shuffled by ``seed``, the loss on the target tokens only
    (an infix prefix: placed at each separator). ``lr`` None takes the method's default for the
    task kind (``tinypft.experiments.methods.DEFAULTS``); ``steps`` None runs ``epochs`` epochs.
    Training examples longer than the model's context minus its P virtual tokens are left out.

    ``select`` ("dev" or "heldout", as ``data`` was loaded with): validate every ``eval_every``
    steps (default a tenth of the run) and end with the weights of the lowest validation loss.
    ``callback(step, loss)`` runs after every step.

    Afterwards the model is in its inference form (a prefix MLP baked into the prefix) and in
    eval mode. Returns the ``TrainResult`` (``train_loss`` per step, ``evals``, ``best``, times);
    ``steps == 0`` when the method trains nothing (the frozen LM).
    """
    method = _method(model)
    base = model.base_model
    if getattr(base, "cls_head", None) is not None:
        raise ValueError("the recipe trains through the LM head; the frozen model's linear probe is "
                         "`tinypft finetune --method frozen --task rating`")
    if select is not None and select != data.valid_split:
        raise ValueError(f"select={select!r}, but the data's validation set is {data.valid_split!r}; "
                         f"load it with recipe.load_task(..., select={select!r})")
    prefix = method == "prefix"
    settings = finetune.FinetuneSettings(
        method=method, task=data.task, seed=seed, steps=steps, epochs=epochs, lr=lr, batch_size=batch_size,
        warmup_ratio=warmup_ratio, select=select, eval_every=eval_every, progress=progress,
        mode=model.peft_config.mode if prefix else "prefix",
        mlp=model.peft_config.prefix_projection if prefix else True,
    )
    fits = fitting_examples(model, data.train)
    result = TrainResult(steps=0)
    if model.get_nb_trainable_parameters()[0] > 0:
        if not fits:
            raise ValueError(f"none of the {len(data.train)} training examples fits the context "
                             f"after the model's {model.num_virtual_tokens} virtual tokens")
        tokenizer = data.tokenizer or load_tokenizer()
        config = finetune.make_train_config(settings, len(fits), tokenizer.pad_id)
        valid = fitting_examples(model, data.valid) if select else None
        result = _train(model, fits, config, eval_examples=valid, loss_fn=finetune.loss_function(model),
                        callback=callback)
    finetune.for_inference(model)
    return result


@dataclass
class Evaluation:
    """How a model did on one split: the scores, and every output to look at.

    Generation (e2e, webnlg): ``bleu`` (corpus BLEU against all references, 0-100), ``ser`` (slot
    error rate, (missing + invented values) / MR slots: above 1 when a text invents more values
    than its MR has), ``names_venue`` (share of outputs naming their own venue) and ``distinct``
    (share of distinct outputs; 1/n when every input gets the same text).
    Classification: ``accuracy`` and ``class_counts`` (how often each of ``label_words`` was
    predicted). ``outputs`` has one entry per example of ``examples``: the generated text, or the
    predicted label word. ``metrics`` is the dict ``tinypft finetune`` records.
    """

    split: str
    task: str
    n: int
    outputs: list[str] = field(repr=False)
    examples: list[Any] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)
    bleu: float | None = None
    ser: float | None = None
    names_venue: float | None = None
    distinct: float | None = None
    accuracy: float | None = None
    class_counts: list[int] | None = None
    label_words: tuple[str, ...] = ()
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.accuracy is not None:
            counts = ", ".join(f"{w} {c}" for w, c in zip(self.label_words, self.class_counts or []))
            return f"{self.split} ({self.n} examples): accuracy {self.accuracy:.3f}; predicted {counts}"
        parts = [f"BLEU {self.bleu:.1f}"]
        if self.ser is not None:
            parts += [f"SER {self.ser:.3f}", f"names its venue {self.names_venue:.0%}"]
        parts.append(f"distinct outputs {self.distinct:.0%}")
        return f"{self.split} ({self.n} inputs): " + ", ".join(parts)


def evaluate(
    model: Any, data: TaskData, split: str = "dev", *, max_new_tokens: int = 64, batch_size: int = 32
) -> Evaluation:
    """Score ``model`` (a PeftModel or a plain GPT) on ``data``'s ``split`` as ``tinypft finetune``
    does: greedy decoding of at most ``max_new_tokens`` tokens for a generation task; for a
    classification task the label word with the largest logit at the separator."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return evaluate_examples(model, data, getattr(data, split), split, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)


def evaluate_examples(
    model: Any, data: TaskData, examples: Sequence[Any], split: str, *, max_new_tokens: int = 64,
    batch_size: int = 32,
) -> Evaluation:
    """``evaluate`` on given ``examples`` of ``data``'s task (raw, as ``data.dev`` holds them),
    reported under the name ``split``."""
    examples = list(examples)
    if not examples:
        raise ValueError(f"no {data.task} examples to evaluate in {split!r}")
    metrics, outputs = finetune.score(
        model, data.tokenizer or load_tokenizer(), examples, data.label_words if data.classification else (),
        max_new_tokens=max_new_tokens, batch_size=batch_size,
    )
    known = ("bleu", "ser", "names_venue", "distinct", "accuracy", "class_counts", "seconds")
    return Evaluation(
        split=split, task=data.task, n=metrics["n"], outputs=outputs, examples=examples, metrics=metrics,
        label_words=tuple(data.label_words), **{k: metrics[k] for k in known if k in metrics},
    )


def merge(model: PeftModel) -> GPT:
    """A plain GPT that computes what ``model`` computes, with what the method trained folded into
    the weights: no wrapper, no extra cost at inference.

    Full fine-tuning and BitFit train the base model's own tensors in place, so the merged model is
    a copy of ``model.base_model``; a random subset adds its deltas to the chosen entries,
    W + scatter(delta). Prefix- and prompt-tuning cannot merge: their virtual tokens are extra
    keys and values (or input vectors) that every sequence attends to, not a change of any weight,
    and attention to them depends on each input. Keep the PeftModel (``save_pretrained``).
    The merged model's parameters all require grad, as a freshly built GPT's do.
    """
    method = _method(model)
    if method not in MERGEABLE:
        raise TypeError(
            f"{method} cannot merge into the base weights: its {model.num_virtual_tokens} virtual tokens are "
            "extra keys and values (prefix) or input vectors (prompt) that every sequence attends to, "
            "and what attention reads from them depends on each input, so no change of the weights "
            "computes the same. Keep the PeftModel, or save the adapter with save_pretrained."
        )
    merged = model.base_model.copy()
    if isinstance(model, RandomSubsetModel):
        weights = dict(merged.named_parameters())
        for name in model.indices:
            weights[name].data[...] = model.effective_weight(name)  # W + scatter(delta), (out, in)
    for p in merged.parameters():
        p.requires_grad = True
        p.grad = None
    merged.eval()
    return merged
