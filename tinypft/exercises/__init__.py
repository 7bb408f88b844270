"""Exercises for coursework: checkers for the lesson notebooks and the student-version maker.

In a lesson, each exercise is a function with its solution between ``### BEGIN SOLUTION`` and
``### END SOLUTION``, followed by a cell that calls its checker from the lesson's module::

    from tinypft.exercises import lesson01_autograd as exercises
    exercises.check_topological_sort(topological_sort)

    common.py              what every checker shares: calling the student's code, comparing, reporting
    lesson01_autograd.py   the checkers of lessons/01_autograd.ipynb, and so on, one module per lesson,
    ...                    named after its notebook
    lesson07_showdown.py   the checkers of lessons/07_showdown.ipynb
    make.py                ``tinypft exercises make lessons/ handout/``: the student versions

Every checker is also importable from this package, ``tinypft.exercises.check_topological_sort``.
Each refuses a submission that is, subclasses or calls tinypft's own implementation of its exercise
(``common.refuse_library``). The lessons' exercise cells carry nbgrader metadata (grade ids, points,
locked checker cells, hidden tests), so a course can run nbgrader's ``generate_assignment`` and
``autograde`` on them.
"""

from .lesson01_autograd import (
    check_central_difference,
    check_mul_backward,
    check_topological_sort,
    check_unbroadcast,
)
from .lesson02_transformer import (
    check_attention,
    check_causal_mask,
    check_gpt_logits,
    check_layer_norm,
    check_multi_head_attention,
    check_parameter_count,
)
from .lesson03_pretraining import check_count_pairs, check_lm_loss, check_merge_pair, check_pack_documents
from .lesson04_bitfit import (
    check_bias_change,
    check_bias_parameter_names,
    check_freeze_all_but_biases,
    check_scatter_add,
    check_value_bias_grad,
)
from .lesson05_prefix_tuning import check_prefix_attention, check_prefix_mlp, check_prefix_param_count
from .lesson06_prompt_tuning import (
    check_class_label_init,
    check_majority_vote,
    check_prepend_prompt,
    check_sampled_vocab_init,
)
from .lesson07_showdown import (
    check_bitfit_adamw_step,
    check_infix_mask,
    check_pareto_front,
    check_storage_for_tasks,
    check_trainable_count,
)
from .make import list_exercises, make_student_versions, strip_solutions

__all__ = [
    "check_topological_sort", "check_unbroadcast", "check_mul_backward", "check_central_difference",
    "check_causal_mask", "check_attention", "check_multi_head_attention", "check_layer_norm",
    "check_parameter_count", "check_gpt_logits",
    "check_count_pairs", "check_merge_pair", "check_lm_loss", "check_pack_documents",
    "check_bias_parameter_names", "check_freeze_all_but_biases", "check_bias_change",
    "check_value_bias_grad", "check_scatter_add",
    "check_prefix_attention", "check_prefix_mlp", "check_prefix_param_count",
    "check_prepend_prompt", "check_sampled_vocab_init", "check_class_label_init", "check_majority_vote",
    "check_trainable_count", "check_storage_for_tasks", "check_pareto_front",
    "check_bitfit_adamw_step", "check_infix_mask",
    "list_exercises", "make_student_versions", "strip_solutions",
]
