"""Pretraining: the model learns far more than word frequencies, the manifest describes the weights
exactly, a damaged file or a foreign tokenizer is refused, and the shipped checkpoints are what their
manifests say."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinypft.cli import main
from tinypft.data import Tokenizer, heldout_split, load_e2e, load_tokenizer, write_e2e_csv
from tinypft.engine import get_rng
from tinypft.model import GPTConfig, load_pretrained
from tinypft.model.pretrained import checkpoint_dir
from tinypft.train.pretrain import SIZES, corpus_windows, pretrain, size_config
from tinypft.train.probes import copy_probe_prompts, name_copy_rate
from tinypft.train.trainer import mean_loss, train

pretrain_module = importlib.import_module("tinypft.train.pretrain")  # the module, not the function

STEPS, BATCH, CONTEXT, DEV_WINDOWS = 300, 8, 64, 32
CORPUS_SOURCE = "e2e-train-references-grouped-by-mr"
PROBE_KEYS = {"copy_rate", "known_name_rate", "value_copy_rate", "n", "examples"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 1-layer, d_model 32 model pretrained for 300 steps of 8 x 64 tokens (about 20 s)."""
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=CONTEXT, d_model=32, n_layers=1, n_heads=2)
    out = tmp_path_factory.mktemp("tiny")
    manifest = pretrain(config, out, steps=STEPS, batch_size=BATCH, lr=1e-2, dev_windows=DEV_WINDOWS,
                        progress=False, tokenizer=tok, command="test")
    return out, manifest


def stand_in_e2e(folder: Path, n_mrs: int) -> list:
    """An E2E folder holding only ``trainset.csv``: the first ``n_mrs`` MRs of the shipped training set."""
    examples = load_e2e("train")[:n_mrs]
    write_e2e_csv(folder / "e2e" / "trainset.csv", examples)
    return examples


def test_sizes_and_the_shipping_budget():
    vocab = load_tokenizer().vocab_size
    counts = {size: size_config(size, vocab).num_parameters() for size in SIZES}
    assert 0.07e6 < counts["tiny"] < 0.15e6  # "about 0.1M"
    assert 0.9e6 < counts["small"] < 1.2e6
    assert 4e6 < counts["medium"] < 6e6
    assert 2 * sum(counts.values()) <= 12e6  # the three float16 weight files together


def test_held_out_loss_ends_far_below_the_unigram_entropy(pretrained):
    _, manifest = pretrained
    train_windows, _, _, info = corpus_windows(load_tokenizer(), CONTEXT, DEV_WINDOWS)
    counts = np.bincount(train_windows.windows.ravel())
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # nats: the best loss without any context
    curve = manifest["loss_curve"]
    assert manifest["dev_loss"] < unigram_entropy - 1.5, (manifest["dev_loss"], unigram_entropy)
    assert curve[0][2] > manifest["dev_loss"] and curve[-1][0] == manifest["steps"] <= STEPS
    assert manifest["dev_loss"] == pytest.approx(manifest["dev_loss_float32"], abs=1e-2)  # float16: no harm
    assert manifest["dev_loss_float32"] == min(row[2] for row in curve)  # the best weights are kept
    assert manifest["data"] == info and info["source"] == CORPUS_SOURCE
    assert info["train_mrs"] + info["heldout_mrs"] == len(load_e2e("train"))
    assert info["dev_tokens"] == DEV_WINDOWS * CONTEXT


