import jax
import jax.numpy as jnp
import pytest
from conftest import load_experiment, random_batch

from scaling import train as trainer
from scaling.flops import xla_flops
from scaling.sharding import make_mesh


def step_flops(config, batch_size: int) -> tuple[float, float]:
    """(analytic, XLA cost analysis) training FLOPs of one compiled train step."""
    config.batch_size = batch_size
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        setup = trainer.build_setup(config, mesh)
        params, opt_state = trainer.init_state(setup, 0)
        batch = trainer.global_batch(random_batch(config, batch_size), mesh)
        step = trainer.make_train_step(setup, 0)
        measured = xla_flops(step, params, opt_state, batch, jnp.int32(0))
    return setup.objective.train_flops_per_example() * batch_size, measured


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_clip_formula_matches_xla(dtype):
    config = load_experiment("clip", "size=ti")
    config.model.dtype = dtype
    analytic, measured = step_flops(config, 4)
    assert analytic == pytest.approx(measured, rel=0.05)
