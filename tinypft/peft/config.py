"""Configurations of the fine-tuning methods: one small dataclass per method.

Every method is described by a config alone, so two runs that differ only in their config compare
like with like (same base model, same data, same loop):

    FullFinetuneConfig()                       every parameter trains (the reference point)
    FrozenConfig()                             only the task head trains (a linear probe)
    BitFitConfig(components, include_head)     bias terms only (Ben Zaken et al., 2022)
    PrefixTuningConfig(num_virtual_tokens...)  per-layer key/value prefixes (Li & Liang, 2021)
    PromptTuningConfig(num_virtual_tokens...)  a soft prompt at the input (Lester et al., 2021)
    RandomSubsetConfig(num_params, seed...)    random weight entries, BitFit's control

``to_dict`` / ``mapping.config_from_dict`` turn a config into JSON and back (the adapter files store it);
fields that only steer initialization and cannot be written as JSON (a tokenizer, token counts)
are left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

BITFIT_COMPONENTS: tuple[str, ...] = ("q", "k", "v", "o", "fc_in", "fc_out", "ln_1", "ln_2", "ln_f")
BITFIT_ALIASES: dict[str, tuple[str, ...]] = {"ln": ("ln_1", "ln_2", "ln_f")}  # "ln": every LayerNorm beta
PREFIX_MODES: tuple[str, ...] = ("prefix", "infix", "embedding_only")
PREFIX_INITS: tuple[str, ...] = ("random", "real_words", "activation_scale")
PROMPT_INITS: tuple[str, ...] = ("uniform", "sampled_vocab", "class_labels", "text", "random_normal")
SUBSET_COMPONENTS: tuple[str, ...] = ("q", "k", "v", "o", "fc_in", "fc_out")


@dataclass
class PeftConfig:
    """Base class: the method's name and the JSON round trip."""

    method: ClassVar[str] = ""
    not_saved: ClassVar[tuple[str, ...]] = ()  # fields used only at initialization, not JSON-able

    def to_dict(self) -> dict[str, Any]:
        values = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.not_saved
        }
        for name, value in values.items():
            if isinstance(value, tuple):
                values[name] = list(value)
            elif isinstance(value, list):
                values[name] = [list(v) if isinstance(v, tuple) else v for v in value]
        return {"method": self.method, **values}


@dataclass
class FullFinetuneConfig(PeftConfig):
    """Every parameter of the model trains."""

    method: ClassVar[str] = "full"


@dataclass
class FrozenConfig(PeftConfig):
    """The language model is frozen; only a task head trains (a linear probe).

    With a classification head (``model.add_classification_head``) that head trains; a model without
    one has nothing left to train (the frozen baseline: evaluate it, an optimizer would be empty).
    """

    method: ClassVar[str] = "frozen"


@dataclass
class BitFitConfig(PeftConfig):
    """Train only bias terms (Ben Zaken et al., 2022).

    components: any of "q", "k", "v", "o" (attention projections), "fc_in" (the FFN's intermediate
        layer, b_m2 in the paper's notation), "fc_out" (the FFN's output layer), "ln" (the betas of
        ln_1, ln_2 and ln_f), or "ln_1", "ln_2", "ln_f" one by one. ``("q", "fc_in")`` is the paper's
        0.04% variant.
    include_head: a classification head, when the model has one, trains too: True trains all of it
        (weight and bias, as the paper's code trains its task-specific classifier, so BitFit is the
        linear probe plus biases), "bias" only its bias, False none of it.
    """

    method: ClassVar[str] = "bitfit"
    components: Sequence[str] = ("q", "k", "v", "o", "fc_in", "fc_out", "ln")
    include_head: bool | str = True

    def __post_init__(self) -> None:
        self.components = tuple(self.components)
        unknown = [c for c in self.components if c not in BITFIT_COMPONENTS and c not in BITFIT_ALIASES]
        if unknown or not self.components:
            raise ValueError(
                f"BitFitConfig: unknown components {unknown}; choose from "
                f"{list(BITFIT_COMPONENTS) + list(BITFIT_ALIASES)}"
            )
        if self.include_head not in (True, False, "bias"):
            raise ValueError(
                f"BitFitConfig: include_head must be True, False or 'bias', got {self.include_head!r}"
            )

    def expanded_components(self) -> tuple[str, ...]:
        """The components with "ln" spelled out, in a fixed order."""
        chosen = set()
        for c in self.components:
            chosen.update(BITFIT_ALIASES.get(c, (c,)))
        return tuple(c for c in BITFIT_COMPONENTS if c in chosen)


