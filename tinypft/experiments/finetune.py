"""``tinypft finetune``: fine-tune a pretrained mini GPT-2 with one method on one task, and measure it.

    tinypft finetune --method prefix --task e2e
    tinypft finetune --method prompt --task rating --steps 300 --json
    tinypft finetune --method bitfit --task e2e --sweep-lr 3e-3,1e-2,3e-2    # lr chosen on dev

Tasks, on the shipped E2E NLG Challenge data (``data/e2e``; ``$TINYPFT_DATA/e2e`` overrides it):

    e2e     MR -> restaurant description. Greedy decoding; corpus BLEU against all references of
            each MR, the slot error rate (missing + invented values / slots) and the share of
            outputs that name their own venue. The MR is written as a table
            (``name : The Eagle | food : French``, the Prefix-Tuning paper's format) unless
            ``--source mr`` keeps it as in the file.
    rating  reference -> low | average | high          (``tinypft.data.rating_task``)
    match   MR || reference -> yes | no                (``tinypft.data.mr_match_task``)

A classification answer is read without generating: at the first target position (the
separator) the class whose label word has the largest logit wins. The frozen baseline has no
label-word answer to learn, so on classification it trains a linear probe instead
(``add_classification_head``, read at the last real token); on E2E it is the pretrained LM as it
is, with nothing trained.

One run: load the checkpoint; seed; wrap the model with the method; train on target tokens only
(AdamW, linear warmup and decay, clipping at 1); bake Prefix-Tuning's MLP into the prefix; save
the adapter to measure the bytes one task costs; evaluate on dev (and test). A seed repeats a run
exactly. ``--sweep-lr`` trains once per learning rate, picks the best on dev, and only then looks
at test, once.

``--state-dir DIR`` keeps resumable training checkpoints (every ``--checkpoint-every`` steps and at
the end, ``tinypft.train.checkpoints``); after an interruption the same command with ``--resume``
continues from the last one and ends with the same weights and scores as an uninterrupted run.
``--out DIR`` is checked before training and written at the end as a whole (a temporary folder
renamed into place): ``result.json`` (the record without wall times), ``timing.json`` (the wall
times: the only file that differs between two runs of the same command) and ``adapter/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cli import (
    check_output_dir,
    check_state_dir,
    nonnegative_int,
    path_arg,
    positive_float,
    positive_floats,
    positive_int,
    touches_shipped,
)
from ..data import (
    E2E_SLOTS,
    E2EExample,
    Tokenizer,
    corpus_token_counts,
    flatten_pairs,
    linearize_triples,
    load_e2e,
    load_tokenizer,
    load_webnlg,
    low_data_subsets,
    mr_match_task,
    rating_task,
    with_source,
)
from ..engine import Tensor, functional, manual_seed, no_grad
from ..model import last_real_index
from ..model.pretrained import checkpoint_dir, load_pretrained
from ..peft import PeftConfig, PeftModel, get_peft_model, infix_batch_loss
from ..serialization import atomic_directory
from ..threads import num_threads
from ..train import Batch, TrainConfig, TrainResult, encode_pairs, pad_batch, source_ids, train
from ..train.metrics import evaluate_generation
from ..train.pretrain import SIZES, quick_mode
from ..train.trainer import latest_step, lm_batch_loss
from . import report
from .methods import DEFAULTS, method_defaults, peft_config

TASKS: tuple[str, ...] = ("e2e", "rating", "match", "webnlg")
GENERATION_TASKS: tuple[str, ...] = ("e2e", "webnlg")  # scored by generating text (the rest: by class)
# webnlg: tokens a source may take. The context is 128 and the E2E tokenizer spells DBpedia names in
# many pieces, so only the shorter entries fit.
WEBNLG_MAX_SOURCE = 48
SOURCES: tuple[str, ...] = ("mr", "table")  # how an E2E source is written (see data.linearize_table)
SELECT: tuple[str, ...] = ("dev", "heldout")  # what the validation loss that picks the best step is on
HELDOUT_MRS = 100  # select="heldout": training MRs set aside for the validation loss
VALID_PAIRS = 400  # at most this many (source, target) pairs in a validation set, evenly spaced


def parse_unseen(text: str) -> tuple[str, tuple[str, ...]]:
    """ "food=Japanese,Indian" -> ("food", ("Japanese", "Indian")), checked against the E2E slots."""
    slot, sep, values = text.partition("=")
    names = tuple(v.strip() for v in values.split(",") if v.strip())
    if not sep or not names or slot.strip() not in E2E_SLOTS:
        raise ValueError(f"unseen must look like 'food=Japanese,Indian' with one of the slots "
                         f"{', '.join(E2E_SLOTS)}; got {text!r}")
    return slot.strip(), names
QUICK_STEPS, QUICK_EVAL = 20, 20  # TINYPFT_QUICK=1: just check that everything runs
OUT_FILES = ("result.json", "timing.json", "adapter")  # what --out holds
WALL_TIMES = ("train_seconds", "tokens_per_sec", "seconds")  # record keys that differ run to run


@dataclass
class FinetuneSettings:
    """Everything a run depends on. None means: the method's or the task's default."""

    method: str
    task: str = "e2e"
    size: str = "small"
    source: str = "table"  # the MR as a table (slot : value | ...), or "mr" as in the data file
    checkpoint: str | None = None  # checkpoint folder; default data/checkpoints/<size>
    train_size: int | None = None  # units (see train_unit) or classification examples; None: all
    train_unit: str = "mr"  # e2e: train_size counts MRs (all their references) or (MR, reference) pairs
    seed: int = 0
    steps: int | None = None  # wins over epochs
    epochs: int = 1
    lr: float | None = None
    batch_size: int = 8
    warmup_ratio: float = 0.05
    prefix_length: int | None = None  # P for prefix / prompt
    prefix_hidden: int | None = None  # k, the prefix MLP's width
    mlp: bool = True  # prefix: train through the MLP reparameterization
    mode: str = "prefix"  # prefix: prefix | infix | embedding_only
    init: str | None = None
    init_text: str | None = None
    eval_size: int | None = None  # evaluate a fixed, evenly spaced subset of dev/test; None: all
    max_new_tokens: int = 64
    eval_batch_size: int = 32
    select: str | None = None  # "dev" or "heldout": keep the step with the lowest validation loss
    eval_every: int | None = None  # with select: validate every this many steps (default: steps / 10)
    unseen: str | None = None  # e2e: "slot=value,value": MRs with these values never train (see load_task)
    progress: bool = True

    def __post_init__(self) -> None:
        method_defaults(self.method)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.train_unit not in ("mr", "pair"):
            raise ValueError(f"train_unit must be 'mr' or 'pair', got {self.train_unit!r}")
        if self.task == "webnlg" and (self.train_size is not None or self.unseen or self.select == "heldout"):
            raise ValueError("webnlg: train_size, unseen values and select='heldout' are options of e2e")
        if self.train_unit != "mr" and self.task != "e2e":
            raise ValueError("--train-unit is an option of the e2e task")
        if self.method != "prefix" and (
            self.mode != "prefix" or not self.mlp or self.prefix_hidden is not None
        ):
            raise ValueError("--mode, --no-mlp and --prefix-hidden are options of the prefix method")
        if self.method not in ("prefix", "prompt") and self.prefix_length is not None:
            raise ValueError("--prefix-length is an option of the prefix and prompt methods")
        for name in ("train_size", "steps", "prefix_length", "prefix_hidden", "eval_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        for name in ("epochs", "batch_size", "max_new_tokens", "eval_batch_size"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed}")
        if self.lr is not None and not (np.isfinite(self.lr) and self.lr >= 0):
            raise ValueError(f"--lr must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.select not in (None, *SELECT):
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}")
        if self.eval_every is not None and self.select is None:
            raise ValueError("eval_every (steps between validations) needs select ('dev' or 'heldout')")
        if self.select == "heldout" and self.task != "e2e":
            raise ValueError("select='heldout' (a held-out slice of the training MRs) is an option of e2e")
        if self.unseen is not None:
            if self.task != "e2e":
                raise ValueError("unseen values are an option of the e2e task")
            parse_unseen(self.unseen)

    @property
    def classification(self) -> bool:
        return self.task not in GENERATION_TASKS

    @property
    def probe(self) -> bool:
        """The frozen baseline on a classification task trains a linear probe."""
        return self.method == "frozen" and self.classification


# ----------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """A task's encoded training examples and its raw dev and test examples."""

    task: str
    train: list[tuple[list[int], list[int]]]  # (ids, labels); labels -100 off the target
    dev: list[Any]  # E2EExample (e2e) or (source, label word) pairs
    test: list[Any]
    label_words: tuple[str, ...] = ()
    train_units: int = 0  # MRs (e2e) or examples (classification) drawn for training
    valid: list[tuple[list[int], list[int]]] = field(default_factory=list)  # encoded, for the validation loss
    seen: list[Any] = field(default_factory=list)  # e2e with unseen values: test MRs without them
    unseen: list[Any] = field(default_factory=list)  # and the test MRs with them
    dropped: int = 0  # training examples longer than the context leaves room for
    eval_note: str = ""
    tokenizer: Tokenizer | None = field(default=None, repr=False)  # the one that encoded train and valid
    valid_split: str | None = None  # what valid holds: "dev", "heldout" (training MRs set aside) or None

    @property
    def classification(self) -> bool:
        """True when the task is scored by class (rating, match), False when by generated text."""
        return self.task not in GENERATION_TASKS


