"""Scaling-law fits with bootstrap intervals.

Two laws of error E against training compute C: the power law ``E = a C^-b`` and the saturating law
``E = E_inf + a C^-b``. Both are fit in log space (log E against log C) with a Huber loss, by
Levenberg-Marquardt from a grid of starts, vectorised over starts and bootstrap replicates at once. A
bootstrap replicate resamples the points (and, where a run grid has several seeds, the seeds), recomputes
the frontier when the fit is of a frontier, and refits; percentile intervals of the replicates bound every
parameter and every prediction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from scaling.analysis.points import frontier_mask
from scaling.config import ConfigError

HUBER_DELTA = 0.1  # in log error: residuals beyond ~10% count linearly
ITERATIONS = 60
BOOTS = 400
LEVEL = 0.9

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Law:
    """A law in centred log space: ``log E = predict(theta, x)`` with ``x = log(C / C_ref)``."""

    name: str
    formula: str
    predict: Callable[[Array, Array], Array]  # theta [..., P], x [N] -> log E [..., N]
    jacobian: Callable[[Array, Array], Array]  # -> [..., N, P]
    inverse: Callable[[Array, Array], Array]  # theta [..., P], log E [...] -> x [...] (inf: never reached)
    starts: Callable[[Array, Array], Array]  # x [N], y [N] -> theta [S, P]
    public: Callable[[Array, float], dict[str, Array]]  # theta [..., P], log C_ref -> {"a", "b", ...}

    @property
    def num_params(self) -> int:
        return self.starts(np.zeros(3), np.zeros(3)).shape[-1]


def _power_predict(theta, x):
    return theta[..., :1] - theta[..., 1:2] * x


def _power_jacobian(theta, x):
    ones = np.ones(theta.shape[:-1] + x.shape)
    return np.stack([ones, -x * ones], axis=-1)


def _power_inverse(theta, log_error):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (theta[..., 0] - log_error) / theta[..., 1]


def _power_starts(x, y):
    return np.array([[y.mean(), b] for b in (0.05, 0.3, 1.0)])


def _power_public(theta, log_c_ref):
    with np.errstate(over="ignore"):
        return {"a": np.exp(theta[..., 0] + theta[..., 1] * log_c_ref), "b": theta[..., 1]}


def _saturating_predict(theta, x):
    with np.errstate(invalid="ignore"):  # NaN rows: bootstrap replicates with too few points
        return np.logaddexp(theta[..., :1], theta[..., 1:2] - theta[..., 2:3] * x)


def _saturating_jacobian(theta, x):
    floor, scaling = theta[..., :1], theta[..., 1:2] - theta[..., 2:3] * x
    share = 1.0 / (1.0 + np.exp(np.clip(scaling - floor, -50, 50)))  # d/d log E_inf
    return np.stack([share, 1.0 - share, -(1.0 - share) * x], axis=-1)


def _saturating_inverse(theta, log_error):
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(log_error > theta[..., 0], np.log(np.exp(log_error) - np.exp(theta[..., 0])), -np.inf)
        return np.where(np.isfinite(gap), (theta[..., 1] - gap) / theta[..., 2], np.inf)


def _saturating_starts(x, y):
    lowest = y.min()
    return np.array([[lowest + np.log(q), np.log(np.exp(y.mean()) * (1 - q) + 1e-12), b]
                     for q in (0.1, 0.5, 0.9) for b in (0.1, 0.3, 1.0)])


def _saturating_public(theta, log_c_ref):
    with np.errstate(over="ignore"):
        return {"E_inf": np.exp(theta[..., 0]), "a": np.exp(theta[..., 1] + theta[..., 2] * log_c_ref),
                "b": theta[..., 2]}


POWER = Law("power", "E = a C^-b", _power_predict, _power_jacobian, _power_inverse, _power_starts,
            _power_public)
SATURATING = Law("saturating", "E = E_inf + a C^-b", _saturating_predict, _saturating_jacobian,
                 _saturating_inverse, _saturating_starts, _saturating_public)
LAWS = {law.name: law for law in (POWER, SATURATING)}


def _huber(residual: Array, delta: float) -> Array:
    size = np.abs(residual)
    return np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta))


def robust_fit(law: Law, x: Array, y: Array, weights: Array, delta: float = HUBER_DELTA) -> Array:
    """Huber fits of ``law`` to (x, y) under each row of ``weights`` [B, N]; returns theta [B, P].

    Levenberg-Marquardt on the iteratively reweighted least-squares form of the Huber loss, from every
    start of the law's grid; each row keeps its best start. Steps that overflow are rejected.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _levenberg_marquardt(law, x, y, weights, delta)


