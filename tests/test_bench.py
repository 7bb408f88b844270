"""``tinypft bench``: the JSON report has every field, each engine is timed in a process of its own at
each thread count, and the thread count does not change results."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinypft
from tinypft import cli
from tinypft.bench import parse_threads
from tinypft.bench.step_profile import matmul_flops
from tinypft.bench.worker import run_worker
from tinypft.bench.workload import METHODS, parse_config
from tinypft.engine import manual_seed
from tinypft.model import GPT, GPTConfig
from tinypft.threads import num_threads, parallel, parallel_for, pieces

SMALL = "d_model=32,n_layers=2,n_heads=2,context_length=48,batch=4,virtual_tokens=4"
METHOD_FIELDS = {
    "ms_per_step", "threads", "by_threads", "tokens_per_s", "trainable_params", "all_params", "peak_mem_mb",
    "first_loss",
}
TORCH_FIELDS = {
    "ms_per_step", "threads", "by_threads", "tokens_per_s", "first_loss", "loss_rel_diff", "ratio",
    "ratio_by_threads",
}
TOP_FIELDS = {
    "config", "model", "batch", "seq_len", "virtual_tokens", "dtype", "threads", "best_threads",
    "detail_threads", "blas_threads", "steps", "warmup", "rounds", "memory_measure", "machine", "methods",
    "fused_full_ms", "composed_full_ms", "fused_speedup", "matmul", "generation", "generation_batch",
    "maxrss_mb", "load_average", "targets",
}
MATMUL_FIELDS = {
    "calls", "gflop_per_step", "ms_in_step", "profiled_step_ms", "share_of_step", "gflops_in_step",
    "gflops_alone", "matmul_ms_alone", "step_gflops_effective", "shapes",
}
GENERATION_FIELDS = {
    "new_tokens", "prompt_tokens", "batch", "cached_tokens_per_s", "cached_ms", "uncached_tokens_per_s",
    "uncached_ms", "speedup", "same_tokens",
}


def run_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    status = cli.main(["bench", "--quick", "--json", "--config", SMALL, *extra])
    assert status == 0
    return json.loads(capsys.readouterr().out)


def check_report(report: dict, threads: list[int]) -> None:
    assert TOP_FIELDS <= set(report)
    assert set(report["methods"]) == set(METHODS)
    assert report["threads"] == threads
    best = report["best_threads"]["tinypft"]
    assert best in threads and report["detail_threads"] == best
    for entry in report["methods"].values():
        assert METHOD_FIELDS <= set(entry)
        assert entry["ms_per_step"] > 0 and entry["tokens_per_s"] > 0 and entry["peak_mem_mb"] > 0
        assert set(entry["by_threads"]) == {str(t) for t in threads}
        assert entry["threads"] == best and entry["ms_per_step"] == entry["by_threads"][str(best)]
    assert MATMUL_FIELDS <= set(report["matmul"])
    assert report["matmul"]["calls"] > 0 and 0 < report["matmul"]["share_of_step"] <= 1
    for generation in (report["generation"], report["generation_batch"]):
        assert GENERATION_FIELDS <= set(generation)
        assert generation["same_tokens"]
    assert {"bitfit_vs_full", "prefix_vs_full", "prompt_vs_full", "fused_speedup", "kv_cache_speedup"} <= set(
        report["targets"]
    )
    assert report["blas_threads"] == 1  # tinypft splits the work itself; each BLAS call is single-threaded
    assert set(report["load_average"]) == {"before", "after"}


def test_bench_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys, "--threads", "1,2")
    check_report(report, [1, 2])
    assert all("torch" not in entry for entry in report["methods"].values())
    assert set(report["best_threads"]) == {"tinypft"}


@pytest.mark.torch
def test_bench_quick_json_torch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    report = run_json(capsys, "--torch", "--threads", "1")
    check_report(report, [1])
    assert report["best_threads"] == {"tinypft": 1, "torch": 1}
    for entry in report["methods"].values():
        assert TORCH_FIELDS <= set(entry["torch"])
        assert entry["torch"]["loss_rel_diff"] < 1e-4  # same weights, same first loss
        assert entry["torch"]["ratio"] == pytest.approx(entry["ms_per_step"] / entry["torch"]["ms_per_step"])
        assert entry["torch"]["ratio_by_threads"]["1"] == pytest.approx(entry["torch"]["ratio"])
    assert "full_vs_torch" not in report["targets"]  # a custom config has no PyTorch target


@pytest.mark.parametrize("engine", ["tinypft", pytest.param("torch", marks=pytest.mark.torch)])
def test_worker_runs_in_its_own_process_at_its_thread_count(engine: str) -> None:
    if engine == "torch":
        pytest.importorskip("torch")
    result = run_worker(engine, SMALL, 2, ["full", "bitfit"], steps=2, warmup=1)
    assert result["engine"] == engine and result["threads"] == 2
    if engine == "torch":
        assert result["torch_threads"] == 2
    else:
        assert result["tinypft_threads"] == 2 and result["blas_threads"] == 1
    for entry in result["methods"].values():
        assert len(entry["times_ms"]) == 2 and entry["ms_per_step"] == pytest.approx(
            float(np.median(entry["times_ms"]))
        )
        assert np.isfinite(entry["first_loss"])


def test_bench_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--quick", "--config", SMALL, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tinypft ms" in out and "targets:" in out and "np.matmul" in out and "load average" in out


def test_bench_rejects_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--config", "depth=3"]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert cli.main(["bench", "--threads", "0,2"]) == 2
    assert "positive integers" in capsys.readouterr().err


def test_parse_threads() -> None:
    assert parse_threads("1,2") == [1, 2] and parse_threads("4") == [4]
    with pytest.raises(ValueError):
        parse_threads("")


def test_parse_config_presets() -> None:
    large = parse_config("large")
    assert (large.model.d_model, large.model.n_layers, large.model.n_heads) == (256, 6, 8)
    standard = parse_config("standard")
    shape = (standard.model.vocab_size, standard.model.d_model, standard.batch, standard.seq_len)
    assert shape == (512, 128, 16, 118)


def test_matmul_flops() -> None:
    assert matmul_flops(np.ones((3, 4)), np.ones((4, 5))) == 2 * 3 * 4 * 5
    assert matmul_flops(np.ones((2, 1, 3, 4)), np.ones((6, 4, 5))) == 2 * 12 * 3 * 4 * 5


def test_set_num_threads_round_trip() -> None:
    before = tinypft.get_num_threads()
    try:
        tinypft.set_num_threads(1)
        assert tinypft.get_num_threads() == 1
        with num_threads(2):
            assert tinypft.get_num_threads() == 2
        assert tinypft.get_num_threads() == 1
    finally:
        tinypft.set_num_threads(before)
    with pytest.raises(ValueError):
        tinypft.set_num_threads(0)


def forward_backward(threads: int) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of one float32 forward/backward on the standard shapes, with ``threads``."""
    manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, context_length=128))
    ids = np.random.default_rng(0).integers(0, 512, (8, 128))
    with num_threads(threads):
        loss = model.lm_loss(model(ids).logits, ids)
        loss.backward()
    return float(loss.data), {name: p.grad.copy() for name, p in model.named_parameters()}


