"""The targets ``tinypft bench`` checks its measurements against, and the report printed as text."""

from __future__ import annotations

from typing import Any

TORCH_TARGETS = {"standard": 1.0, "large": 1.0}  # per preset: the full step against PyTorch's (at most),
# each engine at its best thread count
TARGETS = {  # bounds on ratios (at most) and speedups (at least)
    "bitfit_vs_full": 0.8,
    "prefix_vs_full": 0.8,
    "prompt_vs_full": 0.9,
    "fused_speedup": 2.0,
    "kv_cache_speedup": 5.0,
}


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


def _ms_by_threads(entry: dict[str, Any], threads: list[int]) -> str:
    """ "168.2 120.4" : the step's ms at each thread count, the best one marked with *."""
    return " ".join(
        f"{entry['by_threads'][str(t)]:7.1f}{'*' if t == entry['threads'] else ' '}" for t in threads
    )


def format_report(r: dict[str, Any]) -> str:
    """The report of ``run_bench`` as a table per method, then matmul, generation and targets."""
    cfg, threads = r["model"], r["threads"]
    load = r["load_average"]
    lines = [
        f"tinypft bench: config {r['config']} (vocab {cfg['vocab_size']}, d {cfg['d_model']}, "
        f"{cfg['n_layers']} layers, {cfg['n_heads']} heads, context {cfg['context_length']}), "
        f"batch {r['batch']} x {r['seq_len']} tokens, P = {r['virtual_tokens']}, float32"
        + (", malloc tuned" if r.get("malloc_tuned") else ""),
        f"ms per step at {', '.join(map(str, threads))} thread(s) (* the best), each engine in a process of "
        f"its own, median of {r['steps']} steps x {r['rounds']} round(s); load average "
        f"{load['before']:.2f} before, {load['after']:.2f} after",
        "",
    ]
    has_torch = "torch" in r["methods"]["full"]
    width = 9 * len(threads)
    head = f"{'method':8} {'trainable':>10} {'tinypft ms':>{width}} {'tokens/s':>9} {'vs full':>8} "
    head += f"{'peak MB':>8}"
    if has_torch:
        head += f" {'torch ms':>{width}} {'ratio at best':>13} {'ratio per thread count':>22} "
        head += f"{'loss diff':>9}"
    lines.append(head)
    full = r["methods"]["full"]["ms_per_step"]
    for name, e in r["methods"].items():
        line = (
            f"{name:8} {e['trainable_params']:>10,d} {_ms_by_threads(e, threads):>{width}} "
            f"{e['tokens_per_s']:>9,.0f} {e['ms_per_step'] / full:>8.2f} {e['peak_mem_mb']:>8.1f}"
        )
        if has_torch:
            t = e["torch"]
            per_thread = " ".join(f"x{n}: {t['ratio_by_threads'][str(n)]:.2f}" for n in threads)
            line += (
                f" {_ms_by_threads(t, threads):>{width}} {t['ratio']:>13.2f} {per_thread:>22} "
                f"{t['loss_rel_diff']:>9.1e}"
            )
        lines.append(line)
    mm, g, gb = r["matmul"], r["generation"], r["generation_batch"]
    lines += [
        "",
        f"in this process, at {r['detail_threads']} thread(s):",
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
