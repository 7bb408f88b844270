"""One run of a finding and its cache: what it is (``RunSpec``), the work it may do (``Budget``),
where it runs and where its record is kept (``Context``), and ``execute``, which trains and scores it.

A run's record is cached under ``RunSpec.digest``, the hash of its settings as canonical JSON, so an
interrupted call resumes and a run that several experiments share is trained once.

Learning rates are chosen, never assumed: ``Context.tuned`` builds a row whose learning rate is the
one, among a few around the method's default, that gives the lowest validation loss on the first
seed (dev for the full data, a held-out slice of the training MRs for little data). Until those
sweep runs are in the cache it raises ``NeedsRuns`` with them, and ``run_experiments`` runs them
first. Every run keeps the step with the lowest validation loss, so the budget is chosen the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...data import load_tokenizer
from ...peft import BitFitConfig, bias_change, get_peft_model
from ...peft.model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from ...serialization import atomic_directory, read_json
from ...threads import num_threads
from ..finetune import GENERATION_TASKS, FinetuneSettings, evaluate, fit, prepare, summarize
from ..methods import method_defaults
from ..report import write_json

ADAPTER_FILES = (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME)


@dataclass(frozen=True)
class Budget:
    """The work per run: optimizer steps (the best step on the validation loss is kept), the
    examples scored, and the learning rates a sweep tries (factors of the method's default)."""

    name: str
    steps: int  # E2E with all the data
    eval_size: int  # dev and test MRs scored (and each of seen / unseen), evenly spaced
    cls_steps: int  # rating
    cls_eval_size: int  # dev and test examples
    lowdata_epochs: int = 30  # E2E with little data: this many epochs, within the two bounds below
    lowdata_min_steps: int = 200
    lowdata_max_steps: int = 1000
    lr_factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    max_new_tokens: int = 64

    def describe(self) -> str:
        """One line for the report: the steps and the examples scored, per task."""
        return (f"E2E: {self.steps} steps of batch 8 (little data: {self.lowdata_epochs} epochs, "
                f"{self.lowdata_min_steps}-{self.lowdata_max_steps} steps), the step with the lowest "
                f"validation loss kept; {self.eval_size} dev and {self.eval_size} test MRs, greedy decoding "
                f"of at most {self.max_new_tokens} tokens; rating: {self.cls_steps} steps, "
                f"{self.cls_eval_size} dev and {self.cls_eval_size} test examples; learning rates tried: "
                f"the method's default times {', '.join(f'{f:.3g}' for f in self.lr_factors)}")

    def lowdata_steps(self, pairs: int, batch_size: int = 8) -> int:
        """Steps for ``pairs`` training pairs: ``lowdata_epochs`` epochs, within the bounds."""
        steps = self.lowdata_epochs * -(-pairs // batch_size)
        return max(self.lowdata_min_steps, min(self.lowdata_max_steps, steps))


BUDGETS: dict[str, Budget] = {
    "default": Budget("default", steps=1500, eval_size=200, cls_steps=400, cls_eval_size=300),
    "quick": Budget("quick", steps=4, eval_size=3, cls_steps=4, cls_eval_size=6, lowdata_epochs=1,
                    lowdata_min_steps=2, lowdata_max_steps=4, lr_factors=(1.0, 3.0), max_new_tokens=6),
}


@dataclass(frozen=True)
class RunSpec:
    """One run: its settings, plus what findings adds (a BitFit component subset, whether to score)."""

    settings: FinetuneSettings
    components: tuple[str, ...] | None = None  # bitfit: train only these biases
    score: bool = True  # False for a learning-rate sweep's run: its validation loss is all it needs

    def key(self) -> str:
        """What the result depends on, as canonical JSON (progress bars do not count)."""
        values = dataclasses.asdict(self.settings) | {"progress": None}
        return json.dumps({"settings": values, "components": self.components, "score": self.score},
                          sort_keys=True)

    @property
    def digest(self) -> str:
        """The run's name in the cache: the first 16 hex digits of the key's SHA-256."""
        return hashlib.sha256(self.key().encode()).hexdigest()[:16]


@dataclass
class Row:
    """A table row: a label and one run per seed; ``sweep`` holds the learning rates tried to choose it."""

    label: str
    specs: list[RunSpec]
    note: str = ""
    sweep: dict[float, float] = field(default_factory=dict)  # lr -> validation loss (first seed)
    sweep_runs: list[str] = field(default_factory=list)  # the sweep's runs (digests), for the time spent


class NeedsRuns(Exception):
    """A row cannot be built before these runs are in the cache (a learning-rate sweep)."""

    def __init__(self, specs: Sequence[RunSpec]):
        super().__init__(f"{len(specs)} runs needed first")
        self.specs = list(specs)


@dataclass
class Context:
    """Where and how to run: the budget, seeds, model size, the cache and what was measured."""

    budget: Budget
    seeds: tuple[int, ...]
    size: str
    cache_path: Path
    checkpoint: str | None = None
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None
    pending: list[RunSpec] = field(default_factory=list)  # sweep runs that ``tuned`` rows wait for

    def __post_init__(self) -> None:
        self.tokenizer = self.tokenizer or load_tokenizer()
        if self.cache_path.exists():
            self.cache = read_json(self.cache_path)

    def settings(self, method: str, seed: int, task: str = "e2e", **overrides: Any) -> FinetuneSettings:
        """A run of ``method`` within the budget; ``overrides`` are FinetuneSettings fields. Every
        run keeps its best step on a validation loss: dev, or with little data a held-out slice."""
        b = self.budget
        e2e = task in GENERATION_TASKS
        values: dict[str, Any] = dict(
            method=method, task=task, size=self.size, checkpoint=self.checkpoint, seed=seed,
            steps=b.steps if e2e else b.cls_steps, eval_size=b.eval_size if e2e else b.cls_eval_size,
            max_new_tokens=b.max_new_tokens, progress=False, select="dev" if method != "frozen" else None,
        )
        if method == "prefix" and self.budget.name == "quick":
            values["prefix_hidden"] = 16
        if overrides.get("train_size") is not None and task == "e2e":  # little data: own steps, validation
            values.update(train_unit="pair", select="heldout", steps=b.lowdata_steps(overrides["train_size"]))
        values.update(overrides)
        if values["size"] != self.size:  # another size: its own shipped checkpoint
            values["checkpoint"] = None
        return FinetuneSettings(**values)

    def row(self, label: str, method: str, seeds: Sequence[int] | None = None, components: Any = None,
            **overrides: Any) -> Row:
        """A table row labelled ``label``: one run of ``method`` per seed (default: every seed)."""
        specs = [RunSpec(self.settings(method, seed, **overrides), components)
                 for seed in (self.seeds if seeds is None else seeds)]
        return Row(label, specs)

    def default_lr(self, method: str, task: str = "e2e") -> float:
        spec = method_defaults(method)
        return spec.lr if task in GENERATION_TASKS else spec.classification_lr

    def tuned(self, label: str, method: str, lrs: Sequence[float] | None = None,
              seeds: Sequence[int] | None = None, components: Any = None, **overrides: Any) -> Row:
        """A row at the learning rate, of ``lrs`` (default: the method's default times the budget's
        factors), with the lowest validation loss on the first seed. Until those sweep runs are
        cached, they are added to ``pending`` and a stand-in row at the first learning rate is
        returned, so that one pass over an experiment's rows collects every sweep it needs
        (``plan`` runs them, and builds the rows again)."""
        task = overrides.get("task", "e2e")
        if lrs is None:
            lrs = [self.default_lr(method, task) * f for f in self.budget.lr_factors]
        first = (self.seeds if seeds is None else seeds)[0]
        sweep = {lr: RunSpec(self.settings(method, first, lr=lr, **overrides), components, score=False)
                 for lr in lrs}
        missing = [s for s in sweep.values() if self.record(s) is None]
        if missing:
            self.pending += missing
            return self.row(label, method, seeds=seeds, components=components, lr=lrs[0], **overrides)
        losses = {lr: self.record(s)["valid_loss"] for lr, s in sweep.items()}
        best = min(losses, key=lambda lr: (losses[lr] is None, losses[lr] or 0.0))
        row = self.row(label, method, seeds=seeds, components=components, lr=best, **overrides)
        row.sweep, row.sweep_runs = losses, [s.digest for s in sweep.values()]
        return row

    def record(self, spec: RunSpec) -> dict[str, Any] | None:
        """The cached record of a finished run, or None."""
        return self.cache.get(spec.digest)

    def store(self, spec: RunSpec, record: dict[str, Any]) -> None:
        """Cache a run's record with the key it was computed from, and write the cache file."""
        self.cache[spec.digest] = record | {"key": json.loads(spec.key())}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.cache_path, self.cache)

    def adapter_dir(self, spec: RunSpec) -> Path:
        """Where a run's adapter is kept, next to the cache (prompt runs: for the ensembles)."""
        return adapter_root(self.cache_path) / spec.digest

    def run_all(self, specs: Sequence[RunSpec], jobs: int = 1, desc: str = "findings") -> None:
        """Run and cache every spec that is not cached yet; ``jobs`` > 1 runs that many at once, each
        in a process of its own on one BLAS thread (each run seeds itself: the numbers do not depend
        on ``jobs``)."""
        todo = list({s.digest: s for s in specs if self.record(s) is None}.values())
        if not todo:
            return
        todo.sort(key=lambda s: (s.settings.task not in GENERATION_TASKS, s.settings.train_size is not None))
        bar = tqdm(total=len(todo), unit="run", disable=not self.progress, desc=desc)
        try:
            if jobs == 1:
                for spec in todo:
                    bar.set_description(f"{desc}: {spec.settings.method} (seed {spec.settings.seed})")
                    self.store(spec, execute(spec, self.tokenizer, self.adapter_dir(spec)))
                    bar.update(1)
                return
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = {pool.submit(_execute_in_worker, spec,
                                       self.adapter_dir(spec)): spec for spec in todo}
                for future in as_completed(futures):
                    self.store(futures[future], future.result())
                    bar.update(1)
        finally:
            bar.close()


def adapter_root(cache_path: Path) -> Path:
    return cache_path.parent / "adapters"


# ----------------------------------------------------------------------------- one run


def _execute_in_worker(spec: RunSpec, adapter_dir: Path) -> dict[str, Any]:
    with num_threads(1):
        return execute(spec, load_tokenizer(), adapter_dir)


def execute(spec: RunSpec, tokenizer: Any, adapter_dir: Path) -> dict[str, Any]:
    """Train and (unless it is a sweep's run) score one run; the record keeps the metrics, the
    validation loss and its step, sizes, time and provenance (no samples)."""
    start = time.perf_counter()
    run = prepare(spec.settings, tokenizer)
    if spec.components:  # BitFit on a subset of components
        run.model = get_peft_model(run.model.base_model, BitFitConfig(components=spec.components))
        run.trainable_params, run.total_params = run.model.get_nb_trainable_parameters()
    before = {n: p.data.copy() for n, p in run.model.base_model.named_parameters() if n.endswith(".bias")}
    fit(run)
    if spec.score:
        splits = ("dev", "test") + (("seen", "unseen") if spec.settings.unseen else ())
        if spec.settings.task == "webnlg":  # test is seen + unseen
            splits = ("dev", "seen", "unseen")
        for split in splits:
            evaluate(run, split)
    record = summarize(run)
    for split in ("dev", "test", "seen", "unseen"):
        if record.get(split):
            record[split] = {k: v for k, v in record[split].items() if k != "samples"}
    if spec.settings.method == "bitfit" and spec.score:
        after = {n: p.data for n, p in run.model.base_model.named_parameters() if n in before}
        changes = bias_change(before, after)
        record["bias_change"] = [[c, layer, value] for (c, layer), value in sorted(changes.items())]
    if spec.settings.method == "prompt" and spec.score:  # kept for the ensembles (P x d floats)
        with atomic_directory(adapter_dir, ADAPTER_FILES) as tmp:
            run.model.save_pretrained(tmp)
    record.pop("environment")
    record["wall_seconds"] = time.perf_counter() - start
    return record
