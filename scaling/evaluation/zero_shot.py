"""Zero-shot classification: class prompts from templates, and accuracy of an objective's class scores.

An objective that can classify without training a probe defines
``zero_shot_scores(model, images_BHWC, class_names, rng) -> [B, C]`` (higher is better): CLIP by cosine
similarity to template-averaged text embeddings, the captioner by caption log-likelihood, the diffusion
model by denoising error under each class condition.
"""

from __future__ import annotations

import jax
import numpy as np

from scaling.data.tokenizer import Tokenizer

TEMPLATES = ("a {}", "a {} in the picture", "a photo of a {}", "an image showing a {}")


def class_prompts(class_names: tuple[str, ...], templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Prompts ordered class-major: [c0 t0, c0 t1, ..., c1 t0, ...]."""
    return [template.format(name.replace("_", " ")) for name in class_names for template in templates]


def tokenize_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, mask = tokenizer.encode_batch(prompts, max_len)
    return np.asarray(tokens, np.int32), np.asarray(mask, np.int32)


def supports_zero_shot(objective) -> bool:
    """Whether the objective defines zero_shot_scores and (if it says) can use it in this config."""
    return callable(getattr(objective, "zero_shot_scores", None)) and getattr(
        objective, "zero_shot_available", True
    )


def make_zero_shot_fn(objective, model_from_params, class_names: tuple[str, ...]):
    """Jitted (params, images, rng) -> predicted class ids [B]."""

    def predict(params, images, rng):
        scores_BC = objective.zero_shot_scores(model_from_params(params), images, class_names, rng)
        return scores_BC.argmax(axis=-1)

    return jax.jit(predict)
