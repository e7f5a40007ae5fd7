"""The shared backbone: a pre-LN transformer stack and the image and text towers built from it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.models.layers import Block, KeysValues, LayerNorm, PatchEmbed, Positions, TokenEmbed
from scaling.models.parametrization import STANDARD, Parametrization
from scaling.models.sizes import Size
from scaling.sharding import constrain

Array = jax.Array
Cache = list[KeysValues] | KeysValues  # per block, or stacked on a leading layers axis when scanned


def normalize_images(images_BHWC: Array) -> Array:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1]."""
    return images_BHWC.astype(jnp.float32) / 127.5 - 1.0


def causal_mask(length: int) -> Array:
    return jnp.tril(jnp.ones((length, length), bool))


def masked_mean(x_BLD: Array, mask_BL: Array | None) -> Array:
    """Mean over positions, counting only positions where ``mask_BL`` is set."""
    if mask_BL is None:
        return x_BLD.mean(axis=1)
    weights_BL = mask_BL.astype(x_BLD.dtype)
    return (x_BLD * weights_BL[..., None]).sum(1) / jnp.maximum(weights_BL.sum(1), 1.0)[:, None]


REMAT_POLICIES = {
    "full": None,  # save only each block's input; recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # save matmul outputs
}


@dataclasses.dataclass(frozen=True)
class Stacking:
    """How a stack's blocks are built and compiled: their ``parametrization`` (initialisation, attention
    scale, learning-rate factors); the backward-pass ``remat`` policy; ``scan``: one block compiled and
    looped over parameters stacked on a ``layers`` axis; ``residual_dtype``: the dtype of the residual
    stream between blocks (each block adds its branches in float32 and rounds once; norms run in float32
    either way). A bfloat16 stream halves the bytes every block reads, writes and keeps for the backward
    pass."""

    remat: str = "none"
    scan: bool = False
    parametrization: Parametrization = STANDARD
    residual_dtype: str = "float32"

    @classmethod
    def of(cls, model_config) -> Stacking:
        """The stacking that a config's ``model`` section asks for."""
        return cls(model_config.remat, model_config.scan_layers, Parametrization.of(model_config),
                   model_config.residual_dtype)


def rematerialized(block_call, policy: str):
    """``block_call`` under the named remat policy ("none" returns it unchanged)."""
    if policy == "none":
        return block_call
    return nnx.remat(block_call, policy=REMAT_POLICIES[policy])


