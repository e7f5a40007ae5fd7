"""Held-out caption metrics per caption detail level (``eval.caption_levels``), for eval records.

The first ``eval.caption_examples`` test examples of the training data set are read once with their captions
at each level, tokenized as long as the model's training captions (a longer caption is cut, as the model could
read no more of it). An objective that supports this is a ``CaptionScorer`` (scaling.objectives.base):
``caption_outputs(model, images_BHWC, captions, rng) -> {name: [B, ...]}``, ``captions`` mapping each level to
its (tokens [B, T], mask [B, T]), and returns per-example outputs that ``caption_level_metrics`` reduces by
name:

- ``image_embedding`` [B, E] and ``text_embedding/<level>`` [B, E] (CLIP): image-to-text and text-to-image
  retrieval among the held-out pairs, ``retrieval_i2t_r1/<level>``, ``retrieval_t2i_r5/<level>``, ...
- ``log_likelihood/<level>`` [B] and ``predicted_tokens/<level>`` [B] (captioner): log-likelihood per token
  of the reference captions, ``caption_log_likelihood/<level>``.
- ``denoising_error/none``, ``denoising_error/<level>`` and ``mismatched_error/<level>`` [B, K]
  (text-conditional diffusion): epsilon error at one timestep drawn in each of the K loss buckets, the same
  (timestep, noise) draws with no caption, under every level and under another example's caption, so
  differences are paired: ``caption_loss_t<k>/<level>`` (level ``none`` too); the loss reduction a
  caption gives, ``caption_gain_t<k>/<level>`` = loss with no caption - loss with the caption, over all
  buckets ``caption_gain/<level>``; and the part of it that is about this image,
  ``caption_match_gain_t<k>/<level>`` = loss with another example's caption - loss with its own (a
  model that only learned "some caption is present" gains without matching). Errors are in epsilon, the
  training loss: in clean-image terms a gain at timestep t weighs (1 - alpha_bar_t) / alpha_bar_t more.

Every metric carries a 95% interval over the held-out examples (``<field>_low``/``_high``): percentile
bootstrap of the (paired) mean, binomial bootstrap for recalls. Intervals over seeds are the analysis's.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from scaling.data.caption_mix import at_level
from scaling.data.pipeline import make_eval_iterator
from scaling.errors import ConfigError
from scaling.evaluation.features import pad_to
from scaling.evaluation.pixel_reference import with_interval
from scaling.objectives.base import CaptionScorer
from scaling.sharding import batch_sharding

RECALL_KS = (1, 5)
BOOTSTRAP_SAMPLES = 1000
LEVEL = 0.95
NO_CAPTION = "none"


def supports_caption_levels(objective) -> bool:
    """Whether the objective scores held-out captions and can in this config."""
    return isinstance(objective, CaptionScorer) and objective.caption_outputs_available


def mean_interval(values_N: np.ndarray, weights_N: np.ndarray | None = None, *, seed: int = 0,
                  level: float = LEVEL) -> tuple[float, float, float]:
    """(weighted mean, low, high): the percentile bootstrap interval of the mean over examples."""
    values_N = np.asarray(values_N, np.float64)
    weights_N = np.ones_like(values_N) if weights_N is None else np.asarray(weights_N, np.float64)
    draws_SN = np.random.default_rng(seed).integers(0, len(values_N), (BOOTSTRAP_SAMPLES, len(values_N)))
    drawn_weights_SN = weights_N[draws_SN]
    means_S = (values_N[draws_SN] * drawn_weights_SN).sum(1) / np.maximum(drawn_weights_SN.sum(1), 1e-12)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means_S, [tail, 100 - tail])
    return float((values_N * weights_N).sum() / weights_N.sum()), float(low), float(high)


def with_mean_interval(field: str, values_N: np.ndarray, weights_N: np.ndarray | None = None,
                       seed: int = 0) -> dict[str, float]:
    mean, low, high = mean_interval(values_N, weights_N, seed=seed)
    return {field: mean, f"{field}_low": low, f"{field}_high": high}


def retrieval_hits(query_NE: np.ndarray, key_NE: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: query i's own key (row i) is among its ``k`` most similar keys (dot product; ties count
    against it)."""
    similarity_NN = query_NE @ key_NE.T
    own_N = np.diag(similarity_NN)
    return (similarity_NN >= own_N[:, None]).sum(axis=1) <= k


def retrieval_metrics(image_NE: np.ndarray, text_NE: np.ndarray, level: str) -> dict[str, float]:
    record: dict[str, float] = {}
    for k in RECALL_KS:
        for name, (query_NE, key_NE) in (("i2t", (image_NE, text_NE)), ("t2i", (text_NE, image_NE))):
            hits_N = retrieval_hits(query_NE, key_NE, k)
            record.update(with_interval(f"retrieval_{name}_r{k}/{level}", float(hits_N.mean()), len(hits_N)))
    return record


