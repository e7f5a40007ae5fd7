"""Tests for the CLIP objective's learned logit scale: published inits, the bound, what is logged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import load_experiment, random_batch

from scaling.objectives import build_objective


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