@dataclass
class PrefixTuningConfig(PeftConfig):
    """Prefix-Tuning (Li & Liang, 2021): P trainable key/value vectors in front of every layer.

    num_virtual_tokens: P, the prefix length.
    prefix_projection: train through the reparameterization Embedding(P, d) -> Linear(d, k) -> tanh
        -> Linear(k, 2 L d) (the paper's stable way); False optimizes the prefix (P, 2 L d) directly.
    encoder_hidden_size: k, the MLP's hidden width (512 in the paper's table-to-text runs).
    init: "random" (N(0, 1), as Hugging Face PEFT), "real_words": the frozen LM's own keys and
        values on the tokens of ``init_text`` (ids tiled or truncated to P), or "activation_scale":
        random with the root mean square those activations have, per layer and keys/values.
    init_text: token ids, or a string together with ``tokenizer``.
    mode: "prefix" (every token sees the prefix), "infix" ([x; INFIX; y]: only the tokens from a
        given index on see it) or "embedding_only" (P free vectors at the input, which the frozen
        LM carries through its layers: the mechanism of prompt tuning).
    """

    method: ClassVar[str] = "prefix"
    not_saved: ClassVar[tuple[str, ...]] = ("tokenizer",)
    num_virtual_tokens: int = 10
    prefix_projection: bool = True
    encoder_hidden_size: int = 512
    init: str = "random"
    init_text: Any = None
    mode: str = "prefix"
    tokenizer: Any = None

    def __post_init__(self) -> None:
        _check_positive("PrefixTuningConfig", "num_virtual_tokens", self.num_virtual_tokens)
        _check_positive("PrefixTuningConfig", "encoder_hidden_size", self.encoder_hidden_size)
        _check_choice("PrefixTuningConfig", "mode", self.mode, PREFIX_MODES)
        _check_choice("PrefixTuningConfig", "init", self.init, PREFIX_INITS)
        if self.init in ("real_words", "activation_scale") and self.init_text is None:
            raise ValueError(f"PrefixTuningConfig: init={self.init!r} needs init_text (token ids or text)")


@dataclass
class PromptTuningConfig(PeftConfig):
    """Prompt-Tuning (Lester et al., 2021): P trainable vectors in front of the token embeddings.

    num_virtual_tokens: P, the prompt length (the paper's default is 100).
    init:
        "uniform"        U[-0.5, 0.5] (the paper's random initialization)
        "sampled_vocab"  embeddings of tokens drawn from the ``sample_top_k`` most frequent ones;
                         frequency comes from ``token_counts`` (one count per vocabulary id), and
                         without counts from the whole vocabulary (what Hugging Face PEFT does)
        "class_labels"   one label per slot: the embedding of the label's token (the mean over its
                         tokens for a multi-token label); slots beyond the labels use sampled_vocab
        "text"           embeddings of ``init_text``'s tokens, tiled or truncated to P
        "random_normal"  N(0, 1) (Hugging Face PEFT's RANDOM default)
    init_text, class_labels: token ids (a list of ints, a list of id lists) or strings together
        with ``tokenizer``.
    """

    method: ClassVar[str] = "prompt"
    not_saved: ClassVar[tuple[str, ...]] = ("tokenizer", "token_counts")
    num_virtual_tokens: int = 20
    init: str = "uniform"
    init_text: Any = None
    class_labels: Any = None
    sample_top_k: int = 5000
    tokenizer: Any = None
    token_counts: Any = None

    def __post_init__(self) -> None:
        _check_positive("PromptTuningConfig", "num_virtual_tokens", self.num_virtual_tokens)
        _check_positive("PromptTuningConfig", "sample_top_k", self.sample_top_k)
        _check_choice("PromptTuningConfig", "init", self.init, PROMPT_INITS)
        if self.init == "text" and self.init_text is None:
            raise ValueError("PromptTuningConfig: init='text' needs init_text (token ids or a string)")
        if self.init == "class_labels" and not self.class_labels:
            raise ValueError("PromptTuningConfig: init='class_labels' needs class_labels")


@dataclass
class RandomSubsetConfig(PeftConfig):
    """Train a fixed random subset of weight entries (the BitFit paper's "rand uniform" control).

    num_params: n, entries drawn uniformly from the chosen weight matrices together; None: as many
        as BitFit trains on the model (every bias and LayerNorm beta, without the head).
    components: whose weights to draw from: any of "q", "k", "v", "o", "fc_in", "fc_out".
    seed: the subset is ``np.random.default_rng(seed)``'s draw, independent of the global generator.
    include_head: a classification head, when the model has one, trains in full (as BitFit's).
    """

    method: ClassVar[str] = "random_subset"
    num_params: int | None = None
    components: Sequence[str] = SUBSET_COMPONENTS
    seed: int = 0
    include_head: bool = True

    def __post_init__(self) -> None:
        self.components = tuple(self.components)
        unknown = [c for c in self.components if c not in SUBSET_COMPONENTS]
        if unknown or not self.components:
            raise ValueError(
                f"RandomSubsetConfig: unknown components {unknown}; choose from {list(SUBSET_COMPONENTS)}"
            )
        if self.num_params is not None:
            _check_positive("RandomSubsetConfig", "num_params", self.num_params)


def resolve_token_ids(what: str, value: Any, tokenizer: Any, vocab_size: int | None = None) -> list[int]:
    """Token ids from a list of ints, or from a string encoded with ``tokenizer``.

    Every id must be an integer in [0, vocab_size) (when ``vocab_size`` is given): a -1 would
    otherwise pick the last row of the embedding table, silently, and 2.7 would become 2.
    """
    if isinstance(value, str):
        if tokenizer is None:
            raise ValueError(f"{what} is a string; pass tokenizer= to encode it (or give token ids)")
        ids = list(tokenizer.encode(value))
    else:
        ids = list(value)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int | np.integer)]
        if bad:
            raise TypeError(f"{what}: token ids must be integers, got {bad[0]!r}")
        ids = [int(i) for i in ids]
    if not ids:
        raise ValueError(f"{what} has no tokens")
    if vocab_size is not None:
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"{what}: token id {bad[0]} is out of range for vocab_size {vocab_size}")
    return ids


def _check_positive(cls: str, name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{cls}.{name} must be a positive integer, got {value!r}")


def _check_choice(cls: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{cls}.{name} must be one of {list(choices)}, got {value!r}")
