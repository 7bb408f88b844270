"""Reporting results: flat table rows, means over seeds, a text table, JSON, and the trade-off plot."""

from __future__ import annotations

import io
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..serialization import atomic_write_bytes, atomic_write_json
from ..threads import get_num_threads

# (key, header, format) of the table's columns; metric columns are added per task.
BASE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("method", "method", "{}"),
    ("trainable_params", "trainable", "{:,.0f}"),
    ("trainable_pct", "% of base", "{:.3f}"),
    ("stored_bytes", "stored/task", "bytes"),
)
METRIC_FORMATS = {"bleu": "{:.1f}", "ser": "{:.3f}", "names_venue": "{:.2f}", "accuracy": "{:.3f}"}
METRIC_HEADERS = {"bleu": "BLEU", "ser": "SER", "names_venue": "names venue", "accuracy": "acc"}
PLOTTED_METRICS = ("bleu", "ser", "accuracy")  # names_venue is a check, not a trade-off


def environment() -> dict[str, Any]:
    """Versions and machine facts worth recording next to a timing."""
    import matplotlib
    import sacrebleu

    return {
        "tinypft": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "sacrebleu": sacrebleu.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "blas_threads": get_num_threads(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
    }


def human_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units, as file managers show)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """The flat table row of one ``run_finetune`` record: sizes, metrics per split, train seconds."""
    row = {key: record[key] for key in ("method", "trainable_params", "trainable_pct", "stored_bytes")}
    for split in ("dev", "test"):
        for metric, value in (record.get(split) or {}).items():
            if metric in METRIC_FORMATS:
                row[f"{split}_{metric}"] = value
    row["train_seconds"] = record["train_seconds"]
    return row


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (in first-seen order): the mean over seeds of every number (a number all
    seeds share stays as it is), with a ``<key>_std`` (population standard deviation) beside each
    metric when there are several seeds."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_method.setdefault(row["method"], []).append(row)
    out = []
    for method, group in by_method.items():
        merged: dict[str, Any] = {"method": method, "seeds": len(group)}
        for key in group[0]:
            if key == "method":
                continue
            values = [r[key] for r in group if r.get(key) is not None]
            if not values:
                merged[key] = None
                continue
            merged[key] = values[0] if all(v == values[0] for v in values) else float(np.mean(values))
            if len(group) > 1 and key.split("_", 1)[-1] in METRIC_FORMATS:
                merged[f"{key}_std"] = float(np.std(values))
        out.append(merged)
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table (Markdown pipe syntax) of rows from ``record_row`` or ``aggregate``."""
    metric_keys = [
        f"{split}_{metric}" for split in ("dev", "test") for metric in METRIC_FORMATS
        if any(f"{split}_{metric}" in row for row in rows)
    ]
    columns = list(BASE_COLUMNS)
    for key in metric_keys:
        split, metric = key.split("_", 1)
        columns.append((key, f"{split} {METRIC_HEADERS[metric]}", METRIC_FORMATS[metric]))
    columns.append(("train_seconds", "train s", "{:.1f}"))

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if fmt == "bytes":
            return human_bytes(value)
        text = fmt.format(value)
        if row.get(f"{key}_std") is not None:
            text += " ± " + fmt.format(row[f"{key}_std"])
        return text

    header = [title for _, title, _ in columns]
    body = [[cell(row, key, fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    aligned = ["<" if i == 0 else ">" for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, aligned, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if a == ">" else "-" * (w + 2) for a, w in zip(aligned, widths))
    rule += "|"
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def split_keys(obj: Any, keys: Sequence[str]) -> tuple[Any, Any]:
    """Split a JSON-able record in two: everything but ``keys`` (at any depth), and the values of
    ``keys`` in the same nesting (dicts and lists kept only where they hold one of them).

    >>> split_keys({"a": 1, "seconds": 2.0, "dev": {"bleu": 3, "seconds": 4.0}}, ("seconds",))
    ({'a': 1, 'dev': {'bleu': 3}}, {'seconds': 2.0, 'dev': {'seconds': 4.0}})
    """
    if isinstance(obj, dict):
        rest, taken = {}, {}
        for key, value in obj.items():
            if key in keys:
                taken[key] = value
            else:
                rest[key], inner = split_keys(value, keys)
                if inner not in (None, {}, []):
                    taken[key] = inner
        return rest, taken
    if isinstance(obj, list):
        pairs = [split_keys(item, keys) for item in obj]
        inner = [t for _, t in pairs]
        return [r for r, _ in pairs], inner if any(t not in (None, {}, []) for t in inner) else None
    return obj, None


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)
    return path


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Test metric (dev when there is no test) against trainable parameters (log x axis), one point
    per method, saved as PNG.

    E2E rows get two panels (BLEU, higher is better; SER, lower is better), classification rows
    one (accuracy). A method with 0 trainable parameters cannot sit on a log axis: it is drawn as a
    dashed horizontal line across the panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tested = any(row.get(f"test_{m}") is not None for row in rows for m in PLOTTED_METRICS)
    split = "test" if tested else "dev"
    metrics = [m for m in PLOTTED_METRICS if any(row.get(f"{split}_{m}") is not None for row in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        key = f"{split}_{metric}"
        for row in rows:
            value = row.get(key)
            if value is None:
                continue
            if row["trainable_params"] > 0:
                ax.errorbar(row["trainable_params"], value, yerr=row.get(f"{key}_std"), fmt="o", capsize=3)
                ax.annotate(row["method"], (row["trainable_params"], value), textcoords="offset points",
                            xytext=(6, 4))
            else:
                label = f"{row['method']} (0 trainable)"
                ax.axhline(value, linestyle="--", color="grey", linewidth=1, label=label)
        ax.set_xscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", frameon=False)
        ax.set_xlabel("trainable parameters (log scale)")
        better = "lower is better" if metric == "ser" else "higher is better"
        ax.set_ylabel(f"{split} {METRIC_HEADERS[metric]} ({better})")
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
    return path
