"""Benchmark: the full linear-probe C sweep in JAX versus scikit-learn, same data, same protocol.

Both sides run the CLIP protocol of ``scaling.evaluation.linear_probe.select_and_evaluate`` on
the same synthetic features (class-conditional Gaussians with a power-law covariance, by
default 50,000 train and 10,000 test rows of dimension 768, 10 classes): hold out the same
stratified 20% of train, fit one probe per C of the default grid, pick the C with the best
validation accuracy, refit on all of train, score on test. scikit-learn uses
``StandardScaler`` + ``LogisticRegression(solver="lbfgs", C=C, tol=1e-4, max_iter=1000)``.

Our first call includes every JAX compilation; a second call in the same process is reported
as the warm time. Each of our probes is reported with the process's peak resident memory during it
(Linux: the high-water mark ``VmHWM`` reset through ``/proc/self/clear_refs`` before the call) and the
compiled solver's own memory (XLA's ``memory_analysis()``: arguments, outputs, temporaries), and the 10-
and 25-shot ridge probes of ``scaling.evaluation.fewshot`` are timed the same way. At ImageNet's probe
shape, with classes that a linear probe separates in part: ``--num-classes 1000 --dim 1024 --num-train 50000
--num-test 50000 --separation 0.4 --signal-rank 256 --skip-sklearn --skip-plain --skip-warm``.
Run ``python benchmarks/probe.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from scaling.evaluation import fewshot, logistic
from scaling.evaluation import linear_probe as lp
from scaling.evaluation.logistic import SolverOptions

MiB = 2**20


def make_features(
    num_train: int,
    num_test: int,
    dim: int,
    num_classes: int,
    *,
    separation: float,
    signal_rank: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping class-conditional Gaussians in float32, shaped like pooled network features.

    The shared noise covariance has a power-law spectrum in a random basis (most variance in a
    few directions); the class means differ along ``signal_rank`` of those directions, spread
    over strong and weak ones; every feature has a positive offset.
    """
    rng = np.random.default_rng(seed)
    basis_DD = np.linalg.qr(rng.normal(size=(dim, dim)))[0].astype(np.float32)
    std_D = (3.0 / np.sqrt(1.0 + np.arange(dim))).astype(np.float32)
    signal_dims = rng.choice(dim, size=signal_rank, replace=False)
    means_KD = np.zeros((num_classes, dim), np.float32)
    means_KD[:, signal_dims] = separation * std_D[signal_dims] * rng.normal(size=(num_classes, signal_rank))
    means_KD = means_KD @ basis_DD.T + (2.0 + rng.normal(size=dim)).astype(np.float32)

    def draw(num_examples):
        labels_N = rng.integers(num_classes, size=num_examples)
        noise_ND = rng.normal(size=(num_examples, dim)).astype(np.float32) * std_D
        return noise_ND @ basis_DD.T + means_KD[labels_N], labels_N

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return x_train, y_train, x_test, y_test


def sklearn_fit(x_ND: np.ndarray, y_N: np.ndarray, C: float, tol: float, max_iter: int):
    scaler = StandardScaler().fit(x_ND)
    model = LogisticRegression(C=C, tol=tol, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scaler.transform(x_ND), y_N)
    return scaler, model


def sklearn_protocol(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    c_grid: tuple[float, ...],
    *,
    timed_grid: tuple[float, ...],
    val_fraction: float,
    seed: int,
    tol: float,
    max_iter: int,
) -> dict:
    """The same protocol with scikit-learn, fitting only the C values in ``timed_grid``.

    When ``timed_grid`` is a subset, the selection time is extrapolated as
    ``measured * len(c_grid) / len(timed_grid)`` and C is selected among the timed values.
    """
    fit_rows, val_rows = lp.stratified_holdout(y_train, val_fraction, seed)
    seconds_per_C, val_accuracy_per_C = {}, {}
    for C in timed_grid:
        start = time.perf_counter()
        scaler, model = sklearn_fit(x_train[fit_rows], y_train[fit_rows], C, tol, max_iter)
        seconds_per_C[C] = time.perf_counter() - start
        val_accuracy_per_C[C] = model.score(scaler.transform(x_train[val_rows]), y_train[val_rows])
        print(f"  sklearn C={C:g}: {seconds_per_C[C]:.1f} s, val acc {val_accuracy_per_C[C]:.4f}", flush=True)
    best = max(val_accuracy_per_C.values())
    best_C = min(C for C, accuracy in val_accuracy_per_C.items() if accuracy == best)
    start = time.perf_counter()
    scaler, model = sklearn_fit(x_train, y_train, best_C, tol, max_iter)
    refit_seconds = time.perf_counter() - start
    test_accuracy = model.score(scaler.transform(x_test), y_test)
    selection_seconds = sum(seconds_per_C.values()) * len(c_grid) / len(timed_grid)
    return {
        "seconds": selection_seconds + refit_seconds,
        "extrapolated": len(timed_grid) < len(c_grid),
        "best_C": best_C,
        "test_accuracy": test_accuracy,
        "refit_seconds": refit_seconds,
    }


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_rss_bytes() -> int:
    """The process's resident-memory high-water mark (VmHWM)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def measured(function, *args, **kwargs):
    """(result, seconds, peak resident bytes during the call, resident bytes before it)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size
    before = peak_rss_bytes()
    result, seconds = timed(function, *args, **kwargs)
    return result, seconds, peak_rss_bytes(), before


