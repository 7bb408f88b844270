"""The lesson notebooks: every one runs without error in quick mode, and the committed ones carry
the outputs of a full run.

Executing notebooks starts Jupyter kernels and takes a while; deselect those tests with
``-m "not notebooks"``. Notebooks are found by globbing ``lessons/``, so a new lesson is tested
as soon as it is added.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tinypft import lessons

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
QUICK_BUDGET_SECONDS = 90


def test_there_are_lessons():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_quick_mode(path, measurements):
    start = time.perf_counter()
    notebook = lessons.run_notebook(path, quick=True, timeout=300)  # raises CellExecutionError on any error
    seconds = time.perf_counter() - start
    measurements.append(f"{path.name}: quick mode ran in {seconds:.1f} s")
    assert notebook.metadata["tinypft"]["mode"] == "quick"
    assert seconds < QUICK_BUDGET_SECONDS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_carries_the_outputs_of_a_full_run(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["metadata"].get("tinypft", {}).get("mode") == "full", (
        f"{path.name} was not run in full mode: python -m tinypft.lessons run --full lessons/"
    )
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    counts = [cell["execution_count"] for cell in code]
    assert counts == list(range(1, len(code) + 1)), "every code cell must run once, top to bottom"
    outputs = [output for cell in code for output in cell["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} has no plot"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_progress_bars_show_their_final_state(path):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    before = json.dumps(notebook, sort_keys=True)
    lessons.final_progress_text(notebook)
    assert json.dumps(notebook, sort_keys=True) == before, f"{path.name}: a progress bar's text is not final"


def test_final_progress_text_rebuilds_the_bar_from_the_widget_state():
    nbformat = pytest.importorskip("nbformat")
    ids = {"box": "b0", "label": "l1", "bar": "p2", "tail": "t3"}
    state = {
        ids["box"]: {"model_name": "HBoxModel",
                     "state": {"children": [f"IPY_MODEL_{ids[k]}" for k in ("label", "bar", "tail")]}},
        ids["label"]: {"model_name": "HTMLModel", "state": {"value": "runs:\u2007100%"}},
        ids["bar"]: {"model_name": "FloatProgressModel", "state": {"value": 3.0, "max": 3.0}},
        ids["tail"]: {"model_name": "HTMLModel", "state": {"value": "\u20073/3\u2007[00:12&lt;00:00]"}},
    }
    view = {"model_id": ids["box"], "version_major": 2, "version_minor": 0}
    output = nbformat.v4.new_output("display_data", data={lessons.WIDGET_VIEW: view,
                                                          "text/plain": "runs:   0%|          | 0/3"})
    cell = nbformat.v4.new_code_cell("", outputs=[output])
    widgets = {lessons.WIDGET_STATE: {"state": state}}
    notebook = nbformat.v4.new_notebook(cells=[cell], metadata={"widgets": widgets})
    assert lessons.final_progress_text(notebook) == 1
    assert cell.outputs[0]["data"]["text/plain"] == "runs: 100%|██████████| 3/3 [00:12<00:00]"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reads_the_quick_flag_and_is_listed_in_the_index(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = "".join("".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert 'QUICK = os.environ.get("TINYPFT_QUICK") == "1"' in code
    assert path.name in (LESSONS / "README.md").read_text(encoding="utf-8")


def _write_probe(path: Path) -> None:
    """A one-cell notebook that prints what the kernel sees."""
    cell = ("import os, matplotlib\n"
            "print(os.environ['TINYPFT_QUICK'], os.getcwd(), matplotlib.get_backend())")
    notebook = {"cells": [{"cell_type": "code", "execution_count": None, "id": "probe", "metadata": {},
                           "outputs": [], "source": cell}],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
                "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook), encoding="utf-8")


@pytest.mark.notebooks
def test_run_command_sets_up_the_kernel_and_writes_only_in_full_mode(tmp_path, capsys):
    probe = tmp_path / "probe.ipynb"
    _write_probe(probe)
    original = probe.read_text(encoding="utf-8")
    assert lessons.main(["run", "--quick", str(tmp_path)]) == 0
    assert probe.read_text(encoding="utf-8") == original
    assert lessons.main(["run", "--full", str(tmp_path)]) == 0
    assert "full mode" in capsys.readouterr().out
    notebook = json.loads(probe.read_text(encoding="utf-8"))
    assert notebook["metadata"]["tinypft"]["mode"] == "full"
    quick_flag, cwd, backend = "".join(notebook["cells"][0]["outputs"][0]["text"]).split()
    assert quick_flag == "0"
    assert Path(cwd).resolve() == tmp_path.resolve()
    assert "inline" in backend
