"""Learning-rate tuning of a sweep whose runs vary ``optim.learning_rate`` (``scaling.sweeps.spec.log_grid``):
per objective, parametrisation and size, the loss and the probe error at the end of each run against log2
of its learning rate, a quadratic fitted near the best grid point, its minimum as the optimum with a
bootstrap interval, and the transfer figure (one curve per width, optimum marked).

The fit takes the best grid point and up to two neighbours on each side. A best point on the grid's edge
has no optimum: the grid must be widened (the report says so and quotes none); so has a fit whose minimum
lies beyond the rates it fits (an extrapolation), and one that curves down. The interval redraws each
point from its own noise (a probe error's test-set interval) plus the fit's residuals with random signs (a
wild bootstrap), so a fit through exactly three points of a loss (no residual, no noise estimate) reports
a zero-width interval and says it rests on three points.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scaling.analysis.points import INTERVAL, PROBE, Z95
from scaling.models.sizes import get_size
from scaling.workdir import END_OF_SCHEDULE, LATER_FIELDS

LR, PARAMETRIZATION = "optim.learning_rate", "model.parametrization"  # grid columns of a tuning sweep
WINDOW = 2  # grid neighbours on each side of the best point that the quadratic fits
TUNING_BOOTS = 400
LEVEL = 0.95
GROUP = ["objective", PARAMETRIZATION, "size"]


@dataclasses.dataclass(frozen=True)
class Optimum:
    """The optimum of one metric over one learning-rate grid; ``learning_rate`` is None when there is
    none to quote (``note`` says why)."""

    learning_rate: float | None
    low: float | None
    high: float | None
    best_grid: float
    best_value: float
    points: int  # fitted
    note: str


def is_tuning(table: pd.DataFrame) -> bool:
    """Whether any objective ran at several learning rates (a grid over ``optim.learning_rate``)."""
    return LR in table and (table.groupby("objective")[LR].nunique() > 1).any()


TAIL = 0.2  # the fraction of a run's last steps whose logged training losses are averaged


def final_train_loss(table: pd.DataFrame) -> pd.Series:
    """Per run, the mean of the training losses logged over its last ``TAIL`` of steps. In a single pass
    over the data each is the loss of a batch not yet trained on, so their mean is a held-out loss; one
    batch's loss alone is too noisy to rank learning rates whose losses differ by a few hundredths."""
    train = table[table["kind"] == "train"]
    last_step = train.groupby("run_id")["step"].transform("max")
    return train[train["step"] >= (1 - TAIL) * last_step].groupby("run_id")["loss"].mean()


