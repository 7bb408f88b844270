"""``python -m tinypft.data [--out DIR]``: retrain ``data/tokenizer.json`` on the E2E training set."""

from __future__ import annotations

import sys

from ..cli import ArgumentParser, check_writable_dir, path_arg, positive_int
from .build import DEFAULT_VOCAB_SIZE, build_tokenizer
from .loaders import repo_data_dir


def main(argv: list[str] | None = None) -> int:
    """Build the tokenizer; a bad option or input is one line on stderr and exit status 2."""
    parser = ArgumentParser(prog="python -m tinypft.data", description=__doc__)
    parser.add_argument("--out", type=path_arg, default=str(repo_data_dir()),
                        help="output folder (default: data/)")
    parser.add_argument("--vocab-size", type=positive_int, default=DEFAULT_VOCAB_SIZE,
                        help="maximum vocabulary size (at least 260: the bytes and the special tokens)")
    parser.add_argument("--data-dir", type=path_arg,
                        help="folder with e2e/ (default: $TINYPFT_DATA, else data/e2e)")
    args = parser.parse_args(argv)
    try:
        check_writable_dir(args.out, "--out")
        path = build_tokenizer(args.out, vocab_size=args.vocab_size, data_dir=args.data_dir)
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; {args.out}/tokenizer.json was not changed", file=sys.stderr)
        return 130
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
