"""Checkers for lesson 7 (the showdown): one BitFit step by hand (AdamW's first update), the
attention mask of an infix, and the Pareto front of trainable parameters against BLEU; also what
each method trains and what N tasks cost on disk, for a course that sets those as exercises.

The reference counts are ``tinypft.peft.counts.trainable_parameter_count``'s. Each checker reports
as ``common`` describes: one line when everything agrees, else an ``AssertionError`` naming the
input, with a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..engine import default_dtype, manual_seed
from ..engine import functional as F
from ..model import GPT, GPTConfig
from ..optim import SGD, AdamW, Optimizer
from ..peft import BitFitModel, counts, get_peft_model
from ..peft.bitfit import bitfit_parameter_names
from ..peft.config import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
)
from ..peft.counts import trainable_parameter_count
from .common import call_student, compare_arrays, fail, passed, preserved_engine_state, refuse_library

# What each checker refuses: tinypft's own implementation of the exercise (label -> object).
LIBRARY: dict[str, dict[str, Any]] = {
    "counts": {"trainable_parameter_count (tinypft.peft.counts.trainable_parameter_count)":
               trainable_parameter_count,
               "prefix_training_count (tinypft.peft.counts.prefix_training_count)":
               counts.prefix_training_count,
               "prefix_inference_count (tinypft.peft.counts.prefix_inference_count)":
               counts.prefix_inference_count,
               "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
    "pareto_front": {},
    "bitfit_step": {"AdamW (tinypft.optim.AdamW)": AdamW, "SGD (tinypft.optim.SGD)": SGD,
                    "Optimizer (tinypft.optim.Optimizer)": Optimizer,
                    "bitfit_parameter_names (tinypft.peft.bitfit.bitfit_parameter_names)":
                    bitfit_parameter_names,
                    "BitFitModel (tinypft.peft.BitFitModel)": BitFitModel,
                    "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
    "infix_mask": {"attention mask (GPT._attention_mask)": GPT._attention_mask},
}

SHOWDOWN_METHODS = ("frozen", "full", "bitfit", "prefix", "prompt")

# ----------------------------------------------------------------------------- what each method trains


def _method_config(method: str, P: int) -> Any:
    return {
        "frozen": FrozenConfig(),
        "full": FullFinetuneConfig(),
        "bitfit": BitFitConfig(),
        "prefix": PrefixTuningConfig(num_virtual_tokens=P),  # through the MLP, k = 512
        "prompt": PromptTuningConfig(num_virtual_tokens=P),
    }[method]


def _describe(config: GPTConfig) -> str:
    return (f"GPTConfig(vocab_size={config.vocab_size}, context_length={config.context_length}, "
            f"d_model={config.d_model}, n_layers={config.n_layers}, d_ff={config.d_ff})")


def _count_hints(method: str, config: GPTConfig, P: int, expected: int) -> dict[int, str]:
    """Wrong counts a student may produce, each with the hint that explains it."""
    d, f, L, V = config.d_model, config.d_ff, config.n_layers, config.vocab_size
    k = 512
    hints: dict[int, str] = {}
    if method == "full":
        hints[expected + V * d] = "the LM head is tied to the token embeddings: count wte once"
        hints[expected - config.context_length * d] = "the position embeddings wpe train too"
        hints[0] = "full fine-tuning trains every parameter"
    elif method == "frozen":
        hints[config.num_parameters()] = "the frozen model trains nothing: 0"
    elif method == "bitfit":
        hints[expected - d] = "the final LayerNorm ln_f has a beta (bias) too: + d"
        hints[expected - 2 * L * d - d] = (
            "BitFit also trains the LayerNorm betas: 2 per block (ln_1, ln_2) and ln_f, 2 L d + d")
        hints[expected - 2 * L * d] = "the two LayerNorms of every block (ln_1, ln_2) have betas: + 2 L d"
        hints[expected + 2 * L * d + d] = "only the LayerNorm betas (biases) train, not their gains (weights)"
        hints[expected + L * (4 * d - f)] = ("the FFN's intermediate bias has d_ff entries (config.d_ff), "
                                             "not 4 d")
        hints[expected - L * (f + d)] = "the FFN's two biases train too: d_ff + d per block"
    elif method == "prefix":
        stored = 2 * L * d * P
        hints[stored] = ("2 L d P is what is STORED after merge(); while training, P' (P d) and the MLP "
                         "(d k + k + k 2Ld + 2Ld, k = 512) train instead")
        hints[expected - P * d] = "the table P' (P x d) that feeds the MLP trains too"
        hints[expected - k - 2 * L * d] = "each Linear of the MLP has a bias: + k and + 2 L d"
        hints[expected - (k * L * d + L * d)] = "the MLP outputs keys AND values for every layer: width 2 L d"
        hints[stored + P * d + d * k + k + k * 2 * L * d + 2 * L * d] = (
            "the merged prefix does not exist while training: count P' and the MLP only")
    elif method == "prompt":
        hints[2 * L * d * P] = "a soft prompt lives at the input only: P vectors of width d, P d"
        hints[L * d * P] = "a soft prompt lives at the input only (not in every layer): P d"
        hints[P * V] = "each prompt vector is an embedding of width d, not a distribution over the vocabulary"
    hints.pop(expected, None)
    return hints


def check_trainable_count(fn: Callable[[str, GPTConfig, int], int]) -> None:
    """``fn(method, config, P)`` must return how many scalars ``method`` trains on a tinypft GPT of shape
    ``config``: "frozen" 0, "full" every parameter, "bitfit" every bias and LayerNorm beta, "prefix"
    P' and the MLP of width k = 512 it trains through (P virtual tokens), "prompt" P d; the numbers
    ``tinypft.peft.counts.trainable_parameter_count`` gives."""
    check = "check_trainable_count"
    refuse_library(check, fn, LIBRARY["counts"])
    shapes = [
        (GPTConfig(vocab_size=16, context_length=12, d_model=8, n_layers=2, n_heads=2), 3),
        (GPTConfig(vocab_size=2048, context_length=128, d_model=32, n_layers=2, n_heads=2), 10),  # tiny
        (GPTConfig(vocab_size=2048, context_length=128, d_model=128, n_layers=4, n_heads=4), 16),  # small
        (GPTConfig(vocab_size=50, context_length=20, d_model=12, n_layers=3, n_heads=3, d_ff=24), 1),
        (GPTConfig(vocab_size=50257, context_length=1024, d_model=1024, n_layers=24, n_heads=16), 5),
    ]
    for config, P in shapes:
        for method in SHOWDOWN_METHODS:
            call = f"fn({method!r}, {_describe(config)}, P={P})"
            got = call_student(check, call, fn, method, config, P)
            expected = trainable_parameter_count(config, _method_config(method, P))[0]
            if not isinstance(got, int | np.integer) or isinstance(got, bool):
                fail(check, f"{call}: returned {got!r:.60} ({type(got).__name__}), expected an int",
                     "count with integer arithmetic (no /, no float())")
            if int(got) != expected:
                hint = _count_hints(method, config, P, expected).get(int(got))
                if hint is None:
                    hint = {
                        "frozen": "the frozen model trains nothing",
                        "full": "config.num_parameters(): every weight, bias and LayerNorm parameter",
                        "bitfit": "per block 4 d (b_q, b_k, b_v, b_o) + d_ff + d (the FFN) + 2 d (LN betas), "
                             "then + d for ln_f",
                        "prefix": "P d + (d k + k) + (k 2Ld + 2Ld) with k = 512",
                        "prompt": "P d",
                    }[method]
                fail(check, f"{call}: got {int(got):,}, expected {expected:,} "
                            f"(difference {int(got) - expected:+,})", hint)
    # the same numbers from real models
    with preserved_engine_state():
        config = GPTConfig(vocab_size=40, context_length=16, d_model=16, n_layers=3, n_heads=2)
        for method in SHOWDOWN_METHODS:
            model = get_peft_model(GPT(config), _method_config(method, 4))
            counted = model.get_nb_trainable_parameters()[0]
            got = call_student(check, f"fn({method!r}, {_describe(config)}, P=4)", fn, method, config, 4)
            if int(got) != counted:
                fail(check, f"fn({method!r}, {_describe(config)}, P=4): got {int(got):,}, a {method} "
                            f"PeftModel trains {counted:,}")
    passed(check, f"5 methods on {len(shapes)} shapes up to GPT-2 medium, and on real PeftModels")


# ----------------------------------------------------------------------------- storage for N tasks


def _storage(n_tasks: int, base: int, adapter: int, bytes_per_param: int) -> tuple[int, int]:
    return bytes_per_param * (base + n_tasks * adapter), bytes_per_param * n_tasks * base


def check_storage_for_tasks(fn: Callable[[int, int, int, int], tuple[int, int]]) -> None:
    """``fn(n_tasks, base_params, adapter_params, bytes_per_param)`` must return the pair
    (with_adapters, full_copies) in bytes: one shared base model plus one adapter per task, against
    one fine-tuned copy of the whole model per task."""
    check = "check_storage_for_tasks"
    refuse_library(check, fn, LIBRARY["counts"])
    cases = [
        ("one task, a base of 100 and an adapter of 10, float32", 1, 100, 10, 4),
        ("3 tasks, base 1,000, adapter 7, float16", 3, 1_000, 7, 2),
        ("the small checkpoint and its merged prefix (2 L d P = 10,240), 100 tasks, float32",
         100, 1_068_416, 10_240, 4),
        ("GPT-2 medium and a 0.1% prefix (P = 5), 1,000 tasks, float32", 1_000, 354_823_168, 245_760, 4),
        ("no tasks yet: only the base model", 0, 500, 20, 4),
        ("an adapter as large as the base (full fine-tuning as an 'adapter'), 5 tasks", 5, 64, 64, 4),
    ]
    for where, n, base, adapter, nbytes in cases:
        call = f"{where}: fn({n}, {base}, {adapter}, {nbytes})"
        got = call_student(check, call, fn, n, base, adapter, nbytes)
        if not isinstance(got, list | tuple) or len(got) != 2:
            fail(check, f"{call}: returned {got!r:.80}, expected a pair (with_adapters, full_copies)",
                 "return two numbers: return with_adapters, full_copies")
        if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in got):
            fail(check, f"{call}: returned {tuple(got)!r}, expected two ints (bytes)",
                 "count with integer arithmetic (no /, no float())")
        with_adapters, full_copies = (int(x) for x in got)
        exp_adapters, exp_full = _storage(n, base, adapter, nbytes)
        if with_adapters != exp_adapters:
            hints = {
                n * adapter * nbytes: "the frozen base model is stored too, once: base + N x adapter",
                n * (base + adapter) * nbytes: "the base model is shared by all tasks: store it once, "
                      "not per task",
                base + n * adapter: "the counts are parameters; multiply by bytes_per_param for bytes",
                (n + 1) * adapter * nbytes: "one base model (base_params), plus one adapter per task",
            }
            hints.pop(exp_adapters, None)
            fail(check, f"{call}: with_adapters = {with_adapters:,} bytes, expected {exp_adapters:,}",
                 hints.get(with_adapters, "with_adapters = bytes_per_param x (base + N x adapter)"))
        if full_copies != exp_full:
            hints = {
                (n + 1) * base * nbytes: "each task's fine-tuned copy replaces the base model: N copies, "
                      "the original is not needed",
                n * base: "the counts are parameters; multiply by bytes_per_param for bytes",
                n * (base + adapter) * nbytes: "a fine-tuned copy is base_params numbers; it has no adapter",
                base * nbytes: "every task needs its own copy: N x base",
            }
            hints.pop(exp_full, None)
            fail(check, f"{call}: full_copies = {full_copies:,} bytes, expected {exp_full:,}",
                 hints.get(full_copies, "full_copies = bytes_per_param x N x base"))
    passed(check, f"{len(cases)} cases, from no task to 1,000 tasks on GPT-2 medium")


# ----------------------------------------------------------------------------- the Pareto front


def _dominates(a: dict[str, Any], b: dict[str, Any], strict_both: bool = False, ties: bool = False) -> bool:
    pa, pb, ba, bb = a["trainable_params"], b["trainable_params"], a["test_bleu"], b["test_bleu"]
    if strict_both:
        return pa < pb and ba > bb
    if ties:  # equal rows dominate each other (wrong)
        return pa <= pb and ba >= bb
    return pa <= pb and ba >= bb and (pa < pb or ba > bb)


def _front(rows: Sequence[dict[str, Any]], **kwargs: bool) -> list[str]:
    return [r["method"] for i, r in enumerate(rows)
            if not any(_dominates(o, r, **kwargs) for j, o in enumerate(rows) if j != i)]


def _row(method: str, params: int, bleu: float) -> dict[str, Any]:
    return {"method": method, "trainable_params": params, "test_bleu": bleu}


def _pareto_cases() -> list[tuple[str, list[dict[str, Any]]]]:
    return [
        ("a showdown where full fine-tuning wins and frozen is worst",
         [_row("frozen", 0, 2.0), _row("full", 1_068_416, 40.0), _row("bitfit", 5_248, 30.0),
          _row("prefix", 360_448, 35.0), _row("prompt", 2_048, 10.0)]),
        ("prefix dominates full (fewer parameters, higher BLEU)",
         [_row("frozen", 0, 1.0), _row("full", 1_000_000, 30.0), _row("bitfit", 5_000, 20.0),
          _row("prefix", 300_000, 33.0), _row("prompt", 2_000, 25.0)]),
        ("the same number of parameters, different BLEU: the lower one is dominated",
         [_row("a", 100, 10.0), _row("b", 100, 12.0), _row("c", 1_000, 11.0)]),
        ("two identical rows: neither dominates the other",
         [_row("a", 50, 5.0), _row("b", 50, 5.0), _row("c", 10, 1.0)]),
        ("a single method", [_row("only", 10, 3.0)]),
        ("more parameters, lower BLEU everywhere: only the first is on the front",
         [_row("small", 10, 30.0), _row("medium", 100, 20.0), _row("large", 1_000, 10.0)]),
    ]


def check_pareto_front(fn: Callable[[list[dict[str, Any]]], list[str]]) -> None:
    """``fn(rows)`` must return the methods (``row["method"]``) that no other row dominates, in the
    order of ``rows``: a row dominates another when it has at most as many trainable parameters
    (``trainable_params``) and at least as high a BLEU (``test_bleu``), and is strictly better in one."""
    check = "check_pareto_front"
    refuse_library(check, fn, LIBRARY["pareto_front"])
    for where, rows in _pareto_cases():
        original = [dict(r) for r in rows]
        call = f"{where}: fn({[(r['method'], r['trainable_params'], r['test_bleu']) for r in rows]})"
        given = [dict(r) for r in rows]
        got = call_student(check, call, fn, given)
        expected = _front(rows)
        if not isinstance(got, list | tuple) or not all(isinstance(m, str) for m in got):
            fail(check, f"{call}: returned {got!r:.100}, expected a list of method names",
                 "return [row['method'] for row in rows if <no other row dominates it>]")
        if given != original:
            fail(check, f"{call}: your function changed its input rows", "read the rows; do not modify them")
        got = list(got)
        if len(set(got)) != len(got):
            fail(check, f"{call}: got {got}, a method appears more than once; expected {expected}",
                 "test each row once against all the others")
        if got == expected:
            continue
        if sorted(got) == sorted(expected):
            fail(check, f"{call}: got {got}, expected {expected}: the right methods in another order",
                 "keep the order of the rows")
        best_bleu = [max(rows, key=lambda r: r["test_bleu"])["method"]]
        variants = [
            (_front(rows, strict_both=True),
             "dominating needs <= in both and < in at least one: a row with the same parameters and a lower "
             "BLEU is dominated"),
            (_front(rows, ties=True), "two rows with identical numbers do not dominate each other: require "
                                      "strictly better in at least one of the two"),
            (_front([{**r, "trainable_params": -r["trainable_params"]} for r in rows]),
             "fewer trainable parameters is better: a dominating row has AT MOST as many"),
            (_front([{**r, "test_bleu": -r["test_bleu"]} for r in rows]),
             "a higher BLEU is better: a dominating row has AT LEAST as high a BLEU"),
            (best_bleu, "the front is not only the best BLEU: a method with fewer parameters is kept unless "
                        "another has fewer-or-equal parameters AND at least its BLEU"),
        ]
        hint = "; or ".join(h for v, h in variants if got == v and v != expected) or (
            "keep a row unless some other row has trainable_params <= its own and test_bleu >= its own, "
            "with at least one strict")
        missing = [m for m in expected if m not in got]
        extra = [m for m in got if m not in expected]
        detail = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                             f"dominated but returned {extra}" if extra else "") if part)
        fail(check, f"{call}: got {got}, expected {expected} ({detail})", hint)
    passed(check, f"{len(_pareto_cases())} sets of rows: ties, equal parameter counts, one row, a showdown")


# ----------------------------------------------------------------------------- one BitFit step by hand


def _bitfit_model(config: GPTConfig, seed: int) -> GPT:
    with preserved_engine_state(), default_dtype(np.float64):
        manual_seed(seed)
        model = GPT(config)
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] = rng.normal(0.0, 0.3, size=p.shape)
    return model


def check_bitfit_adamw_step(fn: Callable[[GPT, np.ndarray, np.ndarray, float], Any]) -> None:
    """``fn(model, ids, labels, lr)`` must take one BitFit training step by hand: train exactly the
    biases and LayerNorm betas (``requires_grad``), compute the next-token loss, backpropagate, and
    apply AdamW's first step (betas 0.9 and 0.999, eps 1e-8, no weight decay) to the trained
    parameters only, returning the loss as a float. It is compared with ``tinypft.optim.AdamW`` on a
    copy of the model; using an optimizer of the library is refused."""
    check = "check_bitfit_adamw_step"
    refuse_library(check, fn, LIBRARY["bitfit_step"])
    rng = np.random.default_rng(11)
    cases = [(GPTConfig(vocab_size=16, context_length=8, d_model=8, n_layers=1, n_heads=2), 2, 6, 1e-2),
             (GPTConfig(vocab_size=20, context_length=10, d_model=8, n_layers=2, n_heads=2, d_ff=12),
              3, 8, 3e-3)]
    for i, (config, B, T, lr) in enumerate(cases):
        mine, ref = _bitfit_model(config, 20 + i), _bitfit_model(config, 20 + i)
        ids = rng.integers(0, config.vocab_size, (B, T))
        labels = ids.copy()
        labels[:, :2] = -100  # the first two tokens of each row are context: no loss
        where = f"a {config.n_layers}-layer GPT (d={config.d_model}), ids {(B, T)}, lr={lr:g}"
        before = {name: p.data.copy() for name, p in mine.named_parameters()}
        got = call_student(check, f"{where}: fn(model, ids, labels, lr)", fn, mine, ids, labels, lr)
        trained = set(bitfit_parameter_names(ref, BitFitConfig()))
        for name, p in ref.named_parameters():
            p.requires_grad = name in trained
        loss = ref.lm_loss(ref(ids).logits, labels)
        loss.backward()
        AdamW([p for p in ref.parameters() if p.requires_grad], lr=lr, weight_decay=0.0).step()
        if not isinstance(got, float | np.floating) or not np.isclose(got, loss.item(), rtol=1e-9):
            fail(check, f"{where}: returned {got!r:.40}, expected the loss before the step, "
                        f"{loss.item():.10g}",
                 "return float(loss.item()) of model.lm_loss(model(ids).logits, labels)")
        params = dict(mine.named_parameters())
        for name, p in params.items():
            if name not in trained and not np.array_equal(p.data, before[name]):
                fail(check, f"{where}: {name} changed, but BitFit keeps every weight frozen",
                     "update only the biases and LayerNorm betas (names ending in .bias)")
            if name in trained and p.requires_grad is False:
                fail(check, f"{where}: {name} does not require grad after the step, but BitFit trains it")
        for name, p in ref.named_parameters():
            if name not in trained:
                continue
            g = p.grad
            clear = np.abs(g).min() > 1e-6  # a gradient far from 0, where the two updates differ
            if clear and np.allclose(params[name].data, before[name] - lr * g, rtol=1e-9, atol=1e-12):
                fail(check, f"{where}: {name} moved by lr * g, the SGD step",
                     "AdamW's first step: m = (1 - beta1) g, v = (1 - beta2) g^2, bias-corrected to g and "
                     "g^2, so each scalar moves by lr * g / (|g| + eps): about lr, whatever the size of g")
            uncorrected = before[name] - lr * (0.1 * g) / (np.sqrt(0.001 * g * g) + 1e-8)
            if clear and np.allclose(params[name].data, uncorrected, rtol=1e-9, atol=1e-12):
                fail(check, f"{where}: {name}: the moments are not bias-corrected",
                     "divide m by 1 - beta1^t and v by 1 - beta2^t (t = 1 on the first step)")
            compare_arrays(check, f"{where}: {name} after the step", params[name].data, p.data,
                           "p -= lr * m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - beta1), "
                           "v_hat = v / (1 - beta2) on step 1; leave the frozen weights alone",
                           atol=1e-12, rtol=1e-7)
    passed(check, f"{len(cases)} models; the loss, the frozen weights untouched and every trained parameter "
                  "after AdamW's first step")


# ----------------------------------------------------------------------------- the infix mask


def check_infix_mask(fn: Callable[[np.ndarray, int, int], Any]) -> None:
    """``fn(infix_start, P, T)`` must return the boolean attention mask (B, T, P + T) of an infix:
    keys are the P infix keys, then the T tokens; token i sees the infix keys when i >= infix_start[b]
    and the tokens 0..i always. It is compared with the mask ``GPT`` builds for ``kv_prefix_start``."""
    check = "check_infix_mask"
    refuse_library(check, fn, LIBRARY["infix_mask"])
    cases = [(np.array([0]), 2, 4), (np.array([3]), 2, 5), (np.array([1, 4, 0]), 3, 4),
             (np.array([5, 2]), 1, 5)]
    for start, P, T in cases:
        where = f"fn(infix_start={start.tolist()}, P={P}, T={T})"
        got = call_student(check, where, fn, start.copy(), P, T)
        expected = GPT._attention_mask(np.ones((len(start), T), bool), P, start, None)[:, 0]  # (B, T, P + T)
        got_array = np.asarray(got)
        if got_array.shape == expected.shape and got_array.dtype.kind == "b" and not np.array_equal(got_array,
                                                                                                   expected):
            after = np.arange(T)[None, :] > start[:, None]
            strict = np.concatenate([np.broadcast_to(after[:, :, None], (len(start), T, P)),
                                     np.broadcast_to(F.causal_mask(T, T), (len(start), T, T))], axis=2)
            if np.array_equal(got_array, strict):
                fail(check, f"{where}: the token at index infix_start does not see the infix",
                     "the infix sits just before token infix_start: that token and all after it see it (>=)")
            every = np.concatenate([np.ones((len(start), T, P), bool),
                                    np.broadcast_to(F.causal_mask(T, T), (len(start), T, T))], axis=2)
            if np.array_equal(got_array, every):
                fail(check, f"{where}: every token sees the infix, as with a prefix",
                     "only the tokens from infix_start[b] on see the infix keys, the source before it not")
        if got_array.shape != expected.shape:
            fail(check, f"{where}: got shape {got_array.shape}, expected {expected.shape} = (B, T, P + T)",
                 "one row per token, one column per key: the P infix keys first, then the T tokens")
        compare_arrays(check, where, got_array.astype(bool), expected,
                       "columns 0..P-1 (the infix): True where the token index >= infix_start[b]; "
                       "columns P..P+T-1: the causal mask of the tokens")
    passed(check, f"{len(cases)} batches, the infix at the start, in the middle and after the last token")
