"""Prompt-Tuning: a trainable soft prompt in front of the input (Lester, Al-Rfou & Constant, EMNLP 2021).

The language model is frozen. P vectors, the soft prompt, are put in front of the token
embeddings and the frozen model reads the concatenation:

    X = [wte[x_1]; ...; wte[x_T]]              (T, d)   token embeddings
    input = [soft_prompt; X] + wpe[0..P+T-1]   (P + T, d)

Only the soft prompt (P, d) trains: P d scalars (409,600 = 0.0037% of T5-XXL at P = 100). The
logits of the P prompt positions are dropped, so outputs cover the real tokens only. This is
Prefix-Tuning's embedding-only ablation: the frozen layers compute the prompt's keys and values.

Initializations (``PromptTuningConfig.init``): uniform U[-0.5, 0.5] (the paper's random init),
sampled vocabulary (embeddings of frequent tokens), class labels (the embeddings of the label
words, one per slot), text (the embeddings of a given text), or N(0, 1) (Hugging Face PEFT's
default). The paper finds class labels > sampled vocab > uniform, with the gaps closing as models
grow.

Prompt ensembling: several prompts trained for one task on one frozen model run as one batch,
each example repeated once per prompt, and the prediction is their majority vote
(``PromptEnsemble``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine import Tensor, default_dtype, no_grad, ops
from ..engine.rng import get_rng
from ..model import GPT, GPTOutput, last_real_index
from ..nn import Module, Parameter
from .config import PromptTuningConfig, resolve_token_ids
from .model import PeftModel


class SoftPrompt(Module):
    """The soft prompt: ``weight`` (P, d)."""

    def __init__(self, initial: np.ndarray):
        super().__init__()
        self.num_virtual_tokens, self.dim = initial.shape
        self.weight = Parameter(initial)  # (P, d)

    def forward(self) -> Tensor:
        return self.weight.reshape(1, self.num_virtual_tokens, self.dim)  # (1, P, d)


# ----------------------------------------------------------------------------- initializations


def frequent_token_ids(vocab_size: int, top_k: int, token_counts: Any = None) -> np.ndarray:
    """The ``top_k`` most frequent token ids given ``token_counts`` (an array with one count per
    id, or a dict id -> count); without counts, the whole vocabulary."""
    if token_counts is None:
        return np.arange(vocab_size)
    if isinstance(token_counts, dict):
        counts = np.zeros(vocab_size)
        for token_id, count in token_counts.items():
            if not 0 <= int(token_id) < vocab_size:
                raise ValueError(f"token_counts: token id {token_id} is out of range for {vocab_size} tokens")
            counts[int(token_id)] = count
    else:
        counts = np.asarray(token_counts, dtype=np.float64)
        if counts.shape != (vocab_size,):
            raise ValueError(
                f"token_counts must have one count per token id ({vocab_size}), got {counts.shape}"
            )
    order = np.argsort(-counts, kind="stable")  # most frequent first; ties by id
    return order[: min(top_k, int((counts > 0).sum()) or vocab_size)]


def sample_vocab_ids(n: int, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` ids drawn from ``pool``, without replacement when the pool is large enough."""
    return rng.choice(pool, size=n, replace=n > len(pool))


def label_token_ids(config: PromptTuningConfig, vocab_size: int | None = None) -> list[list[int]]:
    """Each class label as its token ids (strings are encoded with the config's tokenizer), each
    in [0, vocab_size) when ``vocab_size`` is given."""
    labels = []
    for i, label in enumerate(config.class_labels):
        if isinstance(label, int | np.integer):
            label = [label]
        labels.append(resolve_token_ids(f"class_labels[{i}]", label, config.tokenizer, vocab_size))
    return labels


def initial_prompt(config: PromptTuningConfig, wte: np.ndarray) -> np.ndarray:
    """The soft prompt's starting value (P, d) for ``config.init``; ``wte`` is the embedding table (V, d)."""
    P, (V, d) = config.num_virtual_tokens, wte.shape
    rng = get_rng()
    if config.init == "uniform":
        return rng.uniform(-0.5, 0.5, size=(P, d))  # (P, d)
    if config.init == "random_normal":
        return rng.standard_normal((P, d))  # (P, d)
    if config.init == "text":
        ids = resolve_token_ids("PromptTuningConfig.init_text", config.init_text, config.tokenizer, V)
        return wte[np.resize(np.asarray(ids), P)].copy()  # (P, d): ids tiled or cut to P
    pool = frequent_token_ids(V, config.sample_top_k, config.token_counts)
    if config.init == "sampled_vocab":
        return wte[sample_vocab_ids(P, pool, rng)].copy()  # (P, d)
    labels = label_token_ids(config, V)  # class_labels
    if len(labels) > P:
        raise ValueError(f"PromptTuningConfig: {len(labels)} class labels do not fit in {P} virtual tokens")
    label_rows = [wte[ids].mean(axis=0) for ids in labels]  # one (d,) per label, multi-token labels averaged
    rest = wte[sample_vocab_ids(P - len(labels), pool, rng)]  # (P - n_labels, d)
    return np.concatenate([np.stack(label_rows), rest], axis=0)  # (P, d)


