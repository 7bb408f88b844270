"""Safe weights I/O: safetensors for arrays, JSON for everything else, never pickle.

A safetensors file is

    8 bytes      N, the header length (little-endian unsigned 64-bit)
    N bytes      JSON: {name: {"dtype": "F32", "shape": [...], "data_offsets": [start, end]}, ...,
                        "__metadata__": {str: str}}
    the rest     the raw little-endian bytes of every tensor

Loading it only parses JSON and copies bytes, so a file cannot run code (a pickle can). The
header's keys are written sorted, so the same arrays and metadata always give the same bytes (and
the same SHA-256).

Every write is atomic: the bytes go to a temporary file in the same directory, which then replaces
the target in one step, so a crash leaves either the old file or the new one, never half of one.
A folder of several files is written the same way (``atomic_directory``): into a temporary folder
beside the target, renamed into place once complete. Temporary files and folders left behind by a
killed process (``.<name>.*.tmp``) are removed the next time their target is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
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


def remove_orphans(path: PathLike) -> None:
    """Delete the temporary files and folders (``.<name>.*.tmp``) that writes of ``path`` killed
    before their rename left beside it."""
    path = Path(path)
    with contextlib.suppress(OSError):
        for orphan in path.parent.glob(f".{path.name}.*.tmp"):
            if orphan.is_dir() and not orphan.is_symlink():
                shutil.rmtree(orphan, ignore_errors=True)
            else:
                orphan.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file, write, flush, fsync, ``os.replace``.

    On any error the temp file is removed and a previous file at ``path`` is left untouched; an
    OSError names ``path`` (not the temporary file).
    """
    path = Path(path)
    remove_orphans(path)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise type(err)(err.errno, f"cannot write {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp_name, 0o644)  # mkstemp creates the file readable by its owner only
        os.replace(tmp_name, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if isinstance(err, OSError) and err.errno is not None:
            raise type(err)(err.errno, f"cannot write {path}: {err.strerror}") from None
        raise
    _fsync_directory(path.parent)  # make the rename itself durable


def foreign_entries(path: PathLike, holds: Collection[str]) -> list[str]:
    """The names in the folder ``path`` (if it exists) other than ``holds`` and temporary files."""
    path = Path(path)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir()
                  if p.name not in holds and not (p.name.startswith(".") and p.name.endswith(".tmp")))


@contextlib.contextmanager
def atomic_directory(path: PathLike, holds: Collection[str]) -> Iterator[Path]:
    """Write a folder of several files atomically: ``with atomic_directory(out, names) as tmp:``
    write the files into ``tmp``; when the block ends without an error, ``tmp`` takes the place of
    ``out``. ``holds`` names what the folder may hold: an existing ``out`` holding anything else
    (say, a user's own files) is a ValueError, raised before anything is written.

    ``tmp`` is a fresh folder beside ``out`` (same file system, so the rename is one step). An
    existing ``out`` is first renamed aside and deleted only once the new folder is in place, so a
    kill at any moment leaves the old folder or the new one complete (a folder set aside by a kill
    between the two renames is put back the next time ``out`` is written). On an error or an
    interrupt the temporary folder is deleted and ``out`` is left as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path} is a file, not a folder")
    foreign = foreign_entries(path, holds)
    if foreign:
        raise ValueError(f"{path} holds files this output does not write ({', '.join(foreign[:3])}); "
                         "it is replaced as a whole, so give a new or empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.parent / f".{path.name}.previous.tmp"
    if aside.is_dir() and not path.exists():  # a kill between the two renames below
        aside.rename(path)
    remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private to its owner
        yield tmp
        if path.exists():
            path.rename(aside)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    _fsync_directory(path.parent)


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
    """Parse a UTF-8 JSON file; a file that is not valid JSON is a ValueError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise ValueError(f"{path} is not valid JSON: {err.msg} at {where}") from None


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
    atomic_write_bytes(path, _sorted_header(safetensors.numpy.save(arrays, metadata=metadata)))


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors bytes with the header's keys sorted (safetensors writes the metadata in
    hash order, which changes from one process to the next). The tensors' bytes and their offsets
    (relative to the end of the header) are unchanged; the header is padded with spaces to a
    multiple of 8 bytes, as safetensors pads it."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


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
