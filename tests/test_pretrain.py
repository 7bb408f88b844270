"""Pretraining: the model learns far more than word frequencies, the manifest describes the weights
exactly, and a damaged file or a foreign tokenizer is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinypft.cli import main
from tinypft.data import Tokenizer, load_synth_e2e, load_tokenizer, write_e2e_csv
from tinypft.engine import get_rng
from tinypft.model import GPTConfig
from tinypft.train.pretrain import SIZES, corpus_windows, load_pretrained, pretrain, size_config
from tinypft.train.trainer import mean_loss

STEPS, BATCH, CONTEXT, DEV_WINDOWS = 300, 8, 64, 32


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 1-layer, d_model 32 model pretrained for 300 steps of 8 x 64 tokens (a few seconds)."""
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=CONTEXT, d_model=32, n_layers=1, n_heads=2)
    out = tmp_path_factory.mktemp("tiny")
    manifest = pretrain(config, out, steps=STEPS, batch_size=BATCH, lr=1e-2, dev_windows=DEV_WINDOWS,
                        progress=False, tokenizer=tok, command="test")
    return out, manifest


def test_sizes_and_the_shipping_budget():
    vocab = load_tokenizer().vocab_size
    counts = {size: size_config(size, vocab).num_parameters() for size in SIZES}
    assert 0.07e6 < counts["tiny"] < 0.15e6  # "about 0.1M"
    assert 0.9e6 < counts["small"] < 1.2e6
    assert 4e6 < counts["medium"] < 6e6
    assert 2 * sum(counts.values()) <= 12e6  # the three float16 weight files together


def test_held_out_loss_ends_far_below_the_unigram_entropy(pretrained):
    _, manifest = pretrained
    train, _, _ = corpus_windows("synth", load_tokenizer(), CONTEXT, STEPS * BATCH, DEV_WINDOWS)
    counts = np.bincount(train.windows.ravel())
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # nats: the best loss without any context
    curve = manifest["loss_curve"]
    assert manifest["dev_loss"] < unigram_entropy - 1.5, (manifest["dev_loss"], unigram_entropy)
    assert curve[0][2] > manifest["dev_loss"] and curve[-1][0] == STEPS
    assert manifest["dev_loss"] == pytest.approx(manifest["dev_loss_float32"], abs=1e-2)  # float16: no harm
    assert manifest["data"]["train_tokens"] == STEPS * BATCH * CONTEXT  # every window seen once


def test_manifest_round_trip(pretrained):
    out, manifest = pretrained
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["weights_sha256"] == manifest["weights_sha256"] and on_disk["command"] == "test"
    assert on_disk["tokenizer"]["fingerprint"] == load_tokenizer().fingerprint()
    keys = ("config", "data", "seed", "steps", "final_train_loss", "dev_loss", "seconds", "tokens_per_sec")
    assert all(key in on_disk for key in keys)

    rng_before = get_rng().bit_generator.state
    model, loaded = load_pretrained("tiny", out)
    assert get_rng().bit_generator.state == rng_before  # loading draws no random numbers
    assert loaded == on_disk and model.config == GPTConfig.from_dict(manifest["config"])
    assert all(p.dtype == np.float32 for p in model.parameters()) and not model.training
    _, dev, _ = corpus_windows("synth", load_tokenizer(), CONTEXT, 1, DEV_WINDOWS)
    assert mean_loss(model, dev, BATCH, 0) == pytest.approx(manifest["dev_loss"], abs=1e-5)


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


def test_e2e_references_with_early_stopping(tmp_path: Path):
    """The real-data path on a stand-in E2E folder: keeps the weights of the best held-out loss."""
    write_e2e_csv(tmp_path / "e2e" / "trainset.csv", load_synth_e2e("train")[:200])
    write_e2e_csv(tmp_path / "e2e" / "devset.csv", load_synth_e2e("dev")[:20])
    tok = load_tokenizer()
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=CONTEXT, d_model=16, n_layers=1, n_heads=2)
    manifest = pretrain(config, tmp_path / "out", data="e2e", data_dir=str(tmp_path), steps=60, batch_size=8,
                        lr=3e-2, eval_every=5, patience=3, dev_windows=8, progress=False, tokenizer=tok)
    curve = manifest["loss_curve"]
    best = min(curve, key=lambda row: row[2])
    assert manifest["data"]["source"] == "e2e" and manifest["data"]["train_refs"] == 600
    assert manifest["best_step"] == best[0] and manifest["dev_loss_float32"] == best[2]
    assert manifest["dev_loss"] == pytest.approx(best[2], abs=1e-2)  # the kept weights are the best ones


def test_pretrain_command(tmp_path: Path, capsys: pytest.CaptureFixture):
    argv = ["pretrain", "--size", "tiny", "--steps", "2", "--batch-size", "2", "--out", str(tmp_path),
            "--dev-windows", "2", "--no-progress"]
    assert main(argv) == 0
    assert "held-out loss" in capsys.readouterr().out
    model, manifest = load_pretrained("tiny", tmp_path)
    assert manifest["command"].startswith("tinypft pretrain --size tiny --data synth --steps 2 ")
    assert manifest["dtype"] == "float16" and manifest["size"] == "tiny"
    assert model.config == size_config("tiny", load_tokenizer().vocab_size)
    assert (tmp_path / "model.safetensors").stat().st_size < 2 * model.num_parameters() + 10_000


def test_pretrain_command_needs_a_size(capsys: pytest.CaptureFixture):
    assert main(["pretrain"]) == 2
    assert "--size is required" in capsys.readouterr().err


def test_reference_groups_put_every_reference_of_one_mr_in_one_document(tmp_path: Path):
    import random

    from tinypft.train.pretrain import corpus_windows, reference_groups

    examples = load_synth_e2e("train")[:50]
    docs = reference_groups(examples, random.Random(0))
    assert len(docs) == len(examples)
    for ex in examples:  # the one document that starts with one of its references holds them all
        mine = [doc for doc in docs if any(doc.startswith(ref) for ref in ex.refs)]
        assert len(mine) == 1
        assert all(ref in mine[0] for ref in ex.refs)
        assert len(mine[0]) == sum(len(ref) for ref in ex.refs) + len(ex.refs) - 1  # nothing else
    assert docs != reference_groups(examples, random.Random(1))  # the seed orders them
    write_e2e_csv(tmp_path / "e2e" / "trainset.csv", examples)
    write_e2e_csv(tmp_path / "e2e" / "devset.csv", load_synth_e2e("dev")[:10])
    tokenizer = load_tokenizer()
    train, dev, info = corpus_windows("e2e-grouped", tokenizer, CONTEXT, None, 4, data_dir=str(tmp_path))
    assert info["source"] == "e2e-grouped" and info["train_docs"] == len(docs)
    assert len(train) > 0 and len(dev) > 0
