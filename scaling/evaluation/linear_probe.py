"""Linear probes on frozen features: the CLIP-protocol logistic-regression probe and few-shot ridge.

This module owns

* ``fit_logistic`` / ``LogisticProbe``: multinomial logistic regression with an L2 penalty,
  parameterised exactly like scikit-learn's ``LogisticRegression(C=...)`` (minimise
  ``C * sum_i CE_i + 0.5 * ||W||^2``, bias unregularised) and fitted in float32 with optax's
  L-BFGS inside one jit-compiled loop. ``C`` is a traced argument, so a whole sweep compiles once
  per data shape, and consecutive values of ``C`` are warm-started.
* ``select_and_evaluate``: pick ``C`` on a validation split, refit on train+validation, score
  once on test (the protocol of Radford et al. 2021, appendix A.3). ``C`` is searched coarse to
  fine: the grid (one value per decade), then ``refine_steps`` values on each side of its best
  between it and its grid neighbours (a quarter decade apart by default); a best ``C`` on the
  grid's edge warns, as the optimum may lie beyond it.
* ``probe_layers``: the same protocol for every layer of a feature dict.
* ``fewshot_ridge``: closed-form ridge regression onto one-hot targets from ``k`` examples per
  class, cheap enough to run inside a training loop.

Features are standardised with the mean and standard deviation of the examples a probe is fitted
on (for few-shot, the ``k`` per class drawn); validation and test features reuse those
statistics. All results are plain dicts of Python floats, ints, strings and lists, ready for
``json.dumps``.

The solver is preconditioned. With standardised features ``Z`` and the eigendecomposition
``Z^T Z / N = V diag(s) V^T``, the weights are written ``W = V diag(d) U`` with
``d = (s / K + 1 / (C N))^(-1/2)``, an approximation of the inverse square root of the
Hessian of the objective, and L-BFGS runs on ``U``. The objective and its minimiser are those
of the unpreconditioned problem; only the number of iterations changes (see
``benchmarks/probe.py``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0**e for e in range(-6, 3))
"""Regularisation values swept by default: 1e-6, 1e-5, ..., 1e2 (one per decade)."""

DEFAULT_REFINE_STEPS = 3
"""Values tried between the best grid C and each neighbour: 3 puts them a quarter decade apart."""

DEFAULT_FEWSHOT_SHOTS: tuple[int, ...] = (1, 5, 10, 25)
DEFAULT_FEWSHOT_SEEDS: tuple[int, ...] = (0, 1, 2)

_LBFGS_MEMORY = 10
_MAX_LINESEARCH_STEPS = 30
_PRECONDITIONER_ROWS = 8192
_STALL_PATIENCE = 20


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


class _FitData(NamedTuple):
    """Standardised features in the two layouts the solver reads, plus its preconditioner.

    Rows with weight 0 (the validation rows during C selection) take no part in the fit or in
    the statistics; they are kept so selection and refit share one array shape and one
    compiled solver.
    """

    features: jax.Array
    features_transposed: jax.Array
    targets: jax.Array
    weights: jax.Array
    mean: jax.Array
    scale: jax.Array
    eigvals: jax.Array
    basis: jax.Array


# ----------------------------------------------------------------------------------------------
# Input checks


def _as_features(x: Any, name: str) -> np.ndarray:
    x_ND = np.asarray(x)
    if x_ND.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [num_examples, feature_dim], got shape {x_ND.shape}; "
            "flatten or pool the features first."
        )
    if x_ND.shape[0] == 0 or x_ND.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {x_ND.shape}); pass at least one example.")
    real_dtype = x_ND.dtype.kind in "biuf" or (x_ND.dtype.kind == "V" and "float" in x_ND.dtype.name)
    if not real_dtype:
        raise ValueError(f"{name} must hold real numbers, got dtype {x_ND.dtype}.")
    x_ND = x_ND.astype(np.float32, copy=False)
    finite_N = np.isfinite(x_ND).all(axis=1)
    if not finite_N.all():
        bad_rows = np.flatnonzero(~finite_N)
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad_rows.size} of {x_ND.shape[0]} rows "
            f"(first bad rows: {bad_rows[:5].tolist()}); drop or impute those examples before "
            "probing (non-finite features usually mean the model diverged)."
        )
    return x_ND


def _as_labels(y: Any, num_examples: int, name: str, features_name: str) -> np.ndarray:
    y_N = np.asarray(y)
    if y_N.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of integer class ids, got shape {y_N.shape}; "
            "pass class indices, not one-hot vectors."
        )
    if y_N.shape[0] != num_examples:
        raise ValueError(
            f"{name} has {y_N.shape[0]} labels but {features_name} has {num_examples} rows; "
            "features and labels must describe the same examples."
        )
    if not np.issubdtype(y_N.dtype, np.integer):
        if np.issubdtype(y_N.dtype, np.floating) and np.all(np.mod(y_N, 1) == 0):
            y_N = y_N.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integer class ids, got dtype {y_N.dtype}.")
    return y_N.astype(np.int64, copy=False)


def _check_same_dim(x_ND: np.ndarray, other_MD: np.ndarray, name: str, other_name: str) -> None:
    if x_ND.shape[1] != other_MD.shape[1]:
        raise ValueError(
            f"{other_name} has feature dimension {other_MD.shape[1]} but {name} has "
            f"{x_ND.shape[1]}; both must come from the same layer of the same model."
        )


def _class_ids(y_train_N: np.ndarray, name: str) -> np.ndarray:
    classes = np.unique(y_train_N)
    if classes.size < 2:
        raise ValueError(
            f"{name} contains {classes.size} distinct class(es) ({classes.tolist()}); a "
            "classifier needs at least 2. Check that the labels were loaded correctly."
        )
    return classes


def _encode_labels(y_N: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Map labels to 0..K-1; labels unseen in training map to -1 and never count as correct."""
    position_N = np.clip(np.searchsorted(classes, y_N), 0, classes.size - 1)
    return np.where(classes[position_N] == y_N, position_N, -1)


