"""Readers for the E2E NLG Challenge CSVs and the WebNLG 2017 XML.

The E2E CSVs ship in ``data/e2e/`` (gzip-compressed, content unchanged, CC BY-SA 4.0), so
:func:`load_e2e` works with no setup. A folder named by the environment variable ``TINYPFT_DATA``
(or a ``data_dir=`` argument) holding ``e2e/`` overrides them. WebNLG 2017 (CC BY-NC-SA 4.0,
non-commercial) is never shipped: point ``TINYPFT_DATA`` at a folder holding ``webnlg2017/``.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .mr import E2EExample, parse_mr
from .tokenizer import Tokenizer

DATA_ENV_VAR = "TINYPFT_DATA"
E2E_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
WEBNLG_SEEN_CATEGORIES: tuple[str, ...] = (
    "Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam",
    "University", "WrittenWork",
)
WEBNLG_UNSEEN_CATEGORIES: tuple[str, ...] = (
    "Artist", "Athlete", "CelestialBody", "MeanOfTransportation", "Politician",
)


def repo_data_dir() -> Path:
    """The repository's top-level ``data/`` folder (next to the ``tinypft`` package)."""
    return Path(__file__).resolve().parents[2] / "data"


def load_tokenizer(path: str | Path | None = None) -> Tokenizer:
    """Load the project's tokenizer (``data/tokenizer.json`` by default) or the one at ``path``."""
    path = Path(path) if path is not None else repo_data_dir() / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found; run `python -m tinypft.data` to build it")
    return Tokenizer.load(path)


def real_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder with the real datasets: ``data_dir`` if given, else ``$TINYPFT_DATA``."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV_VAR)
        if not data_dir:
            raise FileNotFoundError(
                f"no data folder given: pass data_dir= or set {DATA_ENV_VAR} to a folder "
                "containing e2e/ and webnlg2017/"
            )
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist (set {DATA_ENV_VAR} or pass data_dir=)")
    return path


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file {path} (set {DATA_ENV_VAR} or pass data_dir=)")
    return path


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(allowed)}")


# --- E2E-format CSV ----------------------------------------------------------------------------


def read_e2e_csv(path: str | Path) -> list[E2EExample]:
    """Read an E2E-format CSV (header ``mr,ref``) and group the rows by MR.

    MRs keep the order of their first row and references keep file order, duplicates
    included, so ``sum(len(ex.refs))`` equals the number of data rows. The file is read with
    ``newline=''`` so CRLF line ends and newlines inside quoted references survive.
    """
    path = _require_file(Path(path))
    grouped: dict[str, list[str]] = {}
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        try:
            header = next(rows, None)
            if header is None or [h.strip() for h in header] != ["mr", "ref"]:
                raise ValueError(f"{path}: expected the header 'mr,ref', got {header!r}")
            for line_no, row in enumerate(rows, start=2):
                if len(row) != 2:
                    raise ValueError(f"{path}: row {line_no} has {len(row)} fields, expected 2")
                grouped.setdefault(row[0], []).append(row[1])
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not UTF-8 text: {err.reason} at byte {err.start}") from None
        except (OSError, EOFError) as err:  # a truncated or corrupt .gz
            raise ValueError(f"{path} cannot be read: {err}") from None
    examples = []
    for mr, refs in grouped.items():
        try:
            slots = parse_mr(mr)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        examples.append(E2EExample(mr=mr, slots=slots, refs=tuple(refs)))
    return examples


