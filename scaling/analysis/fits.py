"""Scaling-law fits with bootstrap intervals.

Two laws of error E against training compute C: the power law ``E = a C^-b`` and the saturating law
``E = E_inf + a C^-b``. Both are fit in log space (log E against log C) with a Huber loss, minimised by
L-BFGS (optax, backtracking line search) on a jitted JAX objective from a grid of starts, vmapped over
starts and bootstrap replicates at once. A bootstrap replicate resamples the points (and the seeds as
clusters, where every seed spans the frontier), redraws each point's error from its own test-set noise,
recomputes the frontier when the fit is of a frontier, and refits; percentile intervals of the replicates
bound every parameter and every prediction. Every fit draws from its own stream (``stream_rng``: the
user's seed and a stable hash of the series' name), so the replicates of two objectives are independent
and a multiplier's interval is not narrowed by shared resampling.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from scaling.analysis.points import frontier_mask
from scaling.errors import ConfigError

HUBER_DELTA = 0.1  # in log error: residuals beyond ~10% count linearly
ITERATIONS = 50  # L-BFGS steps at most; 2 or 3 parameters converge in 10 to 40
GRADIENT_TOLERANCE = 1e-4  # on the summed Huber loss: parameters then sit within ~1e-5 of the optimum
ROWS = 256  # bootstrap rows solved per call: one compiled shape serves every call of a law
BOOTS = 400
LEVEL = 0.9
FLAT_EXPONENT = 0.01  # b below this: 1000x the compute lowers the error by under 7%, a flat frontier
SEED_SPAN = 2.0  # a seed spans the frontier when it has points within this factor of both its ends

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Law:
    """A law in centred log space: ``log E = predict(theta, x)`` with ``x = log(C / C_ref)``."""

    name: str
    formula: str
    predict: Callable[[Array, Array], Array]  # theta [..., P], x [N] -> log E [..., N] (jax-traceable)
    inverse: Callable[[Array, Array], Array]  # theta [..., P], log E [...] -> x [...] (inf: never reached)
    starts: Callable[[Array, Array], Array]  # x [N], y [N] -> theta [S, P]
    public: Callable[[Array, float], dict[str, Array]]  # theta [..., P], log C_ref -> {"a", "b", ...}

    @property
    def num_params(self) -> int:
        return self.starts(np.zeros(3), np.zeros(3)).shape[-1]

    def log_error(self, theta: Array, x: Array) -> Array:
        """``predict`` evaluated eagerly, as a float64 numpy array."""
        return np.asarray(self.predict(theta, x), float)


def _power_predict(theta, x):
    return theta[..., :1] - theta[..., 1:2] * x


def _power_inverse(theta, log_error):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (theta[..., 0] - log_error) / theta[..., 1]


def _power_starts(x, y):
    return np.array([[y.mean(), b] for b in (0.05, 0.3, 1.0)])


def _power_public(theta, log_c_ref):
    with np.errstate(over="ignore"):
        return {"a": np.exp(theta[..., 0] + theta[..., 1] * log_c_ref), "b": theta[..., 1]}


def _saturating_predict(theta, x):
    return jnp.logaddexp(theta[..., :1], theta[..., 1:2] - theta[..., 2:3] * x)


def _saturating_inverse(theta, log_error):
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(log_error > theta[..., 0], np.log(np.exp(log_error) - np.exp(theta[..., 0])), -np.inf)
        return np.where(np.isfinite(gap), (theta[..., 1] - gap) / theta[..., 2], np.inf)


def _saturating_starts(x, y):
    lowest = y.min()
    return np.array([[lowest + np.log(q), np.log(np.exp(y.mean()) * (1 - q) + 1e-12), b]
                     for q in (0.2, 0.8) for b in (0.15, 0.6)])


def _saturating_public(theta, log_c_ref):
    with np.errstate(over="ignore"):
        return {"E_inf": np.exp(theta[..., 0]), "a": np.exp(theta[..., 1] + theta[..., 2] * log_c_ref),
                "b": theta[..., 2]}


POWER = Law("power", "E = a C^-b", _power_predict, _power_inverse, _power_starts, _power_public)
SATURATING = Law("saturating", "E = E_inf + a C^-b", _saturating_predict, _saturating_inverse,
                 _saturating_starts, _saturating_public)
LAWS = {law.name: law for law in (POWER, SATURATING)}


def _lbfgs(law: Law, theta_P: jax.Array, x_N: jax.Array, y_N: jax.Array, w_N: jax.Array, delta: float):
    """One Huber fit from one start: (theta [P], loss)."""

    def loss(theta):
        return jnp.sum(w_N * optax.losses.huber_loss(law.predict(theta, x_N), y_N, delta=delta))

    solver = optax.lbfgs(memory_size=5, linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=10, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        theta, state = carry
        value, grad = value_and_grad(theta, state=state)
        updates, state = solver.update(grad, state, theta, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(theta, updates), state

    def running(carry):
        _, state = carry
        count, grad = otu.tree_get(state, "count"), otu.tree_get(state, "grad")
        return (count == 0) | ((count < ITERATIONS) & (otu.tree_norm(grad) >= GRADIENT_TOLERANCE))

    theta_P, _ = jax.lax.while_loop(running, step, (theta_P, solver.init(theta_P)))
    return theta_P, loss(theta_P)


@functools.partial(jax.jit, static_argnames=("law", "delta"))
def _best_fits(law: Law, starts_SP: jax.Array, x_N: jax.Array, y_BN: jax.Array, weights_BN: jax.Array,
               delta: float) -> jax.Array:
    """Fits from every start to every row of (errors, weights); each row keeps its lowest-loss start:
    [B, P]. In float32, JAX's default: centred log space keeps every quantity of order 1."""
    over_starts = jax.vmap(_lbfgs, in_axes=(None, 0, None, None, None, None))
    over_rows = jax.vmap(over_starts, in_axes=(None, None, None, 0, 0, None))
    theta_BSP, loss_BS = over_rows(law, starts_SP, x_N, y_BN, weights_BN, delta)
    best_B = jnp.argmin(jnp.where(jnp.isfinite(loss_BS), loss_BS, jnp.inf), axis=1)
    return jnp.take_along_axis(theta_BSP, best_B[:, None, None], axis=1)[:, 0]


