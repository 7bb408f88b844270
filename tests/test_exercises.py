"""The exercise checkers (right answers pass, wrong ones fail with a useful message) and the
student-version maker (solutions replaced by stubs, everything else kept)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import test_exercises_03
import test_exercises_04
import test_exercises_05
import test_exercises_06
import test_exercises_07

import tinypft
from tinypft import Function, Tensor, cli, exercises
from tinypft.engine import functional as F
from tinypft.engine import fused_kernels_enabled, get_rng, set_fused_kernels, unbroadcast
from tinypft.exercises import make

# Lessons 3 to 7 keep their right and wrong answers in a module each (test_exercises_0N.py).
LATER_LESSONS = (
    test_exercises_03, test_exercises_04, test_exercises_05, test_exercises_06, test_exercises_07,
)
ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))

# ----------------------------------------------------------------------------- right answers


def topological_sort(root):
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
        elif id(node) not in visited:
            visited.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._prev if id(p) not in visited)
    return order


def my_unbroadcast(grad, shape):
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True).reshape(shape)


class MyMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        da = unbroadcast(g * b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(g * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


def central_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for j in range(x.size):
        step = np.zeros_like(x)
        step.reshape(-1)[j] = eps
        grad.reshape(-1)[j] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


def causal_mask(num_queries, num_keys):
    return np.tril(np.ones((num_queries, num_keys), bool), k=num_keys - num_queries)


def layer_norm(x, weight, bias, eps=1e-5):
    centered = x - x.mean(axis=-1, keepdims=True)
    return centered / ((centered * centered).mean(axis=-1, keepdims=True) + eps).sqrt() * weight + bias


def attention(q, k, v, mask=None):
    scores = (q @ k.transpose(-2, -1)) * (1.0 / np.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, float(np.finfo(scores.dtype).min))
    return F.softmax(scores, axis=-1) @ v


def multi_head_attention(attn, x, mask):
    B, T, d = x.shape
    q, k, v = (attn.split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return attn.o_proj(attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d))


def gpt_logits(model, ids):
    B, T = ids.shape
    h = model.wte(ids) + model.wpe(np.arange(T))
    for block in model.blocks:
        h, _ = block(h, F.causal_mask(T, T))
    return model.ln_f(h) @ model.wte.weight.transpose(0, 1)


def gpt_num_parameters(config):
    d, f, L = config.d_model, config.d_ff, config.n_layers
    return config.vocab_size * d + config.context_length * d + L * (4 * d * d + 2 * d * f + f + 9 * d) + 2 * d


RIGHT = [
    (exercises.check_topological_sort, topological_sort),
    (exercises.check_unbroadcast, my_unbroadcast),
    (exercises.check_mul_backward, MyMul),
    (exercises.check_central_difference, central_difference),
    (exercises.check_causal_mask, causal_mask),
    (exercises.check_layer_norm, layer_norm),
    (exercises.check_attention, attention),
    (exercises.check_multi_head_attention, multi_head_attention),
    (exercises.check_parameter_count, gpt_num_parameters),
    (exercises.check_gpt_logits, gpt_logits),
    *(pair for lesson in LATER_LESSONS for pair in lesson.RIGHT),
    *(pair for lesson in LATER_LESSONS for pair in getattr(lesson, "SPARE", [])),
]


@pytest.mark.parametrize(("checker", "fn"), RIGHT, ids=[c.__name__ for c, _ in RIGHT])
def test_checker_accepts_a_right_answer(checker, fn, capsys):
    checker(fn)
    assert capsys.readouterr().out.startswith(f"{checker.__name__}: passed")


@pytest.mark.parametrize(("checker", "fn"), RIGHT, ids=[c.__name__ for c, _ in RIGHT])
def test_checker_leaves_the_engine_as_it_found_it(checker, fn):
    tinypft.manual_seed(3)
    state = get_rng().bit_generator.state
    set_fused_kernels(True)
    checker(fn)
    assert get_rng().bit_generator.state == state
    assert fused_kernels_enabled() and tinypft.get_default_dtype() == np.float32


# ----------------------------------------------------------------------------- wrong answers


def recursive_sort(root):
    order, seen = [], set()

    def visit(node):
        if id(node) not in seen:
            seen.add(id(node))
            for p in node._prev:
                visit(p)
            order.append(node)

    visit(root)
    return order


def sort_without_visited_set(root):
    order = []

    def visit(node):
        for p in node._prev:
            visit(p)
        order.append(node)

    visit(root)
    return order


class MulWithoutUnbroadcast(MyMul):
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return g * b, g * a


class MulIgnoringFrozen(MyMul):
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return unbroadcast(g * b, a.shape), unbroadcast(g * a, b.shape)


class MulSwapped(MyMul):
    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        return unbroadcast(g * a, a.shape), unbroadcast(g * b, b.shape)


def forward_difference(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for j in range(x.size):
        step = np.zeros_like(x)
        step.reshape(-1)[j] = eps
        grad.reshape(-1)[j] = (f(x + step) - f(x)) / eps
    return grad


def difference_changing_x(f, x, eps=1e-6):
    x += eps
    return central_difference(f, x, eps)


def unbiased_layer_norm(x, weight, bias, eps=1e-5):
    centered = x - x.mean(axis=-1, keepdims=True)
    var = (centered * centered).sum(axis=-1, keepdims=True) / (x.shape[-1] - 1)
    return centered / (var + eps).sqrt() * weight + bias


def numpy_layer_norm(x, weight, bias, eps=1e-5):
    data = x.data
    normalized = (data - data.mean(-1, keepdims=True)) / np.sqrt(data.var(-1, keepdims=True) + eps)
    return Tensor(normalized * weight.data + bias.data)


def unscaled_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float(np.finfo(scores.dtype).min))
    return F.softmax(scores, axis=-1) @ v


def minus_inf_attention(q, k, v, mask=None):
    scores = (q @ k.transpose(-2, -1)) * (1.0 / np.sqrt(q.shape[-1]))
    if mask is not None:
        scores = scores.masked_fill(~mask, -np.inf)
    with np.errstate(invalid="ignore"):
        return F.softmax(scores, axis=-1) @ v


def without_output_projection(attn, x, mask):
    B, T, d = x.shape
    q, k, v = (attn.split_heads(p(x)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d)


def heads_split_by_reshape(attn, x, mask):
    B, T, d = x.shape
    H, hd = attn.n_heads, attn.head_dim
    q, k, v = (p(x).reshape(B, H, T, hd) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
    return attn.o_proj(attention(q, k, v, mask).permute(0, 2, 1, 3).reshape(B, T, d))


def gpt_logits_without_positions(model, ids):
    h = model.wte(ids)
    for block in model.blocks:
        h, _ = block(h, F.causal_mask(ids.shape[1], ids.shape[1]))
    return model.ln_f(h) @ model.wte.weight.transpose(0, 1)


def gpt_logits_without_mask(model, ids):
    T = ids.shape[1]
    h = model.wte(ids) + model.wpe(np.arange(T))
    for block in model.blocks:
        h, _ = block(h, np.ones((T, T), bool))
    return model.ln_f(h) @ model.wte.weight.transpose(0, 1)


WRONG = [
    (exercises.check_topological_sort, recursive_sort, "chain of 5000 nodes.*RecursionError.*explicit stack"),
    (exercises.check_topological_sort, sort_without_visited_set, "appears more than once.*visited"),
    (exercises.check_topological_sort, lambda root: topological_sort(root)[::-1], "comes before its input"),
    (exercises.check_topological_sort, lambda root: [root], "reachable node.*missing"),
    (exercises.check_unbroadcast, lambda g, shape: g.sum(axis=tuple(range(g.ndim - len(shape)))),
     r"shape \(3, 3\), expected shape \(3, 1\).*keepdims"),
    (exercises.check_unbroadcast, lambda g, shape: Tensor(my_unbroadcast(g, shape)), "returned a Tensor"),
    (exercises.check_mul_backward, MulWithoutUnbroadcast, r"db: got shape \(2, 3, 4\), expected shape \(4,"),
    (exercises.check_mul_backward, MulIgnoringFrozen, "does not need one.*None"),
    (exercises.check_mul_backward, MulSwapped, "da: 12 of 12 values differ.*product rule"),
    (exercises.check_mul_backward, object, "subclass of tinypft.Function"),
    (exercises.check_central_difference, forward_difference, "one-sided difference"),
    (exercises.check_central_difference, difference_changing_x, "x was changed"),
    (exercises.check_central_difference,
     lambda f, x, eps: np.full_like(x, (f(x + eps) - f(x - eps)) / (2 * eps)), "one element at a time"),
    (exercises.check_causal_mask, lambda q, k: np.tril(np.ones((q, k), bool)), "tril of ones.*LAST"),
    (exercises.check_causal_mask, lambda q, k: causal_mask(q, k).astype(int), "expected bool"),
    (exercises.check_causal_mask, lambda q, k: ~causal_mask(q, k), "swapped"),
    (exercises.check_layer_norm, unbiased_layer_norm, "d - 1"),
    (exercises.check_layer_norm, numpy_layer_norm, "not connected to the inputs"),
    (exercises.check_attention, unscaled_attention, "sqrt"),
    (exercises.check_attention, minus_inf_attention, "NaN.*finfo"),
    (exercises.check_attention, lambda q, k, v, mask: attention(q, k, v), "apply the mask"),
    (exercises.check_multi_head_attention, heads_split_by_reshape, "split wrongly"),
    (exercises.check_gpt_logits, gpt_logits_without_positions, "position embeddings"),
    (exercises.check_gpt_logits, gpt_logits_without_mask, "causal mask"),
    (exercises.check_gpt_logits, lambda model, ids: gpt_logits(model, ids).detach(), "not connected"),
    (exercises.check_multi_head_attention, without_output_projection, "output projection"),
    (exercises.check_parameter_count, lambda c: gpt_num_parameters(c) + c.vocab_size * c.d_model, "tied"),
    (exercises.check_parameter_count, lambda c: gpt_num_parameters(c) - c.context_length * c.d_model,
     "left out position embeddings"),
    (exercises.check_parameter_count, lambda c: float(gpt_num_parameters(c)), "expected an int"),
]


WRONG += [wrong for lesson in LATER_LESSONS for wrong in lesson.WRONG]
WRONG_IDS = [f"{checker.__name__}-{i}" for i, (checker, *_) in enumerate(WRONG)]


@pytest.mark.parametrize(("checker", "fn", "message"), WRONG, ids=WRONG_IDS)
def test_checker_explains_a_wrong_answer(checker, fn, message):
    with pytest.raises(AssertionError, match=re.compile(message, re.DOTALL)) as info:
        checker(fn)
    assert str(info.value).startswith(checker.__name__ + ":")


def test_a_crash_in_the_students_code_becomes_a_failure_that_names_the_input():
    def crashing(grad, shape):
        return grad.reshape(shape)

    message = r"fn\(grad of shape \(3, 3, 3\), \(\)\): your function raised ValueError"
    with pytest.raises(AssertionError, match=message):
        exercises.check_unbroadcast(crashing)


@pytest.mark.parametrize(("checker", "fn"), RIGHT, ids=[c.__name__ for c, _ in RIGHT])
def test_an_unfinished_exercise_raises_its_not_implemented_error(checker, fn):
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise: stub")

    class StubMul(Function):
        forward = staticmethod(stub)
        backward = staticmethod(stub)

    with pytest.raises(NotImplementedError, match="Exercise: stub"):
        checker(StubMul if isinstance(fn, type) else stub)


# ----------------------------------------------------------------------------- student versions

CELL = """import numpy as np

