# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Where the representation lives
#
# Linear-probe accuracy by relative depth for each objective and size (at each one's largest-compute honest
# point), and probe accuracy against the objective's own validation loss.
# `SWEEP_DIR=runs/quickstart python analysis/layers.py`

# %%
import os
from pathlib import Path

from scaling.analysis import figures
from scaling.analysis.points import load_results

SWEEP_DIR = Path(os.environ.get("SWEEP_DIR", "runs/quickstart"))
OUT = SWEEP_DIR / "analysis"
OUT.mkdir(parents=True, exist_ok=True)
table = load_results([SWEEP_DIR])

# %%
profiles = figures.layer_profiles(table)
print(profiles.pivot_table(index=["objective", "size", "variant"], columns="layer",
                           values="accuracy").round(3))
figures.layers_figure(table, OUT / "layers")

# %%
figures.loss_figure(table, OUT / "probe_vs_loss")
print(f"figures in {OUT}")
