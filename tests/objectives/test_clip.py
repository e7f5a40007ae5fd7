"""Tests for CLIP and what it leans on: the learned logit scale (published inits, the bound, what is logged),
the SigLIP loss, the warmup-stable-decay schedule, and fixed sine-cosine positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_experiment, random_batch

from scaling.models.layers import Positions, sincos_positions
from scaling.objectives import build_objective
from scaling.objectives.clip import sigmoid_contrastive_loss
from scaling.schedule import cooldown_rates, learning_rates


def objective_and_model(loss: str):
    config = load_experiment("clip")
    config.clip.loss = loss
    objective = build_objective(config)
    return config, objective, objective.init(nnx.Rngs(0))


@pytest.mark.parametrize("loss, scale, bias", [("softmax", 1 / 0.07, None), ("sigmoid", 10.0, -10.0)])
def test_logit_scale_and_bias_start_as_published(loss, scale, bias):
    config, objective, model = objective_and_model(loss)
    _, metrics = objective.loss(model, random_batch(config, 8), jax.random.key(0))
    assert float(metrics["logit_scale"]) == pytest.approx(scale, rel=1e-5)
    if bias is not None:
        assert float(model.logit_bias[...]) == bias


def test_scale_past_the_bound_is_logged_as_used_and_still_has_a_gradient():
    config, objective, model = objective_and_model("softmax")
    model.logit_scale_param[...] = jnp.float32(np.log(300.0))  # the stored value has drifted past 100
    batch = random_batch(config, 8)
    _, metrics = objective.loss(model, batch, jax.random.key(0))
    used = float(objective.logit_scale(model))
    assert float(metrics["logit_scale"]) == used and 90.0 < used <= 100.0
    image_BE, _ = model.embed_images(batch["image"])
    text_BE = model.embed_texts(batch["caption_tokens"], batch["caption_mask"])
    np.testing.assert_allclose(objective.logits(model, image_BE, text_BE), used * image_BE @ text_BE.T,
                               rtol=1e-5, atol=1e-5)

    grads = nnx.grad(lambda m: objective.loss(m, batch, jax.random.key(0))[0])(model)
    assert abs(float(grads.logit_scale_param[...])) > 1e-4


def test_sigmoid_loss_is_binary_cross_entropy_over_every_pair():
    logits_BB = np.random.default_rng(0).normal(0, 3, (5, 5)).astype(np.float32)
    targets_BB = np.eye(5)
    probability_BB = 1 / (1 + np.exp(-logits_BB.astype(np.float64)))
    bce_BB = -(targets_BB * np.log(probability_BB) + (1 - targets_BB) * np.log(1 - probability_BB))
    loss = sigmoid_contrastive_loss(jnp.asarray(logits_BB))
    assert float(loss) == pytest.approx(bce_BB.sum() / 5, rel=1e-5)  # summed over texts, mean over images

    config, objective, model = objective_and_model("sigmoid")  # the objective adds the learned bias
    batch = random_batch(config, 8)
    loss, _ = objective.loss(model, batch, jax.random.key(0))
    image_BE, _ = model.embed_images(batch["image"])
    text_BE = model.embed_texts(batch["caption_tokens"], batch["caption_mask"])
    expected = sigmoid_contrastive_loss(objective.logits(model, image_BE, text_BE) - 10.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_wsd_schedule_warms_up_holds_then_decays_linearly_and_branches_cool_down_alike():
    optim = load_experiment("clip").optim
    optim.update(schedule="wsd", learning_rate=1e-3, warmup_steps=10, decay_fraction=0.2,
                 final_lr_fraction=0.1)
    rates = learning_rates(optim, 100, 64)  # warmup 0-10, stable 10-80, decay 80-100 to 1e-4
    in_examples = optim.copy_and_resolve_references()
    in_examples.update(warmup_steps=0, warmup_examples=580)  # 9.06 steps of 64, so the same 10
    np.testing.assert_array_equal(learning_rates(in_examples, 100, 64), rates)
    half_batch = learning_rates(in_examples, 100, 32)  # the same examples: 19 steps of 32
    np.testing.assert_allclose(half_batch[:20], np.linspace(0, 1e-3, 20), rtol=1e-5)
    np.testing.assert_allclose(rates[[0, 5, 10, 45, 80, 90]], [0, 5e-4, 1e-3, 1e-3, 1e-3, 5.5e-4], rtol=1e-5)
    assert np.all(np.diff(rates[80:]) < 0) and rates[-1] == pytest.approx(1e-4 + 9e-4 / 20, rel=1e-5)
    branch = cooldown_rates(1e-3, 1e-4, 20)  # the same linear decay, forked from the stable phase
    np.testing.assert_allclose(branch, [*rates[81:], 1e-4], rtol=1e-5)


def test_sincos_positions_follow_the_transformer_formula_per_grid_axis():
    table = sincos_positions(6, 8)
    position, index = np.arange(6)[:, None], np.arange(4)[None]
    np.testing.assert_allclose(table[:, :4], np.sin(position / 10_000 ** (index / 4)), atol=1e-6)
    np.testing.assert_allclose(table[:, 4:], np.cos(position / 10_000 ** (index / 4)), atol=1e-6)

    grid = Positions(9, 8, "sincos", rngs=nnx.Rngs(0), grid=True)  # 3x3 patches, no parameters
    added = np.asarray(grid(jnp.zeros((1, 9, 8))))[0]
    rows, cols = sincos_positions(3, 4), sincos_positions(3, 4)
    for r in range(3):
        for c in range(3):
            np.testing.assert_allclose(added[3 * r + c], np.concatenate([rows[r], cols[c]]), atol=1e-6)
    assert len({tuple(row) for row in added.round(5)}) == 9 and not nnx.state(grid, nnx.Param)
