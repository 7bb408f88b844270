"""The checkers of lesson 4 (BitFit): right answers pass, wrong ones fail with a message that names
the input and gives a hint, and an unfinished exercise raises its own NotImplementedError.

RIGHT, WRONG and LESSON are run through the generic tests of test_exercises.py; this module adds
the tests particular to this lesson."""

from __future__ import annotations

import re

import numpy as np

from tinypft import Function, exercises

# ----------------------------------------------------------------------------- right answers

_COMPONENTS = {"attn.q_proj": "q", "attn.k_proj": "k", "attn.v_proj": "v", "attn.o_proj": "o",
               "mlp.fc_in": "fc_in", "mlp.fc_out": "fc_out", "ln_1": "ln_1", "ln_2": "ln_2"}
_PATTERN = re.compile(r"(?:^|\.)blocks\.(\d+)\.(.+)\.bias$")


def component_and_layer(name):
    """The lesson's helper: 'blocks.3.attn.q_proj.bias' -> ('q', 3); None for anything else."""
    match = _PATTERN.search(name)
    if match is None or match.group(2) not in _COMPONENTS:
        return None
    return _COMPONENTS[match.group(2)], int(match.group(1))


def bias_parameter_names(model):
    return [name for name, _ in model.named_parameters()
            if name.endswith(".bias") or name.startswith("cls_head.")]


def freeze_all_but_biases(model):
    trained = set(bias_parameter_names(model))
    for name, p in model.named_parameters():
        p.requires_grad = name in trained
    return sum(p.size for p in model.parameters() if p.requires_grad)


def _change(before, after, measure):
    changes = {}
    for name, b0 in before.items():
        key = component_and_layer(name)
        if key is not None and name in after:
            changes[key] = measure(np.asarray(b0, np.float64), np.asarray(after[name], np.float64))
    return changes


def bias_change(before, after):
    return _change(before, after, lambda b0, b1: float(np.abs(b0 - b1).sum() / b0.size))


def value_bias_grad(w_o, grad_b_o):
    return w_o.T @ grad_b_o


class ScatterAdd(Function):
    @staticmethod
    def forward(ctx, weight, delta, *, index):
        ctx.save_for_backward(index)
        out = weight.copy()
        out.reshape(-1)[index] += delta
        return out

    @staticmethod
    def backward(ctx, g):
        (index,) = ctx.saved
        d_weight = g if ctx.needs_input_grad[0] else None
        d_delta = g.reshape(-1)[index] if ctx.needs_input_grad[1] else None
        return d_weight, d_delta


RIGHT = [
    (exercises.check_value_bias_grad, value_bias_grad),
    (exercises.check_scatter_add, ScatterAdd),
    (exercises.check_bias_change, bias_change),
]
# Checkers a course may set as exercises that the lesson shows as given code instead.
SPARE = [
    (exercises.check_bias_parameter_names, bias_parameter_names),
    (exercises.check_freeze_all_but_biases, freeze_all_but_biases),
]

# The right answers above also run through the generic checks in test_exercises.py.


def test_bias_change_may_use_numpy_floats(capsys):
    exercises.check_bias_change(lambda b, a: {k: np.float64(v) for k, v in bias_change(b, a).items()})
    exercises.check_freeze_all_but_biases(lambda model: np.int64(freeze_all_but_biases(model)))
    assert capsys.readouterr().out.count("passed") == 2


class ScatterInPlace(ScatterAdd):
    @staticmethod
    def forward(ctx, weight, delta, *, index):
        ctx.save_for_backward(index)
        weight.reshape(-1)[index] += delta
        return weight


class ScatterWithoutGather(ScatterAdd):
    @staticmethod
    def backward(ctx, g):
        return g, g.reshape(-1)[: len(ctx.saved[0])]


class ScatterAlwaysBoth(ScatterAdd):
    @staticmethod
    def backward(ctx, g):
        (index,) = ctx.saved
        return g, g.reshape(-1)[index]


