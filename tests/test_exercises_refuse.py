"""Every checker refuses tinypft's own implementation of its exercise: the library function itself,
a function that merely calls it (directly, through a module, an import inside the function, a helper
of the student's, a lambda or a partial), and a subclass of a library Function. The message names
what was refused. The right hand-written answers pass (test_exercises.py runs them through every
checker)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import tinypft
from tinypft import Function, exercises
from tinypft.data.tokenizer import Tokenizer, merge_pair
from tinypft.engine import functional as F
from tinypft.engine import gradcheck, ops
from tinypft.engine.autograd import _topological_order
from tinypft.exercises.common import Refused, library_uses
from tinypft.model import GPT
from tinypft.optim import AdamW
from tinypft.peft import BitFitConfig, analysis, counts
from tinypft.peft import prompt as library_prompt
from tinypft.peft.bitfit import bitfit_parameter_names
from tinypft.peft.prefix import split_key_values
from tinypft.peft.random_subset import AddAt
from tinypft.train.batching import pack_documents


class LibraryMul(ops.Mul):
    """A subclass that inherits the library's forward and backward."""


class CallsLibraryMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        return ops.Mul.forward(ctx, a, b)

    @staticmethod
    def backward(ctx, g):
        return ops.Mul.backward(ctx, g)


class LibraryScatter(AddAt):
    pass


def calls_through_an_import(grad, shape):
    from tinypft.engine.ops import unbroadcast as library

    return library(grad, shape)


def my_helper(grad, shape):
    return tinypft.engine.ops.unbroadcast(grad, shape)


def calls_a_helper(grad, shape):
    return my_helper(grad, shape)


def adamw_step(model, ids, labels, lr):
    loss = model.lm_loss(model(ids).logits, labels)
    loss.backward()
    AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0).step()
    return float(loss.item())


REFUSED = [
    (exercises.check_topological_sort, _topological_order, "_topological_order"),
    (exercises.check_unbroadcast, ops.unbroadcast, "is tinypft's own unbroadcast"),
    (exercises.check_unbroadcast, lambda g, s: ops.unbroadcast(g, s), "calls tinypft's own unbroadcast"),
    (exercises.check_unbroadcast, calls_through_an_import, "calls tinypft's own unbroadcast"),
    (exercises.check_unbroadcast, calls_a_helper, "calls tinypft's own unbroadcast"),
    (exercises.check_unbroadcast, functools.partial(ops.unbroadcast), "unbroadcast"),
    (exercises.check_mul_backward, ops.Mul, "class is tinypft's own Mul"),
    (exercises.check_mul_backward, LibraryMul, "class subclasses tinypft's own Mul"),
    (exercises.check_mul_backward, CallsLibraryMul, "class calls tinypft's own Mul"),
    (exercises.check_central_difference, lambda f, x, eps: gradcheck(f, [x]), "gradcheck"),
    (exercises.check_causal_mask, F.causal_mask, "causal_mask"),
    (exercises.check_attention, F.attention, "tinypft's own attention"),
    (exercises.check_attention, lambda q, k, v, mask: F.attention(q, k, v, mask), "attention"),
    (exercises.check_multi_head_attention, lambda attn, x, mask: attn(x, mask)[0], "attn\\(x, mask\\)"),
    (exercises.check_layer_norm, F.layer_norm, "layer_norm"),
    (exercises.check_parameter_count, lambda config: config.num_parameters(), "num_parameters"),
    (exercises.check_parameter_count, lambda config: GPT(config).num_parameters(), "GPT"),
    (exercises.check_gpt_logits, lambda model, ids: model(ids).logits, "GPT forward"),
    (exercises.check_gpt_logits, lambda model, ids: GPT.forward(model, ids).logits, "GPT.forward"),
    (exercises.check_count_pairs, lambda words: Tokenizer.train(words, 300), "Tokenizer.train"),
    (exercises.check_merge_pair, merge_pair, "merge_pair"),
    (exercises.check_lm_loss, lambda logits, labels: float(F.cross_entropy(logits, labels).item()),
     "cross_entropy"),
    (exercises.check_pack_documents, pack_documents, "pack_documents"),
    (exercises.check_value_bias_grad, lambda w_o, g: g.backward(), "backward pass"),
    (exercises.check_scatter_add, AddAt, "AddAt"),
    (exercises.check_scatter_add, LibraryScatter, "subclasses tinypft's own AddAt"),
    (exercises.check_bias_change, analysis.bias_change, "bias_change"),
    (exercises.check_bias_parameter_names, lambda model: bitfit_parameter_names(model, BitFitConfig()),
     "bitfit_parameter_names"),
    (exercises.check_prefix_param_count,
     lambda P, L, d, k: (counts.prefix_training_count(None, P, k), counts.prefix_inference_count(None, P)),
     "prefix_training_count"),
    (exercises.check_prefix_mlp, lambda e, w1, b1, w2, b2, L, H: split_key_values(e, L, H),
     "split_key_values"),
    (exercises.check_sampled_vocab_init,
     lambda wte, P, c, k, rng: wte[library_prompt.sample_vocab_ids(P, library_prompt.frequent_token_ids(
         len(wte), k, c), rng)], "sample_vocab_ids|frequent_token_ids"),
    (exercises.check_majority_vote, library_prompt.majority_vote, "majority_vote"),
    (exercises.check_bitfit_adamw_step, adamw_step, "AdamW"),
    (exercises.check_infix_mask, lambda s, P, T: GPT._attention_mask(np.ones((len(s), T), bool), P, s, None),
     "_attention_mask"),
]


@pytest.mark.parametrize(("checker", "fn", "what"), REFUSED,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(REFUSED)])
def test_checker_refuses_the_library_implementation(checker, fn, what):
    with pytest.raises(Refused, match=what) as info:
        checker(fn)
    message = str(info.value)
    assert message.startswith(f"{checker.__name__}: your ")
    assert "write it yourself" in message


def test_every_checker_of_a_lesson_has_a_refusal_test():
    refused = {checker.__name__ for checker, _, _ in REFUSED}
    # the Pareto front and the storage formula have no library implementation to refuse; the class label
    # and the prefix attention checkers share the tables of their neighbours (tested by library_uses below)
    without = {"check_pareto_front", "check_storage_for_tasks", "check_class_label_init",
               "check_prefix_attention", "check_prepend_prompt", "check_trainable_count",
               "check_freeze_all_but_biases"}
    assert set(exercises.__all__) - {"list_exercises", "make_student_versions", "strip_solutions"} \
        - without <= refused


def test_library_uses_reads_code_but_not_names_that_merely_look_alike():
    from tinypft.exercises.lesson05_prefix_tuning import LIBRARY as L5
    from tinypft.exercises.lesson06_prompt_tuning import LIBRARY as L6

    def mine(q, k, v, mask):  # an attention of the student's own may use softmax and the causal mask
        scores = (q @ k.transpose(-2, -1)) * (1.0 / np.sqrt(q.shape[-1]))
        return F.softmax(scores.masked_fill(~F.causal_mask(3, 3), -1e30), axis=-1) @ v

    assert library_uses(mine, L5["prefix_attention"]) is None
    assert library_uses(lambda *a: tinypft.model.CausalSelfAttention, L5["prefix_attention"])[0] == "calls"
    assert library_uses(lambda *a: library_prompt.initial_prompt(*a), L6["init"])[0] == "calls"
    assert library_uses(lambda *a: tinypft.peft.PromptTuningModel, L6["prepend_prompt"])[0] == "calls"
