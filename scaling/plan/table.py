"""A plan's outputs: totals over its runs, the table ``scaling plan`` prints, and its CSV and JSON files."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(rows),
        "fit": sum(row["fits"] for row in rows),
        "chip_hours": sum(row["chip_hours"] for row in rows if row["fits"]),
        "compile_s": sum(row["compile_s"] for row in rows if not row["cached"]),
    }


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
    cells = [[header for _, header, _ in COLUMNS]]
    cells += [[fmt(row[key]) for key, _, fmt in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
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
