"""Pretraining the mini GPT-2s that fine-tuning starts from, and loading the shipped checkpoints.

    tinypft pretrain --size small                       # writes data/checkpoints/small/
    tinypft pretrain --size tiny --steps 300 --out /tmp/tiny

The language model learns to continue text packed into windows of ``context_length`` tokens
(``doc eos doc eos ...``, see ``batching.pack_documents``). Two corpora:

* ``synth``: ``pretraining_documents``, an endless generated stream. The run takes exactly
  ``steps x batch_size`` windows from it, so no document is seen twice and the model cannot
  overfit; the held-out loss is measured on the separate stream ``PRETRAIN_DEV_SEED``.
* ``e2e``: the references of the real E2E training set (text only, no MRs) from ``$TINYPFT_DATA``,
  with the E2E dev references as held-out text. That corpus is small, so training stops when the
  held-out loss stops improving and the best weights are kept.
* ``e2e-grouped``: the same references, but every reference of one MR in one document
  (``reference_groups``). A later description of a venue can then copy the earlier ones' name
  and values, which the model must learn to do from the MR when it is fine-tuned: one reference
  per document rarely asks for it (1.6% of them name their venue twice).

A checkpoint folder holds ``model.safetensors`` (float16 by default: half the bytes, and the
rounding costs a negligible amount of loss, which the manifest records) and ``manifest.json``:
the GPTConfig, the tokenizer's fingerprint, data and seeds, the loss curve, the speed, the SHA-256
of the weights and the command that made it. ``load_pretrained`` checks both before loading.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data import (
    PRETRAIN_DEV_SEED,
    PRETRAIN_SEED,
    E2EExample,
    Tokenizer,
    load_e2e,
    load_tokenizer,
    pretraining_documents,
    repo_data_dir,
)
from ..engine import default_dtype, functional, get_rng, manual_seed
from ..io import WEIGHTS_NAME, atomic_write_json, load_tensors, read_json, save_tensors, sha256_file
from ..model import GPT, GPTConfig
from ..threads import num_threads
from .batching import PackedWindows, pack_documents
from .probes import name_copy_rate
from .trainer import TrainConfig, TrainResult, mean_loss, train

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tinypft-pretrained"
CONTEXT_LENGTH = 128

# Model shapes (vocab_size comes from the tokenizer). Parameters with the 2,048-token vocabulary:
# tiny 0.10M, small 1.07M, medium 4.69M. Medium uses d_model 240 rather than 256 (5.30M) so that
# the three float16 files stay under 12 MB together (0.19 + 2.15 + 9.38 MB).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 32, "n_layers": 2, "n_heads": 2},
    "small": {"d_model": 128, "n_layers": 4, "n_heads": 4},
    "medium": {"d_model": 240, "n_layers": 6, "n_heads": 8},
}
# Training defaults per size: smaller models take a larger learning rate.
DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"steps": 2000, "batch_size": 16, "lr": 3e-3},
    "small": {"steps": 4000, "batch_size": 16, "lr": 1e-3},
    "medium": {"steps": 4000, "batch_size": 16, "lr": 1e-3},
}
QUICK_ENV_VAR = "TINYPFT_QUICK"  # set to 1: a few steps only, to check that everything runs


def size_config(size: str, vocab_size: int, context_length: int = CONTEXT_LENGTH) -> GPTConfig:
    """The GPTConfig of a named size."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return GPTConfig(vocab_size=vocab_size, context_length=context_length, **SIZES[size])


def checkpoint_dir(size: str) -> Path:
    """Where the shipped checkpoint of a size lives: ``data/checkpoints/<size>/``."""
    return repo_data_dir() / "checkpoints" / size


def quick_mode() -> bool:
    return os.environ.get(QUICK_ENV_VAR, "") not in ("", "0")


# ----------------------------------------------------------------------------- data


def _tokenized(tokenizer: Tokenizer, texts: Iterable[str]) -> Iterable[list[int]]:
    return (tokenizer.encode(text) for text in texts)


