"""Experiments: fine-tune with one method and measure it, or compare every method at once.

    finetune.py   ``tinypft finetune``: one method on one task (e2e, rating, match) -> one record
    showdown.py   ``tinypft showdown``: every method on E2E within a time budget
    methods.py    each method's default hyperparameters (the methods: tinypft.peft.mapping)
    report.py     table rows, means over seeds, the text table, JSON and the trade-off plot

    from tinypft.experiments import FinetuneSettings, run_finetune
    record = run_finetune(FinetuneSettings(method="bitfit", task="e2e", steps=200, eval_size=50))
    record["test"]["bleu"], record["trainable_params"], record["stored_bytes"]
"""

from .finetune import FinetuneSettings, TaskData, run_finetune, sweep_lr
from .methods import DEFAULTS, Defaults, method_defaults, peft_config
from .report import aggregate, format_table, plot_tradeoff, record_row
from .showdown import BUDGETS, Budget, run_showdown

__all__ = [
    "BUDGETS", "DEFAULTS", "Budget", "Defaults", "FinetuneSettings", "TaskData", "aggregate", "format_table",
    "method_defaults", "peft_config", "plot_tradeoff", "record_row", "run_finetune", "run_showdown",
    "sweep_lr",
]
