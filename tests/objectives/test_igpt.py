"""Tests for the iGPT objective and its colour palette: fit quality, caching, causality, training,
sharding invariance, the FLOP formula and the completions grid."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import assert_meshes_agree, load_experiment, random_batch
from PIL import Image

from scaling.data import palette
from scaling.data.pipeline import make_eval_iterator
from scaling.objectives import build_objective, igpt
from scaling.sweeps.spec import Budget, make_run
from scaling.train import train

SMALL = {"igpt.palette_size": 16, "igpt.palette_fit_pixels": 20_000}


def prepared(config) -> igpt.Igpt:
    """The objective with its palette loaded (fitted on the first call)."""
    objective = igpt.Igpt(config)
    objective.prepare()
    return objective


@pytest.fixture
def small_config(tiny_config):
    """16x16 images and a 16-colour palette fitted on 20k pixels of the small scenes set."""
    return lambda **overrides: tiny_config("igpt", **{**SMALL, **overrides})


def test_palette_round_trip_error_is_small_and_falls_with_k(small_config):
    data = small_config().data
    pixels_N3 = palette.sample_pixels(data, 20_000, seed=0)
    assert pixels_N3.shape == (20_000, 3) and pixels_N3.dtype == np.uint8
    images = next(make_eval_iterator(data, "test", batch_size=100, max_examples=100))["image"]
    uniform_8_colours = (images // 128) * 128 + 64  # two levels per channel, at the bin centres
    naive_error = np.abs(uniform_8_colours - images.astype(int)).mean()

    errors = {}
    for k in (8, 32):
        palette_V3 = palette.fit_palette(pixels_N3, k, seed=0)
        assert palette_V3.shape == (k, 3) and palette_V3.dtype == np.float32
        indices = palette.quantize(images, palette_V3)
        assert indices.shape == images.shape[:3] and indices.dtype == np.int32
        restored = np.asarray(palette.dequantize(indices, palette_V3))
        assert restored.dtype == np.uint8
        errors[k] = np.abs(restored.astype(int) - images).mean()
    assert errors[8] < 0.8 * naive_error
    assert errors[32] < 0.7 * errors[8]
    np.testing.assert_array_equal(palette.fit_palette(pixels_N3, 8, seed=0),
                                  palette.fit_palette(pixels_N3, 8, seed=0))


def test_palette_is_fitted_once_then_read_from_the_cache(small_config, monkeypatch):
    data = small_config().data
    path = palette.palette_path(data, 4, fit_pixels=5_000, seed=7)
    assert not path.exists()
    fitted = palette.load_or_fit_palette(data, 4, fit_pixels=5_000, seed=7)
    assert path.exists() and path.is_relative_to(data.data_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("the palette was fitted again")

    monkeypatch.setattr(palette, "fit_palette", refuse)
    np.testing.assert_array_equal(palette.load_or_fit_palette(data, 4, fit_pixels=5_000, seed=7), fitted)


def test_a_later_pixel_never_changes_earlier_logits(small_config):
    config = small_config()
    objective = prepared(config)
    model = objective.init(nnx.Rngs(0))
    images = random_batch(config, 2)["image"]
    indices_BL = objective.tokenize(images)
    row, col = 9, 5
    edited = images.copy()
    edited[:, row, col] = 255 - edited[:, row, col]
    edited_BL = objective.tokenize(edited)
    changed = np.flatnonzero((np.asarray(indices_BL) != np.asarray(edited_BL)).any(axis=0))
    assert changed.tolist() == [row * config.data.image_size + col]

    position = changed[0]
    before, after = objective.predict(model, indices_BL), objective.predict(model, edited_BL)
    assert before.shape == (2, config.data.image_size**2, 16)
    np.testing.assert_array_equal(before[:, : position + 1], after[:, : position + 1])
    assert np.abs(before[:, position + 1 :] - after[:, position + 1 :]).max(axis=-1).min() > 0


def test_features_pool_every_layer_over_the_pixels(small_config):
    config = small_config()
    objective = prepared(config)
    model = objective.init(nnx.Rngs(0))
    images = random_batch(config, 3)["image"]
    features = objective.features(model, images, jax.random.key(0))
    assert sorted(features) == ["layer_01", "layer_02"]
    assert all(f.shape == (3, 32) for f in features.values())
    assert np.abs(np.asarray(features["layer_01"][0] - features["layer_01"][1])).max() > 0


def test_features_pool_only_positions_that_training_reads(small_config):
    """The last pixel is never a training input: changing it leaves the features as they are, while
    changing the one before it (an input to the last prediction) moves them."""
    config = small_config()
    objective = prepared(config)
    model = objective.init(nnx.Rngs(0))
    images = random_batch(config, 2)["image"]
    features = objective.features(model, images, jax.random.key(0))
    for (row, col), moves in (((-1, -1), False), ((-1, -2), True)):
        edited = images.copy()
        edited[:, row, col] = 255 - edited[:, row, col]
        assert not np.array_equal(objective.tokenize(edited), objective.tokenize(images))
        edited_features = objective.features(model, edited, jax.random.key(0))
        change = max(np.abs(np.asarray(edited_features[k] - features[k])).max() for k in features)
        assert (change > 1e-6) == moves


def test_completions_keep_the_top_half_and_sample_the_rest(small_config):
    config = small_config()
    objective = prepared(config)
    model = objective.init(nnx.Rngs(0))
    indices_BL = objective.tokenize(random_batch(config, 2)["image"])
    given = 8 * config.data.image_size
    samples = np.asarray(
        objective.complete(model, indices_BL, jax.random.key(0), given=given, num_samples=3)
    )
    assert samples.shape == (2, 3, 256)
    top_half = np.asarray(indices_BL)[:, None, :given]
    np.testing.assert_array_equal(samples[:, :, :given], np.repeat(top_half, 3, axis=1))
    assert samples.min() >= 0 and samples.max() < 16
    assert (samples[:, 0, given:] != samples[:, 1, given:]).any()
    # each index is the draw at its position from the model's own conditional given the indices before it,
    # as the whole sequence's pass computes it (the sampler decodes one index at a time from a cache)
    tokens_NL = samples.reshape(6, 256)
    logits_NLV = objective.predict(model, jnp.asarray(tokens_NL))
    drawn_NL = np.stack([jax.random.categorical(jax.random.fold_in(jax.random.key(0), p), logits_NLV[:, p])
                         for p in range(given, 256)], axis=1)
    assert (drawn_NL == tokens_NL[:, given:]).mean() > 0.99


def test_loss_falls_in_a_short_run_and_the_run_keeps_samples_and_palette(small_config, tmp_path):
    config = small_config(**{"optim.learning_rate": 3e-3, "eval.num_points": 0})
    result = train(config, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["kind"] == "train"]
    first, last = records[0], records[-1]
    assert last["loss"] < first["loss"] - 0.3
    assert last["bits_per_token"] == pytest.approx(last["loss"] / np.log(2), rel=1e-5)
    assert result["flops_per_example"] == igpt.Igpt(config).train_flops_per_example()

    samples = tmp_path / "samples"
    grid = Image.open(samples / "completions.png")
    cell = 4 * config.data.image_size + 2  # 16-pixel images enlarged 4x, 2-pixel gaps
    assert grid.size == ((2 + igpt.COMPLETIONS) * cell + 2, 16 * cell + 2)
    np.testing.assert_array_equal(np.load(samples / "palette.npy"), prepared(config).palette_V3)


@pytest.mark.devices(8)
def test_eight_devices_match_one_device(small_config):
    config = small_config()
    batch = random_batch(config, 16)
    _, eight = assert_meshes_agree(config, batch, 2)
    head = eight["params"]["head"]["kernel"]
    assert head.sharding.spec == jax.P("fsdp", "tensor")


def test_building_the_objective_and_a_sweep_run_reads_no_data(tmp_path, monkeypatch):
    """A sweep builds every run's objective for its FLOPs: that must not fit (or load) a palette."""
    def refuse(*args, **kwargs):
        raise AssertionError("data was read")

    monkeypatch.setattr(igpt, "load_or_fit_palette", refuse)
    config = load_experiment("igpt")
    config.data.data_dir = str(tmp_path / "absent")
    run = make_run(config, Budget.flops(1e12))
    objective = build_objective(run.config)
    assert run.config.total_steps == round(1e12 / (objective.train_flops_per_example() * config.batch_size))
    assert not (tmp_path / "absent").exists()
    with pytest.raises(AssertionError, match="data was read"):  # only prepare() reads the data
        objective.prepare()
