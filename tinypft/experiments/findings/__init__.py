"""``tinypft findings``: the papers' findings, re-run at mini scale over seeds and reported honestly.

    tinypft findings                          # every experiment, 3 seeds, small model -> docs/results.md
    tinypft findings --only bitfit,prefix_modes --seeds 0,1,2,3,4
    tinypft findings --quick --only bitfit    # a few steps: checks that everything runs (seconds)

An experiment is a list of rows (e.g. "prefix", "full"); a row is one ``FinetuneSettings`` run per
seed. Every finished run's record goes into a JSON cache keyed by its settings, so an interrupted
run resumes and a second call skips what is done; runs shared by experiments (the default prefix
run appears in five of them) are trained once. Each row is summarized by the mean, the sample
standard deviation and the per-seed values of every metric, and each claim gets sentences computed
from those numbers. Nothing is chosen on test: where a choice is made (random_subset's learning
rate, the best prefix length) it is made on dev, and the verdicts read the test numbers of what dev
chose.

    runs.py          one run: its settings (RunSpec), the budget, the cache (Context), execute
    verdicts.py      statistics over seeds and the rules that turn them into verdicts
    experiments.py   the findings: each claim's rows and verdict, EXPERIMENTS, run_experiments
    report.py        results.md (a table and the verdicts per finding) and results/findings.json
    cli.py           the command line
"""

from .experiments import EXPERIMENTS, Experiment, run_experiments
from .report import write_results
from .runs import BUDGETS, Budget, Context, NeedsRuns, Row, RunSpec, execute
from .verdicts import Stat, Verdict, compare, judge, stat, summarize_rows

__all__ = [
    "BUDGETS", "EXPERIMENTS", "Budget", "Context", "Experiment", "NeedsRuns", "Row", "RunSpec", "Stat",
    "Verdict", "compare", "execute", "judge", "run_experiments", "stat", "summarize_rows", "write_results",
]
