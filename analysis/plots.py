"""The compute figure of a sweep: linear-probe accuracy against training FLOPs, one colour per objective.

Each run is a line through its eval points (marker = model size). Before any run has eval records the
figure shows each run's final training loss against its FLOPs instead, and says so in its title.

    python analysis/plots.py runs/quickstart     # rebuilds results.csv's table and the figure
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from scaling.models.sizes import LADDER

PROBE_METRIC = "probe_accuracy"
MARKERS = "osD^v<>ph*"


def _points(table: pd.DataFrame) -> tuple[pd.DataFrame, str, str]:
    """(points to draw, metric column, title)."""
    if PROBE_METRIC in table and table[PROBE_METRIC].notna().any():
        evals = table[(table["kind"] == "eval") & table[PROBE_METRIC].notna()]
        return evals, PROBE_METRIC, "Linear-probe accuracy vs training compute"
    train = table[table["kind"] == "train"]
    final = train.loc[train.groupby("run_id")["step"].idxmax()]
    return final, "loss", "Final train loss vs training compute (no eval records yet)"


def compute_vs_probe(table: pd.DataFrame, path: str | Path) -> Path:
    """Draws the figure from a results table (scaling.sweeps.results) into ``path``; returns it."""
    points, metric, title = _points(table)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    sizes = [size for size in LADDER if size in set(points["size"])]
    marker = {size: MARKERS[i % len(MARKERS)] for i, size in enumerate(sizes)}
    for color, (objective, group) in enumerate(points.groupby("objective")):
        for run_id, run in group.groupby("run_id"):
            run = run.sort_values("flops")
            axes.plot(run["flops"], run[metric], marker=marker[run["size"].iloc[0]], color=f"C{color}",
                      alpha=0.8, label=objective if run_id == group["run_id"].iloc[0] else None)
    for size in sizes:
        axes.plot([], [], marker=marker[size], color="grey", linestyle="none", label=f"size {size}")
    axes.set_xscale("log")
    axes.set_xlabel("training FLOPs")
    axes.set_ylabel(metric.replace("_", " "))
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if len(points):
        axes.legend(fontsize="small")
    path = Path(path)
    figure.savefig(path, dpi=120)
    return path


def main(sweep_dir: str) -> None:
    from scaling.sweeps.results import build_table, write_table

    table = build_table(sweep_dir)
    print(f"results table: {write_table(table, sweep_dir)}")
    print(f"figure: {compute_vs_probe(table, Path(sweep_dir) / 'compute_vs_probe.png')}")


if __name__ == "__main__":
    main(sys.argv[1])
