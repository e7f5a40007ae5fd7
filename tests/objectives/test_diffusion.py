import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import ONE_DEVICE, assert_meshes_agree, first_step_rng, load_experiment, random_batch
from PIL import Image

from scaling.data.pipeline import make_train_iterator
from scaling.errors import ConfigError
from scaling.evaluation.zero_shot import make_zero_shot_fn
from scaling.models.layers import Block
from scaling.objectives import validate_config
from scaling.objectives.diffusion import Diffusion
from scaling.objectives.diffusion.schedule import (
    ddim_sample,
    ddim_timesteps,
    noise_schedule,
    prediction_target,
)
from scaling.sharding import make_mesh
from scaling.state import build_model_state
from scaling.train import train


def diffusion_config(**fields):
    config = load_experiment("diffusion")
    config.diffusion.update(fields)
    return config


def test_conditioned_block_starts_as_identity_and_then_follows_the_condition():
    block = Block(32, 2, 128, dtype=jnp.float32, rngs=nnx.Rngs(0), condition_width=16)
    x_BLD = jax.random.normal(jax.random.key(1), (3, 5, 32))
    condition_BE = jax.random.normal(jax.random.key(2), (3, 16))
    np.testing.assert_array_equal(block(x_BLD, condition_BE=condition_BE), x_BLD)
    assert block.attention_norm.scale is None and block.mlp_norm.scale is None

    kernel = block.modulation.kernel
    kernel[...] = 0.1 * jax.random.normal(jax.random.key(3), kernel.shape)
    out_BLD = block(x_BLD, condition_BE=condition_BE)
    assert not np.allclose(out_BLD, x_BLD)
    assert not np.allclose(block(x_BLD, condition_BE=-condition_BE), out_BLD)
    with pytest.raises(ValueError, match="pass condition_BE"):
        block(x_BLD)


@pytest.mark.parametrize("condition", ["none", "label", "caption"])
def test_model_at_init_predicts_zeros(condition):
    config = diffusion_config(condition=condition, num_classes=4)
    objective = Diffusion(config)
    model = objective.init(nnx.Rngs(0))
    batch = {key: jnp.asarray(value) for key, value in random_batch(config, 4).items()}
    x_t_BHWC = jax.random.normal(jax.random.key(0), batch["image"].shape)
    condition_BE = objective.training_condition(model, batch, jax.random.key(1))
    output_BHWC, hidden = model(x_t_BHWC, jnp.array([0, 10, 500, 999]), condition_BE)
    assert output_BHWC.shape == x_t_BHWC.shape
    np.testing.assert_array_equal(output_BHWC, 0.0)
    assert len(hidden) == 2 and not np.allclose(hidden[-1], 0.0)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_alpha_bar_falls_from_one_to_zero(kind):
    alpha_bar_Z = noise_schedule(kind, 1000)
    assert alpha_bar_Z.shape == (1000,) and alpha_bar_Z.dtype == np.float32
    assert np.all(np.diff(alpha_bar_Z) < 0)
    assert alpha_bar_Z[0] > 0.999 and alpha_bar_Z[-1] < 1e-4
    # Mid-schedule is neither clean nor pure noise (about 0.49 cosine, 0.08 linear).
    assert 0.02 < alpha_bar_Z[500] < 0.6


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_with_an_oracle_denoiser_returns_the_one_image_it_knows(prediction):
    alpha_bar_Z = jnp.asarray(noise_schedule("cosine", 1000))
    image_BHWC = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)

    def oracle(x_t_BHWC, t_B):  # the exact prediction when the data is this one image
        alpha_bar_B = alpha_bar_Z[t_B]
        sigma = jnp.sqrt(1 - alpha_bar_B)[:, None, None, None]
        noise_BHWC = (x_t_BHWC - jnp.sqrt(alpha_bar_B)[:, None, None, None] * image_BHWC) / sigma
        return prediction_target(image_BHWC, noise_BHWC, alpha_bar_B, prediction)

    timesteps_S = jnp.asarray(ddim_timesteps(1000, 7))
    assert timesteps_S[0] == 999 and timesteps_S[-1] == 0 and np.all(np.diff(timesteps_S) < 0)
    noise_BHWC = jax.random.normal(jax.random.key(1), image_BHWC.shape)
    sample_BHWC = ddim_sample(oracle, noise_BHWC, alpha_bar_Z, timesteps_S, prediction)
    np.testing.assert_allclose(sample_BHWC, image_BHWC, atol=1e-4)


