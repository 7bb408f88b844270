"""Which model serves which method: the one registry of fine-tuning methods, and ``get_peft_model``.

    PEFT_METHODS[BitFitConfig] is BitFitModel        config class -> PeftModel subclass

A method's name (``BitFitConfig.method == "bitfit"``) is what adapter files, the CLI and the
experiments call it. To add a method: write its config (``config.py``) and its model (a
``PeftModel`` subclass in a file of its own), and add the pair here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..model import GPT
from .bitfit import BitFitModel
from .config import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
)
from .model import FrozenModel, FullFinetuneModel, PeftModel
from .prefix import PrefixTuningModel
from .prompt import PromptTuningModel
from .random_subset import RandomSubsetModel

PEFT_METHODS: dict[type[PeftConfig], type[PeftModel]] = {
    FullFinetuneConfig: FullFinetuneModel,
    FrozenConfig: FrozenModel,
    BitFitConfig: BitFitModel,
    PrefixTuningConfig: PrefixTuningModel,
    PromptTuningConfig: PromptTuningModel,
    RandomSubsetConfig: RandomSubsetModel,
}


def method_names() -> list[str]:
    """Every method's name, in the registry's order: full, frozen, bitfit, prefix, prompt, random_subset."""
    return [cls.method for cls in PEFT_METHODS]


def config_class(method: str) -> type[PeftConfig]:
    """The config class of the method called ``method``; a ValueError lists the known ones."""
    for cls in PEFT_METHODS:
        if cls.method == method:
            return cls
    raise ValueError(f"unknown fine-tuning method {method!r}; known: {sorted(method_names())}")


def config_from_dict(values: dict[str, Any]) -> PeftConfig:
    """Rebuild a config written by ``PeftConfig.to_dict``."""
    values = dict(values)
    cls = config_class(values.pop("method", None))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}")
    return cls(**values)


def get_peft_model(model: GPT, config: PeftConfig) -> PeftModel:
    """Wrap ``model`` for the method ``config`` describes, freezing everything the method does not
    train, and give the method's own parameters their starting values."""
    if isinstance(model, PeftModel):
        raise TypeError("get_peft_model: the model is already a PeftModel; pass its base_model")
    model_class = PEFT_METHODS.get(type(config))
    if model_class is None:
        raise TypeError(f"get_peft_model: no method for config {type(config).__name__}")
    peft_model = model_class(model, config)
    peft_model.initialize_adapter()
    return peft_model
