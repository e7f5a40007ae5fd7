"""Few-shot probes: closed-form ridge regression onto one-hot targets from ``k`` examples per class,
cheap enough to run inside a training loop. Features are standardised with the mean and standard
deviation of the ``k`` per class drawn. Array names as in scaling.evaluation.probe_inputs (``n`` the rows
of one draw, ``S`` the draws, one per seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scaling.evaluation.probe_inputs import (
    as_features,
    as_labels,
    check_same_dim,
    class_ids,
    encode_labels,
    standardisation,
    standardise,
)

DEFAULT_FEWSHOT_SHOTS: tuple[int, ...] = (1, 5, 10, 25)
DEFAULT_FEWSHOT_SEEDS: tuple[int, ...] = (0, 1, 2)


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
        mean_D, scale_D = standardisation(x_nD, jnp.ones(x_nD.shape[0], jnp.float32))
        targets_nK = jax.nn.one_hot(labels_n, num_classes, dtype=jnp.float32)
        w_DK, b_K = fit_ridge(standardise(x_nD, mean_D, scale_D), targets_nK, l2)
        w_DK, b_K = w_DK / scale_D[:, None], b_K - (mean_D / scale_D) @ w_DK  # reads x_test unstandardised
        predictions_M = jnp.argmax(x_test_MD @ w_DK + b_K, axis=1)
        return jnp.mean((predictions_M == labels_test_M).astype(jnp.float32))

    # one draw after another: vmapped, every draw's [M, K] test scores would be live at once
    return jax.lax.map(lambda draw: accuracy(*draw), (x_SnD, labels_Sn))


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
    x_train = as_features(x_train, "x_train")
    y_train = as_labels(y_train, x_train.shape[0], "y_train", "x_train")
    x_test = as_features(x_test, "x_test")
    y_test = as_labels(y_test, x_test.shape[0], "y_test", "x_test")
    check_same_dim(x_train, x_test, "x_train", "x_test")
    classes = class_ids(y_train, "y_train")
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
    labels_train_N = encode_labels(y_train, classes)
    x_train_j = jnp.asarray(x_train)
    x_test_j = jnp.asarray(x_test)
    labels_test_M = jnp.asarray(encode_labels(y_test, classes))

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