# ----------------------------------------------------------------------------- wrong answers


def _names_where(keep):
    return lambda model: [name for name, _ in model.named_parameters() if keep(name)]


def _freeze_to(names_of):
    def freeze(model):
        trained = set(names_of(model))
        for name, p in model.named_parameters():
            p.requires_grad = name in trained
        return sum(p.size for p in model.parameters() if p.requires_grad)

    return freeze


def only_unfreezes_biases(model):
    names = set(bias_parameter_names(model))
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad = True
    return sum(p.size for name, p in model.named_parameters() if name in names)


def only_freezes_the_rest(model):
    names = set(bias_parameter_names(model))
    for name, p in model.named_parameters():
        if name not in names:
            p.requires_grad = False
    return sum(p.size for name, p in model.named_parameters() if name in names)


def counts_tensors(model):
    freeze_all_but_biases(model)
    return sum(1 for p in model.parameters() if p.requires_grad)


def counts_everything(model):
    freeze_all_but_biases(model)
    return sum(p.size for p in model.parameters())


def zeroes_the_weights(model):
    count = freeze_all_but_biases(model)
    for p in model.parameters():
        if not p.requires_grad:
            p.data[...] = 0.0
    return count


def freezes_by_setting_flags_in_names(model):
    freeze_all_but_biases(model)
    return float(sum(p.size for p in model.parameters() if p.requires_grad))


def change_with_ln_f(before, after):
    changes = bias_change(before, after)
    if "ln_f.bias" in before and "ln_f.bias" in after:
        changes[("ln_f", 0)] = float(np.abs(before["ln_f.bias"] - after["ln_f.bias"]).mean())
    return changes


def change_by_name(before, after):
    return {name: float(np.abs(b0 - after[name]).mean()) for name, b0 in before.items()
            if name.endswith(".bias") and name in after and component_and_layer(name) is not None}


def change_without_layer_norm(before, after):
    return {key: value for key, value in bias_change(before, after).items() if not key[0].startswith("ln")}


def change_in_place(before, after):
    changes = bias_change(before, after)
    for b0 in before.values():
        b0 -= b0  # "reset" the state it was given
    return changes


def change_in_float32(before, after):
    return _change({n: np.asarray(a, np.float32) for n, a in before.items()}, after,
                   lambda b0, b1: float(np.abs(b0.astype(np.float16) - b1.astype(np.float16)).mean()))


