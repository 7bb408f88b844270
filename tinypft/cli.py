"""The ``tinypft`` command line: ``tinypft <command> [options]``.

Every command lives in its own module, which defines two functions:

    add_arguments(parser: argparse.ArgumentParser) -> None   # the command's options
    run(args: argparse.Namespace) -> int                     # does the work, returns the exit status

and is registered in ``COMMANDS`` by name. A command's module is imported only when that command
runs, so ``tinypft --version`` and ``tinypft --help`` stay fast whatever the commands import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import __version__
from .engine.allocator import tune_malloc


@dataclass(frozen=True)
class Command:
    """A registered command: the module that implements it, a one-line help, and whether it trains
    (then ``main`` first calls ``tune_malloc``, which keeps a step's big temporaries mapped)."""

    module: str
    help: str
    trains: bool = False


COMMANDS: dict[str, Command] = {
    "selftest": Command(
        "tinypft.engine.selftest", "gradient-check every op and composite of the engine in float64"
    ),
    "pretrain": Command(
        "tinypft.train.pretrain", "pretrain a mini GPT-2 (tiny, small, medium) and write its checkpoint",
        trains=True,
    ),
    "exercises": Command(
        "tinypft.exercises.make", "write student versions of the lesson notebooks, or list their exercises"
    ),
    "finetune": Command(
        "tinypft.experiments.finetune", "fine-tune a pretrained model with one method on one task, score it",
        trains=True,
    ),
    "showdown": Command(
        "tinypft.experiments.showdown", "compare every method on E2E: table, JSON, plot and one output each",
        trains=True,
    ),
    "findings": Command(
        "tinypft.experiments.findings.cli", "re-run the papers' findings over seeds; write docs/results.md",
        trains=True,
    ),
    "scale": Command(
        "tinypft.experiments.scale", "the real E2E data at 1M parameters, trained by PyTorch and by tinypft",
        trains=True,
    ),
    "bench": Command(
        "tinypft.bench", "time training steps, generation and matmuls; optionally against PyTorch",
        trains=True,
    ),
}


def register(name: str, module: str, help: str, trains: bool = False) -> None:
    """Add a command: ``module`` must define ``add_arguments(parser)`` and ``run(args) -> int``."""
    COMMANDS[name] = Command(module, help, trains)


def _requested_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the top level has only flags, so the first non-flag)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser; only the command requested in ``argv`` gets its module imported."""
    parser = argparse.ArgumentParser(
        prog="tinypft", description="Parameter-efficient fine-tuning from first principles."
    )
    parser.add_argument("--version", action="version", version=f"tinypft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="command")
    requested = _requested_command(argv)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        if name == requested:
            importlib.import_module(command.module).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tinypft`` with ``argv`` (default: the process arguments) and return the exit status.

    The console script wraps this in ``sys.exit(main())``; ``python -m tinypft`` does the same.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error: argparse has printed the message
        return 0 if exc.code is None else int(exc.code)
    if args.command is None:
        parser.print_help()
        return 2
    command = COMMANDS[args.command]
    if command.trains:
        tune_malloc()
    module = importlib.import_module(command.module)
    return int(module.run(args))
