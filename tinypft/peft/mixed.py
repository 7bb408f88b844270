"""Mixed-task batches: one frozen model serves a batch in which every example has its own task.

Prefix-Tuning's deployment argument (Li & Liang, 2021, section 4.2): the language model is shared
and frozen, each task is only its prefix, so requests of different tasks can share one batch.
Example b of task t(b) runs with t(b)'s virtual tokens; the output equals running it alone.
(Hugging Face PEFT offers per-example adapters only for LoRA.)

Two ways to build the batch:

* every task is a soft prompt (Prompt-Tuning, or Prefix-Tuning's embedding_only) of one length P:
  stack the prompts, (B, P, d), as ``prompt_embeds``;
* otherwise each example's virtual tokens become per-layer keys and values, (B, H, P_max, d_h):
  a prefix is already that; a prompt (P, d) becomes it by one pass of the frozen LM over the
  prompt, since causal attention makes the prompt's keys and values independent of the tokens
  after it (Prefix-Tuning's embedding-only observation, used backwards). Shorter ones are padded
  to P_max and the padding masked out. They enter the model as already-computed positions (a
  ``KVCache`` with a key mask and, per row, the position its tokens start at), exactly where
  each example alone would have them.

Generation continues from the returned cache, which already holds every example's virtual tokens.
This serves trained adapters: it runs without gradients. Infix adapters, and adapters that train
base parameters (BitFit, a head), cannot share one base model's forward and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine import Tensor, no_grad, ops
from ..model import GPT, GPTOutput, KVCache
from .model import base_model_fingerprint
from .prefix import PrefixTuningModel
from .prompt import PromptTuningModel

Adapter = PrefixTuningModel | PromptTuningModel


def is_input_prompt(adapter: Adapter) -> bool:
    """True for adapters that live at the input (prompt tuning, embedding-only prefix)."""
    return isinstance(adapter, PromptTuningModel) or adapter.mode == "embedding_only"


def virtual_key_values(adapter: Adapter) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-layer keys and values of an adapter's virtual tokens, each (1, H, P, d_h)."""
    with no_grad():
        if not is_input_prompt(adapter):
            pairs = adapter.prefix_key_values()
            return [k.data for k, _ in pairs], [v.data for _, v in pairs]
        prompt = adapter.prompt_embeddings()  # (1, P, d)
        P = prompt.shape[1]
        # One placeholder token follows the prompt (the model needs a token); causal attention keeps
        # the prompt's keys and values independent of it, and they are cut off below.
        cache = adapter.base_model(
            np.zeros((1, 1), dtype=np.int64), prompt_embeds=prompt, use_cache=True
        ).cache
        return [k.data[:, :, :P] for k in cache.keys], [v.data[:, :, :P] for v in cache.values]


