"""iGPT: generative pre-training from pixels (Chen et al. 2020).

Images become sequences of palette indices in raster order (a k-means colour palette, see
scaling.data.palette); a causal decoder with a learned start token predicts each index from the ones
before it. The loss is the mean next-token cross-entropy in nats; ``bits_per_token`` is the same loss in
bits per palette-index token (one token per pixel). It is not the published bits/dim, which counts each
8-bit RGB sub-pixel of the unquantised image, and must not be compared with it.

The palette is not a parameter: the trainer differentiates and weight-decays every leaf of the model
state, and a decayed palette would drift. The objective holds it as a constant instead, loaded (or
fitted once) from the data-directory cache by ``prepare`` (which the model state calls before it builds
the model; constructing the objective reads nothing, so its FLOPs and validation cost no data), so it is
reproducible from the run's config alone; ``write_samples`` also stores a copy in ``samples/palette.npy``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from scaling import flops
from scaling.data.palette import dequantize, load_or_fit_palette, quantize
from scaling.errors import ConfigError
from scaling.models.chunks import in_chunks
from scaling.models.layers import Dense
from scaling.models.parametrization import Parametrization
from scaling.models.sizes import get_size
from scaling.models.transformer import Stacking, TextTower, padded_cache, pooled_layer_features
from scaling.objectives.base import BaseObjective, Prepared, SampleWriter
from scaling.samples import image_grid

Array = jax.Array
COMPLETIONS = 2  # sampled bottom halves per test image in completions.png
GREY = 128


def config_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "palette_size": 512,
            "palette_fit_pixels": 200_000,  # training pixels sampled for the k-means fit
            "palette_seed": 0,
        }
    )


class IgptModel(nnx.Module):
    """Token embedding (palette indices plus the start token) + positions + causal transformer + head."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        size, palette_size = get_size(config.size), config.igpt.palette_size
        self.decoder = TextTower(
            size, vocab=palette_size + 1, max_len=config.data.image_size**2 + 1,
            positions=config.model.positions, dtype=jnp.dtype(config.model.dtype), rngs=rngs,
            stacking=Stacking.of(config.model),
        )
        self.head = Dense((size.width,), (palette_size,), ("embed", "vocab"),
                          dtype=jnp.dtype(config.model.dtype), rngs=rngs,
                          scaling=Parametrization.of(config.model).readout(size.width))

    def __call__(self, tokens_BL: Array) -> tuple[Array, list[Array]]:
        """Logits [B, L, V] for the token after each position, and every block's output."""
        out_BLD, hidden = self.decoder(tokens_BL)
        return self.head(out_BLD), hidden


def prepend_start(indices_BL: Array, start_token: int) -> Array:
    start_B1 = jnp.full((indices_BL.shape[0], 1), start_token, indices_BL.dtype)
    return jnp.concatenate([start_B1, indices_BL], axis=1)


