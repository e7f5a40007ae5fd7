"""The one table of tuned optimizer values that study sweeps read: ``sweeps/tuned.csv``.

A row per study (its sweep name) and objective: ``learning_rate``, ``b2`` and ``warmup_examples``
(empty: the study's own warmup, a fraction of its steps), and ``source``, the tuning run that produced
the values (e.g. "runs/tune_scenes lr_optima.csv, µP loss optimum at nano") or, for a value nobody
tuned, "not tuned: ...". A study sweep takes its rows with ``tuned_fields(study, objective)``, so
retuning changes one file.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from scaling.sweeps.spec import SWEEPS_DIR, SweepError

TUNED_CSV = SWEEPS_DIR / "tuned.csv"
COLUMNS = ("study", "objective", "learning_rate", "b2", "warmup_examples", "source")


def read_tuned(path: Path = TUNED_CSV) -> dict[tuple[str, str], dict[str, str]]:
    """{(study, objective): row} of the table; a table without its columns is refused."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(COLUMNS) - set(rows[0]):
        raise SweepError(f"{path}: columns {', '.join(sorted(set(COLUMNS) - set(rows[0])))} are missing; "
                         f"a tuned-values table has {', '.join(COLUMNS)}")
    return {(row["study"], row["objective"]): row for row in rows}


def tuned_fields(study: str, objective: str, path: Path = TUNED_CSV) -> dict[str, Any]:
    """The dotted config fields of ``objective``'s runs in ``study``: its learning rate, b2 and, where the
    table gives one, its warmup in examples."""
    table = read_tuned(path)
    row = table.get((study, objective))
    if row is None:
        raise SweepError(f"{path} has no row for study {study!r} and objective {objective!r}; add one (its "
                         "tuned values and the run that tuned them, or 'not tuned')")
    try:
        fields = {"optim.learning_rate": float(row["learning_rate"]), "optim.b2": float(row["b2"])}
        if row["warmup_examples"].strip():
            fields.update({"optim.warmup_steps": 0, "optim.warmup_examples": int(row["warmup_examples"])})
    except ValueError as error:
        raise SweepError(f"{path}, row {study}/{objective}: {error}; give numbers") from None
    if not (fields["optim.learning_rate"] > 0 and 0 <= fields["optim.b2"] < 1 and math.isfinite(
            fields["optim.learning_rate"])):
        raise SweepError(f"{path}, row {study}/{objective}: learning_rate must be positive and b2 in [0, 1)")
    return fields
