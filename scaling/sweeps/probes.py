"""Linear-probe jobs over a sweep: ``scaling probe runs/<sweep> --dataset NAME`` probes every completed run.

Each job is one run's final checkpoint on one data set, evaluated as ``scaling probe`` evaluates a workdir
(scaling.evaluation.probe), on as many examples as the run's own probes unless told otherwise. A job's
files live in ``<run>/probes/<data set key>/``: ``result.json`` (the probe's fields, written atomically when
it is done) and the lease files of scaling.sweeps.store, whose store here is rooted at the run's
``probes`` folder with one entry per data set. So a prober killed and started again, or several started at
once, probe nothing twice: a job with a result is skipped and a live lease is left to its owner. The
results table (scaling.sweeps.results) joins each probe's fields onto the run's row at the probed step as
``<data set>_<field>`` (``cifar10_jpeg_probe_accuracy``), so ``scaling analyze --metric
cifar10_jpeg_probe_error`` fits the transfer probe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from scaling.errors import ConfigError
from scaling.evaluation.probe import load_run_config, probe_checkpoint
from scaling.sweeps.results import PROBE_RESULT, PROBES, dataset_key
from scaling.sweeps.store import COMPLETED, LEASE_TIMEOUT_S, Heartbeats, Store, ended_status
from scaling.workdir import RunFiles, write_json_atomic

Print = Callable[[str], None]


def completed_runs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a sweep folder; pass <root>/<sweep>, e.g. runs/quickstart")
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and ended_status(p) == COMPLETED)
    if not runs:
        raise ConfigError(f"{sweep_dir} holds no completed run; run the sweep first")
    return runs


def _probe_one(run_dir: Path, output: Path, dataset: str, max_train: int | None,
               max_test: int | None) -> dict[str, Any]:
    e = load_run_config(RunFiles(run_dir)).eval
    result = probe_checkpoint(run_dir, dataset=dataset, max_train=max_train or e.probe_train_examples,
                              max_test=max_test or e.probe_test_examples)
    if jax.process_index() == 0:
        write_json_atomic(output, {"status": COMPLETED, **result})
    return result


def probe_sweep(sweep_dir: str | Path, dataset: str, *, max_train: int | None = None,
                max_test: int | None = None, lease_timeout_s: float = LEASE_TIMEOUT_S,
                out: Print = print) -> dict[str, int]:
    """Probes on ``dataset`` every completed run of the sweep that has no such probe yet; returns how many
    jobs were probed here, found done, or left to another prober holding them. A problem with the data
    set (scaling.errors.UserError) stops it, leases released, before the next job."""
    counts: Counter[str] = Counter()
    job = dataset_key(dataset)
    for run_dir in completed_runs(Path(sweep_dir)):
        store = Store(run_dir, PROBES, lease_timeout_s)
        generation = store.claim(job)
        if generation is None:
            counts["done" if store.finished_state(job) else "held"] += 1
            continue
        with Heartbeats(store) as beats:
            beats.hold(job, generation)
            try:
                result = _probe_one(run_dir, store.run_dir(job) / PROBE_RESULT, dataset, max_train, max_test)
            finally:
                store.release(job, generation)
        counts["probed"] += 1
        out(f"{run_dir.name}: {dataset} probe at step {result['step']}: best layer {result['probe_layer']} "
            f"{100 * result['probe_accuracy']:.1f}%")
    return {state: counts[state] for state in ("probed", "done", "held")}