def evenly_spaced(items: Sequence[Any], n: int | None) -> list[Any]:
    """``n`` items spread evenly over ``items`` (always the same ones); all of them when n is None."""
    if n is None or n >= len(items):
        return list(items)
    index = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in index]


def load_task(settings: FinetuneSettings, tokenizer: Tokenizer, max_length: int | None) -> TaskData:
    """Training, dev and test data of ``settings.task``; training examples over ``max_length``
    tokens are dropped (and counted; None keeps all). The training subset depends on the seed,
    dev/test do not."""
    if settings.task == "webnlg":
        return load_webnlg_task(settings, tokenizer, max_length)
    splits: dict[str, list[E2EExample]] = {
        split: with_source(load_e2e(split), settings.source) for split in ("train", "dev", "test")
    }
    labels: tuple[str, ...] = ()
    seen: list[Any] = []
    unseen: list[Any] = []
    valid_items: Sequence[Any] = []
    if settings.task == "e2e":
        train_items: Sequence[Any] = splits["train"]
        dev, test = splits["dev"], splits["test"]
        if settings.unseen:  # these values never train; test splits into MRs without and with them
            slot, values = parse_unseen(settings.unseen)
            has = lambda ex: ex.slots.get(slot) in values  # noqa: E731
            train_items = [ex for ex in train_items if not has(ex)]
            dev = [ex for ex in dev if not has(ex)]
            seen, unseen = [ex for ex in test if not has(ex)], [ex for ex in test if has(ex)]
        if settings.select == "heldout":  # a fixed slice of training MRs, never drawn for training
            order = list(range(len(train_items)))
            random.Random("finetune-heldout").shuffle(order)
            chosen = set(order[:HELDOUT_MRS])
            valid_items = [ex for i, ex in enumerate(train_items) if i in chosen]
            train_items = [ex for i, ex in enumerate(train_items) if i not in chosen]
        elif settings.select == "dev":
            valid_items = dev
    else:
        if settings.task == "rating":
            tasks = {s: rating_task(examples) for s, examples in splits.items()}
        else:
            tasks = {s: mr_match_task(examples, source=settings.source) for s, examples in splits.items()}
        labels = tasks["train"].labels
        train_items = list(tasks["train"].examples)
        dev, test = list(tasks["dev"].examples), list(tasks["test"].examples)
        valid_items = dev if settings.select == "dev" else []
    by_pair = settings.task == "e2e" and settings.train_unit == "pair"
    if by_pair:  # a unit is one (MR, reference) pair, as a row of the E2E CSV
        train_items = flatten_pairs(train_items)
    if settings.train_size is not None:
        size, seed = settings.train_size, settings.seed
        train_items = low_data_subsets(train_items, sizes=(size,), seeds=(seed,))[(size, seed)]
    pairs = flatten_pairs(train_items) if settings.task == "e2e" and not by_pair else list(train_items)
    if settings.probe:  # the class index at the last source token; see probe_loss
        encoded = [probe_example(tokenizer, source, labels.index(label)) for source, label in pairs]
        encoded = [ex for ex in encoded if max_length is None or len(ex[0]) <= max_length]
    else:
        encoded = encode_pairs(tokenizer, pairs, max_length=max_length)
    valid_pairs = flatten_pairs(valid_items) if settings.task == "e2e" else list(valid_items)
    valid_pairs = evenly_spaced(valid_pairs, VALID_PAIRS)
    if settings.probe:
        valid = [probe_example(tokenizer, source, labels.index(label)) for source, label in valid_pairs]
        valid = [ex for ex in valid if max_length is None or len(ex[0]) <= max_length]
    else:
        valid = encode_pairs(tokenizer, valid_pairs, max_length=max_length)
    note = ""
    if settings.eval_size is not None and settings.eval_size < len(dev):
        unit = "MRs" if settings.task == "e2e" else "examples"
        note = f"dev/test: {settings.eval_size} evenly spaced {unit} of {len(dev)}/{len(test)}"
    return TaskData(
        task=settings.task,
        train=encoded,
        dev=evenly_spaced(dev, settings.eval_size),
        test=evenly_spaced(test, settings.eval_size),
        label_words=labels,
        train_units=len(train_items),
        dropped=len(pairs) - len(encoded),
        eval_note=note,
        valid=valid,
        seen=evenly_spaced(seen, settings.eval_size),
        unseen=evenly_spaced(unseen, settings.eval_size),
        tokenizer=tokenizer,
        valid_split=settings.select,
    )


