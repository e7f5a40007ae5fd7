"""TensorBoard event files beside a run's metrics: every numeric field of every metrics record (loss,
learning rate, FLOPs, examples, eval accuracies...) as a scalar against the record's step, under
``<workdir>/tensorboard``, written through tensorboardX by the process that writes metrics.jsonl.

metrics.jsonl stays the record the package reads; the events only mirror it for watching a run. Tags are
``train/<field>`` and ``eval/<field>`` (``cooldown/<field>`` for a cool-down branch, at the step it forks
from). A resumed run starts its writer at the step resumed from, so TensorBoard drops the events an earlier
attempt logged past it, as the resume drops those records.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

FOLDER = "tensorboard"


def scalar_fields(record: dict[str, Any], section: str) -> dict[str, float]:
    """{section/field: value} of a metrics record's numeric fields (its step is the x-axis, not a
    scalar)."""
    return {f"{section}/{key}": float(value) for key, value in record.items()
            if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)}


class EventScalars:
    """Writes metrics records to TensorBoard event files in ``directory``, opened on the first record."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.start_step: int | None = None
        self._writer = None

    def start_at(self, step: int) -> None:
        """Events past ``step`` that an earlier attempt wrote are dropped by TensorBoard."""
        self.start_step = step

    def write(self, record: dict[str, Any], section: str) -> None:
        if self._writer is None:
            from tensorboardX import SummaryWriter  # imported by writers only: readers never pay for it

            self._writer = SummaryWriter(logdir=str(self.directory), purge_step=self.start_step)
        for tag, value in scalar_fields(record, section).items():
            self._writer.add_scalar(tag, value, global_step=record["step"])
        self._writer.flush()  # records are few (every log_every steps); a killed run keeps them all

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
