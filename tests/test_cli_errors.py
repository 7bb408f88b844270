"""Bad input at the command line: every misuse is refused with one line on stderr that names the
option and what it accepts, exit status 2, and no traceback; Ctrl-C ends a command with one line
saying what was kept, exit status 130.

Each case runs through ``tinypft.cli.main`` in-process (a few through ``python -m tinypft``). The
folders a case needs are made by ``setup`` functions in ``tmp_path``; ``{tmp}`` in an argument is
that folder. None of these cases reaches a training step: the checks come first.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tinypft import cli
from tinypft.data import load_e2e, write_e2e_csv
from tinypft.model.pretrained import checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = checkpoint_dir("tiny")


# ----------------------------------------------------------------------------- folders the cases use


def a_file(tmp: Path) -> None:
    (tmp / "file").write_text("not a folder")


def a_foreign_folder(tmp: Path) -> None:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("a user's own file")


def an_earlier_run(tmp: Path) -> None:
    (tmp / "state").mkdir()
    (tmp / "state" / "latest.json").write_text('{"step": 3, "name": "step-00000003"}')


def a_broken_latest(tmp: Path) -> None:
    (tmp / "state").mkdir()
    (tmp / "state" / "latest.json").write_text('{"step": 3, "name": ')


def a_latest_without_a_checkpoint(tmp: Path) -> None:
    (tmp / "state").mkdir()
    (tmp / "state" / "latest.json").write_text('{"step": 3, "name": "step-00000003"}')


def a_broken_manifest(tmp: Path) -> None:
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / "manifest.json").write_text('{"format": "tinypft-pretrained", ')


def an_incomplete_manifest(tmp: Path) -> None:
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / "manifest.json").write_text('{"format": "tinypft-pretrained"}')
    (tmp / "ckpt" / "model.safetensors").write_bytes((SHIPPED / "model.safetensors").read_bytes())


def a_latin1_csv(tmp: Path) -> None:
    (tmp / "e2e").mkdir()
    text = 'mr,ref\n"name[Caf\u00e9 Latin], eatType[pub]",Caf\u00e9 Latin is a pub.\n'
    (tmp / "e2e" / "trainset.csv").write_bytes(text.encode("latin-1"))


def a_bad_gzip(tmp: Path) -> None:
    (tmp / "e2e").mkdir()
    (tmp / "e2e" / "trainset.csv.gz").write_bytes(gzip.compress(b"mr,ref\n")[:12])


def notebooks(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    (tmp / "broken.ipynb").write_text("{ not json")
    (tmp / "notes.txt").write_text("not a notebook")


def nothing(tmp: Path) -> None:
    pass


FINETUNE = ["finetune", "--method", "bitfit", "--size", "tiny", "--no-progress"]
PREFIX = ["finetune", "--method", "prefix", "--size", "tiny", "--no-progress"]
PRETRAIN = ["pretrain", "--size", "tiny", "--no-progress"]
PRETRAIN_O = PRETRAIN + ["--out", "{tmp}/o"]  # into a new folder
RESUME = ["--steps", "2", "--state-dir", "{tmp}/state", "--resume"]

# (kind, setup, arguments, words the one line must contain)
CASES: list[tuple[str, Callable[[Path], None], list[str], tuple[str, ...]]] = [
    # --- finetune: numbers out of range or not numbers
    ("number", nothing, FINETUNE + ["--steps", "0"], ("--steps", "positive integer")),
    ("number", nothing, FINETUNE + ["--steps", "-3"], ("--steps", "positive integer")),
    ("number", nothing, FINETUNE + ["--steps", "1.5"], ("--steps", "positive integer")),
    ("number", nothing, FINETUNE + ["--steps", "many"], ("--steps", "positive integer")),
    ("number", nothing, FINETUNE + ["--epochs", "0"], ("--epochs", "positive integer")),
    ("number", nothing, FINETUNE + ["--batch-size", "0"], ("--batch-size", "positive integer")),
    ("number", nothing, FINETUNE + ["--lr", "0"], ("--lr", "finite number > 0")),
    ("number", nothing, FINETUNE + ["--lr=-1e-3"], ("--lr", "finite number > 0")),
    ("number", nothing, FINETUNE + ["--lr", "nan"], ("--lr", "finite number > 0")),
    ("number", nothing, FINETUNE + ["--lr", "inf"], ("--lr", "finite number > 0")),
    ("number", nothing, FINETUNE + ["--lr", "fast"], ("--lr", "finite number > 0")),
    ("number", nothing, FINETUNE + ["--sweep-lr", ","], ("--sweep-lr", "comma-separated")),
    ("number", nothing, FINETUNE + ["--sweep-lr", "1e-3,nan"], ("--sweep-lr", "> 0")),
    ("number", nothing, FINETUNE + ["--sweep-lr", "1e-3,0"], ("--sweep-lr", "> 0")),
    ("number", nothing, PREFIX + ["--prefix-length", "0"], ("--prefix-length", "positive integer")),
    ("number", nothing, PREFIX + ["--prefix-hidden", "0"], ("--prefix-hidden", "positive integer")),
    ("number", nothing, FINETUNE + ["--train-size", "0"], ("--train-size", "positive integer")),
    ("number", nothing, FINETUNE + ["--eval-size", "0"], ("--eval-size", "positive integer")),
    ("number", nothing, FINETUNE + ["--max-new-tokens", "0"], ("--max-new-tokens", "positive integer")),
    ("number", nothing, FINETUNE + ["--seed", "-1"], ("--seed", "integer >= 0")),
    ("number", nothing, FINETUNE + ["--threads", "0"], ("--threads", "positive integer")),
    ("number", nothing, FINETUNE + ["--checkpoint-every", "0"], ("--checkpoint-every", "positive integer")),
    # --- finetune: choices and options that do not go together
    ("choice", nothing, ["finetune", "--method", "lora"], ("--method", "invalid choice", "bitfit")),
    ("choice", nothing, ["finetune", "--size", "tiny"], ("required", "--method")),
    ("choice", nothing, FINETUNE + ["--task", "summaries"], ("--task", "invalid choice", "e2e")),
    ("choice", nothing, FINETUNE + ["--size", "huge"], ("--size", "invalid choice", "tiny")),
    ("choice", nothing, FINETUNE + ["--source", "xml"], ("--source", "invalid choice", "table")),
    ("choice", nothing, PREFIX + ["--mode", "suffix"], ("--mode", "invalid choice", "infix")),
    ("choice", nothing, FINETUNE + ["--no-such-flag"], ("unrecognized arguments", "--no-such-flag")),
    ("combination", nothing, FINETUNE + ["--prefix-length", "5"], ("--prefix-length", "prefix and prompt")),
    ("combination", nothing, FINETUNE + ["--mode", "infix"], ("--mode", "prefix method")),
    ("combination", nothing, FINETUNE + ["--resume"], ("--resume", "--state-dir")),
    ("combination", nothing, FINETUNE + ["--checkpoint-every", "5"], ("--checkpoint-every", "--state-dir")),
    ("combination", nothing, FINETUNE + ["--sweep-lr", "1e-3,3e-3", "--state-dir", "{tmp}/s"],
     ("--state-dir", "--sweep-lr")),
    ("combination", nothing, FINETUNE + ["--sweep-lr", "1e-3,3e-3", "--lr", "1e-3"], ("--lr", "--sweep-lr")),
    ("combination", nothing, PREFIX + ["--prefix-length", "127"], ("--prefix-length 127", "smaller")),
    # --- finetune: folders
    ("path", a_file, FINETUNE + ["--out", "{tmp}/file/run"], ("--out", "cannot write")),
    ("path", a_file, FINETUNE + ["--out", "{tmp}/file"], ("--out", "is a file")),
    ("path", a_foreign_folder, FINETUNE + ["--out", "{tmp}/mine"], ("--out", "notes.txt", "new or empty")),
    ("path", nothing, FINETUNE + ["--out", ""], ("--out", "file or folder name")),
    ("path", nothing, FINETUNE + ["--out", str(SHIPPED)], ("--out", "shipped")),
    ("path", nothing, FINETUNE + ["--out", str(SHIPPED.parent)], ("--out", "shipped")),
    ("path", a_file, FINETUNE + ["--state-dir", "{tmp}/file/state"], ("--state-dir", "cannot write")),
    ("path", a_file, FINETUNE + ["--state-dir", "{tmp}/file"], ("--state-dir", "is a file")),
    ("path", nothing, FINETUNE + ["--state-dir", str(SHIPPED / "state")], ("--state-dir", "shipped")),
    ("path", an_earlier_run, FINETUNE + ["--state-dir", "{tmp}/state"],
     ("--state-dir", "earlier run", "--resume")),
    ("path", nothing, FINETUNE + ["--out", "{tmp}/run", "--state-dir", "{tmp}/run/state"],
     ("--state-dir", "outside --out")),
    ("path", nothing, FINETUNE + ["--checkpoint", "{tmp}/none"], ("manifest.json", "none")),
    # --- finetune: damaged files
    ("file", a_broken_manifest, FINETUNE + ["--checkpoint", "{tmp}/ckpt"],
     ("ckpt/manifest.json", "not valid JSON")),
    ("file", an_incomplete_manifest, FINETUNE + ["--checkpoint", "{tmp}/ckpt"],
     ("ckpt/manifest.json", "not a checkpoint manifest", "weights_sha256")),
    ("file", a_broken_latest, FINETUNE + RESUME, ("state/latest.json", "not valid JSON")),
    ("file", a_latest_without_a_checkpoint, FINETUNE + RESUME, ("latest.json", "step-00000003", "lacks")),
    # --- pretrain
    ("choice", nothing, ["pretrain", "--no-progress"], ("--size is required", "tiny")),
    ("choice", nothing, ["pretrain", "--size", "huge"], ("--size", "invalid choice", "medium")),
    ("choice", nothing, PRETRAIN + ["--dtype", "bfloat16"], ("--dtype", "invalid choice", "float16")),
    ("number", nothing, PRETRAIN + ["--steps", "0"], ("--steps", "positive integer")),
    ("number", nothing, PRETRAIN + ["--batch-size", "0"], ("--batch-size", "positive integer")),
    ("number", nothing, PRETRAIN + ["--lr", "0"], ("--lr", "finite number > 0")),
    ("number", nothing, PRETRAIN + ["--lr", "nan"], ("--lr", "finite number > 0")),
    ("number", nothing, PRETRAIN + ["--eval-every", "-1"], ("--eval-every", "positive integer")),
    ("number", nothing, PRETRAIN + ["--eval-every", "0"], ("--eval-every", "positive integer")),
    ("number", nothing, PRETRAIN + ["--dev-windows", "0"], ("--dev-windows", "positive integer")),
    ("number", nothing, PRETRAIN + ["--patience", "0"], ("--patience", "positive integer")),
    ("number", nothing, PRETRAIN + ["--dropout", "1"], ("--dropout", "[0, 1)")),
    ("number", nothing, PRETRAIN + ["--dropout", "-0.1"], ("--dropout", "[0, 1)")),
    ("number", nothing, PRETRAIN + ["--seed", "-1"], ("--seed", "integer >= 0")),
    ("number", nothing, PRETRAIN + ["--threads", "0"], ("--threads", "positive integer")),
    ("combination", nothing, PRETRAIN_O + ["--resume"], ("--resume", "--state-dir")),
    ("path", a_file, PRETRAIN + ["--out", "{tmp}/file/out"], ("--out", "cannot write")),
    ("path", a_file, PRETRAIN + ["--out", "{tmp}/file"], ("--out", "is a file")),
    ("path", a_foreign_folder, PRETRAIN + ["--out", "{tmp}/mine"], ("--out", "notes.txt")),
    ("path", nothing, PRETRAIN + ["--out", str(checkpoint_dir("small"))], ("--out", "shipped")),
    ("path", nothing, PRETRAIN + ["--out", str(SHIPPED.parent)], ("--out", "shipped")),
    ("path", nothing, PRETRAIN + ["--out", str(SHIPPED.parents[1])], ("--out", "shipped")),
    ("path", nothing, PRETRAIN, ("holds the shipped tiny checkpoint", "--force")),
    ("path", nothing, PRETRAIN_O + ["--state-dir", str(SHIPPED)], ("--state-dir", "shipped")),
    ("path", a_file, PRETRAIN_O + ["--state-dir", "{tmp}/file/s"], ("--state-dir", "cannot write")),
    ("path", an_earlier_run, PRETRAIN_O + ["--state-dir", "{tmp}/state"], ("earlier run",)),
    ("path", nothing, PRETRAIN_O + ["--state-dir", "{tmp}/o/state"], ("outside --out",)),
    ("path", nothing, PRETRAIN_O + ["--data-dir", "{tmp}/none"], ("{tmp}/none", "does not exist")),
    ("file", a_latin1_csv, PRETRAIN_O + ["--data-dir", "{tmp}"], ("{tmp}/e2e/trainset.csv", "not UTF-8")),
    ("file", a_bad_gzip, PRETRAIN_O + ["--data-dir", "{tmp}"],
     ("{tmp}/e2e/trainset.csv.gz", "cannot be read")),
    # --- showdown, findings, scale, bench
    ("number", nothing, ["showdown", "--seeds", "0"], ("--seeds", "positive integer")),
    ("number", nothing, ["showdown", "--jobs", "0"], ("--jobs", "positive integer")),
    ("number", nothing, ["showdown", "--threads", "-2"], ("--threads", "positive integer")),
    ("choice", nothing, ["showdown", "--size", "huge"], ("--size", "invalid choice")),
    ("path", a_file, ["showdown", "--out", "{tmp}/file/s"], ("--out", "cannot write")),
    ("path", nothing, ["showdown", "--out", str(SHIPPED)], ("--out", "shipped")),
    ("number", nothing, ["findings", "--seeds", "0,x"], ("--seeds", "integers >= 0")),
    ("number", nothing, ["findings", "--seeds", "-1"], ("--seeds", "integers >= 0")),
    ("number", nothing, ["findings", "--seeds", ""], ("--seeds", "integers >= 0")),
    ("number", nothing, ["findings", "--threads", "0"], ("--threads", "positive integer")),
    ("choice", nothing, ["findings", "--only", "nosuch"], ("--only", "nosuch", "bitfit")),
    ("choice", nothing, ["findings", "--size", "huge"], ("--size", "invalid choice")),
    ("path", a_file, ["findings", "--out", "{tmp}/file/f"], ("--out", "cannot write")),
    ("path", nothing, ["findings", "--out", "{tmp}/o", "--cache", "{tmp}"], ("--cache", "is a folder")),
    ("path", a_file, ["findings", "--out", "{tmp}/o", "--cache", "{tmp}/file/c.json"],
     ("--cache", "is a file")),
    ("number", nothing, ["scale", "--threads", "0"], ("--threads", "positive integer")),
    ("choice", nothing, ["scale", "--engine", "jax"], ("--engine", "invalid choice", "torch")),
    ("choice", nothing, ["scale", "--size", "huge"], ("--size", "invalid choice")),
    ("path", a_file, ["scale", "--engine", "tinypft", "--runs", "{tmp}/file/r"], ("--runs", "cannot write")),
    ("path", a_file, ["scale", "--engine", "tinypft", "--runs", "{tmp}/r", "--out", "{tmp}/file"],
     ("--out", "is a file")),
    ("number", nothing, ["bench", "--steps", "0"], ("--steps", "positive integer")),
    ("number", nothing, ["bench", "--threads", "0"], ("--threads", "positive integer")),
    ("number", nothing, ["bench", "--warmup", "-1"], ("--warmup", "integer >= 0")),
    ("number", nothing, ["bench", "--new-tokens", "0"], ("--new-tokens", "positive integer")),
    # --- exercises, selftest, the dispatcher
    ("path", notebooks, ["exercises", "list", "{tmp}/notes.txt"], ("notes.txt", "not a notebook")),
    ("path", notebooks, ["exercises", "list", "{tmp}/empty"], ("empty", "no notebook")),
    ("path", nothing, ["exercises", "list", "{tmp}/none"], ("none", "does not exist")),
    ("file", notebooks, ["exercises", "list", "{tmp}/broken.ipynb"], ("broken.ipynb", "not valid JSON")),
    ("path", nothing, ["exercises", "make", "{tmp}/none", "{tmp}/out"], ("none", "not a folder")),
    ("choice", nothing, ["exercises", "grade"], ("invalid choice", "make", "list")),
    ("number", nothing, ["selftest", "--seed", "x"], ("--seed", "invalid int")),
    ("choice", nothing, ["train"], ("invalid choice", "finetune")),
]


@pytest.mark.parametrize(("kind", "setup", "argv", "words"), CASES,
                         ids=[" ".join(case[2][:1] + case[2][-2:]) for case in CASES])
def test_bad_input_is_one_line_and_exit_status_2(kind, setup, argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders (runs/...) land in tmp_path
    monkeypatch.delenv("TINYPFT_QUICK", raising=False)
    setup(tmp_path)
    before = sorted(p.name for p in SHIPPED.iterdir())
    status = cli.main([arg.replace("{tmp}", str(tmp_path)) for arg in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert sorted(p.name for p in SHIPPED.iterdir()) == before  # the shipped checkpoint is untouched


def test_the_table_covers_every_command_and_every_kind_of_bad_input():
    commands = {argv[0] for _, _, argv, _ in CASES}
    assert set(cli.COMMANDS) <= commands
    kinds = {kind for kind, *_ in CASES}
    assert kinds == {"number", "choice", "combination", "path", "file"}


@pytest.mark.parametrize("argv", [FINETUNE + ["--steps", "0"], PRETRAIN + ["--lr", "nan"]])
def test_a_subprocess_prints_one_line_and_no_traceback(argv):
    result = subprocess.run([sys.executable, "-m", "tinypft", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"tinypft {argv[0]}: ")


def test_a_training_failure_is_one_line(tmp_path, capsys, monkeypatch):
    from tinypft.train import trainer

    def diverge(*args, **kwargs):
        raise FloatingPointError("train: loss nan at step 1; lower the lr or check the data")

    monkeypatch.setattr(trainer, "_step", diverge)
    status = cli.main(FINETUNE + ["--steps", "2", "--eval-size", "2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert err == "tinypft finetune: train: loss nan at step 1; lower the lr or check the data\n"
    assert not (tmp_path / "run").exists()  # nothing half-written


# ----------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_is_one_line_and_exit_status_130(monkeypatch, capsys):
    from tinypft.engine import selftest

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(selftest, "run", interrupt)
    assert cli.main(["selftest"]) == 130
    captured = capsys.readouterr()
    assert captured.err == "tinypft selftest: interrupted; nothing was kept\n"


def test_ctrl_c_in_pretrain_says_what_was_kept(tmp_path, monkeypatch, capsys):
    from tinypft.train import trainer

    write_e2e_csv(tmp_path / "data" / "e2e" / "trainset.csv", load_e2e("train")[:60])
    real_step, calls = trainer._step, []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "_step", interrupted_step)
    argv = PRETRAIN + ["--steps", "4", "--batch-size", "2", "--dev-windows", "2", "--eval-every", "2",
                       "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                       "--state-dir", str(tmp_path / "state")]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == ("tinypft pretrain: interrupted; --out was not written; the checkpoint of step 2 is kept "
                   f"in {tmp_path / 'state'}; rerun the same command with --resume\n")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(trainer, "_step", real_step)
    assert cli.main(argv + ["--resume"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