def compiled_memory(compiled) -> str:
    """XLA's memory analysis of a compiled function, in MiB."""
    analysis = compiled.memory_analysis()
    sizes = (analysis.argument_size_in_bytes, analysis.output_size_in_bytes, analysis.temp_size_in_bytes)
    arguments, outputs, temporaries = (size / MiB for size in sizes)
    return f"arguments {arguments:.0f} MiB, outputs {outputs:.0f} MiB, temporaries {temporaries:.0f} MiB"


def solver_memory(num_rows: int, dim: int, num_classes: int, solver: SolverOptions) -> str:
    """The memory analysis of the compiled L-BFGS solve the C sweep runs once per C."""
    data = jax.eval_shape(functools.partial(logistic._prepare, num_classes=num_classes),
                          jax.ShapeDtypeStruct((num_rows, dim), jnp.float32),
                          jax.ShapeDtypeStruct((num_rows,), jnp.int32),
                          jax.ShapeDtypeStruct((num_rows,), jnp.float32))
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    lowered = logistic._solve.lower(data, jax.ShapeDtypeStruct((dim, num_classes), jnp.float32),
                                    jax.ShapeDtypeStruct((num_classes,), jnp.float32), scalar, scalar,
                                    max_iter=solver.max_iter, precondition=solver.precondition)
    return compiled_memory(lowered.compile())


def ridge_memory(shots: int, seeds: int, num_test: int, dim: int, num_classes: int) -> str:
    """The memory analysis of the compiled few-shot ridge probe (every seed of one shot count)."""
    rows = shots * num_classes
    lowered = fewshot._ridge_accuracies.lower(
        jax.ShapeDtypeStruct((seeds, rows, dim), jnp.float32), jax.ShapeDtypeStruct((seeds, rows), jnp.int32),
        jax.ShapeDtypeStruct((num_test, dim), jnp.float32), jax.ShapeDtypeStruct((num_test,), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.float32), num_classes=num_classes)
    return compiled_memory(lowered.compile())


def report_fewshot(x_train, y_train, x_test, y_test, shots: tuple[int, ...]) -> None:
    seeds = len(fewshot.DEFAULT_FEWSHOT_SEEDS)
    for k in shots:
        result, seconds, peak, before = measured(fewshot.fewshot_ridge, x_train, y_train, x_test, y_test,
                                                 shots=(k,))
        accuracy = result["shots"][str(k)]["mean_accuracy"]
        print(f"{k}-shot ridge ({seeds} seeds, {k * int(y_train.max() + 1)} rows each): {seconds:.1f} s "
              f"including compilation, peak resident {peak / MiB:.0f} MiB ({(peak - before) / MiB:+.0f} MiB "
              f"over the {before / MiB:.0f} MiB before); mean test acc {accuracy:.4f}; compiled: "
              f"{ridge_memory(k, seeds, len(y_test), x_train.shape[1], int(y_train.max() + 1))}", flush=True)