WRONG = [
    (exercises.check_value_bias_grad, lambda w_o, g: w_o @ g, "W_o grad_b_o.*transposed"),
    (exercises.check_value_bias_grad, lambda w_o, g: g, "expected.*sum the gradient over positions"),
    (exercises.check_scatter_add, ScatterInPlace, "changed the weight in place"),
    (exercises.check_scatter_add, ScatterWithoutGather, "gradient of delta.*a gather"),
    (exercises.check_scatter_add, ScatterAlwaysBoth, "computed a gradient for.*which does not need one"),
    (exercises.check_bias_parameter_names, _names_where(lambda n: n.endswith(".bias")),
     "trains its classifier"),
    (exercises.check_bias_parameter_names, _names_where(lambda n: n.endswith(".bias") and "k_proj" not in n),
     "b_k gets"),
    (exercises.check_bias_parameter_names,
     _names_where(lambda n: n.endswith(".bias") or n.startswith(("cls_head.", "ln_")) or ".ln_" in n),
     "gamma, which stays frozen"),
    (exercises.check_bias_parameter_names,
     _names_where(lambda n: (n.endswith(".bias") and ".ln_" not in n and not n.startswith("ln_"))
                  or n.startswith("cls_head.")), "LayerNorm betas"),
    (exercises.check_bias_parameter_names,
     _names_where(lambda n: (n.endswith(".bias") and n != "ln_f.bias") or n.startswith("cls_head.")),
     "ln_f, has a beta"),
    (exercises.check_bias_parameter_names,
     _names_where(lambda n: (n.endswith(".bias") and ".mlp." not in n) or n.startswith("cls_head.")),
     "feed-forward"),
    (exercises.check_bias_parameter_names,
     _names_where(lambda n: n.endswith(".bias") or n.startswith("cls_head.") or n.endswith("_proj.weight")),
     "weight matrices"),
    (exercises.check_bias_parameter_names,
     lambda m: [p for n, p in m.named_parameters() if n.endswith(".bias")], "expected str"),
    (exercises.check_bias_parameter_names, lambda m: sorted(bias_parameter_names(m)), "another order"),
    (exercises.check_bias_parameter_names, lambda m: bias_parameter_names(m) * 2, "more than once"),
    (exercises.check_bias_parameter_names, freeze_all_but_biases, "expected a list of names"),
    (exercises.check_bias_parameter_names,
     lambda m: (freeze_all_but_biases(m), bias_parameter_names(m))[1], "changed requires_grad"),
    (exercises.check_freeze_all_but_biases, only_unfreezes_biases,
     r"every parameter trainable.*should be frozen.*requires_grad = False"),
    (exercises.check_freeze_all_but_biases, only_freezes_the_rest, r"every parameter frozen before.*= True"),
    (exercises.check_freeze_all_but_biases, counts_tensors, "scalars \\(p.size\\), not parameter tensors"),
    (exercises.check_freeze_all_but_biases, counts_everything, "count only the parameters that train"),
    (exercises.check_freeze_all_but_biases, _freeze_to(_names_where(lambda n: n.endswith(".bias"))),
     r"classification head.*should train: cls_head.weight.*trains its classifier"),
    (exercises.check_freeze_all_but_biases,
     _freeze_to(_names_where(lambda n: n.endswith(".bias") or n.startswith("cls_head.") or ".ln_" in n)),
     "gamma"),
    (exercises.check_freeze_all_but_biases, zeroes_the_weights, "changed parameter values"),
    (exercises.check_freeze_all_but_biases, freezes_by_setting_flags_in_names, "expected an int"),
    (exercises.check_freeze_all_but_biases, lambda m: (freeze_all_but_biases(m), None)[1], "expected an int"),
    (exercises.check_bias_change, lambda b, a: _change(b, a, lambda b0, b1: float(np.abs(b0 - b1).sum())),
     "divide by the bias's size dim"),
    (exercises.check_bias_change,
     lambda b, a: _change(b, a, lambda b0, b1: float(np.linalg.norm(b0 - b1) / b0.size)), "not the L2 norm"),
    (exercises.check_bias_change, lambda b, a: _change(b, a, lambda b0, b1: float(abs((b0 - b1).mean()))),
     "opposite sign must not cancel"),
    (exercises.check_bias_change, lambda b, a: _change(b, a, lambda b0, b1: float(np.abs(b0 - b1).max())),
     "not the maximum"),
    (exercises.check_bias_change,
     lambda b, a: _change(b, a, lambda b0, b1: float(np.abs(b0 - b1).sum() / np.abs(b0).sum())),
     "not relative"),
    (exercises.check_bias_change, change_with_ln_f, "ln_f is not per layer"),
    (exercises.check_bias_change, change_by_name, r"key the dict by \(component, layer\)"),
    (exercises.check_bias_change, change_without_layer_norm, "ln_1.bias and ln_2.bias belong"),
    (exercises.check_bias_change, change_in_place, "changed its inputs"),
    (exercises.check_bias_change, change_in_float32, "computed in float64"),
    (exercises.check_bias_change, lambda b, a: list(bias_change(b, a).items()), "expected a dict"),
    (exercises.check_bias_change, lambda b, a: {k: [v] for k, v in bias_change(b, a).items()},
     "expected a float"),
]
LESSON = "04_bitfit.ipynb"  # the notebook whose checkers RIGHT and WRONG exercise
