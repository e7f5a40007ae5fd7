# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Scaling laws of a sweep
#
# Loads a sweep folder (its run folders, or its `results.csv`), fits the power and saturating laws to each
# objective's honest frontier with bootstrap intervals, and draws the figures `scaling analyze` writes,
# through the same library. Set `SWEEP_DIR` (or the environment variable of that name); open with jupytext,
# or run as a script: `SWEEP_DIR=runs/quickstart python analysis/scaling_laws.py`.

# %%
import os
from pathlib import Path

from scaling.analysis import figures
from scaling.analysis.comparisons import compare_all, fit_objectives
from scaling.analysis.points import eval_points, floor_errors, frontier, load_results
from scaling.analysis.report import pairs_table

SWEEP_DIR = Path(os.environ.get("SWEEP_DIR", "runs/quickstart"))
METRIC, LAYER, LEVEL = "probe_error", "best", 0.9
OUT = SWEEP_DIR / "analysis"
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## Points and frontiers
# Trained points are honest (ends of schedules, WSD cool-down branches), have at least 100 optimizer steps
# and beat their run's init probe by more than their interval; the others are drawn hollow and never fitted.

# %%
table = load_results([SWEEP_DIR])
points = eval_points(table, METRIC, LAYER)
edge = frontier(points)
print(points.groupby(["objective", "point"]).size())
print(edge[["objective", "size", "point", "flops", "error"]])

# %% [markdown]
# ## Fits and multipliers

# %%
fits, skipped = fit_objectives(points, level=LEVEL)
for objective, laws in fits.items():
    for fit in laws.values():
        print(objective, fit.law.formula, {k: tuple(round(x, 4) for x in v) for k, v in fit.params().items()})
for objective, laws in skipped.items():
    for name, why in laws.items():
        print(f"{objective} {name}: not fitted ({why})")
for line in pairs_table(compare_all(points, fits, floor_errors(table, "probe_accuracy")), LEVEL):
    print(line)

# %% [markdown]
# ## Figures

# %%
figures.compute_figure(table, OUT / "compute_vs_probe.png")
figures.frontier_figure(points, edge, fits, METRIC, OUT / "frontiers")
figures.isoflop_figure(points, METRIC, OUT / "isoflop")
figures.layers_figure(table, OUT / "layers")
figures.loss_figure(table, OUT / "probe_vs_loss")
print(f"figures in {OUT}")
