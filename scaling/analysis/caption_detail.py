"""The caption-detail view of sweeps whose runs carry caption-level metrics (``eval.caption_levels``).

Two questions, each a figure: where on the noise axis does a caption help a text-conditional diffusion
model, and how much, by caption detail and by training mix (``caption_gain_by_noise``); and how the
training captions (a level or a mix such as 95% descriptive / 5% short) move representation quality,
zero-shot accuracy, retrieval, captioner likelihood and caption gain against training compute
(``caption_mix_vs_compute``). Both read honest eval points only (end of schedule, cool-down branch),
averaged over seeds: the interval of a point with several seeds is the 95% Student-t interval of the mean
over seeds, of a single seed the recorded interval over held-out examples. ``caption_detail.csv`` holds
every aggregated point; the report's section reads the largest-compute point of each training mix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scaling.analysis.figures import COMPUTE_LABEL, save
from scaling.analysis.points import INTERVAL, PROBE, mean_over_seeds, training_captions
from scaling.workdir import HONEST_POINTS

CAPTION_METRIC = re.compile(
    r"^(caption_(match_)?gain(_t\d+)?|caption_loss_t\d+|caption_log_likelihood|retrieval_(i2t|t2i)_r\d+)"
    r"/[a-z]+$")
WHOLE_METRICS = (PROBE, "zero_shot_accuracy")  # recorded once per eval, at no caption level
KEYS = ["objective", "size", "budget", "captions", "point", "step"]
COMPUTE_METRICS = ("probe_accuracy", "zero_shot_accuracy", "retrieval_i2t_r1", "retrieval_t2i_r1",
                   "caption_log_likelihood", "caption_gain")
LABELS = {
    "probe_accuracy": "linear-probe accuracy",
    "zero_shot_accuracy": "zero-shot accuracy",
    "retrieval_i2t_r1": "image-to-text recall@1",
    "retrieval_t2i_r1": "text-to-image recall@1",
    "caption_log_likelihood": "log-likelihood per token",
    "caption_gain": "loss reduction by the caption",
}
CSV_NAME = "caption_detail.csv"


def has_caption_metrics(table: pd.DataFrame) -> bool:
    return any(CAPTION_METRIC.match(str(column)) for column in table)


def long_points(table: pd.DataFrame) -> pd.DataFrame:
    """One row per honest eval record and metric: KEYS, seed, flops, metric, level ("" for metrics of no
    caption level), value, low, high (the record's interval over held-out examples, where it has one)."""
    evals = table[(table["kind"] == "eval") & table["point"].isin(HONEST_POINTS)]
    evals = evals.assign(captions=training_captions(evals))
    parts = []
    for column in evals.columns:
        if not (CAPTION_METRIC.match(str(column)) or column in WHOLE_METRICS) or evals[column].isna().all():
            continue
        low, high = (f"{column}{suffix}" for suffix in INTERVAL)
        part = evals[evals[column].notna()]
        metric, _, level = column.partition("/")
        parts.append(pd.DataFrame({
            **{key: part[key] for key in [*KEYS, "seed", "flops"]}, "metric": metric, "level": level,
            "value": part[column], "low": part.get(low, np.nan), "high": part.get(high, np.nan)}))
    columns = [*KEYS, "seed", "flops", "metric", "level", "value", "low", "high"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def over_seeds(points: pd.DataFrame) -> pd.DataFrame:
    """Points averaged over seeds: KEYS, metric, level, flops, value, low, high, seeds."""
    rows = []
    for key, group in points.groupby([*KEYS, "metric", "level"], dropna=False):
        n = len(group)
        mean, low, high = mean_over_seeds(group["value"])
        if n == 1:
            low, high = float(group["low"].iloc[0]), float(group["high"].iloc[0])
        rows.append({**dict(zip([*KEYS, "metric", "level"], key, strict=True)),
                     "flops": float(group["flops"].mean()), "value": mean, "low": low, "high": high,
                     "seeds": n})
    columns = [*KEYS, "metric", "level", "flops", "value", "low", "high", "seeds"]
    return pd.DataFrame(rows, columns=columns)


def caption_points(table: pd.DataFrame) -> pd.DataFrame:
    return over_seeds(long_points(table))


def bucket_rows(points: pd.DataFrame, prefix: str = "caption_gain") -> pd.DataFrame:
    """The rows of ``<prefix>_t<k>`` metrics, with their noise bucket k as ``bucket``."""
    bucket = points["metric"].str.extract(rf"^{prefix}_t(\d+)$")[0]
    return points[bucket.notna()].assign(bucket=bucket[bucket.notna()].astype(int))


def _errorbar(axes, x, rows: pd.DataFrame, **style) -> None:
    below, above = rows["value"] - rows["low"], rows["high"] - rows["value"]
    axes.errorbar(x, rows["value"], yerr=[below.fillna(0), above.fillna(0)], capsize=2, **style)


def gain_by_noise_figure(points: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Loss reduction a caption gives per noise bucket: a column per training mix, a colour per eval
    caption level, over no caption (solid) and over another example's caption (dotted); the top row at
    each mix's largest honest compute, the bottom row at its smallest, each row on its own scale (gains
    shrink with training while their intervals at small compute are wide)."""
    gains, matched = bucket_rows(points), bucket_rows(points, "caption_match_gain")
    mixes = sorted(set(gains["captions"])) or ["(no caption_gain records)"]
    computes = {mix: sorted(set(gains.loc[gains["captions"] == mix, "flops"])) for mix in mixes}
    rows_drawn = 2 if any(len(c) > 1 for c in computes.values()) else 1
    figure = Figure(figsize=(3.6 * len(mixes), 3.4 * rows_drawn), layout="constrained")
    grid = figure.subplots(rows_drawn, len(mixes), squeeze=False, sharey="row")
    levels = sorted(set(gains["level"]))
    for column, mix in enumerate(mixes):
        ends = [computes[mix][-1], computes[mix][0]][:rows_drawn] if computes[mix] else []
        for row, flops in enumerate(ends):
            axes = grid[row][column]
            for i, level in enumerate(levels):
                for table, linestyle, versus in ((gains, "-", "none"), (matched, ":", "other caption")):
                    curve = table[(table["captions"] == mix) & (table["level"] == level) &
                                  (table["flops"] == flops)].sort_values("bucket")
                    if len(curve):
                        _errorbar(axes, curve["bucket"], curve, color=f"C{i}", marker="o",
                                  linestyle=linestyle, label=f"eval {level} vs {versus}")
            axes.set_title(f"trained on {mix}, {flops:.2g} FLOPs", fontsize="small")
            axes.legend(fontsize="xx-small")
    for axes in grid.flat:
        axes.set_xticks(sorted(set(gains["bucket"])))
        axes.axhline(0, color="black", linewidth=0.8)
        axes.set_xlabel("noise bucket (0: least noise)", fontsize="small")
        axes.grid(True, alpha=0.3)
    for row in grid:
        row[0].set_ylabel("loss reduction by the caption")
    figure.suptitle("Where captions help a diffusion model (bars: 95% intervals)", fontsize="medium")
    return save(figure, stem)


def _compute_panels(points: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(objective, metric, level) of every panel of the compute figure, in COMPUTE_METRICS order."""
    present = points[points["metric"].isin(COMPUTE_METRICS)][["objective", "metric", "level"]]
    order = {metric: i for i, metric in enumerate(COMPUTE_METRICS)}
    unique = present.drop_duplicates().assign(rank=lambda f: f["metric"].map(order))
    return list(unique.sort_values(["objective", "rank", "level"])[["objective", "metric", "level"]]
                .itertuples(index=False, name=None))


def mix_vs_compute_figure(points: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Each objective's metrics against compute, a line per training mix (per size), bars: 95% intervals."""
    panels = _compute_panels(points) or [("(no caption metrics)", "", "")]
    objectives = list(dict.fromkeys(objective for objective, _, _ in panels))
    columns = max(sum(o == objective for o, _, _ in panels) for objective in objectives)
    figure = Figure(figsize=(3.2 * columns, 3.0 * len(objectives)), layout="constrained")
    grid = figure.subplots(len(objectives), columns, squeeze=False)
    colors = {mix: f"C{i}" for i, mix in enumerate(sorted(set(points["captions"])))}
    markers = {size: "osD^v"[i % 5] for i, size in enumerate(sorted(set(points["size"])))}
    filled = dict.fromkeys(objectives, 0)  # panels drawn so far in each objective's row
    for objective, metric, level in panels:
        axes = grid[objectives.index(objective)][filled[objective]]
        filled[objective] += 1
        rows = points[(points["objective"] == objective) & (points["metric"] == metric) &
                      (points["level"] == level)]
        for (mix, size), curve in rows.groupby(["captions", "size"]):
            curve = curve.sort_values("flops")
            _errorbar(axes, curve["flops"], curve, color=colors[mix], marker=markers[size], alpha=0.8,
                      label=f"{mix} ({size})")
        axes.set_xscale("log")
        axes.set_title(f"{objective}: {LABELS.get(metric, metric)}" + (f" ({level})" if level else ""),
                       fontsize="small")
        axes.set_xlabel(COMPUTE_LABEL, fontsize="small")
        axes.grid(True, which="both", alpha=0.3)
        if len(rows):
            axes.legend(fontsize="xx-small", title="trained on (size)", title_fontsize="xx-small")
    for row in grid:
        for axes in row:
            if not axes.has_data():
                axes.set_axis_off()
    return save(figure, stem)


def _value(row) -> str:
    interval = "" if pd.isna(row["low"]) else f" [{row['low']:.3g}, {row['high']:.3g}]"
    seeds = int(row["seeds"])
    return f"{row['value']:.3g}{interval} ({seeds} seed{'s' if seeds > 1 else ''})"


def largest_compute(points: pd.DataFrame) -> pd.DataFrame:
    """Per objective, metric, level and training mix, the end-of-schedule point of largest compute."""
    ends = points[points["point"] == "end_of_schedule"]
    index = ends.groupby(["objective", "metric", "level", "captions"])["flops"].idxmax()
    return ends.loc[index]


def report_lines(points: pd.DataFrame) -> list[str]:
    """The report's caption-detail section: each training mix at its largest compute, and where on the
    noise axis captions help most."""
    ends = largest_compute(points[points["metric"].isin(COMPUTE_METRICS)])
    lines = ["## Caption detail", "",
             "Each training mix at its largest end-of-schedule compute; value [95% interval] (seeds).", "",
             "| objective | metric | eval captions | trained on | size | FLOPs | value |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.objective} | {r.metric} | {r.level or '-'} | {r.captions} | {r.size} | {r.flops:.3g} | "
              f"{_value(r._asdict())} |" for r in ends.itertuples()]
    gains = bucket_rows(points)
    top = largest_compute(gains.assign(metric="caption_gain_t"))
    if len(top):
        lines += ["", "Where a caption helps the diffusion model most (largest loss reduction by noise "
                  "bucket, 0 = least noise):", ""]
        for r in top.itertuples():
            same = gains[(gains["captions"] == r.captions) & (gains["level"] == r.level) &
                         (gains["flops"] == r.flops) & (gains["size"] == r.size)].sort_values("bucket")
            best = same.loc[same["value"].idxmax()]
            per_bucket = ", ".join(f"t{b}: {v:.3g}" for b, v in zip(same["bucket"], same["value"],
                                                                      strict=True))
            lines.append(f"- trained on {r.captions}, eval {r.level} ({r.size}, {r.flops:.3g} FLOPs): most "
                         f"at bucket {best['bucket']} ({_value(best)}); {per_bucket}")
    return [*lines, ""]


def caption_detail(table: pd.DataFrame, out: Path) -> tuple[list[Path], list[str]]:
    """(figures and CSV written into ``out``, report lines); nothing for a table without caption metrics."""
    if not has_caption_metrics(table):
        return [], []
    points = caption_points(table)
    points.to_csv(out / CSV_NAME, index=False)
    drawn = [*gain_by_noise_figure(points, out / "caption_gain_by_noise"),
             *mix_vs_compute_figure(points, out / "caption_mix_vs_compute"), out / CSV_NAME]
    return drawn, report_lines(points)