def test_manifest_round_trip(pretrained):
    out, manifest = pretrained
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["weights_sha256"] == manifest["weights_sha256"] and on_disk["command"] == "test"
    assert on_disk["tokenizer"]["fingerprint"] == load_tokenizer().fingerprint()
    keys = ("config", "data", "seed", "steps", "best_step", "final_train_loss", "dev_loss", "name_copy_rate")
    assert all(key in on_disk for key in keys)
    timing = json.loads((out / "timing.json").read_text())  # wall times: kept out of the manifest
    assert set(timing) == {"seconds", "tokens_per_sec"} and not set(timing) & set(on_disk)
    assert all(manifest[key] == value for key, value in timing.items()) and timing["seconds"] > 0

    rng_before = get_rng().bit_generator.state
    model, loaded = load_pretrained("tiny", out)
    assert get_rng().bit_generator.state == rng_before  # loading draws no random numbers
    assert loaded == on_disk and model.config == GPTConfig.from_dict(manifest["config"])
    assert all(p.dtype == np.float32 for p in model.parameters()) and not model.training
    tok = load_tokenizer()
    _, dev, heldout, _ = corpus_windows(tok, CONTEXT, DEV_WINDOWS)
    assert mean_loss(model, dev, BATCH, tok.pad_id) == pytest.approx(manifest["dev_loss"], abs=1e-5)
    # the copy probe ran on the held-out MRs, with the weights as shipped
    copying = manifest["name_copy_rate"]
    assert set(copying) == PROBE_KEYS and copying["n"] == 200 and len(copying["examples"]) == 3
    assert all(0.0 <= copying[rate] <= 1.0 for rate in ("copy_rate", "known_name_rate", "value_copy_rate"))
    contexts = [context for context, _ in copy_probe_prompts(heldout, 3)]
    assert [shown["context"] for shown in copying["examples"]] == contexts
    assert name_copy_rate(model, tok, heldout, n=200) == copying


def test_corrupted_weights_and_another_tokenizer_are_refused(pretrained, tmp_path: Path):
    out, _ = pretrained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with pytest.raises(ValueError, match="another tokenizer"):
        load_pretrained("tiny", copy, tokenizer=Tokenizer([]))
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or was modified"):
        load_pretrained("tiny", copy)
    with pytest.raises(FileNotFoundError, match="tinypft pretrain --size tiny"):
        load_pretrained("tiny", tmp_path / "missing")


def test_early_stopping_keeps_the_best_weights_and_reads_only_the_training_split(tmp_path: Path):
    """On a stand-in E2E folder with no dev or test file: 5% of its MRs are held out, and the weights
    of the best held-out loss are the ones written."""
    examples = stand_in_e2e(tmp_path, 200)
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=CONTEXT, d_model=16, n_layers=1, n_heads=2)
    dropouts = []

    def trainer(model, *args, **kwargs):
        dropouts.append(model.config.dropout)
        return train(model, *args, **kwargs)

    manifest = pretrain(config, tmp_path / "out", data_dir=str(tmp_path), steps=60, batch_size=8, lr=3e-2,
                        eval_every=5, patience=3, dev_windows=8, progress=False, tokenizer=tok, dropout=0.1,
                        trainer=trainer)
    assert dropouts == [0.1]  # the model trained with the dropout asked for
    corpus, heldout = heldout_split(examples)
    info = manifest["data"]
    assert info["source"] == CORPUS_SOURCE and (info["train_mrs"], info["heldout_mrs"]) == (190, 10)
    assert info["train_references"] == sum(len(ex.refs) for ex in corpus)
    curve = manifest["loss_curve"]
    best = min(curve, key=lambda row: row[2])
    assert manifest["best_step"] == best[0] and manifest["dev_loss_float32"] == best[2]
    assert manifest["dev_loss"] == pytest.approx(best[2], abs=1e-2)  # the kept weights are the best ones
    assert manifest["name_copy_rate"]["n"] == len(copy_probe_prompts(heldout, 200))
    model, _ = load_pretrained("tiny", tmp_path / "out")
    assert model.config.dropout == 0.0  # loaded for use: dropout is the caller's choice