def test_model_samples_and_features_have_the_promised_shapes():
    config = diffusion_config(condition="label", num_classes=4, sample_steps=3)
    objective = Diffusion(config)
    model = objective.init(nnx.Rngs(0))
    for i, kernel in enumerate([model.head.kernel, model.final_modulation.kernel]):  # leave init's zeros
        kernel[...] = 0.3 * jax.random.normal(jax.random.key(i), kernel.shape)
    batch = random_batch(config, 4)
    noise_BHWC = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    samples_BHWC = nnx.jit(objective.sample)(model, {"label": jnp.asarray(batch["label"])}, noise_BHWC)
    assert samples_BHWC.shape == (4, 32, 32, 3) and samples_BHWC.dtype == jnp.float32
    assert np.all(np.abs(samples_BHWC) <= 1.0) and np.std(samples_BHWC) > 0.01
    unconditional_BHWC = nnx.jit(objective.sample)(model, None, noise_BHWC)
    assert not np.allclose(samples_BHWC, unconditional_BHWC)

    features = objective.features(model, jnp.asarray(batch["image"]), jax.random.key(2))
    assert sorted(features) == [f"layer_0{i}/t{t}" for i in (1, 2) for t in (0, 100, 30)]
    assert all(f.shape == (4, 32) and np.all(np.isfinite(f)) for f in features.values())
    # more noise moves the features further from those of the clean image
    moved = {t: np.abs(features[f"layer_02/t{t}"] - features["layer_02/t0"]).mean() for t in (30, 100)}
    assert 0 < moved[30] < moved[100]
    fresh = objective.init(nnx.Rngs(0))  # predicts epsilon = 0: the error is the noise's mean square
    condition_BE = fresh.embed_condition({"label": jnp.asarray(batch["label"])}, jnp.ones((4,), bool))
    error_B = objective.epsilon_error(fresh, jnp.asarray(batch["image"]), condition_BE,
                                      jnp.array([0, 300, 600, 999]), noise_BHWC)
    np.testing.assert_allclose(error_B, np.square(noise_BHWC).mean(axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("condition, examples", [("label", 4000), ("caption", 400)])
def test_classifier_free_dropout_replaces_the_set_fraction_with_the_null_condition(condition, examples):
    config = diffusion_config(condition=condition, num_classes=4, condition_dropout=0.25)
    objective = Diffusion(config)
    model = objective.init(nnx.Rngs(0))
    batch = {key: jnp.asarray(value) for key, value in random_batch(config, examples).items()}
    condition_BE = objective.training_condition(model, batch, jax.random.key(3))
    null_BE = model.null_condition(examples)
    dropped_B = np.all(np.asarray(condition_BE == null_BE), axis=1)
    assert dropped_B.mean() == pytest.approx(0.25, abs=3 * np.sqrt(0.25 * 0.75 / examples))
    config.diffusion.condition_dropout = 0.0
    kept_BE = Diffusion(config).training_condition(model, batch, jax.random.key(3))
    assert not np.any(np.all(np.asarray(kept_BE == null_BE), axis=1))


def test_training_run_lowers_the_loss_and_reports_every_noise_bucket(tiny_config, tmp_path):
    config = tiny_config("diffusion", total_steps=30, checkpoint_every=30, **{
        "optim.learning_rate": 3e-3, "eval.num_points": 0, "diffusion.sample_steps": 3})
    result = train(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if r["kind"] == "train"]
    assert result["status"] == "completed" and [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    for record in records:
        buckets = [record[f"loss_t{k}"] for k in range(4)]
        assert all(np.isfinite(buckets)) and all(b > 0 for b in buckets)
    # Epsilon prediction starts at E[eps^2] = 1 (zero output) and falls well below it.
    assert records[0]["loss"] > 0.85
    assert np.mean([r["loss"] for r in records[-2:]]) < 0.75
    samples = np.asarray(Image.open(tmp_path / "samples" / "samples.png"))
    cell = 2 * 32 + 2  # 32-pixel images enlarged 2x, 2-pixel gaps
    assert samples.shape == (4 * cell + 2, 4 * cell + 2, 3) and samples.std() > 0


@pytest.mark.devices(8)
def test_v_prediction_trains_alike_on_one_and_eight_devices(tiny_config):
    # (Epsilon prediction trains in the trainer run above.)
    config = tiny_config("diffusion", total_steps=15, **{
        "diffusion.prediction": "v", "diffusion.schedule": "linear", "diffusion.condition": "label",
        "optim.learning_rate": 3e-3})
    batch = next(make_train_iterator(config.data, batch_size=16, seed=0))
    one, eight = assert_meshes_agree(config, batch, 15)
    modulation = eight["params"]["transformer"]["blocks"][0]["modulation"]["kernel"]
    assert modulation.sharding.spec == jax.P("fsdp", None, "tensor")

    config.mesh.update(ONE_DEVICE)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    with jax.set_mesh(mesh):
        state = build_model_state(config, mesh)
        batch = {key: jnp.asarray(value) for key, value in batch.items()}
        # The same timesteps, noise and dropout as the first loss, taken at init.
        rng = first_step_rng(config)
        loss = jax.jit(lambda params: state.objective.loss(state.model(params), batch, rng)[0])
        after = loss(one["params"])
    assert float(after) < 0.85 * one["first_loss"]


def test_bad_settings_are_refused():
    for fields, message in [({"prediction": "x0"}, "diffusion.prediction"),
                            ({"feature_timesteps": (0, 1000)}, "diffusion.feature_timesteps"),
                            ({"feature_timesteps": (30, 30)}, "diffusion.feature_timesteps"),
                            ({"feature_timesteps": ()}, "diffusion.feature_timesteps"),
                            ({"condition_dropout": 0.0}, "diffusion.guidance_scale")]:
        with pytest.raises(ConfigError, match=message):
            validate_config(diffusion_config(**fields), 1)
    config = diffusion_config()
    config.data.caption_level = "none"
    with pytest.raises(ConfigError, match="data.caption_level"):
        validate_config(config, 1)


def test_caption_embedding_does_not_attend_to_padding():
    config = diffusion_config(condition="caption")
    model = Diffusion(config).init(nnx.Rngs(0))
    batch = random_batch(config, 4)
    padding_BT = batch["caption_mask"] == 0
    other_tokens_BT = np.where(padding_BT, np.random.default_rng(1).integers(3, 259, padding_BT.shape),
                               batch["caption_tokens"])
    keep_B = jnp.ones((4,), bool)
    embed = lambda tokens: model.embed_condition(
        {"caption_tokens": jnp.asarray(tokens), "caption_mask": jnp.asarray(batch["caption_mask"])}, keep_B
    )
    np.testing.assert_allclose(embed(other_tokens_BT), embed(batch["caption_tokens"]), atol=1e-6)


@pytest.mark.parametrize("condition, field", [("label", "generative_classifier_accuracy"),
                                              ("caption", "zero_shot_accuracy")])
def test_only_caption_conditioned_classification_is_called_zero_shot(condition, field):
    assert Diffusion(diffusion_config(condition=condition, num_classes=4)).class_score_field == field


def test_label_conditioned_model_rejects_labels_it_has_no_embedding_for():
    objective = Diffusion(diffusion_config(condition="label", num_classes=4))
    with pytest.raises(ConfigError, match="conditioned on the 4 classes .* cannot score 10 other classes"):
        make_zero_shot_fn(objective, lambda params: params, tuple(f"class_{i}" for i in range(10)))
