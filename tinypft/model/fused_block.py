"""A whole transformer block as one graph node, its forward run sequence by sequence on each thread.

``Block.forward`` (``gpt.py``) is the definition: about 25 graph nodes per block, each fused kernel
cutting its own work over the threads and waiting for it. Within a block every step is independent
across sequences (LayerNorm, the projections, GELU and the residual adds work row by row, attention
sequence by sequence), so one block needs no sync between its steps: here each thread takes a block
of whole sequences and runs them through the whole block, the same kernels' arithmetic on its rows:

    x1 = x + o_proj(attention(q_proj(h), [P_K; k_proj(h)], [P_V; v_proj(h)])),  h = LN_1(x)
    y  = x1 + fc_out(gelu(fc_in(LN_2(x1))))

One sync per block instead of about ten, no per-step graph bookkeeping, and the residual adds run
on every thread. Backward runs the same kernels' backward passes (``engine/fused.py``), in the
order and with the gradient sums ``Tensor.backward`` would do for the block's nodes, so values and
gradients equal the node-by-node path bit for bit (``tests/test_fused_block.py``).

``Block.forward`` hands itself here (``run``) when ``can_run`` says so: the fused kernels and this
switch (``use_fused_blocks``) are on, no KV cache is read, every dropout is the identity and the
block has the standard structure. Everything else (a cache, dropout in training, replaced
modules, the composed reference path) takes the node-by-node path.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine import Tensor, fused_kernels_enabled, is_grad_enabled, ops
from ..engine.autograd import Context, Function
from ..engine.fused import (
    GELU,
    GEMM_PIECE,
    Attention,
    _heads_side_by_side,
    _min_rows,
    attention_forward,
    gelu_forward,
    layer_norm_forward,
    mask_bias,
)
from ..engine.fused import (
    LayerNorm as LayerNormKernel,
)
from ..engine.fused import (
    Linear as LinearKernel,
)
from ..nn import Dropout, LayerNorm, Linear
from ..threads import parallel_for

if TYPE_CHECKING:
    from .gpt import Block

_enabled = True


def set_fused_blocks(enabled: bool) -> None:
    """Run each block as one node (the default) or node by node (``Block.forward``'s own code)."""
    global _enabled
    _enabled = bool(enabled)


def fused_blocks_enabled() -> bool:
    return _enabled


@contextmanager
def use_fused_blocks(enabled: bool) -> Iterator[None]:
    """``with use_fused_blocks(False): ...`` runs the blocks node by node inside, then restores the switch."""
    previous = _enabled
    set_fused_blocks(enabled)
    try:
        yield
    finally:
        set_fused_blocks(previous)


def can_run(block: Block, past: Any, need_kv: bool) -> bool:
    """Whether ``run`` computes this call of ``block`` (see the module docstring)."""
    if not (_enabled and fused_kernels_enabled()) or past is not None:
        return False
    attn, mlp = block.attn, block.mlp
    if type(block.ln_1) is not LayerNorm or type(block.ln_2) is not LayerNorm:
        return False
    for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc_in, mlp.fc_out):
        if type(linear) is not Linear or linear.bias is None:
            return False
    for dropout in (attn.resid_dropout, mlp.dropout):
        if type(dropout) is not Dropout or (dropout.training and dropout.p > 0):
            return False
    # the keys and values are returned only as arrays: fine for a cache filled without gradients
    return not (need_kv and is_grad_enabled())


