"""The one training loop, for any Objective.

On the model state (``scaling.state``: objective, graph, parameter shardings, checkpoints) it adds the
optimizer and its sharded state, the jitted step, resume from the latest complete checkpoint, metrics.jsonl
records carrying cumulative training FLOPs, and result.json at the end. It never asks which objective it
runs.

Every eval record says which kind of compute point it is (``point``): ``init`` for the parameters at step 0
(the run's initialisation baseline, ``scaling.evaluation.init_probe``, at zero training FLOPs),
``end_of_schedule`` at the last step,
``mid_schedule`` before it (a point that understates what a run ending there would reach), and, with the
warmup-stable-decay schedule, ``cooldown_branch``: at each earlier eval milestone a short linear cool-down
forked from the live state (its own data stream, copies of the state) is trained, evaluated and discarded,
and its record sits at the main run's FLOPs plus the branch's. The learning rate is an argument of the
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
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from scaling.data.pipeline import make_eval_iterator, make_train_iterator, resolve_data_dir
from scaling.errors import UserError
from scaling.evaluation.evaluator import Evaluator, milestone_steps
from scaling.evaluation.init_probe import init_probe
from scaling.objectives import validate_config
from scaling.objectives.base import Objective, SampleWriter
from scaling.sharding import constrain, make_mesh, shard_batch
from scaling.signals import InterruptedRunError, deferred_stops, requested
from scaling.state import Checkpoints, ModelState, build_model_state, recorded_config
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

Params = dict[str, Any]


class DivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite."""

    exit_status = 1


# --- optimizer ---------------------------------------------------------------------------------------


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine decay or warmup-stable-decay (linear cool-down at the end)."""
    peak, warmup = optim.learning_rate, optim.warmup_steps
    final = peak * optim.final_lr_fraction
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps, final)
    decay_steps = max(1, int(round(optim.decay_fraction * total_steps)))
    stable_steps = max(0, total_steps - warmup - decay_steps)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, peak, warmup),
            optax.constant_schedule(peak),
            optax.linear_schedule(peak, final, decay_steps),
        ],
        boundaries=[warmup, warmup + stable_steps],
    )


def learning_rates(optim: ml_collections.ConfigDict, total_steps: int) -> np.ndarray:
    """The main run's learning rate at every step, float32 [total_steps]."""
    schedule = make_schedule(optim, total_steps)
    return np.asarray(jax.vmap(schedule)(jnp.arange(total_steps)), np.float32)


def cooldown_rates(from_rate: float, final_rate: float, steps: int) -> np.ndarray:
    """A linear cool-down over ``steps`` steps from just below ``from_rate`` down to ``final_rate``."""
    return np.float32(from_rate + (final_rate - from_rate) * np.arange(1, steps + 1) / steps)


def cooldown_branches(config: ml_collections.ConfigDict) -> dict[int, int]:
    """{eval milestone step: cool-down steps} for the branches a run forks (WSD only; none at the end)."""
    fraction = config.eval.cooldown_fraction
    if config.optim.schedule != "wsd" or fraction <= 0:
        return {}
    milestones = milestone_steps(config.total_steps, config.eval.num_points, config.eval.first_fraction)
    return {step: max(1, round(fraction * step)) for step in milestones if step < config.total_steps}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, less its learning rate (the step scales by the rate it is given);
    matrices decay, vectors and scalars (norms, biases) do not."""
    o = config.optim
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.scale_by_adam(b1=o.b1, b2=o.b2),
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
    )


# --- state -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainSetup:
    """The model state plus what training adds to it: the optimizer and its state's shardings."""

    state: ModelState
    tx: optax.GradientTransformation
    opt_shardings: Any


def build_setup(
    config: ml_collections.ConfigDict, mesh: Mesh, objective: Objective | None = None
) -> TrainSetup:
    """The run's model state (``scaling.state.build_model_state``) and optimizer."""
    state = build_model_state(config, mesh, objective)
    tx = make_optimizer(config)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(
        tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, shapes), state.param_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainSetup(state, tx, opt_shardings)


def init_state(setup: TrainSetup, seed: int) -> tuple[Params, Any]:
    """Initial parameters and optimizer state, created directly in their shardings."""

    def init():
        params = setup.state.init_params(seed)
        return params, setup.tx.init(params)

    return jax.jit(init, out_shardings=(setup.state.param_shardings, setup.opt_shardings))()


