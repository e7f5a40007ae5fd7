"""Zero-shot classification: which objectives score classes, the record field of that accuracy, and the
jitted predictor (class prompts and their templates live with the data, in scaling.data.captions).

An objective that can classify without training a probe is a ``ZeroShotScorer`` (scaling.objectives.base):
``zero_shot_scores(model, images_BHWC, class_names, rng) -> [B, K]`` (higher is better): CLIP by cosine
similarity to template-averaged text embeddings, the captioner by caption log-likelihood, the diffusion model
by denoising error under each class condition. ``class_score_field`` names the record field of the resulting
accuracy: a label-conditioned diffusion model ranks the very labels it was trained with, so its accuracy is
``generative_classifier_accuracy``, never ``zero_shot_accuracy``.
"""

from __future__ import annotations

import jax

from scaling.objectives.base import ZeroShotScorer


def supports_zero_shot(objective) -> bool:
    """Whether the objective scores classes and can in this config."""
    return isinstance(objective, ZeroShotScorer) and objective.zero_shot_available


def make_zero_shot_fn(objective: ZeroShotScorer, model_from_params, class_names: tuple[str, ...]):
    """Jitted (params, images, rng) -> predicted class ids [B]; classes the objective cannot score are
    rejected (ConfigError, its ``check_class_names``) here, before any evaluation runs."""
    objective.check_class_names(class_names)

    def predict(params, images, rng):
        scores_BK = objective.zero_shot_scores(model_from_params(params), images, class_names, rng)
        return scores_BK.argmax(axis=-1)

    return jax.jit(predict)
