"""Evaluation records: linear and few-shot probes, zero-shot accuracy and validation loss.

``evaluate`` is the one evaluation of a model's parameters: probe features of the probe data set's train
and test splits go through the linear-probe protocol per layer (``probe_record``: the best layer's
accuracy with its 95% bootstrap interval over the test examples, ``probe_accuracy_low``/``_high``, what
validation chose (``chosen_probe``: layer, diffusion timestep, C and their validation accuracy), and
few-shot accuracy per layer), each of ``eval.extra_labels`` is probed on the same features into fields
prefixed with its name (``count_probe_accuracy``, ``count_pixel_probe_accuracy``, ...), and an objective
that scores classes adds its zero-shot (or generative-classifier) accuracy; with ``eval.caption_levels``
the held-out caption metrics of ``scaling.evaluation.caption_levels`` join the record.
``prepare_evaluation`` checks the data and compiles what ``evaluate`` runs, before any evaluation; the
probe examples' images it reads once and serves to every later evaluation (``SplitImages``). The
trainer's ``Evaluator`` calls it at training-compute milestones spaced evenly in log-compute (and at the
end), adding the raw-pixel probe of the same examples (``pixel_probe_accuracy``, cached) as the floor
learned features must clear, and the validation loss; ``scaling probe`` (scaling.evaluation.probe) calls
it on a checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scaling.data.caption_mix import eval_captions
from scaling.data.pipeline import check_label, ensure_built, labelled_split, make_eval_iterator, split_labels
from scaling.errors import ConfigError
from scaling.evaluation.caption_levels import CaptionLevelEval
from scaling.evaluation.features import BatchFn, SplitImages, make_features_fn, map_split
from scaling.evaluation.fewshot import DEFAULT_FEWSHOT_SHOTS, fewshot_ridge
from scaling.evaluation.linear_probe import probe_layers
from scaling.evaluation.pixel_reference import pixel_reference, with_interval
from scaling.evaluation.zero_shot import make_zero_shot_fn, supports_zero_shot
from scaling.schedule import eval_steps
from scaling.sharding import shard_batch
from scaling.state import ModelState
from scaling.workdir import Stopwatch

EVAL_PARTS = ("features_train", "features_test", "zero_shot", "probe", "fewshot", "pixel_floor",
              "extra_labels", "caption_levels")
"""Where an evaluation's seconds go (``eval_s/<part>`` in eval records, with ``val_loss``): the feature
passes over each split (the test split's with the class scores of zero-shot, unless
``eval.zero_shot_examples`` scores fewer examples in a pass of its own, ``zero_shot``), the linear probes
of every layer, the few-shot probes, the raw-pixel floor (cached), the extra labels' probes and caption
metrics."""
PREDICTION = "class_prediction"  # beside the test split's features: the class-score prediction
Features = tuple[dict[str, np.ndarray], np.ndarray]  # ({layer: [N, D]}, labels [N])


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


def chosen_probe(probes: dict[str, Any]) -> dict[str, Any]:
    """What validation chose: ``probe_layer``, its diffusion timestep ``probe_timestep`` (layers named
    ``layer_02/t30``), the regularisation ``probe_C`` and the validation accuracy that chose them."""
    best = probes["best_layer"]
    timestep = best.partition("/t")[2]
    return {"probe_layer": best, **({"probe_timestep": int(timestep)} if timestep.isdigit() else {}),
            "probe_C": probes["per_layer"][best]["best_C"],
            "probe_val_accuracy": probes["best_val_accuracy"]}


def probe_record(
    train: Features,
    test: Features,
    *,
    shots: tuple[int, ...] = DEFAULT_FEWSHOT_SHOTS,
    seed: int = 0,
    clock: Stopwatch | None = None,
) -> dict[str, Any]:
    """Flat probe fields: best-layer and per-layer linear-probe accuracy, and per-layer few-shot
    accuracy (``fewshot_{k}shot/{layer}``). Few-shot has no headline layer: the linear probe's best
    layer is chosen with every training label, which a k-shot result must not lean on. ``clock``
    accounts the seconds of the ``probe`` and the ``fewshot`` part."""
    clock = clock or Stopwatch(EVAL_PARTS)
    (features_train, labels_train), (features_test, labels_test) = train, test
    with clock("probe"):
        probes = probe_layers(features_train, labels_train, features_test, labels_test, seed=seed)
    record: dict[str, Any] = {
        **with_interval("probe_accuracy", probes["best_test_accuracy"], len(labels_test)),
        **chosen_probe(probes),
    }
    for layer, result in probes["per_layer"].items():
        record[f"probe_accuracy/{layer}"] = result["test_accuracy"]
    per_class = np.bincount(labels_train).min()
    usable = tuple(k for k in shots if k <= per_class)
    if usable:
        with clock("fewshot"):
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
    train_count, test_count = (len(next(iter(f.values()))) for f in (train_features, test_features))
    train_labels = split_labels(data_config, train_split, labels, train_count)
    test_labels = split_labels(data_config, test_split, labels, test_count)
    record: dict[str, Any] = {}
    for label in labels:
        fields = probe_record((train_features, train_labels[label]), (test_features, test_labels[label]),
                              shots=(), seed=seed)
        labelled = data_config.copy_and_resolve_references()
        labelled.label = label
        fields.update(pixel_reference(labelled, train_split=train_split, test_split=test_split,
                                      train_examples=train_count, test_examples=test_count, seed=seed))
        record.update({f"{label}_{name}": value for name, value in fields.items()})
    return record


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What ``evaluate`` runs for one model state, checked and compiled once (``prepare_evaluation``)."""

    state: ModelState
    config: ml_collections.ConfigDict  # the run's: eval section, seed
    data: ml_collections.ConfigDict  # the probe data set and label
    features_fn: BatchFn  # of the train split
    test_fn: BatchFn  # of the test split: the features and, with class scores, PREDICTION
    predict_fn: BatchFn | None  # PREDICTION alone, for zero-shot on fewer test examples than the probe's
    extra_labels: tuple[str, ...]
    pixel_floor: bool
    caption_levels: CaptionLevelEval | None  # eval.caption_levels' held-out caption metrics
    images: SplitImages  # the probe examples, read once for every evaluation


