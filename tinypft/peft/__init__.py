"""Parameter-efficient fine-tuning, in the spirit of Hugging Face PEFT.

    from tinypft.peft import get_peft_model, BitFitConfig, PrefixTuningConfig, PromptTuningConfig

    peft_model = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=10))
    peft_model.print_trainable_parameters()

Methods, one file each:

    bitfit.py   BitFit: train the bias terms only (Ben Zaken, Ravfogel & Goldberg, ACL 2022)
    prefix.py   Prefix-Tuning: trainable keys/values in every layer (Li & Liang, ACL 2021)
    prompt.py   Prompt-Tuning: a trainable soft prompt at the input (Lester et al., EMNLP 2021)
    random_subset.py  a random subset of weight entries, as many as BitFit trains (BitFit's control)
    model.py    get_peft_model, the PeftModel base, full fine-tuning and the frozen baseline,
                saving and loading adapters
    mixed.py    one frozen model serving a batch of examples from different tasks
    counts.py   parameter counts on the papers' full-size shapes, computed from shapes only
    analysis.py BitFit's bias-change table and heatmap
"""

from .analysis import bias_change, bias_change_table, format_bias_change, plot_bias_change
from .bitfit import BitFitModel, bitfit_parameter_names
from .config import (
    BitFitConfig,
    FrozenConfig,
    FullFinetuneConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    RandomSubsetConfig,
    config_from_dict,
)
from .mixed import MixedTaskModel
from .model import (
    AdapterSize,
    FrozenModel,
    FullFinetuneModel,
    PeftModel,
    adapter_bytes,
    get_peft_model,
    load_adapter,
)
from .prefix import PrefixEncoder, PrefixTuningModel, infix_batch_loss, infix_start_from_labels
from .prompt import PromptEnsemble, PromptTuningModel, SoftPrompt
from .random_subset import RandomSubsetModel, subset_indices

__all__ = [
    "AdapterSize",
    "BitFitConfig",
    "BitFitModel",
    "FrozenConfig",
    "FrozenModel",
    "FullFinetuneConfig",
    "FullFinetuneModel",
    "MixedTaskModel",
    "PeftConfig",
    "PeftModel",
    "PrefixEncoder",
    "PrefixTuningConfig",
    "PrefixTuningModel",
    "PromptEnsemble",
    "PromptTuningConfig",
    "PromptTuningModel",
    "RandomSubsetConfig",
    "RandomSubsetModel",
    "SoftPrompt",
    "adapter_bytes",
    "bias_change",
    "bias_change_table",
    "bitfit_parameter_names",
    "config_from_dict",
    "format_bias_change",
    "get_peft_model",
    "infix_batch_loss",
    "infix_start_from_labels",
    "load_adapter",
    "plot_bias_change",
    "subset_indices",
]
