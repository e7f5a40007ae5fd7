"""Caption tokenizers: the `Tokenizer` protocol, the default `ByteTokenizer` and a name registry
(`register_tokenizer` is public: how a user adds a subword tokenizer that `data.tokenizer` can then name).

Sequences are BOS + text tokens + EOS, then padded with `pad_id` to `max_len`. A text too long for
`max_len` is cut so that the sequence still ends in EOS (BOS + the first max_len - 2 text tokens +
EOS): every encoded sequence is terminated, truncated or not. The mask is 1 on BOS, text and EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline and the text towers need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, mask), both int32 [len(texts), max_len]."""
        ...

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        """Text of one sequence; stops at the first EOS and ignores BOS and padding."""
        ...


class ByteTokenizer:
    """UTF-8 bytes shifted by 3: pad 0, BOS 1, EOS 2, byte b -> b + 3 (vocabulary 259)."""

    pad_id = 0
    bos_id = 1
    eos_id = 2
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str, max_len: int) -> list[int]:
        """BOS + bytes + EOS, unpadded, cut to `max_len` keeping the EOS."""
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (BOS and EOS), got {max_len}")
        body = [b + self.offset for b in text.encode("utf-8")[: max_len - 2]]
        return [self.bos_id, *body, self.eos_id]

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.full((len(texts), max_len), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(texts), max_len), dtype=np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text, max_len)
            tokens[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return tokens, mask

    def decode(self, tokens: Sequence[int] | np.ndarray) -> str:
        data = bytearray()
        for token in np.asarray(tokens).reshape(-1).tolist():
            if token == self.eos_id:
                break
            if token >= self.offset:
                data.append(token - self.offset)
        return data.decode("utf-8", errors="replace")


_REGISTRY: dict[str, Callable[[], Tokenizer]] = {"byte": ByteTokenizer}


def register_tokenizer(name: str, factory: Callable[[], Tokenizer]) -> None:
    """Make `get_tokenizer(name)` return `factory()`."""
    _REGISTRY[name] = factory


def known_tokenizers() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_tokenizer(name: str) -> Tokenizer:
    if name not in _REGISTRY:
        raise ValueError(f"unknown tokenizer {name!r}; known: {', '.join(known_tokenizers())}")
    return _REGISTRY[name]()
