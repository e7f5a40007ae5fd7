"""The sweep runner: claims runs, has an executor train them, records how each ended, reports progress.

A rerun skips finished runs (completed, diverged or failed; ``retry_failed`` clears failure records first)
once their config.json matches the sweep's (a sweep file edited since they ran is refused), resumes
interrupted runs from their last checkpoint once their lease is stale (train() resumes), and leaves runs that
another live runner holds alone. Every start and end of an attempt is logged in the run's attempts.jsonl. A
run whose worker process died (``died``) is resumed by a rerun, and fails only once that has happened
MAX_DEATHS times. On SIGTERM or SIGINT the runner claims nothing more, its runs in flight checkpoint and stop
(``interrupted``), their leases are released and it exits with status 75. The data sets are built before the
first run starts. At the end the results table, the compute figure (drawn by the ``figure`` function the
caller passes, the analysis layer's when the command line runs it, so this layer imports nothing above it) and
``summary.json`` (where this invocation's wall time went and the share of the machine's float32 peak its
training used; see scaling.sweeps.summary) are written.

On a multi-host TPU slice every host runs the same command; process 0 claims runs and broadcasts which
one to train next, all processes train it together, and only process 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from jax.experimental.multihost_utils import broadcast_one_to_all

from scaling.data.pipeline import ensure_built
from scaling.errors import UserError
from scaling.evaluation.evaluator import eval_data_config
from scaling.objectives import build_objective
from scaling.schedule import run_compute
from scaling.signals import InterruptedRunError, deferred_stops, requested
from scaling.sweeps import pods
from scaling.sweeps.executors import Executor, Handle, InProcess, ProcessPool, RayExecutor, execute_run
from scaling.sweeps.results import build_table, write_table
from scaling.sweeps.spec import Sweep, SweepError, load_sweep
from scaling.sweeps.store import COMPLETED, FAILED, LEASE_TIMEOUT_S, LEFT, RUNNING, STATES, Heartbeats, Store
from scaling.sweeps.summary import RUNNER_ACTIVITIES, matmul_peak, summarize, summary_line, write_summary
from scaling.workdir import DIED, INTERRUPTED, RunFiles, Stopwatch, differing_fields, read_json

Print = Callable[[str], None]
MAX_DEATHS = 3  # attempts whose worker process died before a run counts as failed
Figure = Callable[[pd.DataFrame, Path], Path]  # (results table, path) -> the figure file written
FIGURE_NAME = "compute_vs_probe.png"


def progress(sweep: Sweep, store: Store) -> dict[str, int]:
    counts = Counter(store.state(run.run_id) for run in sweep.runs)
    return {state: counts[state] for state in STATES}


def progress_line(sweep: Sweep, counts: dict[str, int]) -> str:
    return (f"[{sweep.name}] {counts[COMPLETED]} done, {counts[RUNNING]} running, "
            f"{counts[FAILED]} failed, {counts[LEFT]} left")


def _claim_next(sweep: Sweep, store: Store, skip: set[str]) -> tuple[int, int] | None:
    """(index in the sweep, lease generation) of the first run we could claim, or None."""
    for index, run in enumerate(sweep.runs):
        if run.run_id in skip:
            continue
        generation = store.claim(run.run_id)
        if generation is not None:
            return index, generation
    return None


def _begin(store: Store, run) -> Path:
    store.write_spec(run)
    store.log_attempt(run.run_id, "start")
    return store.run_dir(run.run_id)


def _finish(store: Store, run_id: str, generation: int, outcome: dict[str, str]) -> None:
    """Records how the attempt ended and releases the run. A run whose worker died is left to resume
    until that has happened MAX_DEATHS times, which fails it."""
    store.log_attempt(run_id, "end", status=outcome["status"], reason=outcome.get("reason", ""))
    deaths = sum(a["event"] == "end" and a.get("status") == DIED for a in store.attempts(run_id))
    if outcome["status"] == DIED and deaths >= MAX_DEATHS:
        outcome = {"status": FAILED, "reason": f"{outcome['reason']}; its worker died in {deaths} attempts "
                                               "(see attempts.jsonl)"}
    if outcome["status"] == FAILED:
        store.record_failure(run_id, outcome["reason"], outcome.get("detail", ""))
    store.release(run_id, generation)


def _abandon(store: Store, run_id: str, generation: int) -> None:
    """The runner is stopping mid-run: free the run for the next runner, which resumes it."""
    store.log_attempt(run_id, "end", status=INTERRUPTED)
    store.release(run_id, generation)


def _ended_line(sweep: Sweep, store: Store, run_id: str, outcome: dict[str, str]) -> str:
    reason = f" ({outcome['reason']})" if outcome["status"] != COMPLETED else ""
    return f"{progress_line(sweep, progress(sweep, store))}; {run_id} {outcome['status']}{reason}"


def _run_here(sweep: Sweep, store: Store, executor: Executor, out: Print, poll_s: float) -> None:
    """Runs what is left; on a stop signal, claims nothing more, lets the runs in flight checkpoint and
    stop, records them as interrupted and raises InterruptedRunError."""
    in_flight: dict[str, tuple[int, Handle]] = {}  # run id -> (lease generation, handle)
    ended: set[str] = set()
    stopping = False
    with Heartbeats(store) as beats:
        try:
            while True:
                if requested() and not stopping:
                    stopping = True
                    for _, handle in in_flight.values():
                        handle.interrupt()
                for run_id, (generation, handle) in list(in_flight.items()):
                    if run_id in beats.lost:
                        handle.cancel()
                        out(f"lease on {run_id} was taken over by another runner; stopped it here")
                    else:
                        outcome = handle.poll()
                        if outcome is None:
                            continue
                        _finish(store, run_id, generation, outcome)
                        out(_ended_line(sweep, store, run_id, outcome))
                    del in_flight[run_id]
                    beats.drop(run_id)
                    ended.add(run_id)
                while not stopping and len(in_flight) < executor.max_parallel:
                    claimed = _claim_next(sweep, store, ended | set(in_flight))
                    if claimed is None:
                        break
                    index, generation = claimed
                    run = sweep.runs[index]
                    beats.hold(run.run_id, generation)
                    out(f"{progress_line(sweep, progress(sweep, store))}; starting {run.run_id}")
                    try:  # the in-process executor trains inside start()
                        in_flight[run.run_id] = (generation, executor.start(run, _begin(store, run)))
                    except BaseException:
                        _abandon(store, run.run_id, generation)
                        raise
                if not in_flight:
                    break
                time.sleep(poll_s)
        finally:
            for run_id, (generation, handle) in in_flight.items():
                handle.cancel()
                _abandon(store, run_id, generation)
            executor.close()
    _raise_if_stopped(sweep)


def _raise_if_stopped(sweep: Sweep) -> None:
    stop = requested()
    if stop:
        raise InterruptedRunError(f"sweep {sweep.name} interrupted by {stop}: its runs in flight wrote a "
                                  "checkpoint and released their leases; rerun the same command to resume")


def _run_multihost(sweep: Sweep, store: Store, out: Print) -> None:
    """Process 0 picks each run; every process trains it (train() writes only on process 0)."""
    writer, ended = jax.process_index() == 0, set()
    with Heartbeats(store) as beats:
        while True:
            claimed = _claim_next(sweep, store, ended) if writer else None
            index = int(broadcast_one_to_all(np.int32(-1 if claimed is None else claimed[0])))
            if index < 0:
                return
            run = sweep.runs[index]
            ended.add(run.run_id)
            if writer:
                beats.hold(run.run_id, claimed[1])
                out(f"{progress_line(sweep, progress(sweep, store))}; starting {run.run_id}")
                _begin(store, run)
            outcome = execute_run(run.config, str(store.run_dir(run.run_id)))
            if writer:
                _finish(store, run.run_id, claimed[1], outcome)
                beats.drop(run.run_id)
                out(_ended_line(sweep, store, run.run_id, outcome))
            _raise_if_stopped(sweep)


def run_sweep(sweep: Sweep, root: str | Path, executor: Executor | None = None, *,
              lease_timeout_s: float = LEASE_TIMEOUT_S, retry_failed: bool = False,
              multihost: bool = False, out: Print = print, poll_s: float = 0.5,
              account: tuple[float, Stopwatch] | None = None, figure: Figure | None = None) -> dict[str, int]:
    """Runs what is left of ``sweep`` under ``root``; returns the final count of runs per state. The
    results table is written at the end, and the compute figure when ``figure`` draws one.

    ``account`` is (start time, the runner's stopwatch) when the caller's time counts too (``main``
    times loading the sweep file); by default the account starts here."""
    start, clock = account or (time.perf_counter(), runner_stopwatch())
    store = Store(root, sweep.name, lease_timeout_s)
    check_recorded_configs(sweep, store)
    writer = True
    if multihost:
        writer = jax.process_index() == 0
    if retry_failed and writer:
        for run in sweep.runs:
            store.clear_failure(run.run_id)
    done_before = {run.run_id for run in sweep.runs if store.state(run.run_id) == COMPLETED}
    if multihost:
        _run_multihost(sweep, store, out)
    else:
        with clock("data"):
            build_data(sweep)
        _run_here(sweep, store, executor or InProcess(), out, poll_s)
    counts = progress(sweep, store)
    if writer:
        out(progress_line(sweep, counts))
        with clock("outputs"):
            write_outputs(store, out, figure)
        for run in sweep.runs:
            if store.state(run.run_id) == FAILED:
                out(f"  failed: {run.run_id}: {store.failure_reason(run.run_id)}")
        trained = [run.run_id for run in sweep.runs
                   if run.run_id not in done_before and store.state(run.run_id) == COMPLETED]
        write_account(store, trained, clock.seconds, time.perf_counter() - start, out)
    return counts


def check_recorded_configs(sweep: Sweep, store: Store) -> None:
    """Refuses a sweep whose run folders hold runs of other configs (a sweep file edited since they ran),
    before anything runs: their records would be counted for the sweep's configs."""
    for run in sweep.runs:
        recorded = RunFiles(store.run_dir(run.run_id)).read_config()
        changed = [] if recorded is None else differing_fields(recorded, json.loads(run.config.to_json()))
        if changed:
            raise SweepError(f"sweep {sweep.name}: {store.run_dir(run.run_id)} holds a run of a different "
                             f"config (fields {', '.join(changed)}); restore the sweep file's values, or "
                             "move that folder aside to run it anew")


def runner_stopwatch() -> Stopwatch:
    return Stopwatch(RUNNER_ACTIVITIES)


def build_data(sweep: Sweep) -> None:
    """Builds (once) every training and probe data set the sweep's runs read. One that cannot be built is
    left to the runs that read it, which fail with its error and the sweep goes on."""
    seen = set()
    for run in sweep.runs:
        for data in (run.config.data, eval_data_config(run.config)):
            key = (data.name, data.image_size, data.data_dir)
            if key not in seen:
                seen.add(key)
                with contextlib.suppress(UserError):
                    ensure_built(data)


def write_account(store: Store, trained: list[str], runner_seconds: dict[str, float], wall_s: float,
                  out: Print) -> None:
    """summary.json of this invocation (kept as it was when no run trained), and its line."""
    if not trained:
        out("no run trained in this invocation; summary.json describes the last one that trained")
        return
    results = [read_json(store.run_dir(run_id) / "result.json") for run_id in trained]
    peak = matmul_peak()
    summary = summarize(results, runner_seconds, wall_s, peak)
    out(f"{summary_line(summary)}\nsummary: {write_summary(summary, store.sweep_dir)}")


def write_outputs(store: Store, out: Print, figure: Figure | None = None) -> None:
    """The results table (CSV) and, with ``figure`` and points to draw, the compute figure."""
    table = build_table(store.sweep_dir)
    out(f"results table: {write_table(table, store.sweep_dir)} ({len(table)} rows)")
    if figure is not None and not table.empty:
        out(f"figure: {figure(table, store.sweep_dir / FIGURE_NAME)}")


def describe(sweep: Sweep, store: Store) -> str:
    """A dry-run listing: one line per run with its steps, compute (cool-down branches included) and state."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs in {store.sweep_dir}"]
    total = 0.0
    for run in sweep.runs:
        compute = run_compute(run.config, build_objective(run.config).train_flops_per_example())
        total += compute.total
        lines.append(f"  {run.run_id:<56} {run.config.total_steps:>7} steps "
                     f"{compute.total:9.3g} FLOPs  {store.state(run.run_id)}")
    lines.append(f"total {total:.3g} training FLOPs (cool-down branches included)")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``scaling sweep`` was asked to do."""

    root: str = "runs"
    executor: str = "local"
    max_parallel: int = 1
    dry_run: bool = False
    launch: bool = False
    tpu: str | None = None
    zone: str | None = None
    cluster: str | None = None
    distributed: bool = False
    lease_timeout_s: float = LEASE_TIMEOUT_S
    retry_failed: bool = False


def make_executor(options: Options) -> Executor:
    if options.max_parallel < 1:
        raise SweepError(f"--max-parallel must be at least 1, got {options.max_parallel}")
    if options.executor == "ray":
        return RayExecutor(options.max_parallel)
    if options.executor != "local":
        raise SweepError(f"--executor {options.executor!r} does not train here; use local or ray")
    return InProcess() if options.max_parallel == 1 else ProcessPool(options.max_parallel)


def main(sweep_path: str, options: Options, out: Print = print,
         figure: Figure | None = None) -> dict[str, int] | None:
    """``scaling sweep``: list, launch on a pod, or run a sweep (drawing its compute figure with
    ``figure``); returns the final counts if it ran."""
    start, clock = time.perf_counter(), runner_stopwatch()
    with clock("load"):  # objectives are built here (for their FLOPs; building one reads no data)
        sweep = load_sweep(sweep_path)
    store = Store(options.root, sweep.name, options.lease_timeout_s)
    if options.executor in pods.POD_EXECUTORS:
        commands = pods.commands(options.executor, sweep_path, sweep.name, options)
        out("\n".join(pods.render(command) for command in commands))
        if options.launch:
            pods.launch(commands, out=out)
        return None
    if options.dry_run:
        out(describe(sweep, store))
        return None
    if options.distributed:
        if options.executor != "local" or options.max_parallel != 1:
            raise SweepError("--distributed runs one run at a time on every host: use --executor local "
                             "--max-parallel 1")
        jax.distributed.initialize()
    with deferred_stops():  # preemption notices: runs checkpoint and release their leases on the way out
        return run_sweep(sweep, options.root, None if options.distributed else make_executor(options),
                         lease_timeout_s=options.lease_timeout_s, retry_failed=options.retry_failed,
                         multihost=options.distributed, out=out, account=(start, clock), figure=figure)