def microbatches(batch: dict[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B / count, ...]; microbatch k holds rows k, k + count, ..., so each device's
    contiguous shard of the batch splits locally, without moving examples between devices."""
    return {
        key: constrain(x.reshape(-1, count, *x.shape[1:]).swapaxes(0, 1),
                       (None, "batch", *[None] * (x.ndim - 1)))
        for key, x in batch.items()
    }


def accumulated_value_and_grad(loss_fn: Callable, count: int) -> Callable:
    """``value_and_grad(loss_fn, has_aux=True)`` over ``count`` equal microbatches, run one after the
    other: loss, metrics and gradients are their means, so a loss that averages over examples gets
    the full batch's values while activations are held for one microbatch at a time."""
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if count == 1:
        return value_and_grad

    def accumulated(params, batch, rng):
        def body(index, carry):
            microbatch = jax.tree.map(lambda x: x[index], micro)
            out = value_and_grad(params, microbatch, jax.random.fold_in(rng, index))
            return jax.tree.map(lambda total, x: total + x / count, carry, out)

        micro = microbatches(batch, count)
        first = jax.eval_shape(value_and_grad, params, jax.tree.map(lambda x: x[0], micro), rng)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), first)
        return jax.lax.fori_loop(0, count, body, zeros)

    return accumulated


def make_train_step(setup: TrainSetup, seed: int, grad_accum_steps: int = 1) -> Callable:
    """The jitted step: (params, opt_state, batch, step, learning_rate) -> (params, opt_state, metrics);
    gradients accumulate over ``grad_accum_steps`` microbatches of the batch.

    ``params`` and ``opt_state`` are donated: pass copies to keep the originals.
    """

    objective, to_model = setup.state.objective, setup.state.model

    def loss_fn(params, batch, rng):
        return objective.loss(to_model(params), batch, rng)

    value_and_grad = accumulated_value_and_grad(loss_fn, grad_accum_steps)

    def train_step(params, opt_state, batch, step, learning_rate):
        rng = jax.random.fold_in(jax.random.key(seed), step)
        (loss, metrics), grads = value_and_grad(params, batch, rng)
        directions, opt_state = setup.tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda d: -learning_rate * d, directions)
        params = optax.apply_updates(params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": learning_rate,
        }
        return params, opt_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(setup.state.param_shardings, setup.opt_shardings, None, None, None),
        out_shardings=(setup.state.param_shardings, setup.opt_shardings, None),
        donate_argnums=(0, 1),
    )


# --- the loop ----------------------------------------------------------------------------------------

ACTIVITIES = ("setup", "compile", "train", "eval", "checkpoint")
COMPILATION_CACHE = "xla_cache"


def use_compilation_cache(data_config: ml_collections.ConfigDict) -> None:
    """Points JAX's persistent compilation cache at ``xla_cache`` beside the data directory, unless the
    user chose a cache (``JAX_COMPILATION_CACHE_DIR``); steps of equal shape then compile once, ever."""
    if not jax.config.jax_compilation_cache_dir:
        cache = resolve_data_dir(data_config).parent / COMPILATION_CACHE
        jax.config.update("jax_compilation_cache_dir", str(cache))


