"""The checkers of lesson 7 (the showdown): right answers pass, wrong ones fail with a message that
names the input and gives a hint, and an unfinished exercise raises its own NotImplementedError.

RIGHT, WRONG and LESSON are run through the generic tests of test_exercises.py; this module adds
the tests particular to this lesson."""

from __future__ import annotations

import numpy as np

from tinypft import exercises

# ----------------------------------------------------------------------------- right answers


def trainable_count(method, config, P):
    d, f, L, k = config.d_model, config.d_ff, config.n_layers, 512
    if method == "frozen":
        return 0
    if method == "full":
        return config.num_parameters()
    if method == "bitfit":
        return L * (4 * d + f + d + 2 * d) + d
    if method == "prefix":
        return P * d + (d * k + k) + (k * 2 * L * d + 2 * L * d)
    if method == "prompt":
        return P * d
    raise ValueError(method)


def storage_for_tasks(n_tasks, base_params, adapter_params, bytes_per_param):
    return bytes_per_param * (base_params + n_tasks * adapter_params), bytes_per_param * n_tasks * base_params


def pareto_front(rows):
    def dominates(a, b):
        no_worse = a["trainable_params"] <= b["trainable_params"] and a["test_bleu"] >= b["test_bleu"]
        better = a["trainable_params"] < b["trainable_params"] or a["test_bleu"] > b["test_bleu"]
        return no_worse and better

    return [row["method"] for row in rows if not any(dominates(other, row) for other in rows)]


def bitfit_adamw_step(model, ids, labels, lr, betas=(0.9, 0.999), eps=1e-8):
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith(".bias") or name.startswith("cls_head.")
    loss = model.lm_loss(model(ids).logits, labels)
    model.zero_grad()
    loss.backward()
    for p in model.parameters():
        if p.requires_grad:
            m_hat = (1 - betas[0]) * p.grad / (1 - betas[0])
            v_hat = (1 - betas[1]) * p.grad**2 / (1 - betas[1])
            p.data -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return float(loss.item())


def infix_mask(infix_start, P, T):
    B = len(infix_start)
    sees = np.arange(T)[None, :] >= np.asarray(infix_start)[:, None]
    causal = np.tril(np.ones((T, T), bool))
    infix = np.broadcast_to(sees[:, :, None], (B, T, P))
    return np.concatenate([infix, np.broadcast_to(causal, (B, T, T))], axis=2)


RIGHT = [
    (exercises.check_bitfit_adamw_step, bitfit_adamw_step),
    (exercises.check_infix_mask, infix_mask),
    (exercises.check_pareto_front, pareto_front),
]
# Checkers a course may set as exercises that the lesson shows as given code instead.
SPARE = [
    (exercises.check_trainable_count, trainable_count),
    (exercises.check_storage_for_tasks, storage_for_tasks),
]


def _bias_step(model, ids, labels, update):
    """A BitFit step that moves each bias by ``update(grad)``: the shape the wrong answers share."""
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith(".bias")
    loss = model.lm_loss(model(ids).logits, labels)
    loss.backward()
    for p in model.parameters():
        if p.requires_grad:
            p.data -= update(p.grad)
    return float(loss.item())


def sgd_step(model, ids, labels, lr):
    return _bias_step(model, ids, labels, lambda g: lr * g)


def every_parameter_step(model, ids, labels, lr):
    loss = model.lm_loss(model(ids).logits, labels)
    loss.backward()
    for p in model.parameters():
        p.data -= lr * np.sign(p.grad)
    return float(loss.item())


def uncorrected_step(model, ids, labels, lr):  # Adam's first moments without the bias correction
    return _bias_step(model, ids, labels, lambda g: lr * (0.1 * g) / (np.sqrt(0.001 * g**2) + 1e-8))

# The right answers above also run through the generic checks in test_exercises.py.


def test_counts_and_bytes_may_be_numpy_integers(capsys):
    exercises.check_trainable_count(lambda *args: np.int64(trainable_count(*args)))
    exercises.check_storage_for_tasks(lambda *args: tuple(np.int64(n) for n in storage_for_tasks(*args)))
    assert capsys.readouterr().out.count("passed") == 2


# ----------------------------------------------------------------------------- wrong answers


def count_with(method, config, P, **changes):
    """The right count, with one method's answer replaced by changes[method](d, f, L, V, P)."""
    d, f, L, V = config.d_model, config.d_ff, config.n_layers, config.vocab_size
    if method in changes:
        return changes[method](d, f, L, V, P)
    return trainable_count(method, config, P)


def counting_with(changes):
    return lambda method, config, P: count_with(method, config, P, **changes)


