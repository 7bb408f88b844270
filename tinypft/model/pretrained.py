"""The shipped pretrained checkpoints: where they live and how they are loaded, checked first.

A checkpoint folder (``data/checkpoints/<size>/`` for the shipped ones, written by
``tinypft pretrain``) holds

    model.safetensors    the weights (float16 by default)
    manifest.json        the GPTConfig, the tokenizer's fingerprint, the SHA-256 of the weights,
                         and how the model was trained (data, seeds, loss curve, command)

``load_pretrained`` refuses a weights file whose SHA-256 is not the manifest's and a tokenizer
other than the one the model was trained with, then loads the weights into a float32 GPT.

    from tinypft.model import load_pretrained
    model, manifest = load_pretrained("tiny")     # data/checkpoints/tiny, in eval mode
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import Tokenizer, load_tokenizer, repo_data_dir
from ..engine import default_dtype, get_rng
from ..serialization import WEIGHTS_NAME, load_tensors, read_json, sha256_file
from .config import GPTConfig
from .gpt import GPT

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tinypft-pretrained"


def checkpoint_dir(size: str) -> Path:
    """Where the shipped checkpoint of a size lives: ``data/checkpoints/<size>/``."""
    return repo_data_dir() / "checkpoints" / size


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
