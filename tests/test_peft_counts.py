"""Trainable shares on the papers' full-size models, from shapes alone, against the published figures."""

from __future__ import annotations

import tracemalloc

import pytest

from tinypft.peft import PrefixTuningConfig, PromptTuningConfig
from tinypft.peft.counts import (
    BERT_BASE,
    BERT_LARGE,
    GPT2_MEDIUM,
    GPT2_MEDIUM_PAPER_SIZE,
    T5_XXL_PARAMETERS,
    bert_bitfit_count,
    bert_parameter_count,
    bitfit_share,
    prefix_inference_count,
    prefix_training_count,
    prompt_share_t5_xxl,
    trainable_parameter_count,
)


def test_bert_sizes_are_the_known_ones():
    assert bert_parameter_count(BERT_BASE, classifier=False) == 109_482_240
    assert bert_parameter_count(BERT_LARGE, classifier=False) == 335_141_888
    assert bert_parameter_count(BERT_BASE) == 109_482_240 + 768 * 2 + 2


def test_bitfit_share_of_bert_base_is_the_papers_0_09_percent(measurements):
    """Recomputed 0.0926-0.0940%: the layers' biases alone, then with the embedding LayerNorm's
    beta and the pooler's bias. Tolerance: the 4th decimal of the percentage."""
    layers_only = bitfit_share(BERT_BASE, embedding_layer_norm=False, pooler=False)
    everything = bitfit_share(BERT_BASE)
    assert bert_bitfit_count(BERT_BASE, embedding_layer_norm=False, pooler=False) == 101_376
    assert bert_bitfit_count(BERT_BASE) == 102_912
    assert layers_only == pytest.approx(0.0926, abs=5e-5)
    assert everything == pytest.approx(0.0940, abs=5e-5)
    assert round(everything, 2) == 0.09
    # the paper did not count the classifier's weights: they would push it past its range
    assert bitfit_share(BERT_BASE, head="all") == pytest.approx(0.0954, abs=5e-5)
    assert bitfit_share(BERT_BASE, head="bias") == pytest.approx(0.0940, abs=5e-5)
    measurements.append(
        f"peft BitFit share BERT-base: {layers_only:.4f}% (layer biases) .. {everything:.4f}%"
    )


def test_bitfit_share_of_bert_large_is_the_papers_0_08_percent(measurements):
    layers_only = bitfit_share(BERT_LARGE, embedding_layer_norm=False, pooler=False)
    everything = bitfit_share(BERT_LARGE)
    assert bert_bitfit_count(BERT_LARGE) == 272_384
    assert layers_only == pytest.approx(0.0807, abs=5e-5)
    assert everything == pytest.approx(0.0813, abs=5e-5)
    assert round(everything, 2) == 0.08
    measurements.append(f"peft BitFit share BERT-large: {layers_only:.4f}% .. {everything:.4f}%")


def test_prefix_tuning_share_of_gpt2_medium(measurements):
    """2 L d P = 491,520 at P = 10: 0.139% of the 354.8M parameters counted here (0.142% of the
    "345M" the paper names); at P = 5 (the paper's E2E setting) 245,760, its "250K"."""
    assert GPT2_MEDIUM.num_parameters() == 354_823_168
    assert prefix_inference_count(GPT2_MEDIUM, 10) == 491_520
    share = 100 * 491_520 / GPT2_MEDIUM.num_parameters()
    assert share == pytest.approx(0.1385, abs=5e-5)
    assert 100 * 491_520 / GPT2_MEDIUM_PAPER_SIZE == pytest.approx(0.1425, abs=5e-5)
    assert 0.1 <= share <= 0.14
    assert prefix_inference_count(GPT2_MEDIUM, 5) == pytest.approx(250_000, rel=0.02)
    # what trains through the MLP (k = 512) is far larger than what is stored
    assert prefix_training_count(GPT2_MEDIUM, 10) == 10 * 1024 + 1024 * 512 + 512 + 512 * 49_152 + 49_152
    assert trainable_parameter_count(GPT2_MEDIUM, PrefixTuningConfig(10))[0] == prefix_training_count(
        GPT2_MEDIUM, 10
    )
    assert (
        trainable_parameter_count(GPT2_MEDIUM, PrefixTuningConfig(10, prefix_projection=False))[0] == 491_520
    )
    measurements.append(f"peft Prefix-Tuning share GPT-2 medium (P=10): {share:.4f}%")


def test_prompt_tuning_share_of_t5_xxl():
    """Lester et al.: 409,600 parameters at P = 100, 0.0037% of T5-XXL (11.1B)."""
    assert T5_XXL_PARAMETERS == 11_135_332_352
    assert prompt_share_t5_xxl(100) == pytest.approx(0.00368, abs=5e-6)
    from tinypft.model import GPTConfig

    assert (
        trainable_parameter_count(GPTConfig(d_model=4096, n_heads=64), PromptTuningConfig(100))[0] == 409_600
    )


def test_counts_allocate_nothing():
    tracemalloc.start()
    bitfit_share(BERT_LARGE)
    trainable_parameter_count(GPT2_MEDIUM, PrefixTuningConfig(10))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100_000  # bytes: a full-size model would need gigabytes
