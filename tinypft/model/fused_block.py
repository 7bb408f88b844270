"""A whole transformer block as one graph node, its forward run sequence by sequence on each thread.

``Block.forward`` (``gpt.py``) is the definition: about 25 graph nodes per block, each fused kernel
cutting its own work over the threads and waiting for it. Within a block every step is independent
across sequences (LayerNorm, the projections, GELU and the residual adds work row by row, attention
sequence by sequence), so one block needs no sync between its steps: here each thread takes a block
of whole sequences and runs them through the whole block, the same kernels' arithmetic on its rows:

    x1 = x + o_proj(attention(q_proj(h), [P_K; k_proj(h)], [P_V; v_proj(h)])),  h = LN_1(x)
    y  = x1 + fc_out(gelu(fc_in(LN_2(x1))))

One sync per block instead of about ten, no per-step graph bookkeeping, and the residual adds run
on every thread. The forward keeps, for every step, the context its fused kernel
(``engine/fused.py``) would have kept. Backward takes one of two routes, both doing each kernel's
backward arithmetic in the order, and with the gradient sums, that ``Tensor.backward`` would use
for the block's nodes, so values and gradients equal the node-by-node path bit for bit
(``tests/test_fused_block.py``):

* weight matrices need gradients (full fine-tuning): the kernels' own ``backward`` in turn. Each
  ``Linear`` starts its dW on a free thread as soon as it has run, which keeps the second thread
  fed all through the walk; at the bench size this was 6% faster than the row route below.
* no weight matrix does (BitFit, prefix, prompt): the backward mirrors the forward, each thread
  taking its sequences back through the whole block in one job, and the few sums over all rows
  (biases, LayerNorm weights, a prefix shared by the batch) follow as tasks.

``Block.forward`` hands itself here (``run``) when ``can_run`` says so: the fused kernels and this
switch (``use_fused_blocks``) are on, no KV cache is read, every dropout is the identity and the
block has the standard structure. Everything else (a cache, dropout in training, replaced
modules, the composed reference path) takes the node-by-node path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    attention_backward,
    attention_forward,
    gelu_backward,
    gelu_forward,
    layer_norm_backward,
    layer_norm_forward,
    layer_norm_weight_grads,
    mask_bias,
)
from ..engine.fused import LayerNorm as LayerNormKernel
from ..engine.fused import Linear as LinearKernel
from ..threads import later, parallel, parallel_for

if TYPE_CHECKING:
    from .gpt import Block

_enabled = [True]  # the switch: use_fused_blocks


@contextmanager
def use_fused_blocks(enabled: bool) -> Iterator[None]:
    """``with use_fused_blocks(False): ...`` runs every block node by node (``Block.forward``'s own
    code) inside, then restores the switch; on by default."""
    previous, _enabled[0] = _enabled[0], bool(enabled)
    try:
        yield
    finally:
        _enabled[0] = previous


def can_run(block: Block, past: Any, need_kv: bool) -> bool:
    """Whether ``run`` computes this call of ``block`` (see the module docstring)."""
    if not (_enabled[0] and fused_kernels_enabled()) or past is not None:
        return False
    if not block.has_standard_modules():
        return False
    attn, mlp = block.attn, block.mlp
    linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc_in, mlp.fc_out)
    if any(linear.bias is None for linear in linears):
        return False
    if any(dropout.training and dropout.p > 0 for dropout in (attn.resid_dropout, mlp.dropout)):
        return False
    # the keys and values are returned only as arrays: fine for a cache filled without gradients
    return not (need_kv and is_grad_enabled())


def run(
    block: Block, x: Tensor, mask: np.ndarray | None, kv_prefix: tuple[Tensor, Tensor] | None, need_kv: bool
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
        *inputs, mask=None if mask is None else np.asarray(mask, dtype=bool), n_heads=attn.n_heads,
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

    The forward keeps, for every step, the context its fused kernel would have kept. Backward goes
    through the kernels' own ``backward`` when weight matrices train (``_backward_through_kernels``)
    and row by row when none does (``_backward_by_rows``): see the module docstring.
    """

    @staticmethod
    def forward(
        ctx: Context, x: np.ndarray, *arrays: np.ndarray, mask: np.ndarray | None, n_heads: int,
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
        ctx.save_for_backward(*saved, (contexts, rg, (B, S, d, d_ff, H, hd, P), [a.shape for a in prefix]))
        return y.reshape(B, S, d)

    @staticmethod
    def backward(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        rg = ctx.saved[-1][1]
        if any(rg[f"{layer}.weight"] for layer in LINEARS):
            return _backward_through_kernels(ctx, g)
        return _backward_by_rows(ctx, g)


LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "fc_in", "fc_out")


def _backward_through_kernels(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
    """Backward when weight matrices need gradients (full fine-tuning): each step's fused kernel
    ``backward`` in turn, with its own jobs. A Linear's dW starts on a free thread as soon as its
    kernel has run (``threads.later``), so the weight work is spread over the whole walk."""
    contexts, rg, (B, S, d, _, H, hd, P), prefix_shapes = ctx.saved[-1]
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


def _backward_by_rows(ctx: Context, g: np.ndarray) -> tuple[np.ndarray | None, ...]:
    """Backward when no weight matrix needs a gradient (BitFit, prefix and prompt tuning): each
    kernel's backward arithmetic, row by row, each thread taking a block of whole sequences back
    through the whole block in one job; the sums over all rows (biases, LayerNorm weights, a
    prefix shared by the batch) come after it, as tasks."""
    contexts, rg, (B, S, d, d_ff, H, hd, P), prefix_shapes = ctx.saved[-1]
    N, dt = B * S, g.dtype
    g2 = g.reshape(N, d)  # (N, d)
    saved = {name: c.saved for name, c in contexts.items() if c is not None}

    def empty(shape: tuple[int, ...], needed: bool) -> np.ndarray | None:
        return np.empty(shape, dt) if needed else None

    # What the rows are read from: the arrays the forward kept (as each kernel keeps them)
    _, gy, out_w, _ = saved["fc_out"]
    if rg["u"]:
        u, gs = (a.reshape(N, -1) for a in saved["gelu"])  # (N, d_ff) each
        _, h2, in_w, _ = saved["fc_in"]
    if rg["h2"]:
        x1, m2, r2, ln2_w, _ = saved["ln_2"]
        x1, m2, r2 = x1.reshape(N, d), m2.reshape(N, 1), r2.reshape(N, 1)
    if rg["att"]:
        _, att2, o_w, _ = saved["o_proj"]
        q4, k_all, v_all, probs, att, empty_row_mask, scale = saved["attention"]
        if empty_row_mask is not None and empty_row_mask.ndim == 4 and empty_row_mask.shape[0] != B:
            empty_row_mask = np.broadcast_to(empty_row_mask, (B, *empty_row_mask.shape[1:]))
    if rg["h1"]:
        x2, m1, r1, ln1_w, _ = saved["ln_1"]
        x2, m1, r1 = x2.reshape(N, d), m1.reshape(N, 1), r1.reshape(N, 1)

    # What the rows are written into: every gradient a sum over all rows will read
    du = empty(u.shape, True) if rg["u"] else None  # (N, d_ff): fc_in's output
    dh2, x_hat2 = empty((N, d), rg["h2"]), empty((N, d), rg["h2"])  # LN_2's output and x_hat
    dx1 = empty((N, d), rg["x1"])  # (N, d): x1's, g + LN_2's dx
    d_heads: dict[str, np.ndarray | None] = dict.fromkeys("qkv")  # (B, H, S|Tk, hd), as fused.Attention
    if rg["att"]:
        for name, key, a in (("q", "q", q4), ("k", "k_all", k_all), ("v", "v_all", v_all)):
            if rg[key]:
                d_heads[name] = _heads_side_by_side(a.shape, dt)
    d_proj: dict[str, np.ndarray | None] = {}  # (N, d): each projection's output (rows of d_heads)
    for name in "qkv":
        if rg[name]:
            if P and name != "q":  # K's rest after the prefix: a copy, as the node path's reshape makes
                d_proj[name] = np.empty((N, d), dt)
            else:  # heads side by side already: a view
                d_proj[name] = d_heads[name].transpose(0, 2, 1, 3).reshape(N, d)
    dh1, x_hat1 = empty((N, d), rg["h1"]), empty((N, d), rg["h1"])  # LN_1's output and x_hat
    dx = empty((N, d), rg["x"])  # (N, d): x's, dx1 + LN_1's dx

    def mlp_rows(s: slice) -> None:  # y = x1 + fc_out(gelu(fc_in(LN_2(x1)))), back to dx1, for sequences s
        r, rows = slice(s.start * S, s.stop * S), (s.stop - s.start) * S
        if rg["u"]:
            gelu_backward(u[r], gs[r], np.matmul(g2[r], out_w), out=du[r])  # fc_out's dx, then GELU's
        if rg["h2"]:
            np.matmul(du[r], in_w, out=dh2[r])  # fc_in's dx
            dx1_norm = empty((rows, d), rg["x1"])
            layer_norm_backward(x1[r], m2[r], r2[r], ln2_w, dh2[r], rg["x1"], out=(x_hat2[r], dx1_norm))
            if dx1_norm is not None:
                np.add(g2[r], dx1_norm, out=dx1[r])  # the add hands g on: g + LN_2's dx, in that order

    def attention_rows(s: slice) -> None:  # x1 = x + o_proj(attention(q, K, V)), back to dx, for sequences s
        r, rows, b = slice(s.start * S, s.stop * S), (s.stop - s.start) * S, s.stop - s.start
        d_att = np.matmul(dx1[r], o_w).reshape(b, S, H, hd).transpose(0, 2, 1, 3)  # o_proj's dx
        mask_s = empty_row_mask
        if mask_s is not None and mask_s.ndim == 4:
            mask_s = mask_s[s]
        into = tuple(None if a is None else a[s] for a in d_heads.values())
        attention_backward(q4[s], k_all[s], v_all[s], probs[s], att[s], d_att, mask_s, scale, into=into)
        first = True
        for name in "qkv":  # the order in which Tensor.backward sums the three projections' dx
            if name not in d_proj:
                continue
            if P and name != "q":
                rest = d_heads[name][s, :, P:].transpose(0, 2, 1, 3)  # (b, S, H, hd)
                np.copyto(d_proj[name][r].reshape(b, S, H, hd), rest)
            if not rg["h1"]:
                continue
            w = saved[f"{name}_proj"][2]
            if first:
                np.matmul(d_proj[name][r], w, out=dh1[r])
                first = False
            else:
                dh1[r] += np.matmul(d_proj[name][r], w)  # (q + k) + v
        if rg["h1"]:
            dx_norm = empty((rows, d), rg["x"])
            layer_norm_backward(x2[r], m1[r], r1[r], ln1_w, dh1[r], rg["x"], out=(x_hat1[r], dx_norm))
            if dx_norm is not None:
                np.add(dx1[r], dx_norm, out=dx[r])  # the add hands dx1 on: dx1 + LN_1's dx, in that order

    # The sums over all rows, each as its kernel computes it
    grads: dict[str, np.ndarray | None] = dict.fromkeys(INPUTS)
    tasks: list[Callable[[], None]] = []
    leaves = []

    def weight_grads(layer: str, g_rows: np.ndarray, x_rows: np.ndarray | None) -> None:
        """dW = g^T x and db = sum over rows of g, as fused.Linear computes them."""
        _, need_w, need_b = contexts[layer].needs_input_grad
        dw = empty((g_rows.shape[1], x_rows.shape[1]) if need_w else (), need_w)  # (out, in)
        db = empty((g_rows.shape[1],), need_b)  # (out,)
        if dw is not None:
            tasks.append(lambda: np.matmul(g_rows.T, x_rows, out=dw))
        if db is not None:
            tasks.append(lambda: np.add.reduce(g_rows, axis=0, out=db))
        grads[f"{layer}.weight"], grads[f"{layer}.bias"] = dw, db
        leaves.append(saved[layer][-1])

    def norm_grads(layer: str, g_rows: np.ndarray, x_hat: np.ndarray) -> None:
        _, need_w, need_b = contexts[layer].needs_input_grad
        grads[f"{layer}.weight"], grads[f"{layer}.bias"], more = layer_norm_weight_grads(
            g_rows, x_hat, need_w, need_b
        )
        tasks.extend(more)
        leaves.append(saved[layer][-1])

    def sequences(s: slice) -> None:  # the whole block, backwards, for sequences s
        mlp_rows(s)
        if rg["att"]:
            attention_rows(s)

    per_sequence = S * (4 * d * d + 2 * d * d_ff + 2 * S * d)  # multiply-adds of one sequence
    parallel_for(B, sequences, _min_rows(per_sequence, GEMM_PIECE))
    weight_grads("fc_out", g2, gy)
    if rg["u"]:
        weight_grads("fc_in", du, h2)
    if rg["h2"]:
        norm_grads("ln_2", dh2, x_hat2)
    grads["x"] = None if dx is None else dx.reshape(B, S, d)
    if rg["x1"]:
        weight_grads("o_proj", dx1, saved["o_proj"][1])
    for name in d_proj:
        weight_grads(f"{name}_proj", d_proj[name], saved[f"{name}_proj"][1])
    if rg["h1"]:
        norm_grads("ln_1", dh1, x_hat1)
    for name, shape in zip("kv", prefix_shapes):  # K = [P_K; k]: P_K's part, summed over the batch
        if rg[f"prefix_{name}"] and d_heads[name] is not None:
            front = np.split(d_heads[name], [P], axis=2)[0]  # what ops.Concat.backward gives
            grads[f"prefix_{name}"] = ops.unbroadcast(front, shape)
    # nothing reads a leaf's gradient before backward ends: then the sums may finish later
    (later if all(leaves) else parallel)(tasks)
    return tuple(grads[name] for name in INPUTS[: len(ctx.needs_input_grad)])
