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


def _needs(*flags: bool) -> bool:
    return any(flags)


class FusedBlock(Function):
    """The pre-LayerNorm block as one node; inputs in this order:

        x, ln_1.{weight, bias}, {q, k, v, o}_proj.{weight, bias}, ln_2.{weight, bias},
        fc_in.{weight, bias}, fc_out.{weight, bias}, and optionally the prefix's P_K and P_V

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

        # what each node of the block would save; requires[i]: does input i require a gradient
        requires = ctx.needs_input_grad
        (x_rg, ln1w_rg, ln1b_rg, qw_rg, qb_rg, kw_rg, kb_rg, vw_rg, vb_rg, ow_rg, ob_rg,
         ln2w_rg, ln2b_rg, inw_rg, inb_rg, outw_rg, outb_rg, *prefix_rg) = requires
        if not any(requires):
            return y.reshape(B, S, d)
        (x_lf, ln1w_lf, ln1b_lf, qw_lf, qb_lf, kw_lf, kb_lf, vw_lf, vb_lf, ow_lf, ob_lf,
         ln2w_lf, ln2b_lf, inw_lf, inb_lf, outw_lf, outb_lf, *_) = leaves
        h1_rg = _needs(x_rg, ln1w_rg, ln1b_rg)
        q_rg, k_rg = _needs(h1_rg, qw_rg, qb_rg), _needs(h1_rg, kw_rg, kb_rg)
        v_rg = _needs(h1_rg, vw_rg, vb_rg)
        kall_rg = _needs(k_rg, prefix_rg[0]) if prefix else k_rg
        vall_rg = _needs(v_rg, prefix_rg[1]) if prefix else v_rg
        att_rg = _needs(q_rg, kall_rg, vall_rg)
        x1_rg = _needs(x_rg, att_rg, ow_rg, ob_rg)
        h2_rg = _needs(x1_rg, ln2w_rg, ln2b_rg)
        u_rg = _needs(h2_rg, inw_rg, inb_rg)

        def linear_ctx(x_in: np.ndarray, w: np.ndarray, needs: tuple[bool, ...], leaf: bool) -> Context:
            c = Context(needs)  # what fused.Linear.forward saves: x for dW, W for dx
            shape = (B, S, x_in.shape[-1])
            c.save_for_backward(shape, x_in if needs[1] else None, w if needs[0] else None, leaf)
            return c

        def norm_ctx(
            x_in: np.ndarray, m: np.ndarray, r: np.ndarray, w: np.ndarray, needs: tuple[bool, ...], leaf: bool
        ) -> Context:
            c = Context(needs)  # what fused.LayerNorm.forward saves
            c.save_for_backward(x_in.reshape(B, S, d), m.reshape(B, S, 1), r.reshape(B, S, 1), w, leaf)
            return c

        contexts: dict[str, Context | None] = {}
        contexts["fc_out"] = linear_ctx(gy, out_w, (u_rg, outw_rg, outb_rg), outw_lf and outb_lf)
        gelu_ctx = contexts["gelu"] = Context((u_rg,)) if u_rg else None
        if gelu_ctx is not None:
            gelu_ctx.save_for_backward(u.reshape(B, S, d_ff), gs.reshape(B, S, d_ff))
        contexts["fc_in"] = linear_ctx(h2, in_w, (h2_rg, inw_rg, inb_rg), inw_lf and inb_lf) if u_rg else None
        contexts["ln_2"] = (
            norm_ctx(x1, m2, r2, ln2_w, (x1_rg, ln2w_rg, ln2b_rg), ln2w_lf and ln2b_lf) if h2_rg else None
        )
        contexts["o_proj"] = linear_ctx(att2, o_w, (att_rg, ow_rg, ob_rg), ow_lf and ob_lf)
        if att_rg:
            c = contexts["attention"] = Context((q_rg, kall_rg, vall_rg))
            c.save_for_backward(q4, k_all, v_all, probs, att, mask if empty_rows else None, hd ** -0.5)
        for name, w, needs, leaf in (
            ("q_proj", q_w, (h1_rg, qw_rg, qb_rg), qw_lf and qb_lf),
            ("k_proj", k_w, (h1_rg, kw_rg, kb_rg), kw_lf and kb_lf),
            ("v_proj", v_w, (h1_rg, vw_rg, vb_rg), vw_lf and vb_lf),
        ):
            contexts[name] = linear_ctx(h1, w, needs, leaf) if any(needs) else None
        contexts["ln_1"] = (
            norm_ctx(x2, m1, r1, ln1_w, (x_rg, ln1w_rg, ln1b_rg), ln1w_lf and ln1b_lf) if h1_rg else None
        )
        saved = [a for c in contexts.values() if c is not None for a in c.saved if type(a) is np.ndarray]
        flags = (x1_rg, att_rg, q_rg, k_rg, v_rg, kall_rg, vall_rg, h1_rg, u_rg, h2_rg)
        ctx.save_for_backward(*saved, (contexts, flags, (B, S, d, H, hd, P), [a.shape for a in prefix]))
        return y.reshape(B, S, d)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        contexts, flags, (B, S, d, H, hd, P), prefix_shapes = ctx.saved[-1]
        x1_rg, att_rg, q_rg, k_rg, v_rg, kall_rg, vall_rg, h1_rg, u_rg, h2_rg = flags
        x_rg = ctx.needs_input_grad[0]
        grads: dict[str, np.ndarray | None] = {}

        # y = x1 + fc_out(gelu(fc_in(LN_2(x1)))): Add gives g to both terms
        dx1 = g if x1_rg else None
        d_gy, grads["out_w"], grads["out_b"] = LinearKernel.backward(contexts["fc_out"], g)
        if u_rg:
            (du,) = GELU.backward(contexts["gelu"], d_gy)
            dh2, grads["in_w"], grads["in_b"] = LinearKernel.backward(contexts["fc_in"], du)
        else:
            dh2, grads["in_w"], grads["in_b"] = None, None, None
        if h2_rg and dh2 is not None:
            dx1_norm, grads["ln2_w"], grads["ln2_b"] = LayerNormKernel.backward(contexts["ln_2"], dh2)
            if dx1_norm is not None:
                dx1 = dx1_norm if dx1 is None else dx1 + dx1_norm
        else:
            grads["ln2_w"] = grads["ln2_b"] = None

        # x1 = x + o_proj(attention(...)): Add gives dx1 to both terms
        dx = dx1 if x_rg else None
        for name in ("o_w", "o_b", "q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "pk", "pv"):
            grads[name] = None
        d_att, dh1 = None, None
        if dx1 is not None:
            d_att, grads["o_w"], grads["o_b"] = LinearKernel.backward(contexts["o_proj"], dx1)
        if att_rg and d_att is not None:
            d_att4 = d_att.reshape(B, S, H, hd).transpose(0, 2, 1, 3)  # (B, H, S, hd)
            dq, dk_all, dv_all = Attention.backward(contexts["attention"], d_att4)
            projections = {"q": (dq, q_rg), "k": (dk_all, k_rg), "v": (dv_all, v_rg)}
            if P:
                for key, name, shape in (("k", "pk", prefix_shapes[0]), ("v", "pv", prefix_shapes[1])):
                    full, needed = projections[key]
                    if full is None:
                        continue
                    front, rest = np.split(full, [P], axis=2)  # what ops.Concat.backward gives
                    grads[name] = ops.unbroadcast(front, shape)
                    projections[key] = (rest, needed)
            for key in ("q", "k", "v"):
                g4, needed = projections[key]
                if g4 is None or not needed:
                    continue
                g3 = g4.transpose(0, 2, 1, 3).reshape(B, S, d)  # (B, S, d): the head split's backward
                dh, grads[f"{key}_w"], grads[f"{key}_b"] = LinearKernel.backward(contexts[f"{key}_proj"], g3)
                if dh is not None:
                    dh1 = dh if dh1 is None else dh1 + dh
        if h1_rg and dh1 is not None:
            dx_norm, grads["ln1_w"], grads["ln1_b"] = LayerNormKernel.backward(contexts["ln_1"], dh1)
            if dx_norm is not None:
                dx = dx_norm if dx is None else dx + dx_norm
        else:
            grads["ln1_w"] = grads["ln1_b"] = None
        out = [
            dx, grads["ln1_w"], grads["ln1_b"], grads["q_w"], grads["q_b"], grads["k_w"], grads["k_b"],
            grads["v_w"], grads["v_b"], grads["o_w"], grads["o_b"], grads["ln2_w"], grads["ln2_b"],
            grads["in_w"], grads["in_b"], grads["out_w"], grads["out_b"],
        ]
        if P:
            out += [grads["pk"], grads["pv"]]
        return tuple(out)
