"""BitFit: fine-tune only the bias terms (Ben Zaken, Ravfogel & Goldberg, ACL 2022).

Every affine map of the transformer keeps its weight W frozen and trains only its bias b:

    Q = W_q x + b_q,  K = W_k x + b_k,  V = W_v x + b_v          attention projections
    h = W_o head_concat + b_o                                       attention output
    m = gelu(W_m1 h + b_m1),  out = W_m2 m + b_m2                   feed-forward network
    LN(x) = gamma * (x - mu) / sigma + beta                         only beta trains

(the paper writes the FFN's intermediate bias as b_m2 and its output as b_m3; here they are
``fc_in`` and ``fc_out``). Per layer that is 4d + d_ff + d + 2d scalars, about 0.09% of BERT-base
and 0.08% of BERT-large (``counts.py``). A classification head, when the model has one, trains too
(all of it by default, as the paper's code trains its classifier). The paper finds b_q and the FFN
intermediate bias change the most (``analysis.py``); training only those,
``BitFitConfig(components=("q", "fc_in"))``, is its 0.04% variant.

One bias cannot learn anything: b_k adds q . b_k to every attention score of a query alike, and
softmax ignores a shift shared by a whole row, so the gradient of b_k is exactly zero (up to
rounding). It is trained anyway, as in the paper. In float32 it still drifts a little (AdamW divides
the rounding noise in its gradient by that noise's own scale), much less than the other biases; the
drift changes no output, since the shift it adds is shared by a whole row.
"""

from __future__ import annotations

from ..model import GPT
from .config import BitFitConfig
from .model import PeftModel

# component -> parameter name (layer index i) of the bias it trains
BIAS_NAMES: dict[str, str] = {
    "q": "blocks.{i}.attn.q_proj.bias",
    "k": "blocks.{i}.attn.k_proj.bias",
    "v": "blocks.{i}.attn.v_proj.bias",
    "o": "blocks.{i}.attn.o_proj.bias",
    "fc_in": "blocks.{i}.mlp.fc_in.bias",
    "fc_out": "blocks.{i}.mlp.fc_out.bias",
    "ln_1": "blocks.{i}.ln_1.bias",
    "ln_2": "blocks.{i}.ln_2.bias",
    "ln_f": "ln_f.bias",  # not per layer
}


def bitfit_parameter_names(model: GPT, config: BitFitConfig) -> list[str]:
    """Names of the parameters BitFit trains on ``model``, in the model's own order."""
    chosen = set()
    for component in config.expanded_components():
        pattern = BIAS_NAMES[component]
        chosen.update(pattern.format(i=i) for i in range(model.config.n_layers))  # ln_f has no {i}
    if model.cls_head is not None and config.include_head:
        chosen.add("cls_head.bias")
        if config.include_head is True:
            chosen.add("cls_head.weight")
    return [name for name, _ in model.named_parameters() if name in chosen]


class BitFitModel(PeftModel):
    """The base model with only the chosen biases (and the head) trainable; forward is unchanged."""

    def trained_base_names(self, base_model: GPT) -> list[str]:
        return bitfit_parameter_names(base_model, self.peft_config)