def load_webnlg_task(settings: FinetuneSettings, tokenizer: Tokenizer, max_length: int | None) -> TaskData:
    """WebNLG 2017 (through ``TINYPFT_DATA``): train on the training entries (the 10 seen
    categories), validate on dev, score ``seen`` and ``unseen`` test categories (``test`` is both).
    Only entries whose linearized triples take at most ``WEBNLG_MAX_SOURCE`` tokens are used."""

    def entries(split: str, category_set: str = "all") -> list[tuple[str, tuple[str, ...]]]:
        examples = load_webnlg(split, category_set=category_set)
        out = [(linearize_triples(ex.triples), ex.refs) for ex in examples if ex.refs]
        return [(src, refs) for src, refs in out if len(source_ids(tokenizer, src)) <= WEBNLG_MAX_SOURCE]

    train = [(src, ref) for src, refs in entries("train") for ref in refs]
    encoded = encode_pairs(tokenizer, train, max_length=max_length)
    dev = entries("dev")
    valid = []
    if settings.select == "dev":
        dev_pairs = evenly_spaced([(src, ref) for src, refs in dev for ref in refs], VALID_PAIRS)
        valid = encode_pairs(tokenizer, dev_pairs, max_length=max_length)
    seen, unseen = entries("test", "seen"), entries("test", "unseen")
    n = settings.eval_size
    return TaskData(
        task="webnlg", train=encoded, dev=evenly_spaced(dev, n),
        test=evenly_spaced(seen, n) + evenly_spaced(unseen, n), train_units=len(train),
        dropped=len(train) - len(encoded), eval_note=f"entries of at most {WEBNLG_MAX_SOURCE} source tokens",
        valid=valid, seen=evenly_spaced(seen, n), unseen=evenly_spaced(unseen, n), tokenizer=tokenizer,
        valid_split=settings.select,
    )


