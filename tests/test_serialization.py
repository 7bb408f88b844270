"""Tests of tinypft.serialization: safetensors round trips, corrupted files, expectations, atomic
writes, no pickle."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from tinypft import serialization
from tinypft.nn import LayerNorm, Linear, Module, Sequential


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2, 2)).astype(np.float16),
        "i64": np.arange(-3, 4, dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float32),
    }


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "t.safetensors"
    serialization.save_tensors(path, _tensors(), metadata={"step": "7"})
    return path


# ----------------------------------------------------------------------------- round trips


def test_round_trip_keeps_values_dtypes_and_metadata(saved: Path):
    loaded = serialization.load_tensors(saved)
    original = _tensors()
    assert set(loaded) == set(original)
    for name, array in original.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name
    assert serialization.read_metadata(saved) == {"step": "7"}


def test_strided_views_are_saved_by_value(tmp_path: Path):
    a = np.arange(12.0).reshape(3, 4)
    path = tmp_path / "views.safetensors"
    serialization.save_tensors(path, {"t": a.T, "every_other": a[:, ::2]})
    loaded = serialization.load_tensors(path)
    assert np.array_equal(loaded["t"], a.T) and np.array_equal(loaded["every_other"], a[:, ::2])


def test_save_rejects_non_string_metadata_and_non_arrays(tmp_path: Path):
    with pytest.raises(TypeError, match="metadata"):
        serialization.save_tensors(tmp_path / "x.safetensors", {"a": np.zeros(1)}, metadata={"step": 7})
    with pytest.raises(TypeError, match="'a'"):
        serialization.save_tensors(tmp_path / "x.safetensors", {"a": [1.0, 2.0]})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("keep", [0, 5, 8, 40, -1])
def test_truncated_file_is_a_value_error_naming_it(saved: Path, keep: int):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:-3])
    with pytest.raises(ValueError, match=f"{saved.name}.*not a valid safetensors file"):
        serialization.load_tensors(saved)


@pytest.mark.parametrize(
    "old, new",
    [
        (b'{"', b'\xff"'),  # not UTF-8
        (b'"shape":[3,4]', b'"shape":[9,4]'),  # size disagrees with the offsets
        (b'"F16"', b'"X16"'),  # unknown dtype
        (b'"data_offsets":[0', b'"data_offsets":[1'),  # offsets that do not tile the data
    ],
)
def test_corrupted_header_is_a_value_error(saved: Path, old: bytes, new: bytes):
    data = saved.read_bytes()
    assert old in data
    saved.write_bytes(data.replace(old, new, 1))
    with pytest.raises(ValueError, match=f"{saved.name}.*not a valid safetensors file"):
        serialization.load_tensors(saved)


def test_wrong_header_length_is_a_value_error(saved: Path):
    data = bytearray(saved.read_bytes())
    data[0] ^= 0x01  # the header length is off by one
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=saved.name):
        serialization.load_tensors(saved)
    data[7] = 0x7F  # an absurd header length
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=saved.name):
        serialization.read_metadata(saved)


def test_expected_names_shapes_and_dtypes(saved: Path):
    expected = {name: (a.shape, a.dtype) for name, a in _tensors().items()}
    assert set(serialization.load_tensors(saved, expected)) == set(expected)

    wrong = dict(expected)
    wrong["f32"] = ((4, 3), np.float32)
    wrong["f64"] = ((5,), np.float32)
    wrong["extra"] = ((1,), None)
    del wrong["i64"]
    with pytest.raises(ValueError) as info:
        serialization.load_tensors(saved, wrong)
    message = str(info.value)
    for part in [
        saved.name,
        "tensor 'f32': expected shape (4, 3), found (3, 4)",
        "tensor 'f64': expected dtype float32, found float64",
        "missing tensor 'extra'",
        "unexpected tensor 'i64'",
    ]:
        assert part in message


# ----------------------------------------------------------------------------- no pickle


class _Exploit:
    """Unpickling this would create a directory: the side effect proves code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_is_rejected_without_running_it(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": _Exploit(marker)}))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        serialization.load_tensors(path)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        serialization.read_metadata(path)
    assert not marker.exists()

    npy = tmp_path / "object.safetensors"
    with open(npy, "wb") as f:
        np.save(f, np.array([_Exploit(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        serialization.load_tensors(npy)
    assert not marker.exists()


def test_serialization_source_never_uses_pickle():
    tree = ast.parse(Path(serialization.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"pickle", "dill", "joblib", "torch", "cloudpickle"}
    calls = {ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    assert not {"np.load", "numpy.load", "pickle.loads", "pickle.load"} & calls


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path):
    path = tmp_path / "out.bin"
    serialization.atomic_write_bytes(path, b"first")
    serialization.atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "weights.safetensors"
    serialization.save_tensors(path, {"a": np.ones(4)})
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        """Writes half of the bytes, then fails like a full disk."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data: bytes) -> None:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            temp_files = [p for p in tmp_path.iterdir() if p != path]
            assert len(temp_files) == 1 and temp_files[0].stat().st_size > 0  # really mid-write
            raise OSError("No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space"):
        serialization.save_tensors(path, {"a": np.zeros(1000)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_before_the_rename_keeps_the_old_file(tmp_path: Path, monkeypatch, failing: str):
    path = tmp_path / "config.json"
    serialization.atomic_write_json(path, {"version": 1})

    def fail(*args, **kwargs):
        raise OSError(f"{failing} failed")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match=failing):
        serialization.atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_sha256_file(tmp_path: Path):
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read chunk
    path.write_bytes(data)
    assert serialization.sha256_file(path) == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- modules


class _Net(Module):
    def __init__(self):
        super().__init__()
        self.body = Sequential(Linear(3, 4), LayerNorm(4))
        self.head = Linear(4, 2)


def test_save_module_and_load_module_state(tmp_path: Path):
    source, target = _Net(), _Net()
    config = {"d": 4, "name": "net"}
    serialization.save_module(source, tmp_path / "ckpt", config)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    assert serialization.read_json(tmp_path / "ckpt" / "config.json") == config
    serialization.load_module_state(target, tmp_path / "ckpt")
    for (name, p), q in zip(source.named_parameters(), target.parameters()):
        assert np.array_equal(p.data, q.data), name


def test_load_module_state_casts_a_float16_file(tmp_path: Path):
    source, target = _Net(), _Net()
    half = {k: v.astype(np.float16) for k, v in source.state_dict().items()}
    serialization.save_tensors(tmp_path / "model.safetensors", half)
    with pytest.raises(ValueError, match="expected dtype float32, found float16"):
        serialization.load_module_state(target, tmp_path, dtype=np.float32)
    serialization.load_module_state(target, tmp_path)
    assert target.head.weight.dtype == np.float32
    assert np.array_equal(target.head.weight.data, half["head.weight"].astype(np.float32))


def test_load_module_state_names_the_bad_tensor(tmp_path: Path):
    state = _Net().state_dict()
    state["head.weight"] = np.zeros((3, 4), dtype=np.float32)
    del state["body.1.bias"]
    serialization.save_tensors(tmp_path / "model.safetensors", state)
    target = _Net()
    before = target.state_dict()
    with pytest.raises(ValueError) as info:
        serialization.load_module_state(target, tmp_path)
    assert "tensor 'head.weight': expected shape (2, 4), found (3, 4)" in str(info.value)
    assert "missing tensor 'body.1.bias'" in str(info.value)
    for name, array in target.state_dict().items():
        assert np.array_equal(array, before[name])