def corpus_windows(
    data: str, tokenizer: Tokenizer, context_length: int, n_train: int | None, n_dev: int,
    seed: int = 0, data_dir: str | None = None,
) -> tuple[PackedWindows, PackedWindows, dict[str, Any]]:
    """Packed train and held-out windows of a corpus, and a description of where they came from.

    ``n_train`` windows are taken from the synthetic stream (every window of the E2E references
    when it is None); ``n_dev`` caps the held-out windows.
    """
    eos = tokenizer.eos_id
    if data == "synth":
        if n_train is None:
            raise ValueError("corpus_windows: the synthetic stream is endless; give n_train")
        train = pack_documents(
            _tokenized(tokenizer, pretraining_documents(PRETRAIN_SEED)), context_length, eos, n_train
        )
        dev = pack_documents(
            _tokenized(tokenizer, pretraining_documents(PRETRAIN_DEV_SEED)), context_length, eos, n_dev
        )
        source = {"source": "synth", "train_stream_seed": PRETRAIN_SEED, "dev_stream_seed": PRETRAIN_DEV_SEED}
    elif data == "e2e":
        # References are grouped by MR in the files: shuffle them (seeded) before packing.
        train_refs = [ref for ex in load_e2e("train", data_dir) for ref in ex.refs]
        dev_refs = [ref for ex in load_e2e("dev", data_dir) for ref in ex.refs]
        random.Random(seed).shuffle(train_refs)
        random.Random(seed + 1).shuffle(dev_refs)
        train = pack_documents(_tokenized(tokenizer, train_refs), context_length, eos, n_train)
        dev = pack_documents(_tokenized(tokenizer, dev_refs), context_length, eos, n_dev)
        source = {
            "source": "e2e", "train_refs": len(train_refs), "dev_refs": len(dev_refs), "shuffle_seed": seed,
        }
    elif data == "e2e-grouped":
        train_docs = reference_groups(load_e2e("train", data_dir), random.Random(seed))
        dev_docs = reference_groups(load_e2e("dev", data_dir), random.Random(seed + 1))
        train = pack_documents(_tokenized(tokenizer, train_docs), context_length, eos, n_train)
        dev = pack_documents(_tokenized(tokenizer, dev_docs), context_length, eos, n_dev)
        source = {"source": "e2e-grouped", "train_docs": len(train_docs), "dev_docs": len(dev_docs),
                  "shuffle_seed": seed}
    else:
        raise ValueError(f"unknown pretraining data {data!r}; choose synth, e2e or e2e-grouped")
    return train, dev, {**source, "train_tokens": train.num_tokens, "dev_tokens": dev.num_tokens}


def reference_groups(examples: Sequence[E2EExample], rng: random.Random) -> list[str]:
    """One document per MR: its references in a shuffled order, joined by spaces; the documents
    are shuffled too. Every description after the first can copy the name and values of the ones
    before it, as a fine-tuned model must copy them from its MR."""
    documents = []
    for example in examples:
        refs = list(example.refs)
        rng.shuffle(refs)
        documents.append(" ".join(refs))
    rng.shuffle(documents)
    return documents


# ----------------------------------------------------------------------------- pretraining


