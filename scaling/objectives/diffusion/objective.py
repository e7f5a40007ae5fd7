"""The diffusion objective: a DiT denoiser (scaling.objectives.diffusion.model) trained to predict epsilon
or v, with classifier-free condition dropout, probe features, a diffusion classifier (classifier.py) and
DDIM samples with classifier-free guidance (schedule.py holds the math).

Probe features are pooled block activations at a low noise level under the null condition. Constructing
the objective reads no data: a label-conditioned model whose class count is 0 (read it from the data set)
reads it from the data set's metadata when the model is first built.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scaling import flops
from scaling.data.captions import caption_length
from scaling.data.pipeline import label_classes
from scaling.errors import ConfigError
from scaling.models.chunks import in_chunks
from scaling.models.sizes import get_size
from scaling.models.transformer import normalize_images, pooled_layer_features
from scaling.objectives.base import BaseObjective, CaptionScorer, SampleWriter, ZeroShotScorer
from scaling.objectives.diffusion.classifier import classifier_scores
from scaling.objectives.diffusion.model import TIMESTEP_FREQUENCIES, DiffusionModel
from scaling.objectives.diffusion.schedule import (
    PREDICTIONS,
    SCHEDULES,
    add_noise,
    bucket_losses,
    bucket_timesteps,
    ddim_sample,
    ddim_timesteps,
    denoised,
    noise_schedule,
    prediction_target,
)
from scaling.samples import as_rows, image_grid

Array = jax.Array
CONDITIONS = ("none", "label", "caption")


def config_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "prediction": "epsilon",
            "schedule": "cosine",
            "num_timesteps": 1000,
            "condition": "caption",
            "condition_dropout": 0.1,  # classifier-free: probability of the null condition in training
            # Probe features at each of these timesteps; the probe picks the (timestep, layer) pair on
            # validation, as it picks the layer for every objective. Under the cosine schedule t = 30
            # and 100 of 1000 leave noise of std 0.05 and 0.17 on [-1, 1] pixels. Which is best moves
            # with scale: CIFAR-10 at sizes mu and nano probed best at t = 0, and 6 to 15 points worse
            # at t = 100; larger, longer-trained models are reported to peak at small nonzero noise.
            "feature_timesteps": (0, 30, 100),
            "sample_steps": 50,  # DDIM steps
            "guidance_scale": 1.5,  # 1 -> no guidance
            "loss_buckets": 4,  # loss_t0 ... reported per equal range of timesteps
            "num_classes": 0,  # label condition: 0 -> the class count of data.label in the data set
            "text_size": "mu",  # caption condition: size of the caption encoder
            # Diffusion classifier (Li et al. 2023): every class is scored on zero_shot_trials shared
            # (timestep, noise) pairs; the zero_shot_keep best are scored on zero_shot_extra_trials more.
            "zero_shot_trials": 8,
            "zero_shot_keep": 3,
            "zero_shot_extra_trials": 16,
        }
    )


def to_uint8(images_BHWC: Array) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels."""
    return np.asarray(jnp.round((jnp.clip(images_BHWC, -1, 1) + 1) * 127.5)).astype(np.uint8)


