"""A plan's outputs: totals over its runs, the input each run needs per host against a measured input rate,
the table ``scaling plan`` prints, and its CSV and JSON files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(rows),
        "fit": sum(row["fits"] for row in rows),
        "chip_hours": sum(row["chip_hours"] for row in rows if row["fits"]),
        "compile_s": sum(row["compile_s"] for row in rows if not row["cached"]),
        **({"input_short": sum(not row["input_keeps_up"] for row in rows if row["fits"])}
           if rows and "input_keeps_up" in rows[0] else {}),
    }


def with_input(rows: Sequence[dict[str, Any]], hosts: int, images_per_s: float) -> list[dict[str, Any]]:
    """``rows`` with the input each run's step needs and how a measured input rate compares:
    ``input_needed_per_host`` (images/s: batch / step time / hosts), ``input_per_host`` (the measured
    images/s per host, e.g. from benchmarks/input_throughput.py), ``input_ratio`` (measured over needed;
    NaN where the step was not costed) and ``input_keeps_up`` (the ratio at least 1)."""
    planned = []
    for row in rows:
        needed = row["batch_size"] / row["step_s"] / hosts  # NaN for a step not costed
        ratio = images_per_s / needed
        planned.append({**row, "hosts": hosts, "input_needed_per_host": needed,
                        "input_per_host": images_per_s, "input_ratio": ratio,
                        "input_keeps_up": bool(ratio >= 1)})
    return planned


def _ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}" + ("" if value >= 1 else " SHORT")


INPUT_COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("input_needed_per_host", "img/s/host", lambda v: "-" if math.isnan(v) else f"{v:.0f}"),
    ("input_ratio", "input/needed", _ratio),
)
COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("run_id", "run", str),
    ("mesh", "mesh", str),
    ("remat", "remat", str),
    ("total_gib", "GiB/chip", lambda v: f"{v:.1f}"),
    ("fits", "fits", lambda v: "yes" if v else "NO"),
    ("dominant", "largest", lambda v: v.split()[0]),
    ("xla_over_analytic", "XLA/analytic", lambda v: f"{v:.2f}"),
    ("step_s", "ms/step", lambda v: f"{1e3 * v:.1f}"),
    ("steps", "steps", str),
    ("chip_hours", "chip-h", lambda v: f"{v:.2f}"),
    ("mfu", "MFU", lambda v: f"{v:.2f}"),
    ("compile_s", "compile s", lambda v: f"{v:.0f}"),
    ("mesh_reason", "mesh choice", str),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per run; the input columns after the step's where ``with_input`` added them."""
    columns = COLUMNS
    if rows and "input_ratio" in rows[0]:
        at = next(i for i, (key, _, _) in enumerate(COLUMNS) if key == "step_s") + 1
        columns = (*COLUMNS[:at], *INPUT_COLUMNS, *COLUMNS[at:])
    cells = [[header for _, header, _ in columns]]
    cells += [[fmt(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                           strict=True)))
             for line in cells]
    return "\n".join(lines)


def write_outputs(rows: Sequence[dict[str, Any]], summary: dict[str, Any], stem: Path) -> tuple[Path, Path]:
    """``<stem>.csv`` (one row per run) and ``<stem>.json`` (rows and totals)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_suffix(".csv"), stem.with_suffix(".json")
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps({"runs": list(rows), "totals": summary}, indent=1))
    return csv_path, json_path
