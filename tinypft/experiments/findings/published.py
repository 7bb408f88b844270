"""The published findings, read back: ``docs/results/findings.json`` as tables and plots for the lessons.

    from tinypft.experiments.findings import published
    results = published.load()                         # the JSON that `tinypft findings` wrote
    published.print_table(results, "prefix_length", ["prefix, length 5", "prefix, length 10"])
    published.errorbar(ax, results, "prefix_length", labels, "test_bleu", x=[5, 10])
    published.print_verdicts(results, "prefix_length")

Every number is a mean ± sample standard deviation over the run's seeds, and the per-seed values are
drawn beside it, so a plot never shows one seed's trend as if it were the finding.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_PATH = REPO_ROOT / "docs" / "results" / "findings.json"


@dataclass(frozen=True)
class Published:
    """What ``tinypft findings`` wrote: per experiment, its rows (label -> metric -> mean, sd, values),
    verdicts and learning rates; plus the command, the seeds, the budget and the model size."""

    path: Path
    command: str
    seeds: list[int]
    size: str
    budget: dict[str, Any]
    experiments: dict[str, dict[str, Any]]

    def experiment(self, name: str) -> dict[str, Any]:
        """One experiment's record; a clear error names the ones the file has."""
        if name not in self.experiments:
            raise KeyError(f"{self.path} has no experiment {name!r} (it has {', '.join(self.experiments)}); "
                           f"run `tinypft findings --only {name}`")
        return self.experiments[name]

    def stat(self, name: str, label: str, metric: str) -> dict[str, Any]:
        """``{"mean", "sd", "values"}`` of ``metric`` for row ``label`` of experiment ``name``."""
        rows = self.experiment(name)["rows"]
        if label not in rows:
            raise KeyError(f"experiment {name!r} has no row {label!r} (rows: {', '.join(rows)})")
        if metric not in rows[label]:
            raise KeyError(f"row {label!r} of {name!r} has no metric {metric!r} "
                           f"(has: {', '.join(rows[label])})")
        return rows[label][metric]


def load(path: str | Path | None = None) -> Published:
    """Read the findings JSON (default: the repository's ``docs/results/findings.json``)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: `tinypft findings` writes it")
    data = json.loads(path.read_text(encoding="utf-8"))
    return Published(path, data["command"], data["seeds"], data["size"], data["budget"], data["experiments"])


def show(stat: dict[str, Any], digits: int = 1) -> str:
    """``12.3 ± 0.4``."""
    return f"{stat['mean']:.{digits}f} ± {stat['sd']:.{digits}f}"


def print_table(results: Published, name: str, labels: Sequence[str] | None = None,
                metrics: Sequence[str] = ("dev_bleu", "test_bleu", "test_ser")) -> None:
    """Rows of experiment ``name`` (default: all), mean ± sd of each metric over the seeds."""
    rows = results.experiment(name)["rows"]
    labels = list(rows) if labels is None else list(labels)
    width = max(map(len, labels)) + 2
    print(f"{'':{width}}" + "".join(f"{m:>18}" for m in metrics) + f"   ({len(results.seeds)} seeds)")
    for label in labels:
        cells = []
        for metric in metrics:
            s = rows[label].get(metric)
            cells.append(f"{show(s, 1 if 'bleu' in metric else 3):>18}" if s else f"{'-':>18}")
        print(f"{label:{width}}" + "".join(cells))


def print_verdicts(results: Published, name: str) -> None:
    """The experiment's verdicts, one per claim: status, claim and the numbers behind it."""
    for verdict in results.experiment(name)["verdicts"]:
        print(f"{verdict['status']}: {verdict['claim']}\n    {verdict['numbers']}")


def errorbar(ax: Any, results: Published, name: str, labels: Sequence[str], metric: str,
             x: Sequence[float] | None = None, label: str | None = None, color: str | None = None,
             seeds: bool = True) -> None:
    """Plot mean ± sd of ``metric`` for ``labels`` (at ``x``, default 0, 1, ...), with each seed's
    value as a small dot beside it."""
    x = list(range(len(labels))) if x is None else list(x)
    stats = [results.stat(name, row, metric) for row in labels]
    bars = ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["sd"] for s in stats], marker="o",
                       capsize=4, label=label, color=color)
    if seeds:
        color = bars.lines[0].get_color()
        for xi, s in zip(x, stats):
            ax.plot([xi] * len(s["values"]), s["values"], ".", color=color, alpha=0.4, markersize=5)
