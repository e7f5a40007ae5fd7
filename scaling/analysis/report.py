"""``scaling analyze``: frontiers, fitted laws, multipliers and figures of one or more sweeps, as a markdown
report and PNG/SVG figures in ``<first sweep dir>/analysis/`` (or another folder). The report names the
flags that wrote it, so a published report can be checked against its results table. Its headline is the
table of every pair of objectives (scaling.analysis.comparisons), whatever each shows, with the
leave-one-out sensitivity, the initialisation baselines and the points left out of the fits as untrained;
a sweep over learning rates adds its tuning section (scaling.analysis.tuning), and one whose objectives
trained on several kinds of text its language-ladder table (scaling.analysis.ladder)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.analysis import figures
from scaling.analysis.caption_detail import caption_detail
from scaling.analysis.comparisons import MIN_FRONTIER, Comparison, compare_all, fit_objectives
from scaling.analysis.fits import BOOTS, LAWS, LEVEL, Fit
from scaling.analysis.ladder import ladder_lines
from scaling.analysis.multipliers import OPEN, Multiplier, multiplier, multiplier_grid, oriented, ratio_text
from scaling.analysis.points import (
    INTERVAL,
    MIN_STEPS,
    PROBE,
    Z95,
    eval_points,
    floor_errors,
    frontier,
    init_points,
    load_results,
    metric_column,
    series,
    spent_compute,
)
from scaling.analysis.tuning import tuning
from scaling.errors import ConfigError
from scaling.workdir import HONEST_POINTS

OUTPUT_DIR = "analysis"
REPORT_NAME = "report.md"


def compare(fits: dict[str, dict[str, Fit]]) -> list[Multiplier]:
    """Multipliers of every pair of objectives under every law both have on at least MIN_FRONTIER trained
    frontier points, the more efficient first."""
    rows = []
    for first, second in itertools.combinations(sorted(fits), 2):
        for law in LAWS:
            if law in fits[first] and law in fits[second] and min(
                    len(fits[label][law].flops) for label in (first, second)) >= MIN_FRONTIER:
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
             "| usable refits | weak because |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for objective in sorted(set(fits) | set(skipped)):
        for fit in fits.get(objective, {}).values():
            params = ", ".join(f"{key} = {_interval(key, *value)}" for key, value in fit.params().items())
            lines.append(f"| {objective} | {fit.law.formula} | {params} | {len(fit.flops)} | "
                         f"{fit.flops.min():.3g} to {fit.flops.max():.3g} FLOPs | {fit.usable_boots} | "
                         f"{fit.weakness() or '-'} |")
        for name, why in skipped.get(objective, {}).items():
            lines.append(f"| {objective} | {LAWS[name].formula} | not fitted: {why} | | | | |")
    return lines


def _multipliers_table(rows: list[Multiplier]) -> list[str]:
    lines = ["| more efficient (A) | reference (B) | law | at C (FLOPs) | C_A / C [interval] "
             "| extrapolated |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {m.better} | {m.reference} | {m.law} | {m.flops:.3g} | {ratio_text(m.ratio)} "
              f"[{ratio_text(m.low)}, {ratio_text(m.high)}] | {'yes' if m.extrapolated else 'no'} |"
              for m in rows]
    return lines


def pairs_table(comparisons: list[Comparison], level: float) -> list[str]:
    """The headline: every pair of objectives, the more efficient first, C_A / C at B's largest measured
    compute with its interval, the status, the flags, and whether it survives leaving out each size and
    seed."""
    lines = [f"| A | B | C (FLOPs) | C_A / C [{100 * level:.0f}% CI] | status | flags | robust |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in comparisons:
        m = c.multiplier
        if m is None:
            lines.append(f"| {c.pair[0]} | {c.pair[1]} | | | not computed: {c.why_not} | | |")
            continue
        span = m.span(level).removeprefix(f"{100 * level:.0f}% CI").strip()
        lines.append(f"| {m.better} | {m.reference} | {m.flops:.2g} | {ratio_text(m.ratio)} {span} | "
                     f"{c.status} | {c.flags or '-'} | {'yes' if c.robust else 'no'} |")
    return lines


def sensitivity_table(comparisons: list[Comparison]) -> list[str]:
    """C_A / C of every computed pair with each size and seed left out of both fits in turn."""
    computed = [c for c in comparisons if c.multiplier is not None]
    if not computed:
        return ["(no pair computed)"]
    cases = [name for name, _ in computed[0].sensitivity]
    lines = ["| A | B | all points | " + " | ".join(cases) + " | direction holds |",
             "| --- | --- | --- | " + " | ".join("---" for _ in cases) + " | --- |"]
    for c in computed:
        m = c.multiplier
        cells = [ratio_text(ratio) if np.isfinite(ratio) else f"- (< {MIN_FRONTIER} points)"
                 for _, ratio in c.sensitivity]
        lines.append(f"| {m.better} | {m.reference} | {ratio_text(m.ratio)} | " + " | ".join(cells) +
                     f" | {'yes' if c.robust else 'no'} |")
    return lines


def init_table(points: pd.DataFrame, inits: pd.DataFrame, complement: bool) -> list[str]:
    """Per objective, size and seed with honest points: the init value, the best trained value (the best
    honest one, marked untrained, where none is trained) and the gain over init, each with its 95% interval
    (normal, from the test-set intervals)."""
    value = (lambda e: 1 - e) if complement else (lambda e: e)
    name = "accuracy" if complement else "metric"
    lines = [f"| objective | size | seed | init {name} | best trained {name} (steps) | gain |",
             "| --- | --- | --- | --- | --- | --- |"]
    by_run = inits.drop_duplicates(["objective", "size", "seed"]).set_index(["objective", "size", "seed"])
    honest = points[points["honest"]]
    for (objective, size, seed), group in honest.groupby(["objective", "size", "seed"]):
        group = group[group["trained"]] if group["trained"].any() else group
        best = group.loc[group["error"].idxmin()]
        if (objective, size, seed) not in by_run.index:
            continue
        init = by_run.loc[(objective, size, seed)]
        gain = value(best["error"]) - value(init["error"])
        half = Z95 * np.hypot(best["error_sd"], init["error_sd"])
        lines.append(f"| {objective} | {size} | {seed:g} | {_valued(value(init['error']), init['error_sd'])} "
                     f"| {_valued(value(best['error']), best['error_sd'])} ({best['steps']:g}"
                     f"{'' if best['trained'] else ', untrained'}) | {gain:+.3f} [{gain - half:+.3f}, "
                     f"{gain + half:+.3f}] |")
    return lines


def _valued(value: float, sd: float) -> str:
    return f"{value:.3f} [{value - Z95 * sd:.3f}, {value + Z95 * sd:.3f}]" if sd > 0 else f"{value:.3g}"


def untrained_table(points: pd.DataFrame, min_steps: int) -> list[str]:
    """The honest points left out of every frontier and fit, and why."""
    untrained = points[points["honest"] & ~points["trained"]].sort_values(["objective", "flops"])
    if untrained.empty:
        return ["(none: every honest point is trained)"]
    lines = ["| objective | size | seed | point | FLOPs | steps | error | init error | why |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in untrained.itertuples():
        why = [f"{p.steps:g} < {min_steps} steps"] if p.steps < min_steps else []
        if not p.has_init:
            why.append("no init record")
        elif not p.error + Z95 * p.error_sd < p.init_error:
            why.append("not above init by its interval")
        lines.append(f"| {p.objective} | {p.size} | {p.seed:g} | {p.point} | {p.flops:.3g} | {p.steps:g} | "
                     f"{p.error:.3f} | {'-' if pd.isna(p.init_error) else f'{p.init_error:.3f}'} | "
                     f"{'; '.join(why)} |")
    return lines


def resampling(fits: dict[str, dict[str, Fit]]) -> str:
    """What each series' replicates resample: seeds as clusters only where every seed spans the
    frontier (a seed with one small run cannot stand in for another), else points."""
    kinds: dict[str, list[str]] = {}
    for label, laws in sorted(fits.items()):
        if "power" in laws:
            kinds.setdefault(laws["power"].resampled, []).append(label)
    return "; ".join(f"{kind} for {', '.join(labels)}" for kind, labels in kinds.items())


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


def check_inits(points: pd.DataFrame, min_steps: int, sweep_dirs: list[str | Path]) -> None:
    """ConfigError when no run with honest points of ``min_steps`` or more (the only ones that can be
    trained) has an init record, saying how to add them; runs missing one among others are listed as
    untrained in the report."""
    candidates = points[points["honest"] & (points["steps"] >= min_steps)]
    missing = sorted(set(candidates[~candidates["has_init"]]["run_id"]))
    if missing and not candidates["has_init"].any():
        where = ", ".join(map(str, sweep_dirs))
        raise ConfigError(
            f"{len(missing)} runs in {where} have no init record (e.g. {missing[0]}), so no point can be "
            "shown to be trained; runs trained now record one, and for older runs `python -m "
            "scaling.sweeps.init_probes <sweep file> <sweep dir>` re-creates them from the sweep's configs")


def analyze(sweep_dirs: list[str | Path], *, metric: str = "probe_error", layer: str = "best",
            boots: int = BOOTS, level: float = LEVEL, seed: int = 0, min_steps: int = MIN_STEPS,
            out: str | Path | None = None, references: Mapping[str, float] | None = None) -> Path:
    """Writes the report and figures of ``sweep_dirs`` into ``out`` (default ``<sweep_dirs[0]>/analysis/``);
    returns the report's path. ``references`` ({label: accuracy}) are levels stated elsewhere, such as a
    data set's published raw-pixel floor, drawn on the accuracy and error figures and named in the report.
    Raises ConfigError for a folder without results, an unknown metric or layer, a negative ``min_steps``,
    runs without init records, or a reference outside [0, 1] or on a metric that is no accuracy's
    complement."""
    references = dict(references or {})
    table = load_results(sweep_dirs)
    points = eval_points(table, metric, layer, min_steps)
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
    check_inits(points, min_steps, sweep_dirs)
    inits = init_points(table, metric, layer)
    stream = "+".join(Path(d).name for d in sweep_dirs)
    fits, skipped = fit_objectives(points, boots=boots, level=level, seed=seed, stream=stream)
    floors = floor_errors(table, source) if complement else {}
    comparisons = compare_all(points, fits, floors)
    edge = frontier(points)
    rows = compare(fits)
    optima = figures.isoflop_optima(points)

    out = Path(out) if out is not None else Path(sweep_dirs[0]) / OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    compute = ([figures.compute_figure(table, out / "compute.png", source, references)]
               if source.endswith(PROBE) else [])
    levels = figures.reference_levels(table[table["kind"] == "eval"], figures.pixel_column(source)) \
        if complement else None
    drawn = [
        *compute,
        *figures.frontier_figure(points, edge, fits, metric, out / "frontiers", references, levels, inits),
        *figures.layers_figure(table, out / "layers"),
        *figures.loss_figure(table, out / "probe_vs_loss"),
        *figures.isoflop_figure(points, metric, out / "isoflop", levels),
    ]
    edge.to_csv(out / "frontier.csv", index=False)
    caption_files, caption_lines = caption_detail(table, out)
    tuning_files, tuning_lines = tuning(table, out, seed=seed)
    drawn += caption_files + tuning_files
    counts = points.groupby("point").size().to_dict()
    honest, trained = int(points["honest"].sum()), int(points["trained"].sum())
    spent, branches = spent_compute(table)
    computed = [c for c in comparisons if c.multiplier is not None]
    unchecked = "" if len(inits) else f" (not checked: the init records carry no {metric})"
    lines = [
        f"# Scaling-law analysis: {', '.join(Path(d).name for d in sweep_dirs)}",
        "",
        f"Metric: **{metric}**" + (f" (layer {layer})" if layer != "best" else " (best layer per point)") +
        f"; {len(points)} eval points ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}) and "
        f"{len(inits)} init records. Only trained points feed frontiers and fits: honest (end_of_schedule, "
        f"cooldown_branch), at least {min_steps} optimizer steps (`--min-steps`), and below their own run's "
        f"init error by more than their 95% interval{unchecked}; {trained} of {honest} honest points are. "
        "Fits are "
        f"Huber in log space; intervals are {100 * level:.0f}% percentile intervals of {boots} bootstrap "
        f"refits per objective, each from its own stream (`--seed` {seed} and the objective's name), each "
        "point's error redrawn from its test-set interval, the frontier recomputed each time; resampled: "
        f"{resampling(fits) or 'nothing fitted'}.",
        "",
        f"Training compute spent: {spent:.3g} FLOPs, of which {branches:.3g} in cool-down branches.",
        "",
        f"Written by `{command_line(sweep_dirs, metric, layer, boots, references, min_steps, seed)}`.",
        "",
        *(["Stated references drawn on the figures (not measured by these sweeps): "
           + "; ".join(f"{label}, accuracy {accuracy:.3g}" for label, accuracy in references.items()) + ".",
           ""] if references else []),
        "## Headlines: every pair of objectives",
        "",
        f"C_A / C: the compute A needs to reach the error B reaches at C, B's largest measured compute "
        f"(power law; below 1: A is more efficient). Computed only where both have {MIN_FRONTIER} or more "
        "trained frontier points. Resolved: the interval excludes 1 and the direction holds with each size "
        "and seed left out (robust). Below floor: B's error there is worse than the raw-pixel probe of the "
        "same examples. Extrapolated: C_A outside A's measured compute.",
        "",
        *pairs_table(comparisons, level),
        "",
        *([] if computed else [f"No pair of objectives has {MIN_FRONTIER} trained frontier points each "
                               f"(at --min-steps {min_steps}): no multiplier is computed.", ""]),
        "## Sensitivity: leaving out each size and seed",
        "",
        *sensitivity_table(comparisons),
        "",
        "## Initialisation baselines",
        "",
        *init_table(points, inits, complement),
        "",
        "## Untrained points (drawn hollow, not fitted)",
        "",
        *untrained_table(points, min_steps),
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
        *(_multipliers_table(rows) if rows else [
            f"(needs two objectives with {MIN_FRONTIER} trained frontier points each)"]),
        "",
        *(["## Largest-compute points", "", *largest_compute_points(table, source), ""]
          if complement else []),
        *ladder_lines(table),
        "## Compute-optimal size per budget (isoFLOP)",
        "",
        "Schedule ends (runs' ends and cool-down branches) grouped by training compute, within "
        f"{figures.LEVEL_SPREAD}x; FLOPs: the group's median.",
        "",
        *(["| objective | FLOPs | sizes | best size | backbone parameters | error |",
           "| --- | --- | --- | --- | --- | --- |"] +
          [f"| {r.objective} | {r.flops:.3g} | {r.sizes} | {r.best_size} | {r.best_params} | {r.error:.3g} |"
           for r in optima.itertuples()]
          if len(optima) else ["(no compute with two or more sizes at the end of a schedule)"]),
        "",
        *caption_lines,
        *tuning_lines,
        "## Figures",
        "",
        *[f"- [{path.name}]({path.name})" for path in drawn],
        "",
    ]
    report = out / REPORT_NAME
    report.write_text("\n".join(lines))
    return report


def command_line(sweep_dirs: list[str | Path], metric: str, layer: str, boots: int,
                 references: Mapping[str, float] | None = None, min_steps: int = MIN_STEPS,
                 seed: int = 0) -> str:
    """The ``scaling analyze`` command that writes this report, sweeps named by their folder names."""
    return (f"scaling analyze {' '.join(Path(d).name for d in sweep_dirs)} --metric {metric} --layer {layer} "
            f"--boots {boots} --min-steps {min_steps} --seed {seed}" + "".join(
                f" --reference '{label}={accuracy:g}'" for label, accuracy in (references or {}).items()))


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
    """The headline table of a report, for the command's output."""
    text = report.read_text().split("## Headlines", 1)[-1].split("##", 1)[0]
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))