class Evaluated(NamedTuple):
    record: dict[str, Any]
    train_examples: int
    test_examples: int
    seconds: dict[str, float]  # per part of EVAL_PARTS


def first_examples(batches: Iterable[dict[str, np.ndarray]], count: int | None
                   ) -> Iterator[dict[str, np.ndarray]]:
    """The batches cut after their first ``count`` examples (all when None)."""
    for batch in batches:
        if count is not None and count <= 0:
            return
        kept = batch if count is None else {key: value[:count] for key, value in batch.items()}
        count = None if count is None else count - len(kept["label"])
        yield kept


def with_predictions(features_fn: BatchFn, predict_fn: BatchFn) -> BatchFn:
    """One pass over the test images for the probes and the class scores: the features and, under
    ``PREDICTION``, the predicted class ids (each function sees the batch's images and rng as alone)."""
    return jax.jit(lambda p, x, rng: {**features_fn(p, x, rng), PREDICTION: predict_fn(p, x, rng)})


def select_layers(features_fn: BatchFn, state: ModelState, data, layers: tuple[str, ...],
                  batch_size: int) -> BatchFn:
    """``features_fn`` restricted to ``layers``; ConfigError naming the layers there are for unknown ones."""
    images = jax.ShapeDtypeStruct((batch_size, data.image_size, data.image_size, 3), jnp.uint8)
    available = sorted(jax.eval_shape(features_fn, state.abstract_params, images, jax.random.key(0)))
    unknown = sorted(set(layers) - set(available))
    if unknown:
        raise ConfigError(f"--layers {unknown} not among {available}; pass names from that list")
    return jax.jit(lambda p, x, rng: {k: v for k, v in features_fn(p, x, rng).items() if k in layers})


def train_per_class(config: ml_collections.ConfigDict) -> int:
    """``eval.probe_train_per_class`` (0 in configs written before it existed)."""
    return config.eval.get("probe_train_per_class", 0)


def prepare_evaluation(
    config: ml_collections.ConfigDict,
    state: ModelState,
    *,
    dataset: str = "",
    layers: tuple[str, ...] = (),
    zero_shot: bool = True,
    pixel_floor: bool = False,
) -> Evaluation:
    """Checks the probe data set, its label and ``eval.extra_labels`` (ConfigError before any evaluation)
    and compiles the feature and zero-shot functions. ``dataset`` overrides the probe data set, ``layers``
    keeps only those features, ``zero_shot`` asks for class scores where the objective has them,
    ``pixel_floor`` adds the raw-pixel probe of the same examples."""
    data = eval_data_config(config, dataset)
    config = config.copy_and_resolve_references()
    config.eval.test_split = labelled_split(data.name, config.eval.test_split)
    names = class_names(data)
    extra_labels = tuple(config.eval.get("extra_labels", ()))
    if extra_labels and train_per_class(config):
        raise ConfigError(f"eval.extra_labels {list(extra_labels)} are probed on the first "
                          "eval.probe_train_examples, not on a per-class subset; set "
                          "eval.probe_train_per_class=0 (or leave out --train-per-class)")
    if extra_labels:
        split_labels(data, config.eval.test_split, extra_labels, max_examples=1)
    features_fn = make_features_fn(state.objective, state.model)
    if layers:
        features_fn = select_layers(features_fn, state, data, layers, config.eval.batch_size)
    wanted = names and zero_shot and supports_zero_shot(state.objective)
    test_fn, predict_fn = features_fn, None
    if wanted:
        zero_shot_fn = make_zero_shot_fn(state.objective, state.model, names)
        test_fn = with_predictions(features_fn, zero_shot_fn)
        predict_fn = jax.jit(lambda p, x, rng: {PREDICTION: zero_shot_fn(p, x, rng)})
    levels = config.eval.get("caption_levels", ())
    caption_levels = CaptionLevelEval(config, state.objective, state.model, state.mesh) if levels else None
    return Evaluation(state, config, data, features_fn, test_fn, predict_fn, extra_labels, pixel_floor,
                      caption_levels, SplitImages(data, batch_size=config.eval.batch_size))