class MixedTaskModel:
    """One frozen base model, many tasks' prefixes or prompts; each example picks its task.

    ``adapters`` maps a task name to a PrefixTuningModel (mode "prefix" or "embedding_only") or a
    PromptTuningModel built on ``base_model`` (or loaded onto an identical copy of it).
    """

    def __init__(self, base_model: GPT, adapters: dict[str, Adapter]):
        if not adapters:
            raise ValueError("MixedTaskModel: needs at least one adapter")
        fingerprint = None
        for task, adapter in adapters.items():
            if not isinstance(adapter, PrefixTuningModel | PromptTuningModel):
                raise TypeError(
                    f"MixedTaskModel: task {task!r} is a {type(adapter).__name__}; "
                    "only prefixes and prompts can share a frozen model"
                )
            if isinstance(adapter, PrefixTuningModel) and adapter.mode == "infix":
                raise ValueError(
                    f"MixedTaskModel: task {task!r} is an infix, which needs a per-example split point"
                )
            if adapter.trained_base:
                raise ValueError(
                    f"MixedTaskModel: task {task!r} trains base parameters {sorted(adapter.trained_base)}"
                )
            if adapter.base_model is not base_model:
                fingerprint = fingerprint or _full_fingerprint(base_model)
                if _full_fingerprint(adapter.base_model) != fingerprint:
                    raise ValueError(f"MixedTaskModel: task {task!r} was built on a different base model")
        self.base_model = base_model
        self.adapters = dict(adapters)

    def __call__(self, *args, **kwargs) -> GPTOutput:
        return self.forward(*args, **kwargs)

    def forward(
        self,
        ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        tasks: Sequence[str] | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
    ) -> GPTOutput:
        """Run a batch whose example b belongs to ``tasks[b]``; logits cover the real tokens only.

        As in ``PeftModel.forward``: with a ``cache`` (decoding) every example's virtual tokens are
        already in it and the call passes straight through; otherwise ``virtual_inputs`` adds them.
        """
        with no_grad():
            if cache is not None:
                return self.base_model(ids, attention_mask, cache=cache, use_cache=use_cache)
            inputs = self.virtual_inputs(tasks, batch_size=np.shape(ids)[0])
            return self.base_model(ids, attention_mask, use_cache=use_cache, **inputs)

    def virtual_inputs(self, tasks: Sequence[str] | None, batch_size: int) -> dict[str, Any]:
        """Every example's virtual tokens as ``GPT.forward`` inputs (``PeftModel.virtual_inputs`` for
        a batch of tasks): ``prompt_embeds`` (B, P, d) when every task is a soft prompt of one
        length, else a ``cache`` of their keys and values (``stacked_key_values``)."""
        if tasks is None or len(tasks) != batch_size:
            raise ValueError(f"MixedTaskModel: give one task per example ({batch_size}), got {tasks!r}")
        unknown = sorted(set(tasks) - set(self.adapters))
        if unknown:
            raise KeyError(f"MixedTaskModel: unknown tasks {unknown}; known: {sorted(self.adapters)}")
        chosen = [self.adapters[t] for t in tasks]
        if all(is_input_prompt(a) for a in chosen) and len({a.num_virtual_tokens for a in chosen}) == 1:
            return {"prompt_embeds": self.stacked_prompts(tasks)}  # (B, P, d)
        return {"cache": self.stacked_key_values(tasks)}  # L x (B, H, P_max, d_h)

    def stacked_prompts(self, tasks: Sequence[str]) -> Tensor:
        """Each example's soft prompt, (B, P, d) (all of one length)."""
        prompts = {t: self.adapters[t].prompt_embeddings() for t in set(tasks)}  # (1, P, d) each
        return ops.concat([prompts[t] for t in tasks], axis=0)  # (B, P, d)

    def stacked_key_values(self, tasks: Sequence[str]) -> KVCache:
        """Each example's virtual keys and values as a cache (B, H, P_max, d_h) per layer, with a key
        mask hiding the padding of shorter ones and each row's tokens starting at position P_t."""
        per_task = {t: virtual_key_values(self.adapters[t]) for t in set(tasks)}
        lengths = np.array([per_task[t][0][0].shape[2] for t in tasks])  # (B,) P_t
        B, P_max = len(tasks), int(lengths.max())
        cfg = self.base_model.config
        dtype = self.base_model.wte.weight.dtype
        shape = (B, cfg.n_heads, P_max, cfg.head_dim)
        keys = [np.zeros(shape, dtype) for _ in range(cfg.n_layers)]  # L x (B, H, P_max, d_h)
        values = [np.zeros(shape, dtype) for _ in range(cfg.n_layers)]  # L x (B, H, P_max, d_h)
        for b, t in enumerate(tasks):
            task_keys, task_values = per_task[t]
            for layer in range(cfg.n_layers):
                keys[layer][b, :, : lengths[b]] = task_keys[layer][0]  # (H, P_t, d_h)
                values[layer][b, :, : lengths[b]] = task_values[layer][0]  # (H, P_t, d_h)
        key_mask = np.arange(P_max)[None, :] < lengths[:, None]  # (B, P_max) False on the padding
        return KVCache(
            keys=[Tensor(k, dtype=dtype) for k in keys],
            values=[Tensor(v, dtype=dtype) for v in values],
            key_mask=key_mask,
            next_position=lengths.copy(),
        )


def _full_fingerprint(model: GPT) -> str:
    return base_model_fingerprint(model, frozen=[name for name, _ in model.named_parameters()])["sha256"]
