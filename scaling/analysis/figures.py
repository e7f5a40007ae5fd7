"""Figures of a sweep, each saved as PNG and SVG: compute curves, frontiers with fitted laws and their
intervals, per-layer probes, probe accuracy against validation loss, and isoFLOP curves.

Trained points are filled markers; mid-schedule points and untrained honest points are hollow and never
feed a frontier or a fit. Fitted laws are solid over the measured compute and dashed beyond it. Every
accuracy and error figure draws the raw-pixel probe of the same examples as a dashed line with a band over
its probe seeds' intervals (and stated references, labelled, as dotted lines); the frontier figure draws
each objective's initialisation baselines as a band of its colour. The compute figure draws each probe
accuracy's bootstrap interval as an error bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from scaling.analysis.fits import Fit
from scaling.analysis.points import INTERVAL, PIXEL, PROBE, pixel_column
from scaling.models.sizes import LADDER, get_size, transformer_params
from scaling.workdir import HONEST_POINTS, INIT

MARKERS = "osD^v<>ph*"
COMPUTE_LABEL = "training compute (FLOPs)"
LAW_STYLES = {"power": "-", "saturating": ":"}
EXTRAPOLATE = 10.0  # fits drawn this far beyond the measured compute
LEVEL_SPREAD = 1.25  # schedule ends within this factor of compute share an isoFLOP level


def save(figure: Figure, stem: str | Path) -> list[Path]:
    """Writes ``stem``.png and ``stem``.svg; returns their paths."""
    paths = [Path(stem).with_suffix(suffix) for suffix in (".png", ".svg")]
    for path in paths:
        figure.savefig(path, dpi=150)
    return paths


def _colors(objectives) -> dict[str, str]:
    return {objective: f"C{i}" for i, objective in enumerate(sorted(set(objectives)))}


def _size_markers(sizes) -> dict[str, str]:
    ordered = [size for size in LADDER if size in set(sizes)]
    return {size: MARKERS[i % len(MARKERS)] for i, size in enumerate(ordered)}


def _metric_label(metric: str) -> str:
    words = metric.replace("_", " ")
    return f"{words} (1 - accuracy)" if metric.endswith("_error") else words


def curve_points(table: pd.DataFrame, probe: str = PROBE) -> tuple[pd.DataFrame, str, str]:
    """(points to draw, metric column, title) of the compute figure of the ``probe`` accuracy column
    (``probe_accuracy``, or ``<label>_probe_accuracy`` for a label of ``eval.extra_labels``)."""
    if probe in table and table[probe].notna().any():
        evals = table[(table["kind"] == "eval") & table[probe].notna()]
        label = probe.removesuffix(PROBE).rstrip("_")
        return evals, probe, f"Linear-probe accuracy{f' ({label})' if label else ''} vs training compute"
    train = table[table["kind"] == "train"]
    final = train.loc[train.groupby("run_id")["step"].idxmax()]
    return final, "loss", "Final train loss vs training compute (no eval records yet)"


def compute_figure(table: pd.DataFrame, path: str | Path, probe: str = PROBE,
                   references: Mapping[str, float] | None = None) -> Path:
    """Writes ``draw_compute(table, probe, references)`` to ``path``."""
    path = Path(path)
    draw_compute(table, probe, references).savefig(path, dpi=120)
    return path


def draw_stated_references(axes, references: Mapping[str, float] | None, as_error: bool = False) -> None:
    """Dotted lines at accuracies stated elsewhere (e.g. a data set's published floor), not measured by
    the sweep; drawn as errors (1 - accuracy) with ``as_error``."""
    for i, (label, accuracy) in enumerate((references or {}).items()):
        axes.axhline(1 - accuracy if as_error else accuracy, color="dimgrey", linestyle=":",
                     linewidth=1.2 + 0.4 * i, label=f"{label}: {accuracy:.3g}")


def draw_compute(table: pd.DataFrame, probe: str = PROBE,
                 references: Mapping[str, float] | None = None) -> Figure:
    """Every run's probe accuracy against compute (a line through its main-run points and one through
    each size's end-of-schedule points, marker = size, hollow = mid-schedule, error bars = bootstrap
    intervals where recorded) over the raw-pixel reference and any stated ``references``
    ({label: accuracy}); before any eval record, final train losses instead."""
    points, metric, title = curve_points(table[table["point"] != INIT] if "point" in table else table, probe)
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.subplots()
    marker, color = _size_markers(points["size"]), _colors(points["objective"])
    honest = points["point"].isin(HONEST_POINTS) if "point" in points else pd.Series(True, points.index)
    low, high = (f"{metric}{suffix}" for suffix in INTERVAL)
    for objective, group in points.groupby("objective"):
        for run_id, run in group.groupby("run_id"):
            style = dict(marker=marker[run["size"].iloc[0]], color=color[objective])
            main = run[run["point"] != "cooldown_branch"] if "point" in run else run
            axes.plot(main["flops"], main[metric], alpha=0.6, color=style["color"],
                      label=objective if run_id == group["run_id"].iloc[0] else None)
            axes.scatter(run["flops"], run[metric], marker=style["marker"], edgecolors=style["color"],
                         facecolors=np.where(honest[run.index], style["color"], "none"), zorder=3)
            if low in run and run[low].notna().any():
                below, above = run[metric] - run[low], run[high] - run[metric]
                axes.errorbar(run["flops"], run[metric], yerr=[below, above], fmt="none",
                              ecolor=style["color"], alpha=0.6, capsize=2)
        ends = group[group["point"] == "end_of_schedule"] if "point" in group else group.iloc[:0]
        for _, series in ends.groupby("size"):  # each size's budgets: the honest curve of its finals
            series = series.sort_values("flops")
            axes.plot(series["flops"], series[metric], color=color[objective], alpha=0.6)
    draw_floor(axes, reference_levels(points, pixel_column(probe)))
    if metric == probe:
        draw_stated_references(axes, references)
    for size, symbol in marker.items():
        axes.plot([], [], marker=symbol, color="grey", linestyle="none", label=f"size {size}")
    if "point" in points and (~honest).any():
        axes.plot([], [], marker="o", markerfacecolor="none", color="grey", linestyle="none",
                  label="mid-schedule (not honest)")
    axes.set_xscale("log")
    axes.set_xlabel(COMPUTE_LABEL)
    axes.set_ylabel(metric.replace("_", " ") + (" (bars: 95% bootstrap intervals)" if low in points else ""))
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if len(points):
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def reference_levels(points: pd.DataFrame, pixel: str = PIXEL) -> pd.DataFrame:
    """The raw-pixel references in column ``pixel`` of the points, one per group of objectives probed on
    the same examples: columns accuracy (the mean over the probe seeds that measured it, which pick C on
    different validation splits), low and high (spanning every seed's interval), objectives
    (comma-separated)."""
    columns = ["accuracy", "low", "high", "objectives"]
    if pixel not in points or points[pixel].isna().all():
        return pd.DataFrame(columns=columns)
    low, high = (f"{pixel}{suffix}" for suffix in INTERVAL)
    rows = points[points[pixel].notna()]
    measured = pd.DataFrame([
        {"accuracy": accuracy, "low": group[low].iloc[0], "high": group[high].iloc[0],
         "objectives": ", ".join(sorted(set(group["objective"])))}
        for accuracy, group in rows.groupby(pixel)
    ], columns=columns)
    return (measured.groupby("objectives", as_index=False)
            .agg(accuracy=("accuracy", "mean"), low=("low", "min"), high=("high", "max"))[columns])


def draw_floor(axes, levels: pd.DataFrame | None, as_error: bool = False) -> None:
    """The raw-pixel references (``reference_levels``) as dashed lines with their bands, as errors
    (1 - accuracy) with ``as_error``."""
    levels = levels if levels is not None else pd.DataFrame(columns=["accuracy", "low", "high"])
    flip = (lambda a: 1 - a) if as_error else (lambda a: a)
    for _, level in levels.iterrows():
        which = "" if len(levels) == 1 else f" ({level['objectives']})"
        axes.axhline(flip(level["accuracy"]), color="black", linestyle="--", linewidth=1,
                     label=f"raw pixels{which}")
        axes.axhspan(flip(level["low"]), flip(level["high"]), color="black", alpha=0.08, linewidth=0)


def frontier_figure(points: pd.DataFrame, frontier: pd.DataFrame, fits: dict[str, dict[str, Fit]],
                    metric: str, stem: str | Path, references: Mapping[str, float] | None = None,
                    levels: pd.DataFrame | None = None, inits: pd.DataFrame | None = None) -> list[Path]:
    """Error against compute per objective: trained points filled, the others hollow, the frontier, fitted
    laws with bands, each objective's init errors as a band of its colour (lowest to highest over sizes
    and seeds), the raw-pixel floor ``levels`` and stated reference accuracies, as errors."""
    figure = Figure(figsize=(11, 5.5), layout="constrained")
    axes = figure.subplots()
    color = _colors(points["objective"])
    for objective, group in points.groupby("objective"):
        c = color[objective]
        trained = group[group["trained"]]
        axes.scatter(trained["flops"], trained["error"], color=c, alpha=0.35, s=18)
        rest = group[~group["trained"]]
        axes.scatter(rest["flops"], rest["error"], facecolors="none", edgecolors=c, alpha=0.5, s=18)
        edge = frontier[frontier["objective"] == objective]
        axes.plot(edge["flops"], edge["error"], "o", color=c, markersize=6, label=f"{objective} frontier")
        for name, fit in fits.get(objective, {}).items():
            low, high = fit.flops.min(), fit.flops.max()
            inside = np.geomspace(low, high, 50)
            beyond = np.geomspace(high, high * EXTRAPOLATE, 20)
            for span, dashes in ((inside, LAW_STYLES[name]), (beyond, "--")):
                estimate, lo, hi = fit.predict(span)
                axes.plot(span, estimate, dashes, color=c, linewidth=1.5,
                          label=f"{objective} {name}: {fit.law.formula}" if dashes != "--" else None)
                axes.fill_between(span, lo, hi, color=c, alpha=0.12, linewidth=0)
        init = inits[inits["objective"] == objective]["error"] if inits is not None else pd.Series()
        if len(init):
            axes.axhspan(init.min(), init.max(), color=c, alpha=0.15, linewidth=0, hatch="//",
                         label=f"{objective} at init")
    draw_floor(axes, levels, as_error=True)
    draw_stated_references(axes, references, as_error=True)
    axes.plot([], [], "o", markerfacecolor="none", color="grey",
              label="untrained or mid-schedule (not fitted)")
    axes.plot([], [], "--", color="grey", label=f"extrapolation (to {EXTRAPOLATE:g}x measured)")
    axes.set_xscale("log")
    axes.set_yscale("log")
    measured = points["error"][points["error"] > 0]  # bands open beyond these run off the chart
    axes.set_ylim(measured.min() / 2, measured.max() * 2)
    axes.set_xlabel(COMPUTE_LABEL)
    axes.set_ylabel(_metric_label(metric))
    level = next((fit.level for laws in fits.values() for fit in laws.values()), 0.9)
    axes.set_title(f"Compute frontiers and fitted laws (bands: {100 * level:.0f}% bootstrap intervals)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(figure, stem)


def _layer_columns(table: pd.DataFrame) -> list[str]:
    return sorted(c for c in table if c.startswith(f"{PROBE}/") and table[c].notna().any())


def layer_profiles(table: pd.DataFrame) -> pd.DataFrame:
    """Probe accuracy per layer of each objective and size, at its largest-compute honest eval:
    columns objective, size, variant, layer, relative_depth (layer index / layers probed), accuracy.
    A probed name "layer_02/t30" is layer_02 of variant t30 (diffusion's features at timestep 30);
    a plain "layer_02" has variant ""."""
    evals = table[(table["kind"] == "eval") & table["point"].isin(HONEST_POINTS)]
    rows = []
    for (objective, size), group in evals.groupby(["objective", "size"]):
        record = group.loc[group["flops"].idxmax()]
        by_variant: dict[str, list[tuple[str, str]]] = {}
        for column in (c for c in _layer_columns(table) if pd.notna(record[c])):
            layer, _, variant = column.removeprefix(f"{PROBE}/").partition("/")
            by_variant.setdefault(variant, []).append((layer, column))
        for variant, layers in by_variant.items():
            for index, (layer, column) in enumerate(layers, start=1):
                rows.append({"objective": objective, "size": size, "variant": variant, "layer": layer,
                             "relative_depth": index / len(layers), "accuracy": record[column]})
    return pd.DataFrame(rows, columns=["objective", "size", "variant", "layer", "relative_depth", "accuracy"])


def layers_figure(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Probe accuracy against relative depth, one line per objective, size and feature variant, over the
    raw-pixel floor."""
    profiles = layer_profiles(table)
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.subplots()
    color, marker = _colors(profiles["objective"]), _size_markers(profiles["size"])
    variants = sorted(set(profiles["variant"]), key=lambda v: (len(v), v))
    styles = {variant: ["-", "--", ":", "-."][i % 4] for i, variant in enumerate(variants)}
    for (objective, size, variant), group in profiles.groupby(["objective", "size", "variant"]):
        axes.plot(group["relative_depth"], group["accuracy"], marker=marker[size], color=color[objective],
                  linestyle=styles[variant], label=" ".join(filter(None, [objective, size, variant])))
    draw_floor(axes, reference_levels(table[table["kind"] == "eval"]))
    axes.set_xlabel("relative depth of the probed layer (layer / layers)")
    axes.set_ylabel("linear-probe accuracy")
    axes.set_xlim(0, 1.05)
    axes.set_title("Probe accuracy by layer (each size's largest-compute honest point)")
    axes.grid(True, alpha=0.3)
    if len(profiles):
        axes.legend(fontsize="small", ncol=2)
    return save(figure, stem)


def loss_figure(table: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Probe accuracy against validation loss, one panel per objective (losses differ across them), over the
    raw-pixel floor."""
    evals = table[(table["kind"] == "eval") & table[PROBE].notna()]
    evals = evals[evals["val_loss"].notna()] if "val_loss" in evals else evals.iloc[:0]
    objectives = sorted(set(evals["objective"])) or ["(no validation loss recorded)"]
    figure = Figure(figsize=(3.2 * len(objectives), 3.4), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, len(objectives), squeeze=False)[0])
    marker = _size_markers(evals["size"])
    for i, (axes, objective) in enumerate(zip(panels, objectives, strict=True)):
        group = evals[evals["objective"] == objective]
        for size, part in group.groupby("size"):
            axes.scatter(part["val_loss"], part[PROBE], marker=marker[size], color=f"C{i}",
                         label=f"size {size}")
        draw_floor(axes, reference_levels(group))
        axes.set_title(objective)
        axes.set_xlabel("validation loss (objective's own)")
        axes.grid(True, alpha=0.3)
        if len(group):
            axes.legend(fontsize="x-small")
    panels[0].set_ylabel("linear-probe accuracy")
    return save(figure, stem)


def backbone_params(size: str) -> int:
    return transformer_params(get_size(size))


def schedule_ends(points: pd.DataFrame) -> pd.DataFrame:
    """The points that end a learning-rate schedule (a run's end or a cool-down branch), with ``params``
    (backbone parameters) and ``compute``: the level of training compute it shares with the other ends
    within ``LEVEL_SPREAD`` x of the level's smallest (the sizes' ladders fork their branches at nearly the
    same compute), labelled by the level's median FLOPs."""
    ends = points[points["point"].isin(HONEST_POINTS)].sort_values("flops", kind="stable")
    level, start, levels = -1, 0.0, []
    for flops in ends["flops"]:
        if flops > start * LEVEL_SPREAD:
            level, start = level + 1, flops
        levels.append(level)
    ends = ends.assign(params=ends["size"].map(backbone_params), level=levels)
    labels = ends.groupby("level")["flops"].median().map(lambda flops: f"{flops:.2g}")
    return ends.assign(compute=ends["level"].map(labels))


def isoflop_optima(points: pd.DataFrame) -> pd.DataFrame:
    """Per objective and compute level (``schedule_ends``) with two or more sizes: the size with the
    lowest error (seeds averaged). Columns objective, flops, sizes, best_size, best_params, error."""
    rows = []
    for (objective, _), group in schedule_ends(points).groupby(["objective", "level"]):
        per_size = group.groupby("size")["error"].mean()
        if len(per_size) < 2:
            continue
        best = per_size.idxmin()
        rows.append({"objective": objective, "flops": group["flops"].median(), "sizes": len(per_size),
                     "best_size": best, "best_params": backbone_params(best), "error": per_size[best]})
    return pd.DataFrame(rows, columns=["objective", "flops", "sizes", "best_size", "best_params", "error"])


def isoflop_figure(points: pd.DataFrame, metric: str, stem: str | Path,
                   levels: pd.DataFrame | None = None) -> list[Path]:
    """Error against backbone parameters at each compute level with two or more sizes, one panel per
    objective (the isoFLOP view), over the raw-pixel floor ``levels``."""
    ends = schedule_ends(points)
    objectives = sorted(set(ends["objective"])) or ["(no schedule ends)"]
    figure = Figure(figsize=(3.2 * len(objectives), 3.4), layout="constrained")
    panels = figure.subplots(1, len(objectives), squeeze=False)[0]
    for axes, objective in zip(panels, objectives, strict=True):
        group = ends[ends["objective"] == objective]
        curves = [curve for _, curve in group.groupby("level") if curve["size"].nunique() > 1]
        for i, curve in enumerate(curves):
            errors = curve.groupby("params")["error"].mean()
            axes.plot(errors.index, errors.values, "o-", color=f"C{i}", label=curve["compute"].iloc[0])
            axes.plot([errors.idxmin()], [errors.min()], "*", color=f"C{i}", markersize=12)
        draw_floor(axes, levels, as_error=True)
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_title(objective)
        axes.set_xlabel("backbone parameters")
        axes.grid(True, which="both", alpha=0.3)
        if curves:
            axes.legend(fontsize="x-small", title="FLOPs (star: best)", title_fontsize="x-small")
    panels[0].set_ylabel(_metric_label(metric))
    return save(figure, stem)
