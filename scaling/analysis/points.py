"""Compute points of sweeps: loading results tables, choosing the metric, honest points, frontiers.

Points are grouped into series by objective (and caption level, where an objective ran at several). A
metric is an error (lower is better): ``<name>_error`` is 1 - the table's ``<name>_accuracy`` column
(``probe_error`` from ``probe_accuracy``, per layer with ``layer``), any other name is a column as it is
(e.g. ``val_loss``). Only honest points (end of a schedule, or a cool-down branch) make frontiers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scaling.config import ConfigError
from scaling.sweeps.results import RESULTS_NAME, build_table, read_table, write_table
from scaling.workdir import COOLDOWN_BRANCH, HONEST_POINTS

PROBE = "probe_accuracy"
PIXEL = "pixel_probe_accuracy"  # raw-pixel probe of the same examples (scaling.evaluation.pixel_reference)
INTERVAL = ("_low", "_high")  # suffixes of an accuracy column's 95% bootstrap interval
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


def eval_points(table: pd.DataFrame, metric: str, layer: str = "best") -> pd.DataFrame:
    """One row per eval record: POINT_FIELDS, ``error`` (the metric) and ``honest``."""
    source, complement = metric_column(table, metric, layer)
    evals = table[(table["kind"] == "eval") & table[source].notna()]
    points = evals.reindex(columns=POINT_FIELDS).copy()
    points["error"] = 1.0 - evals[source] if complement else evals[source]
    points["honest"] = points["point"].isin(HONEST_POINTS)
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
    i.e. no present point at lower or equal compute has lower or equal error (ties: the first)."""
    order = np.lexsort((error, flops))
    present = weights[:, order] > 0
    sorted_error = np.where(present, error[order], np.inf)
    before = np.concatenate([np.full((len(weights), 1), np.inf),
                             np.minimum.accumulate(sorted_error, axis=1)[:, :-1]], axis=1)
    on = present & (sorted_error < before)
    mask = np.empty_like(on)
    mask[:, order] = on
    return mask


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """The honest points on each objective's lower envelope of error against compute."""
    parts = []
    for _, group in points[points["honest"]].groupby("objective"):
        on = frontier_mask(group["flops"].to_numpy(), group["error"].to_numpy(), np.ones((1, len(group))))
        parts.append(group[on[0]])
    return pd.concat(parts).sort_values(["objective", "flops"]) if parts else points.iloc[:0]
