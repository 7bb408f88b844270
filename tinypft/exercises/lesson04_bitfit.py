"""Checkers for lesson 4 (BitFit): the value bias's gradient derived from the output bias's, the
scatter that trains a random subset of weights (BitFit's control), and how far each bias moved,
(1/dim) ||b0 - bF||_1 per component and layer; also which parameters BitFit trains and freezing
everything else, for a course that sets those as exercises.

The references are ``tinypft.peft.bitfit`` and ``tinypft.peft.analysis``. Each checker reports as
``common`` describes: one line when everything agrees, else an ``AssertionError`` naming the input,
with a hint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine import Tensor, default_dtype, gradcheck, manual_seed
from ..engine import functional as F
from ..engine.autograd import Context, Function
from ..engine.gradcheck import GradcheckError
from ..model import GPT, CausalSelfAttention, GPTConfig
from ..peft import BitFitModel, analysis, get_peft_model
from ..peft.bitfit import bitfit_parameter_names
from ..peft.random_subset import AddAt, RandomSubsetModel
from .common import call_student, compare_arrays, fail, passed, preserved_engine_state, refuse_library

# What each checker refuses: tinypft's own implementation of the exercise (label -> object).
LIBRARY: dict[str, dict[str, Any]] = {
    "bias_names": {"bitfit_parameter_names (tinypft.peft.bitfit.bitfit_parameter_names)":
                   bitfit_parameter_names,
                   "BitFitModel (tinypft.peft.BitFitModel)": BitFitModel,
                   "get_peft_model (tinypft.peft.get_peft_model)": get_peft_model},
    "value_bias_grad": {"gradcheck (tinypft.engine.gradcheck.gradcheck)": gradcheck},
    "scatter_add": {"AddAt (tinypft.peft.random_subset.AddAt)": AddAt,
                    "RandomSubsetModel (tinypft.peft.RandomSubsetModel)": RandomSubsetModel},
    "bias_change": {"bias_change (tinypft.peft.analysis.bias_change)": analysis.bias_change,
                    "bias_change_table (tinypft.peft.analysis.bias_change_table)":
                    analysis.bias_change_table},
}

# (where, config, classification labels or None)
_MODEL_CASES: list[tuple[str, GPTConfig, int | None]] = [
    ("a 1-layer GPT (d=8, d_ff=32)", GPTConfig(vocab_size=32, context_length=16, d_model=8, n_layers=1,
                                               n_heads=2), None),
    ("a 3-layer GPT (d=8, d_ff=32)", GPTConfig(vocab_size=32, context_length=16, d_model=8, n_layers=3,
                                               n_heads=2), None),
    ("a 2-layer GPT with a 3-class classification head (model.cls_head)",
     GPTConfig(vocab_size=32, context_length=16, d_model=8, n_layers=2, n_heads=2), 3),
    ("a 2-layer GPT with d_ff=12 (not 4d)",
     GPTConfig(vocab_size=32, context_length=16, d_model=8, n_layers=2, n_heads=1, d_ff=12), None),
]


def _build(config: GPTConfig, num_labels: int | None) -> GPT:
    with preserved_engine_state():
        manual_seed(4)
        model = GPT(config)
        if num_labels is not None:
            model.add_classification_head(num_labels)
    return model


def _expected_names(model: GPT) -> list[str]:
    from ..peft import BitFitConfig
    from ..peft.bitfit import bitfit_parameter_names

    return bitfit_parameter_names(model, BitFitConfig())


def _names_hint(got: set[str], expected: set[str]) -> str:
    """A hint for the first kind of mistake found in the difference between two sets of names."""
    extra, missing = got - expected, expected - got
    if any(n.split(".")[-2].startswith("ln") and n.endswith(".weight") for n in extra):
        return ("a LayerNorm's .weight is its scale gamma, which stays frozen: only its beta (.bias) trains, "
                "LN(x) = gamma * (x - mu) / sigma + beta")
    if any(n.endswith(".weight") and not n.startswith("cls_head.") for n in extra):
        return "weight matrices (and the embeddings) stay frozen: BitFit trains the biases"
    if "cls_head.weight" in missing or "cls_head.bias" in missing:
        return ("when the model has a task head (model.cls_head is not None), all of it trains too, weight "
                "and bias: the paper's code trains its classifier")
    if any("k_proj" in n for n in missing):
        return "b_k gets (almost) no gradient, but BitFit trains it anyway, as the paper does"
    if missing == {"ln_f.bias"}:
        return "the final LayerNorm, ln_f, has a beta too"
    if any(".ln_" in n or n.startswith("ln_") for n in missing):
        return "the LayerNorm betas (ln_1.bias, ln_2.bias, ln_f.bias) are biases too"
    if any(".mlp." in n for n in missing):
        return "the feed-forward network's biases (mlp.fc_in.bias, mlp.fc_out.bias) train too"
    if any(".attn." in n for n in missing):
        return "all four attention biases train: q_proj, k_proj, v_proj and o_proj"
    return "every name in model.named_parameters() that ends in '.bias', plus the head's parameters"


def _show_names(names: Any, limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_bias_parameter_names(fn: Callable[[GPT], Any]) -> None:
    """``fn(model)`` must return the names of the parameters BitFit trains on a tinypft ``GPT``, in the
    order of ``model.named_parameters()``: every attention and FFN bias and every LayerNorm beta, plus
    the classification head (weight and bias) when the model has one; without changing the model."""
    check = "check_bias_parameter_names"
    refuse_library(check, fn, LIBRARY["bias_names"])
    for where, config, num_labels in _MODEL_CASES:
        model = _build(config, num_labels)
        call = f"{where}: fn(model)"
        got = call_student(check, call, fn, model, hint="loop over model.named_parameters()")
        expected = _expected_names(model)
        if not isinstance(got, list | tuple):
            fail(check, f"{call}: returned {type(got).__name__}, expected a list of names",
                 "return a list of str: [name for name, p in model.named_parameters() if ...]")
        bad = [x for x in got if not isinstance(x, str)]
        if bad:
            kind = type(bad[0]).__name__
            fail(check, f"{call}: the list holds {kind}, expected str (the parameters' names)",
                 "named_parameters() gives (name, parameter) pairs: keep the name")
        if any(not p.requires_grad for p in model.parameters()):
            fail(check, f"{call}: your function changed requires_grad",
                 "only list the names here; freezing is the next exercise")
        if len(set(got)) != len(got):
            fail(check, f"{call}: some names appear more than once", "list each name once")
        if set(got) != set(expected):
            extra, missing = set(got) - set(expected), set(expected) - set(got)
            message = f"{call}: got {len(got)} names, expected {len(expected)}"
            if missing:
                message += f"\n  missing: {_show_names(missing)}"
            if extra:
                message += f"\n  not trained by BitFit: {_show_names(extra)}"
            fail(check, message, _names_hint(set(got), set(expected)))
        if list(got) != expected:
            fail(check, f"{call}: the right names in another order; first: {list(got)[:3]}, expected "
                        f"{expected[:3]}", "keep the order of model.named_parameters()")
    passed(check, f"{len(_MODEL_CASES)} models, 1 to 3 layers, with and without a classification head; the "
                  "same names as tinypft.peft.bitfit.bitfit_parameter_names")


def check_freeze_all_but_biases(fn: Callable[[GPT], Any]) -> None:
    """``fn(model)`` must set ``requires_grad`` True exactly for BitFit's parameters (the biases, the
    LayerNorm betas and a classification head) and False for every other parameter, whatever the flags
    were before, leave the values alone, and return the number of trainable scalars."""
    from ..peft import BitFitConfig, get_peft_model

    check = "check_freeze_all_but_biases"
    refuse_library(check, fn, LIBRARY["bias_names"])
    cases = [(f"{where}, every parameter trainable (as a GPT starts)", config, labels, True)
             for where, config, labels in _MODEL_CASES]
    where, config, labels = _MODEL_CASES[2]
    cases.append((f"{where}, every parameter frozen before the call", config, labels, False))
    for where, config, num_labels, start in cases:
        model = _build(config, num_labels)
        for p in model.parameters():
            p.requires_grad = start
        before = {name: p.data.copy() for name, p in model.named_parameters()}
        call = f"{where}: fn(model)"
        hint = "for name, p in model.named_parameters(): p.requires_grad = ..."
        got = call_student(check, call, fn, model, hint=hint)
        expected = set(_expected_names(model))
        params = dict(model.named_parameters())
        trainable = {name for name, p in params.items() if p.requires_grad}
        if any(not np.array_equal(before[name], p.data) for name, p in params.items()):
            fail(check, f"{call}: your function changed parameter values", "only set requires_grad")
        if trainable != expected:
            still, frozen = trainable - expected, expected - trainable
            message = f"{call}: {len(trainable)} parameters require grad afterwards, expected {len(expected)}"
            if still:
                message += f"\n  should be frozen: {_show_names(still)}"
                hint = ("set p.requires_grad = False for every parameter BitFit does not train: a new GPT "
                        "starts with every parameter trainable")
                scales = {n for n in params if n.endswith(".weight") and n.split(".")[-2].startswith("ln")}
                if still <= scales:  # LayerNorm gammas left trainable
                    hint = _names_hint(trainable, expected)
            if frozen:
                message += f"\n  should train: {_show_names(frozen)}"
                hint = _names_hint(trainable, expected)
                if not start and not trainable:
                    hint = ("set p.requires_grad = True for BitFit's parameters too: a model may come in "
                            "with them frozen")
            fail(check, message, hint)
        count = sum(params[name].size for name in expected)
        if isinstance(got, bool) or not isinstance(got, int | np.integer):
            fail(check, f"{call}: returned {got!r:.60}, expected an int (the number of trainable scalars)",
                 "return sum(p.size for p in model.parameters() if p.requires_grad)")
        if int(got) != count:
            hints = {
                len(expected): "count scalars (p.size), not parameter tensors",
                sum(p.size for p in params.values()): "count only the parameters that train",
                sum(p.size for name, p in params.items() if name.endswith(".bias")):
                    "the head's weight trains too, so it counts",
            }
            fail(check, f"{call}: returned {int(got):,}, expected {count:,} trainable scalars",
                 hints.get(int(got), "the sum of p.size over the parameters that require grad"))
        library = get_peft_model(_build(config, num_labels), BitFitConfig()).get_nb_trainable_parameters()[0]
        if library != count:  # pragma: no cover - the library and the names disagree
            fail(check, f"{where}: BitFitModel trains {library:,} scalars, the names give {count:,}")
    passed(check, f"{len(cases)} models, with and without a head, starting trainable or frozen; the same "
                  "flags and count as get_peft_model(model, BitFitConfig())")


# ----------------------------------------------------------------------------- the bias change


def _state_cases() -> list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(where, before, after) pairs of state dicts with biases of different sizes (d = 8, d_ff = 24)."""
    config = GPTConfig(vocab_size=32, context_length=16, d_model=8, n_layers=2, n_heads=2, d_ff=24)
    with preserved_engine_state(), default_dtype(np.float64):
        manual_seed(5)
        state = GPT(config).state_dict()
    rng = np.random.default_rng(40)
    state = {name: a + 0.05 * rng.standard_normal(a.shape) for name, a in state.items()}  # biases start at 0

    def moved(source: dict[str, np.ndarray], scale: float = 0.1) -> dict[str, np.ndarray]:
        # every parameter moves (the weights too: they must be ignored), by a different amount per name
        return {name: a + scale * rng.uniform(0.1, 2.0) * rng.standard_normal(a.shape) for name, a in
                source.items()}

    cases = [("two GPT state dicts (every bias and weight changed)", state, moved(state))]
    prefixed = {f"base_model.{name}": a for name, a in state.items()}
    cases.append(("PeftModel state dicts (names start with 'base_model.')", prefixed, moved(prefixed)))
    only = {name: a for name, a in moved(state).items() if ".q_proj." in name or ".fc_in." in name}
    cases.append(("`after` holds only the q_proj and fc_in parameters (the q + fc_in variant)", state, only))
    small = moved(state, scale=1e-4)
    cases.append(("small changes, around 1e-4", state, small))
    float32 = {name: a.astype(np.float32) for name, a in state.items()}
    cases.append(("float32 arrays", float32, {n: a.astype(np.float32) for n, a in moved(state).items()}))
    return cases