class Igpt(BaseObjective, Prepared, SampleWriter):
    name = "igpt"

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.start_token = config.igpt.palette_size
        self.palette_V3: np.ndarray | None = None  # float32 [V, 3], V = igpt.palette_size; see prepare

    def prepare(self) -> None:
        """Loads the palette, fitting and caching it first if no run has yet (reads training pixels)."""
        if self.palette_V3 is None:
            c = self.config.igpt
            self.palette_V3 = load_or_fit_palette(
                self.config.data, c.palette_size, fit_pixels=c.palette_fit_pixels, seed=c.palette_seed
            )

    @staticmethod
    def validate(config: ml_collections.ConfigDict) -> None:
        c = config.igpt
        if c.palette_size < 2:
            raise ConfigError(f"igpt.palette_size: need at least 2 colours, got {c.palette_size}")
        if c.palette_fit_pixels < c.palette_size:
            raise ConfigError(
                f"igpt.palette_fit_pixels: {c.palette_fit_pixels} pixels cannot fit "
                f"{c.palette_size} colours; sample at least igpt.palette_size pixels"
            )

    def init(self, rngs: nnx.Rngs) -> IgptModel:
        return IgptModel(self.config, rngs=rngs)

    def tokenize(self, images_BHWC: Array) -> Array:
        """uint8 images -> palette indices in raster order, int32 [B, H*W]."""
        if self.palette_V3 is None:
            raise RuntimeError("the iGPT palette is not loaded; call prepare() first (the model state does)")
        indices_BHW = quantize(images_BHWC, self.palette_V3)
        return indices_BHW.reshape(indices_BHW.shape[0], -1)

    def predict(self, model: IgptModel, indices_BL: Array) -> Array:
        """Logits [B, L, V] for each index given the start token and the indices before it."""
        logits_BLV, _ = model(prepend_start(indices_BL, self.start_token)[:, :-1])
        return logits_BLV

    def loss(self, model: IgptModel, batch, rng: Array):
        del rng
        indices_BL = self.tokenize(batch["image"])
        logits_BLV = self.predict(model, indices_BL)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, indices_BL).mean()
        accuracy = (logits_BLV.argmax(axis=-1) == indices_BL).mean()
        return loss, {"bits_per_token": loss / np.log(2.0), "accuracy": accuracy}

    def features(self, model: IgptModel, images_BHWC: Array, rng: Array) -> dict[str, Array]:
        """Every layer's activations over the positions training reads, LayerNorm-ed without scale and
        average-pooled: the training input sequence (start token, then every pixel but the last), less
        the start token, whose activations are the same for every image. The last pixel is never an
        input in training, so its position's activations receive no training signal."""
        del rng

        def pooled(x_BHWC):
            _, hidden = model(prepend_start(self.tokenize(x_BHWC), self.start_token)[:, :-1])
            return pooled_layer_features([h_BLD[:, 1:] for h_BLD in hidden])

        return in_chunks(pooled, images_BHWC)

    def complete(self, model: IgptModel, indices_BL: Array, rng: Array, *, given: int,
                 num_samples: int) -> Array:
        """[B, R, L]: R samples (temperature 1) of every index after the first ``given`` of each sequence.

        One jitted loop over positions: the given indices pass through the decoder once into a key-value
        cache (``TextTower.prefix``), and each drawn index then passes alone (``TextTower.decode``).
        """
        graphdef, state = nnx.split(model)

        def sample(state, indices_BL, rng):
            model = nnx.merge(graphdef, state)
            draw = lambda position, logits_NV: jax.random.categorical(
                jax.random.fold_in(rng, position), logits_NV).astype(indices_BL.dtype)

            def step(position, carry):
                tokens_NL, past, logits_NV = carry
                drawn_N = draw(position, logits_NV)
                out_N1D, past = model.decoder.decode(drawn_N[:, None], past, position + 1)
                return tokens_NL.at[:, position].set(drawn_N), past, model.head(out_N1D[:, 0])

            tokens_NL = jnp.repeat(indices_BL, num_samples, axis=0)
            length = tokens_NL.shape[1]
            out_NGD, past = model.decoder.prefix(prepend_start(tokens_NL[:, :given], self.start_token))
            carry = (tokens_NL, padded_cache(past, length), model.head(out_NGD[:, -1]))
            tokens_NL, _, logits_NV = jax.lax.fori_loop(given, length - 1, step, carry)
            return tokens_NL.at[:, length - 1].set(draw(length - 1, logits_NV))

        tokens_NL = jax.jit(sample)(state, indices_BL, rng)
        return tokens_NL.reshape(indices_BL.shape[0], num_samples, -1)

    def write_samples(self, model: IgptModel, batch, rng: Array, directory: Path) -> None:
        """completions.png (rows: examples; columns: original, quantized top half with the bottom grey,
        then sampled completions) and the run's palette.npy."""
        images_BHWC = np.asarray(batch["image"])
        B, H, W, _ = images_BHWC.shape
        indices_BL = self.tokenize(images_BHWC)
        samples_BRL = self.complete(model, indices_BL, rng, given=(H // 2) * W, num_samples=COMPLETIONS)
        top_BHWC = np.array(dequantize(indices_BL.reshape(B, H, W), self.palette_V3))
        top_BHWC[:, H // 2:] = GREY
        completions_BRHWC = np.asarray(dequantize(samples_BRL.reshape(B, COMPLETIONS, H, W), self.palette_V3))
        columns = np.concatenate([images_BHWC[:, None], top_BHWC[:, None], completions_BRHWC], axis=1)
        image_grid(columns).save(Path(directory) / "completions.png")
        np.save(Path(directory) / "palette.npy", self.palette_V3)

    def train_flops_per_example(self) -> float:
        """Causal decoder over the full raster sequence of image_size**2 palette tokens (start token plus
        all but the last pixel) and the palette head; the embedding gather and the palette lookup (a few
        elementwise operations per pixel and colour) are left out."""
        c, size = self.config, get_size(self.config.size)
        length = c.data.image_size * c.data.image_size
        return flops.TRAIN_MULTIPLIER * (
            flops.transformer_forward(size, length) + flops.dense(length, size.width, c.igpt.palette_size))

