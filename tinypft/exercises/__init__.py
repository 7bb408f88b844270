"""Exercises for coursework: checkers for the lesson notebooks and the student-version maker.

In a lesson, each exercise is a function with its solution between ``### BEGIN SOLUTION`` and
``### END SOLUTION``, followed by a cell that calls its checker::

    from tinypft import exercises
    exercises.check_topological_sort(topological_sort)

``tinypft exercises make lessons/ handout/`` writes the student versions (see ``make.py``).
"""

from .checks import (
    check_attention,
    check_causal_mask,
    check_central_difference,
    check_count_pairs,
    check_layer_norm,
    check_lm_loss,
    check_merge_pair,
    check_mul_backward,
    check_multi_head_attention,
    check_pack_documents,
    check_parameter_count,
    check_topological_sort,
    check_unbroadcast,
)
from .checks_bitfit import check_bias_change, check_bias_parameter_names, check_freeze_all_but_biases
from .checks_prefix import check_prefix_attention, check_prefix_mlp, check_prefix_param_count
from .checks_prompt import (
    check_class_label_init,
    check_majority_vote,
    check_prepend_prompt,
    check_sampled_vocab_init,
)
from .checks_showdown import check_pareto_front, check_storage_for_tasks, check_trainable_count
from .make import list_exercises, make_student_versions, strip_solutions

__all__ = [
    "check_attention", "check_causal_mask", "check_central_difference", "check_count_pairs",
    "check_layer_norm", "check_lm_loss", "check_merge_pair", "check_mul_backward",
    "check_multi_head_attention", "check_pack_documents", "check_parameter_count", "check_topological_sort",
    "check_unbroadcast", "list_exercises", "make_student_versions", "strip_solutions",
    "check_prefix_attention", "check_prefix_mlp", "check_prefix_param_count",
    "check_bias_parameter_names", "check_freeze_all_but_biases", "check_bias_change",
    "check_prepend_prompt", "check_sampled_vocab_init", "check_class_label_init", "check_majority_vote",
    "check_trainable_count", "check_storage_for_tasks", "check_pareto_front",
]
