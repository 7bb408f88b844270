"""The training loop: learning, frozen parameters, checkpoints, and bit-identical resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tinypft
from tinypft.model import GPT, GPTConfig
from tinypft.optim import lr_at
from tinypft.train.batching import pad_batch
from tinypft.train.trainer import TrainConfig, lm_batch_loss, mean_loss, train

PAD, SEP, EOS = 0, 1, 2


def copy_task(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """source sep source eos, learning only the copy: labels are -100 on the source and sep."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        src = rng.integers(3, 12, size=rng.integers(2, 5)).tolist()
        ids = src + [SEP] + src + [EOS]
        examples.append((ids, [-100] * (len(src) + 1) + src + [EOS]))
    return examples


def make_model(dropout: float = 0.1, seed: int = 0) -> GPT:
    tinypft.manual_seed(seed)
    config = GPTConfig(vocab_size=12, context_length=16, d_model=16, n_layers=2, n_heads=2, dropout=dropout)
    return GPT(config)


def config(**overrides) -> TrainConfig:
    base = dict(lr=3e-3, batch_size=4, max_steps=12, warmup_steps=3, schedule="cosine", seed=5,
                progress=False, pad_id=PAD, eval_every=4)
    return TrainConfig(**{**base, **overrides})


def weights(model: GPT) -> dict[str, np.ndarray]:
    return {name: p.data.copy() for name, p in model.named_parameters()}


def test_training_lowers_the_loss_and_records_history():
    data, dev = copy_task(64), copy_task(16, seed=1)
    model = make_model(dropout=0.0)
    before = mean_loss(model, dev, 8, PAD)
    cfg = config(lr=1e-2, max_steps=150, eval_every=50, batch_size=8)
    result = train(model, data, cfg, eval_examples=dev)
    assert result.steps == 150 and len(result.train_loss) == 150
    assert [e["step"] for e in result.evals] == [50, 100, 150]
    assert result.evals[-1]["loss"] == pytest.approx(mean_loss(model, dev, 8, PAD))
    assert result.evals[-1]["loss"] < 0.5 * before
    assert result.tokens > 0 and result.tokens_per_sec > 0 and result.seconds >= result.train_seconds
    # the schedule: linear warmup, then cosine decay to 0 at max_steps
    assert result.lr == pytest.approx([lr_at(s, 1e-2, "cosine", 3, 150) for s in range(150)])


def test_padded_batch_loss_is_the_token_weighted_mean_of_single_losses():
    examples = copy_task(5)
    model = make_model(dropout=0.0).eval()
    batch_loss = lm_batch_loss(model, pad_batch(examples, PAD)).item()
    singles = [(lm_batch_loss(model, pad_batch([ex], PAD)).item(), sum(t != -100 for t in ex[1][1:]))
               for ex in examples]
    expected = sum(loss * n for loss, n in singles) / sum(n for _, n in singles)
    assert batch_loss == pytest.approx(expected, rel=1e-5)


def test_frozen_parameters_stay_bit_identical_and_get_no_optimizer_state(tmp_path: Path):
    model = make_model()
    for name, p in model.named_parameters():
        p.requires_grad = name.endswith(".bias")  # BitFit
    before = weights(model)
    train(model, copy_task(16), config(checkpoint_dir=str(tmp_path)))
    after = weights(model)
    for name in before:
        same = np.array_equal(before[name], after[name])
        assert same == (not name.endswith(".bias")), name
    # the checkpoint holds only the biases and their two AdamW moments
    from tinypft.serialization import load_tensors

    arrays = load_tensors(next(tmp_path.glob("step-*")) / "arrays.safetensors")
    n_bias = sum(name.endswith(".bias") for name in before)
    assert sum(k.startswith("param.") for k in arrays) == n_bias
    assert all(k[len("param."):].endswith(".bias") for k in arrays if k.startswith("param."))
    assert sum(k.startswith("optim.") for k in arrays) == 2 * n_bias


