"""Multinomial logistic regression with an L2 penalty, fitted with preconditioned L-BFGS.

Parameterised exactly like scikit-learn's ``LogisticRegression(C=...)`` (minimise
``C * sum_i CE_i + 0.5 * ||W||^2``, bias unregularised) and fitted in float32 with optax's L-BFGS inside
one jit-compiled loop. ``C`` is a traced argument, so a whole sweep over ``C`` compiles once per data
shape, and a fit may be warm-started from another's solution. ``SolverOptions`` holds the solver's
settings. Public: ``fit_logistic``, ``LogisticProbe``, ``probe_accuracy``, ``predict_proba`` (class
probabilities of a fitted probe, for a notebook), ``SolverOptions``; ``prepare_fit_data`` and
``fit_prepared`` serve the C-selection protocol (scaling.evaluation.linear_probe).

The solver is preconditioned. With standardised features ``Z`` and the eigendecomposition
``Z^T Z / N = V diag(s) V^T``, the weights are written ``W = P U`` with ``P = V diag(d) V^T`` and
``d = (s / K + 1 / (C N))^(-1/2)``, an approximation of the inverse square root of the
Hessian of the objective, and L-BFGS runs on ``U``. With fewer rows than features, ``V`` holds only
the eigenvectors of nonzero ``s`` (from the rows' Gram matrix) and ``P`` scales the rest alike. The
objective and its minimiser are those of the unpreconditioned problem; only the number of iterations
changes (see ``benchmarks/probe.py``). Array names as in scaling.evaluation.probe_inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scaling.evaluation.probe_inputs import as_features, as_labels, class_ids, standardisation, standardise

_LBFGS_MEMORY = 10
_MAX_LINESEARCH_STEPS = 30
_PRECONDITIONER_ROWS = 8192
_STALL_PATIENCE = 20


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """How a logistic probe is fitted.

    Stops when the largest absolute gradient entry of the per-example objective
    (``mean CE + ||W||^2 / (2 C N)``, the scale sklearn's ``tol`` refers to) is at most ``tol``, or after
    ``max_iter`` iterations. ``precondition=False`` runs plain L-BFGS on ``W`` (same minimiser, more
    iterations).
    """

    tol: float = 1e-4
    max_iter: int = 1000
    precondition: bool = True


DEFAULT_SOLVER = SolverOptions()


class LogisticProbe(NamedTuple):
    """A fitted probe: ``logits = ((x - mean) / scale) @ weights + bias``.

    ``weights`` is [D, K], ``bias`` [K], ``mean`` and ``scale`` [D] (the standardisation of the
    split it was fitted on). ``iterations`` is the number of L-BFGS iterations and
    ``grad_max_abs`` the largest absolute gradient entry at the returned point.
    """

    weights: jax.Array
    bias: jax.Array
    mean: jax.Array
    scale: jax.Array
    iterations: jax.Array
    grad_max_abs: jax.Array


@functools.partial(jax.tree_util.register_dataclass, meta_fields=("num_classes",),
                   data_fields=("features", "features_transposed", "labels", "weights", "mean", "scale",
                                "eigvals", "basis"))
@dataclasses.dataclass(frozen=True)
class FitData:
    """Standardised features in the two layouts the solver reads, the labels as class ids (never one-hot:
    at 1,000 classes an [N, K] float32 copy is as large as the features), plus the preconditioner.

    Rows with weight 0 (the validation rows during C selection) take no part in the fit or in
    the statistics; they are kept so selection and refit share one array shape and one
    compiled solver.
    """

    features: jax.Array
    features_transposed: jax.Array
    labels: jax.Array  # [N] int32 in [0, num_classes)
    weights: jax.Array
    mean: jax.Array
    scale: jax.Array
    eigvals: jax.Array
    basis: jax.Array
    num_classes: int


def _feature_eigenbasis(z_ND: jax.Array, weights_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(eigenvalues [R], orthonormal eigenvectors [D, R]) of the weighted feature covariance
    ``Z^T W Z / sum(W)``, estimated on at most ``_PRECONDITIONER_ROWS`` evenly strided rows S.

    With fewer rows than features (S < D) the covariance has rank at most S, and its eigenvectors
    come from the S x S Gram matrix (R = S) instead of a D x D eigendecomposition; directions it
    cannot resolve get eigenvalue 0 and a zero column, which the solver treats like the rest of the
    null space."""
    stride = max(1, -(-z_ND.shape[0] // _PRECONDITIONER_ROWS))
    sample_SD, weights_S = z_ND[::stride], weights_N[::stride]
    t_SD = sample_SD * jnp.sqrt(weights_S / jnp.maximum(jnp.sum(weights_S), 1.0))[:, None]
    if t_SD.shape[0] >= t_SD.shape[1]:
        eigvals_D, basis_DD = jnp.linalg.eigh(t_SD.T @ t_SD)
        return jnp.maximum(eigvals_D, 0.0), basis_DD
    eigvals_S, u_SS = jnp.linalg.eigh(t_SD @ t_SD.T)
    resolved_S = eigvals_S > 1e-6 * jnp.max(eigvals_S)
    inverse_root_S = jnp.where(resolved_S, jax.lax.rsqrt(jnp.where(resolved_S, eigvals_S, 1.0)), 0.0)
    basis_DS = (t_SD.T @ u_SS) * inverse_root_S
    return jnp.where(resolved_S, eigvals_S, 0.0), basis_DS


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _prepare(x_ND: jax.Array, labels_N: jax.Array, weights_N: jax.Array, num_classes: int) -> FitData:
    mean_D, scale_D = standardisation(x_ND, weights_N)
    z_ND = standardise(x_ND, mean_D, scale_D)
    eigvals_R, basis_DR = _feature_eigenbasis(z_ND, weights_N)
    return FitData(
        features=z_ND,
        features_transposed=z_ND.T,
        labels=jnp.maximum(labels_N, 0).astype(jnp.int32),  # a -1 (unseen class) row has weight 0
        weights=weights_N,
        mean=mean_D,
        scale=scale_D,
        eigvals=eigvals_R,
        basis=basis_DR,
        num_classes=num_classes,
    )


def prepare_fit_data(
    x_ND: Any, labels_N: np.ndarray, num_classes: int, fit_mask_N: np.ndarray | None = None
) -> FitData:
    weights_N = np.ones(labels_N.shape, np.float32) if fit_mask_N is None else fit_mask_N
    return _prepare(
        jnp.asarray(x_ND),
        jnp.asarray(labels_N),
        jnp.asarray(weights_N, jnp.float32),
        num_classes=num_classes,
    )


@jax.custom_vjp
def _features_times(w_DK: jax.Array, z_ND: jax.Array, zT_DN: jax.Array) -> jax.Array:
    """``z_ND @ w_DK`` whose gradient reads the stored transpose (much faster on CPU)."""
    return z_ND @ w_DK


def _features_times_fwd(w_DK, z_ND, zT_DN):
    return z_ND @ w_DK, zT_DN


def _features_times_bwd(zT_DN, cotangent_NK):
    return zT_DN @ cotangent_NK, None, None


_features_times.defvjp(_features_times_fwd, _features_times_bwd)


def _mean_cross_entropy(logits_NK: jax.Array, labels_N: jax.Array, weights_N: jax.Array) -> jax.Array:
    log_norm_N = jax.nn.logsumexp(logits_NK, axis=1)
    cross_entropy_N = log_norm_N - jnp.take_along_axis(logits_NK, labels_N[:, None], axis=1)[:, 0]
    return weights_N @ cross_entropy_N / jnp.sum(weights_N)


def _preconditioner(eigvals_R: jax.Array, l2_strength: jax.Array, num_classes: int):
    """Scales along the covariance eigenvectors (``d_R``), across their orthogonal complement
    (``d_null``, eigenvalue 0) and of the bias: the inverse square root of each direction's curvature."""
    curvature = 1.0 / num_classes
    d_R = jax.lax.rsqrt(curvature * eigvals_R + l2_strength)
    d_null = jax.lax.rsqrt(l2_strength)
    d_bias = jnp.asarray(1.0 / math.sqrt(curvature), jnp.float32)
    return d_R, d_null, d_bias


def _scale_along(basis_DR: jax.Array, d_R: jax.Array, d_null: jax.Array, x_DK: jax.Array) -> jax.Array:
    """``P @ x`` for the symmetric ``P = d_null I + basis diag(d_R - d_null) basis^T``."""
    return d_null * x_DK + basis_DR @ ((d_R - d_null)[:, None] * (basis_DR.T @ x_DK))


@functools.partial(jax.jit, static_argnames=("max_iter", "precondition"))
def _solve(
    data: FitData,
    w0_DK: jax.Array,
    b0_K: jax.Array,
    C: jax.Array,
    tol: jax.Array,
    *,
    max_iter: int,
    precondition: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """L-BFGS on ``w = P u``: in ``u`` the penalised cross-entropy's curvature is close to uniform."""
    num_classes = data.num_classes
    l2_strength = 1.0 / (C * jnp.sum(data.weights))
    if precondition:
        d_R, d_null, d_bias = _preconditioner(data.eigvals, l2_strength, num_classes)
    else:
        d_R, d_null, d_bias = (jnp.ones_like(data.eigvals), jnp.asarray(1.0, jnp.float32),
                               jnp.asarray(1.0, jnp.float32))
    scale = functools.partial(_scale_along, data.basis, d_R, d_null)
    unscale = functools.partial(_scale_along, data.basis, 1.0 / d_R, 1.0 / d_null)

    def to_weights(params):
        u_DK, c_K = params
        return scale(u_DK), d_bias * c_K

    def objective(params):
        w_DK, b_K = to_weights(params)
        logits_NK = _features_times(w_DK, data.features, data.features_transposed) + b_K
        penalty = 0.5 * l2_strength * jnp.sum(jnp.square(w_DK))
        return _mean_cross_entropy(logits_NK, data.labels, data.weights) + penalty

    def grad_max_abs(grad):
        g_u_DK, g_c_K = grad
        return jnp.maximum(jnp.max(jnp.abs(unscale(g_u_DK))), jnp.max(jnp.abs(g_c_K / d_bias)))

    solver = optax.lbfgs(
        memory_size=_LBFGS_MEMORY,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=_MAX_LINESEARCH_STEPS, initial_guess_strategy="one"
        ),
    )
    value_and_grad = optax.value_and_grad_from_state(objective)

    params0 = (unscale(w0_DK), b0_K / d_bias)
    value0, grad0 = jax.value_and_grad(objective)(params0)
    state0 = optax.tree.set(solver.init(params0), value=value0, grad=grad0)

    def keep_going(carry):
        _, _, iteration, err, _, since_best = carry
        return (iteration < max_iter) & (err > tol) & (since_best < _STALL_PATIENCE)

    def step(carry):
        params, state, iteration, _, best_err, since_best = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=objective)
        params = optax.apply_updates(params, updates)
        err = grad_max_abs(optax.tree.get(state, "grad"))
        since_best = jnp.where(err < best_err, 0, since_best + 1)
        return params, state, iteration + 1, err, jnp.minimum(err, best_err), since_best

    err0 = grad_max_abs(grad0)
    carry0 = (params0, state0, jnp.asarray(0), err0, err0, jnp.asarray(0))
    params, _, iterations, err, _, _ = jax.lax.while_loop(keep_going, step, carry0)
    w_DK, b_K = to_weights(params)
    return w_DK, b_K, iterations, err


def fit_prepared(
    data: FitData,
    C: float,
    solver: SolverOptions,
    init: tuple[jax.Array, jax.Array] | None = None,
) -> LogisticProbe:
    """The probe fitted on prepared data, from ``init`` (weights, bias) or zeros."""
    num_classes = data.num_classes
    feature_dim = data.features.shape[1]
    if init is None:
        init = (jnp.zeros((feature_dim, num_classes)), jnp.zeros((num_classes,)))
    w_DK, b_K, iterations, err = _solve(
        data,
        init[0],
        init[1],
        jnp.asarray(C, jnp.float32),
        jnp.asarray(solver.tol, jnp.float32),
        max_iter=solver.max_iter,
        precondition=solver.precondition,
    )
    return LogisticProbe(w_DK, b_K, data.mean, data.scale, iterations, err)


def fit_logistic(
    x_ND: Any,
    y_N: Any,
    C: float = 1.0,
    *,
    num_classes: int | None = None,
    solver: SolverOptions = DEFAULT_SOLVER,
) -> LogisticProbe:
    """Fit one L2-regularised multinomial logistic regression, like sklearn's ``C``.

    Minimises ``C * sum_i CE_i + 0.5 * ||W||^2`` on features standardised with their own mean
    and standard deviation; the bias is not regularised. Labels must be integers in
    ``[0, num_classes)`` (``num_classes`` defaults to ``max(y) + 1``). ``solver`` says when to stop
    and whether to precondition.
    """
    x_ND = as_features(x_ND, "x")
    y_N = as_labels(y_N, x_ND.shape[0], "y", "x")
    class_ids(y_N, "y")
    if num_classes is None:
        num_classes = int(y_N.max()) + 1
    if y_N.min() < 0 or y_N.max() >= num_classes:
        raise ValueError(
            f"y must hold class ids in [0, {num_classes}), got range [{y_N.min()}, {y_N.max()}]."
        )
    return fit_prepared(prepare_fit_data(x_ND, y_N, num_classes), C, solver)


@jax.jit
def _probe_logits(probe: LogisticProbe, x_ND: jax.Array) -> jax.Array:
    return standardise(x_ND, probe.mean, probe.scale) @ probe.weights + probe.bias


def predict_proba(probe: LogisticProbe, x_ND: Any) -> np.ndarray:
    """Softmax class probabilities of a fitted probe."""
    logits_NK = _probe_logits(probe, jnp.asarray(x_ND, jnp.float32))
    return np.asarray(jax.nn.softmax(logits_NK, axis=1))


@jax.jit
def accuracy(probe: LogisticProbe, x_ND: jax.Array, labels_N: jax.Array) -> jax.Array:
    predictions_N = jnp.argmax(_probe_logits(probe, x_ND), axis=1)
    return jnp.mean((predictions_N == labels_N).astype(jnp.float32))


def probe_accuracy(probe: LogisticProbe, x_ND: Any, labels_N: Any) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of a fitted probe on labels in ``0..K-1``."""
    return float(accuracy(probe, jnp.asarray(x_ND, jnp.float32), jnp.asarray(labels_N)))
