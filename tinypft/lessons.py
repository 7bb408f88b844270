"""Run the lesson notebooks from the command line or from tests.

    python -m tinypft.lessons run --full lessons/     # execute every notebook, write the outputs in place
    python -m tinypft.lessons run --quick lessons/    # execute on a small budget, check only (writes nothing)

Each notebook runs in a fresh ``python3`` kernel whose working directory is the notebook's folder,
with ``TINYPFT_QUICK`` set to ``1`` (quick) or ``0`` (full) and matplotlib's inline backend. The
kernel imports this copy of tinypft (its folder goes first on ``PYTHONPATH``). BLAS runs on one
thread unless ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is set: the
lessons' matrices are small, and on a busy machine extra BLAS threads mostly wait for each other.

A full run records ``metadata.tinypft.mode = "full"`` in the notebook, which the tests use to
check that the committed notebooks carry the outputs of a full run. A progress bar (``tqdm.auto``)
is a widget, whose plain-text fallback (what a viewer without widgets, GitHub's among them, shows)
is the bar's first state, "0%"; the runner rewrites each fallback to the bar's final state.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

QUICK_ENV = "TINYPFT_QUICK"
METADATA_KEY = "tinypft"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def notebook_paths(paths: Iterable[str | Path]) -> list[Path]:
    """The notebooks named by ``paths``: files as given, folders expanded to their ``*.ipynb`` (sorted)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.glob("*.ipynb") if not p.name.startswith("."))
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a notebook nor a folder")
    return found


def kernel_env(quick: bool) -> dict[str, str]:
    """The environment of the kernel: the current one plus the lesson settings."""
    env = dict(os.environ)
    env[QUICK_ENV] = "1" if quick else "0"
    env["MPLBACKEND"] = INLINE_BACKEND
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    if not any(var in env for var in BLAS_THREAD_VARIABLES):
        for var in BLAS_THREAD_VARIABLES:
            env[var] = "1"
    return env


def run_notebook(path: str | Path, quick: bool, timeout: int = 600, allow_errors: bool = False) -> Any:
    """Execute the notebook at ``path`` and return it (an ``nbformat.NotebookNode``) with its outputs.

    ``timeout`` is the limit in seconds for each cell. A failing cell raises
    ``nbclient.exceptions.CellExecutionError`` unless ``allow_errors`` is True, in which case the
    error is recorded in the cell's outputs and execution goes on. Nothing is written to disk.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("running notebooks needs nbclient and nbformat: pip install -e '.[dev]'") from exc
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        allow_errors=allow_errors,
        record_timing=False,
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    client.execute(env=kernel_env(quick))
    final_progress_text(notebook)
    notebook.metadata.setdefault(METADATA_KEY, {})["mode"] = "quick" if quick else "full"
    return notebook


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def final_progress_text(notebook: Any) -> int:
    """Rewrite the plain-text fallback of every tqdm widget in ``notebook`` to the bar's final state.

    tqdm's notebook bar is an ``HBox`` of three widgets: an ``HTML`` label ("runs: 100%"), a
    ``FloatProgress`` (value, max) and an ``HTML`` tail (" 3/3 [00:12<00:00, 4.1s/it]"). Their final
    states are in the notebook's widget metadata; the text is rebuilt from them as tqdm prints it.
    Returns how many outputs were rewritten.
    """
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    rewritten = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            box = state.get(view["model_id"]) if view else None
            if box is None or box.get("model_name") != "HBoxModel":
                continue
            parts = [state.get(child.removeprefix("IPY_MODEL_"), {}) for child in box["state"]["children"]]
            if len(parts) != 3 or parts[1].get("model_name") != "FloatProgressModel":
                continue
            bar = parts[1]["state"]
            filled = round(10 * bar.get("value", 0) / bar["max"]) if bar.get("max") else 0
            label, tail = (html.unescape(p["state"].get("value", "")).replace("\u2007", " ")  # figure space
                           for p in (parts[0], parts[2]))
            output["data"]["text/plain"] = f"{label}|{'█' * filled}{' ' * (10 - filled)}|{tail}"
            rewritten += 1
    return rewritten


def run_lessons(paths: Sequence[str | Path], quick: bool, timeout: int = 600) -> list[tuple[Path, float]]:
    """Run each notebook; in full mode write it back in place. Returns (path, seconds) per notebook."""
    import nbformat

    times = []
    for path in notebook_paths(paths):
        start = time.perf_counter()
        notebook = run_notebook(path, quick=quick, timeout=timeout)
        seconds = time.perf_counter() - start
        if not quick:
            nbformat.write(notebook, path)
        times.append((path, seconds))
        written = "" if quick else ", outputs written"
        print(f"{path}: {'quick' if quick else 'full'} mode, {seconds:.1f} s{written}")
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinypft.lessons", description="Run the notebooks.")
    actions = parser.add_subparsers(dest="action", metavar="action", required=True)
    run = actions.add_parser("run", help="execute notebooks (full mode writes their outputs in place)")
    mode = run.add_mutually_exclusive_group(required=True)
    mode.add_argument("--full", action="store_true", help="full budget; write the outputs into the notebooks")
    mode.add_argument("--quick", action="store_true", help="small budget (TINYPFT_QUICK=1); write nothing")
    run.add_argument("--timeout", type=int, default=600, help="limit per cell in seconds (default 600)")
    run.add_argument("paths", nargs="+", help="notebooks, or folders of notebooks (e.g. lessons/)")
    args = parser.parse_args(argv)
    run_lessons(args.paths, quick=args.quick, timeout=args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
