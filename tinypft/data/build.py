"""Rebuild the tokenizer in the repository's ``data/`` folder from the shipped E2E training set.

``python -m tinypft.data`` writes ``tokenizer.json``: byte-level BPE trained on the E2E training
references (as a target is encoded: running text after a space, see ``Tokenizer.encode_target``)
and the training MRs written as tables (``name : The Eagle | food : French``), the form the
fine-tuning sources take. Nothing from the dev or test split is read. The same data always
produces a byte-identical file.
"""

from __future__ import annotations

from pathlib import Path

from .loaders import load_e2e
from .mr import E2EExample, linearize_table
from .tokenizer import Tokenizer

DEFAULT_VOCAB_SIZE = 2048


def tokenizer_training_texts(train: list[E2EExample]) -> list[str]:
    """The tokenizer's corpus: every training reference (with its leading space) and every training
    MR as a table."""
    refs = [" " + ref for example in train for ref in example.refs]
    tables = [linearize_table(example.slots) for example in train]
    return refs + tables


def build_tokenizer(out_dir: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE,
                    data_dir: str | Path | None = None) -> Path:
    """Train the tokenizer on the E2E training split and write ``out_dir/tokenizer.json``."""
    tokenizer = Tokenizer.train(tokenizer_training_texts(load_e2e("train", data_dir)), vocab_size)
    path = Path(out_dir) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    return path
