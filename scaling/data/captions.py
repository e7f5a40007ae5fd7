"""Caption text shared by data, objectives and evaluation: the caption detail levels, the longest caption
of each level, the training mix of levels (``data.caption_mix``, parsed) and so the caption sequence
length (``caption_length``), and the zero-shot class prompts (templates, prompts per class, their tokens).

It imports nothing heavier than the tokenizer, so the config schema and every objective can read it
without loading TFDS or PIL.
"""

from __future__ import annotations

import math

import numpy as np

from scaling.data.tokenizer import Tokenizer
from scaling.errors import ConfigError

CAPTION_LEVELS = ("none", "short", "medium", "descriptive")
# Byte tokens (BOS and EOS included) of the longest scenes caption of each level over every example of
# every split (train, validation and test at scenes.DEFAULT_SPLIT_SIZES; every builder config reads a
# prefix of them): text sequences this long cut no caption. Means: 0, 13.9, 40.0 and 140.8 bytes.
CAPTION_TOKENS = {"none": 2, "short": 20, "medium": 80, "descriptive": 250}

SUM_TOLERANCE = 1e-6
MIX_EXAMPLE = "descriptive:0.95,short:0.05"


def parse_caption_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"descriptive:0.95,short:0.05"`` -> ``(("descriptive", 0.95), ("short", 0.05))``; ConfigError for
    an unknown or repeated level, a proportion that is not a positive number, or proportions that do not
    sum to 1. ``""`` -> ``()``."""
    if not text.strip():
        return ()
    pairs = []
    for item in text.split(","):
        level, sep, proportion = (part.strip() for part in item.partition(":"))
        if not sep:
            raise ConfigError(f"data.caption_mix: {item.strip()!r} is not level:proportion; write e.g. "
                              f"{MIX_EXAMPLE!r}")
        if level not in CAPTION_LEVELS:
            raise ConfigError(f"data.caption_mix: unknown caption level {level!r}; choose among "
                              f"{', '.join(CAPTION_LEVELS)}")
        try:
            value = float(proportion)
        except ValueError:
            value = math.nan
        if not value > 0:
            raise ConfigError(f"data.caption_mix: proportion {proportion!r} of {level} must be a positive "
                              "number; leave a level out to give it none")
        pairs.append((level, value))
    levels = [level for level, _ in pairs]
    if len(set(levels)) < len(levels):
        raise ConfigError(f"data.caption_mix: {text!r} names a level twice; give each level once")
    total = sum(value for _, value in pairs)
    if abs(total - 1) > SUM_TOLERANCE:
        raise ConfigError(f"data.caption_mix: proportions of {text!r} sum to {total:g}, not 1; e.g. "
                          f"{MIX_EXAMPLE!r}")
    return tuple(pairs)


def training_mix(data_config) -> tuple[tuple[str, float], ...]:
    """The (level, proportion) pairs the training captions come from: the mix, else caption_level alone
    (also for the config of a run recorded before mixes existed)."""
    return parse_caption_mix(data_config.get("caption_mix", "")) or ((data_config.caption_level, 1.0),)


def longest_caption_tokens(data_config) -> int:
    """Byte tokens of the longest caption of any level the model trains on."""
    return max(CAPTION_TOKENS[level] for level, _ in training_mix(data_config))


def caption_length(data_config) -> int:
    """Tokens per caption sequence (BOS and EOS included): `data.max_caption_len` if positive, else the
    byte-token length of the longest scenes caption at `data.caption_level`, or at any level of
    `data.caption_mix` (a subword tokenizer needs fewer tokens, so it fits too)."""
    return data_config.max_caption_len or longest_caption_tokens(data_config)


# Zero-shot prompt templates for data sets whose captions are not templated class names.
TEMPLATES = ("a {}", "a {} in the picture", "a photo of a {}", "an image showing a {}")
# Data sets whose captions are class names in templates, and those templates.
CAPTION_TEMPLATES = {
    "cifar10_jpeg": (
        "a photo of a {}.", "a blurry photo of a {}.", "a close-up photo of a {}.",
        "a low resolution photo of a {}.",
    ),
}


def prompt_templates(data_name: str) -> tuple[str, ...]:
    """Zero-shot templates for a model trained on ``data_name``: the data set's own caption templates
    where it has them, so each prompt is a caption the text side has read, else ``TEMPLATES``. A
    captioner scores prompts by likelihood, so prompts in another form would be scored mostly on the
    form: on CIFAR-10 the generic templates put every image in the class with the shortest name."""
    return CAPTION_TEMPLATES.get(data_name, TEMPLATES)


def class_prompts(class_names: tuple[str, ...], templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Prompts ordered class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [template.format(name.replace("_", " ")) for name in class_names for template in templates]


def tokenize_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """int32 (tokens [P, T], mask [P, T]) of the prompts, padded or cut to ``max_len`` tokens."""
    tokens, mask = tokenizer.encode_batch(prompts, max_len)
    return np.asarray(tokens, np.int32), np.asarray(mask, np.int32)
