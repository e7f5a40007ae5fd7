"""The language-ladder table: every series (an objective on one kind of training text, ``clip/label`` or
``captioning/descriptive``; an objective without text is a rung of its own) probed for every attribute its
runs record (``probe_accuracy``, ``count_probe_accuracy``, ``color_probe_accuracy``, ...), at the largest
compute that every series reached with a schedule end. Per series and attribute: the best size there, its
accuracy averaged over seeds (95% interval over seeds where it has several, else over test examples),
beside the init probe of the same runs; a last row gives the raw-pixel probe of the same examples. The
report carries it when some objective trained on several kinds of text.
"""

from __future__ import annotations

import re

import pandas as pd

from scaling.analysis.figures import schedule_ends
from scaling.analysis.points import INTERVAL, PIXEL, PROBE, mean_over_seeds, pixel_column, series
from scaling.workdir import INIT

ATTRIBUTE = re.compile(r"^([a-z]+_)?probe_accuracy$")
COLUMNS = ["series", "attribute", "flops", "size", "seeds", "accuracy", "low", "high", "init", "pixels"]


def attributes(table: pd.DataFrame) -> list[str]:
    """The probed attributes' accuracy columns, the main label's first."""
    found = [column for column in table if ATTRIBUTE.match(str(column)) and not str(column).endswith(PIXEL)
             and table[column].notna().any()]
    return sorted(found, key=lambda column: (column != PROBE, column))


def _mean(rows: pd.DataFrame, column: str) -> float:
    return float(rows[column].mean()) if column in rows else float("nan")


def _rung(ends: pd.DataFrame, inits: pd.DataFrame, attribute: str) -> dict | None:
    """One series' row for ``attribute`` from its schedule ends at one compute level: its best size."""
    recorded = ends[ends[attribute].notna()]
    if len(recorded) == 0:
        return None
    size = recorded.groupby("size")[attribute].mean().idxmax()
    best = recorded[recorded["size"] == size]
    per_seed = best.groupby("seed")[attribute].mean()  # a seed's points at one level count once
    accuracy, low, high = mean_over_seeds(per_seed)
    if len(per_seed) == 1:
        low, high = (_mean(best, f"{attribute}{suffix}") for suffix in INTERVAL)
    return {"attribute": attribute, "flops": best["flops"].median(), "size": size, "seeds": len(per_seed),
            "accuracy": accuracy, "low": low, "high": high, "pixels": _mean(best, pixel_column(attribute)),
            "init": _mean(inits[inits["run_id"].isin(best["run_id"])], attribute)}


def ladder(table: pd.DataFrame) -> pd.DataFrame:
    """One row per series and attribute at the largest compute level (``figures.schedule_ends``) every
    series reached; empty when no level is shared."""
    evals = series(table[table["kind"] == "eval"])
    ends = schedule_ends(evals)
    per_series = [set(levels) for _, levels in ends.groupby("objective")["level"]]
    shared = set.intersection(*per_series) if per_series else set()
    if not shared:
        return pd.DataFrame(columns=COLUMNS)
    top = ends[ends["level"] == max(shared)]
    inits = evals[evals["point"] == INIT]
    rows = [{"series": name, **row} for name, ends in top.groupby("objective")
            for attribute in attributes(table) if (row := _rung(ends, inits, attribute))]
    return pd.DataFrame(rows, columns=COLUMNS)


def _percent(value: float) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.1f}%"


def _cell(row: pd.Series) -> str:
    interval = "" if pd.isna(row["low"]) else f" [{100 * row['low']:.1f}, {100 * row['high']:.1f}]"
    seeds = f"{row['seeds']} seeds" if row["seeds"] > 1 else "1 seed"
    return f"{_percent(row['accuracy'])}{interval} ({row['size']}, {seeds}; init {_percent(row['init'])})"


def ladder_lines(table: pd.DataFrame) -> list[str]:
    """The report's language-ladder section; nothing unless some objective trained on several texts."""
    rows = ladder(table)
    if not rows["series"].str.contains("/").any():
        return []
    names = list(dict.fromkeys(rows["attribute"]))
    cells = rows.set_index(["series", "attribute"])
    pixels = rows.groupby("attribute")["pixels"].mean()
    return [
        "## Language ladder", "",
        f"Every series at {rows['flops'].median():.2g} FLOPs, the largest compute all of them reached: the "
        "best size's probe accuracy [95% interval: over seeds where there are several, else over test "
        "images] (size, seeds; init probe of the same runs).", "",
        "| series | " + " | ".join(names) + " |",
        "| --- |" + " --- |" * len(names),
        *[f"| {name} | " + " | ".join(_cell(cells.loc[(name, a)]) if (name, a) in cells.index else "-"
                                      for a in names) + " |"
          for name in dict.fromkeys(rows["series"])],
        "| raw pixels, same examples | " + " | ".join(_percent(pixels[a]) for a in names) + " |",
        "",
    ]