@functools.lru_cache(maxsize=4)
def reference_token_counts(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Token counts over the E2E training references as pretraining reads them, specials 0: the
    pool of prompt tuning's sampled-vocabulary initialization (computed once per tokenizer)."""
    return tuple(corpus_token_counts(tokenizer, load_e2e("train")))


def probe_example(tokenizer: Tokenizer, source: str, label: int) -> tuple[list[int], list[int]]:
    """A linear-probe example: ``bos source sep``, the class index as the label of the last token."""
    ids = source_ids(tokenizer, source)
    return ids, [-100] * (len(ids) - 1) + [label]


def label_token_ids(tokenizer: Tokenizer, words: Sequence[str]) -> list[int]:
    """The first token of each label word as a target is encoded (`` low``); they must differ."""
    ids = [tokenizer.encode_target(word)[0] for word in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {list(words)} share their first token; cannot score them apart")
    return ids


# ----------------------------------------------------------------------------- losses and scoring


def probe_loss(model: Any, batch: Batch) -> Tensor:
    """Cross-entropy of the classification head (read at the last real token) against the class
    index that ``probe_example`` stored there."""
    out = model(batch.ids, attention_mask=batch.attention_mask)
    classes = batch.labels[np.arange(len(batch.labels)), last_real_index(batch.attention_mask)]  # (B,)
    return functional.cross_entropy(out.cls_logits, classes)


class InfixAtSeparator:
    """An infix model as ``evaluate_generation`` calls it: at prefill the infix goes before the
    prompt's last token (the separator), where training put it; cached steps pass through."""

    def __init__(self, model: PeftModel):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, ids: np.ndarray, attention_mask: np.ndarray | None = None, **kwargs: Any) -> Any:
        if kwargs.get("cache") is None:
            kwargs["infix_start"] = -1
        return self.model(ids, attention_mask=attention_mask, **kwargs)


def classify(
    model: Any, tokenizer: Tokenizer, sources: Sequence[str], label_ids: Sequence[int] | None,
    infix: bool = False, batch_size: int = 32,
) -> np.ndarray:
    """Predicted class per source (N,): by the label words' logits at the separator, or by the
    classification head when ``label_ids`` is None."""
    was_training = getattr(model, "training", False)
    model.eval()
    predictions = []
    with no_grad():
        for i in range(0, len(sources), batch_size):
            prompts = [source_ids(tokenizer, s) for s in sources[i : i + batch_size]]
            batch = pad_batch([(p, [-100] * len(p)) for p in prompts], tokenizer.pad_id)
            last = last_real_index(batch.attention_mask)  # (B,) the separators
            extra = {"infix_start": last} if infix else {}
            out = model(batch.ids, attention_mask=batch.attention_mask, **extra)
            if label_ids is None:
                scores = out.cls_logits.data  # (B, C)
            else:
                scores = out.logits.data[np.arange(len(last)), last][:, list(label_ids)]  # (B, C)
            predictions.append(np.argmax(scores, axis=1))
    model.train(was_training)
    return np.concatenate(predictions)


# ----------------------------------------------------------------------------- one run


@dataclass
class Run:
    """A prepared run: the settings, data, wrapped model and its sizes, then what training did."""

    settings: FinetuneSettings
    tokenizer: Tokenizer
    data: TaskData
    model: PeftModel
    manifest: dict[str, Any]
    train_config: TrainConfig | None
    trainable_params: int
    total_params: int
    base_params: int
    result: TrainResult | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, list[str]] = field(default_factory=dict)  # e2e: the generated texts per split

    @property
    def infix(self) -> bool:
        return self.settings.method == "prefix" and self.settings.mode == "infix"