def pretrain(
    config: GPTConfig,
    out_dir: str | Path,
    data: str = "synth",
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: str = "float16",
    warmup_steps: int | None = None,
    eval_every: int | None = None,
    dev_windows: int = 64,
    patience: int = 5,
    data_dir: str | None = None,
    tokenizer: Tokenizer | None = None,
    state_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    fused: bool = True,
    command: str | None = None,
    size: str | None = None,
    trainer: Callable[..., TrainResult] = train,
) -> dict[str, Any]:
    """Train a GPT of shape ``config`` from scratch and write ``model.safetensors`` and
    ``manifest.json`` into ``out_dir``; returns the manifest.

    Cosine schedule with warmup (default 5% of the steps), AdamW (weight decay 0.1 on matrices),
    gradient clipping at 1. ``state_dir`` keeps resumable training checkpoints (``resume``).
    ``trainer`` takes ``train``'s arguments and does the steps (``torch_train``: in PyTorch).
    """
    tokenizer = tokenizer or load_tokenizer()
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"pretrain: vocab_size {config.vocab_size} but {tokenizer.vocab_size} token ids")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"pretrain: dtype must be float16 or float32, got {dtype!r}")
    n_train = steps * batch_size if data == "synth" else None
    train_windows, dev, data_info = corpus_windows(
        data, tokenizer, config.context_length, n_train, dev_windows, seed, data_dir
    )
    eval_every = eval_every or max(1, steps // 20)
    train_config = TrainConfig(
        lr=lr, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=warmup_steps if warmup_steps is not None
        else steps // 20, schedule="cosine", max_steps=steps, batch_size=batch_size, grad_clip=1.0,
        eval_every=eval_every, checkpoint_every=eval_every if state_dir else 0, checkpoint_dir=state_dir,
        seed=seed, progress=progress, pad_id=tokenizer.pad_id, keep_best=data != "synth",
        patience=patience if data != "synth" else None,
    )
    manual_seed(seed)
    model = GPT(config)
    with functional.use_fused(fused):
        result = trainer(model, train_windows, train_config, eval_examples=dev, resume=resume)

        # Ship the rounded weights, and report the held-out loss of exactly those.
        stored = {name: p.data.astype(dtype) for name, p in model.named_parameters()}  # type: ignore[arg-type]
        model.load_state_dict(stored)
        dev_loss = mean_loss(model, dev, batch_size, tokenizer.pad_id)
        copying = name_copy_rate(model, tokenizer, n=200) if data == "synth" else None

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    save_tensors(weights, stored, metadata={"format": "np", "producer": MANIFEST_FORMAT})
    best_step = int(result.best["step"]) if result.best else result.steps
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "tinypft_version": __version__,
        "size": size,
        "config": config.to_dict(),
        "num_parameters": config.num_parameters(),
        "dtype": dtype,
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": sha256_file(weights),
        "tokenizer": {"fingerprint": tokenizer.fingerprint(), "vocab_size": tokenizer.vocab_size},
        "data": data_info,
        "seed": seed,
        "train_config": {k: v for k, v in dataclasses.asdict(train_config).items() if k != "progress"},
        "steps": result.steps,
        "best_step": best_step,
        "stopped_early": result.stopped_early,
        "final_train_loss": float(np.mean(result.train_loss[-eval_every:])),
        "dev_loss": dev_loss,
        "dev_loss_float32": result.best["loss"] if data != "synth" else result.evals[-1]["loss"],
        "loss_curve": _loss_curve(result.train_loss, result.evals),
        "name_copy_rate": copying,
        "seconds": result.seconds,
        "tokens_per_sec": result.tokens_per_sec,
        "command": command,
    }
    atomic_write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest


def _loss_curve(train_loss: list[float], evals: list[dict[str, float]]) -> list[tuple[int, float, float]]:
    """(step, mean train loss since the previous evaluation, held-out loss) at every evaluation."""
    curve, previous = [], 0
    for e in evals:
        step = int(e["step"])
        curve.append((step, float(np.mean(train_loss[previous:step])), float(e["loss"])))
        previous = step
    return curve


# ----------------------------------------------------------------------------- loading