def evenly_spaced_subset(values: tuple[float, ...], count: int | None) -> tuple[float, ...]:
    if count is None or count >= len(values):
        return values
    picks = np.unique(np.round(np.linspace(0, len(values) - 1, count)).astype(int))
    return tuple(values[i] for i in picks)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--num-test", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--separation", type=float, default=0.2, help="class-mean spread")
    parser.add_argument("--signal-rank", type=int, default=64,
                        help="feature directions the class means differ along (1,000 classes: 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4, help="gradient tolerance, both sides")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument(
        "--sklearn-grid-points",
        type=int,
        default=None,
        help="time scikit-learn on this many evenly spaced grid values and extrapolate the "
        "selection time (default: the full grid, 5 to 12 minutes at the default size on 2 cores)",
    )
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--skip-warm", action="store_true", help="time our C sweep once (cold) only")
    parser.add_argument("--fewshot", type=int, nargs="*", default=[10, 25],
                        help="shot counts of the few-shot ridge probes to time (none: skip)")
    parser.add_argument(
        "--skip-plain", action="store_true", help="skip timing L-BFGS without the preconditioner"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    c_grid = lp.DEFAULT_C_GRID
    x_train, y_train, x_test, y_test = make_features(
        args.num_train,
        args.num_test,
        args.dim,
        args.num_classes,
        separation=args.separation,
        signal_rank=args.signal_rank,
        seed=args.seed,
    )
    print(
        f"features: train {x_train.shape}, test {x_test.shape}, {args.num_classes} classes, "
        f"float32; C grid {[format(C, 'g') for C in c_grid]}; {jax.devices()[0].platform} backend"
    )
    solver = SolverOptions(tol=args.tol, max_iter=args.max_iter)
    protocol = {"c_grid": c_grid, "seed": args.seed, "solver": solver}

    ours, ours_cold, peak, before = measured(lp.select_and_evaluate, x_train, y_train, x_test, y_test,
                                             **protocol)
    warm = ""
    if not args.skip_warm:
        ours_again, ours_warm = timed(lp.select_and_evaluate, x_train, y_train, x_test, y_test, **protocol)
        assert ours_again["test_accuracy"] == ours["test_accuracy"]
        warm = f", {ours_warm:.2f} s warm"
    print(
        f"ours (JAX, preconditioned L-BFGS): {ours_cold:.2f} s including compilation{warm}; best C "
        f"{ours['best_C']:g}, test acc {ours['test_accuracy']:.4f}; iterations per C "
        f"{list(ours['iterations_per_C'].values())}, refit {ours['refit_iterations']}"
    )
    features = (x_train.nbytes + x_test.nbytes) / MiB
    print(f"  peak resident memory {peak / MiB:.0f} MiB ({(peak - before) / MiB:+.0f} MiB over the "
          f"{before / MiB:.0f} MiB before, which hold {features:.0f} MiB of features); compiled solve per C: "
          f"{solver_memory(len(y_train), args.dim, args.num_classes, solver)}", flush=True)
    report_fewshot(x_train, y_train, x_test, y_test, tuple(args.fewshot))
    if not args.skip_plain:
        plain, plain_seconds = timed(
            lp.select_and_evaluate, x_train, y_train, x_test, y_test,
            **{**protocol, "solver": dataclasses.replace(solver, precondition=False)},
        )
        print(
            f"ours without the preconditioner (plain optax L-BFGS): {plain_seconds:.2f} s including "
            f"compilation; test acc {plain['test_accuracy']:.4f}; iterations per C "
            f"{list(plain['iterations_per_C'].values())}, refit {plain['refit_iterations']}"
        )
    if args.skip_sklearn:
        return

    timed_grid = evenly_spaced_subset(c_grid, args.sklearn_grid_points)
    print(f"scikit-learn on {len(timed_grid)} of {len(c_grid)} grid values:", flush=True)
    reference = sklearn_protocol(
        x_train,
        y_train,
        x_test,
        y_test,
        c_grid,
        timed_grid=timed_grid,
        val_fraction=0.2,
        seed=args.seed,
        tol=args.tol,
        max_iter=args.max_iter,
    )
    label = "extrapolated to the full grid" if reference["extrapolated"] else "measured, full grid"
    print(
        f"scikit-learn (lbfgs): {reference['seconds']:.1f} s ({label}; refit "
        f"{reference['refit_seconds']:.1f} s); best C {reference['best_C']:g}, "
        f"test acc {reference['test_accuracy']:.4f}"
    )
    gap = 100 * (ours["test_accuracy"] - reference["test_accuracy"])
    print(
        f"speed-up (sklearn time / ours): {reference['seconds'] / ours_cold:.1f}x including compilation, "
        f"{reference['seconds'] / ours_warm:.1f}x warm; test accuracy difference {gap:+.2f} points"
    )


if __name__ == "__main__":
    main()
