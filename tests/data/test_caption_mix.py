"""Caption mixes: levels drawn per example in the configured proportions, the same on every rerun, resumed
exactly, and refused with a message when the mix cannot work."""

import json

import numpy as np
import pytest
from helpers import load_experiment

from scaling.config import validate
from scaling.data import pipeline
from scaling.data.caption_mix import draw_levels
from scaling.data.captions import CAPTION_TOKENS, parse_caption_mix
from scaling.data.tokenizer import ByteTokenizer
from scaling.errors import ConfigError


@pytest.fixture
def mixed_data(data_dir):
    data = load_experiment("clip").data
    data.name, data.data_dir = "scenes/32_small", data_dir
    data.caption_mix = "descriptive:0.5,short:0.5"
    return data


def batches(data, count: int, seed: int = 0, state=None):
    iterator = pipeline.make_train_iterator(data, batch_size=64, seed=seed)
    if state is not None:
        iterator.set_state(state)
    return [next(iterator) for _ in range(count)], iterator


def is_short(batch) -> np.ndarray:
    """[b] whether each caption is a short one ("a red circle": one shape word, no object list)."""
    texts = [ByteTokenizer().decode(tokens) for tokens in batch["caption_tokens"]]
    return np.array([len(text) + 2 <= CAPTION_TOKENS["short"] for text in texts])


@pytest.mark.parametrize("proportions", [(0.95, 0.05), (0.2, 0.3, 0.5)])
def test_levels_follow_the_proportions_within_sampling_error(proportions):
    draws = 10_000
    counts = np.bincount(draw_levels((3, 0), np.arange(draws), proportions), minlength=len(proportions))
    sigma = np.sqrt(np.asarray(proportions) * (1 - np.asarray(proportions)) / draws)
    assert np.all(np.abs(counts / draws - proportions) < 4 * sigma)


def test_pipeline_mixes_levels_in_full_length_sequences(mixed_data):
    (*first, last), _ = batches(mixed_data, 6)
    short = np.concatenate([is_short(batch) for batch in (*first, last)])
    assert last["caption_tokens"].shape == (64, CAPTION_TOKENS["descriptive"])
    assert abs(short.mean() - 0.5) < 4 * np.sqrt(0.25 / len(short))  # 384 examples: within 0.1


def test_mix_is_deterministic_by_seed_and_resumes_exactly(mixed_data):
    run, iterator = batches(mixed_data, 3)
    state = json.loads(json.dumps(iterator.get_state()))
    rest = [next(iterator) for _ in range(2)]
    rerun, _ = batches(mixed_data, 3)
    resumed, _ = batches(mixed_data, 2, state=state)
    other_seed, _ = batches(mixed_data, 3, seed=1)
    for expected, got in zip(run + rest, rerun + resumed, strict=True):
        np.testing.assert_array_equal(expected["caption_tokens"], got["caption_tokens"])
        np.testing.assert_array_equal(expected["image"], got["image"])
    levels = lambda bs: np.concatenate([is_short(b) for b in bs])
    assert not np.array_equal(levels(run), levels(other_seed))


def test_one_level_mix_is_that_level(mixed_data):
    mixed_data.caption_mix = "short:1"
    (batch,), _ = batches(mixed_data, 1)
    mixed_data.caption_mix, mixed_data.caption_level = "", "short"
    (plain,), _ = batches(mixed_data, 1)
    np.testing.assert_array_equal(batch["caption_tokens"], plain["caption_tokens"])
    assert batch["caption_tokens"].shape[1] == CAPTION_TOKENS["short"]


@pytest.mark.parametrize("mix, message", [
    ("descriptive:0.9,short:0.05", "sum to 0.95, not 1"),
    ("descriptive:0.95,shrt:0.05", "unknown caption level 'shrt'"),
    ("descriptive", "is not level:proportion"),
    ("short:0.5,short:0.5", "names a level twice"),
])
def test_bad_mix_is_a_config_error_naming_the_fix(mix, message):
    config = load_experiment("clip")
    config.data.caption_mix = mix
    with pytest.raises(ConfigError, match=message):
        validate(config, num_devices=1)


def test_unknown_eval_level_is_a_config_error():
    config = load_experiment("clip")
    config.eval.caption_levels = ("short", "verbose")
    with pytest.raises(ConfigError, match="eval.caption_levels: 'verbose' is not a caption level"):
        validate(config, num_devices=1)
    spaced = parse_caption_mix(" descriptive : 0.95 , short : 0.05 ")
    assert spaced == (("descriptive", 0.95), ("short", 0.05))
