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
from .make import list_exercises, make_student_versions, strip_solutions

__all__ = [
    "check_attention", "check_causal_mask", "check_central_difference", "check_count_pairs",
    "check_layer_norm", "check_lm_loss", "check_merge_pair", "check_mul_backward",
    "check_multi_head_attention", "check_pack_documents", "check_parameter_count", "check_topological_sort",
    "check_unbroadcast", "list_exercises", "make_student_versions", "strip_solutions",
]
