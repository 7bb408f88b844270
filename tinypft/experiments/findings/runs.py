"""One run of a finding and its cache: what it is (``RunSpec``), the work it may do (``Budget``),
where it runs and where its record is kept (``Context``), and ``execute``, which trains and scores it.

A run's record is cached under ``RunSpec.digest``, the hash of its settings as canonical JSON, so an
interrupted call resumes and a run that several experiments share is trained once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...data import extrapolation_split, load_tokenizer, with_source
from ...peft import BitFitConfig, bias_change, get_peft_model
from ...peft.model import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from ...serialization import atomic_directory, read_json
from ...train.metrics import evaluate_generation
from ..finetune import FinetuneSettings, evaluate, evenly_spaced, fit, prepare, summarize
from ..report import write_json

ADAPTER_FILES = (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME)


@dataclass(frozen=True)
class Budget:
    """The work per run: optimizer steps and scored examples, for generation (E2E) and classification."""

    name: str
    steps: int  # E2E
    eval_size: int  # dev, test (and extrapolation) MRs scored, evenly spaced
    cls_steps: int  # rating
    cls_eval_size: int  # dev and test examples
    max_new_tokens: int = 64

    def describe(self) -> str:
        """One line for the report: the steps and the examples scored, per task."""
        return (f"E2E: {self.steps} steps of batch 8, {self.eval_size} dev and {self.eval_size} test MRs, "
                f"greedy decoding of at most {self.max_new_tokens} tokens; rating: {self.cls_steps} steps, "
                f"{self.cls_eval_size} dev and {self.cls_eval_size} test examples")


BUDGETS: dict[str, Budget] = {
    "default": Budget("default", steps=1000, eval_size=100, cls_steps=500, cls_eval_size=300),
    "quick": Budget("quick", steps=3, eval_size=3, cls_steps=3, cls_eval_size=6, max_new_tokens=6),
}


@dataclass(frozen=True)
class RunSpec:
    """One run: its settings, plus what findings adds (a BitFit component subset, an extra split)."""

    settings: FinetuneSettings
    components: tuple[str, ...] | None = None  # bitfit: train only these biases
    extrap: bool = False  # also score the extrapolation split (unseen names and landmarks)

    def key(self) -> str:
        """What the result depends on, as canonical JSON (progress bars do not count)."""
        values = dataclasses.asdict(self.settings) | {"progress": None}
        return json.dumps({"settings": values, "components": self.components, "extrap": self.extrap},
                          sort_keys=True)

    @property
    def digest(self) -> str:
        """The run's name in the cache: the first 16 hex digits of the key's SHA-256."""
        return hashlib.sha256(self.key().encode()).hexdigest()[:16]


@dataclass
class Row:
    """A table row: a label and one run per seed."""

    label: str
    specs: list[RunSpec]
    note: str = ""



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

    def __post_init__(self) -> None:
        self.tokenizer = self.tokenizer or load_tokenizer()
        if self.cache_path.exists():
            self.cache = read_json(self.cache_path)

    def settings(self, method: str, seed: int, task: str = "e2e", **overrides: Any) -> FinetuneSettings:
        """A run of ``method`` within the budget; ``overrides`` are FinetuneSettings fields."""
        b = self.budget
        values: dict[str, Any] = dict(
            method=method, task=task, size=self.size, checkpoint=self.checkpoint, seed=seed,
            steps=b.steps if task == "e2e" else b.cls_steps,
            eval_size=b.eval_size if task == "e2e" else b.cls_eval_size,
            max_new_tokens=b.max_new_tokens, progress=False,
        )
        if method == "prefix" and self.budget.name == "quick":
            values["prefix_hidden"] = 16
        values.update(overrides)
        if values["size"] != self.size:  # another size: its own shipped checkpoint
            values["checkpoint"] = None
        return FinetuneSettings(**values)

    def row(self, label: str, method: str, seeds: Sequence[int] | None = None, components: Any = None,
            extrap: bool = False, **overrides: Any) -> Row:
        """A table row labelled ``label``: one run of ``method`` per seed (default: every seed)."""
        specs = [RunSpec(self.settings(method, seed, **overrides), components, extrap)
                 for seed in (self.seeds if seeds is None else seeds)]
        return Row(label, specs)

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
        return self.cache_path.parent / "adapters" / spec.digest


# ----------------------------------------------------------------------------- one run


def execute(spec: RunSpec, ctx: Context, callback: Any = None) -> dict[str, Any]:
    """Train and score one run; the record keeps the metrics, sizes, time and provenance (no samples)."""
    start = time.perf_counter()
    run = prepare(spec.settings, ctx.tokenizer)
    if spec.components:  # BitFit on a subset of components
        run.model = get_peft_model(run.model.base_model, BitFitConfig(components=spec.components))
        run.trainable_params, run.total_params = run.model.get_nb_trainable_parameters()
    before = {n: p.data.copy() for n, p in run.model.base_model.named_parameters() if n.endswith(".bias")}
    fit(run, callback)
    for split in ("dev", "test"):
        evaluate(run, split)
    record = summarize(run)
    for split in ("dev", "test"):
        record[split] = {k: v for k, v in record[split].items() if k != "samples"}
    if spec.extrap:
        extrap = evenly_spaced(with_source(extrapolation_split("e2e"), spec.settings.source),
                               spec.settings.eval_size)
        s = spec.settings
        scores = evaluate_generation(run.model, run.tokenizer, extrap, max_new_tokens=s.max_new_tokens,
                                     batch_size=s.eval_batch_size, n_samples=0)
        record["extrap"] = {k: scores[k] for k in ("bleu", "ser", "n", "seconds")}
    if spec.settings.method == "bitfit":
        after = {n: p.data for n, p in run.model.base_model.named_parameters() if n in before}
        changes = bias_change(before, after)
        record["bias_change"] = [[c, layer, value] for (c, layer), value in sorted(changes.items())]
    if spec.settings.method == "prompt":  # kept for the ensembles (P x d floats)
        with atomic_directory(ctx.adapter_dir(spec), ADAPTER_FILES) as tmp:
            run.model.save_pretrained(tmp)
    record.pop("environment")
    record["wall_seconds"] = time.perf_counter() - start
    return record