def _reference_change(
    before: dict[str, np.ndarray], after: dict[str, np.ndarray]
) -> dict[tuple[str, int], float]:
    from ..peft.analysis import bias_change

    return bias_change(before, after)


def _change_variants(
    before: dict[str, np.ndarray], after: dict[str, np.ndarray]
) -> list[tuple[dict[tuple[str, int], float], str]]:
    """What common mistakes give, each with its hint."""
    from ..peft.analysis import BIAS_PATTERN, COMPONENT_OF

    measures: list[tuple[Callable[[np.ndarray, np.ndarray], float], str]] = [
        (lambda b0, b1: float(np.abs(b0 - b1).sum()),
         "divide by the bias's size dim: (1/dim) ||b0 - bF||_1 is the mean absolute change of its entries, "
         "so a d_ff-wide FFN bias and a d-wide one compare fairly"),
        (lambda b0, b1: float(np.sqrt(np.square(b0 - b1).sum()) / b0.size),
         "the paper's norm is the L1 norm, the sum of absolute values, not the L2 norm"),
        (lambda b0, b1: float(np.sqrt(np.square(b0 - b1).sum())),
         "(1/dim) ||b0 - bF||_1: the L1 norm (sum of |differences|), divided by dim"),
        (lambda b0, b1: float(abs((b0 - b1).mean())),
         "take the absolute value of every entry's change before averaging: changes of opposite sign must "
         "not cancel"),
        (lambda b0, b1: float(np.abs(b0 - b1).max()),
         "the mean of |b0 - bF| over the entries, not the maximum"),
        (lambda b0, b1: float(np.abs(b0 - b1).sum() / max(np.abs(b0).sum(), 1e-300)),
         "the change itself, not relative to ||b0||_1: divide by the number of entries dim"),
    ]
    variants = []
    for measure, hint in measures:
        values = {}
        for name, b0 in before.items():
            match = BIAS_PATTERN.search(name)
            if match is None or name not in after:
                continue
            b0_64, b1_64 = np.asarray(b0, np.float64), np.asarray(after[name], np.float64)
            values[(COMPONENT_OF[match.group(2)], int(match.group(1)))] = measure(b0_64, b1_64)
        variants.append((values, hint))
    return variants


