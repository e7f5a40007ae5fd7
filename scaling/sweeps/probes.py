"""Linear-probe jobs over a sweep: ``scaling probe runs/<sweep> --dataset NAME`` probes every completed run.

Each job is one run's checkpoint at one eval point on one data set, evaluated as ``scaling probe`` evaluates
a workdir (scaling.evaluation.probe), on as many examples as the run's own probes unless told otherwise.
By default a run's one job is its final checkpoint; ``points="all"`` adds every earlier eval point of the
main run: its initialisation (step 0, re-created from its seed) and each mid-schedule point, whose
checkpoint the run keeps only when trained with ``keep_eval_checkpoints`` (cool-down branches are trained
and discarded, so they are not among them). A job's files live in ``<run>/probes/<job>/``, the job named
by the data set key (``cifar10_jpeg``, the final point) or that and the step (``cifar10_jpeg-step40``):
``result.json`` (the probe's fields, written atomically when it is done) and the lease files of
scaling.sweeps.store, whose store here is rooted at the run's ``probes`` folder with one entry per job. So
a prober killed and started again, or several started at once, probe nothing twice: a job with a result
is skipped and a live lease is left to its owner. The results table (scaling.sweeps.results) joins each
probe's fields onto the run's eval record at the probed step as ``<data set>_<field>``
(``cifar10_jpeg_probe_accuracy``), so ``scaling analyze --metric cifar10_jpeg_probe_error`` fits the
transfer probe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from scaling.errors import ConfigError
from scaling.evaluation.probe import load_run_config, probe_checkpoint
from scaling.state import Checkpoints
from scaling.sweeps.results import PROBE_RESULT, PROBES, dataset_key
from scaling.sweeps.store import COMPLETED, LEASE_TIMEOUT_S, Heartbeats, Store, ended_status
from scaling.workdir import COOLDOWN_BRANCH, RunFiles, write_json_atomic

Print = Callable[[str], None]


POINTS = ("final", "all")


def completed_runs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a sweep folder; pass <root>/<sweep>, e.g. runs/quickstart")
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and ended_status(p) == COMPLETED)
    if not runs:
        raise ConfigError(f"{sweep_dir} holds no completed run; run the sweep first")
    return runs


def probe_steps(run_dir: Path, points: str) -> list[int]:
    """The main run's steps to probe: the final checkpoint's, and with ``points="all"`` every eval point's
    before it (the init record's step 0 included). ConfigError when one of those has no checkpoint."""
    files, kept = RunFiles(run_dir), []
    if files.checkpoint_dir.is_dir():
        checkpoints = Checkpoints(files.checkpoint_dir)
        kept = checkpoints.steps()
        checkpoints.close()
    if not kept:
        raise ConfigError(f"{files.checkpoint_dir} holds no checkpoint to probe; train the run again")
    if points == "final":
        return kept[-1:]
    evals = {r["step"] for r in files.read_metrics() if r.get("kind") == "eval"
             and r.get("point") != COOLDOWN_BRANCH and "cooldown_steps" not in r}
    missing = sorted(evals - {0, *kept})
    if missing:
        raise ConfigError(f"run {run_dir.name} kept no checkpoint of its eval points at steps "
                          f"{', '.join(map(str, missing))}; probe its final point (--points final), or train "
                          "with --config.keep_eval_checkpoints=true, which keeps one per eval point")
    return sorted(evals | {kept[-1]})


def job_name(dataset: str, step: int, final_step: int, train_per_class: int | None = None) -> str:
    key = dataset_key(dataset, train_per_class)
    return key if step == final_step else f"{key}-step{step}"


def _probe_one(run_dir: Path, output: Path, dataset: str, step: int, max_train: int | None,
               max_test: int | None, train_per_class: int | None) -> dict[str, Any]:
    e = load_run_config(RunFiles(run_dir)).eval
    result = probe_checkpoint(run_dir, dataset=dataset, step=step, train_per_class=train_per_class,
                              max_train=None if train_per_class else max_train or e.probe_train_examples,
                              max_test=max_test or e.probe_test_examples)
    if jax.process_index() == 0:
        write_json_atomic(output, {"status": COMPLETED, **result})
    return result


def probe_sweep(sweep_dir: str | Path, dataset: str, *, points: str = "final", max_train: int | None = None,
                max_test: int | None = None, train_per_class: int | None = None,
                lease_timeout_s: float = LEASE_TIMEOUT_S,
                out: Print = print) -> dict[str, int]:
    """Probes on ``dataset`` every completed run of the sweep at its final point (or, ``points="all"``,
    every eval point) not probed there yet; returns how many jobs were probed here, found done, or left to
    another prober holding them. Every run's checkpoints are checked before the first job; a problem with
    the data set (scaling.errors.UserError) stops it, leases released, before the next job."""
    if points not in POINTS:
        raise ConfigError(f"--points {points}: choose final (each run's last checkpoint) or all (every eval "
                          "point)")
    jobs = [(run_dir, step, steps[-1]) for run_dir in completed_runs(Path(sweep_dir))
            for steps in [probe_steps(run_dir, points)] for step in steps]
    counts: Counter[str] = Counter()
    for run_dir, step, final_step in jobs:
        store = Store(run_dir, PROBES, lease_timeout_s)
        job = job_name(dataset, step, final_step, train_per_class)
        generation = store.claim(job)
        if generation is None:
            counts["done" if store.finished_state(job) else "held"] += 1
            continue
        with Heartbeats(store) as beats:
            beats.hold(job, generation)
            try:
                result = _probe_one(run_dir, store.run_dir(job) / PROBE_RESULT, dataset, step, max_train,
                                    max_test, train_per_class)
            finally:
                store.release(job, generation)
        counts["probed"] += 1
        out(f"{run_dir.name}: {dataset} probe at step {result['step']}: best layer {result['probe_layer']} "
            f"{100 * result['probe_accuracy']:.1f}%")
    return {state: counts[state] for state in ("probed", "done", "held")}
