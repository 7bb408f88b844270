"""Parameter-efficient fine-tuning, in the spirit of Hugging Face PEFT.

    from tinypft.peft import get_peft_model, BitFitConfig, PrefixTuningConfig, PromptTuningConfig

    peft_model = get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=10))
    peft_model.print_trainable_parameters()
    peft_model.save_pretrained("runs/prefix")               # after training: the adapter files
    peft_model = PeftModel.from_pretrained(fresh_model, "runs/prefix")

Methods, one file each:

    bitfit.py   BitFit: train the bias terms only (Ben Zaken, Ravfogel & Goldberg, ACL 2022)
    prefix.py   Prefix-Tuning: trainable keys/values in every layer (Li & Liang, ACL 2021)
    prompt.py   Prompt-Tuning: a trainable soft prompt at the input (Lester et al., EMNLP 2021)
    random_subset.py  a random subset of weight entries, as many as BitFit trains (BitFit's control)
    model.py    the PeftModel base (one forward, its two hooks), full fine-tuning and the frozen
                baseline, save_pretrained / from_pretrained
    mapping.py  the registry: which PeftModel serves which config; get_peft_model
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
)
from .mapping import PEFT_METHODS, config_from_dict, get_peft_model
from .mixed import MixedTaskModel
from .model import (
    AdapterSize,
    FrozenModel,
    FullFinetuneModel,
    PeftModel,
    adapter_bytes,
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
    "PEFT_METHODS",
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
    "plot_bias_change",
    "subset_indices",
]