def prepare(
    settings: FinetuneSettings, tokenizer: Tokenizer | None = None, data: TaskData | None = None
) -> Run:
    """Load the checkpoint and the data, and wrap the model with the method (seeded)."""
    tokenizer = tokenizer or load_tokenizer()
    try:
        base, manifest = load_pretrained(settings.size, directory=settings.checkpoint, tokenizer=tokenizer)
    except (KeyError, TypeError) as err:  # valid JSON without the fields a manifest has
        manifest_path = Path(settings.checkpoint or checkpoint_dir(settings.size)) / "manifest.json"
        raise ValueError(f"{manifest_path} is not a checkpoint manifest (no {err})") from None
    spec = method_defaults(settings.method)
    virtual = 0
    if settings.method in ("prefix", "prompt"):
        virtual = spec.num_virtual_tokens if settings.prefix_length is None else settings.prefix_length
    room = base.config.context_length - virtual
    if room < 2:
        raise ValueError(f"--prefix-length {virtual} leaves {room} of the model's "
                         f"{base.config.context_length} positions for the text; give a smaller one")
    if data is None:  # the P virtual tokens take P positions of the context in every mode
        data = load_task(settings, tokenizer, max_length=room)
    if not data.train and settings.method != "frozen":
        if data.dropped == 0:
            raise ValueError(f"finetune: the {settings.task} training set is empty")
        cause = f", {virtual} of them taken by the virtual tokens; shorten --prefix-length" if virtual else ""
        raise ValueError(f"finetune: none of the {data.dropped} training examples fits the "
                         f"{base.config.context_length}-token context{cause}")

    manual_seed(settings.seed)  # the method's initialization (and a probe's head) draws from here
    if settings.probe:
        base.add_classification_head(len(data.label_words))
    config = method_config(
        settings.method,
        data,
        tokenizer,
        seed=settings.seed,
        num_virtual_tokens=settings.prefix_length,
        prefix_projection=settings.mlp,
        encoder_hidden_size=settings.prefix_hidden,
        mode=settings.mode,
        init=settings.init,
        init_text=settings.init_text,
    )
    base_params = sum(p.size for name, p in base.named_parameters() if not name.startswith("cls_head."))
    model = get_peft_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    return Run(
        settings=settings, tokenizer=tokenizer, data=data, model=model, manifest=manifest,
        train_config=make_train_config(settings, len(data.train), tokenizer.pad_id) if trainable else None,
        trainable_params=trainable, total_params=total, base_params=base_params,
    )


def method_config(
    method: str, data: TaskData, tokenizer: Tokenizer, seed: int = 0, **options: Any
) -> PeftConfig:
    """The experiments' config of ``method`` for ``data``'s task (``methods.peft_config``): the
    method's defaults, the task's label words, and for prompt tuning the pool of its
    sampled-vocabulary init. ``options``: ``peft_config``'s (num_virtual_tokens, init, mode, ...)."""
    counts = reference_token_counts(tokenizer) if method == "prompt" else None
    return peft_config(
        method, classification=data.classification, label_words=data.label_words, tokenizer=tokenizer,
        token_counts=counts, seed=seed, **options,
    )