def stacked_blocks(depth: int, make_block, rngs: nnx.Rngs) -> nnx.Module:
    """``depth`` blocks as one module whose parameters have a leading ``layers`` axis (for scanning)."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs: nnx.Rngs) -> nnx.Module:
        return make_block(rngs)

    blocks = make(rngs)
    for _, variable in nnx.iter_graph(blocks):
        if isinstance(variable, nnx.Variable):
            variable.set_metadata(axes=("layers", *variable.get_metadata()["axes"]))
    return blocks


class Transformer(nnx.Module):
    """A stack of pre-LN blocks with a final LayerNorm; returns the output and every block's output.

    With ``condition_width`` > 0 every block is adaLN-Zero conditioned on ``condition_BE`` and the final
    LayerNorm has no learned scale (the caller modulates it). With ``stacking.scan`` the blocks'
    parameters are stacked along a ``layers`` axis and one block is compiled and looped over (compile time
    and program size stop growing with depth); the outputs are the same.
    """

    def __init__(
        self,
        size: Size,
        *,
        dtype,
        rngs: nnx.Rngs,
        cross_attention_width: int = 0,
        condition_width: int = 0,
        stacking: Stacking = Stacking(),
    ):
        make_block = lambda block_rngs: Block(
            size.width, size.heads, size.mlp, dtype=dtype, rngs=block_rngs,
            cross_attention_width=cross_attention_width, condition_width=condition_width,
            parametrization=stacking.parametrization,
        )
        if stacking.scan:
            self.blocks = stacked_blocks(size.depth, make_block, rngs)
        else:
            self.blocks = nnx.List([make_block(rngs) for _ in range(size.depth)])
        self.final_norm = LayerNorm(size.width, use_scale=not condition_width)
        self.stacking = stacking

    def stream(self, x_BLD: Array) -> Array:
        """``x`` as the first blocks' input: in the residual stream's dtype, sharded as it."""
        return constrain(x_BLD.astype(self.stacking.residual_dtype), ("batch", "length", "embed"))

    def __call__(
        self,
        x_BLD: Array,
        mask_BLL: Array | None = None,
        context_BMD: Array | None = None,
        condition_BE: Array | None = None,
        past: Cache | None = None,
    ) -> tuple[Array, list[Array]]:
        """``past`` (``keys_values`` of earlier positions) makes this a continuation of them."""
        x_BLD = self.stream(x_BLD)
        apply = rematerialized(Block.__call__, self.stacking.remat)
        if self.stacking.scan:

            @nnx.scan(in_axes=(nnx.Carry, 0, None, None, None, 0), out_axes=(nnx.Carry, 0))
            def body(x_BLD, block, mask_BLL, context_BMD, condition_BE, past):
                x_BLD = apply(block, x_BLD, mask_BLL, context_BMD, condition_BE, past)
                return x_BLD, x_BLD

            x_BLD, hidden_YBLD = body(x_BLD, self.blocks, mask_BLL, context_BMD, condition_BE, past)
            hidden = list(hidden_YBLD)
        else:
            hidden = []
            for index, block in enumerate(self.blocks):
                x_BLD = apply(block, x_BLD, mask_BLL, context_BMD, condition_BE,
                              None if past is None else past[index])
                hidden.append(x_BLD)
        return self.final_norm(x_BLD), hidden

    def keys_values(self, x_BLD: Array, hidden: list[Array], condition_BE: Array | None = None) -> Cache:
        """The self-attention keys and values of every block in a pass whose input was ``x`` and whose
        block outputs were ``hidden``: the cache a continuation (``past``) attends to."""
        inputs = [self.stream(x_BLD), *hidden[:-1]]
        if self.stacking.scan:
            per_block = nnx.vmap(lambda block, x_BLD: block.keys_values(x_BLD, condition_BE),
                                 in_axes=(0, 0), out_axes=0)
            return per_block(self.blocks, jnp.stack(inputs))
        return [block.keys_values(x, condition_BE) for block, x in zip(self.blocks, inputs, strict=True)]


class ImageTower(nnx.Module):
    """Patch embedding + positions + transformer over an image's patch grid."""

    def __init__(
        self, size: Size, *, image_size: int, patch: int, positions: str, dtype, rngs: nnx.Rngs,
        stacking: Stacking = Stacking(),
    ):
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch}")
        self.num_patches = (image_size // patch) ** 2
        self.embed = PatchEmbed(patch, 3, size.width, dtype=dtype, rngs=rngs,
                                out_dtype=stacking.residual_dtype)
        self.positions = Positions(self.num_patches, size.width, positions, rngs=rngs, grid=True)
        self.transformer = Transformer(size, dtype=dtype, rngs=rngs, stacking=stacking)

    def __call__(self, images_BHWC: Array) -> tuple[Array, list[Array]]:
        x_BLD = self.positions(self.embed(normalize_images(images_BHWC)))
        return self.transformer(x_BLD)


class TextTower(nnx.Module):
    """Token embedding + positions + transformer; causal by default, optional cross-attention."""

    def __init__(
        self, size: Size, *, vocab: int, max_len: int, positions: str, dtype, rngs: nnx.Rngs,
        causal: bool = True, cross_attention_width: int = 0, stacking: Stacking = Stacking(),
    ):
        self.embed = TokenEmbed(vocab, size.width, rngs=rngs)
        self.positions = Positions(max_len, size.width, positions, rngs=rngs)
        self.transformer = Transformer(
            size, dtype=dtype, rngs=rngs, cross_attention_width=cross_attention_width, stacking=stacking,
        )
        self.causal = causal

    def __call__(
        self, tokens_BL: Array, context_BMD: Array | None = None, bidirectional_B: Array | None = None,
        key_mask_BL: Array | None = None,
    ) -> tuple[Array, list[Array]]:
        """``bidirectional_B`` (bool [B]) lifts a causal tower's mask on the rows where it is set;
        ``key_mask_BL`` (nonzero on real tokens) keeps every position from attending to padding. A
        context of fewer rows than tokens is shared (``scaling.models.layers.shared_rows``)."""
        x_BLD = self.positions(self.embed(tokens_BL))
        mask_BLL = causal_mask(tokens_BL.shape[1])[None] if self.causal else None
        if mask_BLL is not None and bidirectional_B is not None:
            mask_BLL = mask_BLL | bidirectional_B[:, None, None]
        if key_mask_BL is not None:
            keys_B1L = key_mask_BL.astype(bool)[:, None, :]
            mask_BLL = keys_B1L if mask_BLL is None else mask_BLL & keys_B1L
        return self.transformer(x_BLD, mask_BLL, context_BMD)

    def prefix(self, tokens_GP: Array, context_GMD: Array | None = None) -> tuple[Array, Cache]:
        """A causal pass over a prefix: its output [G, P, D] and the cache ``continue_prefix`` reads."""
        x_GPD = self.positions(self.embed(tokens_GP))
        out_GPD, hidden = self.transformer(x_GPD, causal_mask(tokens_GP.shape[1])[None], context_GMD)
        return out_GPD, self.transformer.keys_values(x_GPD, hidden)

    def continue_prefix(self, tokens_BL: Array, past: Cache, context_GMD: Array | None = None) -> Array:
        """Output [B, L, D] of a causal pass over a prefix (cached for G rows, each shared by B / G
        consecutive rows, as the context) followed by ``tokens``: the prefix computed once for all."""
        length, prefix_length = tokens_BL.shape[1], cache_length(past)
        x_BLD = self.positions(self.embed(tokens_BL), offset=prefix_length)
        mask_BLM = jnp.concatenate([jnp.ones((length, prefix_length), bool), causal_mask(length)], axis=1)
        return self.transformer(x_BLD, mask_BLM[None], context_GMD, past=past)[0]

    def decode(self, tokens_B1: Array, past: Cache, position: Array,
               context_GMD: Array | None = None) -> tuple[Array, Cache]:
        """One token at ``position`` (traced) after the first ``position`` entries of a fixed-size cache
        (``padded_cache``): its output [B, 1, D], and the cache with its keys and values written there. A
        loop over positions then costs one token's pass per step, not the whole sequence's."""
        x_B1D = self.positions(self.embed(tokens_B1), offset=position)
        filled_M = jnp.arange(cache_length(past)) < position
        mask_11M = jnp.concatenate([filled_M, jnp.ones((1,), bool)])[None, None]
        out_B1D, hidden = self.transformer(x_B1D, mask_11M, context_GMD, past=past)
        written = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype),
                                                                         position, axis=-3)
        return out_B1D, jax.tree.map(written, past, self.transformer.keys_values(x_B1D, hidden))


def cache_length(past: Cache) -> int:
    """Positions held in a cache of ``Transformer.keys_values`` (a list per block, or stacked)."""
    keys = past[0][0] if isinstance(past, list) else past[0]
    return keys.shape[-3]


def padded_cache(past: Cache, length: int) -> Cache:
    """``past`` with room for ``length`` positions (zeros after its own), for ``TextTower.decode``."""
    pad = lambda cache: jnp.pad(cache, [(0, 0)] * (cache.ndim - 3) + [(0, length - cache.shape[-3]), (0, 0),
                                                                       (0, 0)])
    return jax.tree.map(pad, past)


def pooled_layer_features(hidden: list[Array], mask_BL: Array | None = None) -> dict[str, Array]:
    """{"layer_01": [B, D], ...}: every block's output, LayerNorm-ed (no scale) and mean-pooled."""
    norm = LayerNorm(hidden[0].shape[-1], use_scale=False)
    return {
        f"layer_{i + 1:02d}": masked_mean(norm(h_BLD), mask_BL) for i, h_BLD in enumerate(hidden)
    }
