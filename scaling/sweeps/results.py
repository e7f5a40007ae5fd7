"""The results table of a sweep, derived from its run directories alone (so it can always be rebuilt).

One row per logged point of every run: the run's fields (id, status, objective, size, seed, budget,
caption level, ``captions`` trained on: the caption mix or else the level, grid values) followed by the
metrics.jsonl record (``kind`` "train" or "eval", step, examples, flops, wall_s, and whatever metrics it
holds), with probes on other data sets joined at their step (``with_probes``). Eval rows say which
compute point they are (``point``: end_of_schedule, cooldown_branch or mid_schedule; runs recorded before
the field existed get it from their step). Cached as ``<sweep dir>/results.csv``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import ConfigError
from scaling.sweeps.spec import Budget
from scaling.sweeps.store import ended_status
from scaling.workdir import (
    COOLDOWN_BRANCH,
    END_OF_SCHEDULE,
    MID_SCHEDULE,
    RunFiles,
    flatten,
    read_json,
    write_atomic,
)

RESULTS_NAME = "results.csv"
INIT_NAME = "init_probes.csv"  # init rows re-created for runs recorded before they had their own
CONFIG_COLUMNS = {  # column -> dotted config field
    "objective": "objective",
    "size": "size",
    "seed": "seed",
    "batch_size": "batch_size",
    "total_steps": "total_steps",
    "caption_level": "data.caption_level",
}
RUN_COLUMNS = ("run_id", "status", *CONFIG_COLUMNS, "captions", "budget", "budget_unit", "budget_amount")
POINT_COLUMNS = ("kind", "point", "step", "examples", "flops", "wall_s")
PROBE_KEYS = ("status", "dataset", "train_per_class", "step", "flops")  # of a probe job's result: not joined
PROBES = "probes"  # a run's probes on other data sets: probes/<data set key>/result.json
PROBE_RESULT = "result.json"  # written by scaling.sweeps.probes


INCOMPLETE = "incomplete"  # the status column of a run that has not ended


def config_captions(flat: dict[str, Any]) -> str:
    """The captions column of a run's flat config: its caption field, else its mix, else its level."""
    return flat.get("data.caption_field") or flat.get("data.caption_mix") or flat.get("data.caption_level")


def run_fields(run_dir: Path) -> dict[str, Any] | None:
    """The run's columns, or None for a directory the runner has not set up."""
    spec, config = read_json(run_dir / "spec.json"), read_json(run_dir / "config.json")
    if spec is None or config is None:
        return None
    flat, budget = flatten(config), spec["budget"]
    labels = {field: value for field, value in spec["labels"].items() if field not in CONFIG_COLUMNS.values()}
    return {
        "run_id": spec["run_id"],
        "status": ended_status(run_dir) or INCOMPLETE,
        **{column: flat.get(field) for column, field in CONFIG_COLUMNS.items()},
        "captions": config_captions(flat),  # trained on
        "budget": Budget(**budget).label,
        "budget_unit": budget["unit"],
        "budget_amount": float(budget["amount"]),
        **labels,
    }


def with_points(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every eval row's ``point``, inferred from the step for records (or results.csv files)
    written before the field existed."""
    if table.empty:
        return table
    inferred = pd.Series(np.where(table["step"] == table["total_steps"], END_OF_SCHEDULE, MID_SCHEDULE),
                         index=table.index)
    current = table["point"] if "point" in table else pd.Series(None, index=table.index, dtype=object)
    return table.assign(point=current.where(~((table["kind"] == "eval") & current.isna()), inferred))


def dataset_key(dataset: str, train_per_class: int | None = None) -> str:
    """A probe set's name as a folder and column prefix: ``scenes/32`` -> ``scenes_32``, and with a per-class
    training subset ``imagenet2012`` -> ``imagenet2012_25perclass``."""
    key = re.sub(r"[^A-Za-z0-9]", "_", dataset)
    return f"{key}_{train_per_class}perclass" if train_per_class else key


def probe_results(run_dir: Path) -> list[dict[str, Any]]:
    """The completed probe jobs of a run, each its result.json (``dataset`` as asked for it)."""
    results = (read_json(path) for path in sorted((run_dir / PROBES).glob(f"*/{PROBE_RESULT}")))
    return [result for result in results if result is not None]


def with_probes(records: list[dict[str, Any]], probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's records with the fields of each probe on another data set (scaling.sweeps.probes) joined
    onto its main eval record at the probed step (not a cool-down branch forked there) as
    ``<data set>_<field>`` (``<data set>_<N>perclass_<field>`` for a per-class training subset), or onto a
    new eval record there."""
    records = [dict(record) for record in records]
    for probe in probes:
        prefix = dataset_key(probe["dataset"], probe.get("train_per_class")) + "_"
        fields = {f"{prefix}{name}": value for name, value in probe.items() if name not in PROBE_KEYS}
        at_step = [r for r in records if r.get("kind") == "eval" and r["step"] == probe["step"]
                   and r.get("point") != COOLDOWN_BRANCH and "cooldown_steps" not in r]
        if not at_step:
            at_step = [{"kind": "eval", "step": probe["step"], "flops": probe.get("flops")}]
            records.extend(at_step)
        for record in at_step:
            record.update(fields)
    return records


def build_table(sweep_dir: str | Path) -> pd.DataFrame:
    run_dirs = sorted(p for p in Path(sweep_dir).glob("*") if p.is_dir())
    rows = []
    for run_dir in run_dirs:
        fields = run_fields(run_dir)
        if fields is not None:
            records = with_probes(RunFiles(run_dir).read_metrics(), probe_results(run_dir))
            rows.extend({**fields, **record} for record in records)
    table = pd.DataFrame.from_records(rows, columns=None if rows else [*RUN_COLUMNS, *POINT_COLUMNS])
    table = with_points(table)
    leading = [column for column in (*RUN_COLUMNS, *POINT_COLUMNS) if column in table]
    return table[leading + sorted(set(table.columns) - set(leading))]


def write_table(table: pd.DataFrame, sweep_dir: str | Path) -> Path:
    """Writes the CSV cache atomically; returns its path."""
    path = Path(sweep_dir) / RESULTS_NAME
    write_atomic(path, table.to_csv(index=False).encode())
    return path


def read_table(sweep_dir: str | Path) -> pd.DataFrame:
    """The cached results.csv; one that is empty or not a results table is refused."""
    path = Path(sweep_dir) / RESULTS_NAME
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError) as error:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise ConfigError(f"{path} is not a results table ({str(error).strip()}); delete it, or give the "
                          "sweep folder whose run folders it was built from") from None
    missing = [column for column in ("run_id", "kind", "step", "total_steps") if column not in table]
    if missing:
        raise ConfigError(f"{path} is not a results table (no column {', '.join(missing)}); delete it, or "
                          "give the sweep folder whose run folders it was built from")
    return with_points(table)