def make_train_config(settings: FinetuneSettings, n_train: int, pad_id: int) -> TrainConfig:
    """AdamW, linear warmup (``warmup_ratio`` of the steps) then linear decay, clipping at 1."""
    spec = method_defaults(settings.method)
    lr = spec.classification_lr if settings.classification else spec.lr
    lr = settings.lr if settings.lr is not None else lr
    steps = settings.steps
    if steps is None:
        steps = settings.epochs * -(-n_train // settings.batch_size)
    select = {}
    if settings.select:  # validate every tenth of the run; keep the step with the lowest loss
        select = dict(eval_every=settings.eval_every or max(1, steps // 10), keep_best=True,
                      best_metric="loss", best_mode="min")
    return TrainConfig(
        lr=lr, warmup_steps=round(settings.warmup_ratio * steps), schedule="linear", max_steps=steps,
        batch_size=settings.batch_size, grad_clip=1.0, seed=settings.seed, progress=settings.progress,
        pad_id=pad_id, **select,
    )


def is_infix(model: Any) -> bool:
    """True for a Prefix-Tuning model in infix mode (its prefix goes before the separator)."""
    config = getattr(model, "peft_config", None)
    return getattr(config, "method", None) == "prefix" and config.mode == "infix"


def loss_function(model: Any, probe: bool = False) -> Callable[[Any, Batch], Tensor]:
    """The training loss of ``model``: the probe's class cross-entropy, the infix loss (the
    infix placed at each separator), or the LM loss on the target tokens."""
    return probe_loss if probe else infix_batch_loss if is_infix(model) else lm_batch_loss


def for_inference(model: Any) -> None:
    """Put a trained model in its inference form: bake a prefix MLP into the prefix (what the
    adapter stores is what gets evaluated), then eval mode."""
    if getattr(getattr(model, "peft_config", None), "method", None) == "prefix":
        model.merge()
    model.eval()


def fit(
    run: Run, callback: Any = None, trainer: Callable[..., TrainResult] = train,
    state_dir: str | Path | None = None, checkpoint_every: int = 100, resume: bool = False,
) -> Run:
    """Train what the method trains (nothing for the frozen LM), then bake a prefix MLP.
    ``trainer`` takes ``train``'s arguments and does the steps (``torch_train``: in PyTorch).

    With ``state_dir`` the trainer saves a resumable checkpoint there every ``checkpoint_every``
    steps and at the end; ``resume`` continues from the latest one (see ``tinypft.train.trainer``).
    """
    if run.train_config is not None:
        valid = run.data.valid if run.settings.select else None
        extra: dict[str, Any] = {}
        if state_dir is not None:
            run.train_config = dataclasses.replace(
                run.train_config, checkpoint_dir=str(state_dir), checkpoint_every=checkpoint_every
            )
            extra["resume"] = resume
        run.result = trainer(
            run.model, run.data.train, run.train_config, eval_examples=valid,
            loss_fn=loss_function(run.model, run.settings.probe), callback=callback, **extra
        )
    for_inference(run.model)
    return run


def score(
    model: Any, tokenizer: Tokenizer, examples: Sequence[Any], label_words: Sequence[str] = (),
    probe: bool = False, max_new_tokens: int = 64, batch_size: int = 32,
) -> tuple[dict[str, Any], list[str]]:
    """Score ``model`` on ``examples``: (metrics, one output per example).

    Generation (no ``label_words``; ``E2EExample``s or ``(source, refs)`` pairs): greedy outputs
    and ``{"bleu", "ser", "names_venue", "distinct", "n", "samples"}`` (``evaluate_generation``).
    Classification (``(source, label word)`` pairs): the predicted label words and
    ``{"accuracy", "n", "class_counts"}``, read by the label words' logits at the separator, or by
    the classification head with ``probe``. Both add ``seconds``. An infix model is called with
    its infix at the separator, where training put it.
    """
    start = time.perf_counter()
    if not label_words:
        scores = evaluate_generation(
            InfixAtSeparator(model) if is_infix(model) else model, tokenizer, examples,
            max_new_tokens=max_new_tokens, batch_size=batch_size, n_samples=3,
        )
        metrics = {k: scores[k] for k in ("bleu", "ser", "names_venue", "distinct", "n")}
        metrics["samples"] = scores["samples"]
        outputs = scores["outputs"]
    else:
        sources = [source for source, _ in examples]
        gold = np.array([label_words.index(label) for _, label in examples])
        label_ids = None if probe else label_token_ids(tokenizer, label_words)
        predicted = classify(model, tokenizer, sources, label_ids, is_infix(model), batch_size)
        metrics = {"accuracy": float((predicted == gold).mean()), "n": len(examples),
                   "class_counts": np.bincount(predicted, minlength=len(label_words)).tolist()}
        outputs = [label_words[i] for i in predicted]
    metrics["seconds"] = time.perf_counter() - start
    return metrics, outputs


def evaluate(run: Run, split: str) -> dict[str, Any]:
    """Metrics on ``split`` (dev, test; with unseen values also seen and unseen): BLEU, SER (e2e), or
    accuracy and how often each class was predicted (classification). See ``score``."""
    if split not in ("dev", "test", "seen", "unseen"):
        raise ValueError(f"split must be dev, test, seen or unseen, got {split!r}")
    s = run.settings
    metrics, outputs = score(
        run.model, run.tokenizer, getattr(run.data, split), run.data.label_words if s.classification else (),
        probe=s.probe, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size,
    )
    if not s.classification:
        run.outputs[split] = outputs
    run.evals[split] = metrics
    return metrics


def summarize(run: Run) -> dict[str, Any]:
    """The JSON record of a run: sizes, stored bytes, metrics, time, hyperparameters, provenance."""
    s, result = run.settings, run.result
    stored = run.model.stored_bytes_per_task()
    checkpoint = Path(s.checkpoint) if s.checkpoint else checkpoint_dir(s.size)
    return {
        "method": s.method,
        "task": s.task,
        "source": s.source,
        "size": s.size,
        "seed": s.seed,
        "trainable_params": run.trainable_params,
        "total_params": run.total_params,
        "base_params": run.base_params,
        "trainable_pct": 100 * run.trainable_params / run.base_params,
        "trainable_pct_of_all": 100 * run.trainable_params / run.total_params,
        "stored_bytes": stored.total_bytes,
        "stored_tensor_bytes": stored.tensor_file_bytes,
        "stored_floats": stored.num_floats,
        "dev": run.evals.get("dev"),
        "test": run.evals.get("test"),
        **{split: run.evals[split] for split in ("seen", "unseen") if split in run.evals},
        "eval_note": run.data.eval_note,
        "train_seconds": result.seconds if result else 0.0,
        "steps": result.steps if result else 0,
        "tokens_per_sec": result.tokens_per_sec if result else 0.0,
        "first_train_loss": float(np.mean(result.train_loss[:10])) if result else None,
        "final_train_loss": float(np.mean(result.train_loss[-20:])) if result else None,
        "best_step": result.best["step"] if result and result.best else None,
        "valid_loss": result.best["loss"] if result and result.best else None,
        "train_examples": len(run.data.train),
        "train_units": run.data.train_units,
        "train_examples_dropped": run.data.dropped,
        "hyperparameters": {
            "settings": dataclasses.asdict(s),
            "train_config": dataclasses.asdict(run.train_config) if run.train_config else None,
            "peft_config": run.model.peft_config.to_dict(),
        },
        "command": finetune_command(s),
        "checkpoint": {"dir": str(checkpoint), "weights_sha256": run.manifest.get("weights_sha256")},
        "environment": report.environment(),
    }


def run_finetune(
    settings: FinetuneSettings, splits: Sequence[str] = ("dev", "test"), out: str | Path | None = None,
    tokenizer: Tokenizer | None = None, callback: Any = None,
    state_dir: str | Path | None = None, checkpoint_every: int = 100, resume: bool = False,
) -> dict[str, Any]:
    """Prepare, train and evaluate one run; returns its record (see ``summarize``).

    With ``out`` the record and the adapter are written there (see ``save_run``).
    ``callback(step, loss)`` is called after every training step. ``state_dir``,
    ``checkpoint_every`` and ``resume``: resumable checkpoints (see ``fit``).
    """
    run = fit(prepare(settings, tokenizer), callback, state_dir=state_dir,
              checkpoint_every=checkpoint_every, resume=resume)
    for split in splits:
        evaluate(run, split)
    record = summarize(run)
    if out is not None:
        save_run(run, record, out)
    return record


def sweep_lr(
    settings: FinetuneSettings, lrs: Sequence[float], out: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
) -> dict[str, Any]:
    """Train once per learning rate, evaluate each on dev only, keep the best (BLEU or accuracy)
    and evaluate that one on test. The record of the chosen run gets a ``sweep`` list."""
    if not lrs:
        raise ValueError("sweep_lr: no learning rates")
    tokenizer = tokenizer or load_tokenizer()
    key = "bleu" if settings.task in GENERATION_TASKS else "accuracy"
    data, best, sweep = None, None, []
    for lr in lrs:
        run = fit(prepare(dataclasses.replace(settings, lr=lr), tokenizer, data))
        data = run.data
        dev = evaluate(run, "dev")
        sweep.append({
            "lr": lr,
            "dev": {k: v for k, v in dev.items() if k != "samples"},
            "train_seconds": run.result.seconds if run.result else 0.0,
            "final_train_loss": float(np.mean(run.result.train_loss[-20:])) if run.result else None,
        })
        if best is None or dev[key] > best.evals["dev"][key]:
            best = run
    evaluate(best, "test")
    record = summarize(best) | {"sweep": sweep, "sweep_metric": f"dev {key}"}
    if out is not None:
        save_run(best, record, out)
    return record


def save_run(run: Run, record: dict[str, Any], out: str | Path) -> None:
    """Write the folder ``out`` as a whole (``serialization.atomic_directory``): ``result.json``,
    the record without its wall times, ``timing.json``, the wall times (``WALL_TIMES``) in the
    record's layout, and the adapter in ``adapter/``. The same command and seed write the same
    bytes into every file but ``timing.json``."""
    rest, times = report.split_keys(record, WALL_TIMES)
    with atomic_directory(out, OUT_FILES) as tmp:
        run.model.save_pretrained(tmp / "adapter")
        report.write_json(tmp / "result.json", rest)
        report.write_json(tmp / "timing.json", times)


def finetune_command(s: FinetuneSettings) -> str:
    """The ``tinypft finetune`` command line that repeats a run with these settings."""
    args = ["tinypft", "finetune", "--method", s.method, "--task", s.task, "--size", s.size,
            "--seed", str(s.seed), "--batch-size", str(s.batch_size)]
    args += ["--source", s.source] if s.source != "table" else []
    args += ["--train-unit", s.train_unit] if s.train_unit != "mr" else []
    args += ["--max-new-tokens", str(s.max_new_tokens)] if s.task in GENERATION_TASKS else []
    args += ["--steps", str(s.steps)] if s.steps is not None else ["--epochs", str(s.epochs)]
    optional = {
        "--lr": s.lr, "--train-size": s.train_size, "--eval-size": s.eval_size, "--checkpoint": s.checkpoint,
        "--prefix-length": s.prefix_length, "--prefix-hidden": s.prefix_hidden, "--init": s.init,
        "--init-text": s.init_text, "--select": s.select, "--eval-every": s.eval_every, "--unseen": s.unseen,
    }
    args += [item for flag, value in optional.items() if value is not None for item in (flag, str(value))]
    if s.method == "prefix":
        args += ["--mode", s.mode] + ([] if s.mlp else ["--no-mlp"])
    return shlex.join(args)


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=list(DEFAULTS), required=True)
    parser.add_argument("--task", choices=TASKS, default="e2e")
    parser.add_argument("--size", choices=list(SIZES), default="small", help="shipped checkpoint")
    parser.add_argument("--checkpoint", type=path_arg,
                        help="checkpoint folder (default data/checkpoints/<size>)")
    parser.add_argument("--source", choices=SOURCES, default="table",
                        help="the MR as a table 'slot : value | ...' (default), or as in the data file")
    parser.add_argument("--train-size", type=positive_int, help="training MRs (e2e) or examples; default all")
    parser.add_argument("--train-unit", choices=("mr", "pair"), default="mr",
                        help="e2e: --train-size counts MRs (with all their references) or pairs")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--steps", type=positive_int, help="optimizer steps (wins over --epochs)")
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default: the method's)")
    parser.add_argument("--sweep-lr", type=positive_floats,
                        help="comma-separated learning rates: pick the best on dev, then test")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--prefix-length", type=positive_int, help="P, virtual tokens of prefix / prompt")
    parser.add_argument("--prefix-hidden", type=positive_int, help="k, width of the prefix MLP (default 512)")
    parser.add_argument("--no-mlp", action="store_true", help="prefix: optimize the prefix directly")
    parser.add_argument("--mode", choices=("prefix", "infix", "embedding_only"), default="prefix")
    parser.add_argument("--init", help="prefix: random | real_words; prompt: uniform | sampled_vocab | "
                        "class_labels | text | random_normal")
    parser.add_argument("--init-text", help="text for the real_words / text inits")
    parser.add_argument("--eval-size", type=positive_int,
                        help="evaluate a fixed subset of dev/test (default all)")
    parser.add_argument("--select", choices=SELECT,
                        help="keep the step with the lowest validation loss on dev, or (e2e) on training "
                             "MRs held out of training")
    parser.add_argument("--eval-every", type=positive_int,
                        help="with --select: steps between validations (default a tenth of the run)")
    parser.add_argument("--unseen", help="e2e: 'slot=value,value': MRs with these values never train; "
                                         "test is scored on the MRs without and with them")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--out", type=path_arg, help="folder for result.json, timing.json and the adapter")
    parser.add_argument("--state-dir", type=path_arg, help="folder for resumable training checkpoints")
    parser.add_argument("--checkpoint-every", type=positive_int,
                        help="steps between checkpoints in --state-dir (default 100; and at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from the --state-dir checkpoint")
    parser.add_argument("--json", action="store_true", help="print the record as JSON only")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace) -> FinetuneSettings:
    settings = FinetuneSettings(
        method=args.method, task=args.task, size=args.size, source=args.source,
        checkpoint=args.checkpoint,
        train_size=args.train_size, train_unit=args.train_unit, seed=args.seed, steps=args.steps,
        epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, prefix_length=args.prefix_length, prefix_hidden=args.prefix_hidden,
        mlp=not args.no_mlp, mode=args.mode, init=args.init, init_text=args.init_text,
        eval_size=args.eval_size, max_new_tokens=args.max_new_tokens, select=args.select,
        eval_every=args.eval_every, unseen=args.unseen, progress=not args.no_progress,
    )
    if quick_mode():
        settings.steps = QUICK_STEPS if settings.steps is None else min(settings.steps, QUICK_STEPS)
        settings.eval_size = QUICK_EVAL if settings.eval_size is None else min(settings.eval_size, QUICK_EVAL)
    return settings


