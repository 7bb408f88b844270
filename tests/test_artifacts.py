"""What the commands leave on disk: the same command and seed write byte-identical files (but for
``timing.json``, the wall times), an interrupted fine-tuning resumes to exactly the result of an
uninterrupted one, and a folder of several files is replaced as a whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinypft import cli, serialization
from tinypft.data import load_e2e, write_e2e_csv
from tinypft.train import trainer

TIMING = "timing.json"  # the one file two runs of the same command write differently


def files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An E2E folder with the first 60 training MRs: pretraining reads only the training split."""
    folder = tmp_path_factory.mktemp("data")
    write_e2e_csv(folder / "e2e" / "trainset.csv", load_e2e("train")[:60])
    return folder


def pretrain_argv(data_dir: Path, out: str) -> list[str]:
    return ["pretrain", "--size", "tiny", "--steps", "4", "--batch-size", "2", "--dev-windows", "2",
            "--data-dir", str(data_dir), "--out", out, "--no-progress"]


def finetune_argv(checkpoint: Path, *extra: str) -> list[str]:
    return ["finetune", "--method", "prefix", "--prefix-hidden", "16", "--size", "tiny", "--checkpoint",
            str(checkpoint), "--steps", "6", "--eval-size", "3", "--max-new-tokens", "4", "--no-progress",
            "--json", *extra]


def test_the_same_command_writes_the_same_bytes(data_dir, tmp_path, monkeypatch, capsys):
    written = {}
    for name in ("first", "second"):  # the same command line, run in two folders
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert cli.main(pretrain_argv(data_dir, "ckpt")) == 0
        checkpoint = tmp_path / "first" / "ckpt"  # both fine-tune the same checkpoint
        assert cli.main(finetune_argv(checkpoint, "--out", "run")) == 0
        written[name] = files(tmp_path / name)
    capsys.readouterr()
    first, second = written["first"], written["second"]
    assert sorted(first) == sorted(second) == [
        "ckpt/manifest.json", "ckpt/model.safetensors", f"ckpt/{TIMING}",
        "run/adapter/adapter_config.json", "run/adapter/adapter_model.safetensors", "run/result.json",
        f"run/{TIMING}",
    ]
    for path in first:
        if not path.endswith(TIMING):
            assert first[path] == second[path], path
    for path in ("ckpt/manifest.json", "run/result.json"):
        assert "seconds" not in first[path].decode()
    assert json.loads(first["run/timing.json"])["train_seconds"] > 0


def test_an_interrupted_finetune_resumes_to_the_uninterrupted_result(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(pretrain_argv(data_dir, "ckpt")) == 0
    checkpoint = tmp_path / "ckpt"

    assert cli.main(finetune_argv(checkpoint, "--out", "whole", "--state-dir", "state-whole",
                                  "--checkpoint-every", "2")) == 0
    capsys.readouterr()

    real_step, calls = trainer._step, []

    def ctrl_c_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "_step", ctrl_c_at_step_5)
    argv = finetune_argv(checkpoint, "--out", "resumed", "--state-dir", "state", "--checkpoint-every", "2")
    assert cli.main(argv) == 130
    captured = capsys.readouterr()
    assert captured.err == ("tinypft finetune: interrupted; the checkpoint of step 4 is kept in state; "
                            "rerun the same command with --resume\n")
    assert not Path("resumed").exists() and captured.out == ""
    assert cli.main(argv) == 2  # without --resume the earlier run's checkpoints are not overwritten
    assert "--resume" in capsys.readouterr().err

    monkeypatch.setattr(trainer, "_step", real_step)
    assert cli.main(argv + ["--resume"]) == 0
    assert len(calls) == 5  # the resumed run did steps 5 and 6 only (with the real step)
    capsys.readouterr()
    whole, resumed = files(tmp_path / "whole"), files(tmp_path / "resumed")
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json"):
        assert whole[name] == resumed[name], name
    a, b = json.loads(whole["result.json"]), json.loads(resumed["result.json"])
    for record in (a, b):
        del record["hyperparameters"]["train_config"]["checkpoint_dir"]
    assert a == b and a["steps"] == 6


