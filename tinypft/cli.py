"""The ``tinypft`` command line: ``tinypft <command> [options]``.

Every command lives in its own module, which defines two functions:

    add_arguments(parser: argparse.ArgumentParser) -> None   # the command's options
    run(args: argparse.Namespace) -> int                     # does the work, returns the exit status

and is registered in ``COMMANDS`` by name. A command's module is imported only when that command
runs, so ``tinypft --version`` and ``tinypft --help`` stay fast whatever the commands import.

Errors are one line on stderr, never a traceback:

* a misused option (argparse, or a ValueError / OSError a command raises on bad input) prints
  ``tinypft <command>: <what is wrong>`` and exits with status 2;
* Ctrl-C (KeyboardInterrupt) prints ``tinypft <command>: interrupted; <what was kept>`` and exits
  with status 130. A command says what it kept with an optional ``interrupted(args) -> str``
  (e.g. the checkpoint to resume from).

The argument types below (``positive_int``, ``positive_float``, ...) refuse a value outside their
range when the command line is parsed, and the ``check_*`` helpers check output folders before any
work starts, so that a bad value never turns into a default and a bad folder never costs a run.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``tinypft finetune: argument --steps: ... (see --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------- argument types


def _number(
    kind: Callable[[str], float], accepted: str, ok: Callable[[float], bool]
) -> Callable[[str], float]:
    """An argparse type: parse with ``kind``; refuse what does not parse, is not finite or not ``ok``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
        return value

    parse.__name__ = accepted  # what argparse calls the type in its messages
    return parse


positive_int = _number(int, "a positive integer (1, 2, ...)", lambda x: x >= 1)
nonnegative_int = _number(int, "an integer >= 0", lambda x: x >= 0)
positive_float = _number(float, "a finite number > 0", lambda x: x > 0)
nonnegative_float = _number(float, "a finite number >= 0", lambda x: x >= 0)
fraction = _number(float, "a number in [0, 1)", lambda x: 0 <= x < 1)


def _comma_list(item: Callable[[str], float], accepted: str) -> Callable[[str], list]:
    """An argparse type for a comma-separated, non-empty list of ``item`` values."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
        try:
            return [item(part) for part in parts]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None

    parse.__name__ = accepted
    return parse


positive_floats = _comma_list(positive_float, "comma-separated finite numbers > 0 (e.g. 1e-3,3e-3)")
nonnegative_ints = _comma_list(nonnegative_int, "comma-separated integers >= 0 (e.g. 0,1,2)")


def path_arg(text: str) -> str:
    """An argparse type for a file or folder name: anything but the empty string."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file or folder name, got ''")
    return text


# ----------------------------------------------------------------------------- output folders


def shipped_checkpoints() -> Path:
    """``data/checkpoints``, the folder of the shipped pretrained models."""
    from .data.loaders import repo_data_dir  # here: --version must not import the data package

    return (repo_data_dir() / "checkpoints").resolve()


def touches_shipped(path: str | Path, shipped: str | Path | None = None) -> bool:
    """Whether writing ``path`` writes into ``shipped`` (default ``data/checkpoints``) or replaces a
    folder that holds it."""
    target = Path(path).resolve()
    shipped = shipped_checkpoints() if shipped is None else Path(shipped).resolve()
    return target == shipped or shipped in target.parents or target in shipped.parents


def check_output_dir(path: str | Path, flag: str, writes: Collection[str]) -> Path:
    """Check, before any work, that the folder ``path`` can be written as a whole (it is replaced by
    ``serialization.atomic_directory``): not a file, holding nothing but the entries ``writes``
    names, its parent creatable and writable. Raises ValueError naming ``flag``."""
    from .serialization import foreign_entries

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder")
    foreign = foreign_entries(path, writes)
    if foreign:
        listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(f"{flag} {path} holds files this command does not write ({listed}); "
                         "give a new or empty folder")
    _check_writable(path.parent, f"{flag} {path}")
    return path


def check_writable_dir(path: str | Path, flag: str) -> Path:
    """Create the folder ``path`` if needed and check that files can be written into it (for
    commands that add files to a folder rather than replace it). Raises ValueError naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder")
    _check_writable(path, f"{flag} {path}")
    return path


def check_state_dir(path: str | Path, flag: str, resume: bool) -> Path:
    """Create the checkpoint folder ``path`` and check that it is writable, before any work. Without
    ``resume`` it must not hold an earlier run's checkpoints (they would be overwritten)."""
    from .train.checkpoints import LATEST  # here: --version must not import the trainer

    path = Path(path)
    if touches_shipped(path):
        raise ValueError(f"{flag} {path} lies in {shipped_checkpoints()}, the shipped checkpoints; "
                         "give another folder")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder")
    _check_writable(path, f"{flag} {path}")
    if not resume and (path / LATEST).exists():
        raise ValueError(f"{flag} {path} holds the checkpoints of an earlier run; add --resume to "
                         "continue it, or give another folder")
    return path


def _check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write (then remove) a temporary folder in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".write-check.", suffix=".tmp", dir=folder))
    except OSError as err:
        raise ValueError(f"{what}: cannot write there ({err.strerror})") from None


# ----------------------------------------------------------------------------- commands


def register(name: str, module: str, help: str, trains: bool = False) -> None:
    """Add a command: ``module`` must define ``add_arguments(parser)`` and ``run(args) -> int``."""
    COMMANDS[name] = Command(module, help, trains)


def _requested_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the top level has only flags, so the first non-flag)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser; only the command requested in ``argv`` gets its module imported."""
    parser = ArgumentParser(
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
    """Run ``tinypft`` with ``argv`` (default: the process arguments) and return the exit status:
    the command's, 2 for a usage error, 130 after Ctrl-C (see the module docstring).

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
    name = f"tinypft {args.command}"
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        describe = getattr(module, "interrupted", None)
        kept = describe(args) if describe is not None else "nothing was kept"
        _one_line(f"{name}: interrupted; {kept}")
        return 130
    except (ValueError, OSError, FloatingPointError) as err:
        _one_line(f"{name}: {err}")
        return 2


def _one_line(message: str) -> None:
    print(" ".join(message.split()), file=sys.stderr)
