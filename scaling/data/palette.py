"""Colour palettes for pixel-token objectives: k-means fitting, the on-disk cache, quantize and dequantize.

A palette is a float32 [V, 3] array of RGB centroids in [0, 255]. ``load_or_fit_palette`` fits one by
k-means (k-means++ initialisation, then Lloyd iterations) on a random sample of training pixels and
caches it as .npy under the data directory, keyed by every input of the fit (data set, split, image
size, palette size, number of pixels, seed), so each palette is fitted once and every run that names the same
inputs reads the same array.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from scaling.data.pipeline import make_eval_iterator, resolve_data_dir
from scaling.workdir import write_atomic

Array = jax.Array
LLOYD_ITERATIONS = 10
CHUNK_PIXELS = 16384  # pixels per distance computation while fitting
READ_BATCH = 256
IMAGE_OVERSAMPLING = 2  # read this many times more images than needed, then sample pixels from them


def quantize(images_BHWC_uint8: Array, palette_V3: Array) -> Array:
    """Index of the nearest palette colour for every pixel: [..., 3] -> int32 [...]; jit-able.

    Squared distances are summed channel by channel per pixel (no matmul), so they are exact for the
    integer pixels and the result never depends on how a batch is split across devices.
    """
    pixels = jnp.asarray(images_BHWC_uint8).astype(jnp.float32)
    palette_V3 = jnp.asarray(palette_V3, jnp.float32)
    distances_V = sum(jnp.square(pixels[..., c, None] - palette_V3[:, c]) for c in range(3))
    return jnp.argmin(distances_V, axis=-1).astype(jnp.int32)


def dequantize(indices: Array, palette_V3: Array) -> Array:
    """Palette indices [...] -> uint8 RGB [..., 3]."""
    colours_V3 = jnp.clip(jnp.round(jnp.asarray(palette_V3)), 0, 255).astype(jnp.uint8)
    return colours_V3[jnp.asarray(indices)]


@jax.jit
def _assign_chunks(pixels_GN3: Array, palette_V3: Array) -> Array:
    return jax.lax.map(lambda chunk_N3: quantize(chunk_N3, palette_V3), pixels_GN3)


def assign(pixels_N3: np.ndarray, palette_V3: np.ndarray) -> np.ndarray:
    """Nearest palette index per pixel, computed chunk by chunk so memory stays bounded."""
    n = len(pixels_N3)
    chunks = math.ceil(n / CHUNK_PIXELS)
    padded = np.zeros((chunks * CHUNK_PIXELS, 3), np.float32)
    padded[:n] = pixels_N3
    indices = _assign_chunks(padded.reshape(chunks, CHUNK_PIXELS, 3), palette_V3.astype(np.float32))
    return np.asarray(indices).reshape(-1)[:n]


def kmeans_plus_plus(pixels_N3: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each new centre is drawn with probability proportional to squared distance."""
    channels = [np.ascontiguousarray(pixels_N3[:, c], np.float32) for c in range(3)]
    squared_distance = lambda centre_3: sum(np.square(x_N - centre_3[c]) for c, x_N in enumerate(channels))
    centres = [pixels_N3[rng.integers(len(pixels_N3))]]
    distances_N = squared_distance(centres[0])
    for _ in range(1, k):
        cumulative_N = np.cumsum(distances_N, dtype=np.float64)
        if cumulative_N[-1] > 0:
            chosen = int(np.searchsorted(cumulative_N, rng.random() * cumulative_N[-1], side="right"))
        else:  # fewer distinct colours than k: repeat one
            chosen = int(rng.integers(len(pixels_N3)))
        centres.append(pixels_N3[min(chosen, len(pixels_N3) - 1)])
        np.minimum(distances_N, squared_distance(centres[-1]), out=distances_N)
    return np.stack(centres).astype(np.float64)


def fit_palette(pixels_N3: np.ndarray, k: int, *, seed: int,
                iterations: int = LLOYD_ITERATIONS) -> np.ndarray:
    """k-means over RGB pixels: float32 [k, 3]; deterministic given the pixels and the seed.

    Lloyd iterations stop early once no pixel changes cluster; an empty cluster keeps its centre.
    """
    pixels_N3 = np.asarray(pixels_N3, np.float64)
    if len(pixels_N3) < k:
        raise ValueError(f"cannot fit {k} colours to {len(pixels_N3)} pixels; sample more pixels")
    palette_V3 = kmeans_plus_plus(pixels_N3, k, np.random.default_rng(seed))
    previous_N = None
    for _ in range(iterations):
        assignment_N = assign(pixels_N3, palette_V3)
        if previous_N is not None and np.array_equal(assignment_N, previous_N):
            break
        counts_V = np.bincount(assignment_N, minlength=k)
        sums_V3 = np.stack(
            [np.bincount(assignment_N, weights=pixels_N3[:, c], minlength=k) for c in range(3)], 1
        )
        palette_V3 = np.where(counts_V[:, None] > 0, sums_V3 / np.maximum(counts_V, 1)[:, None], palette_V3)
        previous_N = assignment_N
    return palette_V3.astype(np.float32)


def sample_pixels(data_config, num_pixels: int, seed: int) -> np.ndarray:
    """A uniform random sample of ``num_pixels`` uint8 RGB pixels [N, 3] from the training split."""
    per_image = data_config.image_size**2
    max_examples = IMAGE_OVERSAMPLING * math.ceil(num_pixels / per_image)
    batches = make_eval_iterator(
        data_config, data_config.train_split, batch_size=READ_BATCH, max_examples=max_examples
    )
    pixels_N3 = np.concatenate([batch["image"].reshape(-1, 3) for batch in batches])
    chosen = np.random.default_rng(seed).choice(len(pixels_N3), min(num_pixels, len(pixels_N3)),
                                                replace=False)
    return pixels_N3[np.sort(chosen)]


def palette_path(data_config, k: int, *, fit_pixels: int, seed: int) -> Path:
    """Where the palette fitted with these inputs is cached."""
    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    name = (f"{safe(data_config.name)}-{safe(data_config.train_split)}-{data_config.image_size}px"
            f"-k{k}-n{fit_pixels}-seed{seed}.npy")
    return resolve_data_dir(data_config) / "palettes" / name


def save_palette(path: Path, palette_V3: np.ndarray) -> None:
    """Writes the .npy atomically, so a reader never sees a partial file."""
    buffer = io.BytesIO()
    np.save(buffer, palette_V3)
    write_atomic(path, buffer.getvalue())


def load_or_fit_palette(data_config, k: int, *, fit_pixels: int, seed: int) -> np.ndarray:
    """The cached palette for these inputs, fitting and caching it first if there is none."""
    path = palette_path(data_config, k, fit_pixels=fit_pixels, seed=seed)
    if path.exists():
        return np.load(path)
    palette_V3 = fit_palette(sample_pixels(data_config, fit_pixels, seed), k, seed=seed)
    save_palette(path, palette_V3)
    return palette_V3