def _levenberg_marquardt(law: Law, x: Array, y: Array, weights: Array, delta: float) -> Array:
    starts = law.starts(x, y)
    theta = np.broadcast_to(starts, (len(weights), *starts.shape)).copy()  # [B, S, P]
    w = weights[:, None, :].astype(float)  # [B, 1, N]
    objective = lambda t: (w * _huber(law.predict(t, x) - y, delta)).sum(-1)
    loss = objective(theta)
    damping = np.full(loss.shape, 1e-2)
    eye = np.eye(starts.shape[-1])
    for _ in range(ITERATIONS):
        residual = law.predict(theta, x) - y
        irls = w * np.minimum(1.0, delta / np.maximum(np.abs(residual), 1e-12))
        jac = law.jacobian(theta, x)  # [B, S, N, P]
        normal = np.einsum("...np,...n,...nq->...pq", jac, irls, jac)
        gradient = np.einsum("...np,...n,...n->...p", jac, irls, residual)
        scale = np.diagonal(normal, axis1=-2, axis2=-1)[..., None, :] * eye
        system = normal + damping[..., None, None] * scale + 1e-10 * eye  # never singular
        step = np.linalg.solve(system, -gradient[..., None])[..., 0]
        candidate = theta + step
        candidate_loss = objective(candidate)
        better = np.isfinite(candidate_loss) & (candidate_loss < loss)
        theta = np.where(better[..., None], candidate, theta)
        loss = np.where(better, candidate_loss, loss)
        damping = np.clip(np.where(better, damping / 3, damping * 4), 1e-9, 1e9)
    best = np.argmin(loss, axis=1)
    return np.take_along_axis(theta, best[:, None, None], axis=1)[:, 0]


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
            estimate = np.exp(self.law.predict(self.theta, x))
            replicates = np.exp(self.law.predict(self.boots, x))  # [B, M]
        low, high = percentile_interval(replicates[~np.isnan(replicates).any(axis=1)], self.level)
        return estimate, low, high

    def compute_for(self, error: Array, theta: Array | None = None) -> Array:
        """Compute (FLOPs) at which the law (or replicates ``theta``) reaches ``error``; inf: never."""
        theta = self.theta if theta is None else theta
        with np.errstate(over="ignore"):
            return np.exp(self.law.inverse(theta, np.log(error)) + self.log_c_ref)

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
            on_frontier: bool = True, boots: int = BOOTS, level: float = LEVEL, seed: int = 0) -> Fit:
    """Fits ``law`` to the points (or to their lower envelope) with ``boots`` bootstrap refits.

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
    theta = robust_fit(law, x, y, chosen[None].astype(float))[0]

    rng = np.random.default_rng(seed)
    weights = bootstrap_weights(len(flops), seeds, boots, rng)
    if on_frontier:
        weights = weights * frontier_mask(flops, error, weights)
    replicates = robust_fit(law, x, y, weights)
    distinct = np.array([len(np.unique(flops[row > 0])) for row in weights])
    replicates[distinct < needed] = np.nan
    return Fit(law, label, theta, replicates, log_c_ref, flops[chosen], error[chosen], level)
