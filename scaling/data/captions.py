"""Caption text shared by data, objectives and evaluation: the caption detail levels, the longest caption
of each level, and the zero-shot class prompts (templates, prompts per class, their tokens).

It imports nothing heavier than the tokenizer, so the config schema and every objective can read it
without loading TFDS or PIL.
"""

from __future__ import annotations

import numpy as np

from scaling.data.tokenizer import Tokenizer

CAPTION_LEVELS = ("none", "short", "medium", "descriptive")
# Byte tokens (BOS and EOS included) of the longest scenes caption of each level over every example of
# every split (train, validation and test at scenes.DEFAULT_SPLIT_SIZES; every builder config reads a
# prefix of them): text sequences this long cut no caption. Means: 0, 13.9, 40.0 and 140.8 bytes.
CAPTION_TOKENS = {"none": 2, "short": 20, "medium": 80, "descriptive": 250}

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