def write_e2e_csv(path: str | Path, examples: Iterable[E2EExample]) -> None:
    """Write examples as an E2E-format CSV: header ``mr,ref``, one row per reference, ``\\n`` line ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["mr", "ref"])
        for example in examples:
            writer.writerows([example.mr, ref] for ref in example.refs)


def e2e_dir(data_dir: str | Path | None = None) -> Path:
    """Where the E2E CSVs are read from: ``data_dir/e2e`` if given, else ``$TINYPFT_DATA/e2e`` if
    that variable is set, else the shipped ``data/e2e``."""
    if data_dir is None and not os.environ.get(DATA_ENV_VAR):
        return repo_data_dir() / "e2e"
    return real_data_dir(data_dir) / "e2e"


def e2e_file(split: str, data_dir: str | Path | None = None) -> Path:
    """The CSV of an E2E split: ``trainset.csv`` if present, else the shipped ``trainset.csv.gz``."""
    _check_split(split, tuple(E2E_FILES))
    plain = e2e_dir(data_dir) / E2E_FILES[split]
    compressed = plain.with_name(plain.name + ".gz")
    return compressed if not plain.is_file() and compressed.is_file() else plain


def load_e2e(split: str, data_dir: str | Path | None = None) -> list[E2EExample]:
    """The E2E NLG Challenge data (``train``, ``dev`` or ``test``), grouped by MR; see :func:`e2e_dir`."""
    return read_e2e_csv(e2e_file(split, data_dir))


# --- WebNLG 2017 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebNLGExample:
    """One WebNLG entry: a set of (subject, predicate, object) triples and its references."""

    category: str
    eid: str
    size: int
    triples: tuple[tuple[str, str, str], ...]
    refs: tuple[str, ...]


def _parse_triple(text: str, where: str) -> tuple[str, str, str]:
    parts = [p.strip() for p in text.split(" | ", 2)]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{where}: malformed triple {text!r} (expected 'subject | predicate | object')")
    return parts[0], parts[1], parts[2]


def read_webnlg_xml(path: str | Path) -> list[WebNLGExample]:
    """Parse one WebNLG XML file (``benchmark/entries/entry`` elements)."""
    path = _require_file(Path(path))
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid XML ({err})") from None
    examples = []
    for entry in root.iter("entry"):
        where = f"{path} entry {entry.get('eid')}"
        triples = tuple(_parse_triple(t.text or "", where) for t in entry.iter("mtriple"))
        refs = tuple((lex.text or "").strip() for lex in entry.findall("lex"))
        if not triples:
            raise ValueError(f"{where}: no modifiedtripleset/mtriple")
        examples.append(WebNLGExample(
            category=entry.get("category", ""), eid=entry.get("eid", ""),
            size=int(entry.get("size", len(triples))), triples=triples, refs=refs,
        ))
    return examples


def load_webnlg(
    split: str, data_dir: str | Path | None = None, category_set: str = "all"
) -> list[WebNLGExample]:
    """WebNLG 2017 ``train``, ``dev`` or ``test``.

    ``category_set`` selects ``"all"`` entries, the ``"seen"`` categories (the 10 of the
    training set) or the ``"unseen"`` ones (5 categories that only the test set has).
    """
    _check_split(split, ("train", "dev", "test"))
    if category_set not in ("all", "seen", "unseen"):
        raise ValueError(f"category_set must be 'all', 'seen' or 'unseen', got {category_set!r}")
    if category_set == "unseen" and split != "test":
        raise ValueError("unseen categories only exist in the test split")
    root = real_data_dir(data_dir) / "webnlg2017"
    if split == "test":
        files = [_require_file(root / "test" / "testdata_with_lex.xml")]
    else:
        files = sorted((root / split).glob("*triples/*.xml"))
        if not files:
            raise FileNotFoundError(
                f"no WebNLG XML files under {root / split} (set {DATA_ENV_VAR} or pass data_dir=)"
            )
    examples = [ex for f in files for ex in read_webnlg_xml(f)]
    if category_set == "seen":
        examples = [ex for ex in examples if ex.category in WEBNLG_SEEN_CATEGORIES]
    elif category_set == "unseen":
        examples = [ex for ex in examples if ex.category not in WEBNLG_SEEN_CATEGORIES]
    return examples


def linearize_triples(triples: Iterable[Sequence[str]]) -> str:
    """Triples as one line of text: ``"s : p : o | s : p : o"``, underscores and quotes removed.

    >>> linearize_triples([("Aarhus_Airport", "cityServed", "Aarhus")])
    'Aarhus Airport : cityServed : Aarhus'
    """
    def clean(part: str) -> str:
        return part.replace("_", " ").strip().strip('"').strip()

    return " | ".join(" : ".join(clean(p) for p in triple) for triple in triples)


def webnlg_pairs(examples: Iterable[WebNLGExample]) -> list[tuple[str, str]]:
    """The flat ``(linearized triples, ref)`` view, one pair per reference."""
    return [(linearize_triples(ex.triples), ref) for ex in examples for ref in ex.refs]