def _same_values(got: dict[Any, Any], expected: dict[Any, float], rtol: float = 1e-5) -> bool:
    return set(got) == set(expected) and all(
        np.isclose(float(got[key]), value, rtol=rtol, atol=1e-12) for key, value in expected.items()
    )


def check_bias_change(fn: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], Any]) -> None:
    """``fn(before, after)`` with two state dicts (name -> array) must return a dict
    ``{(component, layer): (1/dim) * ||b0 - bF||_1}`` for every per-layer bias in both (components
    q, k, v, o, fc_in, fc_out, ln_1, ln_2; the final LayerNorm and the weights left out), as
    ``tinypft.peft.analysis.bias_change`` does, without changing its inputs."""
    check = "check_bias_change"
    refuse_library(check, fn, LIBRARY["bias_change"])
    for where, before, after in _state_cases():
        call = f"{where}: fn(before, after)"
        copies = ({n: a.copy() for n, a in before.items()}, {n: a.copy() for n, a in after.items()})
        hint = "for name in before: if name is in after and component_and_layer(name) is not None ..."
        got = call_student(check, call, fn, before, after, hint=hint)
        if any(not np.array_equal(a, copies[0][n]) for n, a in before.items()) or any(
            not np.array_equal(a, copies[1][n]) for n, a in after.items()
        ):
            fail(check, f"{call}: your function changed its inputs",
                 "compute on copies, never write into them")
        expected = _reference_change(before, after)
        if not isinstance(got, dict):
            fail(check, f"{call}: returned {type(got).__name__}, "
                        "expected a dict {(component, layer): change}")
        keys = set(got)
        if keys != set(expected):
            extra, missing = keys - set(expected), set(expected) - keys
            hint = "one entry per per-layer bias in both state dicts, keyed by component_and_layer(name)"
            if any(isinstance(k, str) for k in keys):
                hint = "key the dict by (component, layer), e.g. ('q', 0), as component_and_layer(name) gives"
            elif any(isinstance(k, tuple) and len(k) == 2 and k[0] == "ln_f" for k in extra):
                hint = "ln_f is not per layer: leave the final LayerNorm out of the table"
            elif missing and all(k[0] in ("ln_1", "ln_2") for k in missing):
                hint = "the LayerNorm betas ln_1.bias and ln_2.bias belong in the table too"
            elif extra and not missing:
                hint = "only names present in both state dicts, and only biases (no weights)"
            message = f"{call}: got {len(keys)} entries, expected {len(expected)}"
            if missing:
                message += f"\n  missing: {sorted(missing, key=str)[:6]}"
            if extra:
                message += f"\n  unexpected: {sorted(extra, key=str)[:6]}"
            fail(check, message, hint)
        bad = [k for k in expected if not isinstance(got[k], float | np.floating | int | np.integer)]
        if bad:
            fail(check, f"{call}: the value for {bad[0]} is {type(got[bad[0]]).__name__}, expected a float",
                 "return float(...) of the mean absolute change")
        if not _same_values(got, expected):
            hint = "(1/dim) ||b0 - bF||_1 = np.abs(b0 - bF).sum() / b0.size, computed in float64"
            for candidate, candidate_hint in _change_variants(before, after):
                if _same_values(got, candidate):
                    hint = candidate_hint
                    break
            key = next(k for k in expected if not _same_values({k: got[k]}, {k: expected[k]}))
            fail(check, f"{call}: {key}: got {float(got[key]):.6g}, expected {expected[key]:.6g}", hint)
    passed(check, "5 pairs of state dicts: GPT and PeftModel names, a partial `after`, tiny changes, "
                  "float32; the same table as tinypft.peft.analysis.bias_change")


