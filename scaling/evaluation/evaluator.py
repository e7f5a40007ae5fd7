"""Evaluation records: linear and few-shot probes, zero-shot accuracy and validation loss.

``Evaluator`` serves the trainer: at training-compute milestones spaced evenly in log-compute (and at the
end) it returns one flat record for metrics.jsonl. ``probe_record`` turns per-layer features into the
probe fields of such a record, for the trainer and for ``scaling probe`` on a finished checkpoint alike.
The best layer's accuracy carries its 95% bootstrap interval over the test examples
(``probe_accuracy_low``/``_high``), and a trainer's records carry the raw-pixel probe of the same examples
(``pixel_probe_accuracy``, cached) as the floor learned features must clear. Each of
``eval.extra_labels`` is probed on the same features into fields prefixed with its name
(``count_probe_accuracy``, ``count_pixel_probe_accuracy``, ...). With ``eval.caption_levels``, the
held-out caption metrics of ``scaling.evaluation.caption_levels`` join the record.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from scaling.data.caption_mix import eval_captions
from scaling.data.pipeline import check_label, ensure_built, make_eval_iterator, split_labels
from scaling.evaluation.caption_levels import CaptionLevelEval
from scaling.evaluation.features import make_features_fn, map_split
from scaling.evaluation.linear_probe import fewshot_ridge, probe_layers
from scaling.evaluation.pixel_reference import pixel_reference, with_interval
from scaling.evaluation.zero_shot import class_score_field, make_zero_shot_fn, supports_zero_shot
from scaling.sharding import shard_batch

FEWSHOT_SHOTS = (1, 5, 10, 25)


def milestone_steps(total_steps: int, num_points: int, first_fraction: float) -> tuple[int, ...]:
    """Steps at training-compute fractions spaced evenly in log space from first_fraction to 1."""
    if num_points <= 0:
        return ()
    fractions = np.geomspace(first_fraction, 1.0, num_points) if num_points > 1 else np.ones(1)
    return tuple(sorted({max(1, int(round(f * total_steps))) for f in fractions}))


def eval_data_config(config: ml_collections.ConfigDict, dataset: str = "") -> ml_collections.ConfigDict:
    """The training data section pointed at the probe data set and label."""
    data = config.data.copy_and_resolve_references()
    data.name = dataset or config.eval.dataset or config.data.name
    if data.name != config.data.name or config.eval.label:
        data.label = config.eval.label or "label"
    return data


def class_names(data_config) -> tuple[str, ...]:
    """Class names of the probe label (() when it has none); ConfigError when the data set lacks it."""
    builder = ensure_built(data_config)
    check_label(data_config, builder)
    feature = builder.info.features[data_config.label]
    return tuple(getattr(feature, "names", ()) or ())


def probe_record(
    train: tuple[dict[str, np.ndarray], np.ndarray],
    test: tuple[dict[str, np.ndarray], np.ndarray],
    *,
    shots: tuple[int, ...] = FEWSHOT_SHOTS,
    seed: int = 0,
) -> dict[str, Any]:
    """Flat probe fields: best-layer and per-layer linear-probe accuracy, and per-layer few-shot
    accuracy (``fewshot_{k}shot/{layer}``). Few-shot has no headline layer: the linear probe's best
    layer is chosen with every training label, which a k-shot result must not lean on."""
    (features_train, labels_train), (features_test, labels_test) = train, test
    probes = probe_layers(features_train, labels_train, features_test, labels_test, seed=seed)
    best = probes["best_layer"]
    record: dict[str, Any] = {
        **with_interval("probe_accuracy", probes["best_test_accuracy"], len(labels_test)), "probe_layer": best
    }
    for layer, result in probes["per_layer"].items():
        record[f"probe_accuracy/{layer}"] = result["test_accuracy"]
    per_class = np.bincount(labels_train).min()
    usable = tuple(k for k in shots if k <= per_class)
    if usable:
        for layer, layer_train in features_train.items():
            fewshot = fewshot_ridge(layer_train, labels_train, features_test[layer], labels_test,
                                    shots=usable)
            for k, result in fewshot["shots"].items():
                record[f"fewshot_{k}shot/{layer}"] = result["mean_accuracy"]
    return record


def extra_label_record(
    data_config,
    train_features: dict[str, np.ndarray],
    test_features: dict[str, np.ndarray],
    labels: tuple[str, ...],
    *,
    train_split: str,
    test_split: str,
    seed: int = 0,
) -> dict[str, Any]:
    """For each label: its linear probe on the given features and its raw-pixel floor, fields prefixed
    ``{label}_``. The features are the first examples of each split, in order."""
    counts = {split: len(next(iter(features.values())))
              for split, features in ((train_split, train_features), (test_split, test_features))}
    train_labels = split_labels(data_config, train_split, labels, counts[train_split])
    test_labels = split_labels(data_config, test_split, labels, counts[test_split])
    record: dict[str, Any] = {}
    for label in labels:
        fields = probe_record((train_features, train_labels[label]), (test_features, test_labels[label]),
                              shots=(), seed=seed)
        labelled = data_config.copy_and_resolve_references()
        labelled.label = label
        fields.update(pixel_reference(labelled, train_split=train_split, test_split=test_split,
                                      train_examples=counts[train_split], test_examples=counts[test_split],
                                      seed=seed))
        record.update({f"{label}_{name}": value for name, value in fields.items()})
    return record


class Evaluator:
    """Runs the evaluation of a live model inside training."""

    def __init__(self, config: ml_collections.ConfigDict, objective, model_from_params, mesh):
        self.config, self.objective, self.mesh = config, objective, mesh
        self.steps = set(milestone_steps(config.total_steps, config.eval.num_points,
                                         config.eval.first_fraction))
        self.data = eval_data_config(config)
        self.features_fn = make_features_fn(objective, model_from_params)
        # the probe data set and label are checked before training; none is read for a run without evals
        names = class_names(self.data) if self.steps else ()
        self.extra_labels = tuple(config.eval.extra_labels)
        if self.steps and self.extra_labels:
            split_labels(self.data, config.eval.test_split, self.extra_labels, max_examples=1)
        wanted = names and config.eval.zero_shot and supports_zero_shot(objective)
        self.zero_shot_fn = make_zero_shot_fn(objective, model_from_params, names) if wanted else None
        wanted = self.steps and config.eval.caption_levels
        self.caption_levels = CaptionLevelEval(config, objective, model_from_params, mesh) if wanted else None
        self.loss_fn = jax.jit(
            lambda params, batch, rng: objective.loss(model_from_params(params), batch, rng)[0]
        )

    def due(self, step: int) -> bool:
        return step in self.steps

    def _map(self, fn, params, split: str, max_examples: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        return map_split(fn, params, self.data, split, mesh=self.mesh, batch_size=self.config.eval.batch_size,
                         max_examples=max_examples, seed=self.config.seed)

    def __call__(self, params) -> dict[str, Any]:
        e = self.config.eval
        start = time.perf_counter()
        train = self._map(self.features_fn, params, e.train_split, e.probe_train_examples)
        test = self._map(self.features_fn, params, e.test_split, e.probe_test_examples)
        record = probe_record(train, test, seed=self.config.seed)
        record.update(pixel_reference(self.data, train_split=e.train_split, test_split=e.test_split,
                                      train_examples=len(train[1]), test_examples=len(test[1]),
                                      seed=self.config.seed))
        if self.extra_labels:
            record.update(extra_label_record(self.data, train[0], test[0], self.extra_labels,
                                             train_split=e.train_split, test_split=e.test_split,
                                             seed=self.config.seed))
        if self.zero_shot_fn is not None:
            predictions, labels = self._map(
                lambda p, images, rng: {"prediction": self.zero_shot_fn(p, images, rng)},
                params, e.test_split, e.probe_test_examples,
            )
            field = class_score_field(self.objective)
            record[field] = float(np.mean(predictions["prediction"] == labels))
        if self.caption_levels is not None:
            record.update(self.caption_levels(params))
        if e.val_split:
            record["val_loss"] = self.validation_loss(params)
        record["eval_s"] = time.perf_counter() - start
        return record

    def validation_loss(self, params) -> float:
        """Mean training loss over the first val_batches full batches of the validation split, captions at
        eval.caption_level."""
        batch_size = self.config.batch_size
        local_size = batch_size // jax.process_count()
        batches = make_eval_iterator(
            eval_captions(self.config), self.config.eval.val_split, batch_size=batch_size,
            process_index=jax.process_index(), process_count=jax.process_count(),
            max_examples=batch_size * self.config.eval.val_batches,
        )
        losses = [
            float(self.loss_fn(params, shard_batch(batch, self.mesh), jax.random.key(index)))
            for index, batch in enumerate(batches)
            if batch["label"].shape[0] == local_size
        ]
        return float(np.mean(losses)) if losses else float("nan")
