"""Tests of tinypft.optim: updates against PyTorch, frozen parameters, checkpoints, schedules, clipping."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import pytest

import tinypft
from tinypft import Tensor
from tinypft.nn import Linear, Parameter
from tinypft.optim import SGD, AdamW, clip_grad_norm_, get_schedule, lr_at, lr_lambda

SHAPES = [(3, 4), (4,), (2, 3, 5), ()]


def _params(seed: int = 0) -> list[Parameter]:
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(shape), dtype=np.float64) for shape in SHAPES]


def _gradients(steps: int, seed: int = 1) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(steps)]


def _run_ours(make_optimizer, grads):
    params = _params()
    optimizer = make_optimizer([{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-3}])
    trajectory = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        optimizer.step()
        trajectory.append([p.data.copy() for p in params])
    return trajectory


def _run_torch(make_optimizer, grads):
    torch = pytest.importorskip("torch")
    params = [torch.tensor(p.data, requires_grad=True) for p in _params()]
    optimizer = make_optimizer([{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-3}])
    trajectory = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = torch.tensor(g)
        optimizer.step()
        trajectory.append([p.detach().numpy().copy() for p in params])
    return trajectory


def _assert_same_trajectory(ours, theirs):
    for step, (a_params, b_params) in enumerate(zip(ours, theirs)):
        for i, (a, b) in enumerate(zip(a_params, b_params)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"step {step + 1}, parameter {i}")
    moved = max(np.abs(a - b.data).max() for a, b in zip(ours[-1], _params()))
    assert moved > 1e-3  # the comparison is not vacuous


def test_adamw_matches_torch():
    torch = pytest.importorskip("torch")
    grads = _gradients(20)
    ours = _run_ours(lambda groups: AdamW(groups, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), grads)
    theirs = _run_torch(
        lambda groups: torch.optim.AdamW(groups, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), grads
    )
    _assert_same_trajectory(ours, theirs)


def test_sgd_with_momentum_and_weight_decay_matches_torch():
    torch = pytest.importorskip("torch")
    grads = _gradients(20)
    ours = _run_ours(lambda groups: SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.05), grads)
    theirs = _run_torch(
        lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=0.05), grads
    )
    _assert_same_trajectory(ours, theirs)


def test_adamw_first_step_by_hand():
    p = Parameter(np.array([1.0, -2.0]), dtype=np.float64)
    p.grad = np.array([0.5, 0.0])
    AdamW([p], lr=0.1, weight_decay=0.5).step()
    # decay: p * (1 - 0.05); then m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    expected = np.array([1.0, -2.0]) * 0.95 - 0.1 * np.array([0.5 / (0.5 + 1e-8), 0.0])
    np.testing.assert_allclose(p.data, expected, rtol=1e-12)


def test_frozen_parameter_gets_no_state_and_is_never_modified():
    lin = Linear(3, 2)
    lin.weight.requires_grad = False
    frozen = lin.weight.data.copy()
    optimizer = AdamW(lin.parameters(), lr=0.1)
    lin.weight.grad = np.ones_like(lin.weight.data)  # even a stray gradient must not move it
    lin.bias.grad = np.ones_like(lin.bias.data)
    for _ in range(3):
        optimizer.step()
    assert lin.weight not in optimizer.state
    assert [p for group in optimizer.param_groups for p in group["params"]] == [lin.bias]
    assert np.array_equal(lin.weight.data, frozen)
    assert not np.allclose(lin.bias.grad, 0) and optimizer.state[lin.bias]["step"] == 3


def test_updates_are_in_place_and_skip_missing_gradients():
    lin = Linear(3, 2)
    weight_array, bias_before = lin.weight.data, lin.bias.data.copy()
    optimizer = AdamW(lin.parameters(), lr=0.1)
    lin.weight.grad = np.ones_like(lin.weight.data)
    optimizer.step()
    assert lin.weight.data is weight_array and lin.weight.dtype == np.float32
    assert optimizer.state[lin.weight]["exp_avg"].dtype == np.float32
    assert np.array_equal(lin.bias.data, bias_before) and lin.bias not in optimizer.state
    optimizer.zero_grad()
    assert lin.weight.grad is None


def test_step_on_two_threads_gives_the_numbers_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The updates of large parameters run side by side (largest first), the small ones in turn as
    one more task; every number is the one a single thread gives, over several steps, and the work
    really is shared by both threads."""
    shapes = [(256, 128), (7,), (128, 160), (), (3, 5, 2), (20_000,), (256,)]

    def trajectory(threads: int) -> tuple[list[list[np.ndarray]], set[str]]:
        rng = np.random.default_rng(0)
        params = [Parameter(rng.standard_normal(shape), dtype=np.float32) for shape in shapes]
        optimizer = AdamW([{"params": params[:3], "lr": 1e-2}, {"params": params[3:], "lr": 3e-3}])
        names: set[str] = set()
        update = optimizer.update

        def spy(p, grad, state, group):
            names.add(threading.current_thread().name)
            time.sleep(0.002)  # long enough for the other thread to take the next parameter
            update(p, grad, state, group)

        monkeypatch.setattr(optimizer, "update", spy)
        steps = []
        with tinypft.threads.num_threads(threads):
            for _ in range(3):
                for p in params:
                    p.grad = rng.standard_normal(p.shape).astype(np.float32)
                optimizer.step()
                steps.append([p.data.copy() for p in params])
        assert [p.version for p in params] == [3] * len(params)
        return steps, names

    one, names_one = trajectory(1)
    two, names_two = trajectory(2)
    for a_params, b_params in zip(one, two):
        for a, b in zip(a_params, b_params):
            np.testing.assert_array_equal(b, a)
    assert len(names_one) == 1 and len(names_two) == 2