def outer(x):
    \"\"\"Docstring.\"\"\"
    y = x + 1  # kept
    ### BEGIN SOLUTION
    z = y * 2
    return z
    ### END SOLUTION


class Op:
    @staticmethod
    def backward(ctx, g):
        ### BEGIN SOLUTION
        return (g,)
        ### END SOLUTION

print("after")"""


def test_strip_solutions_keeps_indentation_and_the_lines_around_each_region():
    text, names = make.strip_solutions(CELL)
    assert names == ["outer", "Op.backward"]
    assert text == CELL.replace(
        "    ### BEGIN SOLUTION\n    z = y * 2\n    return z\n    ### END SOLUTION\n",
        '    raise NotImplementedError("Exercise: outer")\n',
    ).replace(
        "        ### BEGIN SOLUTION\n        return (g,)\n        ### END SOLUTION\n",
        '        raise NotImplementedError("Exercise: Op.backward")\n',
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "no matching"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "no '### BEGIN SOLUTION' before it"),
        ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION\n", "inside"),
    ],
)
def test_unbalanced_markers_are_errors(source, message):
    with pytest.raises(ValueError, match=message):
        make.strip_solutions(source)


@pytest.mark.parametrize("lesson", LATER_LESSONS, ids=[lesson.LESSON for lesson in LATER_LESSONS])
def test_each_lesson_calls_the_checkers_its_answers_exercise(lesson):
    entries = make.list_exercises(LESSONS)[lesson.LESSON]
    called = {checker for _, checkers in entries for checker in checkers}
    assert called == {checker.__name__ for checker, _ in lesson.RIGHT}


def test_lessons_exist_and_each_has_three_checked_exercises():
    assert NOTEBOOKS, "no notebooks in lessons/"
    for notebook, entries in make.list_exercises(LESSONS).items():
        assert len(entries) >= 3, notebook
        for name, checkers in entries:
            assert checkers, f"{notebook}: exercise {name} has no checker cell after it"
            assert all(hasattr(exercises, c) for c in checkers), checkers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_graded_check_cell_has_hidden_tests(path):
    """nbgrader's autograde runs hidden tests that the students' copy does not show: every check cell has
    a block of them, after the visible checker call."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    graded = [cell for cell in cells if cell.get("metadata", {}).get("nbgrader", {}).get("grade")
              and cell["cell_type"] == "code"]
    assert len(graded) >= 3, path.name
    for cell in graded:
        source = "".join(cell["source"])
        grade_id = cell["metadata"]["nbgrader"]["grade_id"]
        assert source.index("exercises.check_") < source.index("### BEGIN HIDDEN TESTS\n"), grade_id
        hidden = source.split("### BEGIN HIDDEN TESTS\n")[1].split("### END HIDDEN TESTS")[0]
        assert "assert " in hidden, f"{path.name}: {grade_id} has no hidden assertion"


