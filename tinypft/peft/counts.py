"""Parameter counts from shapes alone: how many parameters each method trains on the papers' models.

Nothing is allocated: every count is arithmetic on the architecture's shapes, so BERT-large or
GPT-2 medium cost nothing to "build". ``trainable_parameter_count`` gives the same numbers a
``PeftModel`` reports for a tinypft GPT (the tests check that on small models).

BERT (Devlin et al., 2019), L layers, width d, FFN width d_ff, vocabulary V, N positions:

    embeddings   V d + N d + 2 d (token types) + 2 d (LayerNorm)
    per layer    4 (d^2 + d) (Q, K, V, O) + 2 d (LN) + (d d_ff + d_ff) + (d_ff d + d) + 2 d (LN)
    pooler       d^2 + d;   classifier  d C + C

BitFit (Ben Zaken et al., 2022) trains per layer 4d (b_q, b_k, b_v, b_o) + d_ff + d (FFN) + 2d
(LayerNorm betas), plus the embedding LayerNorm's beta and the pooler's bias:

    BERT-base  (12, 768, 3072):   101,376 layer biases = 0.0926%;  + 768 + 768 = 102,912 = 0.0940%
    BERT-large (24, 1024, 4096):  270,336 layer biases = 0.0807%;  + 1024 + 1024 = 272,384 = 0.0813%

of 109.48M / 335.14M parameters (+ the classifier). The paper's "0.09%" and "0.08%" are these:
biases only. Counting the classifier's weights as trained too (d C + C = 1,538 for BERT-base)
would give 0.0954%, so the paper leaves the task head out of its share.

Prefix-Tuning (Li & Liang, 2021) on GPT-2 medium (24 layers, d = 1024, V = 50257, 1024 positions,
354,823,168 parameters with the tied head; the paper says 345M): the inference-time prefix is
2 L d P = 491,520 scalars at P = 10 (0.139%; 0.142% of 345M) and 245,760 at P = 5 (the "250K" of
the paper's E2E setting, Table 6). During training the MLP adds P d + d k + k + k 2Ld + 2Ld
(25.75M at k = 512).

Prompt-Tuning (Lester et al., 2021): P d = 409,600 at P = 100 on T5-XXL (d = 4096), 0.0037% of
its 11,135,332,352 parameters (T5 v1.1 XXL, counted below).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import GPTConfig
from .config import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
)
from .mapping import PEFT_METHODS

# ----------------------------------------------------------------------------- BERT and BitFit


@dataclass(frozen=True)
class BertShape:
    """The shapes of a BERT encoder with a pooler and a classification head."""

    n_layers: int
    d_model: int
    d_ff: int
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    num_labels: int = 2


BERT_BASE = BertShape(n_layers=12, d_model=768, d_ff=3072)
BERT_LARGE = BertShape(n_layers=24, d_model=1024, d_ff=4096)


def bert_parameter_count(shape: BertShape, pooler: bool = True, classifier: bool = True) -> int:
    """All parameters of BERT (109,482,240 for BERT-base with pooler, without the classifier)."""
    d, f = shape.d_model, shape.d_ff
    embeddings = (shape.vocab_size + shape.max_positions + shape.type_vocab_size) * d + 2 * d
    per_layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
    total = embeddings + shape.n_layers * per_layer
    total += (d * d + d) if pooler else 0
    total += (d * shape.num_labels + shape.num_labels) if classifier else 0
    return total


def bert_bitfit_count(
    shape: BertShape, embedding_layer_norm: bool = True, pooler: bool = True, head: str | None = None
) -> int:
    """BitFit's trained scalars on BERT: every layer's biases and LayerNorm betas, optionally the
    embedding LayerNorm's beta, the pooler's bias, and the head ("bias" or "all")."""
    d, f, C = shape.d_model, shape.d_ff, shape.num_labels
    count = shape.n_layers * (4 * d + f + d + 2 * d)  # b_q, b_k, b_v, b_o; FFN biases; two LN betas
    count += d if embedding_layer_norm else 0
    count += d if pooler else 0
    count += {None: 0, "bias": C, "all": d * C + C}[head]
    return count


def bitfit_share(shape: BertShape, **kwargs: object) -> float:
    """BitFit's trained share in percent of all of BERT's parameters (classifier included)."""
    return 100.0 * bert_bitfit_count(shape, **kwargs) / bert_parameter_count(shape)


# ----------------------------------------------------------------------------- GPT-2 and Prefix-Tuning

GPT2_MEDIUM = GPTConfig(vocab_size=50257, context_length=1024, d_model=1024, n_layers=24, n_heads=16)
GPT2_MEDIUM_PAPER_SIZE = 345_000_000  # what Li & Liang (and the GPT-2 release) call it


def prefix_inference_count(config: GPTConfig, num_virtual_tokens: int) -> int:
    """What inference needs of a prefix: P_theta, 2 L d P scalars."""
    return 2 * config.n_layers * config.d_model * num_virtual_tokens


def prefix_training_count(config: GPTConfig, num_virtual_tokens: int, hidden_size: int = 512) -> int:
    """What trains through the reparameterization: P' (P d) + Linear(d, k) + Linear(k, 2 L d)."""
    d, width = config.d_model, 2 * config.n_layers * config.d_model
    return num_virtual_tokens * d + (d * hidden_size + hidden_size) + (hidden_size * width + width)