# ----------------------------------------------------------------------------- the model


class PromptTuningModel(PeftModel):
    """The frozen base model with a trainable soft prompt in front of every sequence."""

    def __init__(self, base_model: GPT, peft_config: PromptTuningConfig):
        super().__init__(base_model, peft_config)
        wte = base_model.wte.weight.data  # (V, d)
        with default_dtype(wte.dtype):  # zeros until initialize_adapter or an adapter file fills it
            self.soft_prompt = SoftPrompt(np.zeros((peft_config.num_virtual_tokens, wte.shape[1]), wte.dtype))

    def initialize_adapter(self) -> None:
        """The soft prompt's starting value for ``peft_config.init`` (see ``initial_prompt``)."""
        wte = self.base_model.wte.weight.data  # (V, d)
        self.soft_prompt.weight.copy_(initial_prompt(self.peft_config, wte).astype(wte.dtype))  # (P, d)

    @property
    def num_virtual_tokens(self) -> int:
        return self.peft_config.num_virtual_tokens

    def prompt_embeddings(self) -> Tensor:
        """The soft prompt as the base model's ``prompt_embeds`` (1, P, d)."""
        return self.soft_prompt()

    def virtual_inputs(self, real_tokens: np.ndarray) -> dict[str, Any]:
        """The forward hook: [soft prompt; tokens]."""
        return {"prompt_embeds": self.prompt_embeddings()}  # (1, P, d)


# ----------------------------------------------------------------------------- ensembling


def majority_vote(predictions: np.ndarray) -> np.ndarray:
    """(N, B) class ids -> (B,) the most frequent per column; a tie goes to the smallest class id."""
    num_classes = int(predictions.max()) + 1
    votes = np.stack([np.bincount(column, minlength=num_classes) for column in predictions.T])  # (B, C)
    return np.argmax(votes, axis=1)


class PromptEnsemble:
    """N soft prompts for one task on one frozen model, run as one batch of N x B rows.

    Row n * B + b holds example b behind prompt n. ``predict`` classifies each row, by the label
    words' logits at the last real token (``label_token_ids``, one token id per class) or by the
    model's classification head, and returns the majority vote over the N prompts.
    """

    def __init__(self, prompts: Sequence[PromptTuningModel]):
        if not prompts:
            raise ValueError("PromptEnsemble: needs at least one prompt")
        self.prompts = list(prompts)
        self.base_model = self.prompts[0].base_model
        lengths = {p.num_virtual_tokens for p in self.prompts}
        if any(p.base_model is not self.base_model for p in self.prompts):
            raise ValueError("PromptEnsemble: every prompt must be built on the same base model object")
        if len(lengths) != 1:
            raise ValueError(f"PromptEnsemble: the prompts must have the same length, got {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.prompts)

    def __call__(self, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> GPTOutput:
        return self.forward(ids, attention_mask)

    def forward(self, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> GPTOutput:
        """One batch of N x B rows (row n * B + b: example b behind prompt n)."""
        ids = np.asarray(ids)
        B, T = ids.shape
        N, P, d = len(self.prompts), self.prompts[0].num_virtual_tokens, self.base_model.config.d_model
        prompts = ops.concat(
            [p.prompt_embeddings().broadcast_to((B, P, d)) for p in self.prompts], axis=0
        )  # (N B, P, d)
        mask = None if attention_mask is None else np.tile(np.asarray(attention_mask), (N, 1))  # (N B, T)
        return self.base_model(np.tile(ids, (N, 1)), mask, prompt_embeds=prompts)  # logits (N B, T, V)

    def predict_each(
        self,
        ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        label_token_ids: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Every prompt's predicted class (N, B)."""
        ids = np.asarray(ids)
        B, T = ids.shape
        with no_grad():
            out = self.forward(ids, attention_mask)
        if label_token_ids is not None:
            real = np.ones((B, T)) if attention_mask is None else attention_mask  # (B, T)
            last = np.tile(last_real_index(real), len(self))  # (N B,)
            scores = out.logits.data[np.arange(len(last)), last][:, list(label_token_ids)]  # (N B, C)
        elif out.cls_logits is not None:
            scores = out.cls_logits.data  # (N B, C)
        else:
            raise ValueError(
                "PromptEnsemble.predict: pass label_token_ids (the model has no classification head)"
            )
        return np.argmax(scores, axis=1).reshape(len(self), B)  # (N, B)

    def predict(
        self,
        ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        label_token_ids: Sequence[int] | None = None,
    ) -> np.ndarray:
        """The majority vote of the N prompts (B,): class indices (into ``label_token_ids`` or the head)."""
        return majority_vote(self.predict_each(ids, attention_mask, label_token_ids))
