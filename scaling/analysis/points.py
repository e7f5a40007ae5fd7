"""Compute points of sweeps: loading results tables, choosing the metric, trained points, frontiers.

Points are grouped into series by objective (and caption level, where an objective ran at several). A
metric is an error (lower is better): ``<name>_error`` is 1 - the table's ``<name>_accuracy`` column
(``probe_error`` from ``probe_accuracy``, per layer with ``layer``), any other name is a column as it is
(e.g. ``val_loss``). Each point carries its test-set noise (``error_sd``, from the accuracy's 95% interval)
and its run's initialisation baseline (``init_error``, from the run's ``init`` record). Only trained points
make frontiers: honest (end of a schedule, or a cool-down branch), at least ``min_steps`` optimizer steps,
and below their run's init error by more than their own 95% interval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from scaling.errors import ConfigError
from scaling.sweeps.results import INIT_NAME, RESULTS_NAME, build_table, read_table, write_table
from scaling.workdir import COOLDOWN_BRANCH, HONEST_POINTS, INIT

PROBE = "probe_accuracy"
PIXEL = "pixel_probe_accuracy"  # raw-pixel probe of the same examples (scaling.evaluation.pixel_reference)
INTERVAL = ("_low", "_high")  # suffixes of an accuracy column's 95% bootstrap interval
Z95 = 1.96  # half a 95% interval in standard deviations
MIN_STEPS = 100  # optimizer steps a point needs to count as trained (``--min-steps``)
POINT_FIELDS = ["sweep", "run_id", "objective", "size", "seed", "budget", "caption_level", "captions",
                "point", "step", "flops"]


def load_results(sweep_dirs: list[str | Path]) -> pd.DataFrame:
    """The results tables of ``sweep_dirs`` (rebuilt from run files where there are any), with a ``sweep``
    column; raises ConfigError for a folder with no results."""
    tables = []
    for sweep_dir in map(Path, sweep_dirs):
        if not sweep_dir.is_dir():
            raise ConfigError(f"{sweep_dir} is not a folder; give a sweep folder such as runs/quickstart")
        table = build_table(sweep_dir)
        if not table.empty:
            write_table(table, sweep_dir)
        elif (sweep_dir / RESULTS_NAME).is_file():
            table = read_table(sweep_dir)
        if (sweep_dir / INIT_NAME).is_file():  # init probes re-created for runs that predate them
            table = pd.concat([table, pd.read_csv(sweep_dir / INIT_NAME)], ignore_index=True).copy()
        if table.empty or "kind" not in table or not (table["kind"] == "eval").any():
            raise ConfigError(
                f"{sweep_dir} holds no eval results (no run folders with eval records, no {RESULTS_NAME}); "
                "run a sweep into it first, e.g. scaling sweep sweeps/quickstart.py"
            )
        tables.append(table.assign(sweep=sweep_dir.name))
    return pd.concat(tables, ignore_index=True)


def spent_compute(table: pd.DataFrame) -> tuple[float, float]:
    """(training FLOPs the runs spent, cool-down branches included; of which branches), from the table."""
    branch = table["point"] == COOLDOWN_BRANCH
    main = table[~branch].groupby("run_id")["flops"].max().sum()
    rows = table[branch]
    branches = (rows["flops"] * rows["cooldown_steps"] / (rows["step"] + rows["cooldown_steps"])).sum() \
        if len(rows) else 0.0
    return float(main + branches), float(branches)


def metric_column(table: pd.DataFrame, metric: str, layer: str = "best") -> tuple[str, bool]:
    """(source column, whether the metric is 1 - that column); ConfigError for one the table lacks."""
    evals = table[table["kind"] == "eval"]
    present = {column for column in evals if evals[column].notna().any()}
    if metric.endswith("_error"):
        source = metric.removesuffix("_error") + "_accuracy"
        if source == PROBE and layer != "best":
            source = f"{PROBE}/{layer}"
            if source not in present:
                layers = sorted(c.removeprefix(f"{PROBE}/") for c in present if c.startswith(f"{PROBE}/"))
                raise ConfigError(f"--layer {layer}: no such probed layer in the results; choose best or "
                                  f"one of {', '.join(layers) or '(none recorded)'}")
        if source in present:
            return source, True
    elif metric in present:
        return metric, False
    accuracies = sorted(c.removesuffix("_accuracy") + "_error" for c in present
                        if c.endswith("_accuracy") and "/" not in c)
    losses = sorted(c for c in present if c.endswith("loss"))
    raise ConfigError(f"--metric {metric}: not in the results table; choose one of "
                      f"{', '.join(accuracies + losses) or '(no eval metrics recorded)'}")


def pixel_column(probe: str) -> str:
    """The raw-pixel reference column of a probe accuracy column: ``count_probe_accuracy`` ->
    ``count_pixel_probe_accuracy``; ``probe_accuracy/layer_02`` -> ``pixel_probe_accuracy``."""
    return probe.split("/")[0].removesuffix(PROBE) + PIXEL


def floor_errors(table: pd.DataFrame, source: str) -> dict[str, float]:
    """{series: 1 - the mean raw-pixel accuracy of its probe examples} (empty without a pixel column)."""
    pixel = pixel_column(source)
    evals = series(table[(table["kind"] == "eval")])
    if pixel not in evals:
        return {}
    return (1 - evals.groupby("objective")[pixel].mean()).dropna().to_dict()


def _with_errors(evals: pd.DataFrame, source: str, complement: bool) -> pd.DataFrame:
    """POINT_FIELDS of eval rows with ``error`` (the metric) and ``error_sd`` (its test-set noise, from the
    accuracy's 95% interval; 0 without one)."""
    low, high = (evals.get(f"{source}{suffix}", pd.Series(np.nan, evals.index)) for suffix in INTERVAL)
    points = evals.reindex(columns=POINT_FIELDS).copy()
    points["error"] = 1.0 - evals[source] if complement else evals[source]
    points["error_sd"] = ((high - low) / (2 * Z95)).fillna(0.0)
    return points


def init_points(table: pd.DataFrame, metric: str, layer: str = "best") -> pd.DataFrame:
    """The init records with the metric: POINT_FIELDS, ``error`` and ``error_sd``, one row per run (runs
    that share an initialisation repeat its record)."""
    source, complement = metric_column(table, metric, layer)
    evals = table[(table["kind"] == "eval") & (table["point"] == INIT) & table[source].notna()]
    return series(_with_errors(evals, source, complement)).reset_index(drop=True)


def eval_points(table: pd.DataFrame, metric: str, layer: str = "best", min_steps: int = MIN_STEPS
                ) -> pd.DataFrame:
    """One row per eval record but the init ones: POINT_FIELDS, ``error`` and ``error_sd``, ``steps``
    (optimizer steps, a cool-down branch's included), ``init_error`` (its run's init record; NaN where that
    lacks the metric, which then goes unchecked), ``has_init`` (whether its run has an init record: without
    one no point is trained), ``honest`` and ``trained``."""
    if min_steps < 0:
        raise ConfigError(f"--min-steps {min_steps}: a number of optimizer steps cannot be negative; give 0 "
                          f"or more (default {MIN_STEPS})")
    source, complement = metric_column(table, metric, layer)
    evals = table[(table["kind"] == "eval") & table[source].notna() & (table["point"] != INIT)]
    points = _with_errors(evals, source, complement)
    cooldown = evals.get("cooldown_steps", pd.Series(0, evals.index)).fillna(0)
    points["steps"] = evals["step"] + cooldown.where(evals["point"] == COOLDOWN_BRANCH, 0)
    inits = init_points(table, metric, layer)
    points["init_error"] = points["run_id"].map(inits.groupby("run_id")["error"].first())
    points["honest"] = points["point"].isin(HONEST_POINTS)
    points["has_init"] = points["run_id"].isin(table[table["point"] == INIT]["run_id"])
    margin = points["init_error"] - (points["error"] + Z95 * points["error_sd"])
    above_init = points["has_init"] & (points["init_error"].isna() | (margin > 0))
    points["trained"] = points["honest"] & (points["steps"] >= min_steps) & above_init
    return series(points).reset_index(drop=True)


def training_captions(rows: pd.DataFrame) -> pd.Series:
    """What each row's model was trained on: ``captions`` (its caption mix, else its level), or its caption
    level in tables written before that column."""
    column = lambda name: rows[name] if name in rows else pd.Series(np.nan, index=rows.index)
    captions = column("captions")
    return captions.where(captions.notna(), column("caption_level")).astype(str)


def series(points: pd.DataFrame) -> pd.DataFrame:
    """Points whose objective ran on several training captions (levels or mixes), relabelled
    ``objective/captions``: each is a series of its own (its frontier, its fits)."""
    captions = training_captions(points)
    levels = captions.groupby(points["objective"]).transform("nunique")
    relabelled = points["objective"] + "/" + captions
    return points.assign(objective=points["objective"].where(levels <= 1, relabelled))


def frontier_mask(flops: np.ndarray, error: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B, N] bool: point i is on the lower envelope of the points present (weight > 0) in each row,
    i.e. no present point at lower or equal compute has lower or equal error (ties: the first).
    ``error`` is [N], shared by every row, or [B, N], one set of errors per row."""
    error_BN = np.broadcast_to(error, weights.shape)
    flops_BN = np.broadcast_to(flops, weights.shape)
    order = np.lexsort((error_BN, flops_BN))
    present = np.take_along_axis(weights, order, axis=1) > 0
    sorted_error = np.where(present, np.take_along_axis(error_BN, order, axis=1), np.inf)
    before = np.concatenate([np.full((len(weights), 1), np.inf),
                             np.minimum.accumulate(sorted_error, axis=1)[:, :-1]], axis=1)
    on = present & (sorted_error < before)
    mask = np.empty_like(on)
    np.put_along_axis(mask, order, on, axis=1)
    return mask


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """The trained points on each objective's lower envelope of error against compute."""
    parts = []
    for _, group in points[points["trained"]].groupby("objective"):
        on = frontier_mask(group["flops"].to_numpy(), group["error"].to_numpy(), np.ones((1, len(group))))
        parts.append(group[on[0]])
    return pd.concat(parts).sort_values(["objective", "flops"]) if parts else points.iloc[:0]


def mean_over_seeds(values) -> tuple[float, float, float]:
    """(mean, low, high) of one point's values over seeds, with the 95% Student-t interval of the mean;
    NaN bounds for a single seed (its interval is then the record's own, over held-out examples)."""
    values = np.asarray(values, float)
    mean, n = float(values.mean()), len(values)
    if n < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half