def load_pretrained(
    size: str, directory: str | Path | None = None, dropout: float = 0.0, tokenizer: Tokenizer | None = None
) -> tuple[GPT, dict[str, Any]]:
    """Load a pretrained checkpoint (default ``data/checkpoints/<size>/``) as a float32 GPT in eval mode.

    Checks that the weights file has the SHA-256 the manifest records and that the manifest's
    tokenizer is the project's (or ``tokenizer``); raises ValueError otherwise. ``dropout``
    overrides the config's, for fine-tuning. Loading draws nothing from the global generator.
    """
    directory = Path(directory) if directory is not None else checkpoint_dir(size)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}; run `tinypft pretrain --size {size}`")
    manifest = read_json(manifest_path)
    weights = directory / manifest.get("weights_file", WEIGHTS_NAME)
    digest = sha256_file(weights)
    if digest != manifest["weights_sha256"]:
        raise ValueError(
            f"{weights} is corrupted or was modified: its SHA-256 is {digest}, "
            f"the manifest expects {manifest['weights_sha256']}"
        )
    tokenizer = tokenizer or load_tokenizer()
    if manifest["tokenizer"]["fingerprint"] != tokenizer.fingerprint():
        raise ValueError(
            f"{directory} was trained with another tokenizer: fingerprint "
            f"{manifest['tokenizer']['fingerprint'][:12]}..., this one is {tokenizer.fingerprint()[:12]}..."
        )
    config = GPTConfig.from_dict({**manifest["config"], "dropout": dropout})
    rng_state = get_rng().bit_generator.state
    with default_dtype(np.float32):
        model = GPT(config)  # its random initialization is overwritten below
    get_rng().bit_generator.state = rng_state
    expected = {name: (p.shape, manifest["dtype"]) for name, p in model.named_parameters()}
    model.load_state_dict(load_tensors(weights, expected))  # cast to float32
    model.eval()
    return model, manifest


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=list(SIZES), help="model shape (required)")
    parser.add_argument("--data", choices=("synth", "e2e", "e2e-grouped"), default="synth",
                        help="pretraining corpus (e2e-grouped: every reference of an MR in one document)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default per size)")
    parser.add_argument("--out", help="output folder (default data/checkpoints/<size>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, help="windows per batch (default 16)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default per size)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored dtype")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (default steps/20)")
    parser.add_argument("--dev-windows", type=int, default=64, help="held-out windows of 128 tokens")
    parser.add_argument("--data-dir", help="folder with e2e/ (default $TINYPFT_DATA)")
    parser.add_argument("--state-dir", help="folder for resumable training checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the --state-dir checkpoint")
    parser.add_argument("--no-fused", action="store_true", help="use the composed reference kernels")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.size is None:
        print(f"tinypft pretrain: --size is required ({', '.join(SIZES)})", file=sys.stderr)
        return 2
    defaults = DEFAULTS[args.size]
    steps = args.steps or defaults["steps"]
    dev_windows = args.dev_windows
    if quick_mode():
        steps, dev_windows = min(steps, 20), min(dev_windows, 4)
    batch_size = args.batch_size or defaults["batch_size"]
    lr = args.lr or defaults["lr"]
    out = Path(args.out) if args.out else checkpoint_dir(args.size)
    command = ["tinypft", "pretrain", "--size", args.size, "--data", args.data, "--steps", str(steps),
               "--out", str(out), "--seed", str(args.seed), "--batch-size", str(batch_size), "--lr", str(lr),
               "--dtype", args.dtype, "--dev-windows", str(dev_windows)]
    for flag, value in (("--eval-every", args.eval_every), ("--data-dir", args.data_dir),
                        ("--state-dir", args.state_dir)):
        if value is not None:
            command += [flag, str(value)]
    command += [flag for flag, on in (("--resume", args.resume), ("--no-fused", args.no_fused)) if on]

    tokenizer = load_tokenizer()
    config = size_config(args.size, tokenizer.vocab_size)
    print(f"pretraining {args.size}: {config.num_parameters():,} parameters, {steps} steps of "
          f"{batch_size} x {config.context_length} tokens, data {args.data}")
    with num_threads(args.threads):
        manifest = pretrain(
            config, out, data=args.data, steps=steps, batch_size=batch_size, lr=lr, seed=args.seed,
            dtype=args.dtype, eval_every=args.eval_every, dev_windows=dev_windows, data_dir=args.data_dir,
            tokenizer=tokenizer, state_dir=args.state_dir, resume=args.resume, progress=not args.no_progress,
            fused=not args.no_fused, command=shlex.join(command), size=args.size,
        )
    megabytes = (out / WEIGHTS_NAME).stat().st_size / 1e6
    print(f"wrote {out / WEIGHTS_NAME} ({megabytes:.2f} MB) and {MANIFEST_NAME}")
    print(f"train loss {manifest['final_train_loss']:.4f}, held-out loss {manifest['dev_loss']:.4f}, "
          f"{manifest['seconds']:.0f} s, {manifest['tokens_per_sec']:,.0f} tokens/s")
    if manifest["name_copy_rate"] is not None:
        print(f"copies an unseen venue name when the text calls for it: "
              f"{manifest['name_copy_rate']['copy_rate']:.0%} of {manifest['name_copy_rate']['n']} probes")
    return 0
