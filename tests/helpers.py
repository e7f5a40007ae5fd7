"""Test helpers that run the real trainer pieces on a chosen mesh."""

import jax
import jax.numpy as jnp

from scaling import train as trainer
from scaling.sharding import make_mesh


def run_steps(config, batch, devices, mesh_axes: dict, steps: int):
    """Losses of ``steps`` train steps on one fixed batch, plus first-step grads and final state."""
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_axes)
    mesh = make_mesh(config.mesh, devices)
    with jax.set_mesh(mesh):
        setup = trainer.build_setup(config, mesh)
        params, opt_state = trainer.init_state(setup, config.seed)
        global_batch = trainer.global_batch(batch, mesh)
        rng = jax.random.key(0)

        def loss_fn(p):
            return setup.objective.loss(trainer.model_from_params(setup, p), global_batch, rng)[0]

        first_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
        grads = jax.device_get(grads)
        step_fn = trainer.make_train_step(setup, config.seed)
        losses = []
        for step in range(steps):
            params, opt_state, metrics = step_fn(params, opt_state, global_batch, jnp.int32(step))
            losses.append(float(metrics["loss"]))
        return {"first_loss": float(first_loss), "grads": grads, "losses": losses,
                "params": params, "opt_state": opt_state}