def trainable_parameter_count(
    config: GPTConfig, method: PeftConfig, num_labels: int | None = None
) -> tuple[int, int]:
    """(trainable, all) for ``method`` on a tinypft GPT of shape ``config`` (with a classification
    head of ``num_labels`` when given): what ``PeftModel.get_nb_trainable_parameters`` reports."""
    d, f, L = config.d_model, config.d_ff, config.n_layers
    head = 0 if num_labels is None else d * num_labels + num_labels
    base = config.num_parameters() + head
    if isinstance(method, FullFinetuneConfig):
        return base, base
    if isinstance(method, FrozenConfig):
        return head, base
    if isinstance(method, BitFitConfig):
        per_component = {
            "q": L * d,
            "k": L * d,
            "v": L * d,
            "o": L * d,
            "fc_in": L * f,
            "fc_out": L * d,
            "ln_1": L * d,
            "ln_2": L * d,
            "ln_f": d,
        }
        trained = sum(per_component[c] for c in method.expanded_components())
        if num_labels is not None and method.include_head:
            trained += head if method.include_head is True else num_labels
        return trained, base
    if isinstance(method, PrefixTuningConfig):
        P, k = method.num_virtual_tokens, method.encoder_hidden_size
        width = d if method.mode == "embedding_only" else 2 * L * d
        adapter = P * d + (d * k + k) + (k * width + width) if method.prefix_projection else P * width
        return adapter, base + adapter
    if isinstance(method, PromptTuningConfig):
        adapter = method.num_virtual_tokens * d
        return adapter, base + adapter
    if isinstance(method, RandomSubsetConfig):  # as many entries as BitFit's biases (ln_f's included)
        entries = L * (4 * d + f + d + 2 * d) + d if method.num_params is None else method.num_params
        trained_head = head if num_labels is not None and method.include_head else 0
        return entries + trained_head, base + entries
    known = ", ".join(cls.__name__ for cls in PEFT_METHODS)
    raise TypeError(
        f"trainable_parameter_count: unknown method config {type(method).__name__}; known: {known}"
    )


# ----------------------------------------------------------------------------- T5 and Prompt-Tuning


def t5_v11_parameter_count(
    d_model: int = 4096,
    d_ff: int = 10240,
    n_layers: int = 24,
    n_heads: int = 64,
    d_kv: int = 64,
    vocab_size: int = 32128,
    relative_buckets: int = 32,
) -> int:
    """Parameters of a T5 v1.1 encoder-decoder (gated-GELU FFN, RMSNorm without bias, untied output
    layer); the defaults are T5-XXL, 11,135,332,352."""
    d, inner = d_model, n_heads * d_kv
    attention = 4 * d * inner  # Q, K, V, O without biases
    ffn = 2 * d * d_ff + d_ff * d  # wi_0, wi_1 (gated), wo
    encoder_layer = attention + ffn + 2 * d  # + 2 RMSNorm scales
    decoder_layer = 2 * attention + ffn + 3 * d  # self- and cross-attention, + 3 RMSNorm scales
    stacks = n_layers * (encoder_layer + decoder_layer) + 2 * d + 2 * relative_buckets * n_heads
    return stacks + 2 * vocab_size * d  # shared input embedding + separate LM head


T5_XXL_PARAMETERS = t5_v11_parameter_count()


def prompt_share_t5_xxl(num_virtual_tokens: int = 100, d_model: int = 4096) -> float:
    """Prompt tuning's trained share of T5-XXL in percent (P d / all)."""
    return 100.0 * num_virtual_tokens * d_model / T5_XXL_PARAMETERS