def _cell_json(cell: dict) -> str:
    return json.dumps(cell, sort_keys=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_version_keeps_everything_but_the_solutions_and_outputs(path, tmp_path):
    make.make_student_versions(LESSONS, tmp_path)
    source = json.loads(path.read_text(encoding="utf-8"))
    student = json.loads((tmp_path / path.name).read_text(encoding="utf-8"))
    assert "BEGIN SOLUTION" not in (tmp_path / path.name).read_text(encoding="utf-8")
    assert student["nbformat"] == source["nbformat"] and student["nbformat_minor"] == source["nbformat_minor"]
    expected_metadata = {k: v for k, v in source["metadata"].items() if k not in ("widgets", "tinypft")}
    assert {k: v for k, v in student["metadata"].items() if k != "tinypft"} == expected_metadata
    assert "mode" not in student["metadata"].get("tinypft", {})
    assert len(student["cells"]) == len(source["cells"])
    stubs = 0
    for before, after in zip(source["cells"], student["cells"]):
        if before["cell_type"] == "code":
            assert after["outputs"] == [] and after["execution_count"] is None
            before = {**before, "outputs": [], "execution_count": None}
        text = "".join(before["source"])
        if make.HIDDEN.search(text):  # a checker cell with hidden tests: those lines go, the rest stays
            assert "HIDDEN TESTS" not in "".join(after["source"])
            assert "".join(after["source"]) == make.HIDDEN.sub("", text).rstrip("\n")
            assert {**after, "source": None} == {**before, "source": None}
            continue
        if "### BEGIN SOLUTION" not in text:
            assert _cell_json(after) == _cell_json(before)  # identical, byte for byte
            continue
        stripped, names = make.strip_solutions(text)
        assert "".join(after["source"]) == stripped
        assert {**after, "source": None} == {**before, "source": None}
        stubs += len(names)
    assert stubs >= 3
    # the file itself is in nbformat's layout, so a diff against the source shows only the changes
    assert (tmp_path / path.name).read_text(encoding="utf-8") == json.dumps(student, indent=1, sort_keys=True,
                                                                           ensure_ascii=False) + "\n"


def test_make_copies_other_files_and_refuses_to_write_into_the_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    notebook = {"cells": [{"cell_type": "code", "execution_count": 3, "id": "a", "metadata": {},
                           "outputs": [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}],
                           "source": ["def f():\n", "    ### BEGIN SOLUTION\n", "    return 1\n",
                                      "    ### END SOLUTION"]}],
                "metadata": {"tinypft": {"mode": "full"}}, "nbformat": 4, "nbformat_minor": 5}
    make.write_notebook(notebook, src / "lesson.ipynb")
    (src / "README.md").write_text("read me\n")
    (src / ".ipynb_checkpoints").mkdir()
    (src / ".ipynb_checkpoints" / "lesson-checkpoint.ipynb").write_text("{}")
    written = make.make_student_versions(src, tmp_path / "out")
    assert written == [tmp_path / "out" / "lesson.ipynb"]
    assert (tmp_path / "out" / "README.md").read_text() == "read me\n"
    assert not (tmp_path / "out" / ".ipynb_checkpoints").exists()
    student = make.read_notebook(written[0])
    assert student["cells"][0]["source"] == ["def f():\n", '    raise NotImplementedError("Exercise: f")']
    assert student["cells"][0]["outputs"] == [] and "tinypft" not in student["metadata"]
    with pytest.raises(ValueError, match="outside the source folder"):
        make.make_student_versions(src, src / "student")


