"""The files of a run's workdir: config.json, metrics.jsonl and result.json, and how a run ends.

Only process 0 writes. Every writer here either appends whole lines or replaces a file by rename
(``write_atomic``, the one atomic writer of the package: palettes, tables and summaries use it too), so
a run killed at any moment leaves files that parse. A run's status (result.json's, and the outcome a
sweep executor reports) is one of ``RUN_STATUSES``; ``Stopwatch`` accounts for result.json's ``seconds``.
Each metrics record is mirrored as TensorBoard scalars (scaling.events). It imports nothing of the package
but its errors and that mirror, so every layer may use it.
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

from scaling.errors import ConfigError, warn
from scaling.events import FOLDER, EventScalars

# How a run ended: result.json's ``status`` (completed, diverged) or, for a run that raised, the outcome
# the sweep records (failed).
COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
RUN_STATUSES = (COMPLETED, DIVERGED, FAILED)
# How an attempt ended without ending its run (attempts.jsonl): stopped by a signal after writing a
# checkpoint, or its worker process died. A rerun resumes the run.
INTERRUPTED, DIED = "interrupted", "died"
ATTEMPT_ENDS = (INTERRUPTED, DIED)

# The kinds of compute point an eval record in metrics.jsonl is (its ``point`` field). Only the honest ones
# stand for what a run ending at their compute would reach: the end of a schedule, or a cool-down branch.
END_OF_SCHEDULE, MID_SCHEDULE, COOLDOWN_BRANCH = "end_of_schedule", "mid_schedule", "cooldown_branch"
INIT = "init"  # the parameters at step 0, probed as the baseline of every later point (zero training FLOPs)
HONEST_POINTS = (END_OF_SCHEDULE, COOLDOWN_BRANCH)

# Fields that change how a run is watched but not what it computes; a resumed run may change them.
OPERATIONAL_FIELDS = (
    "log_every", "checkpoint_every", "keep_checkpoints", "keep_eval_checkpoints", "data.worker_count",
    "data.data_dir",
)
# Fields added after runs were published, each with the value that reproduces those runs. A config that
# holds that value compares (and is identified, see scaling.sweeps.spec.make_run_id) as one written before
# the field existed, so published run ids and recorded config.json files stay valid.
LATER_FIELDS = {"optim.warmup_examples": 0, "model.parametrization": "standard", "model.base_width": 32,
                "data.caption_field": "", "data.train_transform": "", "data.eval_transform": "",
                "eval.zero_shot_points": "all", "eval.probe_train_per_class": 0, "eval.zero_shot_examples": 0,
                "model.residual_dtype": "float32",
                "eval.evals": ["linear_probe", "fewshot", "pixel_floor", "extra_labels", "zero_shot",
                               "caption_levels", "val_loss"]}


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


def result_fields(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted fields of a config that change results: all but the operational ones and the
    ``LATER_FIELDS`` that hold the value of runs written before them."""
    return {name: value for name, value in flatten(config).items()
            if name not in OPERATIONAL_FIELDS and LATER_FIELDS.get(name, ...) != as_json(value)}


def as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


