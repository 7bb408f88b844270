"""The ``tinypft`` command line: --version, the selftest command and its exit status."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinypft
from tinypft import cli
from tinypft.engine import get_rng, manual_seed, ops, selftest

ROOT = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinypft", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tinypft {tinypft.__version__}"


def test_version_via_python_dash_m() -> None:
    result = run_module("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tinypft {tinypft.__version__}"


def test_version_does_not_import_any_command() -> None:
    code = (
        "import sys; from tinypft import cli; assert cli.main(['--version']) == 0; "
        "print(sorted(c.module for c in cli.COMMANDS.values() if c.module in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("[]")


@pytest.mark.skipif(shutil.which("tinypft") is None, reason="the package is not installed (pip install -e .)")
def test_console_script_version() -> None:
    result = subprocess.run(["tinypft", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tinypft {tinypft.__version__}"


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "selftest" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["no-such-command"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_every_registered_command_has_the_interface() -> None:
    for name, command in cli.COMMANDS.items():
        module = __import__(command.module, fromlist=["run"])
        assert callable(module.add_arguments) and callable(module.run), name
        with pytest.raises(SystemExit) as exit_info:  # every command documents its options
            cli.build_parser([name]).parse_args([name, "--help"])
        assert exit_info.value.code == 0, name


def test_register_adds_a_command_whose_run_gives_the_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))  # undone after the test
    cli.register("again", "tinypft.engine.selftest", "the self-test under another name")
    assert "the self-test under another name" in cli.build_parser([]).format_help()
    monkeypatch.setattr(selftest, "run", lambda args: 7 if args.seed == 3 else 0)
    assert cli.main(["again", "--seed", "3"]) == 7  # its own options were added, its status returned


# ----------------------------------------------------------------------------- selftest

OP_NAMES = [check.name for check in selftest.CHECKS]
NUMBER = r"\d\.\de[+-]\d+"  # as the table prints errors: 1.5e-09
ROW = re.compile(rf"^(?P<name>\S+(?: \[fused\])?)\s{{2,}}.*\s{NUMBER}\s+{NUMBER}\s+(?P<status>PASS|FAIL)$")


def table_rows(output: str) -> dict[str, str]:
    rows = {}
    for line in output.splitlines():
        match = ROW.match(line)
        if match:
            assert match["name"] not in rows, f"duplicate row {match['name']}"
            rows[match["name"]] = match["status"]
    return rows


def test_selftest_passes_with_one_row_per_op(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["selftest"]) == 0
    output = capsys.readouterr().out
    rows = table_rows(output)
    for name in OP_NAMES:
        assert rows.get(name) == "PASS", f"{name}: {rows.get(name)}"
    assert set(rows) - set(OP_NAMES) <= {f"{c.name} [fused]" for c in selftest.CHECKS if c.composite}
    assert re.search(rf"selftest: {len(rows)}/{len(rows)} checks passed", output)


def test_selftest_covers_every_required_op() -> None:
    required = {
        "add",
        "sub",
        "mul",
        "div",
        "neg",
        "pow",
        "exp",
        "log",
        "sqrt",
        "tanh",
        "relu",
        "gelu",
        "matmul",
        "sum",
        "mean",
        "max",
        "reshape",
        "permute",
        "transpose",
        "broadcast_to",
        "getitem",
        "concat",
        "stack",
        "where",
        "masked_fill",
        "embedding",
        "dropout",
        "cast",
        "softmax",
        "log_softmax",
        "layer_norm",
        "cross_entropy",
        "attention",
        "linear",
    }
    assert required <= set(OP_NAMES)


def test_selftest_returns_records() -> None:
    results = selftest.run_selftest(fused=False, verbose=False)
    assert [r.name for r in results] == OP_NAMES
    for r in results:
        assert r.passed and r.checked > 0 and r.shapes, r.name
        assert 0 <= r.max_abs_error < 1e-5


def test_selftest_leaves_the_global_generator_alone() -> None:
    manual_seed(5)
    expected = get_rng().random(3)
    manual_seed(5)
    selftest.run_selftest(fused=False, verbose=False)  # its dropout check reseeds the generator
    np.testing.assert_array_equal(get_rng().random(3), expected)


def test_selftest_via_python_dash_m() -> None:
    result = run_module("selftest", "--no-fused")
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(table_rows(result.stdout)) == set(OP_NAMES)


def _wrong_exp_backward(ctx, g):  # noqa: ANN001, ANN202
    (out,) = ctx.saved
    return (1.01 * g * out,)  # off by 1%


def test_selftest_exits_1_when_an_op_is_broken(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(ops.Exp, "backward", staticmethod(_wrong_exp_backward))
    assert cli.main(["selftest", "--no-fused"]) == 1
    output = capsys.readouterr().out
    rows = table_rows(output)
    assert rows["exp"] == "FAIL"
    assert rows["log"] == "PASS"  # only the broken op (and what is built on it) fails
    assert rows["softmax"] == "FAIL"  # softmax is built on exp
    assert "FAIL exp:" in output and "GradcheckError" in output


def test_selftest_reports_an_op_that_raises(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken(ctx, g):  # noqa: ANN001, ANN202
        raise FloatingPointError("boom")

    monkeypatch.setattr(ops.Tanh, "backward", staticmethod(broken))
    assert cli.main(["selftest", "--no-fused"]) == 1
    output = capsys.readouterr().out
    assert table_rows(output)["tanh"] == "FAIL"
    assert "FloatingPointError: boom" in output