def check_args(args: argparse.Namespace) -> None:
    """Refuse, before any work, options that do not go together and folders that cannot be written."""
    if args.sweep_lr and args.lr is not None:
        raise ValueError("--lr and --sweep-lr exclude each other")
    if args.resume and args.state_dir is None:
        raise ValueError("--resume continues from the checkpoints in --state-dir; give --state-dir DIR")
    if args.checkpoint_every is not None and args.state_dir is None:
        raise ValueError("--checkpoint-every saves into --state-dir; give --state-dir DIR")
    if args.sweep_lr and args.state_dir is not None:
        raise ValueError("--state-dir keeps the checkpoints of one run, not of a --sweep-lr")
    if args.out is not None:
        if touches_shipped(args.out):
            raise ValueError(f"--out {args.out} lies in the shipped checkpoints' folder; give another folder")
        check_output_dir(args.out, "--out", OUT_FILES)
    if args.state_dir is not None:
        if args.out is not None and Path(args.out).resolve() in Path(args.state_dir).resolve().parents:
            raise ValueError("--state-dir must lie outside --out (the --out folder is replaced as a whole)")
        check_state_dir(args.state_dir, "--state-dir", args.resume)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_args(args)
    with num_threads(args.threads):
        if args.sweep_lr:
            record = sweep_lr(settings, args.sweep_lr, out=args.out)
        else:
            if args.resume and latest_step(args.state_dir) is None:
                print(f"no checkpoint in {args.state_dir} yet; training from the first step", file=sys.stderr)
            record = run_finetune(
                settings, out=args.out, state_dir=args.state_dir, resume=args.resume,
                checkpoint_every=100 if args.checkpoint_every is None else args.checkpoint_every,
            )
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print_record(record)
    if args.out:
        out = Path(args.out)
        print(f"wrote {out / 'result.json'}, {out / 'timing.json'} and the adapter in {out / 'adapter'}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``tinypft finetune`` kept (for the one line ``tinypft.cli`` prints)."""
    if getattr(args, "state_dir", None) is None:
        return "nothing was kept (--state-dir DIR keeps resumable checkpoints)"
    step = latest_step(args.state_dir)
    if step is None:
        return f"no checkpoint was written yet in {args.state_dir}"
    return f"the checkpoint of step {step} is kept in {args.state_dir}; rerun the same command with --resume"


def print_record(record: dict[str, Any]) -> None:
    """The run as a one-row table, the sweep if there was one, and a few dev outputs."""
    for entry in record.get("sweep", []):
        shown = ", ".join(f"{k} {v:.4g}" for k, v in entry["dev"].items() if k in ("bleu", "ser", "accuracy"))
        print(f"lr {entry['lr']:g}: dev {shown}")
    if record.get("sweep"):
        print(f"chosen by {record['sweep_metric']}: lr {record['hyperparameters']['train_config']['lr']:g}")
    print(report.format_table([report.record_row(record)]))
    if record["eval_note"]:
        print(record["eval_note"])
    for sample in (record["dev"] or {}).get("samples", [])[:2]:
        print(f"  {sample['source']}\n  -> {' '.join(sample['output'].split())}")
    print(f"command: {record['command']}")