def interrupt_at(step: int):
    def callback(s: int, loss: float) -> None:
        if s == step:
            raise KeyboardInterrupt

    return callback


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path):
    data, dev = copy_task(18), copy_task(6, seed=1)  # 5 batches per epoch: the run crosses epochs
    cfg = dict(max_steps=14, checkpoint_every=5, eval_every=4)

    full = make_model()
    expected = train(full, data, config(**cfg, checkpoint_dir=str(tmp_path / "a")), eval_examples=dev)

    cut = make_model()
    with pytest.raises(KeyboardInterrupt):
        train(cut, data, config(**cfg, checkpoint_dir=str(tmp_path / "b")), eval_examples=dev,
              callback=interrupt_at(8))
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["step"] == 5  # steps 6-8 are lost

    resumed = make_model()  # a fresh process: same construction, then the checkpoint
    result = train(resumed, data, config(**cfg, checkpoint_dir=str(tmp_path / "b")), eval_examples=dev,
                   resume=True)
    assert result.resumed_from == 5 and result.steps == 14
    for name, value in weights(full).items():
        np.testing.assert_array_equal(value, resumed.get_parameter(name).data, err_msg=name)
    assert result.train_loss == expected.train_loss  # exact floats, through JSON
    assert result.evals == expected.evals and result.lr == expected.lr


def test_resumption_depends_on_the_restored_random_state(tmp_path: Path):
    """Dropout matters here: a resumed run with another generator state ends elsewhere."""
    data = copy_task(18)
    cfg = config(max_steps=10, checkpoint_every=5, checkpoint_dir=str(tmp_path))
    full = make_model()
    train(full, data, cfg)
    state_file = tmp_path / "step-00000005" / "state.json"
    state = json.loads(state_file.read_text())
    state["rng"] = np.random.default_rng(123).bit_generator.state
    state_file.write_text(json.dumps(state))
    (tmp_path / "latest.json").write_text(json.dumps({"step": 5, "name": "step-00000005"}))
    resumed = make_model()
    train(resumed, data, cfg, resume=True)
    assert not np.array_equal(full.wte.weight.data, resumed.wte.weight.data)


def test_checkpoints_are_safetensors_and_json_pruned_and_checked(tmp_path: Path):
    model = make_model()
    train(model, copy_task(8), config(max_steps=9, checkpoint_every=2, checkpoint_dir=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-00000008", "step-00000009"]
    files = sorted(p.name for p in (tmp_path / "step-00000009").iterdir())
    assert files == ["arrays.safetensors", "state.json"]  # no pickle anywhere
    # a damaged arrays file is refused rather than resumed
    path = tmp_path / "step-00000009" / "arrays.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        train(make_model(), copy_task(8), config(max_steps=9, checkpoint_dir=str(tmp_path)), resume=True)


def test_resume_refuses_different_settings(tmp_path: Path):
    train(make_model(), copy_task(8), config(max_steps=4, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="lr"):
        cfg = config(max_steps=4, lr=1.0, checkpoint_dir=str(tmp_path))
        train(make_model(), copy_task(8), cfg, resume=True)


def test_early_stopping_keeps_the_best_weights():
    scores = iter([3.0, 1.0, 2.0, 4.0, 5.0, 6.0])
    snapshots = {}
    model = make_model()

    def remember(step: int, loss: float) -> None:
        snapshots[step] = weights(model)

    result = train(model, copy_task(16), config(max_steps=40, eval_every=2, keep_best=True, patience=2),
                   eval_fn=lambda m: next(scores), callback=remember)
    assert result.stopped_early and result.steps == 8  # evals at 2, 4 (best), 6, 8 -> two without improvement
    assert result.best == {"step": 4, "loss": 1.0}
    for name, value in snapshots[4].items():
        np.testing.assert_array_equal(model.get_parameter(name).data, value)


def test_eval_fn_with_a_metric_to_maximise():
    model = make_model()
    bleu = iter([10.0, 30.0, 20.0])
    cfg = config(max_steps=6, eval_every=2, best_metric="bleu", best_mode="max")
    result = train(model, copy_task(8), cfg, eval_fn=lambda m: {"bleu": next(bleu)})
    assert result.best == {"step": 4, "bleu": 30.0}


def test_non_finite_loss_stops_with_a_clear_error():
    with pytest.raises(FloatingPointError, match="step 1"):
        train(make_model(), copy_task(8), config(), loss_fn=lambda m, b: tinypft.Tensor(np.float32(np.nan)))
