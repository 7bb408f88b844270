"""The mini-transformer: GPTConfig, GPT and its building blocks."""

from .cache import KVCache
from .config import GPTConfig
from .gpt import GPT, MLP, Block, CausalSelfAttention, GPTOutput, last_real_index

__all__ = [
    "GPT", "MLP", "Block", "CausalSelfAttention", "GPTConfig", "GPTOutput", "KVCache", "last_real_index",
]
