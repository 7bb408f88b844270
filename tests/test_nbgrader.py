"""A course can grade the lessons with nbgrader: lesson 1 goes through ``generate_assignment`` and
``autograde`` in a fresh course folder; the lesson itself (a right submission) earns every point,
and a submission with one exercise broken earns fewer. Skipped without nbgrader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nbgrader")

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "lessons" / "01_autograd.ipynb"
ASSIGNMENT = "lesson01"


def _nbgrader(course: Path, *args: str) -> None:
    env = {**os.environ, "TINYPFT_QUICK": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course}"],
                            cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def _submit(course: Path, student: str, notebook: dict) -> None:
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    (folder / LESSON.name).write_text(json.dumps(notebook), encoding="utf-8")


def _broken(notebook: dict) -> dict:
    """The lesson with exercise 1.2's body replaced by a wrong one (the gradient returned unsummed)."""
    notebook = json.loads(json.dumps(notebook))
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if source.startswith("def my_unbroadcast"):
            head = source[: source.index("    ### BEGIN SOLUTION")]
            cell["source"] = head + "    return grad\n"
            return notebook
    raise AssertionError("exercise 1.2 (my_unbroadcast) not found")


def _errors(course: Path, student: str) -> str:
    """The errors in a student's autograded notebook, for a failure message."""
    path = course / "autograded" / student / ASSIGNMENT / LESSON.name
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    outputs = [o for cell in cells for o in cell.get("outputs", [])]
    return "\n".join(f"{o['ename']}: {o['evalue']}" for o in outputs if o.get("output_type") == "error")


def test_generate_assignment_then_autograde_a_right_and_a_wrong_submission(tmp_path):
    from nbgrader.api import Gradebook

    course = tmp_path / "course"
    (course / "source" / ASSIGNMENT).mkdir(parents=True)
    lesson = json.loads(LESSON.read_text(encoding="utf-8"))
    (course / "source" / ASSIGNMENT / LESSON.name).write_text(json.dumps(lesson), encoding="utf-8")
    (course / "nbgrader_config.py").write_text("c = get_config()\nc.ExecutePreprocessor.timeout = 300\n",
                                               encoding="utf-8")
    _nbgrader(course, "db", "assignment", "add", ASSIGNMENT)
    for student in ("right", "wrong"):
        _nbgrader(course, "db", "student", "add", student)
    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force")

    released = json.loads((course / "release" / ASSIGNMENT / LESSON.name).read_text(encoding="utf-8"))
    text = json.dumps(released)
    assert "### BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    _submit(course, "right", lesson)
    _submit(course, "wrong", _broken(lesson))
    _nbgrader(course, "autograde", ASSIGNMENT, "--force")

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        right = gradebook.find_submission(ASSIGNMENT, "right")
        wrong = gradebook.find_submission(ASSIGNMENT, "wrong")
        assert right.max_score >= 4
        assert right.score == right.max_score, _errors(course, "right")
        assert wrong.score < wrong.max_score
        notebook = gradebook.find_submission_notebook(LESSON.stem, ASSIGNMENT, "wrong")
        failed = [grade.name for grade in notebook.grades
                  if grade.auto_score is not None and grade.auto_score < grade.max_score]
        assert failed == ["check_unbroadcast"]
