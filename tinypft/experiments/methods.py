"""The fine-tuning methods the experiments compare, each with its default hyperparameters.

    full     every parameter trains                         FullFinetuneConfig
    frozen   nothing trains (generation: the pretrained LM   FrozenConfig
             as it is); classification: a linear probe
    bitfit   bias terms only                                BitFitConfig
    prefix   per-layer key/value prefixes, through an MLP   PrefixTuningConfig
    prompt   a soft prompt in front of the input            PromptTuningConfig
    random_subset  random weight entries, as many as BitFit    RandomSubsetConfig
                   trains (BitFit's control)

Every method runs the same loop (AdamW, linear warmup then linear decay, gradient clipping at 1,
batch 8); only the learning rate and the method's own sizes differ. The learning rates were
chosen by dev BLEU and slot error rate on synthetic E2E (small model, 600 steps, 60 dev MRs, seed
0), never on test:

    tinypft finetune --method M --steps 600 --eval-size 60 --sweep-lr ...
    full     3e-4: 34.6 / 0.946   1e-3: 39.5 / 0.701   3e-3: 41.2 / 0.743      (BLEU / SER)
    bitfit   3e-2: 15.8 / 1.290   1e-1: 13.8 / 1.239
    prefix   3e-3: 20.6 / 1.205   1e-2:  4.8 / 1.139   (P 10, MLP width 512)
    prompt   1e-1: 12.8 / 1.260   3e-1: 12.4 / 1.215   (P 16, sampled-vocabulary init)

Full fine-tuning takes 1e-3: 3e-3 is a little ahead on BLEU but makes more slot errors, and at
1,500 steps 1e-3 reaches 46.4 BLEU with a slot error rate of 0.079. The PEFT methods are far
behind at this budget (their training loss ends near 1.68 nats against full fine-tuning's 0.85).

As the papers say, prompt tuning wants a far larger learning rate than the rest, and full
fine-tuning the smallest. One short budget and one seed decided: a longer run may prefer others.

Classification rates, by dev accuracy on ``rating`` (200 steps, all 1,020 dev examples; measured on the
previous small checkpoint, pretrained before the corpus had made-up names):

    full     3e-4: 0.382  1e-3: 0.711  3e-3: 0.372
    frozen   3e-3: 0.373  1e-2: 0.275  3e-2: 0.396  1e-1: 0.307     (the linear probe)
    bitfit   1e-2, 3e-2, 1e-1: 0.260 (always "high"); one epoch (513 steps): 3e-2: 0.357, 1e-1: 0.367
    prefix   1e-3, 3e-3, 1e-2: 0.260;  prompt  3e-2, 1e-1, 3e-1: 0.260 (one epoch too)

random_subset takes BitFit's rates without a sweep of its own: AdamW moves every trained scalar by
about lr per step whatever its gradient's scale, so at the same rate the control differs from
BitFit only in which scalars train. (``tinypft findings --only bitfit`` also runs it at 1e-2.)

No rate made prefix or prompt tuning learn the label words within one epoch on this 1M-parameter
model, so they keep their generation rates; the same rates serve ``match``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..peft import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
)


@dataclass(frozen=True)
class Method:
    """A method's name, what it trains, and its default hyperparameters."""

    name: str
    trains: str  # one line: what the method trains
    lr: float  # AdamW peak learning rate on generation (E2E)
    classification_lr: float  # on classification (frozen: the linear probe's)
    num_virtual_tokens: int | None = None  # prefix / prompt length P
    encoder_hidden_size: int | None = None  # prefix only: the reparameterization MLP's width k
    generation_init: str | None = None  # prompt only: init for generation tasks
    classification_init: str | None = None  # prompt only: init for classification tasks


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", "every parameter", lr=1e-3, classification_lr=1e-3),
        Method("frozen", "nothing (classification: a linear probe on the last token)", lr=0.0,
               classification_lr=3e-2),
        Method("bitfit", "the bias terms (q, k, v, o, FFN, LayerNorm betas)", lr=3e-2,
               classification_lr=1e-1),
        Method(
            "prefix", "P key/value vectors per layer (through an MLP while training)", lr=3e-3,
            classification_lr=3e-3, num_virtual_tokens=10, encoder_hidden_size=512,
        ),
        Method(
            "prompt", "P input vectors (a soft prompt)", lr=1e-1, classification_lr=1e-1,
            num_virtual_tokens=16, generation_init="sampled_vocab", classification_init="class_labels",
        ),
        Method("random_subset", "random weight entries, as many as BitFit's biases (its control)", lr=3e-2,
               classification_lr=1e-1),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name``; a ValueError lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def peft_config(
    method: str,
    *,
    classification: bool,
    num_virtual_tokens: int | None = None,
    prefix_projection: bool = True,
    encoder_hidden_size: int | None = None,
    mode: str = "prefix",
    init: str | None = None,
    init_text: str | None = None,
    label_words: Sequence[str] = (),
    tokenizer: Any = None,
    token_counts: Any = None,
    seed: int = 0,
) -> PeftConfig:
    """The PeftConfig of ``method``, with its defaults where an option is None.

    ``mode``, ``prefix_projection`` and ``encoder_hidden_size`` are Prefix-Tuning's; ``init``
    chooses Prefix-Tuning's ("random", "real_words") or Prompt-Tuning's initialization (e.g.
    "sampled_vocab", which draws from the tokens ``token_counts`` counts, or "class_labels",
    which uses ``label_words``). ``init_text`` feeds the "real_words" and "text" inits. ``seed``
    draws random_subset's entries (the run's seed, so seeds differ in the subset too).
    """
    spec = get_method(method)
    if init is not None and method not in ("prefix", "prompt"):
        raise ValueError(f"--init is for prefix and prompt; {method} has no initialization to choose")
    if method == "full":
        return FullFinetuneConfig()
    if method == "frozen":
        return FrozenConfig()
    if method == "bitfit":
        return BitFitConfig()
    if method == "random_subset":
        return RandomSubsetConfig(seed=seed)
    length = num_virtual_tokens or spec.num_virtual_tokens
    if method == "prefix":
        return PrefixTuningConfig(
            num_virtual_tokens=length,
            prefix_projection=prefix_projection,
            encoder_hidden_size=encoder_hidden_size or spec.encoder_hidden_size,
            init=init or "random",
            init_text=init_text,
            mode=mode,
            tokenizer=tokenizer,
        )
    init = init or (spec.classification_init if classification else spec.generation_init)
    if init == "class_labels" and not label_words:
        raise ValueError("the class_labels init needs a classification task (it has label words)")
    return PromptTuningConfig(
        num_virtual_tokens=length,
        init=init,
        init_text=init_text,
        class_labels=list(label_words) if init == "class_labels" else None,
        tokenizer=tokenizer,
        token_counts=token_counts,
    )
