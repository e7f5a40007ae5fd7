"""CLIP: contrastive image-text pre-training (Radford et al. 2021), with an optional SigLIP loss.

Image and text towers are the shared backbone. Embeddings are L2-normalised; the loss is over the global
batch (under jit the similarity matrix spans every shard, so sharding never changes the loss). The
logit scale (inverse temperature) is learned, initialised as each loss was published (1/0.07 for the
softmax loss, 10 with a bias of -10 for SigLIP's sigmoid loss) and bounded by ``max_logit_scale``
through its parametrisation, log scale = log max - softplus(4 (log max - u)) / 4 for the stored ``u``
(within 1% of exp(u) up to 0.37 x max): the bound holds without a clamp whose zero gradient would
leave ``u`` stranded past it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from scaling import flops
from scaling.data.captions import caption_length, class_prompts, prompt_templates, tokenize_prompts
from scaling.data.tokenizer import get_tokenizer
from scaling.errors import ConfigError
from scaling.models.chunks import in_chunks
from scaling.models.layers import Dense
from scaling.models.parametrization import Parametrization
from scaling.models.sizes import Size, get_size
from scaling.models.transformer import ImageTower, Stacking, TextTower, pooled_layer_features
from scaling.objectives.base import BaseObjective, CaptionScorer, ZeroShotScorer

Array = jax.Array
LOSSES = ("softmax", "sigmoid")
INIT_LOGIT_SCALE = {"softmax": 1 / 0.07, "sigmoid": 10.0}  # CLIP (Radford et al.), SigLIP (Zhai et al.)
BOUND_SHARPNESS = 4.0  # of the soft upper bound on the log logit scale


def config_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "text_size": "",  # "" -> the image tower's size
            "embed_dim": 0,  # 0 -> the image tower's width
            "loss": "softmax",
            "init_logit_scale": 0.0,  # 0 -> the loss's published init: 1/0.07 softmax, 10 sigmoid
            "max_logit_scale": 100.0,
            "init_logit_bias": -10.0,  # sigmoid loss only
        }
    )


class ClipModel(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        c = config.clip
        image_size, text_size = get_size(config.size), get_size(c.text_size or config.size)
        embed_dim = c.embed_dim or image_size.width
        dtype, mup = jnp.dtype(config.model.dtype), Parametrization.of(config.model)
        projection = mup.readout if c.embed_dim else mup.hidden  # to a fixed or a width-sized embedding
        self.image = ImageTower(
            image_size, image_size=config.data.image_size, patch=config.model.patch_size,
            positions=config.model.positions, dtype=dtype, rngs=rngs, stacking=Stacking.of(config.model),
        )
        self.text = TextTower(
            text_size, vocab=get_tokenizer(config.data.tokenizer).vocab_size,
            max_len=caption_length(config.data), positions=config.model.positions, dtype=dtype,
            rngs=rngs, stacking=Stacking.of(config.model),
        )
        self.image_proj = Dense((image_size.width,), (embed_dim,), ("embed", None), dtype=dtype,
                                rngs=rngs, use_bias=False, scaling=projection(image_size.width))
        self.text_proj = Dense((text_size.width,), (embed_dim,), ("embed", None), dtype=dtype,
                               rngs=rngs, use_bias=False, scaling=projection(text_size.width))
        self.logit_scale_param = nnx.Param(
            jnp.asarray(logit_scale_param(initial_logit_scale(c), c.max_logit_scale), jnp.float32), axes=()
        )
        self.logit_bias = nnx.Param(jnp.asarray(c.init_logit_bias, jnp.float32), axes=())
        self.dtype = dtype

    def embed_images(self, images_BHWC: Array) -> tuple[Array, list[Array]]:
        out_BLD, hidden = self.image(images_BHWC)
        return _l2_normalize(self.image_proj(out_BLD.mean(axis=1))), hidden

    def embed_texts(self, tokens_BT: Array, mask_BT: Array) -> Array:
        out_BTD, _ = self.text(tokens_BT)
        last_B = jnp.maximum(mask_BT.sum(axis=1) - 1, 0)
        pooled_BD = jnp.take_along_axis(out_BTD, last_B[:, None, None], axis=1)[:, 0]
        return _l2_normalize(self.text_proj(pooled_BD))


def initial_logit_scale(clip_config) -> float:
    return clip_config.init_logit_scale or INIT_LOGIT_SCALE[clip_config.loss]


def logit_scale_param(scale: float, max_scale: float) -> float:
    """The stored parameter ``u`` that ``bounded_logit_scale`` maps to ``scale`` (< ``max_scale``)."""
    gap = np.log(max_scale) - np.log(scale)
    return float(np.log(max_scale) - np.log(np.expm1(BOUND_SHARPNESS * gap)) / BOUND_SHARPNESS)


def bounded_logit_scale(param: Array, max_scale: float) -> Array:
    """exp(log max - softplus(k (log max - u)) / k): exp(u) well below the bound, never above it, and
    with a gradient that shrinks smoothly rather than vanishing as ``u`` passes it."""
    log_max = np.log(max_scale)
    return jnp.exp(log_max - jax.nn.softplus(BOUND_SHARPNESS * (log_max - param)) / BOUND_SHARPNESS)


def _l2_normalize(x_BE: Array) -> Array:
    return x_BE * jax.lax.rsqrt(jnp.maximum(jnp.square(x_BE).sum(-1, keepdims=True), 1e-12))


def softmax_contrastive_loss(logits_BB: Array) -> Array:
    """Symmetric cross-entropy with matching pairs on the diagonal."""
    labels_B = jnp.arange(logits_BB.shape[0])
    image_to_text = optax.softmax_cross_entropy_with_integer_labels(logits_BB, labels_B)
    text_to_image = optax.softmax_cross_entropy_with_integer_labels(logits_BB.T, labels_B)
    return 0.5 * (image_to_text.mean() + text_to_image.mean())


def sigmoid_contrastive_loss(logits_BB: Array) -> Array:
    """SigLIP: every pair is a binary problem, positive on the diagonal; summed per image."""
    signs_BB = 2.0 * jnp.eye(logits_BB.shape[0]) - 1.0
    return -jax.nn.log_sigmoid(signs_BB * logits_BB).sum(axis=1).mean()


def train_flops(image: Size, text: Size, *, image_size: int, patch: int, text_len: int, embed_dim: int,
                batch_size: int) -> float:
    """Both towers, both projections, and this example's row of the global similarity matrix."""
    image_tower = flops.image_tower_forward(image, image_size, patch) + flops.dense(1, image.width, embed_dim)
    text_tower = flops.transformer_forward(text, text_len) + flops.dense(1, text.width, embed_dim)
    similarity = flops.dense(1, embed_dim, batch_size)
    return flops.TRAIN_MULTIPLIER * (image_tower + text_tower + similarity)


