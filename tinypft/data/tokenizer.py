"""A byte-level BPE tokenizer (the GPT-2 scheme, small and readable).

Text is first split into "words" by a regular expression (letters with their leading space,
single digits, runs of punctuation, whitespace). Each word is encoded as UTF-8 bytes, so
the 256 byte tokens can spell any text and nothing is ever unknown. Training then repeatedly
merges the most frequent adjacent pair of tokens into a new token; encoding replays the
merges in the order they were learned.

Token ids:

* ``0..255``: the raw bytes,
* ``256..259``: the special tokens ``<|bos|>``, ``<|eos|>``, ``<|pad|>``, ``<|sep|>``,
* ``260..``: one id per learned merge, in training order.

Special tokens only come from the ``add_*`` arguments and :meth:`Tokenizer.encode_pair`; the
text ``"<|eos|>"`` typed by a user is encoded as ordinary bytes.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

FORMAT_NAME = "tinypft-bpe"
FORMAT_VERSION = 1
SPECIAL_TOKENS: tuple[str, ...] = ("<|bos|>", "<|eos|>", "<|pad|>", "<|sep|>")
N_BYTES = 256
FIRST_MERGE_ID = N_BYTES + len(SPECIAL_TOKENS)
IGNORE_INDEX = -100  # label value that the loss skips

# Contractions; letters (with one optional leading space); one digit; punctuation runs
# (underscore included, since \w contains it); whitespace not followed by a non-space
# (so " word" keeps its space); any other whitespace. Together they cover every character.
PRETOKENIZE_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]+| ?\d| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""


class TokenizerFormatError(ValueError):
    """Raised when a tokenizer file is malformed or from an unsupported version."""


class Tokenizer:
    """Byte-level BPE with four special tokens. Build with :meth:`train` or :meth:`load`."""

    def __init__(self, merges: Sequence[tuple[int, int]], pattern: str = PRETOKENIZE_PATTERN) -> None:
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self._regex = re.compile(pattern)
        self._ranks = {pair: FIRST_MERGE_ID + i for i, pair in enumerate(self.merges)}
        self._bytes: list[bytes] = [bytes([i]) for i in range(N_BYTES)]
        self._bytes += [s.encode("utf-8") for s in SPECIAL_TOKENS]
        for a, b in self.merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._cache: dict[str, tuple[int, ...]] = {}

    # --- special ids and sizes ---------------------------------------------------------

    bos_id = N_BYTES
    eos_id = N_BYTES + 1
    pad_id = N_BYTES + 2
    sep_id = N_BYTES + 3

    @property
    def vocab_size(self) -> int:
        """Number of token ids: bytes + special tokens + merges."""
        return FIRST_MERGE_ID + len(self.merges)

    def __len__(self) -> int:
        return self.vocab_size

    def is_special(self, token_id: int) -> bool:
        """Whether ``token_id`` is one of ``<|bos|>``, ``<|eos|>``, ``<|pad|>``, ``<|sep|>``."""
        return _is_special_id(token_id)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a special token gives its own text)."""
        return self._bytes[token_id]

    # --- training ----------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, pattern: str = PRETOKENIZE_PATTERN) -> Tokenizer:
        """Learn ``vocab_size - 260`` merges from ``texts``.

        Counts each distinct pre-token once with its frequency, so the work depends on the size
        of the word vocabulary, not of the corpus. Ties between equally frequent pairs go to
        the smallest pair of ids, which makes training deterministic. Training stops early if
        no pair occurs at least twice.
        """
        if vocab_size < FIRST_MERGE_ID:
            raise ValueError(f"vocab_size must be at least {FIRST_MERGE_ID}, got {vocab_size}")
        regex = re.compile(pattern)
        word_counts: Counter[str] = Counter()
        for text in texts:
            word_counts.update(regex.findall(text))
        words = [list(w.encode("utf-8")) for w in word_counts]
        counts = list(word_counts.values())

        pair_counts: Counter[tuple[int, int]] = Counter()
        where: dict[tuple[int, int], set[int]] = {}
        for index, (word, count) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
                where.setdefault(pair, set()).add(index)
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        merges: list[tuple[int, int]] = []
        while len(merges) < vocab_size - FIRST_MERGE_ID and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg_count:
                continue  # stale heap entry; the current count was pushed separately
            if -neg_count < 2:
                break
            new_id = FIRST_MERGE_ID + len(merges)
            merges.append(pair)
            changed: set[tuple[int, int]] = set()
            for index in where.pop(pair, set()):
                word, count = words[index], counts[index]
                for old in zip(word, word[1:]):
                    pair_counts[old] -= count
                    changed.add(old)
                word = merge_pair(word, pair, new_id)
                words[index] = word
                for new in zip(word, word[1:]):
                    pair_counts[new] += count
                    where.setdefault(new, set()).add(index)
                    changed.add(new)
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    pair_counts.pop(p, None)
        return cls(merges, pattern)

    # --- encoding and decoding ---------------------------------------------------------

    def pretokenize(self, text: str) -> list[str]:
        """Split text into the words that BPE works on; ``"".join`` gives the text back."""
        return self._regex.findall(text)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids = list(word.encode("utf-8"))
        while len(ids) > 1:
            ranked = [(self._ranks.get(pair, 1 << 30), pair) for pair in zip(ids, ids[1:])]
            rank, pair = min(ranked)
            if rank == 1 << 30:
                break
            ids = merge_pair(ids, pair, rank)
        result = tuple(ids)
        if len(self._cache) < 200_000:
            self._cache[word] = result
        return result

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids for ``text``, optionally wrapped in ``<|bos|>`` / ``<|eos|>``."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a string, got {type(text).__name__}")
        ids = [self.bos_id] if add_bos else []
        for word in self._regex.findall(text):
            ids.extend(self._encode_word(word))
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self, texts: Iterable[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[list[int]]:
        """:meth:`encode` for each text."""
        return [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]

    def encode_target(self, target: str) -> list[int]:
        """A target as running text: ``" " + target``, so its first word is the token it is inside
        a sentence (`` low``, not ``low``, which running text never contains)."""
        return self.encode(" " + target)

    def encode_pair(self, source: str, target: str) -> tuple[list[int], list[int]]:
        """Ids and labels for conditional generation: ``[bos] source [sep] target [eos]``.

        The target is encoded by :meth:`encode_target`, with a leading space.

        ``labels`` has the same length as ``ids``: :data:`IGNORE_INDEX` (-100) on bos, the
        source and sep, and the token id itself on the target and eos. A language model that
        predicts token ``t+1`` at position ``t`` uses ``labels[1:]`` as targets for ``ids[:-1]``,
        so it is trained to write the target and stop, never to write the source.
        """
        src = [self.bos_id, *self.encode(source), self.sep_id]
        tgt = [*self.encode_target(target), self.eos_id]
        return src + tgt, [IGNORE_INDEX] * len(src) + tgt

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text for ``ids``; special tokens appear as their strings unless ``skip_special``.

        Byte sequences that are not valid UTF-8 (possible for arbitrary ids) become U+FFFD.
        """
        pieces: list[str] = []
        buffer = bytearray()
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary (size {self.vocab_size})")
            if self.is_special(token_id):
                pieces.append(buffer.decode("utf-8", errors="replace"))
                buffer.clear()
                if not skip_special:
                    pieces.append(SPECIAL_TOKENS[token_id - N_BYTES])
            else:
                buffer += self._bytes[token_id]
        pieces.append(buffer.decode("utf-8", errors="replace"))
        return "".join(pieces)

    # --- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The JSON-serialisable description of this tokenizer."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "special_tokens": {tok: N_BYTES + i for i, tok in enumerate(SPECIAL_TOKENS)},
            "vocab_size": self.vocab_size,
            "merges": [list(pair) for pair in self.merges],
        }

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON form; equal fingerprints mean identical tokenizers."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def save(self, path: str | Path) -> None:
        """Write JSON atomically: a temporary file in the same folder, fsync, then rename."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=None, separators=(",", ":"), ensure_ascii=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)  # mkstemp creates 0600; make it readable like any data file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def from_dict(cls, data: object, source: str = "tokenizer data") -> Tokenizer:
        """Build a tokenizer from :meth:`to_dict` output, checking every field."""
        if not isinstance(data, dict):
            raise TokenizerFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise TokenizerFormatError(f"{source}: not a {FORMAT_NAME} file (format={data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise TokenizerFormatError(
                f"{source}: unsupported version {data.get('version')!r} (expected {FORMAT_VERSION})"
            )
        expected_special = {tok: N_BYTES + i for i, tok in enumerate(SPECIAL_TOKENS)}
        if data.get("special_tokens") != expected_special:
            raise TokenizerFormatError(f"{source}: special_tokens must be {expected_special}")
        pattern, merges = data.get("pattern"), data.get("merges")
        if not isinstance(pattern, str):
            raise TokenizerFormatError(f"{source}: 'pattern' must be a string")
        try:
            re.compile(pattern)
        except re.error as err:
            raise TokenizerFormatError(f"{source}: 'pattern' is not a valid regex: {err}") from None
        if not isinstance(merges, list):
            raise TokenizerFormatError(f"{source}: 'merges' must be a list")
        for i, pair in enumerate(merges):
            ok = isinstance(pair, list) and len(pair) == 2 and all(type(x) is int for x in pair)
            # A merge may only use bytes and earlier merges, never a special token.
            if not ok or not all(0 <= x < FIRST_MERGE_ID + i and not _is_special_id(x) for x in pair):
                raise TokenizerFormatError(f"{source}: merge {i} is invalid: {pair!r}")
        if data.get("vocab_size") != FIRST_MERGE_ID + len(merges):
            size = data.get("vocab_size")
            raise TokenizerFormatError(f"{source}: vocab_size {size!r} does not match the merges")
        return cls([tuple(p) for p in merges], pattern)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer saved by :meth:`save`; raises :class:`TokenizerFormatError` if invalid."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TokenizerFormatError(f"{path}: not valid JSON ({err})") from None
        except UnicodeDecodeError as err:
            raise TokenizerFormatError(f"{path}: not UTF-8 text ({err})") from None
        return cls.from_dict(data, source=str(path))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()[:12]})"


def _is_special_id(token_id: int) -> bool:
    return N_BYTES <= token_id < FIRST_MERGE_ID


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right)."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out
