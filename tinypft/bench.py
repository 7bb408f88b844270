"""``tinypft bench``: how fast training steps, generation and matrix products run on this machine.

    tinypft bench                          standard config: vocab 512, d 128, 4 layers, 4 heads, context 128
    tinypft bench --config large           d 256, 6 layers, 8 heads
    tinypft bench --config d_model=64,n_layers=2,batch=8
    tinypft bench --torch --threads 2      the same model in PyTorch (float32, same thread count)
    tinypft bench --json --quick           machine-readable, very few steps (for tests and CI)
    tinypft bench --profile                also cProfile one full step (sorted by own time)

What is measured, all in float32 on a batch of B sequences of T = context - P tokens (P = the
prefix or prompt length, so that every method fits the same context and processes the same tokens):

* ms per training step (forward, backward, AdamW), the median over ``--steps`` steps after
  warm-up, and tokens per second (B T / step) for full fine-tuning, BitFit, prefix-tuning
  (through its MLP) and prompt-tuning; tinypft's and PyTorch's steps, and the fused and the
  composed full steps (``use_fused_kernels(False)``), are timed in alternation, so that a change in the
  machine's load affects both alike;
* peak memory of one step: the largest amount of memory allocated by Python and NumPy during the
  step, beyond what was allocated before it (``tracemalloc``: activations, gradients, temporaries;
  not the parameters and optimizer state that already exist);
* greedy generation of N new tokens for one prompt (and for 8 prompts at once), with and without
  the key/value cache (and with it but without the fast decoding step, ``use_fast_decode(False)``);
* np.matmul during one full step: every call is timed (``np.matmul`` is wrapped for that step),
  which gives the step's GEMM flops, the share of the step spent in matmul, and the GFLOP/s
  reached there; each distinct GEMM is then re-timed alone on the same arrays (the machine's
  GFLOP/s at the model's shapes);
* with ``--torch``: the same steps in PyTorch on the CPU (weights copied from the tinypft model;
  BitFit = only the biases require grad; prefix = MLP-generated keys and values in front of each
  layer's; prompt = embeddings in front of the tokens; ``torch.optim.AdamW``;
  ``F.scaled_dot_product_attention``), and the first losses of both, which must agree.

BLAS uses ``--threads`` threads (default 1, see ``tinypft.threads``); PyTorch gets the same count.
The command first raises glibc's malloc thresholds (``tinypft.engine.allocator.tune_malloc``, a
no-op elsewhere), so that the big temporaries of a step are reused from the heap instead of being
mapped and page-faulted afresh at every step; the report says whether it applied
(``malloc_tuned``). ``run_bench`` called from Python leaves the allocator as it is.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import io
import json
import platform
import pstats
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .engine import manual_seed, use_fused_kernels
from .engine.allocator import malloc_tuned, tune_malloc
from .model import GPT, GPTConfig
from .model.decode import use_fast_decode
from .optim import AdamW
from .peft import BitFitConfig, FullFinetuneConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from .threads import get_num_threads, set_num_threads
from .train.generate import generate

METHODS = ("full", "bitfit", "prefix", "prompt")
PRESETS: dict[str, dict[str, Any]] = {
    "standard": dict(vocab_size=512, d_model=128, n_layers=4, n_heads=4, context_length=128),
    "large": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, context_length=128),
}
# targets per preset: the full step against PyTorch's (lower is better)
GENERATION_BATCH = 8  # generation is also timed on this many prompts at once
TORCH_TARGETS = {"standard": 1.25, "large": 1.1}
TARGETS = {
    "bitfit_vs_full": 0.85,
    "prefix_vs_full": 0.85,
    "prompt_vs_full": 0.9,
    "fused_speedup": 2.0,
    "kv_cache_speedup": 5.0,
}


@dataclasses.dataclass
class BenchSetup:
    """What one benchmark runs: the model's shape, the batch and the number of virtual tokens."""

    name: str
    model: GPTConfig
    batch: int = 16
    virtual_tokens: int = 10

    @property
    def seq_len(self) -> int:
        return self.model.context_length - self.virtual_tokens


