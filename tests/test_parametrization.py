"""µP's coordinate check (Yang et al. 2022): a few AdamW steps at widths 32 and 192 move every block's
activations, in every tower of every objective, by as much under µP and by more the wider the model under
the standard parametrisation. The narrow width is the base width, where µP is standard, so one run there
serves both."""

from collections.abc import Callable
from unittest.mock import patch

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_batch

from scaling.models.layers import Block
from scaling.models.parametrization import STANDARD, Parametrization
from scaling.state import Params
from scaling.step import build_training

SIZES = ("mu@1", "ti@1")  # widths 32 (model.base_width) and 192, one block each
STEPS, BATCH, LEARNING_RATE = 3, 8, 1e-2
OBJECTIVE_FIELDS = {
    "igpt": {"data.image_size": 8, "igpt.palette_size": 16},
    "clip": {"data.caption_level": "short"},
    "captioning": {"data.caption_level": "short"},
    "diffusion": {"data.caption_level": "short"},  # and its caption encoder as wide as the model
}


def block_outputs(training, batch) -> Callable[[Params], list[jax.Array]]:
    """A jitted function of the parameters: every block's output in the objective's loss on ``batch``
    (all towers, in call order)."""
    outputs, call = [], Block.__call__

    def recorded(block, *args, **kwargs):
        outputs.append(call(block, *args, **kwargs))
        return outputs[-1]

    def loss_outputs(params):
        outputs.clear()
        training.state.objective.loss(training.state.model(params), batch, jax.random.key(1))
        return list(outputs)

    return jax.jit(loss_outputs), recorded


def coordinates(tiny_config, objective: str, size: str, parametrization: str) -> tuple[np.ndarray, ...]:
    """Per block: the RMS of its output and of the change of its output after STEPS steps on one batch."""
    fields = {**OBJECTIVE_FIELDS[objective], "size": size, "batch_size": BATCH, "mesh.data": 1,
              "model.parametrization": parametrization}
    if objective == "diffusion":
        fields["diffusion.text_size"] = size
    config = tiny_config(objective, **fields)
    training = build_training(config, devices=jax.devices()[:1])
    with jax.set_mesh(training.mesh):
        params, opt_state = training.init(config.seed)
        batch = training.shard(random_batch(config, BATCH))
        outputs, recorded = block_outputs(training, batch)
        with patch.object(Block, "__call__", recorded):  # traced once, on the first call
            before = outputs(params)
        for step in range(STEPS):
            params, opt_state, _ = training.step(params, opt_state, batch, jnp.int32(step), LEARNING_RATE)
        after = outputs(params)
    rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))
    return (np.array([rms(a) for a in after]),
            np.array([rms(a - b) for a, b in zip(after, before, strict=True)]))


def test_mup_is_standard_at_the_base_width_only():
    mup = Parametrization("mup", base_width=32)
    for width, heads in ((32, 2), (192, 3)):
        same = width == mup.base_width
        assert (mup.hidden(width) == STANDARD.hidden(width)) == same
        assert (mup.readout(width) == STANDARD.readout(width)) == same
        head_dim = width // heads
        assert (mup.attention_scale(head_dim, width) == STANDARD.attention_scale(head_dim, width)) == same


@pytest.mark.parametrize("objective", list(OBJECTIVE_FIELDS))
def test_coordinates_stay_flat_across_widths_under_mup_and_drift_under_standard(tiny_config, objective):
    """Per block, the widest model's value over the narrowest's: the RMS of its output and of the change a
    few steps made to it. µP keeps both within 2x over a 6x wider model; standard changes the wider one
    at least 1.5x more."""
    narrow_size, wide_size = SIZES
    narrow = coordinates(tiny_config, objective, narrow_size, "standard")  # the base width: µP is standard
    ratios = {}
    for parametrization in ("mup", "standard"):
        wide = coordinates(tiny_config, objective, wide_size, parametrization)
        ratios[parametrization] = {kind: w / n for kind, n, w in zip(("output", "change"), narrow, wide,
                                                                      strict=True)}
    for kind, ratio in ratios["mup"].items():
        assert np.all((ratio > 0.5) & (ratio < 2)), (kind, ratios)
    assert np.all(ratios["standard"]["change"] > 1.5 * ratios["mup"]["change"]), ratios
