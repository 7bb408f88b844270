"""Training, generation, metrics and pretraining.

    batching     padded batches, reproducible epoch order, packed pretraining windows
    trainer      the training loop (AdamW, schedule, clipping, evaluation, checkpoints, exact resume)
    generate     batched greedy and beam-search decoding with a KV cache
    metrics      corpus BLEU, slot error rate, evaluate_generation
    pretrain     the ``tinypft pretrain`` command: the shipped checkpoints' pretraining run
"""

from .batching import (
    Batch,
    PackedWindows,
    encode_pairs,
    epoch_order,
    iterate_batches,
    left_pad,
    pack_documents,
    pad_batch,
    source_ids,
)
from .generate import generate
from .metrics import corpus_bleu, evaluate_generation, slot_error_rate
from .pretrain import pretrain
from .trainer import TrainConfig, TrainResult, lm_batch_loss, mean_loss, train

__all__ = [
    "Batch", "PackedWindows", "TrainConfig", "TrainResult", "corpus_bleu", "encode_pairs", "epoch_order",
    "evaluate_generation", "generate", "iterate_batches", "left_pad", "lm_batch_loss",
    "mean_loss", "pack_documents", "pad_batch", "pretrain", "slot_error_rate", "source_ids", "train",
]