# ----------------------------------------------------------------------------- the value bias


def check_value_bias_grad(fn: Callable[[np.ndarray, np.ndarray], Any]) -> None:
    """``fn(w_o, grad_b_o)`` must return the gradient of ``v_proj.bias`` from ``o_proj.weight`` (d, d) and
    the gradient of ``o_proj.bias`` (d,) alone: W_o^T grad_b_o, since every attention row sums to 1.
    It is compared with the backward pass of attention modules on random inputs; running a backward
    pass or a gradient check inside the function is refused."""
    check = "check_value_bias_grad"
    refuse_library(check, fn, LIBRARY["value_bias_grad"],
                   {"backward": "backward pass (Tensor.backward): derive the gradient instead"})
    rng = np.random.default_rng(8)
    cases = [(8, 2, 1, 5), (12, 3, 2, 4), (6, 1, 3, 6)]
    for d, H, B, T in cases:
        config = GPTConfig(vocab_size=8, context_length=8, d_model=d, n_layers=1, n_heads=H)
        with preserved_engine_state(), default_dtype(np.float64):
            attn = CausalSelfAttention(config)
        for _, p in attn.named_parameters():
            p.data[...] = rng.normal(0.0, 0.5, size=p.shape)
        x = Tensor(rng.standard_normal((B, T, d)), dtype=np.float64)
        mask = np.broadcast_to(F.causal_mask(T, T), (B, 1, T, T)).copy()
        if B > 1:
            mask[1, :, :, :2] = False  # a left-padded row: its first two queries see no key at all
        out, _ = attn(x, mask)
        attn.zero_grad()
        out.backward(rng.standard_normal(out.shape))
        w_o, grad_b_o = attn.o_proj.weight.data.copy(), attn.o_proj.bias.grad.copy()
        expected = attn.v_proj.bias.grad.copy()
        where = f"d_model={d}, {H} head(s), x of shape {(B, T, d)}"
        got = call_student(check, f"{where}: fn(w_o, grad_b_o)", fn, w_o, grad_b_o)
        got_array = np.asarray(got.data if isinstance(got, Tensor) else got, dtype=np.float64)
        if got_array.shape == expected.shape and np.allclose(got_array, w_o @ grad_b_o) and \
                not np.allclose(expected, w_o @ grad_b_o):
            fail(check, f"{where}: this is W_o grad_b_o; the gradient goes back through W_o transposed",
                 "o_proj computes y W_o^T + b_o (Linear's layout: weight is (out, in)); the gradient of its "
                 "input y is g W_o")
        if got_array.shape != expected.shape or not np.allclose(got_array, expected, atol=1e-10, rtol=1e-8):
            fail(check, f"{where}: got {np.array2string(got_array, precision=4, threshold=8)}, expected "
                        f"{np.array2string(expected, precision=4, threshold=8)}",
                 "b_v is added to every value v_j; each attention row sums to 1, so every output y_t gets "
                 "exactly b_v, and o_proj maps it like an input: sum the gradient over positions and map it "
                 "back through W_o")
    passed(check, f"{len(cases)} attention modules, against their backward pass, with a padded row")