def _host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
    return {key: float(value) for key, value in jax.device_get(metrics).items()}


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
    start = time.perf_counter()
    clock = Stopwatch(ACTIVITIES)
    with clock("setup"):
        setup = build_setup(config, mesh)
        flops_per_step = setup.state.objective.train_flops_per_example() * config.batch_size
        # the training and probe data are found (or refused) before anything is compiled
        data = make_train_iterator(
            config.data, batch_size=config.batch_size, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
        evaluator = Evaluator(config, setup.state)
        files.write_config(config)  # the run starts: every input has been found
    with clock("compile"):
        params, opt_state = init_state(setup, config.seed)
    with clock("setup"):
        checkpoints = Checkpoints(files.checkpoint_dir, config)
        step, wall_offset = 0, 0.0
        restored = checkpoints.restore_latest(params, opt_state)
        if restored is not None:
            params, opt_state, data_state, progress = restored
            data.set_state(data_state)
            step, wall_offset = progress["step"], progress["wall_s"]
            clock.add(progress.get("seconds", {}))
        files.truncate_metrics(step)  # records logged after the checkpoint resumed from (or with none)
        last = files.last_record("train")  # result.json's final_loss also when no step is left to run
        train_step = make_train_step(setup, config.seed, config.grad_accum_steps)
        rates = learning_rates(config.optim, config.total_steps)
        branches = cooldown_branches(config)
    final_rate = config.optim.learning_rate * config.optim.final_lr_fraction
    is_log_step = _log_points(config)
    wall = lambda: wall_offset + time.perf_counter() - start
    point = lambda steps: {"step": step, "examples": steps * config.batch_size,
                           "flops": steps * flops_per_step, "wall_s": wall()}
    if step == 0 and evaluator.evaluation is not None and not files.last_record("eval"):
        with clock("eval"):  # the baseline every later probe is measured against, cached per initialisation
            record = init_probe(config, setup.state, params)
        files.append_metrics({"kind": "eval", "point": INIT, **point(0), **record})
    bar = tqdm(total=config.total_steps, initial=step, disable=not is_writer(), unit="step",
               dynamic_ncols=True)
    first_step = True  # of this attempt: compiles (or loads) the step, so its time counts as compile
    try:
        while step < config.total_steps:
            with clock("compile" if first_step else "train"):
                batch = shard_batch(next(data), mesh)
                params, opt_state, metrics = train_step(params, opt_state, batch, jnp.int32(step),
                                                        rates[step])
                if first_step:
                    jax.block_until_ready(params)
            first_step = False
            step += 1
            bar.update(1)
            checkpoint_due = step % config.checkpoint_every == 0 or step == config.total_steps
            if is_log_step(step) or checkpoint_due:
                with clock("train"):  # waits for the steps dispatched so far
                    last = _host_metrics(metrics)
                if not math.isfinite(last["loss"]):
                    _record_divergence(files, config, step, flops_per_step, last, wall())
                files.append_metrics({"kind": "train", **point(step), **last})
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            if evaluator.due(step) or step in branches or checkpoint_due:
                with clock("train"):  # the steps dispatched so far end before anything else starts
                    jax.block_until_ready(params)
            if evaluator.due(step):
                kind = END_OF_SCHEDULE if step == config.total_steps else MID_SCHEDULE
                with clock("eval"):
                    record = evaluator(params)
                files.append_metrics({"kind": "eval", "point": kind, **point(step), **record})
            if step in branches:
                length = branches[step]
                with clock("train"):
                    cooled = cool_down(config, setup, train_step, params, opt_state, step,
                                       cooldown_rates(rates[step], final_rate, length))
                    jax.block_until_ready(cooled)
                with clock("eval"):
                    record = evaluator(cooled)
                files.append_metrics({"kind": "eval", "point": COOLDOWN_BRANCH, **point(step + length),
                                      "cooldown_steps": length, **record})
            stop = requested()  # a preemption notice: checkpoint this step and end here
            if checkpoint_due or stop:
                with clock("checkpoint"):
                    progress = {"step": step, "wall_s": wall(), "seconds": dict(clock.seconds)}
                    checkpoints.save(step, params, opt_state, data.get_state(), progress)
                stop = requested()  # one that came during the save too
            if stop and step < config.total_steps:
                raise InterruptedRunError(f"interrupted by {stop} at step {step}; its checkpoint is in "
                                          f"{files.checkpoint_dir}: rerun the same command to resume")
        with clock("checkpoint"):
            checkpoints.wait()
    finally:
        bar.close()
        checkpoints.close()
        data.close()

    with clock("eval"):
        _write_samples(config, setup, params, files)
    cooldown_flops = flops_per_step * sum(
        record.get("cooldown_steps", 0) for record in files.read_metrics() if record["kind"] == "eval"
    )
    result = {
        "status": COMPLETED,
        "objective": config.objective,
        "size": config.size,
        "step": step,
        "examples": step * config.batch_size,
        "flops": step * flops_per_step,
        "cooldown_flops": cooldown_flops,
        "total_flops": step * flops_per_step + cooldown_flops,
        "flops_per_example": flops_per_step / config.batch_size,
        "final_loss": last.get("loss"),
        "wall_s": wall(),
        "seconds": dict(clock.seconds),
    }
    files.write_result(result)
    return result


def cool_down(config, setup: TrainSetup, train_step: Callable, params: Params, opt_state, step: int,
              rates: np.ndarray) -> Params:
    """Parameters after a cool-down branch forked at ``step``: copies of the state trained through ``rates``
    on a data stream of the branch's own, so the main run's state and data are untouched."""
    params, opt_state = jax.tree.map(jnp.copy, (params, opt_state))
    data = make_train_iterator(
        config.data, batch_size=config.batch_size, seed=branch_seed(config.seed, step),
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    try:
        for offset, rate in enumerate(rates):
            batch = shard_batch(next(data), setup.state.mesh)
            params, opt_state, _ = train_step(params, opt_state, batch, jnp.int32(step + offset), rate)
    finally:
        data.close()
    return params


def branch_seed(seed: int, step: int) -> int:
    """The data-order seed of the cool-down branch forked at ``step`` (never the main run's)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


SAMPLE_BATCH = 16


def _write_samples(config, setup: TrainSetup, params: Params, files: RunFiles) -> None:
    """Lets the objective write samples for the first test examples into ``workdir/samples``."""
    objective = setup.state.objective
    if not isinstance(objective, SampleWriter) or not is_writer():
        return
    batch = next(make_eval_iterator(config.data, "test", batch_size=SAMPLE_BATCH, max_examples=SAMPLE_BATCH))
    model = setup.state.model(jax.device_get(params))
    directory = files.root / "samples"
    directory.mkdir(exist_ok=True)
    objective.write_samples(model, batch, jax.random.key(config.seed), directory)


def _record_divergence(files, config, step, flops_per_step, metrics, wall_s) -> None:
    reason = f"loss became {metrics['loss']} at step {step}"
    files.write_result(
        {"status": DIVERGED, "reason": reason, "objective": config.objective, "size": config.size,
         "step": step, "flops": step * flops_per_step, "wall_s": wall_s}
    )
    raise DivergedError(f"the run diverged: {reason}; lower optim.learning_rate or raise optim.warmup_steps")
