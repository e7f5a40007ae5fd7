"""The one training loop, for any Objective.

It follows the run's schedule (``scaling.schedule``: learning rates, eval milestones, cool-down branches,
compute) with the run's compiled step (``scaling.step.build_training``: model state, optimizer, jitted
step): resume from the latest complete checkpoint, metrics.jsonl records carrying cumulative training
FLOPs, and result.json at the end. It never asks which objective it runs.

Every eval record says which kind of compute point it is (``point``): ``init`` for the parameters at step 0
(the run's initialisation baseline, ``scaling.evaluation.init_probe``, at zero training FLOPs),
``end_of_schedule`` at the last step,
``mid_schedule`` before it (a point that understates what a run ending there would reach), and, with the
warmup-stable-decay schedule, ``cooldown_branch``: at each earlier eval milestone a short linear cool-down
forked from the live state (its own data stream, copies of the state) is trained, evaluated and discarded,
and its record sits at the main run's FLOPs plus the branch's (a branch whose rates are all zero, one step to
a final rate of 0, would not change the state: it is the live state, and its record the main run's
evaluation at that step, taken again). The learning rate is an argument of the
compiled step, so the branch runs through the same executable as the main run, and a run's step does not
depend on its length: budget siblings and reruns load one executable from the persistent compilation cache
(``xla_cache`` beside the data directory).

A run accounts for its wall time: result.json's ``seconds`` splits it into setup (model, data, evaluator),
compile (initialisation and the first step, which is mostly its compilation), train (the steps, cool-down
branches included), eval (probes, validation loss, samples) and checkpoint, summed over resumed attempts.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from scaling.data.pipeline import make_eval_iterator, make_train_iterator
from scaling.errors import UserError
from scaling.evaluation.evaluator import Evaluator, copied_record
from scaling.evaluation.init_probe import init_probe
from scaling.objectives import validate_config
from scaling.objectives.base import SampleWriter
from scaling.schedule import (
    Compute,
    branch_seed,
    cooldown_branches,
    cooldown_rates,
    final_rate,
    learning_rates,
    run_compute,
)
from scaling.sharding import make_mesh
from scaling.signals import InterruptedRunError, deferred_stops, requested
from scaling.state import Checkpoints, ModelState, Params, recorded_config, use_compilation_cache
from scaling.step import Training, build_training
from scaling.workdir import (
    COMPLETED,
    COOLDOWN_BRANCH,
    DIVERGED,
    END_OF_SCHEDULE,
    INIT,
    MID_SCHEDULE,
    RunFiles,
    Stopwatch,
    is_writer,
)


class DivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite."""

    exit_status = 1


ACTIVITIES = ("setup", "compile", "train", "eval", "checkpoint")

def _log_points(config: ml_collections.ConfigDict) -> Callable[[int], bool]:
    return lambda step: step % config.log_every == 0 or step == config.total_steps


