"""Pretraining the mini GPT-2s that fine-tuning starts from.

    tinypft pretrain --size small --out runs/small      # the shipped data/checkpoints/small needs --force
    tinypft pretrain --size tiny --steps 300 --out /tmp/tiny

The corpus is in-domain (``tinypft.data.corpus``): the E2E training references, every reference of
one MR in one document (``<bos> ref <sep> ref <sep> ... <eos>``), so that a later description learns
to copy the name and values of the earlier ones, as a steered model must copy them from its MR.
The documents are packed into windows of ``context_length`` tokens (``batching.pack_documents``).
A seeded 5% of the training MRs is held out: their documents' loss picks the best step, and
training stops when it stops improving. Nothing from E2E's dev or test split is read.

A checkpoint folder holds ``model.safetensors`` (float16 by default: half the bytes, and the
rounding costs a negligible amount of loss, which the manifest records) and ``manifest.json``:
the GPTConfig, the tokenizer's fingerprint, data and seeds, the loss curve, the copy probe, the
the SHA-256 of the weights and the command that made it. ``tinypft.model.load_pretrained``
checks both before loading. The wall times (seconds, tokens per second) are in ``timing.json``, so
the same command and seed write byte-identical weights and manifest. The folder is written as a
whole (a temporary folder renamed into place): an interrupted run leaves the previous one intact.

``--out`` and ``--state-dir`` are checked before training starts; nothing is written into
``data/checkpoints`` unless ``--out`` is the shipped folder of ``--size`` and ``--force`` is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..cli import (
    check_output_dir,
    check_state_dir,
    fraction,
    nonnegative_int,
    path_arg,
    positive_float,
    positive_int,
    touches_shipped,
)
from ..data import (
    E2EExample,
    Tokenizer,
    encode_document,
    heldout_split,
    load_e2e,
    load_tokenizer,
    reference_groups,
)
from ..engine import manual_seed, use_fused_kernels
from ..model import GPT, GPTConfig
from ..model.pretrained import MANIFEST_FORMAT, MANIFEST_NAME, checkpoint_dir
from ..serialization import (
    WEIGHTS_NAME,
    atomic_directory,
    atomic_write_json,
    foreign_entries,
    save_tensors,
    sha256_file,
)
from ..threads import num_threads
from .batching import PackedWindows, pack_documents
from .probes import name_copy_rate
from .trainer import TrainConfig, TrainResult, latest_step, mean_loss, train

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
TIMING_NAME = "timing.json"  # the wall times of a run: the one file two identical runs write differently
FOLDER_FILES = (WEIGHTS_NAME, MANIFEST_NAME, TIMING_NAME)  # a checkpoint folder holds these


def size_config(size: str, vocab_size: int, context_length: int = CONTEXT_LENGTH) -> GPTConfig:
    """The GPTConfig of a named size."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    return GPTConfig(vocab_size=vocab_size, context_length=context_length, **SIZES[size])


def quick_mode() -> bool:
    return os.environ.get(QUICK_ENV_VAR, "") not in ("", "0")


# ----------------------------------------------------------------------------- data


def corpus_windows(
    tokenizer: Tokenizer, context_length: int, n_dev: int, seed: int = 0, data_dir: str | None = None,
) -> tuple[PackedWindows, PackedWindows, list[E2EExample], dict[str, Any]]:
    """Packed train and held-out windows of the grouped E2E references, the held-out MRs (for the
    copy probe) and a description of where the windows came from. ``n_dev`` caps the held-out windows."""
    corpus_mrs, heldout_mrs = heldout_split(load_e2e("train", data_dir), seed=seed)
    train_docs = reference_groups(corpus_mrs, random.Random(seed))
    dev_docs = reference_groups(heldout_mrs, random.Random(seed + 1))
    eos = tokenizer.eos_id
    train = pack_documents((encode_document(tokenizer, d) for d in train_docs), context_length, eos)
    dev = pack_documents((encode_document(tokenizer, d) for d in dev_docs), context_length, eos, n_dev)
    info = {
        "source": "e2e-train-references-grouped-by-mr",
        "train_mrs": len(corpus_mrs), "train_references": sum(len(ex.refs) for ex in corpus_mrs),
        "heldout_mrs": len(heldout_mrs), "shuffle_seed": seed,
        "train_tokens": train.num_tokens, "dev_tokens": dev.num_tokens,
    }
    return train, dev, heldout_mrs, info


# ----------------------------------------------------------------------------- pretraining


