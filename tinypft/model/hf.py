"""Load Hugging Face GPT-2 checkpoints (``model.safetensors`` + ``config.json``) into ``GPT``.

Hugging Face's GPT-2 differs from ``GPT`` in two ways that matter here:

* it stores Linear layers as ``Conv1D`` with weight shape (in, out), while ``Linear`` here holds
  (out, in) as PyTorch does, so every weight is transposed;
* attention uses one fused projection ``c_attn`` (d, 3d) whose columns are [q | k | v]; it is split
  into ``q_proj``, ``k_proj`` and ``v_proj`` (weights and biases).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..serialization import load_tensors
from .config import GPTConfig
from .gpt import GPT


def config_from_hf(hf: dict) -> GPTConfig:
    """Translate a Hugging Face GPT-2 ``config.json`` into a GPTConfig."""
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf["n_positions"],
            d_model=hf["n_embd"],
            n_layers=hf["n_layer"],
            n_heads=hf["n_head"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            dropout=0.0,
            layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    except KeyError as missing:
        raise ValueError(f"config.json is missing the GPT-2 field {missing}") from None


def hf_state_to_tinypft(hf_state: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    """Rename, split and transpose a Hugging Face GPT-2 state dict into GPT's parameter names."""
    state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}

    def take(name: str) -> np.ndarray:
        if name not in state:
            raise ValueError(f"GPT-2 checkpoint has no tensor '{name}'")
        return state[name]

    d = config.d_model
    out = {"wte.weight": take("wte.weight"), "wpe.weight": take("wpe.weight")}
    for i in range(config.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            out[b + ln + ".weight"] = take(h + ln + ".weight")
            out[b + ln + ".bias"] = take(h + ln + ".bias")
        c_attn_w, c_attn_b = take(h + "attn.c_attn.weight"), take(h + "attn.c_attn.bias")  # (d, 3d), (3d,)
        if c_attn_w.shape != (d, 3 * d):
            raise ValueError(f"{h}attn.c_attn.weight has shape {c_attn_w.shape}, expected {(d, 3 * d)}")
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            out[b + f"attn.{proj}.weight"] = c_attn_w[:, j * d : (j + 1) * d].T
            out[b + f"attn.{proj}.bias"] = c_attn_b[j * d : (j + 1) * d]
        out[b + "attn.o_proj.weight"] = take(h + "attn.c_proj.weight").T
        out[b + "attn.o_proj.bias"] = take(h + "attn.c_proj.bias")
        out[b + "mlp.fc_in.weight"] = take(h + "mlp.c_fc.weight").T
        out[b + "mlp.fc_in.bias"] = take(h + "mlp.c_fc.bias")
        out[b + "mlp.fc_out.weight"] = take(h + "mlp.c_proj.weight").T
        out[b + "mlp.fc_out.bias"] = take(h + "mlp.c_proj.bias")
    out["ln_f.weight"], out["ln_f.bias"] = take("ln_f.weight"), take("ln_f.bias")
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_hf_gpt2(directory: str | Path) -> GPT:
    """Build a GPT from a Hugging Face GPT-2 folder holding ``config.json`` and ``model.safetensors``."""
    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} not found: a GPT-2 folder needs config.json and model.safetensors"
            )
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    model = GPT(config)
    hf_state = load_tensors(directory / "model.safetensors")
    model.load_state_dict(hf_state_to_tinypft(hf_state, config), strict=True)
    return model