def final_points(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its grid values and, at the end of its schedule, ``loss`` (validation loss, else
    ``final_train_loss``), ``probe_error`` and that error's standard deviation."""
    table = table.copy()
    if PARAMETRIZATION not in table:
        table[PARAMETRIZATION] = LATER_FIELDS[PARAMETRIZATION]
    table[PARAMETRIZATION] = table[PARAMETRIZATION].fillna(LATER_FIELDS[PARAMETRIZATION])
    ends = table[(table["kind"] == "eval") & (table["point"] == END_OF_SCHEDULE)]
    rows = ends.drop_duplicates("run_id", keep="last").set_index("run_id")
    validated = "val_loss" in rows and rows["val_loss"].notna().all()
    loss = rows["val_loss"] if validated else final_train_loss(table)
    low, high = (rows[PROBE + suffix] for suffix in INTERVAL) if PROBE + INTERVAL[0] in rows else (None, None)
    return pd.DataFrame({
        **{column: rows[column] for column in GROUP},
        "learning_rate": rows[LR].astype(float),
        "loss": loss.reindex(rows.index),
        "probe_error": 1 - rows[PROBE] if PROBE in rows else np.nan,
        "probe_error_sd": (high - low) / (2 * Z95) if low is not None else 0.0,
    }).reset_index()


def quadratic_minimum(log_lr: np.ndarray, values: np.ndarray) -> float | None:
    """The minimum of the least-squares quadratic through the points, or None when it curves down."""
    a, b, _ = np.polyfit(log_lr, values, 2)
    return -b / (2 * a) if a > 0 else None


def fit_optimum(learning_rates: np.ndarray, values: np.ndarray, sds: np.ndarray | None = None, *,
                boots: int = TUNING_BOOTS, level: float = LEVEL, seed: int = 0) -> Optimum:
    """The optimum of ``values`` (lower is better) over a learning-rate grid; see the module docstring."""
    order = np.argsort(learning_rates)
    lr, values = np.asarray(learning_rates, float)[order], np.asarray(values, float)[order]
    sds = np.zeros_like(values) if sds is None else np.nan_to_num(np.asarray(sds, float)[order])
    best = int(np.nanargmin(values))
    common = {"best_grid": float(lr[best]), "best_value": float(values[best])}
    if len(lr) < 3:
        return Optimum(None, None, None, points=len(lr), note=f"{len(lr)} learning rates: a grid needs at "
                       "least 3 to place an optimum", **common)
    if best in (0, len(lr) - 1):
        side = "lowest" if best == 0 else "highest"
        return Optimum(None, None, None, points=0, note=f"widen the grid: the best point is its {side} "
                       "learning rate", **common)
    window = slice(max(0, best - WINDOW), best + WINDOW + 1)
    x, y, sd = np.log2(lr[window]), values[window], sds[window]
    center = quadratic_minimum(x, y)
    if center is None:
        return Optimum(None, None, None, points=len(x), note="no minimum: the quadratic near the best "
                       "point curves down", **common)
    if not x[0] <= center <= x[-1]:
        return Optimum(None, None, None, points=len(x), note=f"widen the grid: the quadratic's minimum, "
                       f"{2**center:.3g}, lies beyond the rates it fits", **common)
    a, b, c = np.polyfit(x, y, 2)
    residuals = y - (a * x**2 + b * x + c)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(boots):
        redrawn = y + rng.choice([-1.0, 1.0], len(y)) * residuals + rng.normal(0.0, sd)
        minimum = quadratic_minimum(x, redrawn)
        draws.append(np.clip(minimum, x[0], x[-1]) if minimum is not None else np.nan)
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2]) if np.isfinite(draws).any() \
        else (center, center)
    exact = len(x) == 3 and not sd.any()
    note = f"{len(x)} points" + ("; exact fit, interval from no noise" if exact else "")
    return Optimum(float(2**center), float(2**low), float(2**high), points=len(x), note=note, **common)


def optima(points: pd.DataFrame, metric: str, boots: int = TUNING_BOOTS, seed: int = 0) -> pd.DataFrame:
    """One row per objective, parametrisation and size: the Optimum of ``metric`` (loss or probe_error)."""
    rows = []
    for (objective, parametrization, size), group in points.groupby(GROUP):
        group = group.dropna(subset=[metric])
        sds = group[f"{metric}_sd"].to_numpy() if f"{metric}_sd" in group else None
        optimum = fit_optimum(group["learning_rate"].to_numpy(), group[metric].to_numpy(), sds,
                              boots=boots, seed=seed)
        rows.append({"objective": objective, "parametrization": parametrization, "size": size,
                     "width": get_size(size).width, "metric": metric, "grid": len(group),
                     **dataclasses.asdict(optimum)})
    return pd.DataFrame(rows).sort_values(["metric", "objective", "parametrization", "width"])


def transfer(table: pd.DataFrame) -> pd.DataFrame:
    """Per metric, objective and parametrisation: how far the optimum moves across widths (largest over
    smallest optimum, and the same from the interval ends that widen it most), where every width has one."""
    rows = []
    for (metric, objective, parametrization), group in table.groupby(["metric", "objective",
                                                                       "parametrization"]):
        quoted = group.dropna(subset=["learning_rate"])
        moved = widest = np.nan
        if len(quoted) == len(group) >= 2:
            moved = quoted["learning_rate"].max() / quoted["learning_rate"].min()
            widest = max(quoted["high"].max() / quoted["low"].min(), 1 / (quoted["low"].max()
                                                                        / quoted["high"].min()))
        rows.append({"metric": metric, "objective": objective, "parametrization": parametrization,
                     "widths": ", ".join(map(str, group["width"])), "moved": moved, "moved_interval": widest})
    return pd.DataFrame(rows)


def _lr(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.3g}"