def pretrain(
    config: GPTConfig,
    out_dir: str | Path,
    steps: int = 1000,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: str = "float16",
    warmup_steps: int | None = None,
    eval_every: int | None = None,
    dev_windows: int = 256,
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
    dropout: float = 0.0,
) -> dict[str, Any]:
    """Train a GPT of shape ``config`` from scratch and write ``model.safetensors``,
    ``manifest.json`` and ``timing.json`` into ``out_dir`` (as a whole, see the module docstring);
    returns the manifest with the wall times ``seconds`` and ``tokens_per_sec`` of ``timing.json``.

    Cosine schedule with warmup (default 5% of the steps), AdamW (weight decay 0.1 on matrices),
    gradient clipping at 1. ``state_dir`` keeps resumable training checkpoints (``resume``).
    ``trainer`` takes ``train``'s arguments and does the steps (``torch_train``: in PyTorch).
    """
    tokenizer = tokenizer or load_tokenizer()
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"pretrain: vocab_size {config.vocab_size} but {tokenizer.vocab_size} token ids")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"pretrain: dtype must be float16 or float32, got {dtype!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("dev_windows", dev_windows),
                        ("patience", patience)):
        if value < 1:
            raise ValueError(f"pretrain: {name} must be a positive integer, got {value}")
    if eval_every is None:
        eval_every = max(1, steps // 20)
    elif eval_every < 1:
        raise ValueError(f"pretrain: eval_every must be a positive integer, got {eval_every}")
    foreign = foreign_entries(out_dir, FOLDER_FILES)
    if foreign:  # atomic_directory would refuse it too, but only after training
        listed = ", ".join(foreign[:3])
        raise ValueError(f"pretrain: {out_dir} holds files a checkpoint folder does not ({listed})")
    train_windows, dev, heldout_mrs, data_info = corpus_windows(
        tokenizer, config.context_length, dev_windows, seed, data_dir
    )
    train_config = TrainConfig(
        lr=lr, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=warmup_steps if warmup_steps is not None
        else steps // 20, schedule="cosine", max_steps=steps, batch_size=batch_size, grad_clip=1.0,
        eval_every=eval_every, checkpoint_every=eval_every if state_dir else 0, checkpoint_dir=state_dir,
        seed=seed, progress=progress, pad_id=tokenizer.pad_id, keep_best=True, patience=patience,
    )
    manual_seed(seed)
    model = GPT(dataclasses.replace(config, dropout=dropout))
    with use_fused_kernels(fused):
        result = trainer(model, train_windows, train_config, eval_examples=dev, resume=resume)

        # Ship the rounded weights, and report the held-out loss of exactly those.
        stored = {name: p.data.astype(dtype) for name, p in model.named_parameters()}  # type: ignore[arg-type]
        model.load_state_dict(stored)
        dev_loss = mean_loss(model, dev, batch_size, tokenizer.pad_id)
        copying = name_copy_rate(model, tokenizer, heldout_mrs, n=200)

    with atomic_directory(out_dir, FOLDER_FILES) as tmp:
        weights = tmp / WEIGHTS_NAME
        save_tensors(weights, stored, metadata={"format": "np", "producer": MANIFEST_FORMAT})
        manifest = _manifest(config, dtype, weights, tokenizer, data_info, seed, train_config, result,
                             eval_every, dev_loss, copying, command, size)
        timing = {"seconds": result.seconds, "tokens_per_sec": result.tokens_per_sec}
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
        atomic_write_json(tmp / TIMING_NAME, timing)
    return manifest | timing


def _manifest(
    config: GPTConfig, dtype: str, weights: Path, tokenizer: Tokenizer, data_info: dict[str, Any], seed: int,
    train_config: TrainConfig, result: TrainResult, eval_every: int, dev_loss: float,
    copying: dict[str, Any], command: str | None, size: str | None,
) -> dict[str, Any]:
    """What ``manifest.json`` records (see the module docstring)."""
    best_step = int(result.best["step"]) if result.best else result.steps
    return {
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
        "dev_loss_float32": result.best["loss"],
        "loss_curve": _loss_curve(result.train_loss, result.evals),
        "name_copy_rate": copying,
        "command": command,
    }


def _loss_curve(train_loss: list[float], evals: list[dict[str, float]]) -> list[tuple[int, float, float]]:
    """(step, mean train loss since the previous evaluation, held-out loss) at every evaluation."""
    curve, previous = [], 0
    for e in evals:
        step = int(e["step"])
        curve.append((step, float(np.mean(train_loss[previous:step])), float(e["loss"])))
        previous = step
    return curve


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=list(SIZES), help="model shape (required)")
    parser.add_argument("--steps", type=positive_int, help="optimizer steps (default per size)")
    parser.add_argument("--out", type=path_arg,
                        help="output folder (default data/checkpoints/<size>, which needs --force)")
    parser.add_argument("--force", action="store_true", help="overwrite the shipped checkpoint of --size")
    parser.add_argument("--seed", type=nonnegative_int, default=0)
    parser.add_argument("--batch-size", type=positive_int, help="windows per batch (default 16)")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate (default per size)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored dtype")
    parser.add_argument("--eval-every", type=positive_int,
                        help="steps between evaluations (default steps/20)")
    parser.add_argument("--dev-windows", type=positive_int, default=256,
                        help="held-out windows of 128 tokens")
    parser.add_argument("--dropout", type=fraction, default=0.0, help="dropout while pretraining")
    parser.add_argument("--patience", type=positive_int, default=5,
                        help="evaluations without gain before stopping")
    parser.add_argument("--data-dir", type=path_arg,
                        help="folder with e2e/ (default $TINYPFT_DATA, else data/e2e)")
    parser.add_argument("--state-dir", type=path_arg, help="folder for resumable training checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the --state-dir checkpoint")
    parser.add_argument("--no-fused", action="store_true", help="use the composed reference kernels")
    parser.add_argument("--threads", type=positive_int, default=1, help="BLAS threads (see tinypft.threads)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_args(args: argparse.Namespace, out: Path) -> None:
    """Refuse, before any work, a missing --size, --resume without --state-dir, and output folders
    that cannot be written or would overwrite the shipped checkpoints without --force."""
    if args.size is None:
        raise ValueError(f"--size is required ({', '.join(SIZES)})")
    if args.resume and args.state_dir is None:
        raise ValueError("--resume continues from the checkpoints in --state-dir; give --state-dir DIR")
    own = checkpoint_dir(args.size)
    if out.resolve() == own.resolve():
        if (own / MANIFEST_NAME).exists() and not args.force:
            raise ValueError(f"{out} holds the shipped {args.size} checkpoint; give --out DIR, or --force "
                             "to replace it")
    elif touches_shipped(out, own.parent):
        raise ValueError(f"--out {out} lies in {own.parent}, the shipped checkpoints; only --out {own} "
                         f"(with --force) replaces one")
    check_output_dir(out, "--out", FOLDER_FILES)
    if args.state_dir is not None:
        if touches_shipped(args.state_dir, own.parent):
            raise ValueError(f"--state-dir {args.state_dir} lies in {own.parent}, the shipped checkpoints; "
                             "give another folder")
        if out.resolve() in Path(args.state_dir).resolve().parents:
            raise ValueError("--state-dir must lie outside --out (the --out folder is replaced as a whole)")
        check_state_dir(args.state_dir, "--state-dir", args.resume)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else checkpoint_dir(args.size or "tiny")
    check_args(args, out)
    defaults = DEFAULTS[args.size]
    steps = defaults["steps"] if args.steps is None else args.steps
    dev_windows = args.dev_windows
    if quick_mode():
        steps, dev_windows = min(steps, 20), min(dev_windows, 4)
    batch_size = defaults["batch_size"] if args.batch_size is None else args.batch_size
    lr = defaults["lr"] if args.lr is None else args.lr
    command = ["tinypft", "pretrain", "--size", args.size, "--steps", str(steps),
               "--out", str(out), "--seed", str(args.seed), "--batch-size", str(batch_size), "--lr", str(lr),
               "--dtype", args.dtype, "--dev-windows", str(dev_windows), "--dropout", str(args.dropout),
               "--patience", str(args.patience)]
    for flag, value in (("--eval-every", args.eval_every), ("--data-dir", args.data_dir),
                        ("--state-dir", args.state_dir)):
        if value is not None:
            command += [flag, str(value)]
    command += [flag for flag, on in (("--resume", args.resume), ("--no-fused", args.no_fused)) if on]

    tokenizer = load_tokenizer()
    config = size_config(args.size, tokenizer.vocab_size)
    print(f"pretraining {args.size}: {config.num_parameters():,} parameters, {steps} steps of "
          f"{batch_size} x {config.context_length} tokens, the E2E training references grouped by MR")
    if args.resume and latest_step(args.state_dir) is None:
        print(f"no checkpoint in {args.state_dir} yet; training from the first step", file=sys.stderr)
    with num_threads(args.threads):
        manifest = pretrain(
            config, out, steps=steps, batch_size=batch_size, lr=lr, seed=args.seed,
            dtype=args.dtype, eval_every=args.eval_every, dev_windows=dev_windows, data_dir=args.data_dir,
            tokenizer=tokenizer, state_dir=args.state_dir, resume=args.resume, progress=not args.no_progress,
            fused=not args.no_fused, command=shlex.join(command), size=args.size,
            dropout=args.dropout, patience=args.patience,
        )
    megabytes = (out / WEIGHTS_NAME).stat().st_size / 1e6
    print(f"wrote {out / WEIGHTS_NAME} ({megabytes:.2f} MB), {MANIFEST_NAME} and {TIMING_NAME}")
    print(f"train loss {manifest['final_train_loss']:.4f}, held-out loss {manifest['dev_loss']:.4f}, "
          f"{manifest['seconds']:.0f} s, {manifest['tokens_per_sec']:,.0f} tokens/s")
    probe = manifest["name_copy_rate"]
    print(f"copy probe ({probe['n']} held-out references): the next description names the venue "
          f"{probe['known_name_rate']:.0%} of the time ({probe['copy_rate']:.0%} when its name is made up) "
          f"and restates {probe['value_copy_rate']:.0%} of the slot values")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What an interrupted ``tinypft pretrain`` kept (for the one line ``tinypft.cli`` prints)."""
    kept = "--out was not written"
    if getattr(args, "state_dir", None) is None:
        return f"{kept}; nothing was kept (--state-dir DIR keeps resumable checkpoints)"
    step = latest_step(args.state_dir)
    if step is None:
        return f"{kept}; no checkpoint was written yet in {args.state_dir}"
    return (f"{kept}; the checkpoint of step {step} is kept in {args.state_dir}; rerun the same command "
            "with --resume")
