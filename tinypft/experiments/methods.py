"""The experiments' defaults for each fine-tuning method: learning rates and the methods' own sizes.

The methods themselves (full, frozen, bitfit, prefix, prompt, random_subset) are
``tinypft.peft.mapping.PEFT_METHODS``; ``peft_config`` builds a method's config with these
defaults filled in.

Every method runs the same loop (AdamW, linear warmup then linear decay, gradient clipping at 1,
batch 8); only the learning rate and the method's own sizes differ. The learning rates were
chosen by dev BLEU on E2E (the MR as a table, the shipped small model, seed 0, 100 evenly spaced
dev MRs), never on test, at 2,000 steps:

    tinypft finetune --method M --steps 2000 --eval-size 100 --sweep-lr ...
    full     3e-4: 69.7 / 0.167   1e-3: 68.3 / 0.161                         (BLEU / SER)
    bitfit   1e-2: 67.6 / 0.223   3e-2: 69.4 / 0.231   1e-1: 65.4 / 0.301
    prefix   1e-3: 64.9 / 0.190   3e-3: 64.5 / 0.214   1e-2: 56.9 / 0.458   (P 10, MLP width 512)
    prompt   1e-1: 63.4 / 0.203   3e-1: 64.2 / 0.158   1:    63.8 / 0.166   (P 32, sampled vocabulary)

and they agree with the quick budget (250 steps, 50 dev MRs): full 3e-4 67.8 (1e-3 66.7, 3e-3 63.1),
bitfit 3e-2 64.2 (1e-2 63.9, 1e-1 63.1), prefix 1e-3 60.5 (3e-3 58.3, 1e-2 56.9). Prompt tuning
at P = 16 reached 46.9 there (lr 3e-1) and at P = 32 53.1, so it takes 32 virtual tokens: a small
model needs a longer prompt, as the Prompt-Tuning paper found. As the papers say, prompt tuning wants
a far larger learning rate than the rest, and full fine-tuning the smallest.

On ``rating`` (300 steps, 300 dev examples): full 0.987 (1e-3), BitFit 0.980 (1e-1), prompt 0.983
(1e-1, P 32, class-label init), the frozen model's linear probe 0.503 (3e-2). Prefix-tuning
through its MLP needs a far smaller rate there: at 1e-3, 1e-2 and 3e-2 it reached 0.413, 0.363
and 0.327, its training loss stuck at the label prior's (0.56 over the label and eos): it answered
without reading the reference. At 1e-4 and 3e-4 it reached 0.977 and 0.987 (a directly optimized
prefix: 0.967 at 1e-2). A likely reason: every step of AdamW moves each of the MLP's 590k weights
by about lr, and so the prefix's keys and values by far more than one weight's step.

random_subset takes BitFit's rates without a sweep of its own: AdamW moves every trained scalar by
about lr per step whatever its gradient's scale, so at the same rate the control differs from
BitFit only in which scalars train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..peft.config import PeftConfig, PrefixTuningConfig, PromptTuningConfig, RandomSubsetConfig
from ..peft.mapping import config_class


@dataclass(frozen=True)
class Defaults:
    """A method's default hyperparameters in the experiments."""

    lr: float  # AdamW peak learning rate on generation (E2E)
    classification_lr: float  # on classification (frozen: the linear probe's)
    num_virtual_tokens: int | None = None  # prefix / prompt length P
    encoder_hidden_size: int | None = None  # prefix only: the reparameterization MLP's width k
    generation_init: str | None = None  # prompt only: init for generation tasks
    classification_init: str | None = None  # prompt only: init for classification tasks


DEFAULTS: dict[str, Defaults] = {  # keys: every method of tinypft.peft.mapping, in its order
    "full": Defaults(lr=3e-4, classification_lr=1e-3),
    "frozen": Defaults(lr=0.0, classification_lr=3e-2),  # generation: nothing trains
    "bitfit": Defaults(lr=3e-2, classification_lr=1e-1),
    "prefix": Defaults(lr=1e-3, classification_lr=3e-4, num_virtual_tokens=10, encoder_hidden_size=512),
    "prompt": Defaults(
        lr=3e-1, classification_lr=1e-1, num_virtual_tokens=32, generation_init="sampled_vocab",
        classification_init="class_labels",
    ),
    "random_subset": Defaults(lr=3e-2, classification_lr=1e-1),
}


def method_defaults(method: str) -> Defaults:
    """The defaults of the method called ``method``; a ValueError lists the known ones."""
    config_class(method)  # an unknown name raises here
    return DEFAULTS[method]


# Real words a prefix starts from ("real_words") or takes its scale from ("activation_scale"):
# running text of the kind the pretraining corpus holds, tiled or truncated to P tokens.
PREFIX_INIT_TEXT = "The restaurant is a family friendly coffee shop in the city centre near the river"
# Prompt tuning's "sampled_vocab" pool: the most frequent pretraining tokens (the paper: 5,000 of
# T5's 32,000; here 500 of the 1,699 non-special tokens the E2E training references use).
SAMPLED_VOCAB_TOP_K = 500


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
    chooses Prefix-Tuning's ("random", "real_words", "activation_scale") or Prompt-Tuning's
    initialization (e.g. "sampled_vocab", which draws from the ``SAMPLED_VOCAB_TOP_K`` tokens
    ``token_counts`` counts most often, or "class_labels", which uses ``label_words``).
    ``init_text`` feeds the "real_words", "activation_scale" and "text" inits (a prefix's default:
    ``PREFIX_INIT_TEXT``). ``seed``
    draws random_subset's entries (the run's seed, so seeds differ in the subset too).
    """
    spec = method_defaults(method)
    if init is not None and method not in ("prefix", "prompt"):
        raise ValueError(f"--init is for prefix and prompt; {method} has no initialization to choose")
    if method == "random_subset":
        return RandomSubsetConfig(seed=seed)
    if method not in ("prefix", "prompt"):  # full, frozen, bitfit: their configs' defaults
        return config_class(method)()
    length = spec.num_virtual_tokens if num_virtual_tokens is None else num_virtual_tokens
    if method == "prefix":
        return PrefixTuningConfig(
            num_virtual_tokens=length,
            prefix_projection=prefix_projection,
            encoder_hidden_size=(
                spec.encoder_hidden_size if encoder_hidden_size is None else encoder_hidden_size
            ),
            init=init or "random",
            init_text=init_text or (PREFIX_INIT_TEXT if init in ("real_words", "activation_scale") else None),
            mode=mode,
            tokenizer=tokenizer,
        )
    init = init or (spec.classification_init if classification else spec.generation_init)
    if init == "class_labels" and not label_words:
        raise ValueError("the class_labels init needs a classification task (it has label words)")
    if init == "class_labels" and tokenizer is None:
        raise ValueError("the class_labels init needs the tokenizer (to encode the label words as targets)")
    return PromptTuningConfig(
        num_virtual_tokens=length,
        init=init,
        init_text=init_text,
        # the label words as the model answers with them: as targets, with their leading space
        class_labels=[tokenizer.encode_target(w) for w in label_words] if init == "class_labels" else None,
        tokenizer=tokenizer,
        token_counts=token_counts,
        sample_top_k=SAMPLED_VOCAB_TOP_K,
    )
