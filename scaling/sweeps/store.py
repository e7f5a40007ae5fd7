"""The sweep store: ``<root>/<sweep>/<run_id>/`` holds a run's workdir plus the runner's own files.

Beside train()'s files (config.json, metrics.jsonl, checkpoints/, result.json) a run directory holds
``spec.json`` (budget and grid values), ``attempts.jsonl`` (one line per start and per end of an attempt),
``failure.json`` (why a run that raised failed) and lease files.

Leases: ``lease-<generation>.json`` = {"owner": "host:pid:uuid", "heartbeat": unix time}. The highest
generation is the current lease. Claiming creates the next generation with a hard link, which fails when
the file exists, so of several runners racing for the same generation exactly one wins. A lease is stale
when its heartbeat is older than the timeout, or at once when its owner is a process on this host that
no longer exists; a stale lease is taken over by claiming the next generation. Only the owner of the
current lease trains the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from scaling.sweeps.spec import RunSpec
from scaling.workdir import COMPLETED, FAILED, RunFiles, read_json, write_json_atomic

LEASE_TIMEOUT_S = 120.0
HOST = socket.gethostname()
# States of a run in a sweep, in the order progress reports them: it ended (completed, or failed: diverged
# or raised), an owner holds a live lease on it, or it is left to do.
RUNNING, LEFT = "running", "left"
STATES = (COMPLETED, FAILED, RUNNING, LEFT)


def ended_status(run_dir: Path) -> str | None:
    """How the run in ``run_dir`` ended (a ``scaling.workdir.RUN_STATUSES`` value), None while it has not:
    result.json's status, else failed when the runner recorded a failure."""
    result = RunFiles(run_dir).read_result()
    if result is not None:
        return result["status"]
    return FAILED if (run_dir / "failure.json").exists() else None


def new_owner() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _process_gone(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Store:
    """Run directories and leases of one sweep, seen by one owner."""

    def __init__(self, root: str | Path, sweep: str, lease_timeout_s: float = LEASE_TIMEOUT_S,
                 owner: str | None = None):
        self.sweep_dir = Path(root) / sweep
        self.lease_timeout_s = lease_timeout_s
        self.owner = owner or new_owner()

    def run_dir(self, run_id: str) -> Path:
        return self.sweep_dir / run_id

    # --- state -------------------------------------------------------------------------------------

    def finished_state(self, run_id: str) -> str | None:
        """COMPLETED or FAILED (diverged, or raised) once the run has ended, else None."""
        status = ended_status(self.run_dir(run_id))
        return None if status is None else COMPLETED if status == COMPLETED else FAILED

    def state(self, run_id: str) -> str:
        finished = self.finished_state(run_id)
        if finished is not None:
            return finished
        generation, lease = self._current_lease(run_id)
        return RUNNING if generation is not None and self._live(lease) else LEFT

    def failure_reason(self, run_id: str) -> str | None:
        run_dir = self.run_dir(run_id)
        result = RunFiles(run_dir).read_result()
        if result is not None and result["status"] != COMPLETED:
            return result.get("reason", result["status"])
        failure = read_json(run_dir / "failure.json")
        return failure and failure["reason"]

    # --- leases ------------------------------------------------------------------------------------

    def _lease_path(self, run_id: str, generation: int) -> Path:
        return self.run_dir(run_id) / f"lease-{generation:06d}.json"

    def _generations(self, run_id: str) -> list[int]:
        run_dir = self.run_dir(run_id)
        if not run_dir.exists():
            return []
        return sorted(int(p.stem.partition("-")[2]) for p in run_dir.glob("lease-*.json"))

    def _current_lease(self, run_id: str) -> tuple[int | None, dict[str, Any] | None]:
        generations = self._generations(run_id)
        if not generations:
            return None, None
        path = self._lease_path(run_id, generations[-1])
        try:
            return generations[-1], json.loads(path.read_text())
        except FileNotFoundError:  # released a moment ago
            return self._current_lease(run_id)

    def _live(self, lease: dict[str, Any]) -> bool:
        fresh = time.time() - lease["heartbeat"] < self.lease_timeout_s
        return fresh and not _process_gone(lease["owner"])

    def claim(self, run_id: str) -> int | None:
        """The generation of a new lease on an unfinished, unleased (or stale) run, or None."""
        if self.finished_state(run_id) is not None:
            return None
        generation, lease = self._current_lease(run_id)
        if generation is not None and self._live(lease):
            return None
        mine = 0 if generation is None else generation + 1
        path = self._lease_path(run_id, mine)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_text(json.dumps({"owner": self.owner, "heartbeat": time.time()}))
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        finally:
            tmp.unlink()
        if self._generations(run_id)[-1] != mine or self.finished_state(run_id) is not None:
            path.unlink()  # a newer lease exists, or the run ended between our look and our claim
            return None
        for older in self._generations(run_id):
            if older < mine:
                self._lease_path(run_id, older).unlink(missing_ok=True)
        return mine

    def heartbeat(self, run_id: str, generation: int) -> bool:
        """Refreshes our lease; False when it has been taken over."""
        if self._generations(run_id)[-1:] != [generation]:
            return False
        write_json_atomic(self._lease_path(run_id, generation),
                          {"owner": self.owner, "heartbeat": time.time()})
        return True

    def release(self, run_id: str, generation: int) -> None:
        self._lease_path(run_id, generation).unlink(missing_ok=True)

    # --- records -----------------------------------------------------------------------------------

    def write_spec(self, run: RunSpec) -> None:
        write_json_atomic(self.run_dir(run.run_id) / "spec.json", run.record())

    def log_attempt(self, run_id: str, event: str, **fields: Any) -> None:
        record = {"event": event, "owner": self.owner, "time": time.time(), **fields}
        with (self.run_dir(run_id) / "attempts.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's attempts.jsonl: one record per start and end of an attempt (public: how a run went)."""
        path = self.run_dir(run_id) / "attempts.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def record_failure(self, run_id: str, reason: str, detail: str = "") -> None:
        write_json_atomic(self.run_dir(run_id) / "failure.json",
                          {"reason": reason, "detail": detail, "owner": self.owner, "time": time.time()})

    def clear_failure(self, run_id: str) -> None:
        (self.run_dir(run_id) / "failure.json").unlink(missing_ok=True)


class Heartbeats:
    """A background thread that refreshes the leases we hold; remembers the ones taken over."""

    def __init__(self, store: Store):
        self.store = store
        self.held: dict[str, int] = {}
        self.lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="sweep-heartbeat")

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def hold(self, run_id: str, generation: int) -> None:
        with self._lock:
            self.held[run_id] = generation

    def drop(self, run_id: str) -> None:
        with self._lock:
            self.held.pop(run_id, None)
            self.lost.discard(run_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.store.lease_timeout_s / 4):
            with self._lock:
                held = dict(self.held)
            for run_id, generation in held.items():
                with contextlib.suppress(OSError):
                    if not self.store.heartbeat(run_id, generation):
                        with self._lock:
                            self.lost.add(run_id)

