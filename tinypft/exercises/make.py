"""Student versions of the lesson notebooks: ``tinypft exercises make lessons/ handout/``.

In the lessons, the solution of every exercise sits between two marker lines (the nbgrader style):

    def topological_sort(root):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

A student version replaces each such region, markers included, by one line at the indentation of
the BEGIN marker:

    def topological_sort(root):
        raise NotImplementedError("Exercise: topological_sort")

The exercise is named after the function (or ``Class.method``) that holds the region. Hidden test
lines of a checker cell, between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` (nbgrader's
markers too), are removed with their markers. Outputs,
execution counts and the saved widget state (``metadata.widgets``) are cleared, and the run mode
recorded in ``metadata.tinypft`` is dropped; everything else (other cells, lines outside the
regions, cell ids, the rest of the metadata) is kept as it was.
Notebooks are read and written as JSON in nbformat's layout, so no Jupyter package is needed.
Other files of the source folder (a README, images) are copied unchanged.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from ..serialization import read_json

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HIDDEN = re.compile(  # a region of hidden tests, markers included
    r"^[ \t]*### BEGIN HIDDEN TESTS[ \t]*\n.*?^[ \t]*### END HIDDEN TESTS[ \t]*(?:\n|$)", re.M | re.S
)
CHECKER_CALL = re.compile(r"\bexercises\.(check_\w+)\(")
_DEFINITION = re.compile(r"^(\s*)(?:async\s+)?(?:def|class)\s+(\w+)")


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def exercise_name(lines_before: list[str], indent: str) -> str:
    """The qualified name of the def/class enclosing a region whose BEGIN line has ``indent``."""
    names: list[str] = []
    limit = len(indent)
    for line in reversed(lines_before):
        match = _DEFINITION.match(line)
        if match and len(match.group(1)) < limit:
            names.append(match.group(2))
            limit = len(match.group(1))
            if limit == 0:
                break
    return ".".join(reversed(names)) or "exercise"


def strip_solutions(source: str, where: str = "cell") -> tuple[str, list[str]]:
    """Replace every solution region of a cell's source; return the new source and the exercise names."""
    lines = source.splitlines(keepends=True)
    kept: list[str] = []
    names: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == BEGIN:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == END), None)
            if end is None:
                raise ValueError(f"{where}: '{BEGIN}' on line {i + 1} has no matching '{END}'")
            nested = next((j for j in range(i + 1, end) if lines[j].strip() == BEGIN), None)
            if nested is not None:
                raise ValueError(f"{where}: '{BEGIN}' on line {nested + 1} is inside another solution region")
            indent = _indent(line)
            name = exercise_name(kept, indent)
            newline = "\n" if lines[end].endswith("\n") else ""
            kept.append(f'{indent}raise NotImplementedError("Exercise: {name}"){newline}')
            names.append(name)
            i = end + 1
            continue
        if line.strip() == END:
            raise ValueError(f"{where}: '{END}' on line {i + 1} has no '{BEGIN}' before it")
        kept.append(line)
        i += 1
    return "".join(kept), names


