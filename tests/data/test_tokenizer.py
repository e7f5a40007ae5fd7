"""Tests for the caption tokenizers: byte layout, padding, masks, truncation and the registry."""

import numpy as np
import pytest

from scaling.data.tokenizer import ByteTokenizer, Tokenizer, get_tokenizer, known_tokenizers


@pytest.fixture
def tokenizer():
    return ByteTokenizer()


def test_special_ids_and_vocab(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.vocab_size == 259


@pytest.mark.parametrize("text", ["a red circle", "", "Ünïcödé ✓ text", "x" * 30])
def test_round_trip(tokenizer, text):
    tokens, _ = tokenizer.encode_batch([text], max_len=64)
    assert tokenizer.decode(tokens[0]) == text


def test_layout_padding_and_mask(tokenizer):
    tokens, mask = tokenizer.encode_batch(["ab", ""], max_len=6)
    assert tokens.dtype == np.int32 and mask.dtype == np.int32
    assert tokens.shape == mask.shape == (2, 6)
    np.testing.assert_array_equal(tokens[0], [1, ord("a") + 3, ord("b") + 3, 2, 0, 0])
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(tokens[1], [1, 2, 0, 0, 0, 0])
    np.testing.assert_array_equal(mask[1], [1, 1, 0, 0, 0, 0])


def test_truncation_keeps_eos(tokenizer):
    tokens, mask = tokenizer.encode_batch(["abcdefghij"], max_len=5)
    np.testing.assert_array_equal(tokens[0], [1, ord("a") + 3, ord("b") + 3, ord("c") + 3, 2])
    assert mask[0].sum() == 5
    assert tokenizer.decode(tokens[0]) == "abc"


def test_tokens_within_vocab(tokenizer):
    tokens, _ = tokenizer.encode_batch([bytes(range(256)).decode("latin-1")], max_len=600)
    assert tokens.min() >= 0 and tokens.max() < tokenizer.vocab_size


def test_decode_ignores_padding_and_stops_at_eos(tokenizer):
    assert tokenizer.decode([1, ord("h") + 3, ord("i") + 3, 2, ord("x") + 3, 0]) == "hi"


def test_max_len_too_small(tokenizer):
    with pytest.raises(ValueError, match="at least 2"):
        tokenizer.encode_batch(["a"], max_len=1)


def test_registry():
    assert isinstance(get_tokenizer("byte"), ByteTokenizer)
    assert isinstance(get_tokenizer("byte"), Tokenizer)
    assert "byte" in known_tokenizers()
    with pytest.raises(ValueError, match="byte"):
        get_tokenizer("sentencepiece")