def robust_fit(law: Law, x: Array, y: Array, weights: Array, delta: float = HUBER_DELTA) -> Array:
    """Huber fits of ``law`` to (x, y) under each row of ``weights`` [B, N], with ``y`` [N] shared by
    every row or [B, N] one per row; returns theta [B, P].

    Points are padded with zero weight to a power of two (at least 16), and rows with copies of the first
    to a multiple of ``ROWS``, solved ``ROWS`` at a time: the solver compiles once per law and point count
    bucket, not once per call.
    """
    rows, points = weights.shape
    y_BN = np.broadcast_to(y, weights.shape)
    pad_points = max(16, 1 << (points - 1).bit_length()) - points

    def pad(a_BN: Array) -> Array:
        a_BN = np.pad(a_BN, ((0, 0), (0, pad_points)))
        return np.concatenate([a_BN, np.repeat(a_BN[:1], -rows % ROWS, axis=0)])

    x_N, y_BN, weights_BN = np.pad(x, (0, pad_points)), pad(y_BN), pad(weights)
    starts_SP = law.starts(x, y_BN[0, :points])
    chunks = [_best_fits(law, starts_SP, x_N, y_chunk, w_chunk, delta) for y_chunk, w_chunk in zip(
        np.split(y_BN, len(y_BN) // ROWS), np.split(weights_BN, len(weights_BN) // ROWS), strict=True)]
    return np.concatenate([np.asarray(theta_BP, float) for theta_BP in chunks])[:rows]


def stream_rng(seed: int, name: str) -> np.random.Generator:
    """The bootstrap stream of the series ``name``: the user's seed and a stable hash of the name (the same
    in every process, unlike ``hash``), so no two series share replicate draws."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def seeds_span(flops: Array, seeds: Array, frontier: Array) -> bool:
    """Whether every seed has points within ``SEED_SPAN`` x of both ends of the frontier's compute, the
    condition for resampling seeds as clusters (a seed with one small run cannot stand in for another)."""
    low, high = flops[frontier].min(), flops[frontier].max()
    return len(np.unique(seeds)) > 1 and all(
        flops[seeds == s].min() <= low * SEED_SPAN and flops[seeds == s].max() >= high / SEED_SPAN
        for s in np.unique(seeds))


def bootstrap_weights(num_points: int, seeds: Array | None, boots: int, rng: np.random.Generator) -> Array:
    """[boots, N] multiplicities: points resampled with replacement, times resampled seeds' counts."""
    weights = rng.multinomial(num_points, np.full(num_points, 1 / num_points), size=boots)
    if seeds is not None and len(np.unique(seeds)) > 1:
        unique, index = np.unique(seeds, return_inverse=True)
        picked = rng.multinomial(len(unique), np.full(len(unique), 1 / len(unique)), size=boots)
        weights = weights * picked[:, index]
    return weights


@dataclasses.dataclass(frozen=True)
class Fit:
    """A law fitted to one set of points, with its bootstrap replicates (NaN rows: too few points)."""

    law: Law
    label: str
    theta: Array  # [P]
    boots: Array  # [B, P]
    log_c_ref: float
    flops: Array  # the points fitted (frontier points when fit to a frontier)
    error: Array
    level: float = LEVEL
    resampled: str = "points"  # what a replicate resamples, and why not seeds where it does not

    def interval(self, values: Array) -> tuple[float, float]:
        low, high = percentile_interval(values[~np.isnan(values)], self.level)
        return float(low), float(high)

    def params(self) -> dict[str, tuple[float, float, float]]:
        """{name: (estimate, low, high)} in FLOPs units."""
        estimate = self.law.public(self.theta, self.log_c_ref)
        replicates = self.law.public(self.boots, self.log_c_ref)
        return {name: (float(value), *self.interval(replicates[name])) for name, value in estimate.items()}

    def predict(self, flops: Array) -> tuple[Array, Array, Array]:
        """(estimate, low, high) error at each compute in ``flops``."""
        x = np.log(np.asarray(flops, float)) - self.log_c_ref
        with np.errstate(over="ignore"):
            estimate = np.exp(self.law.log_error(self.theta, x))
            replicates = np.exp(self.law.log_error(self.boots, x))  # [B, M]
        low, high = percentile_interval(replicates[~np.isnan(replicates).any(axis=1)], self.level)
        return estimate, low, high

    def compute_for(self, error: Array, theta: Array | None = None) -> Array:
        """Compute (FLOPs) at which the law (or replicates ``theta``) reaches ``error``; inf: never."""
        theta = self.theta if theta is None else theta
        with np.errstate(over="ignore"):
            return np.exp(self.law.inverse(theta, np.log(error)) + self.log_c_ref)

    def weakness(self) -> str:
        """Why this fit's intervals run open ("" when nothing stands out): too few frontier points for the
        law, or an exponent b whose interval comes near 0 (a flat frontier: its inverse runs off to inf)."""
        reasons = []
        if len(np.unique(self.flops)) <= self.law.num_params + 1:
            reasons.append(f"only {len(np.unique(self.flops))} frontier points for a "
                           f"{self.law.num_params}-parameter law")
        _, b_low, b_high = self.params()["b"]
        if np.isfinite(b_low) and not b_low >= FLAT_EXPONENT:
            reasons.append(f"b's interval [{b_low:.2g}, {b_high:.2g}] reaches below {FLAT_EXPONENT:g} "
                           "(a flat frontier)")
        return " and ".join(reasons)

    @property
    def usable_boots(self) -> int:
        return int((~np.isnan(self.boots).any(axis=1)).sum())


def percentile_interval(replicates: Array, level: float) -> tuple[Array, Array]:
    """Central ``level`` interval over the first axis, taken without interpolation so that replicates at
    infinity (a law that never reaches an error, an overflowing parameter) give infinity, not NaN."""
    if not len(replicates):
        nan = np.full(replicates.shape[1:], np.nan)
        return nan, nan
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail], axis=0, method="inverted_cdf")
    return low, high


def fit_law(law: Law, flops: Array, error: Array, *, label: str = "points", seeds: Array | None = None,
            error_sd: Array | None = None, on_frontier: bool = True, boots: int = BOOTS, level: float = LEVEL,
            seed: int = 0, stream: str | None = None) -> Fit:
    """Fits ``law`` to the points (or to their lower envelope) with ``boots`` bootstrap refits, drawn from
    the stream of ``stream`` (default ``label``) under ``seed``. Each replicate resamples the points (and
    the ``seeds`` as clusters when every seed spans the frontier) and redraws each error from a normal of
    its ``error_sd`` (its test-set noise; none when not given).

    Raises ConfigError when there are fewer distinct points than the law has parameters.
    """
    flops, error = np.asarray(flops, float), np.asarray(error, float)
    if np.any(error <= 0) or np.any(flops <= 0):
        raise ConfigError(f"{label}: a {law.name} law needs positive errors and FLOPs (a metric of 0 or "
                          "below cannot be fit in log space); choose another --metric")
    everything = np.ones((1, len(flops)), int)
    chosen = frontier_mask(flops, error, everything)[0] if on_frontier else everything[0] > 0
    needed = law.num_params
    if len(np.unique(flops[chosen])) < needed:
        where = "frontier points" if on_frontier else "points"
        raise ConfigError(
            f"{label}: the {law.name} law ({law.formula}) has {needed} parameters but only "
            f"{len(np.unique(flops[chosen]))} {where} at distinct compute; add budgets or runs "
            "(or eval points with WSD cool-down branches)"
        )
    x, y = np.log(flops), np.log(error)
    log_c_ref = float(x[chosen].mean())
    x = x - log_c_ref
    rng = stream_rng(seed, stream or label)
    clustered = seeds is not None and seeds_span(flops, np.asarray(seeds), chosen)
    weights = bootstrap_weights(len(flops), seeds if clustered else None, boots, rng)
    noise = np.zeros(len(flops)) if error_sd is None else np.nan_to_num(np.asarray(error_sd, float))
    error_BN = np.maximum(error + noise * rng.standard_normal(weights.shape), error.min() / 10)
    if on_frontier:
        weights = weights * frontier_mask(flops, error_BN, weights)
    y_BN = np.concatenate([y[None], np.log(error_BN)])
    theta, *replicates = robust_fit(law, x, y_BN, np.concatenate([chosen[None], weights]))  # one solve
    replicates = np.array(replicates)
    distinct = np.array([len(np.unique(flops[row > 0])) for row in weights])
    replicates[distinct < needed] = np.nan
    if len(np.unique(flops[chosen])) == needed and not noise.any():  # an exact fit: every replicate repeats
        replicates[:] = np.nan  # it, so the bootstrap cannot tell its uncertainty; its intervals stay open
    several = seeds is not None and len(np.unique(seeds)) > 1
    resampled = "points and seeds" if clustered else "points (seeds do not each span the frontier)" \
        if several else "points (one seed)"
    return Fit(law, label, theta, replicates, log_c_ref, flops[chosen], error[chosen], level, resampled)
