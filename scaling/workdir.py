"""The files of a run's workdir: config.json, metrics.jsonl and result.json, and how a run ends.

Only process 0 writes. Every writer here either appends whole lines or replaces a file by rename
(``write_atomic``, the one atomic writer of the package: palettes, tables and summaries use it too), so
a run killed at any moment leaves files that parse. A run's status (result.json's, and the outcome a
sweep executor reports) is one of ``RUN_STATUSES``; ``Stopwatch`` accounts for result.json's ``seconds``.
It imports nothing of the package but its errors, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from scaling.errors import ConfigError

# How a run ended: result.json's ``status`` (completed, diverged) or, for a run that raised, the outcome
# the sweep records (failed).
COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
RUN_STATUSES = (COMPLETED, DIVERGED, FAILED)

# The kinds of compute point an eval record in metrics.jsonl is (its ``point`` field). Only the honest ones
# stand for what a run ending at their compute would reach: the end of a schedule, or a cool-down branch.
END_OF_SCHEDULE, MID_SCHEDULE, COOLDOWN_BRANCH = "end_of_schedule", "mid_schedule", "cooldown_branch"
HONEST_POINTS = (END_OF_SCHEDULE, COOLDOWN_BRANCH)

# Fields that change how a run is watched but not what it computes; a resumed run may change them.
OPERATIONAL_FIELDS = (
    "log_every", "checkpoint_every", "keep_checkpoints", "data.worker_count", "data.data_dir",
)


def is_writer() -> bool:
    return jax.process_index() == 0


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_atomic(path: Path, content: bytes) -> None:
    """Writes ``content`` to a temporary file beside ``path``, flushed to disk, and renames it into place:
    a reader (or a run killed mid-write) sees the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=True).encode())


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the result-changing fields whose values differ between two configs."""
    old_flat, new_flat = flatten(old), flatten(new)
    return sorted(
        name
        for name in set(old_flat) | set(new_flat)
        if name not in OPERATIONAL_FIELDS and old_flat.get(name) != new_flat.get(name)
    )


class RunFiles:
    """Reads and writes one workdir's run files."""

    def __init__(self, workdir: str | os.PathLike):
        self.root = Path(workdir)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--workdir {self.root} is a file, but a workdir must be a folder; "
                              "pass a new path or the folder of an existing run")
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.result_path = self.root / "result.json"
        self.checkpoint_dir = self.root / "checkpoints"

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--workdir {self.root} cannot be created ({error.strerror}: "
                              f"{error.filename}); pass a folder path you can write to") from None

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Records the config; refuses a workdir that holds a run of a different config."""
        new = json.loads(config.to_json())
        old = read_json(self.config_path)
        if old is not None:
            changed = differing_fields(old, new)
            if changed:
                raise ConfigError(
                    f"{self.root} holds a run with a different config (fields {', '.join(changed)}); "
                    "use a new --workdir, or the same config to resume it"
                )
        if is_writer():
            write_json_atomic(self.config_path, new)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a kill; everything after it is gone too
        return records

    def truncate_metrics(self, last_step: int) -> None:
        """Drops records past ``last_step`` (written after the checkpoint a resume starts from)."""
        if not is_writer() or not self.metrics_path.exists():
            return
        kept = [r for r in self.read_metrics() if r["step"] <= last_step]
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def last_record(self, kind: str) -> dict[str, Any]:
        """The last metrics record of ``kind`` ("train", "eval"), or {} when there is none."""
        records = [r for r in self.read_metrics() if r.get("kind") == kind]
        return records[-1] if records else {}

    def append_metrics(self, record: dict[str, Any]) -> None:
        if is_writer():
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()

    def write_result(self, result: dict[str, Any]) -> None:
        if is_writer():
            write_json_atomic(self.result_path, result)

    def read_result(self) -> dict[str, Any] | None:
        return read_json(self.result_path)


class Stopwatch:
    """Seconds spent per activity (a run's: train.ACTIVITIES, carried over resumed attempts by its
    checkpoints; a sweep runner's: summary.RUNNER_ACTIVITIES)."""

    def __init__(self, activities: tuple[str, ...]):
        self.seconds = dict.fromkeys(activities, 0.0)

    @contextlib.contextmanager
    def __call__(self, activity: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[activity] += time.perf_counter() - start

    def add(self, seconds: dict[str, float]) -> None:
        for activity, value in seconds.items():
            self.seconds[activity] += value
