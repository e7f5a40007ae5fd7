"""The compiled train step and the one builder of it: config -> mesh, model state, optimizer, jitted step.

``build_training`` is how the trainer, the planner, the benchmarks and the tests all get a run's step, so
they compile the same program: AdamW with global-norm clipping (matrices decay; the learning rate is an
argument of the step, so a schedule or a cool-down branch never recompiles it), gradients accumulated
over ``grad_accum_steps`` microbatches, and parameters and optimizer state in their shardings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scaling.data.batch import batch_spec
from scaling.objectives.base import Objective
from scaling.sharding import batch_sharding, constrain, make_mesh, shard_batch
from scaling.state import ModelState, Params, build_model_state


def make_optimizer(config: ml_collections.ConfigDict, lr_scales: Params) -> optax.GradientTransformation:
    """AdamW with global-norm clipping, less its learning rate (the step scales by the rate it is given);
    matrices decay, vectors and scalars (norms, biases) do not. Each parameter's update is multiplied by
    its factor in ``lr_scales`` (µP's per-parameter learning rates; all 1 under standard, which adds no
    transform, so a standard run's optimizer state is what it always was)."""
    o = config.optim
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = [optax.clip_by_global_norm(o.grad_clip), optax.scale_by_adam(b1=o.b1, b2=o.b2),
             optax.add_decayed_weights(o.weight_decay, mask=decay_mask)]
    if any(scale != 1.0 for scale in jax.tree.leaves(lr_scales)):
        adamw.append(optax.stateless(lambda updates, _: jax.tree.map(jnp.multiply, updates, lr_scales)))
    return optax.chain(*adamw)


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


def make_train_step(state: ModelState, tx: optax.GradientTransformation, opt_shardings: Any, seed: int,
                    grad_accum_steps: int = 1) -> Callable:
    """The jitted step: (params, opt_state, batch, step, learning_rate) -> (params, opt_state, metrics);
    gradients accumulate over ``grad_accum_steps`` microbatches of the batch.

    ``params`` and ``opt_state`` are donated: pass copies to keep the originals.
    """
    objective, to_model = state.objective, state.model

    def loss_fn(params, batch, rng):
        return objective.loss(to_model(params), batch, rng)

    value_and_grad = accumulated_value_and_grad(loss_fn, grad_accum_steps)

    def train_step(params, opt_state, batch, step, learning_rate):
        rng = jax.random.fold_in(jax.random.key(seed), step)
        (loss, metrics), grads = value_and_grad(params, batch, rng)
        directions, opt_state = tx.update(grads, opt_state, params)
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
        in_shardings=(state.param_shardings, opt_shardings, None, None, None),
        out_shardings=(state.param_shardings, opt_shardings, None),
        donate_argnums=(0, 1),
    )


@dataclasses.dataclass(frozen=True)
class Training:
    """A run's model state on its mesh, its optimizer (and its state's shardings) and its jitted step."""

    config: ml_collections.ConfigDict
    state: ModelState
    tx: optax.GradientTransformation
    opt_shardings: Any
    step: Callable  # see make_train_step

    @property
    def mesh(self) -> Mesh:
        return self.state.mesh

    def init(self, seed: int) -> tuple[Params, Any]:
        """Initial parameters and optimizer state, created directly in their shardings."""

        def init():
            params = self.state.init_params(seed)
            return params, self.tx.init(params)

        return jax.jit(init, out_shardings=(self.state.param_shardings, self.opt_shardings))()

    def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> global arrays sharded over the batch axes of the mesh."""
        return shard_batch(batch, self.mesh)

    def abstract_args(self) -> tuple:
        """The step's arguments as sharded ShapeDtypeStructs, to lower it without any data or device
        memory (the planner compiles for TPU topologies this way)."""
        opt_state = jax.tree.map(
            lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
            jax.eval_shape(self.tx.init, self.state.abstract_params), self.opt_shardings,
        )
        batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(self.mesh, len(shape)))
                 for key, (shape, dtype) in batch_spec(self.config.data, self.config.batch_size).items()}
        return (self.state.abstract_params, opt_state, batch, jax.ShapeDtypeStruct((), jnp.int32),
                jax.ShapeDtypeStruct((), jnp.float32))


def build_training(config: ml_collections.ConfigDict, mesh: Mesh | None = None, *,
                   devices: Sequence[jax.Device] | None = None,
                   objective: Objective | None = None) -> Training:
    """Everything a run's steps need: the mesh (``config.mesh`` over ``devices``, all by default, unless
    ``mesh`` is given), the model state of ``objective`` (the registered one by default), the optimizer
    and the jitted step. Builds nothing on devices, so compile-only devices work too."""
    mesh = mesh or make_mesh(config.mesh, devices)
    state = build_model_state(config, mesh, objective)
    tx = make_optimizer(config, state.lr_scales)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.abstract_params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(
        tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, shapes), state.param_shardings,
        transform_non_params=lambda _: replicated,
    )
    step = make_train_step(state, tx, opt_shardings, config.seed, config.grad_accum_steps)
    return Training(config, state, tx, opt_shardings, step)