def evaluate(evaluation: Evaluation, params, *, max_train: int | None, max_test: int | None,
             zero_shot: bool = True) -> Evaluated:
    """The evaluation record of ``params`` on the first ``max_train``/``max_test`` examples of the probe
    data set's train and test splits (all when None; ``eval.probe_train_per_class`` of each class of train
    instead when set), how many examples each split gave and the seconds of each of ``EVAL_PARTS``; without
    ``zero_shot`` the class scores the evaluation was prepared with are left out."""
    e, seed, data = evaluation.config.eval, evaluation.config.seed, evaluation.data
    per_class = train_per_class(evaluation.config)
    clock = Stopwatch(EVAL_PARTS)

    def over(fn: BatchFn, split: str, limit: int | None, per_class: int = 0,
             scored: int | None = None) -> Features:
        batches = first_examples(evaluation.images.batches(split, limit, per_class), scored)
        return map_split(fn, params, batches, mesh=evaluation.state.mesh, batch_size=e.batch_size, seed=seed)

    zero_shot = zero_shot and evaluation.predict_fn is not None
    scored = e.get("zero_shot_examples", 0) or None  # zero-shot's test examples, the first of the probe's
    apart = zero_shot and scored is not None and (max_test is None or scored < max_test)
    with clock("features_train"):
        train = over(evaluation.features_fn, e.train_split, max_train, per_class)
    with clock("features_test"):
        test_outputs, test_labels = over(evaluation.test_fn if zero_shot and not apart
                                         else evaluation.features_fn, e.test_split, max_test)
    predictions, scored_labels = test_outputs.pop(PREDICTION, None), test_labels
    if apart:
        with clock("zero_shot"):
            outputs, scored_labels = over(evaluation.predict_fn, e.test_split, max_test, scored=scored)
        predictions = outputs[PREDICTION]
    test = (test_outputs, test_labels)
    train_examples, test_examples = len(train[1]), len(test[1])
    record = probe_record(train, test, seed=seed, clock=clock)
    if evaluation.pixel_floor:
        with clock("pixel_floor"):
            record.update(pixel_reference(data, train_split=e.train_split, test_split=e.test_split,
                                          train_examples=train_examples, test_examples=test_examples,
                                          seed=seed, train_per_class=per_class))
    if evaluation.extra_labels:
        with clock("extra_labels"):
            record.update(extra_label_record(data, train[0], test[0], evaluation.extra_labels,
                                             train_split=e.train_split, test_split=e.test_split, seed=seed))
    if predictions is not None:
        record[evaluation.state.objective.class_score_field] = float(np.mean(predictions == scored_labels))
    if evaluation.caption_levels is not None:
        with clock("caption_levels"):
            record.update(evaluation.caption_levels(params))
    return Evaluated(record, train_examples, test_examples, clock.seconds)


def copied_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record of parameters evaluated before, for another point that holds the very same ones: its
    fields without the seconds, which that evaluation spent and this one did not."""
    kept = {name: value for name, value in record.items() if not name.startswith("eval_s/")}
    return {**kept, "eval_s": 0.0}


class Evaluator:
    """Runs the evaluation of a live model inside training."""

    def __init__(self, config: ml_collections.ConfigDict, state: ModelState):
        self.config, self.state = config, state
        self.steps = set(eval_steps(config))
        # the probe data set and labels are checked before training; none is read for a run without evals
        wanted = dict(zero_shot=config.eval.zero_shot, pixel_floor=True)
        self.evaluation = prepare_evaluation(config, state, **wanted) if self.steps else None
        objective, to_model = state.objective, state.model
        self.loss_fn = jax.jit(lambda params, batch, rng: objective.loss(to_model(params), batch, rng)[0])

    def due(self, step: int) -> bool:
        return step in self.steps

    def __call__(self, params, end_of_schedule: bool) -> dict[str, Any]:
        """The eval record of ``params``; zero-shot where ``eval.zero_shot_points`` asks for it (every
        point, or the ``end_of_schedule`` one)."""
        e = self.config.eval
        start = time.perf_counter()
        evaluated = evaluate(self.evaluation, params, max_train=e.probe_train_examples,
                             max_test=e.probe_test_examples,
                             zero_shot=e.zero_shot_points == "all" or end_of_schedule)
        record, seconds = evaluated.record, dict(evaluated.seconds)
        if e.val_split:
            validation_start = time.perf_counter()
            record["val_loss"] = self.validation_loss(params)
            seconds["val_loss"] = time.perf_counter() - validation_start
        record["eval_s"] = time.perf_counter() - start
        record.update({f"eval_s/{part}": value for part, value in seconds.items() if value})
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
            float(self.loss_fn(params, shard_batch(batch, self.state.mesh), jax.random.key(index)))
            for index, batch in enumerate(batches)
            if batch["label"].shape[0] == local_size
        ]
        return float(np.mean(losses)) if losses else float("nan")
