"""Safe weights I/O: safetensors for arrays, JSON for everything else, never pickle.

A safetensors file is

    8 bytes      N, the header length (little-endian unsigned 64-bit)
    N bytes      JSON: {name: {"dtype": "F32", "shape": [...], "data_offsets": [start, end]}, ...,
                        "__metadata__": {str: str}}
    the rest     the raw little-endian bytes of every tensor

Loading it only parses JSON and copies bytes, so a file cannot run code (a pickle can). Every
write is atomic: the bytes go to a temporary file in the same directory, which then replaces the
target in one step, so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

if TYPE_CHECKING:
    from .nn import Module

PathLike = str | os.PathLike
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


# ----------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, write, flush, fsync, ``os.replace``.

    On any error the temp file is removed and a previous file at ``path`` is left untouched.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp_name, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_directory(path.parent)  # make the rename itself durable


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry to disk; not possible on every platform (e.g. Windows), so best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def read_json(path: PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- tensors


def save_tensors(
    path: PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Save named arrays (and optional string metadata) as a safetensors file, atomically."""
    metadata_items = (metadata or {}).items()
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata_items):
        raise TypeError("save_tensors: metadata must map str to str (encode other values as JSON strings)")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"save_tensors: {name!r} is a {type(value).__name__}, expected an np.ndarray")
        # safetensors copies raw memory: a strided view (e.g. a transpose) must be made contiguous
        # first (not with np.ascontiguousarray, which turns a 0-d array into shape (1,))
        arrays[name] = value if value.flags.c_contiguous else value.copy(order="C")
    atomic_write_bytes(path, safetensors.numpy.save(arrays, metadata=metadata))


def load_tensors(
    path: PathLike, expected: dict[str, tuple[tuple[int, ...], Any]] | None = None
) -> dict[str, np.ndarray]:
    """Load every array of a safetensors file (no code can run: the format is JSON plus raw bytes).

    ``expected`` maps each name to ``(shape, dtype)`` (dtype ``None`` accepts any); then missing
    and unexpected tensors and wrong shapes or dtypes are reported together in one ValueError.
    A truncated or corrupted file raises a ValueError naming the file.
    """
    data = Path(path).read_bytes()
    try:
        tensors = safetensors.numpy.load(data)
    except SafetensorError as err:
        raise ValueError(f"{path}: not a valid safetensors file ({err})") from None
    except KeyError as err:  # a dtype NumPy has no type for, e.g. bfloat16
        raise ValueError(f"{path}: a tensor has dtype {err.args[0]}, which NumPy cannot represent") from None
    if expected is not None:
        _check_expected(path, tensors, expected)
    return tensors


def _check_expected(path: PathLike, tensors: dict[str, np.ndarray], expected: dict[str, tuple]) -> None:
    problems = [f"missing tensor {name!r}" for name in expected if name not in tensors]
    problems += [f"unexpected tensor {name!r}" for name in tensors if name not in expected]
    for name, (shape, dtype) in expected.items():
        found = tensors.get(name)
        if found is None:
            continue
        if found.shape != tuple(shape):
            problems.append(f"tensor {name!r}: expected shape {tuple(shape)}, found {found.shape}")
        if dtype is not None and found.dtype != np.dtype(dtype):
            problems.append(f"tensor {name!r}: expected dtype {np.dtype(dtype)}, found {found.dtype}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))


def read_metadata(path: PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading only its header."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path}: not a valid safetensors file (shorter than its 8-byte header length)")
        header_len = int.from_bytes(prefix, "little")
        if header_len > os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"{path}: not a valid safetensors file (header of {header_len} bytes > file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a valid safetensors file (header is not JSON: {err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a valid safetensors file (header is not a JSON object)")
    return dict(header.get("__metadata__") or {})


# ----------------------------------------------------------------------------- modules


def save_module(module: Module, directory: PathLike, config: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (the state dict) and ``config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / WEIGHTS_NAME, module.state_dict(), metadata={"format": "np"})
    atomic_write_json(directory / CONFIG_NAME, config)


def load_module_state(module: Module, directory: PathLike, dtype: Any = None) -> None:
    """Load ``directory/model.safetensors`` into ``module`` with strict checking.

    Every parameter must be in the file with its exact shape, and nothing else may be;
    with ``dtype`` every stored tensor must also have that dtype. Values are cast to each
    parameter's dtype (e.g. a float16 file into a float32 model).
    """
    expected = {name: (p.shape, dtype) for name, p in module.named_parameters()}
    module.load_state_dict(load_tensors(Path(directory) / WEIGHTS_NAME, expected), strict=True)