# ----------------------------------------------------------------------------- folders written whole


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with serialization.atomic_directory(out, ("a", "b")) as tmp:
        (tmp / "a").write_text("old a")
        (tmp / "b").write_text("old b")
    with pytest.raises(KeyboardInterrupt), serialization.atomic_directory(out, ("a", "b")) as tmp:
        (tmp / "a").write_text("new a")
        raise KeyboardInterrupt  # between the two files
    assert files(out) == {"a": b"old a", "b": b"old b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left
    with serialization.atomic_directory(out, ("a", "b")) as tmp:
        (tmp / "a").write_text("new a")
    assert files(out) == {"a": b"new a"}


def test_a_folder_holding_other_files_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        with serialization.atomic_directory(tmp_path / "out", ("a",)):
            pytest.fail("the block must not run")
    assert files(tmp_path / "out") == {"notes.txt": b"mine"}


def test_leftovers_of_a_killed_write_are_removed_or_restored(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("kept")
    orphan_dir = tmp_path / ".out.k1ll3d.tmp"  # a kill while the new folder was being written
    orphan_dir.mkdir()
    (orphan_dir / "a").write_text("half")
    orphan_file = tmp_path / ".result.json.x7.tmp"  # a kill inside atomic_write_bytes
    orphan_file.write_text("{")
    serialization.atomic_write_json(tmp_path / "result.json", {"ok": 1})
    assert not orphan_file.exists() and json.loads((tmp_path / "result.json").read_text()) == {"ok": 1}
    out.rename(tmp_path / ".out.previous.tmp")  # a kill between the two renames of a replacement
    with serialization.atomic_directory(out, ("a",)) as tmp:
        assert files(out) == {"a": b"kept"}  # the previous folder is back before anything else
        (tmp / "a").write_text("new")
    assert files(out) == {"a": b"new"} and not orphan_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "result.json"]


def test_a_killed_checkpoint_save_is_cleaned_up_by_the_next(tmp_path):
    from tinypft.train.checkpoints import load_latest_checkpoint, save_checkpoint

    orphan = tmp_path / ".step-00000004.abc.tmp"
    orphan.mkdir(parents=True)
    save_checkpoint(tmp_path, 2, {"w": np.ones(3, np.float32)}, {"x": 1})
    assert not orphan.exists()
    arrays, state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 2 and np.array_equal(arrays["w"], np.ones(3))


def test_a_write_error_names_the_target_not_the_temporary_file(tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "result.json"
    with pytest.raises(OSError) as error:
        serialization.atomic_write_json(target, {})
    assert str(target) in str(error.value) and ".tmp" not in str(error.value)


def test_safetensors_bytes_do_not_depend_on_the_order_of_the_metadata(tmp_path):
    arrays = {"b": np.ones(2, np.float16), "a": np.arange(3, dtype=np.float32)}
    serialization.save_tensors(tmp_path / "x", arrays, metadata={"format": "np", "producer": "p"})
    serialization.save_tensors(tmp_path / "y", arrays, metadata={"producer": "p", "format": "np"})
    assert (tmp_path / "x").read_bytes() == (tmp_path / "y").read_bytes()
    header_length = int.from_bytes((tmp_path / "x").read_bytes()[:8], "little")
    assert header_length % 8 == 0
    loaded = serialization.load_tensors(tmp_path / "x")
    assert all(np.array_equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in arrays.items())
    assert serialization.read_metadata(tmp_path / "x") == {"format": "np", "producer": "p"}


def test_bad_json_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text('{"format": ')
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        serialization.read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=f"{path} is not UTF-8"):
        serialization.read_json(path)


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    status = cli.main(["finetune", "--method", "bitfit", "--size", "tiny", "--steps", "100000",
                       "--out", str(tmp_path / "file" / "run"), "--no-progress"])
    assert status == 2 and "--out" in capsys.readouterr().err  # returns at once: 100000 steps never start