class Clip(BaseObjective, ZeroShotScorer, CaptionScorer):
    name = "clip"

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        c = config.clip
        if c.loss not in LOSSES:
            raise ConfigError(f"clip.loss: {c.loss!r} not in {LOSSES}")
        if c.text_size:
            get_size(c.text_size)
        if config.grad_accum_steps > 1:
            raise ConfigError(
                f"grad_accum_steps: {config.grad_accum_steps}, but the contrastive loss compares every "
                "image with every caption of the batch and microbatches would shrink that set; use 1 "
                "and fit the step with model.remat or a larger mesh"
            )
        if config.data.caption_level == "none":
            raise ConfigError(
                "data.caption_level: CLIP needs captions; use short, medium or descriptive"
            )
        if not 0 < initial_logit_scale(c) < c.max_logit_scale:
            raise ConfigError(
                f"clip.init_logit_scale: {initial_logit_scale(c)} must lie in (0, clip.max_logit_scale "
                f"= {c.max_logit_scale}); 0 picks the loss's published init"
            )

    def init(self, rngs: nnx.Rngs) -> ClipModel:
        return ClipModel(self.config, rngs=rngs)

    def logit_scale(self, model: ClipModel) -> Array:
        return bounded_logit_scale(model.logit_scale_param[...], self.config.clip.max_logit_scale)

    def logits(self, model: ClipModel, image_BE: Array, text_BE: Array) -> Array:
        return self.logit_scale(model) * jnp.einsum("ie,te->it", image_BE, text_BE)

    def loss(self, model: ClipModel, batch, rng: Array):
        del rng
        image_BE, _ = model.embed_images(batch["image"])
        text_BE = model.embed_texts(batch["caption_tokens"], batch["caption_mask"])
        logits_BB = self.logits(model, image_BE, text_BE)
        if self.config.clip.loss == "sigmoid":
            loss = sigmoid_contrastive_loss(logits_BB + model.logit_bias[...])
        else:
            loss = softmax_contrastive_loss(logits_BB)
        accuracy = (logits_BB.argmax(axis=1) == jnp.arange(logits_BB.shape[0])).mean()
        metrics = {"image_to_text_accuracy": accuracy, "logit_scale": self.logit_scale(model)}
        return loss, metrics

    def features(self, model: ClipModel, images_BHWC: Array, rng: Array) -> dict[str, Array]:
        del rng
        return in_chunks(lambda x_BHWC: pooled_layer_features(model.image(x_BHWC)[1]), images_BHWC)

    def caption_outputs(self, model: ClipModel, images_BHWC: Array, captions, rng: Array) -> dict:
        """``image_embedding`` [B, E] and ``text_embedding/<level>`` [B, E] for each level's captions
        ({level: (tokens [B, T], mask [B, T])}): the embeddings retrieval ranks."""
        del rng
        image_BE, _ = model.embed_images(images_BHWC)
        texts = {f"text_embedding/{level}": model.embed_texts(tokens_BT, mask_BT)
                 for level, (tokens_BT, mask_BT) in captions.items()}
        return {"image_embedding": image_BE, **texts}

    def zero_shot_scores(self, model: ClipModel, images_BHWC: Array, class_names, rng: Array) -> Array:
        """Cosine similarity of each image to each class's template-averaged text embedding."""
        del rng
        prompts = class_prompts(class_names, prompt_templates(self.config.data.name))
        tokens_UT, mask_UT = tokenize_prompts(
            get_tokenizer(self.config.data.tokenizer), prompts, caption_length(self.config.data)
        )
        text_UE = model.embed_texts(jnp.asarray(tokens_UT), jnp.asarray(mask_UT))
        class_KE = _l2_normalize(text_UE.reshape(len(class_names), -1, text_UE.shape[-1]).mean(axis=1))
        return in_chunks(lambda x_BHWC: jnp.einsum("be,ke->bk", model.embed_images(x_BHWC)[0], class_KE),
                         images_BHWC)

    def train_flops_per_example(self) -> float:
        c = self.config
        image = get_size(c.size)
        return train_flops(
            image, get_size(c.clip.text_size or c.size), image_size=c.data.image_size,
            patch=c.model.patch_size, text_len=caption_length(c.data),
            embed_dim=c.clip.embed_dim or image.width, batch_size=c.batch_size,
        )
