"""Diffusion: a DiT denoiser over image patches (Peebles & Xie 2023) with DDIM sampling.

The model is the shared backbone run over noisy patches, every block adaLN-Zero conditioned on a timestep
embedding (sinusoids -> MLP) plus an optional condition embedding: a class-label table with a null row, or
a caption embedding (a small bidirectional TextTower over the real tokens, mean-pooled and projected) with a
learned null vector. Classifier-free dropout swaps the condition for the null one. A final
adaLN-modulated LayerNorm and a zero-initialised un-patchify head predict epsilon or v for every pixel,
so the whole model outputs zeros at init.

Images live in [-1, 1]; x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps over discrete timesteps
t in [0, num_timesteps) with a cosine (Nichol & Dhariwal 2021) or linear (Ho et al. 2020) schedule. This
module also owns probe features (pooled block activations at a low noise level, null condition), the
per-example denoising error a diffusion classifier (Li et al. 2023) ranks conditions by, and
deterministic DDIM sampling (eta = 0) with classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scaling import flops
from scaling.config import ConfigError
from scaling.data.pipeline import caption_length, make_builder
from scaling.data.tokenizer import get_tokenizer
from scaling.evaluation.zero_shot import TEMPLATES, class_prompts, tokenize_prompts
from scaling.models.layers import Dense, PatchEmbed, Positions, TokenEmbed, modulate, param
from scaling.models.sizes import get_size
from scaling.models.transformer import (
    TextTower,
    Transformer,
    masked_mean,
    normalize_images,
    pooled_layer_features,
)
from scaling.samples import as_rows, image_grid

Array = jax.Array
PREDICTIONS = ("epsilon", "v")
SCHEDULES = ("cosine", "linear")
CONDITIONS = ("none", "label", "caption")
TIMESTEP_FREQUENCIES = 256
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def config_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "prediction": "epsilon",
            "schedule": "cosine",
            "num_timesteps": 1000,
            "condition": "caption",
            "condition_dropout": 0.1,  # classifier-free: probability of the null condition in training
            # Probe features at t = 100 of 1000: under the cosine schedule alpha_bar = 0.97 (noise std
            # 0.17 on [-1, 1] pixels, SNR 34), low enough to keep the content, high enough that the
            # network must denoise; probes peak at small nonzero noise.
            "feature_timestep": 100,
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


# --- noise schedule and parametrisations -------------------------------------------------------------


def noise_schedule(kind: str, num_timesteps: int) -> np.ndarray:
    """alpha_bar[t] for t = 0 .. num_timesteps - 1 (float32), from near 1 down to near 0."""
    if kind == "cosine":
        steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
        f = np.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], MAX_BETA)
    elif kind == "linear":
        scale = 1000 / num_timesteps
        betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    else:
        raise ValueError(f"unknown noise schedule {kind!r}; use one of {SCHEDULES}")
    return np.cumprod(1 - betas).astype(np.float32)


def _per_example(alpha_bar_B: Array) -> tuple[Array, Array]:
    """sqrt(alpha_bar) and sqrt(1 - alpha_bar), shaped to broadcast against [B, H, W, C]."""
    alpha_bar_B = alpha_bar_B[:, None, None, None]
    return jnp.sqrt(alpha_bar_B), jnp.sqrt(1 - alpha_bar_B)


def add_noise(x0_BHWC: Array, noise_BHWC: Array, alpha_bar_B: Array) -> Array:
    signal, sigma = _per_example(alpha_bar_B)
    return signal * x0_BHWC + sigma * noise_BHWC


def prediction_target(x0_BHWC: Array, noise_BHWC: Array, alpha_bar_B: Array, prediction: str) -> Array:
    """What the network regresses: epsilon, or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0."""
    if prediction == "epsilon":
        return noise_BHWC
    signal, sigma = _per_example(alpha_bar_B)
    return signal * noise_BHWC - sigma * x0_BHWC


def denoised(x_t_BHWC: Array, output_BHWC: Array, alpha_bar_B: Array, prediction: str) -> tuple[Array, Array]:
    """(x_0, epsilon) implied by the network output at x_t."""
    signal, sigma = _per_example(alpha_bar_B)
    if prediction == "epsilon":
        return (x_t_BHWC - sigma * output_BHWC) / signal, output_BHWC
    return signal * x_t_BHWC - sigma * output_BHWC, sigma * x_t_BHWC + signal * output_BHWC


def ddim_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """``steps`` distinct timesteps from num_timesteps - 1 down to 0 (just the last one for one step)."""
    return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(np.int32)


def ddim_sample(
    denoise: Callable[[Array, Array], Array], noise_BHWC: Array, alpha_bar_T: Array, timesteps_S: Array,
    prediction: str,
) -> Array:
    """Deterministic DDIM (eta = 0) from x_T = noise; x_0 is clipped to [-1, 1] at every step (and
    epsilon re-derived from it), so the result lies in [-1, 1]. ``denoise(x_t, t_B)`` is the network."""
    alpha_bar_S = alpha_bar_T[timesteps_S]
    alpha_bar_next_S = jnp.concatenate([alpha_bar_S[1:], jnp.ones((1,), alpha_bar_S.dtype)])
    batch = noise_BHWC.shape[0]

    def step(x_BHWC, inputs):
        t, alpha_bar, alpha_bar_next = inputs
        alpha_bar_B, alpha_bar_next_B = jnp.full((batch,), alpha_bar), jnp.full((batch,), alpha_bar_next)
        x0_BHWC, _ = denoised(x_BHWC, denoise(x_BHWC, jnp.full((batch,), t)), alpha_bar_B, prediction)
        x0_BHWC = jnp.clip(x0_BHWC, -1.0, 1.0)
        signal, sigma = _per_example(alpha_bar_B)
        eps_BHWC = (x_BHWC - signal * x0_BHWC) / sigma
        return add_noise(x0_BHWC, eps_BHWC, alpha_bar_next_B), None

    x_BHWC, _ = jax.lax.scan(step, noise_BHWC, (timesteps_S, alpha_bar_S, alpha_bar_next_S))
    return x_BHWC


def bucket_losses(error_B: Array, t_B: Array, num_timesteps: int, buckets: int) -> dict[str, Array]:
    """Mean error per equal range of timesteps, as masked means (0 for a bucket with no examples)."""
    bucket_B = t_B * buckets // num_timesteps
    losses = {}
    for k in range(buckets):
        in_bucket_B = (bucket_B == k).astype(error_B.dtype)
        losses[f"loss_t{k}"] = (error_B * in_bucket_B).sum() / jnp.maximum(in_bucket_B.sum(), 1.0)
    return losses


def bucket_timesteps(rng: Array, batch: int, buckets: int, num_timesteps: int) -> Array:
    """[batch, buckets] int32: per example one timestep drawn uniformly within each bucket of
    ``bucket_losses`` (t with t * buckets // num_timesteps == k)."""
    lower_K = -(-np.arange(buckets + 1) * num_timesteps // buckets)  # ceil(k T / K)
    width_K = jnp.asarray(lower_K[1:] - lower_K[:-1])
    offset_BK = (jax.random.uniform(rng, (batch, buckets)) * width_K).astype(jnp.int32)
    return jnp.asarray(lower_K[:-1], jnp.int32) + jnp.minimum(offset_BK, width_K - 1)


# --- model -------------------------------------------------------------------------------------------


def timestep_sinusoids(t_B: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """[B, dim] cosines then sines of the timestep at geometrically spaced frequencies."""
    half = dim // 2
    frequencies = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles_BF = t_B.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.cos(angles_BF), jnp.sin(angles_BF)], axis=-1)


class TimestepEmbed(nnx.Module):
    """Sinusoids of t -> Dense -> SiLU -> Dense."""

    def __init__(self, width: int, *, dtype, rngs: nnx.Rngs):
        self.up = Dense((TIMESTEP_FREQUENCIES,), (width,), (None, "mlp"), dtype=dtype, rngs=rngs)
        self.down = Dense((width,), (width,), ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, t_B: Array) -> Array:
        return self.down(jax.nn.silu(self.up(timestep_sinusoids(t_B, TIMESTEP_FREQUENCIES))))


def unpatchify(patches_BLP: Array, patch: int) -> Array:
    """[B, (H/p)*(W/p), p*p*3] -> [B, H, W, 3], the inverse of PatchEmbed's patch layout."""
    B, L, _ = patches_BLP.shape
    grid = int(round(L**0.5))
    x = patches_BLP.reshape(B, grid, grid, patch, patch, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(B, grid * patch, grid * patch, 3)


class DiffusionModel(nnx.Module):
    """DiT: noisy image + timestep (+ condition embedding) -> epsilon or v per pixel."""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int, *, rngs: nnx.Rngs):
        c = config.diffusion
        size = get_size(config.size)
        width, patch = size.width, config.model.patch_size
        dtype = jnp.dtype(config.model.dtype)
        self.patch = patch
        self.embed = PatchEmbed(patch, 3, width, dtype=dtype, rngs=rngs)
        self.positions = Positions((config.data.image_size // patch) ** 2, width, config.model.positions,
                                   rngs=rngs, grid=True)
        self.timestep = TimestepEmbed(width, dtype=dtype, rngs=rngs)
        self.transformer = Transformer(size, dtype=dtype, rngs=rngs, condition_width=width,
                                       remat=config.model.remat, scan=config.model.scan_layers)
        self.final_modulation = Dense((width,), (2, width), ("embed", None, "mlp"), dtype=dtype, rngs=rngs,
                                      zero_init=True)
        self.head = Dense((width,), (patch * patch * 3,), ("embed", None), dtype=dtype, rngs=rngs,
                          zero_init=True)
        self.condition = c.condition
        self.null_label = num_classes
        self.labels = TokenEmbed(num_classes + 1, width, rngs=rngs) if c.condition == "label" else None
        if c.condition == "caption":
            text_size = get_size(c.text_size)
            self.text = TextTower(
                text_size, vocab=get_tokenizer(config.data.tokenizer).vocab_size,
                max_len=caption_length(config.data), positions=config.model.positions, dtype=dtype,
                rngs=rngs, causal=False, remat=config.model.remat, scan=config.model.scan_layers,
            )
            self.text_proj = Dense((text_size.width,), (width,), (None, "embed"), dtype=dtype, rngs=rngs)
            self.null_caption = param(rngs, nnx.initializers.normal(0.02), (width,), ("embed",))
        else:
            self.text = self.text_proj = self.null_caption = None

    def embed_condition(self, condition: dict[str, Array], keep_B: Array) -> Array | None:
        """[B, width] embedding of a batch's labels or captions, the null one where ``keep_B`` is False;
        None for an unconditional model."""
        if self.condition == "label":
            return self.labels(jnp.where(keep_B, condition["label"], self.null_label))
        if self.condition == "caption":
            out_BTD, _ = self.text(condition["caption_tokens"], key_mask_BL=condition["caption_mask"])
            caption_BW = self.text_proj(masked_mean(out_BTD, condition["caption_mask"]))
            return jnp.where(keep_B[:, None], caption_BW, self.null_caption[...])
        return None

    def null_condition(self, batch: int) -> Array | None:
        if self.condition == "label":
            return self.labels(jnp.full((batch,), self.null_label))
        if self.condition == "caption":
            return jnp.broadcast_to(self.null_caption[...], (batch, self.null_caption.shape[0]))
        return None

    def __call__(self, x_t_BHWC: Array, t_B: Array, condition_BW: Array | None) -> tuple[Array, list[Array]]:
        """Network output (epsilon or v) for every pixel, and every block's output."""
        c_BW = self.timestep(t_B)
        if condition_BW is not None:
            c_BW = c_BW + condition_BW
        x_BLD = self.positions(self.embed(x_t_BHWC))
        out_BLD, hidden = self.transformer(x_BLD, condition_BC=c_BW)
        modulation_B2D = self.final_modulation(jax.nn.silu(c_BW))
        out_BLD = modulate(out_BLD, modulation_B2D[:, 0], modulation_B2D[:, 1])
        return unpatchify(self.head(out_BLD), self.patch), hidden


def _dataset_classes(data_config) -> int:
    return make_builder(data_config).info.features[data_config.label].num_classes


def to_uint8(images_BHWC: Array) -> np.ndarray:
    """[-1, 1] floats -> uint8 pixels."""
    return np.asarray(jnp.round((jnp.clip(images_BHWC, -1, 1) + 1) * 127.5)).astype(np.uint8)


# --- objective ---------------------------------------------------------------------------------------


class Diffusion:
    name = "diffusion"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        c = config.diffusion
        self.alpha_bar_T = noise_schedule(c.schedule, c.num_timesteps)
        needs_classes = c.condition == "label" and not c.num_classes
        self.num_classes = _dataset_classes(config.data) if needs_classes else c.num_classes
        self.condition_keys = {"none": (), "label": ("label",),
                               "caption": ("caption_tokens", "caption_mask")}[c.condition]

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
        if not 0 <= c.feature_timestep < c.num_timesteps:
            raise ConfigError(
                f"diffusion.feature_timestep: {c.feature_timestep} must lie in [0, num_timesteps "
                f"({c.num_timesteps})); about a tenth of num_timesteps is a good default"
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
        alpha_bar_B = jnp.asarray(self.alpha_bar_T)[t_B]
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
        """Pooled block outputs for the images noised to ``feature_timestep``, null condition."""
        batch = images_BHWC.shape[0]
        t_B = jnp.full((batch,), self.config.diffusion.feature_timestep)
        _, x_t_BHWC, _ = self.noised(images_BHWC, t_B, jax.random.normal(rng, images_BHWC.shape))
        _, hidden = model(x_t_BHWC, t_B, model.null_condition(batch))
        return pooled_layer_features(hidden)

    def denoising_error(
        self, model: DiffusionModel, images_BHWC: Array, condition: dict[str, Array] | None,
        timesteps_B: Array, noise_BHWC: Array,
    ) -> Array:
        """[B] mean squared epsilon error of the denoiser at the given timesteps and noise.

        ``condition`` holds the batch keys the model conditions on ("label" [B], or "caption_tokens" and
        "caption_mask" [B, T]); None asks for the unconditional (null-condition) prediction. A v-predicting
        model's output is converted to epsilon, so errors compare across parametrisations.
        """
        condition_BW = self._condition_or_null(model, condition, images_BHWC.shape[0])
        return self._epsilon_error(model, images_BHWC, condition_BW, timesteps_B, noise_BHWC)

    def _epsilon_error(self, model, images_BHWC, condition_BW, timesteps_B, noise_BHWC) -> Array:
        _, x_t_BHWC, alpha_bar_B = self.noised(images_BHWC, timesteps_B, noise_BHWC)
        output_BHWC, _ = model(x_t_BHWC, timesteps_B, condition_BW)
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
        errors = lambda condition: self.denoising_error(model, images_NHWC, condition, t_N, noise_NHWC
                                                        ).reshape(B, K)
        outputs = {"denoising_error/none": errors(None)}
        for level, (tokens_BT, mask_BT) in captions.items():
            for name, shift in (("denoising_error", 0), ("mismatched_error", 1)):
                condition = {"caption_tokens": jnp.repeat(jnp.roll(tokens_BT, shift, axis=0), K, axis=0),
                             "caption_mask": jnp.repeat(jnp.roll(mask_BT, shift, axis=0), K, axis=0)}
                outputs[f"{name}/{level}"] = errors(condition)
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
        """[B, C] diffusion-classifier scores (minus mean denoising error; higher is better).

        Every class sees the same timesteps and noise per image. Classes outside the zero_shot_keep best
        after the first zero_shot_trials get -inf; the kept ones are scored on all trials.
        """
        c = self.config.diffusion
        conditions_CW = self._class_conditions(model, class_names)
        B, C = images_BHWC.shape[0], conditions_CW.shape[0]
        first_rng, extra_rng = jax.random.split(rng)
        all_classes_BCW = jnp.broadcast_to(conditions_CW, (B, *conditions_CW.shape))
        first_BC = self._class_errors(model, images_BHWC, all_classes_BCW, c.zero_shot_trials, first_rng)
        _, kept_BK = jax.lax.top_k(-first_BC, min(c.zero_shot_keep, C))
        extra_BK = self._class_errors(model, images_BHWC, conditions_CW[kept_BK], c.zero_shot_extra_trials,
                                      extra_rng)
        first_kept_BK = jnp.take_along_axis(first_BC, kept_BK, axis=1)
        trials = c.zero_shot_trials + c.zero_shot_extra_trials
        error_BK = (first_kept_BK * c.zero_shot_trials + extra_BK * c.zero_shot_extra_trials) / trials
        return jnp.full((B, C), -jnp.inf).at[jnp.arange(B)[:, None], kept_BK].set(-error_BK)

    def _class_conditions(self, model: DiffusionModel, class_names) -> Array:
        """[C, width] condition embeddings: label ids in class order, or the classes' first prompts."""
        count = len(class_names)
        if self.config.diffusion.condition == "label":
            condition = {"label": jnp.arange(count)}
        else:
            prompts = class_prompts(class_names, TEMPLATES[:1])
            tokens_CT, mask_CT = tokenize_prompts(
                get_tokenizer(self.config.data.tokenizer), prompts, caption_length(self.config.data)
            )
            condition = {"caption_tokens": jnp.asarray(tokens_CT), "caption_mask": jnp.asarray(mask_CT)}
        return model.embed_condition(condition, jnp.ones((count,), bool))

    def _class_errors(self, model, images_BHWC, conditions_BKW, trials: int, rng: Array) -> Array:
        """[B, K] epsilon error of each image under each of its K conditions, mean over ``trials``
        stratified timesteps with noise shared by the K conditions."""
        B, K, width = conditions_BKW.shape
        image_shape, num_timesteps = images_BHWC.shape[1:], self.config.diffusion.num_timesteps
        t_rng, noise_rng = jax.random.split(rng)
        strata_BN = (jnp.arange(trials) + jax.random.uniform(t_rng, (B, trials))) / trials
        t_BN = jnp.minimum((strata_BN * num_timesteps).astype(jnp.int32), num_timesteps - 1)
        noise_BNHWC = jax.random.normal(noise_rng, (B, trials, *image_shape))
        shape = (B, K, trials)
        errors_N = self._epsilon_error(
            model,
            jnp.broadcast_to(images_BHWC[:, None, None], (*shape, *image_shape)).reshape(-1, *image_shape),
            jnp.broadcast_to(conditions_BKW[:, :, None], (*shape, width)).reshape(-1, width),
            jnp.broadcast_to(t_BN[:, None], shape).reshape(-1),
            jnp.broadcast_to(noise_BNHWC[:, None], (*shape, *image_shape)).reshape(-1, *image_shape),
        )
        return errors_N.reshape(shape).mean(axis=-1)

    def _condition_or_null(self, model: DiffusionModel, condition, batch: int) -> Array | None:
        if condition is None:
            return model.null_condition(batch)
        return model.embed_condition(condition, jnp.ones((batch,), bool))

    def sample(self, model: DiffusionModel, condition: dict[str, Array] | None, noise_BHWC: Array) -> Array:
        """DDIM samples in [-1, 1] from x_T = ``noise_BHWC``; conditioned on ``condition`` (batch keys,
        see ``denoising_error``) with classifier-free guidance, unconditional when it is None."""
        c = self.config.diffusion
        batch = noise_BHWC.shape[0]
        condition_BW = self._condition_or_null(model, condition, batch)
        guided = condition is not None and condition_BW is not None and c.guidance_scale != 1

        def denoise(x_BHWC: Array, t_B: Array) -> Array:
            if not guided:
                return model(x_BHWC, t_B, condition_BW)[0]
            both_BW = jnp.concatenate([condition_BW, model.null_condition(batch)])
            output_2BHWC, _ = model(jnp.concatenate([x_BHWC, x_BHWC]), jnp.concatenate([t_B, t_B]), both_BW)
            conditional, unconditional = output_2BHWC[:batch], output_2BHWC[batch:]
            return unconditional + c.guidance_scale * (conditional - unconditional)

        timesteps_S = jnp.asarray(ddim_timesteps(c.num_timesteps, c.sample_steps))
        return ddim_sample(denoise, noise_BHWC, jnp.asarray(self.alpha_bar_T), timesteps_S, c.prediction)

    def write_samples(self, model: DiffusionModel, batch, rng: Array, directory) -> None:
        """``directory/samples.png``: a grid of DDIM samples, conditioned on the batch when the model is."""
        condition = {key: jnp.asarray(batch[key]) for key in self.condition_keys} or None
        noise_BHWC = jax.random.normal(rng, batch["image"].shape, jnp.float32)
        samples_BHWC = nnx.jit(self.sample)(model, condition, noise_BHWC)
        image_grid(as_rows(to_uint8(samples_BHWC))).save(Path(directory) / "samples.png")

    def train_flops_per_example(self) -> float:
        c = self.config
        return flops.diffusion_train_flops(
            get_size(c.size), image_size=c.data.image_size, patch=c.model.patch_size,
            frequency_dim=TIMESTEP_FREQUENCIES,
            text=get_size(c.diffusion.text_size) if c.diffusion.condition == "caption" else None,
            text_len=caption_length(c.data),
        )
