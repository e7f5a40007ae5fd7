"""Zero-shot classification: which objectives score classes, the record field of that accuracy, and the
jitted predictor (class prompts and their templates live with the data, in scaling.data.captions).

An objective that can classify without training a probe defines
``zero_shot_scores(model, images_BHWC, class_names, rng) -> [B, K]`` (higher is better): CLIP by cosine
similarity to template-averaged text embeddings, the captioner by caption log-likelihood, the diffusion
model by denoising error under each class condition. ``class_score_field`` names the record field of
the resulting accuracy: a label-conditioned diffusion model ranks the very labels it was trained with,
so its accuracy is ``generative_classifier_accuracy``, never ``zero_shot_accuracy``.
"""

from __future__ import annotations

import jax


def supports_zero_shot(objective) -> bool:
    """Whether the objective defines zero_shot_scores and (if it says) can use it in this config."""
    return callable(getattr(objective, "zero_shot_scores", None)) and getattr(
        objective, "zero_shot_available", True
    )


def class_score_field(objective) -> str:
    """The record field for the accuracy of the objective's class scores."""
    return getattr(objective, "class_score_field", "zero_shot_accuracy")


def make_zero_shot_fn(objective, model_from_params, class_names: tuple[str, ...]):
    """Jitted (params, images, rng) -> predicted class ids [B]; an objective with ``check_class_names``
    rejects classes it cannot score (ConfigError) here, before any evaluation runs."""
    check = getattr(objective, "check_class_names", None)
    if check is not None:
        check(class_names)

    def predict(params, images, rng):
        scores_BK = objective.zero_shot_scores(model_from_params(params), images, class_names, rng)
        return scores_BK.argmax(axis=-1)

    return jax.jit(predict)
