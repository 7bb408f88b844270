"""The key-value cache of incremental decoding: what the attention remembers of earlier positions.

Generating token t + 1 needs the keys and values of every earlier position in every layer; the
cache keeps them, so a decoding step computes Q, K and V for its new positions only:

    K = [K_cached; K_new],  V = [V_cached; V_new]        each (B, H, T_past + T, head_dim)

* ``KVBuffer``: one layer's keys and values in preallocated arrays, so that a step appends in place.
* ``KVCache``: every layer's keys and values so far, the key mask of the padding and each row's
  next position; what ``GPT.forward`` takes as ``cache`` and returns with ``use_cache=True``.
* ``LayerCache``: one layer's view of a ``KVCache``, handed to that layer's attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine import Tensor, is_grad_enabled, ops

KVPair = tuple[Tensor, Tensor]  # (keys, values), each (B, H, T, head_dim)


class KVBuffer:
    """One layer's keys and values in preallocated arrays, so that decoding appends without copying.

    keys, values  (B, H, capacity, head_dim); positions [0, filled) along axis 2 are written.

    A cache of length T sees the first T positions as views. Several caches may share a buffer (a
    cache and the one that extended it, or ``select`` with the rows unchanged), so a cache may write
    in place only where nobody has written yet: at T == filled. A second continuation of the same
    cache (T < filled) gets a fresh copy, and no view ever changes under anyone's feet.
    """

    __slots__ = ("keys", "values", "filled")

    def __init__(self, shape: tuple[int, int, int, int], dtype: np.dtype):
        self.keys = np.empty(shape, dtype)  # (B, H, capacity, hd), written as positions arrive
        self.values = np.empty(shape, dtype)  # (B, H, capacity, hd)
        self.filled = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @classmethod
    def holding(cls, k: np.ndarray, v: np.ndarray, capacity: int) -> KVBuffer:
        """A new buffer of at least ``capacity`` positions holding k and v (B, H, T, hd)."""
        B, H, T, hd = k.shape
        buffer = cls((B, H, max(capacity, T), hd), k.dtype)
        buffer.write(0, k, v)
        return buffer

    def write(self, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store k and v (B, H, T, hd) at positions [start, start + T)."""
        end = start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.filled = end

    def arrays(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``length`` positions as arrays (B, H, length, hd): views, no copy."""
        return self.keys[:, :, :length], self.values[:, :, :length]

    def views(self, length: int) -> KVPair:
        """The first ``length`` positions as tensors (B, H, length, hd): views, no copy."""
        return Tensor._wrap(self.keys[:, :, :length]), Tensor._wrap(self.values[:, :, :length])


@dataclass
class KVCache:
    """Keys and values of every layer for the positions processed so far (generation).

    keys[i], values[i]  (B, H, T_past, head_dim) for layer i
    key_mask            (B, T_past) bool, False for padding positions that must never be attended
    next_position       (B,) the position id the next token of each row gets

    The model fills ``buffers`` (one ``KVBuffer`` per layer, capacity ``context_length``): then
    keys[i] and values[i] are views of them, and a decoding step writes its one new key and value
    per layer in place instead of copying all T_past of them (``extend``). A cache built by hand
    from ``keys`` and ``values`` alone works too; its first extension copies it into a buffer.
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    key_mask: np.ndarray | None = None
    next_position: np.ndarray | None = None
    buffers: list[KVBuffer | None] = field(default_factory=list, repr=False, compare=False)

    @property
    def length(self) -> int:
        return 0 if not self.keys else self.keys[0].shape[2]

    def buffer(self, layer: int) -> KVBuffer | None:
        """Layer ``layer``'s buffer if keys[layer] and values[layer] are still views of it, else None."""
        buffer = self.buffers[layer] if layer < len(self.buffers) else None
        if buffer is None:
            return None
        k, v = self.keys[layer].data, self.values[layer].data
        if k.base is not buffer.keys or v.base is not buffer.values:  # replaced by the caller
            return None
        return buffer

    def extend(
        self, layer: int, k: Tensor, v: Tensor, capacity: int = 0
    ) -> tuple[Tensor, Tensor, KVBuffer | None]:
        """[cached keys; k] and [cached values; v] of one layer, (B, H, T_past + T, hd), and their buffer.

        k, v (B, H, T, hd) are the new positions. When a gradient must flow through them this is
        a differentiable concat (no buffer). Otherwise they are written into the layer's buffer
        (in place if this cache owns its end and there is room, else into a new one of at least
        ``capacity`` positions, doubled when full) and the result is a view of it.
        """
        past_k, past_v = self.keys[layer], self.values[layer]  # (B, H, T_past, hd)
        if is_grad_enabled() and any(t.requires_grad for t in (k, v, past_k, past_v)):
            return ops.concat([past_k, k], axis=2), ops.concat([past_v, v], axis=2), None
        buffer = self.write(layer, k.data, v.data, capacity)
        return *buffer.views(past_k.shape[2] + k.shape[2]), buffer

    def write(self, layer: int, k: np.ndarray, v: np.ndarray, capacity: int = 0) -> KVBuffer:
        """Store arrays k, v (B, H, T, hd) after layer ``layer``'s T_past cached positions; returns the
        buffer whose first T_past + T positions are now [cached; new] (``extend`` without tensors)."""
        past_k, past_v = self.keys[layer].data, self.values[layer].data  # (B, H, T_past, hd)
        T_past, T = past_k.shape[2], k.shape[2]
        buffer = self.buffer(layer)
        if buffer is None or buffer.filled != T_past or T_past + T > buffer.capacity:
            room = max(capacity, 2 * (T_past + T) if buffer is not None else T_past + T)
            buffer = KVBuffer.holding(past_k, past_v, room)
        buffer.write(T_past, k, v)
        return buffer

    def select(self, rows: np.ndarray) -> KVCache:
        """The cache of some rows (in the given order): beam search reorders its hypotheses with it.

        Keeping every row in order shares the buffers (greedy decoding does that at every step);
        any other selection copies the cached positions into new buffers of the same capacity.
        """
        rows = np.asarray(rows)
        B = self.key_mask.shape[0]
        if rows.shape == (B,) and np.array_equal(rows, np.arange(B)):
            return KVCache(
                list(self.keys), list(self.values), self.key_mask, self.next_position, list(self.buffers)
            )
        keys, values, buffers = [], [], []
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            old = self.buffer(layer)
            buffer = KVBuffer.holding(k.data[rows], v.data[rows], old.capacity if old is not None else 0)
            k, v = buffer.views(k.shape[2])  # (B', H, T_past, hd), the selected rows
            keys.append(k)
            values.append(v)
            buffers.append(buffer)
        return KVCache(keys, values, self.key_mask[rows], self.next_position[rows], buffers)


@dataclass
class LayerCache:
    """One layer's view of a KVCache, handed to the attention: ``extend`` appends the new keys and
    values and remembers the buffer the result lives in (the next cache keeps it)."""

    cache: KVCache
    layer: int
    capacity: int  # positions to preallocate when a new buffer is needed (the context length)
    buffer: KVBuffer | None = None

    def extend(self, k: Tensor, v: Tensor) -> KVPair:
        """k, v (B, H, T, hd) -> [cached; new] keys and values, each (B, H, T_past + T, hd)."""
        k, v, self.buffer = self.cache.extend(self.layer, k, v, self.capacity)
        return k, v
