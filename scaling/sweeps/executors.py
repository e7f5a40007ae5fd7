"""Where a run trains: in this process, in spawned worker processes, or as Ray tasks.

Every executor calls a job, by default ``execute_run(config, workdir)``, which trains (or resumes) the
run and turns its end into an outcome {"status": one of scaling.workdir.RUN_STATUSES or ATTEMPT_ENDS,
"reason", "detail"}. The runner holds the run's lease and records the outcome; an executor only trains.
``start`` returns a handle whose ``poll()`` gives the outcome once the run has ended (None before),
``interrupt()`` asks the run to checkpoint and stop (its outcome is then ``interrupted``), and ``cancel()``
kills it. A worker process that dies without an outcome (killed, out of memory) ends as ``died``: the
run is left to resume, not failed.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

import ml_collections

from scaling.signals import InterruptedRunError
from scaling.sweeps.spec import RunSpec, SweepError
from scaling.train import DivergedError, train
from scaling.workdir import DIED, DIVERGED, FAILED, INTERRUPTED

Outcome = dict[str, str]
Job = Callable[[ml_collections.ConfigDict, str], Outcome]
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def failed_outcome(error: BaseException) -> Outcome:
    return {"status": FAILED, "reason": f"{type(error).__name__}: {error}",
            "detail": "".join(traceback.format_exception(error))}


def execute_run(config: ml_collections.ConfigDict, workdir: str) -> Outcome:
    """Trains or resumes one run; a divergence or an exception becomes an outcome, not a raise."""
    try:
        result = train(config, workdir)
    except DivergedError as error:
        return {"status": DIVERGED, "reason": str(error)}
    except InterruptedRunError as error:
        return {"status": INTERRUPTED, "reason": str(error)}
    except Exception as error:  # isolate the failure: the sweep goes on with the other runs
        return failed_outcome(error)
    return {"status": result["status"], "reason": result.get("reason", "")}


class Handle(Protocol):
    def poll(self) -> Outcome | None: ...

    def interrupt(self) -> None: ...

    def cancel(self) -> None: ...


class Executor(Protocol):
    max_parallel: int

    def start(self, run: RunSpec, workdir: Path) -> Handle: ...

    def close(self) -> None: ...


# --- in this process ---------------------------------------------------------------------------------


class Finished:
    def __init__(self, outcome: Outcome):
        self.outcome = outcome

    def poll(self) -> Outcome:
        return self.outcome

    def interrupt(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class InProcess:
    """Runs one run at a time in this process (the only executor for a multi-host TPU sweep)."""

    max_parallel = 1

    def __init__(self, job: Job = execute_run):
        self.job = job

    def start(self, run: RunSpec, workdir: Path) -> Finished:
        return Finished(self.job(run.config, str(workdir)))

    def close(self) -> None:
        pass


# --- spawned worker processes ------------------------------------------------------------------------


def with_device_count(xla_flags: str, count: int) -> str:
    """XLA_FLAGS with the simulated host device count set to ``count`` (replacing any earlier one)."""
    kept = re.sub(rf"{DEVICE_COUNT_FLAG}=\S+", "", xla_flags).split()
    return " ".join([*kept, f"{DEVICE_COUNT_FLAG}={count}"])


class Spawned:
    """A worker process (``scaling.sweeps.worker``) and the pipe its outcome comes through."""

    def __init__(self, process: subprocess.Popen, conn: Connection):
        self.process, self.conn = process, conn

    def poll(self) -> Outcome | None:
        try:
            if self.conn.poll():
                outcome = self.conn.recv()
                self.process.wait()
                return outcome
        except EOFError:  # the worker is gone without an outcome
            self.process.wait()
        if self.process.poll() is None:
            return None
        return {"status": DIED, "reason": f"worker process exited with code {self.process.returncode}"}

    def interrupt(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def cancel(self) -> None:
        self.process.kill()
        self.process.wait()


class ProcessPool:
    """Up to ``max_parallel`` runs at once, each in a fresh spawned process (a crash stays in its run).

    ``devices_per_run`` sets each worker's simulated CPU device count; None keeps this process's XLA_FLAGS.
    """

    def __init__(self, max_parallel: int, devices_per_run: int | None = None, job: Job = execute_run):
        self.max_parallel = max_parallel
        self.job = job
        self.xla_flags = (None if devices_per_run is None
                          else with_device_count(os.environ.get("XLA_FLAGS", ""), devices_per_run))

    def start(self, run: RunSpec, workdir: Path) -> Spawned:
        receive, send = os.pipe()
        env = {**os.environ, **({} if self.xla_flags is None else {"XLA_FLAGS": self.xla_flags})}
        process = subprocess.Popen(
            [sys.executable, "-m", "scaling.sweeps.worker", str(send), str(os.getpid())],
            stdin=subprocess.PIPE, pass_fds=(send,), env=env,
        )
        os.close(send)
        pickle.dump(sys.path, process.stdin)
        pickle.dump((self.job, run.config, str(workdir)), process.stdin)
        process.stdin.close()
        return Spawned(process, Connection(receive, writable=False))

    def close(self) -> None:
        pass


# --- Ray ---------------------------------------------------------------------------------------------


class RayTask:
    def __init__(self, ray, ref):
        self.ray, self.ref = ray, ref
        self.interrupted: Outcome | None = None

    def poll(self) -> Outcome | None:
        if self.interrupted is not None:
            return self.interrupted
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            return self.ray.get(self.ref)
        except Exception as error:  # the worker crashed more often than max_retries allows
            return failed_outcome(error)

    def interrupt(self) -> None:
        """Stops the task; the run resumes from its last regular checkpoint when next claimed."""
        self.cancel()
        self.interrupted = {"status": INTERRUPTED, "reason": "cancelled on a stop signal"}

    def cancel(self) -> None:
        self.ray.cancel(self.ref, force=True)


class RayExecutor:
    """One Ray task per run, retried ``max_retries`` times when its worker process dies.

    Connects to the cluster in $RAY_ADDRESS, or starts a local one. A run's ``resources`` become the
    task's: "CPU" and "GPU" counts, and custom resources such as {"TPU": 4} to ask for a TPU slice.
    The store must be on a file system every node sees.
    """

    def __init__(self, max_parallel: int, max_retries: int = 2, job: Job = execute_run):
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray needs Ray: pip install 'visual-scaling[ray]'") from None
        self.ray, self.max_parallel, self.max_retries = ray, max_parallel, max_retries
        self.started_cluster = not ray.is_initialized()
        if self.started_cluster:
            ray.init()
        self.task = ray.remote(job)

    def start(self, run: RunSpec, workdir: Path) -> RayTask:
        resources = dict(run.resources)
        ref = self.task.options(
            num_cpus=resources.pop("CPU", 1), num_gpus=resources.pop("GPU", 0), resources=resources,
            max_retries=self.max_retries, retry_exceptions=False,
        ).remote(run.config, str(workdir))
        return RayTask(self.ray, ref)

    def close(self) -> None:
        if self.started_cluster:
            self.ray.shutdown()