def test_command_line_make_and_list(tmp_path, capsys):
    assert cli.main(["exercises", "make", str(LESSONS), str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {len(NOTEBOOKS)} student notebook" in out
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    assert cli.main(["exercises", "list", str(LESSONS)]) == 0
    assert "check_topological_sort" in capsys.readouterr().out
    assert cli.main(["exercises"]) == 2
    assert "make" in capsys.readouterr().out


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_student_version_fails_only_at_the_stubs(path, tmp_path):
    """Executed with every error allowed, a student notebook raises nothing but the stubs'
    NotImplementedError, and every checker cell reports one."""
    from tinypft.lessons import run_notebook

    make.make_student_versions(LESSONS, tmp_path)
    names = {name for entry, _ in make.list_exercises(LESSONS)[path.name] for name in entry.split(" + ")}
    notebook = run_notebook(tmp_path / path.name, quick=True, timeout=300, allow_errors=True)
    checker_cells = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        for error in errors:
            assert error.ename == "NotImplementedError", f"cell {index}: {error.ename}: {error.evalue}"
            assert error.evalue.removeprefix("Exercise: ") in names, f"cell {index}: {error.evalue}"
        if make.CHECKER_CALL.search(cell.source):
            checker_cells += 1
            assert errors, f"cell {index} calls a checker but did not fail:\n{cell.source}"
    assert checker_cells >= 3