def parse_config(text: str) -> BenchSetup:
    """``standard``, ``large``, or ``key=value,...`` over the standard config (model fields,
    ``batch`` and ``virtual_tokens``), e.g. ``d_model=256,n_layers=6,n_heads=8``."""
    if text in PRESETS:
        return BenchSetup(text, GPTConfig(**PRESETS[text]))
    values: dict[str, Any] = dict(PRESETS["standard"])
    extra: dict[str, int] = {}
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"--config: expected standard, large or key=value pairs, got {item!r}")
        if key in ("batch", "virtual_tokens"):
            extra[key] = int(value)
        elif key in fields:
            values[key] = float(value) if key in ("dropout", "layer_norm_eps") else int(value)
        else:
            raise ValueError(
                f"--config: unknown key {key!r}; use {sorted(fields | {'batch', 'virtual_tokens'})}"
            )
    setup = BenchSetup(text, GPTConfig(**values), **extra)
    if setup.seq_len < 2:
        raise ValueError(f"--config: context_length must exceed virtual_tokens + 1, got {setup.model}")
    return setup


def peft_config(method: str, setup: BenchSetup) -> Any:
    P = setup.virtual_tokens
    return {
        "full": FullFinetuneConfig(),
        "bitfit": BitFitConfig(),
        "prefix": PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=True),
        "prompt": PromptTuningConfig(num_virtual_tokens=P),
    }[method]


def build(method: str, setup: BenchSetup, seed: int = 0) -> Any:
    """A fresh float32 GPT wrapped for ``method`` (the same weights for every method)."""
    manual_seed(seed)
    return get_peft_model(GPT(setup.model), peft_config(method, setup))


def batch_ids(setup: BenchSetup, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, setup.model.vocab_size, (setup.batch, setup.seq_len))


# ----------------------------------------------------------------------------- timing


def paired_median_ms(steps: dict[str, Callable[[], Any]], n: int, warmup: int) -> dict[str, float]:
    """Median ms of each step, timed in alternation (a, b, a, b, ...) so that a change in the
    machine's load during the run affects them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(n):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def composed(step: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` run on the composed reference path (``use_fused_kernels(False)``)."""

    def run() -> Any:
        with use_fused_kernels(False):
            return step()

    return run


def tinypft_step(model: Any, ids: np.ndarray) -> Callable[[], float]:
    """One training step (zero_grad, forward, loss, backward, AdamW) as a closure returning the loss."""
    optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()

    def step() -> float:
        optimizer.zero_grad()
        out = model(ids)
        loss = model.lm_loss(out.logits, ids)
        loss.backward()
        optimizer.step()
        return float(loss.data)

    return step


def peak_step_bytes(step: Callable[[], Any]) -> int:
    """The peak of the memory allocated during one call of ``step`` (tracemalloc; NumPy reports to it)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        step()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- matmul accounting


@contextlib.contextmanager
def recorded_matmuls() -> Iterator[list[tuple[np.ndarray, np.ndarray, float]]]:
    """Inside the block every ``np.matmul(a, b)`` is timed: yields a list of (a, b, seconds)."""
    calls: list[tuple[np.ndarray, np.ndarray, float]] = []
    original = np.matmul

    def timed(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = original(a, b, *args, **kwargs)
        calls.append((a, b, time.perf_counter() - start))
        return result

    np.matmul = timed
    try:
        yield calls
    finally:
        np.matmul = original


def matmul_flops(a: np.ndarray, b: np.ndarray) -> int:
    """2 M K N for each of the broadcast batch of (M, K) @ (K, N) products."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 1 or b.ndim == 1:
        return 2 * int(np.prod(np.broadcast_shapes(a.shape, b.shape)))
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return 2 * int(np.prod(batch, dtype=np.int64)) * a.shape[-2] * a.shape[-1] * b.shape[-1]


