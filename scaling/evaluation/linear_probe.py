"""The linear-probe protocol of CLIP (Radford et al. 2021, appendix A.3) on frozen features.

``select_and_evaluate`` picks ``C`` on a validation split, refits on train+validation and scores once on
test. ``C`` is searched coarse to fine: the grid (one value per decade), then ``refine_steps`` values on
each side of its best between it and its grid neighbours (a quarter decade apart by default); a best
``C`` on the grid's edge warns, as the optimum may lie beyond it. Consecutive values of ``C`` are
warm-started. ``probe_layers`` runs the protocol on every layer of a feature dict.

Features are standardised with the mean and standard deviation of the examples a probe is fitted on;
validation and test features reuse those statistics. Results are plain dicts of Python floats, ints,
strings and lists, ready for ``json.dumps``. The solver is scaling.evaluation.logistic; few-shot ridge
probes are in scaling.evaluation.fewshot. Array names as in scaling.evaluation.probe_inputs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.evaluation.logistic import (
    DEFAULT_SOLVER,
    FitData,
    LogisticProbe,
    SolverOptions,
    accuracy,
    fit_prepared,
    prepare_fit_data,
    probe_accuracy,
)
from scaling.evaluation.probe_inputs import (
    as_features,
    as_labels,
    check_c_grid,
    check_layer_names,
    check_same_dim,
    class_ids,
    encode_labels,
)

DEFAULT_C_GRID: tuple[float, ...] = tuple(10.0**e for e in range(-6, 3))
"""Regularisation values swept by default: 1e-6, 1e-5, ..., 1e2 (one per decade)."""

DEFAULT_REFINE_STEPS = 3
"""Values tried between the best grid C and each neighbour: 3 puts them a quarter decade apart."""


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
    data: FitData,
    x_val_MD: np.ndarray,
    labels_val_M: np.ndarray,
    c_grid: tuple[float, ...],
    solver: SolverOptions,
    init: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[dict[float, float], dict[float, LogisticProbe]]:
    """Fit every C in ascending order, the first from ``init``, each next one warm-started from the
    previous solution."""
    x_val_MD = jnp.asarray(x_val_MD)
    labels_val_M = jnp.asarray(labels_val_M)
    accuracy_per_C: dict[float, float] = {}
    probe_per_C: dict[float, LogisticProbe] = {}
    for C in sorted(c_grid):
        probe = fit_prepared(data, C, solver, init)
        init = (probe.weights, probe.bias)
        accuracy_per_C[C] = float(accuracy(probe, x_val_MD, labels_val_M))
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
        class_ids(y_train, "y_train")
        fit_mask_N = np.ones(y_train.shape, bool)
        fit_mask_N[stratified_holdout(y_train, val_fraction, seed)[1]] = False
        return x_train, y_train, fit_mask_N
    x_val = as_features(x_val, "x_val")
    y_val = as_labels(y_val, x_val.shape[0], "y_val", "x_val")
    check_same_dim(x_train, x_val, "x_train", "x_val")
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
    solver: SolverOptions = DEFAULT_SOLVER,
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
    x_train = as_features(x_train, "x_train")
    y_train = as_labels(y_train, x_train.shape[0], "y_train", "x_train")
    x_test = as_features(x_test, "x_test")
    y_test = as_labels(y_test, x_test.shape[0], "y_test", "x_test")
    check_same_dim(x_train, x_test, "x_train", "x_test")
    c_values = check_c_grid(c_grid)
    if int(refine_steps) != refine_steps or refine_steps < 0:
        raise ValueError(
            f"refine_steps must be a non-negative integer, got {refine_steps!r}; 0 fits c_grid only."
        )

    x_all, y_all, fit_mask_N = _selection_split(x_train, y_train, x_val, y_val, val_fraction, seed)
    classes = class_ids(y_all[fit_mask_N], "y_train")
    labels_N = encode_labels(y_all, classes)
    x_all = jnp.asarray(x_all)
    val_rows = np.flatnonzero(~fit_mask_N)

    fit_data = prepare_fit_data(x_all, labels_N, classes.size, fit_mask_N)
    accuracy_per_C, probe_per_C = _sweep_c(
        fit_data,
        x_all[val_rows],
        labels_N[val_rows],
        c_values,
        solver,
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
            solver,
            init=(probe_per_C[start].weights, probe_per_C[start].bias),
        )
        accuracy_per_C.update(fine_accuracy)
        probe_per_C.update(fine_probes)
    del fit_data
    best_C = _best_c(accuracy_per_C)
    on_edge = _warn_if_on_edge(best_C, c_values)

    selected = probe_per_C[best_C]
    refit = fit_prepared(
        prepare_fit_data(x_all, labels_N, classes.size, labels_N >= 0),
        best_C,
        solver,
        init=(selected.weights, selected.bias),
    )
    return {
        "test_accuracy": probe_accuracy(refit, x_test, encode_labels(y_test, classes)),
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
        "refit_converged": bool(float(refit.grad_max_abs) <= solver.tol),
    }


def probe_layers(
    features_by_layer_train: Mapping[str, Any],
    y_train: Any,
    features_by_layer_test: Mapping[str, Any],
    y_test: Any,
    *,
    features_by_layer_val: Mapping[str, Any] | None = None,
    y_val: Any = None,
    **protocol: Any,
) -> dict[str, Any]:
    """Run ``select_and_evaluate`` on every layer of a feature dict; ``protocol`` holds its keywords
    (``c_grid``, ``refine_steps``, ``val_fraction``, ``seed``, ``solver``), the same for every layer.

    Returns ``{"per_layer": {name: result}, "best_layer": name, "best_test_accuracy": float,
    "best_val_accuracy": float}``. The best layer is the one with the highest validation
    accuracy (ties: the first in the dict's order), so choosing it never looks at test labels;
    ``best_test_accuracy`` is that layer's test accuracy. Every layer uses the same validation
    split. Layers with equal shapes share one compiled solver.
    """
    if not features_by_layer_train:
        raise ValueError("features_by_layer_train is empty; pass at least one layer.")
    check_layer_names(
        features_by_layer_train,
        features_by_layer_test,
        "features_by_layer_train",
        "features_by_layer_test",
    )
    if features_by_layer_val is not None:
        check_layer_names(
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
                **protocol,
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
