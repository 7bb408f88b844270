"""``python -m tinypft.data [--out DIR] [--seed N]``: regenerate the ``data/`` folder."""

from __future__ import annotations

import argparse

from .build import DEFAULT_VOCAB_SIZE, build_all
from .loaders import repo_data_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tinypft.data", description=__doc__)
    parser.add_argument("--out", default=str(repo_data_dir()), help="output folder (default: data/)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the synthetic data")
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE, help="maximum vocabulary size")
    args = parser.parse_args(argv)
    for name, path in build_all(args.out, seed=args.seed, vocab_size=args.vocab_size).items():
        print(f"wrote {name:24s} {path.stat().st_size:>10,} bytes  {path}")


if __name__ == "__main__":
    main()
