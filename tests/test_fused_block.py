"""A transformer block as one node (``model/fused_block.py``) against the node-by-node path.

The fused block promises the node-by-node path's numbers bit for bit (values and every gradient,
for every method and thread count), a correct gradient of its own (gradcheck in float64), and
that it steps aside whenever it cannot promise that (a cache, dropout, gradients through the keys).
"""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import tiny_model

import tinypft
from tinypft import gradcheck, no_grad
from tinypft.engine import use_fused_kernels
from tinypft.model import GPT, GPTConfig, fused_block
from tinypft.peft import (
    BitFitConfig,
    FullFinetuneConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
    get_peft_model,
)
from tinypft.threads import num_threads

SMALL = dict(vocab_size=40, context_length=32, d_model=32, n_layers=2, n_heads=4)
METHODS = {
    "full": FullFinetuneConfig(),
    "bitfit": BitFitConfig(),
    "prefix_mlp": PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16),
    "prefix_direct": PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=False),
    "prompt": PromptTuningConfig(num_virtual_tokens=3),
    "random_subset": RandomSubsetConfig(),
}


def batch() -> tuple[np.ndarray, np.ndarray]:
    """Five rows of 12 ids; two rows left-padded, so that some queries see no key at all."""
    ids = np.random.default_rng(3).integers(0, SMALL["vocab_size"], size=(5, 12))
    mask = np.ones(ids.shape, bool)
    mask[1, :4] = False
    mask[3, :1] = False
    return ids, mask


def loss_and_grads(method: str, fused: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    tinypft.manual_seed(0)
    model = get_peft_model(GPT(GPTConfig(**SMALL)), METHODS[method])
    model.train()
    ids, mask = batch()
    with fused_block.use_fused_blocks(fused):
        out = model(ids, attention_mask=mask)
        loss = model.lm_loss(out.logits, np.where(mask, ids, -100))
        loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.data, grads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_node_per_block_gives_the_numbers_of_the_node_by_node_path(method, threads):
    with num_threads(threads):
        loss_nodes, grads_nodes = loss_and_grads(method, fused=False)
        loss_fused, grads_fused = loss_and_grads(method, fused=True)
    assert loss_fused.tobytes() == loss_nodes.tobytes()
    assert grads_fused.keys() == grads_nodes.keys() and grads_nodes
    for name, g in grads_nodes.items():
        assert grads_fused[name].dtype == g.dtype
        assert grads_fused[name].tobytes() == g.tobytes(), name


def block_inputs(model: GPT) -> list:
    block = model.blocks[0]
    attn, mlp = block.attn, block.mlp
    params = [block.ln_1.weight, block.ln_1.bias]
    for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
        params += [linear.weight, linear.bias]
    params += [block.ln_2.weight, block.ln_2.bias]
    for linear in (mlp.fc_in, mlp.fc_out):
        params += [linear.weight, linear.bias]
    return params


@pytest.mark.parametrize("weights", ["trained", "frozen"])
@pytest.mark.parametrize("prefix_batch", [None, 1, 2])
def test_fused_block_passes_gradcheck(prefix_batch, weights):
    """Every input of the node, x, the parameters and the prefix's keys and values, against central
    differences in float64 (a causal mask with a padded key, so a row sees nothing). With the
    weight matrices frozen, backward takes its other route (row by row), checked the same way."""
    model = tiny_model(seed=4)
    block = model.blocks[0]
    rng = np.random.default_rng(5)
    with tinypft.default_dtype(np.float64):
        x = tinypft.Tensor(rng.standard_normal((2, 4, 8)), requires_grad=True)
        prefix = []
        if prefix_batch is not None:
            prefix = [tinypft.Tensor(rng.standard_normal((prefix_batch, 2, 2, 4)), requires_grad=True)
                      for _ in range(2)]
    P = 2 if prefix else 0
    mask = np.tril(np.ones((4, 4 + P), bool), k=P)[None, None].repeat(2, axis=0)  # (2, 1, 4, 4 + P)
    mask[1, :, :, P] = False  # a padded first token
    mask[1, :, 0, :] = False  # a query that sees nothing
    mask.flags.writeable = False

    def fn(x, *rest):
        kv = (rest[-2], rest[-1]) if prefix else None
        assert fused_block.can_run(block, None, need_kv=False)
        out, _ = fused_block.run(block, x, mask, kv, need_kv=False)
        return out

    params = block_inputs(model)
    if weights == "frozen":
        for p in params:
            p.requires_grad = p.ndim == 1  # biases and LayerNorm weights only
    gradcheck(fn, [x, *params, *prefix], atol=1e-7, rtol=1e-6)


def test_frozen_inputs_get_no_gradient_and_cost_none():
    """BitFit's frozen weights: the node asks its kernels for bias gradients only."""
    _, grads = loss_and_grads("bitfit", fused=True)
    assert grads and all(name.endswith("bias") for name in grads)


def test_steps_aside_when_it_cannot_promise_the_same_numbers():
    tinypft.manual_seed(0)
    model = GPT(GPTConfig(**SMALL))
    block = model.blocks[0]
    assert fused_block.can_run(block, None, need_kv=False)
    assert not fused_block.can_run(block, None, need_kv=True)  # keys wanted with a gradient
    with no_grad():
        assert fused_block.can_run(block, None, need_kv=True)  # a prefill without gradients
    assert not fused_block.can_run(block, object(), need_kv=False)  # a cache is read
    with use_fused_kernels(False):
        assert not fused_block.can_run(block, None, need_kv=False)  # the composed reference
    with fused_block.use_fused_blocks(False):
        assert not fused_block.can_run(block, None, need_kv=False)
    tinypft.manual_seed(0)
    dropping = GPT(GPTConfig(**SMALL, dropout=0.1))
    dropping.train()
    assert not fused_block.can_run(dropping.blocks[0], None, need_kv=False)
    dropping.eval()
    assert fused_block.can_run(dropping.blocks[0], None, need_kv=False)


def test_a_prefill_without_gradients_fills_the_same_cache():
    model = tiny_model(seed=2)
    ids, mask = np.arange(12).reshape(2, 6) % 16, np.ones((2, 6), bool)
    mask[0, :2] = False
    caches = {}
    with no_grad():
        for fused in (False, True):
            with fused_block.use_fused_blocks(fused):
                caches[fused] = model(ids, attention_mask=mask, use_cache=True).cache
    for k_nodes, k_fused in zip(caches[False].keys, caches[True].keys):
        assert k_fused.dtype == np.float64 and k_fused.data.tobytes() == k_nodes.data.tobytes()
    for v_nodes, v_fused in zip(caches[False].values, caches[True].values):
        assert v_fused.data.tobytes() == v_nodes.data.tobytes()


@pytest.mark.parametrize("with_mask", [True, False])
def test_a_block_called_directly_matches_its_own_code(with_mask):
    """A block called on its own (no GPT around it), with a causal mask or none at all."""
    model = tiny_model(seed=6)
    block = model.blocks[1]
    values = np.random.default_rng(7).standard_normal((3, 5, 8))
    x = tinypft.Tensor(values, requires_grad=True, dtype=np.float64)
    mask = np.tril(np.ones((5, 5), bool))[None, None] if with_mask else None
    results = []
    for fused in (False, True):
        with fused_block.use_fused_blocks(fused):
            out, _ = block(x, mask, need_kv=False)
        out.backward(np.cos(out.data))
        results.append((out.data, x.grad, block.mlp.fc_in.weight.grad))
        x.grad = None
        for p in block.parameters():
            p.grad = None
    for nodes, fused in zip(*results):
        assert fused.tobytes() == nodes.tobytes()
