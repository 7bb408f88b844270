"""``tinypft findings``: the papers' findings, re-run at mini scale over seeds and reported honestly.

    tinypft findings                          # every experiment, 3 seeds, small model -> docs/results.md
    tinypft findings --only bitfit,prefix_modes --seeds 0,1,2,3,4
    tinypft findings --quick --only prompt_init    # a few steps: checks that everything runs

An experiment is a list of rows (e.g. "prefix", "full"); a row is one ``FinetuneSettings`` run per
seed. A row's learning rate is chosen, among the method's default times a few factors, on the first
seed's validation loss (``Context.tuned``), and every run keeps its step with the lowest validation
loss: nothing is chosen on test. Every finished run's record goes into a JSON cache keyed by its
settings, so an interrupted call resumes and a second call skips what is done; runs shared by
experiments are trained once, two at a time in processes of their own (``--jobs``). Each row is
summarized by the mean, the sample standard deviation and the per-seed values of every metric, and
each claim gets a verdict computed from those numbers by rules that cannot mislead (``verdicts.py``).

    runs.py          one run: its settings (RunSpec), the budget, the cache and the sweeps (Context), execute
    verdicts.py      statistics over seeds and the rules that turn them into verdicts
    experiments.py   the findings: each claim's rows and verdicts, EXPERIMENTS, run_experiments
    report.py        results.md (the paper against tinypft; a table and the verdicts per finding) and JSON
    cli.py           the command line
    published.py     the published JSON read back: tables, verdicts and mean ± sd plots for the lessons
"""

from .experiments import EXPERIMENTS, Experiment, run_experiments
from .report import write_results
from .runs import BUDGETS, Budget, Context, NeedsRuns, Row, RunSpec, execute
from .verdicts import Stat, Verdict, compare, judge, stat, summarize_rows

__all__ = [
    "BUDGETS", "EXPERIMENTS", "Budget", "Context", "Experiment", "NeedsRuns", "Row", "RunSpec", "Stat",
    "Verdict", "compare", "execute", "judge", "run_experiments", "stat", "summarize_rows", "write_results",
]
