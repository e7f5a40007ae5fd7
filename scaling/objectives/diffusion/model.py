"""The DiT denoiser (Peebles & Xie 2023): the shared backbone over noisy image patches, every block
adaLN-Zero conditioned on a timestep embedding (sinusoids -> MLP) plus an optional condition embedding: a
class-label table with a null row, or a caption embedding (a small bidirectional TextTower over the real
tokens, mean-pooled and projected) with a learned null vector. A final adaLN-modulated LayerNorm and a
zero-initialised un-patchify head predict epsilon or v for every pixel, so the model outputs zeros at init.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from scaling.data.captions import caption_length
from scaling.data.tokenizer import get_tokenizer
from scaling.models.layers import Dense, PatchEmbed, Positions, TokenEmbed, modulate, param
from scaling.models.parametrization import STANDARD, Parametrization
from scaling.models.sizes import get_size
from scaling.models.transformer import Stacking, TextTower, Transformer, masked_mean

Array = jax.Array
TIMESTEP_FREQUENCIES = 256


def timestep_sinusoids(t_B: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """[B, dim] cosines then sines of the timestep at geometrically spaced frequencies."""
    half = dim // 2
    frequencies = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t_B.astype(jnp.float32)[:, None] * frequencies[None]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimestepEmbed(nnx.Module):
    """Sinusoids of t -> Dense -> SiLU -> Dense."""

    def __init__(self, width: int, *, dtype, rngs: nnx.Rngs, parametrization: Parametrization = STANDARD):
        self.up = Dense((TIMESTEP_FREQUENCIES,), (width,), (None, "mlp"), dtype=dtype, rngs=rngs)
        self.down = Dense((width,), (width,), ("mlp", "embed"), dtype=dtype, rngs=rngs,
                          scaling=parametrization.hidden(width))

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
        dtype, mup = jnp.dtype(config.model.dtype), Parametrization.of(config.model)
        self.patch = patch
        self.embed = PatchEmbed(patch, 3, width, dtype=dtype, rngs=rngs)
        self.positions = Positions((config.data.image_size // patch) ** 2, width, config.model.positions,
                                   rngs=rngs, grid=True)
        self.timestep = TimestepEmbed(width, dtype=dtype, rngs=rngs, parametrization=mup)
        self.transformer = Transformer(size, dtype=dtype, rngs=rngs, condition_width=width,
                                       stacking=Stacking.of(config.model))
        self.final_modulation = Dense((width,), (2, width), ("embed", None, "modulation"), dtype=dtype,
                                      rngs=rngs, zero_init=True, scaling=mup.hidden(width))
        self.head = Dense((width,), (patch * patch * 3,), ("embed", None), dtype=dtype, rngs=rngs,
                          zero_init=True, scaling=mup.readout(width))
        self.condition = c.condition
        self.null_label = num_classes
        self.labels = TokenEmbed(num_classes + 1, width, rngs=rngs) if c.condition == "label" else None
        if c.condition == "caption":
            text_size = get_size(c.text_size)
            self.text = TextTower(
                text_size, vocab=get_tokenizer(config.data.tokenizer).vocab_size,
                max_len=caption_length(config.data), positions=config.model.positions, dtype=dtype,
                rngs=rngs, causal=False, stacking=Stacking.of(config.model),
            )
            self.text_proj = Dense((text_size.width,), (width,), (None, "embed"), dtype=dtype, rngs=rngs,
                                   scaling=mup.hidden(text_size.width))
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
            caption_BE = self.text_proj(masked_mean(out_BTD, condition["caption_mask"]))
            return jnp.where(keep_B[:, None], caption_BE, self.null_caption[...])
        return None

    def null_condition(self, batch: int) -> Array | None:
        if self.condition == "label":
            return self.labels(jnp.full((batch,), self.null_label))
        if self.condition == "caption":
            return jnp.broadcast_to(self.null_caption[...], (batch, self.null_caption.shape[0]))
        return None

    def __call__(self, x_t_BHWC: Array, t_B: Array, condition_BE: Array | None) -> tuple[Array, list[Array]]:
        """Network output (epsilon or v) for every pixel, and every block's output."""
        c_BE = self.timestep(t_B)
        if condition_BE is not None:
            c_BE = c_BE + condition_BE
        x_BLD = self.positions(self.embed(x_t_BHWC))
        out_BLD, hidden = self.transformer(x_BLD, condition_BE=c_BE)
        modulation_B2D = self.final_modulation(jax.nn.silu(c_BE))
        out_BLD = modulate(out_BLD, modulation_B2D[:, 0], modulation_B2D[:, 1])
        return unpatchify(self.head(out_BLD), self.patch), hidden