def matmul_report(step: Callable[[], Any], step_ms: float, reps: int) -> dict[str, Any]:
    """Time every np.matmul of one step, then each distinct GEMM alone on the same arrays."""
    with recorded_matmuls() as calls:
        start = time.perf_counter()
        step()
        profiled_ms = 1e3 * (time.perf_counter() - start)
    shapes: dict[tuple, dict[str, Any]] = {}
    for a, b, seconds in calls:
        key = (a.shape, a.strides, b.shape, b.strides)
        entry = shapes.setdefault(
            key, {"a": a, "b": b, "calls": 0, "seconds": 0.0, "flops": matmul_flops(a, b)}
        )
        entry["calls"] += 1
        entry["seconds"] += seconds
    alone_seconds = 0.0
    rows = []
    for entry in shapes.values():
        a, b = entry["a"], entry["b"]
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            np.matmul(a, b)
            times.append(time.perf_counter() - start)
        alone = statistics.median(times)
        alone_seconds += alone * entry["calls"]
        rows.append(
            {
                "a": list(a.shape),
                "b": list(b.shape),
                "a_strided": not a.flags.c_contiguous,
                "b_strided": not b.flags.c_contiguous,
                "calls": entry["calls"],
                "gflop": entry["flops"] * entry["calls"] / 1e9,
                "ms_in_step": 1e3 * entry["seconds"],
                "gflops_in_step": entry["flops"] * entry["calls"] / entry["seconds"] / 1e9,
                "gflops_alone": entry["flops"] / alone / 1e9,
            }
        )
    rows.sort(key=lambda r: -r["ms_in_step"])
    flops = sum(matmul_flops(a, b) for a, b, _ in calls)
    seconds = sum(s for _, _, s in calls)
    return {
        "calls": len(calls),
        "gflop_per_step": flops / 1e9,
        "ms_in_step": 1e3 * seconds,
        "profiled_step_ms": profiled_ms,
        "share_of_step": 1e3 * seconds / profiled_ms,
        "gflops_in_step": flops / seconds / 1e9 if seconds else 0.0,
        "gflops_alone": flops / alone_seconds / 1e9 if alone_seconds else 0.0,
        "matmul_ms_alone": 1e3 * alone_seconds,
        "step_gflops_effective": flops / (step_ms / 1e3) / 1e9,
        "shapes": rows,
    }


def profile_text(step: Callable[[], Any], lines: int = 25) -> str:
    """cProfile of one call of ``step``, sorted by the time spent in each function itself."""
    profiler = cProfile.Profile()
    profiler.enable()
    step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


# ----------------------------------------------------------------------------- generation


def generation_report(
    setup: BenchSetup, new_tokens: int, batch: int = 1, prompt_len: int = 16
) -> dict[str, Any]:
    """Greedy tokens per second (all rows together) for ``batch`` prompts, with and without the cache.

    "cached" decodes with the fast step (``tinypft.model.decode``), "cached_general" with the cache
    but on the general autograd path (``use_fast_decode(False)``), "uncached" recomputes everything.
    """
    manual_seed(0)
    model = GPT(setup.model)
    rng = np.random.default_rng(2)
    prompts = [rng.integers(1, setup.model.vocab_size, prompt_len).tolist() for _ in range(batch)]
    new_tokens = min(new_tokens, setup.model.context_length - prompt_len)
    result: dict[str, Any] = {"new_tokens": new_tokens, "prompt_tokens": prompt_len, "batch": batch}
    outputs = {}
    runs = (("cached", True, True), ("cached_general", True, False), ("uncached", False, True))
    for name, use_cache, fast in runs:  # (name, use_cache, fast decoding step)
        with use_fast_decode(fast):
            generate(model, prompts, max_new_tokens=2, eos_id=None, pad_id=0, use_cache=use_cache)  # warm-up
            start = time.perf_counter()
            outputs[name] = generate(model, prompts, new_tokens, eos_id=None, pad_id=0, use_cache=use_cache)
            seconds = time.perf_counter() - start
        result[f"{name}_tokens_per_s"] = batch * new_tokens / seconds
        result[f"{name}_ms"] = 1e3 * seconds
    result["speedup"] = result["cached_tokens_per_s"] / result["uncached_tokens_per_s"]
    result["fast_decode_speedup"] = result["cached_tokens_per_s"] / result["cached_general_tokens_per_s"]
    result["same_tokens"] = outputs["cached"] == outputs["cached_general"] == outputs["uncached"]
    return result


