"""``tinypft bench``: the JSON report has every field, and BLAS thread counts do not change results."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tinypft
from tinypft import cli
from tinypft.bench.step_profile import matmul_flops
from tinypft.bench.workload import METHODS, parse_config
from tinypft.engine import manual_seed
from tinypft.model import GPT, GPTConfig
from tinypft.threads import num_threads

SMALL = "d_model=32,n_layers=2,n_heads=2,context_length=48,batch=4,virtual_tokens=4"
METHOD_FIELDS = {"ms_per_step", "tokens_per_s", "trainable_params", "all_params", "peak_mem_mb", "first_loss"}
TORCH_FIELDS = {"ms_per_step", "tokens_per_s", "first_loss", "loss_rel_diff", "ratio"}
TOP_FIELDS = {
    "config", "model", "batch", "seq_len", "virtual_tokens", "dtype", "threads", "blas_threads", "steps",
    "warmup", "memory_measure", "machine", "methods", "fused_full_ms", "composed_full_ms", "fused_speedup",
    "matmul", "generation", "generation_batch", "maxrss_mb", "targets",
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


def check_report(report: dict) -> None:
    assert TOP_FIELDS <= set(report)
    assert set(report["methods"]) == set(METHODS)
    for entry in report["methods"].values():
        assert METHOD_FIELDS <= set(entry)
        assert entry["ms_per_step"] > 0 and entry["tokens_per_s"] > 0 and entry["peak_mem_mb"] > 0
    assert MATMUL_FIELDS <= set(report["matmul"])
    assert report["matmul"]["calls"] > 0 and 0 < report["matmul"]["share_of_step"] <= 1
    for generation in (report["generation"], report["generation_batch"]):
        assert GENERATION_FIELDS <= set(generation)
        assert generation["same_tokens"]
    assert {"bitfit_vs_full", "prefix_vs_full", "prompt_vs_full", "fused_speedup", "kv_cache_speedup"} <= set(
        report["targets"]
    )
    assert report["threads"] == report["blas_threads"] == 1


def test_bench_quick_json(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_json(capsys)
    check_report(report)
    assert all("torch" not in entry for entry in report["methods"].values())


@pytest.mark.torch
def test_bench_quick_json_torch(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    report = run_json(capsys, "--torch")
    check_report(report)
    for entry in report["methods"].values():
        assert TORCH_FIELDS <= set(entry["torch"])
        assert entry["torch"]["loss_rel_diff"] < 1e-4  # same weights, same first loss


def test_bench_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--quick", "--config", SMALL]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "targets:" in out and "np.matmul" in out


def test_bench_rejects_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--config", "depth=3"]) == 2
    assert "unknown key" in capsys.readouterr().out


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
    loss_1, grads_1 = forward_backward(1)
    loss_2, grads_2 = forward_backward(2)
    assert loss_1 == pytest.approx(loss_2, rel=1e-5)
    # the k_proj biases' gradients are 0 up to rounding (softmax ignores a shift of a whole row),
    # so each gradient is compared relative to its own size or, when that is noise, to the largest one
    largest = max(np.abs(g).max() for g in grads_1.values())
    for name, g1 in grads_1.items():
        g2 = grads_2[name]
        assert np.abs(g1 - g2).max() <= 1e-5 * np.abs(g1).max() + 1e-7 * largest, name
