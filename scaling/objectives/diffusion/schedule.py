"""Diffusion math: the noise schedule, noising, the epsilon and v parametrisations, DDIM sampling, and the
loss per range of timesteps.

Images live in [-1, 1]; x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps over discrete timesteps
t in [0, num_timesteps) with a cosine (Nichol & Dhariwal 2021) or linear (Ho et al. 2020) schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PREDICTIONS = ("epsilon", "v")
SCHEDULES = ("cosine", "linear")
COSINE_OFFSET = 0.008
MAX_BETA = 0.999


def noise_schedule(kind: str, num_timesteps: int) -> np.ndarray:
    """alpha_bar[t] for t = 0 .. num_timesteps - 1 (float32 [Z]), from near 1 down to near 0."""
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
    denoise: Callable[[Array, Array], Array], noise_BHWC: Array, alpha_bar_Z: Array, timesteps_S: Array,
    prediction: str,
) -> Array:
    """Deterministic DDIM (eta = 0) from x_T = noise; x_0 is clipped to [-1, 1] at every step (and
    epsilon re-derived from it), so the result lies in [-1, 1]. ``denoise(x_t, t_B)`` is the network."""
    alpha_bar_S = alpha_bar_Z[timesteps_S]
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
