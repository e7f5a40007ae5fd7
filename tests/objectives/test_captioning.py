"""Tests for the captioning objective (CapPa): loss, masking, causality, sharding, FLOPs, decoding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import SHAPES, assert_meshes_agree, load_experiment, random_batch
from PIL import Image

from scaling.data.captions import class_prompts, prompt_templates, tokenize_prompts
from scaling.data.pipeline import make_eval_iterator
from scaling.data.tokenizer import get_tokenizer
from scaling.errors import ConfigError
from scaling.objectives import build_objective, validate_config
from scaling.objectives.captioning import SAMPLE_TILE, decoder_inputs
from scaling.workdir import RunFiles

TOKENIZER = get_tokenizer("byte")
MASK_ID = TOKENIZER.vocab_size


def objective_and_model(**captioning):
    config = load_experiment("captioning")
    config.captioning.update(captioning)
    config.data.max_caption_len = 32
    objective = build_objective(config)
    return config, objective, objective.init(nnx.Rngs(0))


def jitted_loss(objective):
    return nnx.jit(lambda model, batch, rng: objective.loss(model, batch, rng))


def test_loss_falls_under_the_real_trainer_and_samples_are_written(captioner_run):
    config, files = captioner_run["config"], RunFiles(captioner_run["dir"])
    records = [r for r in files.read_metrics() if r["kind"] == "train"]
    first, last = records[0], records[-1]
    assert files.read_result()["status"] == "completed"
    # Logged from step 5 on; an untrained decoder starts near log(259) = 5.56.
    assert last["loss"] < min(first["loss"] - 0.5, 0.75 * math.log(TOKENIZER.vocab_size))
    assert last["token_accuracy"] > first["token_accuracy"]
    # each record holds one step's fraction of its 16 examples; together they draw near the configured one
    used = np.array([r["parallel_fraction_used"] for r in records])
    np.testing.assert_allclose(used * 16, np.round(used * 16), atol=1e-4)
    assert abs(used.mean() - config.captioning.parallel_fraction) < 0.25

    samples = captioner_run["dir"] / "samples"
    lines = (samples / "captions.txt").read_text().splitlines()
    reference = next(make_eval_iterator(config.data, "test", batch_size=16, max_examples=16))
    assert len(lines) == 16
    for i, line in enumerate(lines):
        index, reference_text, _generated = line.split("\t")
        assert int(index) == i
        assert reference_text == TOKENIZER.decode(reference["caption_tokens"][i])
    width, height = Image.open(samples / "captions.png").size
    assert width > 4 * SAMPLE_TILE and height > 4 * SAMPLE_TILE


def test_parallel_prediction_masks_the_drawn_fraction_of_rows():
    tokens_BT = jnp.asarray(np.random.default_rng(0).integers(3, 259, (4096, 8)), jnp.int32)
    rng = jax.random.key(1)
    inputs_BL, parallel_B = decoder_inputs(tokens_BT, rng, 0.75, MASK_ID)
    parallel_B = np.asarray(parallel_B)
    assert abs(parallel_B.mean() - 0.75) < 0.03
    assert (np.asarray(inputs_BL)[parallel_B] == MASK_ID).all()
    np.testing.assert_array_equal(np.asarray(inputs_BL)[~parallel_B], np.asarray(tokens_BT)[~parallel_B, :-1])

    inputs_BL, parallel_B = decoder_inputs(tokens_BT, rng, 0.0, MASK_ID)
    assert not np.asarray(parallel_B).any()
    np.testing.assert_array_equal(inputs_BL, tokens_BT[:, :-1])


def test_loss_reports_the_realised_parallel_fraction():
    config, objective, model = objective_and_model(parallel_fraction=0.5)
    batch = {k: jnp.asarray(v) for k, v in random_batch(config, 64).items()}
    rng = jax.random.key(3)
    _, metrics = jitted_loss(objective)(model, batch, rng)
    _, parallel_B = decoder_inputs(batch["caption_tokens"], rng, 0.5, MASK_ID)
    assert float(metrics["parallel_fraction_used"]) == pytest.approx(float(parallel_B.mean()))
    assert 0.0 < float(metrics["parallel_fraction_used"]) < 1.0


def test_padding_after_eos_does_not_change_the_loss():
    config, objective, model = objective_and_model(parallel_fraction=0.0)
    batch = random_batch(config, 4)
    loss_fn, rng = jitted_loss(objective), jax.random.key(0)
    loss, _ = loss_fn(model, batch, rng)

    padded = dict(batch, caption_tokens=np.where(batch["caption_mask"] == 1, batch["caption_tokens"], 77))
    assert float(loss_fn(model, padded, rng)[0]) == pytest.approx(float(loss), rel=1e-6)
    changed = dict(batch, caption_tokens=batch["caption_tokens"].copy())
    changed["caption_tokens"][:, 2] = 5
    assert abs(float(loss_fn(model, changed, rng)[0]) - float(loss)) > 1e-4


def test_decoder_is_causal():
    config, _, model = objective_and_model()
    batch = random_batch(config, 2)
    context_BMD, _ = model.encode(batch["image"])
    inputs_BL = jnp.asarray(batch["caption_tokens"][:, :-1])
    logits_BLV = model.decode(inputs_BL, context_BMD)
    k = 5
    changed_logits_BLV = model.decode(inputs_BL.at[:, k].set(MASK_ID), context_BMD)
    np.testing.assert_allclose(changed_logits_BLV[:, :k], logits_BLV[:, :k], atol=1e-6)
    assert np.abs(changed_logits_BLV[:, k:] - logits_BLV[:, k:]).max(axis=-1).min() > 1e-4


def test_parallel_rows_attend_to_later_positions_and_autoregressive_rows_do_not():
    config, _, model = objective_and_model()
    batch = random_batch(config, 2)
    context_BMD, _ = model.encode(batch["image"])
    inputs_BL = jnp.asarray(batch["caption_tokens"][:, :-1])
    parallel_B = jnp.asarray([True, False])
    k = 5
    logits_BLV = model.decode(inputs_BL, context_BMD, parallel_B)
    changed_BLV = model.decode(inputs_BL.at[:, k].set(MASK_ID), context_BMD, parallel_B)
    change_BL = np.abs(changed_BLV - logits_BLV).max(axis=-1)
    assert change_BL[0, :k].min() > 1e-4  # parallel row: earlier positions see position k
    np.testing.assert_allclose(change_BL[1, :k], 0.0, atol=1e-6)  # autoregressive row: they do not


@pytest.mark.parametrize("parallel_fraction, sees_later", [(1.0, True), (0.0, False)])
def test_loss_on_the_first_token_sees_later_positions_only_under_parallel_prediction(
    parallel_fraction, sees_later
):
    config, objective, model = objective_and_model(parallel_fraction=parallel_fraction)
    batch = random_batch(config, 2)
    batch["caption_mask"] = np.zeros_like(batch["caption_mask"])
    batch["caption_mask"][:, :2] = 1  # the loss reads the first predicted token only
    loss, _ = objective.loss(model, batch, jax.random.key(0))
    table = model.decoder.positions.table
    table[...] = table[...].at[7].set(jax.random.normal(jax.random.key(1), table.shape[1:]))  # a later state
    moved, _ = objective.loss(model, batch, jax.random.key(0))
    assert (abs(float(moved) - float(loss)) > 1e-5) == sees_later


def test_log_likelihood_matches_the_autoregressive_loss_and_features_cover_every_layer():
    config, objective, model = objective_and_model(parallel_fraction=0.0)
    batch = random_batch(config, 4)
    loss, _ = objective.loss(model, batch, jax.random.key(0))
    log_likelihood_B = objective.caption_log_likelihood(
        model, batch["image"], batch["caption_tokens"], batch["caption_mask"]
    )
    assert log_likelihood_B.shape == (4,)
    targets = batch["caption_mask"][:, 1:].sum()
    assert float(-log_likelihood_B.sum() / targets) == pytest.approx(float(loss), rel=1e-5)

    features = objective.features(model, batch["image"], jax.random.key(0))
    assert sorted(features) == ["layer_01", "layer_02"]
    assert all(f.shape == (4, 32) for f in features.values())


def test_zero_shot_scores_are_the_prompts_log_likelihoods_averaged_over_templates():
    config, objective, model = objective_and_model(parallel_fraction=0.0)
    config.data.name = "cifar10_jpeg"  # templates whose prompts share a prefix, the class name last
    classes = ("cat", "dog", "automobile")
    images_BHWC = random_batch(config, 3)["image"]
    scores_BK = nnx.jit(lambda m, x: objective.zero_shot_scores(m, x, classes, jax.random.key(0)))(
        model, images_BHWC)
    templates = prompt_templates("cifar10_jpeg")
    tokens_UT, mask_UT = tokenize_prompts(TOKENIZER, class_prompts(classes, templates), 32)
    # every image with every prompt, one whole prompt at a time
    likelihood_BU = nnx.jit(objective.caption_log_likelihood)(
        model, np.repeat(images_BHWC, len(tokens_UT), axis=0), np.tile(tokens_UT, (3, 1)),
        np.tile(mask_UT, (3, 1))).reshape(3, len(tokens_UT))
    expected_BK = np.asarray(likelihood_BU).reshape(3, len(classes), len(templates)).mean(axis=2)
    np.testing.assert_allclose(scores_BK, expected_BK, rtol=1e-5)


def test_validation_rejects_missing_captions_and_bad_fractions():
    config = load_experiment("captioning")
    validate_config(config, 8)
    config.data.caption_level = "none"
    with pytest.raises(ConfigError, match="caption_level"):
        validate_config(config, 8)
    config = load_experiment("captioning")
    config.captioning.parallel_fraction = 1.5
    with pytest.raises(ConfigError, match="parallel_fraction"):
        validate_config(config, 8)


@pytest.mark.devices(8)
def test_eight_devices_match_one_device():
    config = load_experiment("captioning")
    batch = random_batch(config, 16)
    # No optimizer steps: the trainer's step is checked across meshes for CLIP; this covers the loss.
    _, eight = assert_meshes_agree(config, batch, 0)
    kernel = eight["params"]["decoder"]["transformer"]["blocks"][0]["cross_attention"]["key_value"]["kernel"]
    assert kernel.sharding.spec == jax.P("fsdp", None, "tensor", None)


@pytest.mark.xdist_group("overfit_captioner")
def test_greedy_decoding_reproduces_each_images_overfit_caption(overfit_captioner):
    batch, state = overfit_captioner["batch"], overfit_captioner["state"]
    model = state.model(jax.device_get(overfit_captioner["params"]))
    generated_BT = state.objective.greedy_captions(model, batch["image"])
    captions = [f"a {SHAPES[label]}" for label in batch["label"]]  # differing with the image
    assert [TOKENIZER.decode(row) for row in generated_BT] == captions
    np.testing.assert_array_equal(generated_BT, batch["caption_tokens"])
    short_BT = state.objective.greedy_captions(model, batch["image"], max_len=5)
    assert short_BT.shape == (16, 5) and (short_BT[:, -1] == TOKENIZER.eos_id).all()
