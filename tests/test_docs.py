"""The documentation runs and stays in step with the code.

Every ```python block of README.md and docs/*.md is executed as a script of its own (a fresh
interpreter, so a fresh namespace) with the repository root as working directory and BLAS on one
thread; any error fails the test and shows the block's output. A block preceded by the line
``<!-- no-test -->`` is skipped; blocks in other languages (bash, text, mermaid) never run.

Beyond running the examples, the tests check that the API reference names every public name and
every command-line option, that the module map of docs/architecture.md lists every module, and
that the links between the documents resolve.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tinypft import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DOCUMENTS = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
SKIP_MARKER = "<!-- no-test -->"
BLOCK_SECONDS = 120


@dataclass
class CodeBlock:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skipped: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def code_blocks(path: Path, text: str | None = None) -> list[CodeBlock]:
    """The fenced code blocks of a Markdown file (or of ``text``), with their language and skip marker."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[CodeBlock] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1 : end]]
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        code = "\n".join(body) + "\n"
        blocks.append(CodeBlock(path, i + 1, language.lower(), code, previous == SKIP_MARKER))
        i = end + 1
    return blocks


PYTHON_BLOCKS = [b for path in DOCUMENTS for b in code_blocks(path) if b.language in ("python", "py")]


def test_there_are_examples_to_run():
    assert len(DOCUMENTS) >= 6, [p.name for p in DOCUMENTS]
    assert len([b for b in PYTHON_BLOCKS if not b.skipped]) >= 8
    assert any(b.path.name == "README.md" for b in PYTHON_BLOCKS), "README.md has no python example"


def test_the_block_parser():
    text = (
        "# Title\n\n```bash\npip install tinypft\n```\n\n```python\nx = 1\n```\n\n<!-- no-test -->\n"
        "```python\nraise SystemExit(1)\n```\n\n* a list item:\n\n  ```python\n  y = 2\n  ```\n"
    )
    blocks = code_blocks(DOCS / "example.md", text)
    assert [(b.language, b.code, b.skipped) for b in blocks] == [
        ("bash", "pip install tinypft\n", False),
        ("python", "x = 1\n", False),
        ("python", "raise SystemExit(1)\n", True),
        ("python", "y = 2\n", False),
    ]
    assert [b.line for b in blocks] == [3, 7, 12, 18]


def test_readme_shell_blocks_are_not_python():
    languages = {b.language for b in code_blocks(ROOT / "README.md")}
    assert "bash" in languages


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.name)
def test_python_block_runs(block: CodeBlock):
    if block.skipped:
        pytest.skip(f"marked {SKIP_MARKER}")
    if re.search(r"^\s*(import torch|from torch)", block.code, re.MULTILINE) and not importlib.util.find_spec(
        "torch"
    ):
        pytest.skip("the block needs PyTorch")
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-"],
        input=block.code,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_environment(),
        timeout=BLOCK_SECONDS,
    )
    assert result.returncode == 0, (
        f"{block.name} failed (exit status {result.returncode}):\n{result.stderr[-4000:]}\n"
        f"--- output ---\n{result.stdout[-2000:]}"
    )


# ----------------------------------------------------------------------------- the API reference

API_PACKAGES = [
    "tinypft", "tinypft.engine", "tinypft.engine.functional", "tinypft.nn", "tinypft.optim", "tinypft.model",
    "tinypft.data", "tinypft.train", "tinypft.peft", "tinypft.serialization", "tinypft.exercises",
    "tinypft.recipe", "tinypft.diagnostics",
]


def _public_names(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:  # no __all__: the functions and classes defined in the module itself
        names = [
            name for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module_name
        ]
    return list(names)


def _mentioned(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None


@pytest.mark.parametrize("module_name", API_PACKAGES)
def test_api_reference_names_every_public_name(module_name: str):
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = [name for name in _public_names(module_name) if not _mentioned(name, text)]
    assert not missing, f"docs/api.md does not mention these names of {module_name}: {missing}"


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """Every visible long option of a parser and of its sub-commands."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
        elif action.help != argparse.SUPPRESS:
            found |= {s for s in action.option_strings if s.startswith("--") and s != "--help"}
    return found


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_api_reference_lists_every_command_line_option(command: str):
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    section = re.search(rf"^### `tinypft {command}`\n(.*?)(?=^#)", text, re.MULTILINE | re.DOTALL)
    assert section, f"docs/api.md has no section '### `tinypft {command}`'"
    parser = cli.build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    missing = [opt for opt in sorted(_options(sub)) if f"`{opt}" not in section.group(1)]
    assert not missing, f"docs/api.md, tinypft {command}: options not described: {missing}"


def test_api_reference_lists_the_module_commands():
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for command in ("python -m tinypft.lessons run --full", "python -m tinypft.lessons run --quick",
                    "python -m tinypft.data", "--timeout", "--vocab-size"):
        assert command in text


# ----------------------------------------------------------------------------- architecture, links


def test_module_map_lists_every_module():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(p for p in (ROOT / "tinypft").rglob("*.py") if p.name != "__init__.py")
    missing = [str(p.relative_to(ROOT)) for p in modules if f"`{p.name}`" not in text and
               f"{p.parent.name}/{p.name}`" not in text]
    assert not missing, f"docs/architecture.md does not describe: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path: Path):
    text = path.read_text(encoding="utf-8")
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{path.name}: link to {target}: {linked} does not exist"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.MULTILINE)
            slugs = {_slug(h) for h in headings}
            assert anchor in slugs, f"{path.name}: no heading for #{anchor} in {linked.name}"


def test_docs_index_links_every_document():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for path in DOCS.glob("*.md"):
        if path.name != "README.md":
            assert f"({path.name})" in index, f"docs/README.md does not link {path.name}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_placeholders(path: Path):
    text = path.read_text(encoding="utf-8")
    for word in ("TODO", "FIXME", "TBD"):
        assert word not in text, f"{path.name} contains {word!r}"