def diffusion_level_metrics(null_NK: np.ndarray, captioned: dict[str, np.ndarray],
                            mismatched: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Loss per bucket with no caption and under each level, and each level's paired loss reductions over
    no caption and over another example's caption."""
    record: dict[str, float] = {}
    for k in range(null_NK.shape[1]):
        record.update(with_mean_interval(f"caption_loss_t{k}/{NO_CAPTION}", null_NK[:, k], seed=seed))
    for level, error_NK in captioned.items():
        gain_NK = null_NK - error_NK
        match_gain_NK = mismatched[level] - error_NK if level in mismatched else None
        for k in range(null_NK.shape[1]):
            record.update(with_mean_interval(f"caption_loss_t{k}/{level}", error_NK[:, k], seed=seed))
            record.update(with_mean_interval(f"caption_gain_t{k}/{level}", gain_NK[:, k], seed=seed))
            if match_gain_NK is not None:
                record.update(with_mean_interval(f"caption_match_gain_t{k}/{level}", match_gain_NK[:, k],
                                                 seed=seed))
        record.update(with_mean_interval(f"caption_gain/{level}", gain_NK.mean(axis=1), seed=seed))
    return record


def caption_level_metrics(outputs: dict[str, np.ndarray], seed: int = 0) -> dict[str, Any]:
    """Record fields from per-example ``caption_outputs`` over the held-out examples (see module doc)."""
    by_level: dict[str, dict[str, np.ndarray]] = {}
    for name, value in outputs.items():
        kind, _, level = name.partition("/")
        by_level.setdefault(kind, {})[level] = value
    record: dict[str, Any] = {}
    for level, text_NE in by_level.get("text_embedding", {}).items():
        record.update(retrieval_metrics(outputs["image_embedding"], text_NE, level))
    for level, log_likelihood_N in by_level.get("log_likelihood", {}).items():
        tokens_N = by_level["predicted_tokens"][level]
        per_token_N = log_likelihood_N / np.maximum(tokens_N, 1)
        record.update(with_mean_interval(f"caption_log_likelihood/{level}", per_token_N, tokens_N, seed))
    errors = dict(by_level.get("denoising_error", {}))
    if errors:
        null_NK = errors.pop(NO_CAPTION)
        record.update(diffusion_level_metrics(null_NK, errors, by_level.get("mismatched_error", {}), seed))
    return record


def held_out_examples(config: ml_collections.ConfigDict, levels: tuple[str, ...]
                      ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(images [N, H, W, 3], {level: (tokens [N, T], mask [N, T])}) of the first eval.caption_examples
    test examples of the training data set, T the model's caption length."""
    e = config.eval
    images, captions = None, {}
    for level in levels:
        batches = list(make_eval_iterator(at_level(config.data, level), e.test_split,
                                          batch_size=e.caption_examples, max_examples=e.caption_examples))
        images = np.concatenate([batch["image"] for batch in batches])
        captions[level] = (np.concatenate([batch["caption_tokens"] for batch in batches]),
                           np.concatenate([batch["caption_mask"] for batch in batches]))
    return images, captions


class CaptionLevelEval:
    """The caption-level fields of a live model's eval record (every process computes the same)."""

    def __init__(self, config: ml_collections.ConfigDict, objective, model_from_params, mesh):
        if not supports_caption_levels(objective):
            raise ConfigError(
                f"eval.caption_levels: {config.objective} has no caption-level metrics (CLIP, captioning "
                "and caption-conditioned diffusion do); set eval.caption_levels=()"
            )
        self.config, self.mesh = config, mesh
        self.images, self.captions = held_out_examples(config, tuple(config.eval.caption_levels))
        self.fn = jax.jit(lambda params, images, captions, rng: objective.caption_outputs(
            model_from_params(params), images, captions, rng))

    def __call__(self, params) -> dict[str, Any]:
        size, count = self.config.eval.batch_size, len(self.images)
        rng = jax.random.key(self.config.seed)
        put = lambda array: jax.device_put(pad_to(array, size), batch_sharding(self.mesh, array.ndim))
        chunks: dict[str, list[np.ndarray]] = {}
        for index, start in enumerate(range(0, count, size)):
            rows = slice(start, min(start + size, count))
            captions = {level: (put(tokens[rows]), put(mask[rows]))
                        for level, (tokens, mask) in self.captions.items()}
            out = self.fn(params, put(self.images[rows]), captions, jax.random.fold_in(rng, index))
            for name, value in multihost_utils.process_allgather(out, tiled=True).items():
                chunks.setdefault(name, []).append(np.asarray(value[:rows.stop - start], np.float64))
        outputs = {name: np.concatenate(parts) for name, parts in chunks.items()}
        return caption_level_metrics(outputs, self.config.seed)
