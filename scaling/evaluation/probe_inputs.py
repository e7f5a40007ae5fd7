"""Input checks and standardisation shared by the linear probes (logistic and few-shot ridge).

Array names: N rows a probe is fitted on, M rows it scores, D feature dimension, K classes. Every check
raises ``ValueError`` naming the argument, what is wrong and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_features(x: Any, name: str) -> np.ndarray:
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


def as_labels(y: Any, num_examples: int, name: str, features_name: str) -> np.ndarray:
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


def check_same_dim(x_ND: np.ndarray, other_MD: np.ndarray, name: str, other_name: str) -> None:
    if x_ND.shape[1] != other_MD.shape[1]:
        raise ValueError(
            f"{other_name} has feature dimension {other_MD.shape[1]} but {name} has "
            f"{x_ND.shape[1]}; both must come from the same layer of the same model."
        )


def class_ids(y_train_N: np.ndarray, name: str) -> np.ndarray:
    classes = np.unique(y_train_N)
    if classes.size < 2:
        raise ValueError(
            f"{name} contains {classes.size} distinct class(es) ({classes.tolist()}); a "
            "classifier needs at least 2. Check that the labels were loaded correctly."
        )
    return classes


def encode_labels(y_N: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Map labels to 0..K-1; labels unseen in training map to -1 and never count as correct."""
    position_N = np.clip(np.searchsorted(classes, y_N), 0, classes.size - 1)
    return np.where(classes[position_N] == y_N, position_N, -1)


def check_c_grid(c_grid: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(c) for c in np.ravel(np.asarray(c_grid, dtype=np.float64)))
    if not values or not all(math.isfinite(c) and c > 0 for c in values):
        raise ValueError(
            f"c_grid must be a non-empty sequence of positive, finite values, got {c_grid!r}; "
            "e.g. c_grid=(1e-4, 1e-2, 1.0)."
        )
    return values


def check_layer_names(
    reference: Mapping[str, Any], other: Mapping[str, Any], name: str, other_name: str
) -> None:
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    if missing or extra:
        raise ValueError(
            f"{other_name} must have the same layers as {name}; missing {missing}, "
            f"unexpected {extra}. Extract every split with the same feature layers."
        )


@jax.jit
def standardisation(x_ND: jax.Array, weights_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted per-feature mean and standard deviation (1 where a feature is constant)."""
    total = jnp.sum(weights_N)
    mean_D = weights_N @ x_ND / total
    std_D = jnp.sqrt(weights_N @ jnp.square(x_ND - mean_D) / total)
    scale_D = jnp.where(std_D > 1e-12 * (1.0 + jnp.abs(mean_D)), std_D, 1.0)
    return mean_D, scale_D


@jax.jit
def standardise(x_ND: jax.Array, mean_D: jax.Array, scale_D: jax.Array) -> jax.Array:
    return (x_ND - mean_D) / scale_D
