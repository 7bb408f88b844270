"""The mini-transformer: GPTConfig, GPT and its building blocks."""

from .config import GPTConfig
from .gpt import GPT, MLP, Block, CausalSelfAttention, GPTOutput, KVCache

__all__ = ["GPT", "MLP", "Block", "CausalSelfAttention", "GPTConfig", "GPTOutput", "KVCache"]