class Diffusion(BaseObjective, ZeroShotScorer, CaptionScorer, SampleWriter):
    name = "diffusion"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        c = config.diffusion
        self.alpha_bar_Z = noise_schedule(c.schedule, c.num_timesteps)
        self.condition_keys = {"none": (), "label": ("label",),
                               "caption": ("caption_tokens", "caption_mask")}[c.condition]

    @functools.cached_property
    def num_classes(self) -> int:
        """Rows of the label table (less the null row): diffusion.num_classes, or when that is 0 and the
        model is label-conditioned, the class count of data.label (read from the data set's metadata)."""
        c = self.config.diffusion
        if c.condition == "label" and not c.num_classes:
            return label_classes(self.config.data)
        return c.num_classes

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        c = config.diffusion
        for field, value, allowed in (("prediction", c.prediction, PREDICTIONS),
                                      ("schedule", c.schedule, SCHEDULES),
                                      ("condition", c.condition, CONDITIONS)):
            if value not in allowed:
                raise ConfigError(f"diffusion.{field}: {value!r} not in {allowed}")
        if c.num_timesteps < 2:
            raise ConfigError("diffusion.num_timesteps: need at least 2")
        timesteps = tuple(c.feature_timesteps)
        if not timesteps or len(set(timesteps)) != len(timesteps) or not all(
                0 <= t < c.num_timesteps for t in timesteps):
            raise ConfigError(
                f"diffusion.feature_timesteps: {timesteps} must be distinct timesteps in [0, num_timesteps "
                f"({c.num_timesteps})), at least one; e.g. (0, 30, 100)"
            )
        if not 1 <= c.sample_steps <= c.num_timesteps:
            raise ConfigError(f"diffusion.sample_steps: must lie in [1, num_timesteps ({c.num_timesteps})]")
        if not 1 <= c.loss_buckets <= c.num_timesteps:
            raise ConfigError(f"diffusion.loss_buckets: must lie in [1, num_timesteps ({c.num_timesteps})]")
        if not 0 <= c.condition_dropout < 1:
            raise ConfigError("diffusion.condition_dropout: must lie in [0, 1)")
        if c.guidance_scale < 0:
            raise ConfigError("diffusion.guidance_scale: must be >= 0 (1 means no guidance)")
        if c.condition != "none" and c.guidance_scale != 1 and c.condition_dropout == 0:
            raise ConfigError(
                "diffusion.guidance_scale: classifier-free guidance needs a null condition; set "
                "diffusion.condition_dropout > 0 (e.g. 0.1) or guidance_scale = 1"
            )
        if c.num_classes < 0:
            raise ConfigError("diffusion.num_classes: must be >= 0 (0 reads it from the data set)")
        if c.condition == "caption":
            get_size(c.text_size)
            if config.data.caption_level == "none":
                raise ConfigError(
                    "data.caption_level: caption conditioning needs captions; use short, medium or "
                    "descriptive, or set diffusion.condition to none or label"
                )

    def init(self, rngs: nnx.Rngs) -> DiffusionModel:
        return DiffusionModel(self.config, self.num_classes, rngs=rngs)

    def training_condition(self, model: DiffusionModel, batch, rng: Array) -> Array | None:
        """The batch's condition embedding with classifier-free dropout to the null condition."""
        uniform_B = jax.random.uniform(rng, (batch["image"].shape[0],))
        return model.embed_condition(batch, uniform_B >= self.config.diffusion.condition_dropout)

    def noised(self, images_BHWC: Array, t_B: Array, noise_BHWC: Array) -> tuple[Array, Array, Array]:
        """(x_0 in [-1, 1], x_t, alpha_bar_t [B]) for uint8 images noised to timesteps ``t_B``."""
        x0_BHWC = normalize_images(images_BHWC)
        alpha_bar_B = jnp.asarray(self.alpha_bar_Z)[t_B]
        return x0_BHWC, add_noise(x0_BHWC, noise_BHWC, alpha_bar_B), alpha_bar_B

    def loss(self, model: DiffusionModel, batch, rng: Array):
        c = self.config.diffusion
        images_BHWC = batch["image"]
        t_rng, noise_rng, condition_rng = jax.random.split(rng, 3)
        t_B = jax.random.randint(t_rng, (images_BHWC.shape[0],), 0, c.num_timesteps)
        noise_BHWC = jax.random.normal(noise_rng, images_BHWC.shape)
        x0_BHWC, x_t_BHWC, alpha_bar_B = self.noised(images_BHWC, t_B, noise_BHWC)
        output_BHWC, _ = model(x_t_BHWC, t_B, self.training_condition(model, batch, condition_rng))
        target_BHWC = prediction_target(x0_BHWC, noise_BHWC, alpha_bar_B, c.prediction)
        error_B = jnp.square(output_BHWC - target_BHWC).mean(axis=(1, 2, 3))
        return error_B.mean(), bucket_losses(error_B, t_B, c.num_timesteps, c.loss_buckets)

    def features(self, model: DiffusionModel, images_BHWC: Array, rng: Array) -> dict[str, Array]:
        """Pooled block outputs, null condition, for the images noised to each of ``feature_timesteps``
        with the same noise: {"layer_01/t0": [B, D], "layer_01/t30": ...}."""
        def pooled(x_BHWC, noise_BHWC):
            batch = x_BHWC.shape[0]
            features = {}
            for t in self.config.diffusion.feature_timesteps:
                t_B = jnp.full((batch,), t)
                _, x_t_BHWC, _ = self.noised(x_BHWC, t_B, noise_BHWC)
                _, hidden = model(x_t_BHWC, t_B, model.null_condition(batch))
                features.update({f"{layer}/t{t}": f_BD
                                 for layer, f_BD in pooled_layer_features(hidden).items()})
            return features

        return in_chunks(pooled, images_BHWC, jax.random.normal(rng, images_BHWC.shape))

    def epsilon_error(self, model: DiffusionModel, images_BHWC: Array, condition_BE: Array | None,
                      timesteps_B: Array, noise_BHWC: Array) -> Array:
        """[B] mean squared epsilon error of the denoiser at the given timesteps, noise and condition
        embeddings (``model.embed_condition``, or ``model.null_condition`` for the unconditional one). A
        v-predicting model's output is converted to epsilon, so errors compare across parametrisations."""
        _, x_t_BHWC, alpha_bar_B = self.noised(images_BHWC, timesteps_B, noise_BHWC)
        output_BHWC, _ = model(x_t_BHWC, timesteps_B, condition_BE)
        _, eps_BHWC = denoised(x_t_BHWC, output_BHWC, alpha_bar_B, self.config.diffusion.prediction)
        return jnp.square(eps_BHWC - noise_BHWC).mean(axis=(1, 2, 3))

    @property
    def caption_outputs_available(self) -> bool:
        return self.config.diffusion.condition == "caption"

    def caption_outputs(self, model: DiffusionModel, images_BHWC: Array, captions, rng: Array) -> dict:
        """``denoising_error/none``, ``denoising_error/<level>`` and ``mismatched_error/<level>`` [B, K]:
        epsilon error at one timestep drawn in each of the K loss buckets, the same (timestep, noise) draws
        with the null condition, under each level's captions ({level: (tokens [B, T], mask [B, T])}) and
        under the next example's caption (what any caption does, without this image's content)."""
        c = self.config.diffusion
        B, K = images_BHWC.shape[0], c.loss_buckets
        t_rng, noise_rng = jax.random.split(rng)
        t_N = bucket_timesteps(t_rng, B, K, c.num_timesteps).reshape(-1)
        noise_NHWC = jax.random.normal(noise_rng, (B * K, *images_BHWC.shape[1:]))
        images_NHWC = jnp.repeat(images_BHWC, K, axis=0)
        errors = lambda condition_NE: self.epsilon_error(model, images_NHWC, condition_NE, t_N, noise_NHWC
                                                         ).reshape(B, K)
        outputs = {"denoising_error/none": errors(model.null_condition(B * K))}
        keep_N = jnp.ones((B * K,), bool)
        for level, (tokens_BT, mask_BT) in captions.items():
            for name, shift in (("denoising_error", 0), ("mismatched_error", 1)):
                condition = {"caption_tokens": jnp.repeat(jnp.roll(tokens_BT, shift, axis=0), K, axis=0),
                             "caption_mask": jnp.repeat(jnp.roll(mask_BT, shift, axis=0), K, axis=0)}
                outputs[f"{name}/{level}"] = errors(model.embed_condition(condition, keep_N))
        return outputs

    @property
    def zero_shot_available(self) -> bool:
        return self.config.diffusion.condition != "none"

    @property
    def class_score_field(self) -> str:
        """A label-conditioned model classifies with the labels it was trained on: a generative
        classifier, not zero-shot transfer. Caption conditioning scores class-name prompts: zero-shot."""
        if self.config.diffusion.condition == "label":
            return "generative_classifier_accuracy"
        return "zero_shot_accuracy"

    def check_class_names(self, class_names) -> None:
        """A label-conditioned model scores exactly the label ids it has embeddings for."""
        if self.config.diffusion.condition == "label" and len(class_names) != self.num_classes:
            raise ConfigError(
                f"eval: a diffusion model conditioned on the {self.num_classes} classes of data.label "
                f"{self.config.data.label!r} cannot score {len(class_names)} other classes; evaluate on "
                "the training data set and label, train with diffusion.condition=caption, or set "
                "eval.zero_shot=False"
            )

    def zero_shot_scores(self, model: DiffusionModel, images_BHWC: Array, class_names, rng: Array) -> Array:
        """[B, K] diffusion-classifier scores (see classifier.py; higher is better)."""
        return classifier_scores(self.config, self.epsilon_error, model, images_BHWC, class_names, rng)

    def _condition_or_null(self, model: DiffusionModel, condition, batch: int) -> Array | None:
        if condition is None:
            return model.null_condition(batch)
        return model.embed_condition(condition, jnp.ones((batch,), bool))

    def sample(self, model: DiffusionModel, condition: dict[str, Array] | None, noise_BHWC: Array) -> Array:
        """DDIM samples in [-1, 1] from x_T = ``noise_BHWC``; conditioned on ``condition`` (batch keys:
        "label" [B], or "caption_tokens" and "caption_mask" [B, T]) with classifier-free guidance,
        unconditional when it is None."""
        c = self.config.diffusion
        batch = noise_BHWC.shape[0]
        condition_BE = self._condition_or_null(model, condition, batch)
        guided = condition is not None and condition_BE is not None and c.guidance_scale != 1

        def denoise(x_BHWC: Array, t_B: Array) -> Array:
            if not guided:
                return model(x_BHWC, t_B, condition_BE)[0]
            both_BE = jnp.concatenate([condition_BE, model.null_condition(batch)])
            output_2BHWC, _ = model(jnp.concatenate([x_BHWC, x_BHWC]), jnp.concatenate([t_B, t_B]), both_BE)
            conditional, unconditional = output_2BHWC[:batch], output_2BHWC[batch:]
            return unconditional + c.guidance_scale * (conditional - unconditional)

        timesteps_S = jnp.asarray(ddim_timesteps(c.num_timesteps, c.sample_steps))
        return ddim_sample(denoise, noise_BHWC, jnp.asarray(self.alpha_bar_Z), timesteps_S, c.prediction)

    def write_samples(self, model: DiffusionModel, batch, rng: Array, directory) -> None:
        """``directory/samples.png``: a grid of DDIM samples, conditioned on the batch when the model is."""
        condition = {key: jnp.asarray(batch[key]) for key in self.condition_keys} or None
        noise_BHWC = jax.random.normal(rng, batch["image"].shape, jnp.float32)
        samples_BHWC = nnx.jit(self.sample)(model, condition, noise_BHWC)
        image_grid(as_rows(to_uint8(samples_BHWC))).save(Path(directory) / "samples.png")

    def train_flops_per_example(self) -> float:
        """DiT: patch embedding, the timestep MLP (sinusoids -> width -> width), the optional caption
        encoder and its projection, the transformer over patches with each block's adaLN-Zero modulation
        (width -> 6 * width, once per example), the final modulation (width -> 2 * width) and the
        un-patchify head."""
        c, size = self.config, get_size(self.config.size)
        w, patch = size.width, c.model.patch_size
        forward = flops.image_tower_forward(size, c.data.image_size, patch)
        forward += size.depth * flops.dense(1, w, 6 * w) + flops.dense(1, w, 2 * w)
        forward += flops.dense(flops.patches(c.data.image_size, patch), w, patch * patch * 3)
        forward += flops.dense(1, TIMESTEP_FREQUENCIES, w) + flops.dense(1, w, w)
        if c.diffusion.condition == "caption":
            text = get_size(c.diffusion.text_size)
            forward += flops.transformer_forward(text, caption_length(c.data)) + flops.dense(1, text.width, w)
        return flops.TRAIN_MULTIPLIER * forward