# ----------------------------------------------------------------------------- PyTorch twin


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def build_torch(peft_model: Any, method: str) -> Any:
    """A float32 PyTorch model with the weights and the trainable set of a tinypft PeftModel.

    Its parameter names are tinypft's (``base_model.blocks.0.attn.q_proj.weight``, ...), so the
    state dict copies over as is and ``requires_grad`` is copied name by name.
    """
    import torch
    import torch.nn.functional as TF
    from torch import nn

    cfg = peft_model.base_model.config

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.d_model
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

        def forward(self, x: torch.Tensor, prefix: tuple | None) -> torch.Tensor:
            B, T, d = x.shape
            H = cfg.n_heads
            q, k, v = (
                p(x).view(B, T, H, d // H).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)
            )
            if prefix is None:
                y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                pk, pv = prefix  # (1, H, P, hd)
                P = pk.shape[2]
                k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)
                v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
                mask = torch.ones(T, P + T, dtype=torch.bool).tril(diagonal=P)  # prefix visible, then causal
                y = TF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, d))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d, eps = cfg.d_model, cfg.layer_norm_eps
            self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
            self.attn = Attention()
            self.mlp = nn.ModuleDict({"fc_in": nn.Linear(d, cfg.d_ff), "fc_out": nn.Linear(cfg.d_ff, d)})

        def forward(self, x: torch.Tensor, prefix: tuple | None) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x), prefix)
            return x + self.mlp["fc_out"](TF.gelu(self.mlp["fc_in"](self.ln_2(x)), approximate="tanh"))

    class Base(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.wpe = nn.Embedding(cfg.context_length, cfg.d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.n_layers))
            self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

        def forward(
            self, ids: torch.Tensor, prompt: torch.Tensor | None, kv_prefix: list | None
        ) -> torch.Tensor:
            B, T = ids.shape
            x = self.wte(ids)
            P_in = 0 if prompt is None else prompt.shape[1]
            P_kv = 0 if kv_prefix is None else kv_prefix[0][0].shape[2]
            if prompt is not None:
                x = torch.cat([prompt.expand(B, -1, -1), x], dim=1)
            x = x + self.wpe(torch.arange(P_kv, P_kv + P_in + T))
            for i, block in enumerate(self.blocks):
                x = block(x, None if kv_prefix is None else kv_prefix[i])
            return self.ln_f(x[:, P_in:]) @ self.wte.weight.T

    class Peft(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base_model = Base()
            if method == "prefix":
                width = 2 * cfg.n_layers * cfg.d_model
                P, hidden = peft_model.num_virtual_tokens, peft_model.peft_config.encoder_hidden_size
                self.prefix_encoder = nn.Module()
                self.prefix_encoder.embedding = nn.Embedding(P, cfg.d_model)
                self.prefix_encoder.mlp = nn.Sequential(
                    nn.Linear(cfg.d_model, hidden), nn.Tanh(), nn.Linear(hidden, width)
                )
            if method == "prompt":
                self.soft_prompt = nn.Module()
                self.soft_prompt.weight = nn.Parameter(
                    torch.zeros(peft_model.num_virtual_tokens, cfg.d_model)
                )

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            prompt = kv = None
            if method == "prompt":
                prompt = self.soft_prompt.weight[None]
            if method == "prefix":
                enc = self.prefix_encoder
                P = enc.embedding.weight.shape[0]
                H, hd = cfg.n_heads, cfg.d_model // cfg.n_heads
                flat = enc.mlp(enc.embedding.weight)  # (P, 2 L d)
                pairs = flat.view(P, 2 * cfg.n_layers, H, hd).permute(1, 2, 0, 3)  # (2L, H, P, hd)
                kv = [(pairs[2 * i][None], pairs[2 * i + 1][None]) for i in range(cfg.n_layers)]
            return self.base_model(ids, prompt, kv)

        def loss(self, ids: torch.Tensor) -> torch.Tensor:
            logits = self(ids)
            return TF.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    twin = Peft()
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in peft_model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    for name, p in twin.named_parameters():
        p.requires_grad_(name in trainable)
    return twin


def torch_step(twin: Any, ids: np.ndarray) -> Callable[[], float]:
    import torch

    optimizer = torch.optim.AdamW(
        [p for p in twin.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01
    )
    tids = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    twin.train()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = twin.loss(tids)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


# ----------------------------------------------------------------------------- the benchmark


def run_bench(
    setup: BenchSetup,
    threads: int = 1,
    steps: int = 10,
    warmup: int = 3,
    with_torch: bool = False,
    quick: bool = False,
    profile: bool = False,
    new_tokens: int = 100,
) -> dict[str, Any]:
    """Every measurement, as a JSON-able dict (see the module docstring)."""
    if quick:
        steps, warmup, new_tokens = min(steps, 2), 1, min(new_tokens, 8)
    set_num_threads(threads)
    torch_ok = with_torch and torch_available()
    if torch_ok:
        import torch

        torch.set_num_threads(threads)
    ids = batch_ids(setup)
    tokens = ids.size
    report: dict[str, Any] = {
        "config": setup.name,
        "model": setup.model.to_dict(),
        "batch": setup.batch,
        "seq_len": setup.seq_len,
        "virtual_tokens": setup.virtual_tokens,
        "dtype": "float32",
        "threads": threads,
        "blas_threads": get_num_threads(),
        "steps": steps,
        "warmup": warmup,
        "memory_measure": "tracemalloc peak of one step (allocations during the step only)",
        "malloc_tuned": bool(malloc_tuned()),
        "machine": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "processor": platform.machine(),
        },
        "methods": {},
    }
    full_step = None
    for method in METHODS:
        model = build(method, setup)
        twin = build_torch(model, method) if torch_ok else None
        step = tinypft_step(model, ids)
        first_loss = step()
        contenders = {"tinypft": step}
        if twin is not None:
            tstep = torch_step(twin, ids)
            torch_loss = tstep()
            contenders["torch"] = tstep
        times = paired_median_ms(contenders, steps, max(warmup - 1, 0))
        ms = times["tinypft"]
        trainable, total = model.get_nb_trainable_parameters()
        entry = {
            "ms_per_step": ms,
            "tokens_per_s": tokens / (ms / 1e3),
            "trainable_params": trainable,
            "all_params": total,
            "peak_mem_mb": peak_step_bytes(step) / 2**20,
            "first_loss": first_loss,
        }
        if twin is not None:
            torch_ms = times["torch"]
            entry["torch"] = {
                "ms_per_step": torch_ms,
                "tokens_per_s": tokens / (torch_ms / 1e3),
                "first_loss": torch_loss,
                "loss_rel_diff": abs(first_loss - torch_loss) / abs(torch_loss),
                "ratio": ms / torch_ms,
            }
        report["methods"][method] = entry
        if method == "full":
            full_step = step
            pair = paired_median_ms({"fused": step, "composed": composed(step)}, max(steps // 2, 2), 1)
            report["fused_full_ms"] = pair["fused"]
            report["composed_full_ms"] = pair["composed"]
            report["fused_speedup"] = pair["composed"] / pair["fused"]
            report["matmul"] = matmul_report(step, ms, reps=3 if quick else 7)
            if profile:
                report["profile"] = profile_text(step)
    report["generation"] = generation_report(setup, new_tokens, batch=1)
    report["generation_batch"] = generation_report(setup, new_tokens, batch=GENERATION_BATCH)
    report["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["targets"] = targets(report)
    del full_step
    return report


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target: the measured value, the bound, and whether it is met."""
    m = report["methods"]
    full = m["full"]["ms_per_step"]
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float, bound: float, at_most: bool) -> None:
        rows[name] = {
            "value": value,
            "bound": bound,
            "rule": "<=" if at_most else ">=",
            "met": value <= bound if at_most else value >= bound,
        }

    if "torch" in m["full"] and report["config"] in TORCH_TARGETS:
        add("full_vs_torch", m["full"]["torch"]["ratio"], TORCH_TARGETS[report["config"]], True)
    for method in ("bitfit", "prefix", "prompt"):
        add(f"{method}_vs_full", m[method]["ms_per_step"] / full, TARGETS[f"{method}_vs_full"], True)
    add("fused_speedup", report["fused_speedup"], TARGETS["fused_speedup"], False)
    add("kv_cache_speedup", report["generation"]["speedup"], TARGETS["kv_cache_speedup"], False)
    batch = report["generation_batch"]["batch"]
    add(
        f"kv_cache_speedup_b{batch}",
        report["generation_batch"]["speedup"],
        TARGETS["kv_cache_speedup"],
        False,
    )
    return rows


# ----------------------------------------------------------------------------- output


def format_report(r: dict[str, Any]) -> str:
    cfg = r["model"]
    lines = [
        f"tinypft bench: config {r['config']} (vocab {cfg['vocab_size']}, d {cfg['d_model']}, "
        f"{cfg['n_layers']} layers, {cfg['n_heads']} heads, context {cfg['context_length']}), "
        f"batch {r['batch']} x {r['seq_len']} tokens, P = {r['virtual_tokens']}, float32, "
        f"{r['threads']} BLAS thread(s), median of {r['steps']} steps"
        + (", malloc tuned" if r.get("malloc_tuned") else ""),
        "",
    ]
    has_torch = "torch" in r["methods"]["full"]
    head = f"{'method':8} {'trainable':>10} {'ms/step':>9} {'tokens/s':>9} {'vs full':>8} {'peak MB':>8}"
    if has_torch:
        head += f" {'torch ms':>9} {'tinypft/torch':>14} {'loss diff':>10}"
    lines.append(head)
    full = r["methods"]["full"]["ms_per_step"]
    for name, e in r["methods"].items():
        line = (
            f"{name:8} {e['trainable_params']:>10,d} {e['ms_per_step']:>9.1f} {e['tokens_per_s']:>9,.0f} "
            f"{e['ms_per_step'] / full:>8.2f} {e['peak_mem_mb']:>8.1f}"
        )
        if has_torch:
            t = e["torch"]
            line += f" {t['ms_per_step']:>9.1f} {t['ratio']:>14.2f} {t['loss_rel_diff']:>10.1e}"
        lines.append(line)
    mm, g, gb = r["matmul"], r["generation"], r["generation_batch"]
    lines += [
        "",
        f"full step, composed path (use_fused_kernels(False)): {r['composed_full_ms']:.1f} ms, "
        f"fused {r['fused_full_ms']:.1f} ms (timed in alternation) "
        f"-> fused is {r['fused_speedup']:.2f}x faster",
        f"np.matmul in one full step: {mm['calls']} calls, {mm['gflop_per_step']:.2f} GFLOP, "
        f"{mm['ms_in_step']:.1f} of {mm['profiled_step_ms']:.1f} ms ({100 * mm['share_of_step']:.0f}%), "
        f"{mm['gflops_in_step']:.1f} GFLOP/s in the step, {mm['gflops_alone']:.1f} GFLOP/s alone",
        *(
            f"generation, greedy, {x['new_tokens']} new tokens, batch {x['batch']}: "
            f"cached {x['cached_tokens_per_s']:.0f} tok/s "
            f"(general path {x['cached_general_tokens_per_s']:.0f}), "
            f"uncached {x['uncached_tokens_per_s']:.0f} tok/s -> {x['speedup']:.1f}x"
            + ("" if x["same_tokens"] else "  (THE TOKENS DIFFER)")
            for x in (g, gb)
        ),
        "",
        "largest GEMMs of the step (' marks an operand that is a strided view, e.g. W.T or a head split):",
    ]
    for row in mm["shapes"][:8]:
        a = "x".join(map(str, row["a"])) + ("'" if row["a_strided"] else "")
        b = "x".join(map(str, row["b"])) + ("'" if row["b_strided"] else "")
        lines.append(
            f"  {a:>16} @ {b:<14} x{row['calls']:<3} {row['ms_in_step']:7.2f} ms  "
            f"{row['gflops_in_step']:6.1f} GFLOP/s in step, {row['gflops_alone']:6.1f} alone"
        )
    lines += ["", "targets:"]
    for name, t in r["targets"].items():
        lines.append(
            f"  {name:18} {t['value']:7.2f} {t['rule']} {t['bound']:<5} {'met' if t['met'] else 'MISSED'}"
        )
    if "profile" in r:
        lines += ["", r["profile"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="standard",
        help="standard, large, or key=value pairs over standard (e.g. d_model=256,n_layers=6)",
    )
    parser.add_argument(
        "--torch", action="store_true", help="also time the same model in PyTorch (if installed)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--threads", type=int, default=1, help="BLAS (and PyTorch) threads (default 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--new-tokens", type=int, default=100, help="tokens to generate")
    parser.add_argument("--quick", action="store_true", help="very few steps (tests, CI)")
    parser.add_argument("--profile", action="store_true", help="cProfile one full step (by own time)")


def run(args: argparse.Namespace) -> int:
    try:
        setup = parse_config(args.config)
    except ValueError as exc:
        print(f"tinypft bench: {exc}")
        return 2
    if args.threads < 1 or args.steps < 1:
        print("tinypft bench: --threads and --steps must be >= 1")
        return 2
    if args.torch and not torch_available():
        print("tinypft bench: --torch: PyTorch is not installed; timing tinypft only")
    tune_malloc()  # this process times training steps: keep their big temporaries mapped
    report = run_bench(
        setup,
        threads=args.threads,
        steps=args.steps,
        warmup=args.warmup,
        with_torch=args.torch,
        quick=args.quick,
        profile=args.profile,
        new_tokens=args.new_tokens,
    )
    if args.json:
        report["matmul"]["shapes"] = report["matmul"]["shapes"][:12]
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
