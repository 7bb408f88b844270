"""The pretraining corpus: the E2E training references, grouped by MR.

A 1M-parameter model has no web-scale pretraining to lean on, so tinypft pretrains its mini
GPT-2s in-domain, on the only restaurant text it may use: the references of the E2E *training*
split (never dev or test text, and never an MR). Two things make that corpus teach what
parameter-efficient fine-tuning needs from a frozen model:

* **Copying.** One document holds every reference of one MR, in a shuffled order::

      <bos> The Eagle is a cheap coffee shop ... <sep> Near Burger King, The Eagle ... <sep> ... <eos>

  Every description after the first names the same venue with the same values, so the model
  learns to copy a name and values from earlier in its context: the skill a prefix or a prompt
  then steers, when the earlier text is the MR.
* **The fine-tuning format.** ``<bos>`` opens a document and ``<sep>`` comes before each next
  description, exactly as a fine-tuning example ``<bos> MR <sep> description <eos>`` has them, and
  every description is encoded as a fine-tuning target is (``Tokenizer.encode_target``: with a
  leading space). So no special token is new at fine-tuning time, and label words such as
  `` low`` or `` yes`` are tokens the model has read in running text.

A seeded 5% of the training MRs is held out of the corpus; the held-out loss on their documents
picks the best step (early stopping).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .mr import E2EExample
from .tokenizer import Tokenizer

HELDOUT_FRACTION = 0.05  # of the training MRs, for the pretraining's held-out loss


def heldout_split(
    examples: Sequence[E2EExample], fraction: float = HELDOUT_FRACTION, seed: int = 0
) -> tuple[list[E2EExample], list[E2EExample]]:
    """(corpus MRs, held-out MRs): a seeded ``fraction`` of the MRs set aside, order kept."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    n_heldout = max(1, round(len(examples) * fraction))
    heldout = set(random.Random(f"pretrain-heldout:{seed}").sample(range(len(examples)), n_heldout))
    corpus = [ex for i, ex in enumerate(examples) if i not in heldout]
    return corpus, [ex for i, ex in enumerate(examples) if i in heldout]


def reference_groups(examples: Sequence[E2EExample], rng: random.Random) -> list[list[str]]:
    """One document per MR: its references in a shuffled order; the documents shuffled too."""
    documents = []
    for example in examples:
        refs = list(example.refs)
        rng.shuffle(refs)
        documents.append(refs)
    rng.shuffle(documents)
    return documents


def encode_document(tokenizer: Tokenizer, references: Sequence[str]) -> list[int]:
    """``<bos> ref <sep> ref <sep> ... ref`` (the packer appends ``<eos>``); each reference is
    encoded as a fine-tuning target is."""
    ids = [tokenizer.bos_id]
    for i, ref in enumerate(references):
        if i:
            ids.append(tokenizer.sep_id)
        ids.extend(tokenizer.encode_target(ref))
    return ids


def corpus_token_counts(tokenizer: Tokenizer, examples: Sequence[E2EExample]) -> list[int]:
    """How often each token id occurs in the references of ``examples`` encoded as the pretraining
    corpus encodes them (one count per vocabulary id); the special tokens count 0. Prompt tuning's
    "sampled vocabulary" initialization draws from the most frequent of these."""
    counts = [0] * tokenizer.vocab_size
    for example in examples:
        for ref in example.refs:
            for token_id in tokenizer.encode_target(ref):
                counts[token_id] += 1
    for token_id in range(tokenizer.vocab_size):
        if tokenizer.is_special(token_id):
            counts[token_id] = 0
    return counts