def test_pretrain_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    stand_in_e2e(tmp_path, 100)
    out = tmp_path / "out"
    argv = ["pretrain", "--size", "tiny", "--steps", "2", "--batch-size", "2", "--out", str(out),
            "--dev-windows", "2", "--data-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out loss" in printed and "copy probe (" in printed
    model, manifest = load_pretrained("tiny", out)
    assert manifest["command"].startswith("tinypft pretrain --size tiny --steps 2 ")
    assert "--data " not in manifest["command"] and f"--data-dir {tmp_path}" in manifest["command"]
    assert "--dropout 0.0" in manifest["command"] and "--patience 5" in manifest["command"]
    assert manifest["dtype"] == "float16" and manifest["size"] == "tiny"
    assert manifest["train_config"]["patience"] == 5 and manifest["data"]["heldout_mrs"] == 5
    assert model.config == size_config("tiny", load_tokenizer().vocab_size)
    assert (out / "model.safetensors").stat().st_size < 2 * model.num_parameters() + 10_000


def test_pretrain_command_needs_a_size(capsys: pytest.CaptureFixture):
    assert main(["pretrain"]) == 2
    assert "--size is required" in capsys.readouterr().err


def test_pretrain_command_replaces_a_shipped_checkpoint_only_with_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    shipped = tmp_path / "checkpoints"  # stands in for data/checkpoints, which the test never touches
    monkeypatch.setattr(pretrain_module, "checkpoint_dir", lambda size: shipped / size)
    (shipped / "tiny").mkdir(parents=True)
    (shipped / "tiny" / "manifest.json").write_text("{}")
    stand_in_e2e(tmp_path, 60)
    argv = ["pretrain", "--size", "tiny", "--steps", "1", "--batch-size", "2", "--dev-windows", "2",
            "--data-dir", str(tmp_path), "--no-progress"]
    monkeypatch.chdir(tmp_path)
    for extra in ([], ["--out", str(shipped / "tiny")], ["--out", "checkpoints/tiny"]):  # any spelling
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds the shipped tiny checkpoint" in err and "--force" in err
        assert (shipped / "tiny" / "manifest.json").read_text() == "{}"  # untouched
    assert main(argv + ["--out", str(tmp_path / "elsewhere")]) == 0  # another folder needs no --force
    assert main(argv + ["--force"]) == 0
    _, manifest = load_pretrained("tiny", shipped / "tiny")
    assert manifest["size"] == "tiny" and manifest["steps"] == 1


# --- the shipped checkpoints -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_corpus() -> dict[tuple[int, int], tuple]:
    """corpus_windows results by (context_length, dev windows), computed once."""
    return {}


def windows_of(cache: dict, tokenizer: Tokenizer, context_length: int, n_dev: int, seed: int) -> tuple:
    key = (context_length, n_dev, seed)
    if key not in cache:
        cache[key] = corpus_windows(tokenizer, context_length, n_dev, seed)
    return cache[key]


@pytest.mark.parametrize("size", list(SIZES))
def test_shipped_checkpoint_is_pretrained_on_the_grouped_e2e_references(size, shipped_corpus, monkeypatch):
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    tok = load_tokenizer()
    model, manifest = load_pretrained(size)  # checks the weights' SHA-256 and the tokenizer
    assert manifest["size"] == size and model.config == size_config(size, tok.vocab_size)
    assert manifest["dtype"] == "float16"
    assert manifest["command"].startswith(f"tinypft pretrain --size {size} ")
    context = model.config.context_length
    n_dev = manifest["data"]["dev_tokens"] // context
    _, _, _, info = windows_of(shipped_corpus, tok, context, n_dev, manifest["seed"])
    assert manifest["data"] == info  # the corpus of today's code, on the shipped E2E data
    copying = manifest["name_copy_rate"]
    assert set(copying) == PROBE_KEYS and copying["n"] == 200  # the probe of today's code
    assert manifest["dev_loss"] == pytest.approx(manifest["dev_loss_float32"], abs=1e-2)
    assert manifest["best_step"] <= manifest["steps"]


def test_shipped_tiny_checkpoint_reproduces_its_manifest(shipped_corpus, monkeypatch):
    """The held-out loss and the copy probe of the shipped tiny model, measured again."""
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    tok = load_tokenizer()
    model, manifest = load_pretrained("tiny")
    context = model.config.context_length
    _, dev, heldout, _ = windows_of(shipped_corpus, tok, context, manifest["data"]["dev_tokens"] // context,
                                    manifest["seed"])
    loss = mean_loss(model, dev, manifest["train_config"]["batch_size"], tok.pad_id)
    assert loss == pytest.approx(manifest["dev_loss"], abs=1e-4)
    assert name_copy_rate(model, tok, heldout, n=200) == manifest["name_copy_rate"]


def test_shipped_weights_fit_the_budget():
    files = [checkpoint_dir(size) / "model.safetensors" for size in SIZES]
    assert sum(f.stat().st_size for f in files) <= 12e6