def test_results_do_not_depend_on_thread_count() -> None:
    # the threads split GEMMs into blocks of output rows, attention into blocks of sequences and
    # elementwise passes into blocks of rows: each number is computed by the same arithmetic
    loss_1, grads_1 = forward_backward(1)
    loss_2, grads_2 = forward_backward(2)
    assert loss_1 == loss_2
    for name, g1 in grads_1.items():
        np.testing.assert_array_equal(g1, grads_2[name], err_msg=name)


def test_parallel_runs_every_piece_once_and_raises_a_task_error() -> None:
    with num_threads(2):
        assert pieces(1000, 10) == [slice(0, 500), slice(500, 1000)]
        assert pieces(15, 10) == [slice(0, 15)]  # too small to split
        hits = np.zeros(1000, int)

        def body(s: slice) -> None:
            hits[s] += 1
            parallel_for(10, body_inner)  # a nested call runs on its own thread

        inner: list[slice] = []

        def body_inner(s: slice) -> None:
            inner.append(s)

        parallel_for(1000, body, min_size=10)
        assert (hits == 1).all()
        assert len(inner) == 4 and inner.count(slice(0, 5)) == inner.count(slice(5, 10)) == 2
        with pytest.raises(ZeroDivisionError):
            parallel([lambda: None, lambda: 1 / 0, lambda: None])
    assert tinypft.get_num_threads() >= 1
