"""Caption-level evaluation: retrieval recall, per-token likelihood and the diffusion model's paired loss by
noise bucket, from the pure reductions up to the eval records of tiny trained runs."""

import jax
import numpy as np
import pytest

from scaling.data.pipeline import make_train_iterator
from scaling.errors import ConfigError
from scaling.evaluation.caption_levels import (
    CaptionLevelEval,
    caption_level_metrics,
    mean_interval,
    retrieval_hits,
)
from scaling.objectives.diffusion import Diffusion
from scaling.objectives.diffusion.schedule import bucket_timesteps
from scaling.schedule import learning_rates
from scaling.step import build_training
from scaling.workdir import RunFiles

LEVELS = ("short", "medium")


def test_retrieval_finds_matching_pairs_and_misses_shuffled_ones():
    embeddings_NE = np.eye(8)
    assert retrieval_hits(embeddings_NE, embeddings_NE, 1).all()
    shifted_NE = np.roll(embeddings_NE, 1, axis=0)  # every query's own key ranks below another
    assert not retrieval_hits(embeddings_NE, shifted_NE, 1).any()
    assert retrieval_hits(embeddings_NE, 0.5 * embeddings_NE + 0.4 * shifted_NE, 1).all()
    ties_NE = np.ones((8, 4))  # all keys equally similar: a tie is no hit at k=1, but within k=8
    assert not retrieval_hits(ties_NE, ties_NE, 1).any() and retrieval_hits(ties_NE, ties_NE, 8).all()


def test_reductions_pair_levels_and_weight_tokens():
    rng = np.random.default_rng(0)
    null_NK = 1 + rng.random((300, 4))
    outputs = {"denoising_error/none": null_NK, "denoising_error/short": null_NK - [0.0, 0.1, 0.2, 0.3],
               "mismatched_error/short": null_NK - 0.05,
               "log_likelihood/short": np.array([-10.0, -30.0]), "predicted_tokens/short": np.array([10, 10])}
    record = caption_level_metrics(outputs)
    for k, gain in enumerate([0.0, 0.1, 0.2, 0.3]):
        assert record[f"caption_gain_t{k}/short"] == pytest.approx(gain)
        low, high = record[f"caption_gain_t{k}/short_low"], record[f"caption_gain_t{k}/short_high"]
        assert low <= gain + 1e-9 and gain - 1e-9 <= high
        assert record[f"caption_loss_t{k}/none"] == pytest.approx(null_NK[:, k].mean())
        assert record[f"caption_match_gain_t{k}/short"] == pytest.approx(gain - 0.05)
    assert record["caption_gain/short"] == pytest.approx(0.15)
    assert record["caption_log_likelihood/short"] == pytest.approx(-2.0)  # 40 nats over 20 tokens
    mean, low, high = mean_interval(rng.normal(0, 1, 400))
    assert low < mean < high and 0.1 < high - low < 0.3  # 2 x 1.96 / sqrt(400) = 0.196


@pytest.mark.parametrize("buckets, timesteps", [(4, 1000), (3, 10), (7, 7)])
def test_bucket_timesteps_draw_one_timestep_inside_each_bucket(buckets, timesteps):
    t_BK = np.asarray(bucket_timesteps(jax.random.key(0), 500, buckets, timesteps))
    assert (t_BK * buckets // timesteps == np.arange(buckets)).all()
    lows = -(-np.arange(buckets) * timesteps // buckets)
    highs = -(-np.arange(1, buckets + 1) * timesteps // buckets) - 1
    assert (t_BK.min(0) == lows).all() and (t_BK.max(0) == highs).all()  # the whole bucket is reached


def caption_record(tiny_config, objective: str, steps: int = 20, **fields):
    """The caption-level fields of ``objective`` trained ``steps`` steps on one device on the tiny scenes set
    with a 95/5 medium/short mix."""
    config = tiny_config(objective, **{"eval.caption_levels": LEVELS, "eval.caption_examples": 32,
                                       "eval.batch_size": 32, "mesh.data": 1, **fields})
    config.data.caption_mix = "medium:0.95,short:0.05"
    training = build_training(config, devices=jax.devices()[:1])
    with jax.set_mesh(training.mesh):
        params, opt_state = training.init(config.seed)
        data = make_train_iterator(config.data, batch_size=config.batch_size, seed=config.seed)
        for step, rate in enumerate(learning_rates(config.optim, steps, config.batch_size)):
            params, opt_state, _ = training.step(params, opt_state, training.shard(next(data)), step, rate)
        return CaptionLevelEval(config, training.state.objective, training.state.model, training.mesh)(params)


def test_diffusion_records_paired_loss_reduction_per_bucket_and_level(tiny_config):
    record = caption_record(tiny_config, "diffusion", steps=30, **{"optim.learning_rate": 3e-3})
    for level in LEVELS:
        for k in range(4):
            loss, null = record[f"caption_loss_t{k}/{level}"], record[f"caption_loss_t{k}/none"]
            assert record[f"caption_gain_t{k}/{level}"] == pytest.approx(null - loss, abs=1e-9)
            assert f"caption_match_gain_t{k}/{level}_low" in record
            gain_low, gain_high = (record[f"caption_gain_t{k}/{level}{end}"] for end in ("_low", "_high"))
            assert gain_low <= null - loss <= gain_high
            assert loss < 1.0  # below the untrained model's (zero output: the noise's variance, 1)


def test_clip_and_captioner_record_retrieval_and_likelihood_per_level(tiny_config, captioner_run):
    clip = caption_record(tiny_config, "clip", steps=5)  # recall bounds hold at any training
    captioner = next(r for r in RunFiles(captioner_run["dir"]).read_metrics()  # the trainer's record
                     if r["kind"] == "eval" and r["point"] == "end_of_schedule")
    for level in LEVELS:
        for direction in ("i2t", "t2i"):
            r1, r5 = clip[f"retrieval_{direction}_r1/{level}"], clip[f"retrieval_{direction}_r5/{level}"]
            assert 0 <= r1 <= r5 <= 1 and clip[f"retrieval_{direction}_r5/{level}_high"] >= r5
        assert captioner[f"caption_log_likelihood/{level}"] > -np.log(259)  # beats a uniform byte guess


def test_objective_without_caption_metrics_is_refused(tiny_config):
    config = tiny_config("diffusion", **{"eval.caption_levels": ("short",), "diffusion.condition": "label"})
    with pytest.raises(ConfigError, match="diffusion has no caption-level metrics"):
        CaptionLevelEval(config, Diffusion(config), None, None)