def _source_text(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def student_notebook(notebook: dict[str, Any], where: str = "notebook") -> tuple[dict[str, Any], list[str]]:
    """A student copy of a notebook (parsed JSON) and the names of its exercises, in order."""
    student = json.loads(json.dumps(notebook))  # a deep copy
    names: list[str] = []
    for index, cell in enumerate(student.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        text = _source_text(cell)
        if BEGIN in text or END in text:
            new_text, found = strip_solutions(text, f"{where}, cell {index}")
            names += found
            cell["source"] = (
                new_text.splitlines(keepends=True) if isinstance(cell["source"], list) else new_text
            )
        if HIDDEN.search(text):
            text = HIDDEN.sub("", _source_text(cell)).rstrip("\n")
            cell["source"] = text.splitlines(keepends=True) if isinstance(cell["source"], list) else text
        cell["outputs"] = []
        cell["execution_count"] = None
    student.get("metadata", {}).pop("widgets", None)  # the saved state of progress bars: outputs too
    meta = student.get("metadata", {}).get("tinypft")
    if isinstance(meta, dict):
        meta.pop("mode", None)
        if not meta:
            del student["metadata"]["tinypft"]
    return student, names


def read_notebook(path: str | Path) -> dict[str, Any]:
    """A notebook as parsed JSON; a file that is not JSON is a ValueError naming it."""
    notebook = read_json(path)
    if not isinstance(notebook, dict):
        raise ValueError(f"{path} is not a notebook (its JSON is not an object)")
    return notebook


def write_notebook(notebook: dict[str, Any], path: str | Path) -> None:
    """Write in nbformat's layout (indent 1, sorted keys, UTF-8, final newline)."""
    text = json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    Path(path).write_text(text, encoding="utf-8")


def make_student_versions(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write a student version of every notebook under ``src_dir`` to the same place under ``out_dir``.

    Other files are copied unchanged; hidden files and ``.ipynb_checkpoints`` are skipped. Returns
    the notebooks written. ``out_dir`` may not be ``src_dir`` or lie inside it.
    """
    src, out = Path(src_dir).resolve(), Path(out_dir).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src_dir} is not a folder")
    if out == src or src in out.parents:
        raise ValueError(f"the output folder {out_dir} must lie outside the source folder {src_dir}")
    written: list[Path] = []
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if path.is_dir() or any(part.startswith(".") for part in relative.parts):
            continue
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".ipynb":
            student, _ = student_notebook(read_notebook(path), str(relative))
            write_notebook(student, target)
            written.append(target)
        else:
            shutil.copyfile(path, target)
    return written


def list_exercises(src: str | Path) -> dict[str, list[tuple[str, list[str]]]]:
    """For each notebook of the folder ``src`` (or the one notebook ``src``): its exercises, one per
    solution cell, with the checkers called after it.

    An exercise is named by its regions' names, joined by " + " when a cell holds several (the
    forward and backward of a Function). A path that is neither a notebook nor a folder holding
    notebooks is a FileNotFoundError or a ValueError.
    """
    src = Path(src)
    if src.is_file():
        if src.suffix != ".ipynb":
            raise ValueError(f"{src} is not a notebook (.ipynb)")
        notebooks = [src]
    elif src.is_dir():
        notebooks = sorted(src.glob("*.ipynb"))
        if not notebooks:
            raise ValueError(f"{src} holds no notebook (.ipynb)")
    else:
        raise FileNotFoundError(f"{src} does not exist")
    result: dict[str, list[tuple[str, list[str]]]] = {}
    for path in notebooks:
        entries: list[tuple[str, list[str]]] = []
        for cell in read_notebook(path).get("cells", []):
            if cell.get("cell_type") != "code":
                continue
            text = _source_text(cell)
            if BEGIN in text:
                entries.append((" + ".join(strip_solutions(text, path.name)[1]), []))
            for checker in CHECKER_CALL.findall(text):
                if entries:
                    entries[-1][1].append(checker)
        result[path.name] = entries
    return result


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tinypft exercises``."""
    parser.set_defaults(print_help=parser.print_help)
    actions = parser.add_subparsers(dest="action", metavar="action")
    make = actions.add_parser("make", help="write student versions of the notebooks (solutions removed)")
    make.add_argument("src", help="folder of the solution notebooks, e.g. lessons/")
    make.add_argument("out", help="folder for the student versions (created if needed)")
    show = actions.add_parser("list", help="list the exercises of each notebook and their checkers")
    show.add_argument("src", help="folder of the solution notebooks (e.g. lessons/), or one notebook")


def run(args: argparse.Namespace) -> int:
    """``make`` or ``list``; without an action, print the help and return 2."""
    if args.action is None:
        args.print_help()
        return 2
    if args.action == "make":
        written = make_student_versions(args.src, args.out)
        exercises = list_exercises(args.src)
        for path in written:
            names = [name for name, _ in exercises.get(path.name, [])]
            print(f"{path}: {len(names)} exercise{'' if len(names) == 1 else 's'} ({', '.join(names)})")
        print(f"wrote {len(written)} student notebook{'' if len(written) == 1 else 's'} to {args.out}")
        return 0
    for notebook, entries in list_exercises(args.src).items():
        print(notebook)
        for name, checkers in entries:
            print(f"  {name:<32} {', '.join(checkers) or '(no checker)'}")
    return 0