def run(
    block: Block, x: Tensor, mask: np.ndarray, kv_prefix: tuple[Tensor, Tensor] | None, need_kv: bool
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``block(x, mask, kv_prefix)`` as one node: x (B, S, d) -> (y (B, S, d), (K, V) or None)."""
    attn, mlp = block.attn, block.mlp
    linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc_in, mlp.fc_out)
    inputs = [x, block.ln_1.weight, block.ln_1.bias]
    for linear in linears[:4]:
        inputs += [linear.weight, linear.bias]
    inputs += [block.ln_2.weight, block.ln_2.bias]
    for linear in linears[4:]:
        inputs += [linear.weight, linear.bias]
    if kv_prefix is not None:
        inputs += list(kv_prefix)
    kv: list[np.ndarray] = []
    y = FusedBlock.apply(
        *inputs, mask=np.asarray(mask, dtype=bool), n_heads=attn.n_heads,
        eps=(block.ln_1.eps, block.ln_2.eps), leaves=tuple(t.is_leaf for t in inputs), kv_out=kv,
    )
    return y, ((Tensor._wrap(kv[0]), Tensor._wrap(kv[1])) if need_kv else None)  # as they are: no copy


INPUTS = (  # FusedBlock's inputs, in order (the prefix's keys and values only with a prefix)
    "x", "ln_1.weight", "ln_1.bias", "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
    "v_proj.weight", "v_proj.bias", "o_proj.weight", "o_proj.bias", "ln_2.weight", "ln_2.bias",
    "fc_in.weight", "fc_in.bias", "fc_out.weight", "fc_out.bias", "prefix_k", "prefix_v",
)


class FusedBlock(Function):
    """The pre-LayerNorm block as one node; its inputs are named by ``INPUTS``.

    The forward keeps, for every step, the context its fused kernel would have kept; backward hands
    each context to that kernel's ``backward``.
    """

    @staticmethod
    def forward(
        ctx: Context, x: np.ndarray, *arrays: np.ndarray, mask: np.ndarray, n_heads: int,
        eps: tuple[float, float], leaves: tuple[bool, ...], kv_out: list,
    ) -> np.ndarray:
        (ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b,
         ln2_w, ln2_b, in_w, in_b, out_w, out_b, *prefix) = arrays
        B, S, d = x.shape
        H, hd, N, d_ff = n_heads, d // n_heads, B * S, in_w.shape[0]
        P = prefix[0].shape[2] if prefix else 0
        dt = x.dtype
        x2 = x.reshape(N, d)  # (N, d)
        h1, h2, x1, y = (np.empty((N, d), dt) for _ in range(4))  # (N, d) each
        q2, k2, v2 = (np.empty((N, d), dt) for _ in range(3))  # (N, d) each: the projections
        m1, r1, m2, r2 = (np.empty((N, 1), dt) for _ in range(4))  # LayerNorms' mean and rstd
        u, gy, gs = (np.empty((N, d_ff), dt) for _ in range(3))  # fc_in's output, GELU's y and s

        def heads(a: np.ndarray) -> np.ndarray:  # (N, d) -> (B, H, S, hd), a view
            return a.reshape(B, S, H, hd).transpose(0, 2, 1, 3)

        q4, k4, v4 = heads(q2), heads(k2), heads(v2)
        if prefix:  # keys and values with the prefix in front, one contiguous array each
            k_all, v_all = np.empty((B, H, P + S, hd), dt), np.empty((B, H, P + S, hd), dt)
        else:
            k_all, v_all = k4, v4
        att = _heads_side_by_side((B, H, S, hd), dt)  # (B, H, S, hd)
        probs = np.empty((B, H, S, P + S), dt)  # (B, H, S, Tk)
        att2 = att.transpose(0, 2, 1, 3).reshape(N, d)  # (N, d), a view: heads side by side
        bias, empty_rows = mask_bias(mask, dt)

        def sequences(s: slice) -> None:  # the whole block for sequences s (rows r)
            r = slice(s.start * S, s.stop * S)
            layer_norm_forward(x2[r], ln1_w, ln1_b, eps[0], out=(h1[r], m1[r], r1[r]))
            for w, b, out in ((q_w, q_b, q2), (k_w, k_b, k2), (v_w, v_b, v2)):
                np.matmul(h1[r], w.T, out=out[r])
                out[r] += b
            if prefix:
                for p, new, dst in ((prefix[0], k4, k_all), (prefix[1], v4, v_all)):
                    front = p[s] if p.shape[0] == B else p
                    front = np.broadcast_to(front, (s.stop - s.start, H, P, hd))
                    np.concatenate((front, new[s]), axis=2, out=dst[s])
            score_bias = bias[s] if bias is not None and bias.ndim == 4 and bias.shape[0] == B else bias
            attention_forward(q4[s], k_all[s], v_all[s], score_bias, into=(att[s], probs[s]))
            np.matmul(att2[r], o_w.T, out=x1[r])
            x1[r] += o_b
            x1[r] += x2[r]  # x + o_proj(...)
            layer_norm_forward(x1[r], ln2_w, ln2_b, eps[1], out=(h2[r], m2[r], r2[r]))
            np.matmul(h2[r], in_w.T, out=u[r])
            u[r] += in_b
            gelu_forward(u[r], out=(gy[r], gs[r]))
            np.matmul(gy[r], out_w.T, out=y[r])
            y[r] += out_b
            y[r] += x1[r]  # x1 + fc_out(...)

        per_sequence = S * (4 * d * d + 2 * d * d_ff + 2 * S * d)  # multiply-adds of one sequence
        parallel_for(B, sequences, _min_rows(per_sequence, GEMM_PIECE))
        kv_out += [k_all, v_all]
        if not any(ctx.needs_input_grad):
            return y.reshape(B, S, d)

        # Which tensors of the node-by-node graph would require a gradient: an input that does, and
        # every step's output that has such an input.
        rg = dict(zip(INPUTS, ctx.needs_input_grad))
        leaf = dict(zip(INPUTS, leaves))
        rg["h1"] = rg["x"] or rg["ln_1.weight"] or rg["ln_1.bias"]
        for name in ("q", "k", "v"):
            rg[name] = rg["h1"] or rg[f"{name}_proj.weight"] or rg[f"{name}_proj.bias"]
        rg["k_all"] = rg["k"] or (P > 0 and rg["prefix_k"])
        rg["v_all"] = rg["v"] or (P > 0 and rg["prefix_v"])
        rg["att"] = rg["q"] or rg["k_all"] or rg["v_all"]
        rg["x1"] = rg["x"] or rg["att"] or rg["o_proj.weight"] or rg["o_proj.bias"]
        rg["h2"] = rg["x1"] or rg["ln_2.weight"] or rg["ln_2.bias"]
        rg["u"] = rg["h2"] or rg["fc_in.weight"] or rg["fc_in.bias"]

        def needs(x_name: str, layer: str) -> tuple[bool, bool, bool]:
            return rg[x_name], rg[f"{layer}.weight"], rg[f"{layer}.bias"]

        def linear_ctx(x_in: np.ndarray, w: np.ndarray, x_name: str, layer: str) -> Context:
            c = Context(needs(x_name, layer))  # what fused.Linear.forward saves: x for dW, W for dx
            shape, flags = (B, S, x_in.shape[-1]), c.needs_input_grad
            leaves = leaf[f"{layer}.weight"] and leaf[f"{layer}.bias"]
            c.save_for_backward(shape, x_in if flags[1] else None, w if flags[0] else None, leaves)
            return c

        def norm_ctx(
            x_in: np.ndarray, m: np.ndarray, r: np.ndarray, w: np.ndarray, x_name: str, layer: str
        ) -> Context:
            c = Context(needs(x_name, layer))  # what fused.LayerNorm.forward saves
            leaves = leaf[f"{layer}.weight"] and leaf[f"{layer}.bias"]
            c.save_for_backward(x_in.reshape(B, S, d), m.reshape(B, S, 1), r.reshape(B, S, 1), w, leaves)
            return c

        # one context per step whose node would be recorded, None for the others
        contexts: dict[str, Context | None] = dict.fromkeys(
            ("fc_out", "gelu", "fc_in", "ln_2", "o_proj", "attention", "q_proj", "k_proj", "v_proj", "ln_1")
        )
        contexts["fc_out"] = linear_ctx(gy, out_w, "u", "fc_out")
        if rg["u"]:
            contexts["gelu"] = Context((True,))
            contexts["gelu"].save_for_backward(u.reshape(B, S, d_ff), gs.reshape(B, S, d_ff))
            contexts["fc_in"] = linear_ctx(h2, in_w, "h2", "fc_in")
        if rg["h2"]:
            contexts["ln_2"] = norm_ctx(x1, m2, r2, ln2_w, "x1", "ln_2")
        contexts["o_proj"] = linear_ctx(att2, o_w, "att", "o_proj")
        if rg["att"]:
            contexts["attention"] = Context((rg["q"], rg["k_all"], rg["v_all"]))
            scale = hd ** -0.5
            empty_row_mask = mask if empty_rows else None
            contexts["attention"].save_for_backward(q4, k_all, v_all, probs, att, empty_row_mask, scale)
        for name, w in (("q", q_w), ("k", k_w), ("v", v_w)):
            if rg[name]:
                contexts[f"{name}_proj"] = linear_ctx(h1, w, "h1", f"{name}_proj")
        if rg["h1"]:
            contexts["ln_1"] = norm_ctx(x2, m1, r1, ln1_w, "x", "ln_1")
        # the arrays themselves at the top too: backward's check that none was changed in place sees them
        saved = [a for c in contexts.values() if c is not None for a in c.saved if type(a) is np.ndarray]
        ctx.save_for_backward(*saved, (contexts, rg, (B, S, d, H, hd, P), [a.shape for a in prefix]))
        return y.reshape(B, S, d)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        contexts, rg, (B, S, d, H, hd, P), prefix_shapes = ctx.saved[-1]
        grads: dict[str, np.ndarray | None] = dict.fromkeys(INPUTS)

        def linear(layer: str, g_out: np.ndarray) -> np.ndarray | None:  # dx; dW and db go to grads
            dx, dw, db = LinearKernel.backward(contexts[layer], g_out)
            grads[f"{layer}.weight"], grads[f"{layer}.bias"] = dw, db
            return dx

        def norm(layer: str, g_out: np.ndarray) -> np.ndarray | None:
            dx, dw, db = LayerNormKernel.backward(contexts[layer], g_out)
            grads[f"{layer}.weight"], grads[f"{layer}.bias"] = dw, db
            return dx

        def add(total: np.ndarray | None, more: np.ndarray | None) -> np.ndarray | None:
            """One more contribution to a gradient, summed as Tensor.backward sums them (in arrival order)."""
            return total if more is None else more if total is None else total + more

        # y = x1 + fc_out(gelu(fc_in(LN_2(x1)))): the add hands g to both terms
        dx1 = g if rg["x1"] else None
        d_gelu = linear("fc_out", g)
        if rg["u"]:
            (du,) = GELU.backward(contexts["gelu"], d_gelu)
            dh2 = linear("fc_in", du)
            if rg["h2"]:
                dx1 = add(dx1, norm("ln_2", dh2))
        if dx1 is None:
            return tuple(grads[name] for name in INPUTS[: len(ctx.needs_input_grad)])

        # x1 = x + o_proj(attention(...)): the add hands dx1 to both terms
        dx = dx1 if rg["x"] else None
        d_att = linear("o_proj", dx1)
        if rg["att"]:
            d_att4 = d_att.reshape(B, S, H, hd).transpose(0, 2, 1, 3)  # (B, H, S, hd): undo the head merge
            d_proj = dict(zip("qkv", Attention.backward(contexts["attention"], d_att4)))
            for name, shape in zip("kv", prefix_shapes):  # K = [P_K; k]: split as ops.Concat does
                if d_proj[name] is not None:
                    front, d_proj[name] = np.split(d_proj[name], [P], axis=2)
                    grads[f"prefix_{name}"] = ops.unbroadcast(front, shape)  # P_K was broadcast over B
            dh1 = None
            for name in "qkv":  # the order in which Tensor.backward reaches the three projections
                if rg[name] and d_proj[name] is not None:
                    g3 = d_proj[name].transpose(0, 2, 1, 3).reshape(B, S, d)  # (B, S, d): undo the head split
                    dh1 = add(dh1, linear(f"{name}_proj", g3))
            if rg["h1"] and dh1 is not None:
                dx = add(dx, norm("ln_1", dh1))
        grads["x"] = dx
        return tuple(grads[name] for name in INPUTS[: len(ctx.needs_input_grad)])