def train(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (or resumes) the run described by ``config`` in ``workdir``; returns result.json's dict.

    Raises DivergedError (after writing a failure record) when the loss stops being finite, and
    InterruptedRunError after a SIGTERM or SIGINT, once the step it came in and its checkpoint are done.
    """
    validate_config(config, jax.device_count(), jax.process_count())
    files = RunFiles(workdir)
    files.check_config(config, recorded_config(files.checkpoint_dir))
    done = files.read_result()
    if done is not None:
        return done
    files.check_writable()

    use_compilation_cache(config.data)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh), deferred_stops():
        return _train(config, files, mesh)


def _train(config: ml_collections.ConfigDict, files: RunFiles, mesh: Mesh) -> dict[str, Any]:
    run = _Attempt(config, files, time.perf_counter(), Stopwatch(ACTIVITIES))
    clock = run.clock
    with clock("setup"):
        training = build_training(config, mesh)
        run.compute = run_compute(config, training.state.objective.train_flops_per_example())
        # the training and probe data are found (or refused) before anything is compiled
        data = train_iterator(config, config.seed)
        evaluator = Evaluator(config, training.state)
        files.write_config(config)  # the run starts: every input has been found
    with clock("compile"):
        params, opt_state = training.init(config.seed)
    with clock("setup"):
        checkpoints = Checkpoints(files.checkpoint_dir, config)
        params, opt_state, step = run.resume(checkpoints, data, params, opt_state)
        last = files.last_record("train")  # result.json's final_loss also when no step is left to run
        rates = learning_rates(config.optim, config.total_steps, config.batch_size)
        branches = cooldown_branches(config)
    is_log_step = _log_points(config)
    if step == 0:
        run.probe_init(evaluator, training.state, params)
    bar = tqdm(total=config.total_steps, initial=step, disable=not is_writer(), unit="step",
               dynamic_ncols=True)
    first_step = True  # of this attempt: compiles (or loads) the step, so its time counts as compile
    try:
        while step < config.total_steps:
            with clock("compile" if first_step else "train"):
                batch = training.shard(next(data))
                params, opt_state, metrics = training.step(params, opt_state, batch, jnp.int32(step),
                                                           rates[step])
                if first_step:
                    jax.block_until_ready(params)
            first_step, step = False, step + 1
            bar.update(1)
            checkpoint_due = (step % config.checkpoint_every == 0 or step == config.total_steps
                              or config.keep_eval_checkpoints and evaluator.due(step))
            if is_log_step(step) or checkpoint_due:
                last = run.log(step, metrics)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            if evaluator.due(step) or step in branches or checkpoint_due:
                with clock("train"):  # the steps dispatched so far end before anything else starts
                    jax.block_until_ready(params)
            record = run.evaluate(evaluator, step, params) if evaluator.due(step) else None
            if step in branches:
                with clock("train"):
                    cooled = cool_down(config, training, params, opt_state, step,
                                       cooldown_rates(rates[step], final_rate(config.optim), branches[step]))
                run.evaluate(evaluator, step, cooled, cooldown_steps=branches[step],
                             same_as=record if cooled is params else None)
            run.checkpoint(checkpoints, step, params, opt_state, data, due=checkpoint_due)
        with clock("checkpoint"):
            checkpoints.wait()
    finally:
        bar.close()
        checkpoints.close()
        data.close()
        files.events.close()
    with clock("eval"):
        _write_samples(config, training, params, files)
    return run.finish(step, last)


@dataclasses.dataclass
class _Attempt:
    """One attempt at a run (a first start or a resume): its clocks, and the records its steps write."""

    config: ml_collections.ConfigDict
    files: RunFiles
    start: float
    clock: Stopwatch
    compute: Compute | None = None
    wall_offset: float = 0.0  # wall time of the attempts before this one

    def wall(self) -> float:
        return self.wall_offset + time.perf_counter() - self.start

    def point(self, step: int, steps: int) -> dict[str, Any]:
        """Where a record sits: the main run's ``step``, and the examples and FLOPs of ``steps`` steps."""
        return {"step": step, "examples": steps * self.config.batch_size,
                "flops": steps * self.compute.flops_per_step, "wall_s": self.wall()}

    def resume(self, checkpoints: Checkpoints, data, params: Params, opt_state) -> tuple[Params, Any, int]:
        """The state of the latest intact checkpoint (or the initial one) and its step; drops records
        logged after it."""
        step = 0
        restored = checkpoints.restore_latest(params, opt_state)
        if restored is not None:
            params, opt_state, data_state, progress = restored
            data.set_state(data_state)
            step, self.wall_offset = progress["step"], progress["wall_s"]
            self.clock.add(progress.get("seconds", {}))
        self.files.truncate_metrics(step)  # records logged after the checkpoint resumed from (or with none)
        return params, opt_state, step

    def probe_init(self, evaluator: Evaluator, state: ModelState, params: Params) -> None:
        """The init record (unless one is logged): the probe of the step-0 parameters, the baseline every
        later probe is measured against, cached per initialisation."""
        if evaluator.evaluation is None or self.files.last_record("eval"):
            return
        start = time.perf_counter()
        with self.clock("eval"):
            record = init_probe(self.config, state, params)
        self.files.append_metrics({"kind": "eval", "point": INIT, **self.point(0, 0), **record,
                                   "eval_s": time.perf_counter() - start})

    def log(self, step: int, metrics: dict[str, jax.Array]) -> dict[str, float]:
        """A train record of the step's metrics; DivergedError once the loss is not finite."""
        with self.clock("train"):  # waits for the steps dispatched so far
            host = {key: float(value) for key, value in jax.device_get(metrics).items()}
        if not math.isfinite(host["loss"]):
            self.diverged(step, host)
        self.files.append_metrics({"kind": "train", **self.point(step, step), **host})
        return host

    def evaluate(self, evaluator: Evaluator, step: int, params: Params, cooldown_steps: int = 0,
                 same_as: dict[str, Any] | None = None) -> dict[str, Any]:
        """An eval record of ``params``: the main run's at ``step``, or a cool-down branch's forked there;
        ``same_as``, the record of these very parameters, is taken as it is instead of evaluating again.
        Returns the evaluation's fields."""
        end_of_schedule = not cooldown_steps and step == self.config.total_steps
        with self.clock("eval"):
            record = evaluator(params, end_of_schedule) if same_as is None else copied_record(same_as)
        if cooldown_steps:
            where = {"point": COOLDOWN_BRANCH, **self.point(step, step + cooldown_steps),
                     "cooldown_steps": cooldown_steps}
        else:
            kind = END_OF_SCHEDULE if end_of_schedule else MID_SCHEDULE
            where = {"point": kind, **self.point(step, step)}
        self.files.append_metrics({"kind": "eval", **where, **record})
        return record

    def checkpoint(self, checkpoints: Checkpoints, step: int, params: Params, opt_state, data,
                   due: bool) -> None:
        """Saves ``step`` when a checkpoint is ``due`` or a stop (a preemption notice) was requested; after
        a stop, one that came during the save too, raises InterruptedRunError unless the run is done."""
        stop = requested()
        if due or stop:
            with self.clock("checkpoint"):
                progress = {"step": step, "wall_s": self.wall(), "seconds": dict(self.clock.seconds)}
                checkpoints.save(step, params, opt_state, data.get_state(), progress)
            stop = requested()
        if stop and step < self.config.total_steps:
            raise InterruptedRunError(f"interrupted by {stop} at step {step}; its checkpoint is in "
                                      f"{self.files.checkpoint_dir}: rerun the same command to resume")

    def diverged(self, step: int, metrics: dict[str, float]) -> None:
        reason = f"loss became {metrics['loss']} at step {step}"
        c = self.config
        self.files.write_result(
            {"status": DIVERGED, "reason": reason, "objective": c.objective, "size": c.size,
             "step": step, "flops": step * self.compute.flops_per_step, "wall_s": self.wall()}
        )
        raise DivergedError(f"the run diverged: {reason}; lower optim.learning_rate or warm up "
                            "longer (optim.warmup_examples or optim.warmup_steps)")

    def finish(self, step: int, last: dict[str, Any]) -> dict[str, Any]:
        """result.json: the run's compute (cool-down branches included), final loss and time."""
        c, compute = self.config, self.compute
        result = {
            "status": COMPLETED,
            "objective": c.objective,
            "size": c.size,
            "step": step,
            "examples": step * c.batch_size,
            "flops": compute.main,
            "cooldown_flops": compute.cooldown,
            "total_flops": compute.total,
            "flops_per_example": compute.flops_per_step / c.batch_size,
            "final_loss": last.get("loss"),
            "wall_s": self.wall(),
            "seconds": dict(self.clock.seconds),
        }
        self.files.write_result(result)
        return result


def train_iterator(config: ml_collections.ConfigDict, seed: int):
    """This process's shard of the training stream of data order ``seed``."""
    return make_train_iterator(
        config.data, batch_size=config.batch_size, seed=seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )


def cool_down(config: ml_collections.ConfigDict, training: Training, params: Params, opt_state, step: int,
              rates: np.ndarray) -> Params:
    """Parameters after a cool-down branch forked at ``step``: copies of the state trained through ``rates``
    on a data stream of the branch's own, so the main run's state and data are untouched. Rates that are all
    zero (a one-step branch to a final rate of 0) would leave every parameter as it is (the step scales its
    update by the rate), so the branch is ``params`` themselves, untrained."""
    if not rates.any():
        return params
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
    data = train_iterator(config, branch_seed(config.seed, step))
    try:
        for offset, rate in enumerate(rates):
            batch = training.shard(next(data))
            params, opt_state, _ = training.step(params, opt_state, batch, jnp.int32(step + offset), rate)
    finally:
        data.close()
    return jax.block_until_ready(params)


SAMPLE_BATCH = 16


def _write_samples(config, training: Training, params: Params, files: RunFiles) -> None:
    """Lets the objective write samples for the first test examples into ``workdir/samples``."""
    objective = training.state.objective
    if not isinstance(objective, SampleWriter) or not is_writer():
        return
    batch = next(make_eval_iterator(config.data, "test", batch_size=SAMPLE_BATCH, max_examples=SAMPLE_BATCH))
    model = training.state.model(jax.device_get(params))
    directory = files.root / "samples"
    directory.mkdir(exist_ok=True)
    objective.write_samples(model, batch, jax.random.key(config.seed), directory)
