"""Training checkpoints: arrays in safetensors, everything else in JSON, each one written atomically.

    checkpoint_dir/
        latest.json                  {"step": 300, "name": "step-00000300"}, replaced last
        step-00000300/
            arrays.safetensors       trainable parameters, optimizer buffers, best parameters
            state.json               step, optimizer scalars, schedule, RNG state, history, ...

A checkpoint is first written to a hidden temporary folder that is renamed into place in one
step, and only then does ``latest.json`` point at it. A crash at any moment therefore leaves the
previous checkpoint intact and referenced; the temporary folders a killed run leaves behind are
deleted by the next save. ``state.json`` records the SHA-256 of the arrays file, so a damaged
checkpoint is detected instead of silently resumed.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..serialization import atomic_write_json, load_tensors, read_json, save_tensors, sha256_file

LATEST = "latest.json"
ARRAYS, STATE = "arrays.safetensors", "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    directory: str | Path, step: int, arrays: dict[str, np.ndarray], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` (arrays + JSON state), point ``latest.json`` at it, and delete all
    but the ``keep`` newest checkpoints. Returns the checkpoint's folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for orphan in directory.glob(".step-*.tmp"):  # left by a run killed while saving
        shutil.rmtree(orphan, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=directory))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private to its owner
        save_tensors(tmp / ARRAYS, arrays)
        atomic_write_json(tmp / STATE, {**state, "step": step, "arrays_sha256": sha256_file(tmp / ARRAYS)})
        final = directory / name
        if final.exists():  # the same step written again (a resumed run passing an old checkpoint)
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(directory / LATEST, {"step": step, "name": name})
    _prune(directory, keep, protect=name)
    return final


def load_latest_checkpoint(directory: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """``(arrays, state)`` of the checkpoint ``latest.json`` names, or None if there is none.

    Raises ValueError (naming the file) if ``latest.json`` or ``state.json`` is unreadable or
    incomplete, or if the arrays file does not match the SHA-256 its state recorded.
    """
    directory = Path(directory)
    if not (directory / LATEST).is_file():
        return None
    latest = read_json(directory / LATEST)
    name = latest.get("name") if isinstance(latest, dict) else None
    if not isinstance(name, str) or not _STEP_DIR.match(name):
        raise ValueError(f"{directory / LATEST} does not name a checkpoint folder (step-...)")
    folder = directory / name
    if not (folder / STATE).is_file() or not (folder / ARRAYS).is_file():
        raise ValueError(f"{directory / LATEST} names {name}, but {folder} lacks {STATE} or {ARRAYS}")
    state = read_json(folder / STATE)
    if not isinstance(state, dict) or "arrays_sha256" not in state:
        raise ValueError(f"{folder / STATE} is not a checkpoint's state (no arrays_sha256)")
    digest = sha256_file(folder / ARRAYS)
    if digest != state["arrays_sha256"]:
        raise ValueError(
            f"checkpoint {folder} is damaged: {ARRAYS} has SHA-256 {digest[:12]}..., "
            f"{STATE} expects {state['arrays_sha256'][:12]}..."
        )
    return load_tensors(folder / ARRAYS), state


def _prune(directory: Path, keep: int, protect: str) -> None:
    """Delete the oldest ``step-*`` folders beyond the newest ``keep`` (never ``protect``)."""
    steps = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    )
    for _, path in steps[: max(0, len(steps) - max(keep, 1))]:
        if path.name != protect:
            shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- optimizer state


def split_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Split ``Optimizer.state_dict()`` into arrays (``optim.{i}.{buffer}``) and a JSON-able rest."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for i, buffers in state_dict["state"].items():
        scalars[str(i)] = {}
        for name, value in buffers.items():
            if isinstance(value, np.ndarray):
                arrays[f"optim.{i}.{name}"] = value
            else:
                scalars[str(i)][name] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}  # JSON has no tuples
        for group in state_dict["param_groups"]
    ]
    return arrays, {"state": scalars, "param_groups": groups}


def join_optimizer_state(arrays: dict[str, np.ndarray], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``split_optimizer_state``: a dict ``Optimizer.load_state_dict`` accepts."""
    state = {i: dict(scalars) for i, scalars in rest["state"].items()}
    for key, value in arrays.items():
        if key.startswith("optim."):
            _, i, name = key.split(".", 2)
            state.setdefault(i, {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}
