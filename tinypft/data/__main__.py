"""``python -m tinypft.data [--out DIR]``: retrain ``data/tokenizer.json`` on the E2E training set."""

from __future__ import annotations

import argparse

from .build import DEFAULT_VOCAB_SIZE, build_tokenizer
from .loaders import repo_data_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinypft.data", description=__doc__)
    parser.add_argument("--out", default=str(repo_data_dir()), help="output folder (default: data/)")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="maximum vocabulary size")
    parser.add_argument("--data-dir", help="folder with e2e/ (default: $TINYPFT_DATA, else data/e2e)")
    args = parser.parse_args(argv)
    path = build_tokenizer(args.out, vocab_size=args.vocab_size, data_dir=args.data_dir)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
