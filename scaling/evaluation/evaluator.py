"""The one evaluation of a model's parameters, run by the trainer's eval points (``Evaluator``), by
``scaling probe`` (scaling.evaluation.probe) and by a run's initialisation baseline
(scaling.evaluation.init_probe) alike.

``prepare_evaluation`` checks the probe data set and label and builds the evaluations ``eval.evals``
declares (scaling.evaluation.registry; the registered ones live in scaling.evaluation.evals) that run at
that point, each checking its own data and config and compiling what it runs, before any evaluation; the
probe examples' images are read once and served to every later evaluation (``SplitImages``).
``evaluate`` runs one feature pass over the probe data set's train split and one over its test split
(with the test heads of the evaluations, e.g. zero-shot's class scores) and hands both to each
evaluation due at that point, timing each feature pass and each evaluation (``eval_s/<part>``). The
trainer's points are spaced evenly in log-compute (and at the end).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

import scaling.evaluation.evals  # noqa: F401  (registers the evaluations)
from scaling.data.pipeline import check_label, ensure_built, labelled_split
from scaling.errors import ConfigError
from scaling.evaluation.features import BatchFn, SplitImages, make_features_fn, map_split
from scaling.evaluation.registry import Eval, Features, Setup, Shared, declared, part_of
from scaling.schedule import eval_steps
from scaling.state import ModelState
from scaling.workdir import Stopwatch

TEST_HEAD = "head:"  # prefixes the evaluations' test-head outputs in the test pass


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


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The evaluations ``evaluate`` runs for one model state, checked and compiled once
    (``prepare_evaluation``)."""

    setup: Setup
    evals: tuple[Eval, ...]
    test_passes: dict[tuple[BatchFn, ...], BatchFn] = dataclasses.field(default_factory=dict)

    def test_pass(self, heads: tuple[BatchFn, ...]) -> BatchFn:
        """One pass over the test images: the features and every head's outputs (under ``TEST_HEAD``),
        each function seeing the batch's images and rng as alone; compiled once per set of heads."""
        if heads not in self.test_passes:
            features_fn = self.setup.features_fn
            self.test_passes[heads] = features_fn if not heads else jax.jit(lambda p, x, rng: {
                **features_fn(p, x, rng),
                **{TEST_HEAD + name: out for head in heads for name, out in head(p, x, rng).items()}})
        return self.test_passes[heads]


class Evaluated(NamedTuple):
    record: dict[str, Any]
    train_examples: int
    test_examples: int
    seconds: dict[str, float]  # features_train, features_test and each evaluation's part


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
    point: str,
    dataset: str = "",
    layers: tuple[str, ...] = (),
) -> Evaluation:
    """Checks the probe data set and its label, and builds each of ``eval.evals`` that runs at ``point``
    (one of ``POINTS``) and is available to the objective and config, each checking its own data and
    config (ConfigError before any evaluation) and compiling what it runs. ``dataset`` overrides the probe
    data set, ``layers`` keeps only those features."""
    data = eval_data_config(config, dataset)
    config = config.copy_and_resolve_references()
    config.eval.test_split = labelled_split(data.name, config.eval.test_split)
    names = class_names(data)
    features_fn = make_features_fn(state.objective, state.model)
    if layers:
        features_fn = select_layers(features_fn, state, data, layers, config.eval.batch_size)
    images = SplitImages(data, batch_size=config.eval.batch_size)
    setup = Setup(config, state, data, names, features_fn, images)
    return Evaluation(setup, tuple(kind(setup) for kind in declared(config)
                                   if point in kind.points and kind.available(state.objective, config)))


def evaluate(evaluation: Evaluation, params, *, max_train: int | None, max_test: int | None,
             end_of_schedule: bool = True) -> Evaluated:
    """The evaluation record of ``params`` on the first ``max_train``/``max_test`` examples of the probe
    data set's train and test splits (all when None; ``eval.probe_train_per_class`` of each class of train
    instead when set): one feature pass per split, then each evaluation due at this point (an evaluation
    may skip points short of the ``end_of_schedule`` one) in declared order; with how many examples each
    split gave and the seconds of each feature pass and evaluation."""
    setup = evaluation.setup
    e, seed = setup.config.eval, setup.config.seed
    per_class = train_per_class(setup.config)
    due = tuple(kind for kind in evaluation.evals if kind.due(end_of_schedule))
    heads = tuple(head for kind in due if (head := kind.test_head(max_test)) is not None)
    clock = Stopwatch(("features_train", "features_test", *(part_of(type(kind)) for kind in due)))

    def over(fn: BatchFn, split: str, limit: int | None, per_class: int = 0) -> Features:
        return map_split(fn, params, setup.images.batches(split, limit, per_class), mesh=setup.state.mesh,
                         batch_size=e.batch_size, seed=seed)

    with clock("features_train"):
        train = over(setup.features_fn, e.train_split, max_train, per_class)
    with clock("features_test"):
        outputs, test_labels = over(evaluation.test_pass(heads), e.test_split, max_test)
    head_outputs = {name.removeprefix(TEST_HEAD): outputs.pop(name) for name in list(outputs)
                    if name.startswith(TEST_HEAD)}
    shared = Shared(params, train, (outputs, test_labels), head_outputs, max_test, per_class)
    record: dict[str, Any] = {}
    for kind in due:
        with clock(part_of(type(kind))):
            record.update(kind(shared))
    return Evaluated(record, len(train[1]), len(test_labels), clock.seconds)


def copied_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record of parameters evaluated before, for another point that holds the very same ones: its
    fields without the seconds, which that evaluation spent and this one did not."""
    kept = {name: value for name, value in record.items() if not name.startswith("eval_s/")}
    return {**kept, "eval_s": 0.0}


class Evaluator:
    """Runs the evaluations of a live model inside training."""

    def __init__(self, config: ml_collections.ConfigDict, state: ModelState):
        self.config, self.state = config, state
        self.steps = set(eval_steps(config))
        declared(config)  # an unknown evaluation is named before training
        # the probe data set and labels are checked before training; none is read for a run without evals
        self.evaluation = prepare_evaluation(config, state, point="training") if self.steps else None

    def due(self, step: int) -> bool:
        return step in self.steps

    def __call__(self, params, end_of_schedule: bool) -> dict[str, Any]:
        """The eval record of ``params``: its fields, ``eval_s`` and the seconds of each part,
        ``eval_s/<part>``."""
        e = self.config.eval
        start = time.perf_counter()
        evaluated = evaluate(self.evaluation, params, max_train=e.probe_train_examples,
                             max_test=e.probe_test_examples, end_of_schedule=end_of_schedule)
        record = {**evaluated.record, "eval_s": time.perf_counter() - start}
        record.update({f"eval_s/{part}": value for part, value in evaluated.seconds.items() if value})
        return record