def test_training_reduces_a_loss_through_autograd():
    tinypft.manual_seed(0)
    lin = Linear(4, 1)
    x = Tensor(np.random.default_rng(0).standard_normal((32, 4)))
    target = x.data @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype=np.float32)
    optimizer = AdamW(lin.parameters(), lr=0.1, weight_decay=0.0)
    losses = []
    for _ in range(100):
        optimizer.zero_grad()
        loss = ((lin(x) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-2 * losses[0]


def test_optimizer_rejects_empty_and_duplicate_parameters():
    lin = Linear(2, 2)
    with pytest.raises(ValueError, match="no parameter requires grad"):
        AdamW(lin.requires_grad_(False).parameters())
    lin.requires_grad_(True)
    with pytest.raises(ValueError, match="twice"):
        SGD([{"params": [lin.weight]}, {"params": [lin.weight, lin.bias]}], lr=0.1)


def test_state_dict_resume_is_exact_even_through_json():
    grads = _gradients(20)

    def fresh():
        params = _params()
        return params, AdamW([{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 3e-3}])

    def run(params, optimizer, step_grads):
        for grads_now in step_grads:
            for p, g in zip(params, grads_now):
                p.grad = g.copy()
            optimizer.step()

    params, optimizer = fresh()
    run(params, optimizer, grads)

    first, first_opt = fresh()
    run(first, first_opt, grads[:10])
    saved = first_opt.state_dict()
    arrays = {(i, k): v for i, s in saved["state"].items() for k, v in s.items() if isinstance(v, np.ndarray)}
    as_json = json.loads(json.dumps(saved, default=lambda a: None))  # what a JSON checkpoint keeps
    for (i, k), v in arrays.items():  # arrays travel separately (e.g. in a safetensors file)
        as_json["state"][str(i)][k] = v
    assert as_json["param_groups"][0]["betas"] == [0.9, 0.999]

    resumed, resumed_opt = fresh()
    for p, q in zip(resumed, first):
        p.data[...] = q.data
    resumed_opt.load_state_dict(as_json)
    assert resumed_opt.param_groups[1]["betas"] == (0.9, 0.999)
    run(resumed, resumed_opt, grads[10:])
    for a, b in zip(resumed, params):
        assert np.array_equal(a.data, b.data)


def test_load_state_dict_rejects_a_different_layout():
    optimizer = AdamW(_params())
    other = AdamW(_params()[:3])
    with pytest.raises(ValueError, match="groups hold"):
        optimizer.load_state_dict(other.state_dict())


# ----------------------------------------------------------------------------- schedules


def test_lr_at_known_values():
    assert lr_at(0, 1.0, "linear", 10, 110) == 0.0
    assert lr_at(5, 2.0, "linear", 10, 110) == 1.0
    assert lr_at(10, 2.0, "linear", 10, 110) == 2.0
    assert lr_at(60, 2.0, "linear", 10, 110) == 1.0
    assert lr_at(110, 2.0, "linear", 10, 110) == 0.0
    assert lr_at(200, 2.0, "linear", 10, 110) == 0.0
    assert lr_at(60, 2.0, "cosine", 10, 110) == pytest.approx(1.0)
    assert lr_at(35, 2.0, "cosine", 10, 110) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert lr_at(110, 2.0, "cosine", 10, 110) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(500, 2.0, "cosine", 10, 110) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(3, 2.0, "constant", 4, 10) == 1.5 and lr_at(9, 2.0, "constant", 4, 10) == 2.0
    assert lr_at(0, 2.0, "constant", 0, 10) == 2.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, 1.0, "exponential", 0, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, 1.0, "linear", 20, 10)


@pytest.mark.parametrize("name", ["constant", "linear", "cosine"])
def test_schedule_matches_torch_lambda_lr(name):
    torch = pytest.importorskip("torch")
    warmup, total = 3, 12
    groups = [{"params": [Parameter(np.zeros(2))], "lr": 0.5}, {"params": [Parameter(np.zeros(1))]}]
    ours_opt = SGD(groups, lr=0.1)
    ours = get_schedule(name, ours_opt, warmup, total)
    torch_opt = torch.optim.SGD([{"params": [torch.zeros(2, requires_grad=True)], "lr": 0.5},
                                 {"params": [torch.zeros(1, requires_grad=True)]}], lr=0.1)
    theirs = torch.optim.lr_scheduler.LambdaLR(torch_opt, lr_lambda(name, warmup, total))
    seen = []
    for _ in range(total + 3):
        assert ours.get_lr() == pytest.approx(theirs.get_last_lr(), abs=1e-15)
        assert [g["lr"] for g in ours_opt.param_groups] == pytest.approx(theirs.get_last_lr(), abs=1e-15)
        seen.append(ours.get_lr()[0])
        torch_opt.step()
        ours.step()
        theirs.step()
    assert len(set(seen)) > (1 if name == "constant" else total - 1)


def test_schedule_state_dict_resume():
    opt = SGD([Parameter(np.zeros(1))], lr=1.0)
    schedule = get_schedule("cosine", opt, 2, 10)
    for _ in range(4):
        schedule.step()
    saved = json.loads(json.dumps(schedule.state_dict()))
    opt2 = SGD([Parameter(np.zeros(1))], lr=1.0)
    schedule2 = get_schedule("cosine", opt2, 2, 10)
    schedule2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == lr_at(4, 1.0, "cosine", 2, 10)
    schedule.step(), schedule2.step()
    assert schedule2.get_lr() == schedule.get_lr()


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    torch = pytest.importorskip("torch")
    params = _params()
    grads = _gradients(1)[0]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    params.append(Parameter(np.zeros(3)))  # no gradient: skipped
    torch_params = [torch.tensor(p.data, requires_grad=True) for p in params[:-1]]
    for p, g in zip(torch_params, grads):
        p.grad = torch.tensor(g)

    total = clip_grad_norm_(params, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(torch_params, max_norm).item()
    assert total == pytest.approx(expected, rel=1e-12)
    assert total == pytest.approx(math.sqrt(sum((g**2).sum() for g in grads)), rel=1e-12)
    for p, q in zip(params, torch_params):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-12, atol=0)
    clipped = math.sqrt(sum((p.grad**2).sum() for p in params[:-1]))
    assert clipped == pytest.approx(min(max_norm, total), rel=1e-5)
    assert params[-1].grad is None


def test_clip_grad_norm_leaves_non_finite_gradients_alone():
    p = Parameter(np.array([np.inf, 1.0]))
    p.grad = p.data.copy()
    assert clip_grad_norm_([p], 1.0) == math.inf
    assert p.grad[1] == 1.0
    assert clip_grad_norm_([Parameter(np.zeros(2))], 1.0) == 0.0