def tuning_lines(table: pd.DataFrame, moved: pd.DataFrame) -> list[str]:
    """The report's tuning section: the optima per metric, then how far they move across widths."""
    lines = ["## Tuning: learning rate per objective, parametrisation and width", "",
             f"Each run's end-of-schedule loss and probe error against log2 of its learning rate; a "
             f"quadratic fitted to the best grid point and up to {WINDOW} neighbours each side; its minimum "
             f"with a {100 * LEVEL:.0f}% bootstrap interval (each point redrawn from its own test-set noise "
             "and the fit's residuals with random signs). A best point on the grid's edge quotes no "
             "optimum: widen the grid.", "",
             "| metric | objective | parametrization | width | grid points | best on grid | value | "
             "optimum [interval] | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        optimum = (f"{_lr(r.learning_rate)} [{_lr(r.low)}, {_lr(r.high)}]" if r.learning_rate is not None
                   and np.isfinite(r.learning_rate) else "-")
        lines.append(f"| {r.metric} | {r.objective} | {r.parametrization} | {r.width} | {r.grid} | "
                     f"{_lr(r.best_grid)} | {r.best_value:.4g} | {optimum} | {r.note} |")
    lines += ["", "How far the optimum moves from the narrowest to the widest model (largest over smallest "
              "optimum; with intervals, the same from the interval ends that widen it most; - where a "
              "width has no optimum):", "", "| metric | objective | parametrization | widths | moved | with "
              "intervals |", "| --- | --- | --- | --- | --- | --- |"]
    ratio = lambda value: "-" if _lr(value) == "-" else f"{_lr(value)}x"
    lines += [f"| {r.metric} | {r.objective} | {r.parametrization} | {r.widths} | {ratio(r.moved)} | "
              f"{ratio(r.moved_interval)} |" for r in moved.itertuples()]
    return [*lines, ""]


def transfer_figure(points: pd.DataFrame, table: pd.DataFrame, path: Path) -> list[Path]:
    """Per metric, a grid of panels (objective x parametrisation): the metric against the learning rate,
    one curve per width, each width's optimum marked by a star (none where it has no optimum)."""
    drawn = []
    for metric, fitted in table.groupby("metric"):
        objectives, kinds = sorted(fitted["objective"].unique()), sorted(fitted["parametrization"].unique())
        figure = Figure(figsize=(3.2 * len(objectives), 2.8 * len(kinds)))
        axes = figure.subplots(len(kinds), len(objectives), squeeze=False, sharex=True)
        for (row, kind), (column, objective) in itertools.product(enumerate(kinds), enumerate(objectives)):
            ax = axes[row][column]
            runs = points[(points["objective"] == objective) & (points[PARAMETRIZATION] == kind)]
            for i, (size, curve) in enumerate(sorted(runs.groupby("size"),
                                                     key=lambda item: get_size(item[0]).width)):
                curve = curve.sort_values("learning_rate")
                ax.plot(curve["learning_rate"], curve[metric], "o-", color=f"C{i}",
                        label=f"width {get_size(size).width}")
                best = fitted[(fitted["objective"] == objective) & (fitted["parametrization"] == kind)
                              & (fitted["size"] == size)]
                if len(best) and best["learning_rate"].notna().all():
                    optimum = best.iloc[0]
                    ax.plot([optimum["learning_rate"]], [optimum["best_value"]], "*", color=f"C{i}",
                            markersize=14, markeredgecolor="black")
            ax.set_xscale("log")
            ax.set_title(f"{objective}, {kind}", fontsize=9)
            ax.set_xlabel("learning rate")
            ax.set_ylabel(metric)
            ax.legend(fontsize=7)
        figure.tight_layout()
        out = path.with_name(f"{path.name}_{metric}.png")
        figure.savefig(out, dpi=120)
        drawn.append(out)
    return drawn


def tuning(table: pd.DataFrame, out: Path, boots: int = TUNING_BOOTS, seed: int = 0) -> tuple[list[Path],
                                                                                                list[str]]:
    """The tuning section's files (optima CSV, transfer figures) in ``out`` and its report lines; nothing
    for a table without a learning-rate grid."""
    if not is_tuning(table):
        return [], []
    points = final_points(table)
    fitted = pd.concat([optima(points, metric, boots, seed) for metric in ("loss", "probe_error")
                        if points[metric].notna().any()], ignore_index=True)
    moved = transfer(fitted)
    fitted.to_csv(out / "lr_optima.csv", index=False)
    return [out / "lr_optima.csv", *transfer_figure(points, fitted, out / "lr_transfer")], \
        tuning_lines(fitted, moved)
