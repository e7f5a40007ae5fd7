"""``scaling analyze``: frontiers, fitted laws, multipliers and figures of one or more sweeps, as a markdown
report and PNG/SVG figures in ``<first sweep dir>/analysis/`` (or another folder). The report names the
flags that wrote it, so a published report can be checked against its results table."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from scaling.analysis import figures
from scaling.analysis.caption_detail import caption_detail
from scaling.analysis.fits import BOOTS, LAWS, LEVEL, Fit, fit_law
from scaling.analysis.multipliers import OPEN, Multiplier, multiplier, multiplier_grid, oriented, ratio_text
from scaling.analysis.points import (
    INTERVAL,
    PROBE,
    eval_points,
    frontier,
    load_results,
    metric_column,
    series,
    spent_compute,
)
from scaling.config import ConfigError
from scaling.workdir import HONEST_POINTS

OUTPUT_DIR = "analysis"
REPORT_NAME = "report.md"


def fit_objectives(points: pd.DataFrame, *, boots: int = BOOTS, level: float = LEVEL,
                   seed: int = 0) -> tuple[dict[str, dict[str, Fit]], dict[str, dict[str, str]]]:
    """({objective: {law: Fit}}, {objective: {law: why not fitted}}) on each objective's honest frontier."""
    fits: dict[str, dict[str, Fit]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for objective, group in points[points["honest"]].groupby("objective"):
        seeds = group["seed"].to_numpy() if group["seed"].notna().all() else None
        for name, law in LAWS.items():
            try:
                fits.setdefault(objective, {})[name] = fit_law(
                    law, group["flops"].to_numpy(), group["error"].to_numpy(), label=objective, seeds=seeds,
                    boots=boots, level=level, seed=seed)
            except ConfigError as error:
                skipped.setdefault(objective, {})[name] = str(error)
    return {objective: laws for objective, laws in fits.items() if laws}, skipped


def compare(fits: dict[str, dict[str, Fit]]) -> list[Multiplier]:
    """Multipliers of every pair of objectives under every law both have, the more efficient first."""
    rows = []
    for first, second in itertools.combinations(sorted(fits), 2):
        for law in LAWS:
            if law in fits[first] and law in fits[second]:
                better, reference = oriented(fits[first][law], fits[second][law])
                rows.extend(multiplier(better, reference, multiplier_grid(reference)))
    return rows


def _interval(name: str, estimate: float, low: float, high: float) -> str:
    """A parameter's "estimate [low, high]". The exponent b reads as it is; for a scale (a, E_inf) an end
    beyond OPEN x the estimate either way reads as open ("<3.2e-05", ">3.2e+03"): the points hardly bound it.
    """
    if name == "b" or not estimate > 0:
        return f"{estimate:.3g} [{low:.3g}, {high:.3g}]"
    low_text = f"{low:.3g}" if low >= estimate / OPEN else f"<{estimate / OPEN:.2g}"
    high_text = f"{high:.3g}" if high <= estimate * OPEN else f">{estimate * OPEN:.2g}"
    return f"{estimate:.3g} [{low_text}, {high_text}]"


def _fits_table(fits: dict[str, dict[str, Fit]], skipped: dict[str, dict[str, str]]) -> list[str]:
    lines = ["| objective | law | parameters (estimate [interval]) | frontier points | measured compute "
             "| usable refits |", "| --- | --- | --- | --- | --- | --- |"]
    for objective in sorted(set(fits) | set(skipped)):
        for fit in fits.get(objective, {}).values():
            params = ", ".join(f"{key} = {_interval(key, *value)}" for key, value in fit.params().items())
            lines.append(f"| {objective} | {fit.law.formula} | {params} | {len(fit.flops)} | "
                         f"{fit.flops.min():.3g} to {fit.flops.max():.3g} FLOPs | {fit.usable_boots} |")
        for name, why in skipped.get(objective, {}).items():
            lines.append(f"| {objective} | {LAWS[name].formula} | not fitted: {why} | | | |")
    return lines


def _multipliers_table(rows: list[Multiplier]) -> list[str]:
    lines = ["| more efficient (A) | reference (B) | law | at C (FLOPs) | C_A / C [interval] "
             "| extrapolated |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {m.better} | {m.reference} | {m.law} | {m.flops:.3g} | {ratio_text(m.ratio)} "
              f"[{ratio_text(m.low)}, {ratio_text(m.high)}] | {'yes' if m.extrapolated else 'no'} |"
              for m in rows]
    return lines


def _headline_rows(rows: list[Multiplier]) -> list[Multiplier]:
    """Per pair under the power law, the multiplier at the largest measured compute of B."""
    chosen: dict[tuple[str, str], Multiplier] = {}
    for m in rows:
        key = (m.better, m.reference)
        if m.law == "power" and m.measured_reference and (key not in chosen or m.flops > chosen[key].flops):
            chosen[key] = m
    return list(chosen.values())


def headlines(rows: list[Multiplier], metric: str, level: float) -> list[str]:
    """One line per pair under the power law: the multiplier at the largest measured compute of B (the line
    says when reaching B's error takes A beyond its own measured compute)."""
    return [m.headline(metric.replace("_", " "), level) for m in _headline_rows(rows)]


def why_open(rows: list[Multiplier], fits: dict[str, dict[str, Fit]]) -> list[str]:
    """One line saying why headline intervals with open ends are open, naming each weak fit."""
    open_pairs = [m for m in _headline_rows(rows) if any(m.open_ends)]
    if not open_pairs:
        return []
    labels = sorted({label for m in open_pairs for label in (m.better, m.reference)})
    weak = {label: fits[label]["power"].weakness() for label in labels}
    reasons = [f"{label}: {why}" for label, why in weak.items() if why]
    because = "; ".join(reasons) or "the bootstrap refits disagree by more than 1000x"
    return [f"why some intervals are open: {because}; more budgets (or seeds) would close them"]


def _accuracy(row: pd.Series, column: str) -> str:
    """ "0.512 [0.497, 0.528]" from an accuracy column and its interval columns, where present."""
    low, high = (row.get(f"{column}{suffix}") for suffix in INTERVAL)
    interval = f" [{low:.3f}, {high:.3f}]" if pd.notna(low) and pd.notna(high) else ""
    return f"{row[column]:.3f}{interval}" if pd.notna(row.get(column)) else "-"


def largest_compute_points(table: pd.DataFrame, source: str) -> list[str]:
    """Per series, the best honest point at its largest measured compute, as accuracy [interval] next to
    the raw-pixel probe of the same examples."""
    rows = table[(table["kind"] == "eval") & table[source].notna() & table["point"].isin(HONEST_POINTS)]
    pixel = figures.pixel_column(source.split("/")[0])
    lines = ["| objective | size | FLOPs | accuracy [95% interval] | raw pixels, same examples |",
             "| --- | --- | --- | --- | --- |"]
    for objective, group in series(rows).groupby("objective"):
        top = group[group["flops"] == group["flops"].max()]
        best = top.loc[top[source].idxmax()]
        lines.append(f"| {objective} | {best['size']} | {best['flops']:.3g} | {_accuracy(best, source)} | "
                     f"{_accuracy(best, pixel)} |")
    return lines


def analyze(sweep_dirs: list[str | Path], *, metric: str = "probe_error", layer: str = "best",
            boots: int = BOOTS, level: float = LEVEL, seed: int = 0, out: str | Path | None = None,
            references: Mapping[str, float] | None = None) -> Path:
    """Writes the report and figures of ``sweep_dirs`` into ``out`` (default ``<sweep_dirs[0]>/analysis/``);
    returns the report's path. ``references`` ({label: accuracy}) are levels stated elsewhere, such as a
    data set's published raw-pixel floor, drawn on the accuracy and error figures and named in the report.
    Raises ConfigError for a folder without results, an unknown metric or layer, a reference outside
    [0, 1] or on a metric that is no accuracy's complement, or frontiers too small for any fit."""
    references = dict(references or {})
    table = load_results(sweep_dirs)
    points = eval_points(table, metric, layer)
    source, complement = metric_column(table, metric, layer)
    if references and not complement:
        raise ConfigError(f"--reference: {metric} is not 1 - an accuracy, so accuracy references do not "
                          "apply")
    if bad := [label for label, accuracy in references.items() if not 0 <= accuracy <= 1]:
        raise ConfigError(f"--reference {bad[0]}: an accuracy must lie in [0, 1]")
    if not points["honest"].any():
        raise ConfigError(f"no honest points (end of schedule or cool-down branch) with {metric} in "
                          f"{', '.join(map(str, sweep_dirs))}; let runs finish, or train with the wsd "
                          "schedule and eval.cooldown_fraction > 0")
    fits, skipped = fit_objectives(points, boots=boots, level=level, seed=seed)
    if not fits:
        reasons = "; ".join(why for laws in skipped.values() for why in laws.values())
        raise ConfigError(f"no scaling law could be fit: {reasons}")
    edge = frontier(points)
    rows = compare(fits)
    optima = figures.isoflop_optima(points)

    out = Path(out) if out is not None else Path(sweep_dirs[0]) / OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    compute = ([figures.compute_figure(table, out / "compute.png", source, references)]
               if source.endswith(PROBE) else [])
    drawn = [
        *compute,
        *figures.frontier_figure(points, edge, fits, metric, out / "frontiers", references),
        *figures.layers_figure(table, out / "layers"),
        *figures.loss_figure(table, out / "probe_vs_loss"),
        *figures.isoflop_figure(points, metric, out / "isoflop"),
    ]
    edge.to_csv(out / "frontier.csv", index=False)
    caption_files, caption_lines = caption_detail(table, out)
    drawn += caption_files
    counts = points.groupby("point").size().to_dict()
    spent, branches = spent_compute(table)
    lines = [
        f"# Scaling-law analysis: {', '.join(Path(d).name for d in sweep_dirs)}",
        "",
        f"Metric: **{metric}**" + (f" (layer {layer})" if layer != "best" else " (best layer per point)") +
        f"; {len(points)} eval points ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}). "
        "Only honest points (end_of_schedule, cooldown_branch) feed frontiers and fits. Fits are Huber in "
        f"log space; intervals are {100 * level:.0f}% percentile intervals of {boots} bootstrap refits "
        "(points, and seeds where there are several, resampled; the frontier recomputed each time).",
        "",
        f"Training compute spent: {spent:.3g} FLOPs, of which {branches:.3g} in cool-down branches.",
        "",
        f"Written by `{command_line(sweep_dirs, metric, layer, boots, references)}`.",
        "",
        *(["Stated references drawn on the figures (not measured by these sweeps): "
           + "; ".join(f"{label}, accuracy {accuracy:.3g}" for label, accuracy in references.items()) + ".",
           ""] if references else []),
        "## Headlines",
        "",
        *([f"- {line}" for line in headlines(rows, metric, level) + why_open(rows, fits)] or
          ["- no pair of objectives with a power law each"]),
        "",
        "## Fitted laws (C in training FLOPs)",
        "",
        *_fits_table(fits, skipped),
        "",
        "## Efficiency multipliers",
        "",
        "C_A / C: the compute A needs to reach the error B reaches at C (below 1: A is more efficient). "
        "Extrapolated: C outside B's measured compute, or C_A outside A's.",
        "",
        *(_multipliers_table(rows) if rows else ["(needs two objectives with fits)"]),
        "",
        *(["## Largest-compute points", "", *largest_compute_points(table, source), ""]
          if complement else []),
        "## Compute-optimal size per budget (isoFLOP)",
        "",
        *(["| objective | budget | FLOPs | sizes | best size | backbone parameters | error |",
           "| --- | --- | --- | --- | --- | --- | --- |"] +
          [f"| {r.objective} | {r.budget} | {r.flops:.3g} | {r.sizes} | {r.best_size} | {r.best_params} | "
           f"{r.error:.3g} |" for r in optima.itertuples()]
          if len(optima) else ["(no budget with two or more sizes at the end of their schedules)"]),
        "",
        *caption_lines,
        "## Figures",
        "",
        *[f"- [{path.name}]({path.name})" for path in drawn],
        "",
    ]
    report = out / REPORT_NAME
    report.write_text("\n".join(lines))
    return report


def command_line(sweep_dirs: list[str | Path], metric: str, layer: str, boots: int,
                 references: Mapping[str, float] | None = None) -> str:
    """The ``scaling analyze`` command that writes this report, sweeps named by their folder names."""
    return (f"scaling analyze {' '.join(Path(d).name for d in sweep_dirs)} --metric {metric} --layer {layer} "
            f"--boots {boots}" + "".join(f" --reference '{label}={accuracy:g}'"
                                         for label, accuracy in (references or {}).items()))


def parse_references(values: list[str]) -> dict[str, float]:
    """``["raw pixels, 2x2-pooled=0.415", ...]`` -> {label: accuracy}; ConfigError naming a malformed one."""
    references = {}
    for value in values:
        label, _, accuracy = value.rpartition("=")
        try:
            references[label.strip()] = float(accuracy)
        except ValueError:
            raise ConfigError(f"--reference {value!r}: write LABEL=ACCURACY, e.g. 'raw pixels=0.415'") \
                from None
        if not label.strip():
            raise ConfigError(f"--reference {value!r}: the label is empty; write LABEL=ACCURACY")
    return references


def summary(report: Path) -> str:
    """The headline lines of a report, for the command's output."""
    text = report.read_text().split("## Headlines", 1)[-1].split("##", 1)[0]
    return "\n".join(line for line in text.splitlines() if line.startswith("- "))