def differing_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted names of the result-changing fields whose values differ between two configs."""
    old_fields, new_fields = result_fields(old), result_fields(new)
    return sorted(name for name in set(old_fields) | set(new_fields)
                  if old_fields.get(name) != new_fields.get(name))


class RunFiles:
    """Reads and writes one workdir's run files."""

    def __init__(self, workdir: str | os.PathLike):
        self.root = Path(workdir)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--workdir {self.root} is a file, but a workdir must be a folder; "
                              "pass a new path or the folder of an existing run")
        self.config_path = self.root / "config.json"
        self.metrics_path = self.root / "metrics.jsonl"
        self.corrupt_metrics_path = self.root / "metrics.jsonl.corrupt"
        self.result_path = self.root / "result.json"
        self.checkpoint_dir = self.root / "checkpoints"
        self.events = EventScalars(self.root / FOLDER)

    def create(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"--workdir {self.root} cannot be created ({error.strerror}: "
                              f"{error.filename}); pass a folder path you can write to") from None

    def check_writable(self) -> None:
        """Refuses a workdir (or a run file in it) that this process cannot write, before any work."""
        for path in (self.root, self.checkpoint_dir, self.metrics_path):
            if path.exists() and not os.access(path, os.W_OK):
                raise ConfigError(f"--workdir {self.root}: {path} is not writable; make it writable "
                                  "or copy the run to a folder you can write to")

    def read_config(self) -> dict[str, Any] | None:
        """config.json, or None when there is none; one that does not parse is refused."""
        try:
            config = read_json(self.config_path)
        except (ValueError, OSError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            config = error
        if config is None or isinstance(config, dict):
            return config
        raise ConfigError(f"{self.config_path} is not a config ({_short(config)}); move it aside to have it "
                          "rebuilt from the run's latest checkpoint, or use a new --workdir")

    def check_config(self, config: ml_collections.ConfigDict, recorded: dict[str, Any] | None = None) -> None:
        """Refuses a workdir whose config.json, or latest checkpoint (``recorded``: the config stored with
        it), holds a run of a different config than ``config``."""
        new = json.loads(config.to_json())
        for source, old in (("config.json", self.read_config()), ("its latest checkpoint", recorded)):
            changed = [] if old is None else differing_fields(old, new)
            if changed:
                raise ConfigError(
                    f"{self.root} holds a run with a different config (fields {', '.join(changed)} differ "
                    f"from {source}); use a new --workdir, or the same config to resume it"
                )

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Creates the workdir and records the config (after ``check_config``) when it is not there yet:
        a missing config.json is rebuilt, and only once the run is found to start."""
        new = json.loads(config.to_json())
        self.create()
        if is_writer() and self.read_config() != new:
            write_json_atomic(self.config_path, new)

    def _metric_lines(self) -> list[tuple[str, dict[str, Any] | None]]:
        """(line, its record or None when it does not parse as one) for every line of metrics.jsonl."""
        if not self.metrics_path.exists():
            return []
        return [(line, _record(line)) for line in self.metrics_path.read_text().splitlines()]

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl; a line that does not parse is skipped (a resume sets it aside)."""
        return [record for _, record in self._metric_lines() if record is not None]

    def truncate_metrics(self, last_step: int) -> None:
        """Drops the records past ``last_step`` (logged after the checkpoint a resume starts from, so logged
        again) and a final line cut short by a kill. Any other line that does not parse is moved to
        metrics.jsonl.corrupt with a warning; every whole record up to ``last_step`` stays, in order."""
        self.events.start_at(last_step)
        if not is_writer() or not self.metrics_path.exists():
            return
        lines = self._metric_lines()
        count = len(lines)
        if lines and lines[-1][1] is None and not self.metrics_path.read_bytes().endswith(b"\n"):
            lines.pop()  # torn by a kill mid-write
        kept = [line for line, record in lines if record is not None and record["step"] <= last_step]
        corrupt = [(number, line) for number, (line, record) in enumerate(lines, 1) if record is None]
        if corrupt:
            with self.corrupt_metrics_path.open("a") as f:
                f.write("".join(line + "\n" for _, line in corrupt))
            warn(f"{self.metrics_path}: line(s) {', '.join(str(n) for n, _ in corrupt)} do not parse; moved "
                 f"to {self.corrupt_metrics_path}, every whole record kept")
        if len(kept) < count:
            write_atomic(self.metrics_path, "".join(line + "\n" for line in kept).encode())

    def last_record(self, kind: str) -> dict[str, Any]:
        """The last metrics record of ``kind`` ("train", "eval"), or {} when there is none."""
        records = [r for r in self.read_metrics() if r.get("kind") == kind]
        return records[-1] if records else {}

    def append_metrics(self, record: dict[str, Any]) -> None:
        if is_writer():
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
            section = "cooldown" if record.get("point") == COOLDOWN_BRANCH else record["kind"]
            self.events.write(record, section)

    def write_result(self, result: dict[str, Any]) -> None:
        if is_writer():
            write_json_atomic(self.result_path, result)

    def read_result(self) -> dict[str, Any] | None:
        return read_json(self.result_path)


def _record(line: str) -> dict[str, Any] | None:
    """The metrics record a line holds, or None when it holds none."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def _short(error: BaseException | Any) -> str:
    return str(error).splitlines()[0][:200] if isinstance(error, BaseException) else type(error).__name__


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
