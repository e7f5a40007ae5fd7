"""The diffusion classifier (Li et al. 2023): a conditional denoiser ranks classes by how well each class's
condition lets it denoise an image.

Every class sees the same timesteps and noise per image (stratified over the schedule). All classes are
scored on ``zero_shot_trials`` draws; the ``zero_shot_keep`` best are scored on ``zero_shot_extra_trials``
more, and the rest get -inf.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from scaling.data.captions import caption_length, class_prompts, prompt_templates, tokenize_prompts
from scaling.data.tokenizer import get_tokenizer
from scaling.objectives.diffusion.model import DiffusionModel

Array = jax.Array
# (model, images [N, H, W, C], conditions [N, E], timesteps [N], noise [N, H, W, C]) -> epsilon error [N]
EpsilonError = Callable[[DiffusionModel, Array, Array, Array, Array], Array]


def class_conditions(config: ml_collections.ConfigDict, model: DiffusionModel, class_names) -> Array:
    """[K, E] condition embeddings: label ids in class order, or the classes' first prompts."""
    count = len(class_names)
    if config.diffusion.condition == "label":
        condition = {"label": jnp.arange(count)}
    else:
        prompts = class_prompts(class_names, prompt_templates(config.data.name)[:1])
        tokens_KT, mask_KT = tokenize_prompts(
            get_tokenizer(config.data.tokenizer), prompts, caption_length(config.data)
        )
        condition = {"caption_tokens": jnp.asarray(tokens_KT), "caption_mask": jnp.asarray(mask_KT)}
    return model.embed_condition(condition, jnp.ones((count,), bool))


def class_errors(epsilon_error: EpsilonError, num_timesteps: int, model: DiffusionModel, images_BHWC: Array,
                 conditions_BJE: Array, trials: int, rng: Array) -> Array:
    """[B, J] epsilon error of each image under each of its J conditions, mean over ``trials`` stratified
    timesteps with noise shared by the J conditions."""
    B, J, width = conditions_BJE.shape
    image_shape = images_BHWC.shape[1:]
    t_rng, noise_rng = jax.random.split(rng)
    strata_BR = (jnp.arange(trials) + jax.random.uniform(t_rng, (B, trials))) / trials
    t_BR = jnp.minimum((strata_BR * num_timesteps).astype(jnp.int32), num_timesteps - 1)
    noise_BRHWC = jax.random.normal(noise_rng, (B, trials, *image_shape))
    shape = (B, J, trials)
    errors = epsilon_error(
        model,
        jnp.broadcast_to(images_BHWC[:, None, None], (*shape, *image_shape)).reshape(-1, *image_shape),
        jnp.broadcast_to(conditions_BJE[:, :, None], (*shape, width)).reshape(-1, width),
        jnp.broadcast_to(t_BR[:, None], shape).reshape(-1),
        jnp.broadcast_to(noise_BRHWC[:, None], (*shape, *image_shape)).reshape(-1, *image_shape),
    )
    return errors.reshape(shape).mean(axis=-1)


def classifier_scores(config: ml_collections.ConfigDict, epsilon_error: EpsilonError, model: DiffusionModel,
                      images_BHWC: Array, class_names, rng: Array) -> Array:
    """[B, K] diffusion-classifier scores (minus mean denoising error; higher is better)."""
    c = config.diffusion
    conditions_KE = class_conditions(config, model, class_names)
    B, K = images_BHWC.shape[0], conditions_KE.shape[0]
    errors = lambda conditions, trials, rng: class_errors(
        epsilon_error, c.num_timesteps, model, images_BHWC, conditions, trials, rng)
    first_rng, extra_rng = jax.random.split(rng)
    all_classes_BKE = jnp.broadcast_to(conditions_KE, (B, *conditions_KE.shape))
    first_BK = errors(all_classes_BKE, c.zero_shot_trials, first_rng)
    _, kept_BJ = jax.lax.top_k(-first_BK, min(c.zero_shot_keep, K))
    extra_BJ = errors(conditions_KE[kept_BJ], c.zero_shot_extra_trials, extra_rng)
    first_kept_BJ = jnp.take_along_axis(first_BK, kept_BJ, axis=1)
    trials = c.zero_shot_trials + c.zero_shot_extra_trials
    error_BJ = (first_kept_BJ * c.zero_shot_trials + extra_BJ * c.zero_shot_extra_trials) / trials
    return jnp.full((B, K), -jnp.inf).at[jnp.arange(B)[:, None], kept_BJ].set(-error_BJ)
