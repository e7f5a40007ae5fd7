"""Test helpers that run the real trainer pieces on a chosen mesh."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import random_batch

from scaling import train as trainer
from scaling.flops import xla_flops
from scaling.sharding import make_mesh, shard_batch


def run_steps(config, batch, devices, mesh_axes: dict, steps: int):
    """Losses of ``steps`` train steps on one fixed batch, plus first-step grads and final state."""
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_axes)
    mesh = make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh):
        setup = trainer.build_setup(config, mesh)
        params, opt_state = trainer.init_state(setup, config.seed)
        global_batch = shard_batch(batch, mesh)
        rng = jax.random.key(0)

        def loss_fn(p):
            return setup.objective.loss(trainer.model_from_params(setup, p), global_batch, rng)[0]

        first_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
        grads = jax.device_get(grads)
        step_fn = trainer.make_train_step(setup, config.seed)
        rates = trainer.learning_rates(config.optim, config.total_steps)
        losses = []
        for step in range(steps):
            params, opt_state, metrics = step_fn(params, opt_state, global_batch, jnp.int32(step),
                                                 rates[step])
            losses.append(float(metrics["loss"]))
        return {"first_loss": float(first_loss), "grads": grads, "losses": losses,
                "params": params, "opt_state": opt_state}


def step_flops(config, batch_size: int) -> tuple[float, float]:
    """(analytic, XLA cost analysis) training FLOPs of one compiled train step."""
    config.batch_size = batch_size
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        setup = trainer.build_setup(config, mesh)
        params, opt_state = trainer.init_state(setup, 0)
        batch = shard_batch(random_batch(config, batch_size), mesh)
        step = trainer.make_train_step(setup, 0)
        measured = xla_flops(step, params, opt_state, batch, jnp.int32(0), np.float32(1e-3))
    return setup.objective.train_flops_per_example() * batch_size, measured


ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}
EIGHT_DEVICES = {"data": 2, "fsdp": 2, "tensor": 2}


def assert_meshes_agree(config, batch, steps: int):
    """Runs on 1 device and on a 2x2x2 mesh of 8; asserts the first loss and gradients agree to 1e-5
    and the step losses to 1e-3 (relative); returns the 8-device run for sharding checks."""
    one = run_steps(config, batch, jax.devices()[:1], ONE_DEVICE, steps)
    eight = run_steps(config, batch, jax.devices(), EIGHT_DEVICES, steps)
    assert abs(eight["first_loss"] - one["first_loss"]) <= 1e-5 * abs(one["first_loss"])
    g1 = np.concatenate([g.ravel() for g in jax.tree.leaves(one["grads"])])
    g8 = np.concatenate([g.ravel() for g in jax.tree.leaves(eight["grads"])])
    assert np.linalg.norm(g8 - g1) <= 1e-5 * np.linalg.norm(g1)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-3)
    return one, eight