WRONG_COUNTS = [
    (dict(bitfit=lambda d, f, L, V, P: L * (4 * d + f + d + 2 * d)), "ln_f has a beta"),
    (dict(bitfit=lambda d, f, L, V, P: L * (4 * d + f + d)), "LayerNorm betas: 2 per block"),
    (dict(bitfit=lambda d, f, L, V, P: L * (4 * d + f + d + 4 * d) + 2 * d), "not their gains"),
    (dict(bitfit=lambda d, f, L, V, P: L * (4 * d + 4 * d + d + 2 * d) + d), "d_ff entries"),
    (dict(prefix=lambda d, f, L, V, P: 2 * L * d * P), "STORED after merge"),
    (dict(prefix=lambda d, f, L, V, P: (d * 512 + 512) + (512 * 2 * L * d + 2 * L * d)), r"P' \(P x d\)"),
    (dict(prefix=lambda d, f, L, V, P: P * d + d * 512 + 512 * 2 * L * d), "has a bias"),
    (dict(prompt=lambda d, f, L, V, P: 2 * L * d * P), "input only"),
    (dict(full=lambda d, f, L, V, P: None), r"returned None.*expected an int"),
    (dict(frozen=lambda d, f, L, V, P: 0.0), "expected an int"),
]


def storage_with(n, base, adapter, nbytes, with_adapters=None, full_copies=None):
    right_a, right_f = storage_for_tasks(n, base, adapter, nbytes)
    return (right_a if with_adapters is None else with_adapters,
            right_f if full_copies is None else full_copies)


def front_strict_both(rows):
    return [r["method"] for r in rows if not any(
        o["trainable_params"] < r["trainable_params"] and o["test_bleu"] > r["test_bleu"] for o in rows)]


def front_dropping_ties(rows):
    return [r["method"] for r in rows if not any(
        o is not r and o["trainable_params"] <= r["trainable_params"] and o["test_bleu"] >= r["test_bleu"]
        for o in rows)]


def front_reversed(rows):
    return pareto_front([{**r, "trainable_params": -r["trainable_params"]} for r in rows])


def front_sorted_by_params(rows):
    return [r["method"] for r in sorted(rows, key=lambda r: -r["trainable_params"])
            if r["method"] in pareto_front(rows)]


def front_mutating(rows):
    rows.sort(key=lambda r: r["trainable_params"])
    return pareto_front(rows)


WRONG = [
    (exercises.check_bitfit_adamw_step, sgd_step, "moved by lr \\* g, the SGD step"),
    (exercises.check_bitfit_adamw_step, every_parameter_step, "changed, but BitFit keeps every weight"),
    (exercises.check_bitfit_adamw_step, uncorrected_step, "not bias-corrected"),
    (exercises.check_infix_mask, lambda s, P, T: infix_mask(np.asarray(s) + 1, P, T), "does not see the"),
    (exercises.check_infix_mask, lambda s, P, T: infix_mask(np.zeros_like(s), P, T), "every token sees"),
    (exercises.check_infix_mask, lambda s, P, T: infix_mask(s, P, T)[..., ::-1], "values differ"),
    *[(exercises.check_trainable_count, counting_with(changes), message)
      for changes, message in WRONG_COUNTS],
    (exercises.check_storage_for_tasks,
     lambda n, b, a, nb: storage_with(n, b, a, nb, with_adapters=nb * n * a), "base model is stored too"),
    (exercises.check_storage_for_tasks,
     lambda n, b, a, nb: storage_with(n, b, a, nb, with_adapters=nb * n * (b + a)), "store it once"),
    (exercises.check_storage_for_tasks,
     lambda n, b, a, nb: storage_with(n, b, a, nb, full_copies=nb * (n + 1) * b), "original is not needed"),
    (exercises.check_storage_for_tasks, lambda n, b, a, nb: (b + n * a, n * b),
     "multiply by bytes_per_param"),
    (exercises.check_storage_for_tasks,
     lambda n, b, a, nb: tuple(map(float, storage_for_tasks(n, b, a, nb))), "expected two ints"),
    (exercises.check_storage_for_tasks, lambda n, b, a, nb: storage_for_tasks(n, b, a, nb)[0],
     "expected a pair"),
    (exercises.check_pareto_front, front_strict_both, "same parameters and a lower BLEU is dominated"),
    (exercises.check_pareto_front, front_dropping_ties, "identical numbers do not dominate"),
    (exercises.check_pareto_front, front_reversed, "fewer trainable parameters is better"),
    (exercises.check_pareto_front, lambda rows: [max(rows, key=lambda r: r["test_bleu"])["method"]],
     "not only the best BLEU"),
    (exercises.check_pareto_front, front_sorted_by_params, "another order"),
    (exercises.check_pareto_front, front_mutating, "changed its input rows"),
    (exercises.check_pareto_front, lambda rows: set(pareto_front(rows)),
     "expected a list of method names"),
]
LESSON = "07_showdown.ipynb"  # the notebook whose checkers RIGHT and WRONG exercise