# ----------------------------------------------------------------------------- the random-subset scatter


def check_scatter_add(op: type) -> None:
    """``op`` must be a ``Function``: ``forward(ctx, weight, delta, *, index)`` returns a copy of the
    weight (out, in) with ``delta`` (n,) added at the flat positions ``index`` (n,) (the input left
    unchanged), and ``backward(ctx, g)`` returns ``(g, g.flat[index])``, None where
    ``ctx.needs_input_grad`` is False; ``op.apply`` passes a gradcheck."""
    check = "check_scatter_add"
    refuse_library(check, op, LIBRARY["scatter_add"])
    if not (isinstance(op, type) and issubclass(op, Function)):
        fail(check, f"expected a subclass of tinypft.Function, got {op!r}",
             "write `class ScatterAdd(Function):` with static methods "
             "forward(ctx, weight, delta, *, index) and backward(ctx, g)")
    rng = np.random.default_rng(9)
    cases = [((4, 5), 3), ((6, 3), 18), ((3, 8), 1), ((5, 5), 7)]
    for shape, n in cases:
        weight = rng.standard_normal(shape)
        index = rng.choice(weight.size, size=n, replace=False)
        delta = rng.standard_normal(n)
        where = f"weight {shape}, {n} position(s)"
        before = weight.copy()
        ctx = Context((True, True))
        forward = functools.partial(op.forward, ctx, weight, delta, index=index)
        out = call_student(check, f"{where}: forward", forward)
        if not np.array_equal(weight, before):
            fail(check, f"{where}: forward changed the weight in place",
                 "the frozen weight must stay as it is: add to a copy (weight.copy())")
        expected = before.copy()
        expected.reshape(-1)[index] += delta
        hint = "out = weight.copy(); out.reshape(-1)[index] += delta (flat positions, row-major)"
        compare_arrays(check, f"{where}: forward", out, expected, hint)
        g = rng.standard_normal(shape)
        grads = call_student(check, f"{where}: backward", op.backward, ctx, g)
        if not isinstance(grads, tuple | list) or len(grads) != 2:
            fail(check, f"{where}: backward returned {grads!r:.80}, expected a pair (d_weight, d_delta)")
        compare_arrays(check, f"{where}: gradient of weight", grads[0], g,
                       "out depends on the weight through the identity: its gradient is g itself")
        compare_arrays(check, f"{where}: gradient of delta", grads[1], g.reshape(-1)[index],
                       "delta[i] was added at flat position index[i], so its gradient is "
                       "g.reshape(-1)[index] (the backward of a scatter is a gather)")
        for needs in ((True, False), (False, True)):
            ctx = Context(needs)
            op.forward(ctx, weight, delta, index=index)
            grads = op.backward(ctx, g)
            frozen = needs.index(False)
            if grads[frozen] is not None:
                fail(check, f"{where}: backward with ctx.needs_input_grad={needs} computed a gradient for "
                            f"{('weight', 'delta')[frozen]}, which does not need one",
                     "return None for an input whose ctx.needs_input_grad entry is False: the frozen weight "
                     "of a random subset needs no gradient")
        w = Tensor(weight, requires_grad=True, dtype=np.float64)
        dl = Tensor(delta, requires_grad=True, dtype=np.float64)
        try:
            gradcheck(functools.partial(op.apply, index=index), [w, dl], names=["weight", "delta"])
        except NotImplementedError:
            raise
        except GradcheckError as exc:
            fail(check, f"{where}: through the graph (op.apply and .backward()): {exc}")
    passed(check, f"{len(cases)} weights and index sets: forward, backward, frozen inputs and gradcheck")
