"""The mini-transformer: GPTConfig, GPT and its building blocks, and the shipped pretrained checkpoints.

    config       GPTConfig, the model's shape
    gpt          GPT and its blocks (attention, MLP, the key/value cache)
    decode       the fast one-token decoding step used by generation
    pretrained   load_pretrained: a shipped checkpoint, checked, as a float32 GPT
    hf           Hugging Face GPT-2 weights in tinypft's layout
    torch_twin   the same model in PyTorch, for cross-checks and timing (needs torch; not imported here)
"""

from .cache import KVCache
from .config import GPTConfig
from .gpt import GPT, MLP, Block, CausalSelfAttention, GPTOutput, check_attention_mask, last_real_index
from .pretrained import load_pretrained

__all__ = [
    "GPT", "MLP", "Block", "CausalSelfAttention", "GPTConfig", "GPTOutput", "KVCache", "check_attention_mask",
    "last_real_index", "load_pretrained",
]