def _check_c_grid(c_grid: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(c) for c in np.ravel(np.asarray(c_grid, dtype=np.float64)))
    if not values or not all(math.isfinite(c) and c > 0 for c in values):
        raise ValueError(
            f"c_grid must be a non-empty sequence of positive, finite values, got {c_grid!r}; "
            "e.g. c_grid=(1e-4, 1e-2, 1.0)."
        )
    return values


# ----------------------------------------------------------------------------------------------
# Standardisation and the preconditioner


@jax.jit
def _standardisation(x_ND: jax.Array, weights_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted per-feature mean and standard deviation (1 where a feature is constant)."""
    total = jnp.sum(weights_N)
    mean_D = weights_N @ x_ND / total
    std_D = jnp.sqrt(weights_N @ jnp.square(x_ND - mean_D) / total)
    scale_D = jnp.where(std_D > 1e-12 * (1.0 + jnp.abs(mean_D)), std_D, 1.0)
    return mean_D, scale_D


@jax.jit
def _standardise(x_ND: jax.Array, mean_D: jax.Array, scale_D: jax.Array) -> jax.Array:
    return (x_ND - mean_D) / scale_D


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
def _prepare(x_ND: jax.Array, labels_N: jax.Array, weights_N: jax.Array, num_classes: int) -> _FitData:
    mean_D, scale_D = _standardisation(x_ND, weights_N)
    z_ND = _standardise(x_ND, mean_D, scale_D)
    eigvals_R, basis_DR = _feature_eigenbasis(z_ND, weights_N)
    return _FitData(
        features=z_ND,
        features_transposed=z_ND.T,
        targets=jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32),
        weights=weights_N,
        mean=mean_D,
        scale=scale_D,
        eigvals=eigvals_R,
        basis=basis_DR,
    )


def _prepare_fit_data(
    x_ND: Any, labels_N: np.ndarray, num_classes: int, fit_mask_N: np.ndarray | None = None
) -> _FitData:
    weights_N = np.ones(labels_N.shape, np.float32) if fit_mask_N is None else fit_mask_N
    return _prepare(
        jnp.asarray(x_ND),
        jnp.asarray(labels_N),
        jnp.asarray(weights_N, jnp.float32),
        num_classes=num_classes,
    )


# ----------------------------------------------------------------------------------------------
# The L-BFGS solver


@jax.custom_vjp
def _features_times(w_DK: jax.Array, z_ND: jax.Array, zT_DN: jax.Array) -> jax.Array:
    """``z_ND @ w_DK`` whose gradient reads the stored transpose (much faster on CPU)."""
    return z_ND @ w_DK


def _features_times_fwd(w_DK, z_ND, zT_DN):
    return z_ND @ w_DK, zT_DN


def _features_times_bwd(zT_DN, cotangent_NK):
    return zT_DN @ cotangent_NK, None, None


_features_times.defvjp(_features_times_fwd, _features_times_bwd)


def _mean_cross_entropy(logits_NK: jax.Array, targets_NK: jax.Array, weights_N: jax.Array) -> jax.Array:
    log_norm_N = jax.nn.logsumexp(logits_NK, axis=1)
    cross_entropy_N = log_norm_N - jnp.sum(targets_NK * logits_NK, axis=1)
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
    data: _FitData,
    w0_DK: jax.Array,
    b0_K: jax.Array,
    C: jax.Array,
    tol: jax.Array,
    *,
    max_iter: int,
    precondition: bool,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """L-BFGS on ``w = P u``: in ``u`` the penalised cross-entropy's curvature is close to uniform."""
    num_classes = data.targets.shape[1]
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
        return _mean_cross_entropy(logits_NK, data.targets, data.weights) + penalty

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


def _fit_prepared(
    data: _FitData,
    C: float,
    *,
    tol: float,
    max_iter: int,
    init: tuple[jax.Array, jax.Array] | None = None,
    precondition: bool = True,
) -> LogisticProbe:
    num_classes = data.targets.shape[1]
    feature_dim = data.features.shape[1]
    if init is None:
        init = (jnp.zeros((feature_dim, num_classes)), jnp.zeros((num_classes,)))
    w_DK, b_K, iterations, err = _solve(
        data,
        init[0],
        init[1],
        jnp.asarray(C, jnp.float32),
        jnp.asarray(tol, jnp.float32),
        max_iter=max_iter,
        precondition=precondition,
    )
    return LogisticProbe(w_DK, b_K, data.mean, data.scale, iterations, err)


def fit_logistic(
    x_ND: Any,
    y_N: Any,
    C: float = 1.0,
    *,
    num_classes: int | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    precondition: bool = True,
) -> LogisticProbe:
    """Fit one L2-regularised multinomial logistic regression, like sklearn's ``C``.

    Minimises ``C * sum_i CE_i + 0.5 * ||W||^2`` on features standardised with their own mean
    and standard deviation; the bias is not regularised. Labels must be integers in
    ``[0, num_classes)`` (``num_classes`` defaults to ``max(y) + 1``). Stops when the largest
    absolute gradient entry of the per-example objective (``mean CE + ||W||^2 / (2 C N)``, the
    scale sklearn's ``tol`` refers to) is at most ``tol``, or after ``max_iter`` iterations.
    ``precondition=False`` runs plain L-BFGS on ``W`` (same minimiser, more iterations).
    """
    x_ND = _as_features(x_ND, "x")
    y_N = _as_labels(y_N, x_ND.shape[0], "y", "x")
    _class_ids(y_N, "y")
    if num_classes is None:
        num_classes = int(y_N.max()) + 1
    if y_N.min() < 0 or y_N.max() >= num_classes:
        raise ValueError(
            f"y must hold class ids in [0, {num_classes}), got range [{y_N.min()}, {y_N.max()}]."
        )
    data = _prepare_fit_data(x_ND, y_N, num_classes)
    return _fit_prepared(data, C, tol=tol, max_iter=max_iter, precondition=precondition)


@jax.jit
def _probe_logits(probe: LogisticProbe, x_ND: jax.Array) -> jax.Array:
    return _standardise(x_ND, probe.mean, probe.scale) @ probe.weights + probe.bias


def predict_logits(probe: LogisticProbe, x_ND: Any) -> np.ndarray:
    """Class scores ``standardise(x) @ W + b`` of a fitted probe."""
    return np.asarray(_probe_logits(probe, jnp.asarray(x_ND, jnp.float32)))


def predict_proba(probe: LogisticProbe, x_ND: Any) -> np.ndarray:
    """Softmax class probabilities of a fitted probe."""
    logits_NK = _probe_logits(probe, jnp.asarray(x_ND, jnp.float32))
    return np.asarray(jax.nn.softmax(logits_NK, axis=1))


@jax.jit
def _accuracy(probe: LogisticProbe, x_ND: jax.Array, labels_N: jax.Array) -> jax.Array:
    predictions_N = jnp.argmax(_probe_logits(probe, x_ND), axis=1)
    return jnp.mean((predictions_N == labels_N).astype(jnp.float32))


def probe_accuracy(probe: LogisticProbe, x_ND: Any, labels_N: Any) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of a fitted probe on labels in ``0..K-1``."""
    return float(_accuracy(probe, jnp.asarray(x_ND, jnp.float32), jnp.asarray(labels_N)))


# ----------------------------------------------------------------------------------------------
# The CLIP protocol


def stratified_holdout(labels_N: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministically split indices into (fit, holdout), taking ``fraction`` of each class.

    Every class keeps at least one example in the fit part; a class with at least two
    examples contributes at least one holdout example.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {fraction}.")
    rng = np.random.default_rng(seed)
    holdout_parts = []
    for label in np.unique(labels_N):
        members = np.flatnonzero(labels_N == label)
        rng.shuffle(members)
        count = int(round(fraction * members.size))
        count = min(max(count, 1 if members.size >= 2 else 0), members.size - 1)
        holdout_parts.append(members[:count])
    holdout = np.sort(np.concatenate(holdout_parts))
    fit = np.setdiff1d(np.arange(labels_N.shape[0]), holdout)
    return fit, holdout


def _c_key(C: float) -> str:
    return format(C, "g")


def _sweep_c(
    data: _FitData,
    x_val_MD: np.ndarray,
    labels_val_M: np.ndarray,
    c_grid: tuple[float, ...],
    *,
    tol: float,
    max_iter: int,
    precondition: bool,
    init: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[dict[float, float], dict[float, LogisticProbe]]:
    """Fit every C in ascending order, the first from ``init``, each next one warm-started from the
    previous solution."""
    x_val_MD = jnp.asarray(x_val_MD)
    labels_val_M = jnp.asarray(labels_val_M)
    accuracy_per_C: dict[float, float] = {}
    probe_per_C: dict[float, LogisticProbe] = {}
    for C in sorted(c_grid):
        probe = _fit_prepared(data, C, tol=tol, max_iter=max_iter, init=init, precondition=precondition)
        init = (probe.weights, probe.bias)
        accuracy_per_C[C] = float(_accuracy(probe, x_val_MD, labels_val_M))
        probe_per_C[C] = probe
    return accuracy_per_C, probe_per_C


def _best_c(accuracy_per_C: Mapping[float, float]) -> float:
    """Highest validation accuracy; ties go to the smallest C (the most regularised probe)."""
    best = max(accuracy_per_C.values())
    return min(C for C, accuracy in accuracy_per_C.items() if accuracy == best)


def refined_c_values(c_grid: Sequence[float], best_C: float, steps: int) -> tuple[float, ...]:
    """``steps`` log-spaced values strictly between ``best_C`` and each of its neighbours in the
    sorted grid (one side only at the grid's edge)."""
    ordered = sorted(c_grid)
    index = ordered.index(best_C)
    neighbours = [ordered[i] for i in (index - 1, index + 1) if 0 <= i < len(ordered)]
    return tuple(
        float(C) for other in neighbours for C in np.geomspace(best_C, other, steps + 2)[1:-1]
    )


def _warn_if_on_edge(best_C: float, c_values: tuple[float, ...]) -> bool:
    low, high = min(c_values), max(c_values)
    if len(c_values) > 1 and best_C in (low, high):
        side, beyond = ("smallest", "below") if best_C == low else ("largest", "above")
        warnings.warn(
            f"linear probe: the best C ({best_C:g}) is the {side} value of c_grid "
            f"[{low:g}, {high:g}], so the optimum may lie {beyond} it; extend c_grid {beyond} "
            f"{best_C:g}",
            stacklevel=3,
        )
        return True
    return False


def _selection_split(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: Any,
    y_val: Any,
    val_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train+validation features and labels, and a mask of the rows C selection may fit on."""
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither (to hold out part of train).")
    if x_val is None:
        _class_ids(y_train, "y_train")
        fit_mask_N = np.ones(y_train.shape, bool)
        fit_mask_N[stratified_holdout(y_train, val_fraction, seed)[1]] = False
        return x_train, y_train, fit_mask_N
    x_val = _as_features(x_val, "x_val")
    y_val = _as_labels(y_val, x_val.shape[0], "y_val", "x_val")
    _check_same_dim(x_train, x_val, "x_train", "x_val")
    fit_mask_N = np.arange(x_train.shape[0] + x_val.shape[0]) < x_train.shape[0]
    return np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val]), fit_mask_N


def select_and_evaluate(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    x_val: Any = None,
    y_val: Any = None,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    val_fraction: float = 0.2,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int = 1000,
    precondition: bool = True,
) -> dict[str, Any]:
    """Linear-probe accuracy with the CLIP protocol.

    For each ``C`` in ``c_grid``, then for the ``refine_steps`` values on each side of the best
    (``refined_c_values``), a probe is fitted on the training split and scored on the validation
    split; the ``C`` with the best validation accuracy (ties: the smaller ``C``) is refitted on
    train+validation and scored once on test. A best ``C`` at the end of ``c_grid`` warns
    (``UserWarning``) and sets ``best_C_on_edge``. Without ``x_val``/``y_val`` a
    stratified ``val_fraction`` of the training set, drawn with ``seed``, is held out.

    Labels may be any integers; the classes are those present in ``y_train``. Validation and
    test examples of other classes count as errors (and are left out of the refit).
    Accuracies are fractions in [0, 1]. Returns a JSON-serialisable dict with ``test_accuracy``,
    ``best_C``, ``val_accuracy`` (at ``best_C``), ``val_accuracy_per_C`` (keys ``format(C, "g")``,
    every value fitted), ``c_grid``, ``best_C_on_edge``, split sizes, ``num_classes``,
    ``refit_iterations`` and ``refit_converged``.
    """
    x_train = _as_features(x_train, "x_train")
    y_train = _as_labels(y_train, x_train.shape[0], "y_train", "x_train")
    x_test = _as_features(x_test, "x_test")
    y_test = _as_labels(y_test, x_test.shape[0], "y_test", "x_test")
    _check_same_dim(x_train, x_test, "x_train", "x_test")
    c_values = _check_c_grid(c_grid)
    if int(refine_steps) != refine_steps or refine_steps < 0:
        raise ValueError(
            f"refine_steps must be a non-negative integer, got {refine_steps!r}; 0 fits c_grid only."
        )

    x_all, y_all, fit_mask_N = _selection_split(x_train, y_train, x_val, y_val, val_fraction, seed)
    classes = _class_ids(y_all[fit_mask_N], "y_train")
    labels_N = _encode_labels(y_all, classes)
    x_all = jnp.asarray(x_all)
    val_rows = np.flatnonzero(~fit_mask_N)

    fit_data = _prepare_fit_data(x_all, labels_N, classes.size, fit_mask_N)
    accuracy_per_C, probe_per_C = _sweep_c(
        fit_data,
        x_all[val_rows],
        labels_N[val_rows],
        c_values,
        tol=tol,
        max_iter=max_iter,
        precondition=precondition,
    )
    coarse_best = _best_c(accuracy_per_C)
    fine = refined_c_values(c_values, coarse_best, refine_steps)
    if fine:
        lowest_fine = min(fine)
        start = max((value for value in c_values if value < lowest_fine), default=coarse_best)
        fine_accuracy, fine_probes = _sweep_c(
            fit_data,
            x_all[val_rows],
            labels_N[val_rows],
            fine,
            tol=tol,
            max_iter=max_iter,
            precondition=precondition,
            init=(probe_per_C[start].weights, probe_per_C[start].bias),
        )
        accuracy_per_C.update(fine_accuracy)
        probe_per_C.update(fine_probes)
    del fit_data
    best_C = _best_c(accuracy_per_C)
    on_edge = _warn_if_on_edge(best_C, c_values)

    selected = probe_per_C[best_C]
    refit = _fit_prepared(
        _prepare_fit_data(x_all, labels_N, classes.size, labels_N >= 0),
        best_C,
        tol=tol,
        max_iter=max_iter,
        init=(selected.weights, selected.bias),
        precondition=precondition,
    )
    return {
        "test_accuracy": probe_accuracy(refit, x_test, _encode_labels(y_test, classes)),
        "best_C": best_C,
        "val_accuracy": accuracy_per_C[best_C],
        "val_accuracy_per_C": {_c_key(C): accuracy_per_C[C] for C in sorted(accuracy_per_C)},
        "iterations_per_C": {_c_key(C): int(probe_per_C[C].iterations) for C in sorted(probe_per_C)},
        "c_grid": list(c_values),
        "best_C_on_edge": on_edge,
        "num_classes": int(classes.size),
        "num_fit": int(fit_mask_N.sum()),
        "num_val": int(val_rows.size),
        "num_refit": int(np.sum(labels_N >= 0)),
        "num_test": int(x_test.shape[0]),
        "refit_iterations": int(refit.iterations),
        "refit_converged": bool(float(refit.grad_max_abs) <= tol),
    }


def _check_layer_names(
    reference: Mapping[str, Any], other: Mapping[str, Any], name: str, other_name: str
) -> None:
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing or extra:
        raise ValueError(
            f"{other_name} must have the same layers as {name}; missing {missing}, "
            f"unexpected {extra}. Extract every split with the same feature layers."
        )


def probe_layers(
    features_by_layer_train: Mapping[str, Any],
    y_train: Any,
    features_by_layer_test: Mapping[str, Any],
    y_test: Any,
    *,
    features_by_layer_val: Mapping[str, Any] | None = None,
    y_val: Any = None,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    val_fraction: float = 0.2,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int = 1000,
) -> dict[str, Any]:
    """Run ``select_and_evaluate`` on every layer of a feature dict.

    Returns ``{"per_layer": {name: result}, "best_layer": name, "best_test_accuracy": float,
    "best_val_accuracy": float}``. The best layer is the one with the highest validation
    accuracy (ties: the first in the dict's order), so choosing it never looks at test labels;
    ``best_test_accuracy`` is that layer's test accuracy. Every layer uses the same validation
    split. Layers with equal shapes share one compiled solver.
    """
    if not features_by_layer_train:
        raise ValueError("features_by_layer_train is empty; pass at least one layer.")
    _check_layer_names(
        features_by_layer_train,
        features_by_layer_test,
        "features_by_layer_train",
        "features_by_layer_test",
    )
    if features_by_layer_val is not None:
        _check_layer_names(
            features_by_layer_train,
            features_by_layer_val,
            "features_by_layer_train",
            "features_by_layer_val",
        )
    per_layer: dict[str, dict[str, Any]] = {}
    for layer, x_train in features_by_layer_train.items():
        x_val = None if features_by_layer_val is None else features_by_layer_val[layer]
        try:
            per_layer[layer] = select_and_evaluate(
                x_train,
                y_train,
                features_by_layer_test[layer],
                y_test,
                x_val=x_val,
                y_val=y_val,
                c_grid=c_grid,
                refine_steps=refine_steps,
                val_fraction=val_fraction,
                seed=seed,
                tol=tol,
                max_iter=max_iter,
            )
        except ValueError as error:
            raise ValueError(f"layer {layer!r}: {error}") from error
    best_layer = max(per_layer, key=lambda layer: per_layer[layer]["val_accuracy"])
    return {
        "per_layer": per_layer,
        "best_layer": best_layer,
        "best_test_accuracy": per_layer[best_layer]["test_accuracy"],
        "best_val_accuracy": per_layer[best_layer]["val_accuracy"],
    }


# ----------------------------------------------------------------------------------------------
# Few-shot ridge regression


def fewshot_indices(labels_N: Any, shots: int, seed: int) -> np.ndarray:
    """Indices of ``shots`` examples of every class in ``labels_N``, drawn with ``seed``.

    The draw for ``(shots, seed)`` is deterministic and independent of the other draws.
    Raises ``ValueError`` if some class has fewer than ``shots`` examples.
    """
    labels_N = np.asarray(labels_N)
    if int(shots) != shots or shots < 1:
        raise ValueError(f"shots must be a positive integer, got {shots!r}.")
    classes, counts = np.unique(labels_N, return_counts=True)
    short = counts < shots
    if short.any():
        worst = int(np.argmin(counts))
        raise ValueError(
            f"a {shots}-shot draw needs {shots} training examples of every class, but "
            f"{int(short.sum())} class(es) have fewer (class {classes[worst].item()!r} has "
            f"{counts[worst]}); use fewer shots or pass more training examples."
        )
    rng = np.random.default_rng([int(seed), int(shots)])
    picks = [rng.choice(np.flatnonzero(labels_N == label), size=shots, replace=False) for label in classes]
    return np.concatenate(picks)


def fit_ridge(x_nD: jax.Array, targets_nK: jax.Array, l2: float | jax.Array) -> tuple[jax.Array, jax.Array]:
    """Closed-form ridge regression with an unregularised bias: ``(w_DK, b_K)``.

    Minimises ``||x W + b - targets||^2 + l2 ||W||^2``. Uses the dual (kernel) form
    ``W = X^T (X X^T + l2 I)^-1 T`` when there are fewer examples than dimensions and the
    primal form ``W = (X^T X + l2 I)^-1 X^T T`` otherwise; both give the same ``W``.
    """
    num_examples, feature_dim = x_nD.shape
    x_mean_D = jnp.mean(x_nD, axis=0)
    target_mean_K = jnp.mean(targets_nK, axis=0)
    centred_nD = x_nD - x_mean_D
    centred_targets_nK = targets_nK - target_mean_K
    if num_examples < feature_dim:
        kernel_nn = centred_nD @ centred_nD.T + l2 * jnp.eye(num_examples, dtype=x_nD.dtype)
        dual_nK = jax.scipy.linalg.solve(kernel_nn, centred_targets_nK, assume_a="pos")
        w_DK = centred_nD.T @ dual_nK
    else:
        gram_DD = centred_nD.T @ centred_nD + l2 * jnp.eye(feature_dim, dtype=x_nD.dtype)
        w_DK = jax.scipy.linalg.solve(gram_DD, centred_nD.T @ centred_targets_nK, assume_a="pos")
    return w_DK, target_mean_K - x_mean_D @ w_DK


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _ridge_accuracies(
    x_SnD: jax.Array,
    labels_Sn: jax.Array,
    x_test_MD: jax.Array,
    labels_test_M: jax.Array,
    l2: jax.Array,
    *,
    num_classes: int,
) -> jax.Array:
    def accuracy(x_nD, labels_n):
        mean_D, scale_D = _standardisation(x_nD, jnp.ones(x_nD.shape[0], jnp.float32))
        targets_nK = jax.nn.one_hot(labels_n, num_classes, dtype=jnp.float32)
        w_DK, b_K = fit_ridge(_standardise(x_nD, mean_D, scale_D), targets_nK, l2)
        predictions_M = jnp.argmax(_standardise(x_test_MD, mean_D, scale_D) @ w_DK + b_K, axis=1)
        return jnp.mean((predictions_M == labels_test_M).astype(jnp.float32))

    return jax.vmap(accuracy)(x_SnD, labels_Sn)


def fewshot_ridge(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    shots: Sequence[int] = DEFAULT_FEWSHOT_SHOTS,
    seeds: Sequence[int] = DEFAULT_FEWSHOT_SEEDS,
    l2: float | None = None,
) -> dict[str, Any]:
    """Few-shot accuracy of a closed-form ridge probe onto one-hot targets.

    For each ``k`` in ``shots`` and each seed, ``k`` examples of every class are drawn from the
    training pool (``fewshot_indices``), a ridge regression is solved in closed form and the
    argmax of its outputs is scored on the whole test set. Features are standardised with the
    mean and standard deviation of that draw of ``k`` per class (nothing else of the training pool
    is read), so ``l2`` is on the scale of standardised features, whose squared norm is about the
    feature dimension ``D``;
    the default ``l2=None`` uses ``l2 = D``. Returns a JSON-serialisable dict
    ``{"shots": {str(k): {"mean_accuracy", "std_accuracy", "accuracy_per_seed"}}, "l2",
    "seeds", "num_classes"}``; accuracies are fractions and ``std_accuracy`` is over seeds.
    """
    x_train = _as_features(x_train, "x_train")
    y_train = _as_labels(y_train, x_train.shape[0], "y_train", "x_train")
    x_test = _as_features(x_test, "x_test")
    y_test = _as_labels(y_test, x_test.shape[0], "y_test", "x_test")
    _check_same_dim(x_train, x_test, "x_train", "x_test")
    classes = _class_ids(y_train, "y_train")
    if l2 is None:
        l2 = float(x_train.shape[1])
    if not (math.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a positive, finite number, got {l2!r}.")
    seeds = [int(seed) for seed in seeds]
    if not seeds or not shots:
        raise ValueError(
            f"shots and seeds must be non-empty, got shots={shots!r}, seeds={seeds!r}; "
            "e.g. shots=(1, 5), seeds=(0,)."
        )
    labels_train_N = _encode_labels(y_train, classes)
    x_train_j = jnp.asarray(x_train)
    x_test_j = jnp.asarray(x_test)
    labels_test_M = jnp.asarray(_encode_labels(y_test, classes))

    per_shot: dict[str, dict[str, Any]] = {}
    for k in shots:
        rows_Sn = np.stack([fewshot_indices(y_train, k, seed) for seed in seeds])
        accuracy_S = _ridge_accuracies(
            x_train_j[rows_Sn],
            jnp.asarray(labels_train_N[rows_Sn]),
            x_test_j,
            labels_test_M,
            jnp.asarray(l2, jnp.float32),
            num_classes=int(classes.size),
        )
        accuracies = [float(a) for a in np.asarray(accuracy_S)]
        per_shot[str(int(k))] = {
            "mean_accuracy": float(np.mean(accuracies)),
            "std_accuracy": float(np.std(accuracies)),
            "accuracy_per_seed": accuracies,
        }
    return {
        "shots": per_shot,
        "l2": float(l2),
        "seeds": seeds,
        "num_classes": int(classes.size),
    }
