"""``scaling probe``: evaluate a finished (or interrupted) run's latest checkpoint into ``probe.json``.

Features of the probe data set's train and test splits go through the full linear-probe protocol
(regularisation chosen on a held-out validation part of train, refit, one test score) per layer, plus
few-shot and zero-shot accuracy where the objective supports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scaling.config import ConfigError
from scaling.evaluation.evaluator import class_names, eval_data_config, extra_label_record, probe_record
from scaling.evaluation.features import make_features_fn, map_split
from scaling.evaluation.zero_shot import class_score_field, make_zero_shot_fn, supports_zero_shot
from scaling.sharding import make_mesh
from scaling.train import Checkpoints, build_setup, model_from_params
from scaling.workdir import RunFiles, write_json_atomic


def load_run_config(files: RunFiles) -> ml_collections.ConfigDict:
    if not files.config_path.exists():
        raise ConfigError(f"{files.root} has no config.json; pass the --workdir of a `scaling train` run")
    return ml_collections.ConfigDict(json.loads(files.config_path.read_text()))


def select_layers(features_fn, params, data, layers: tuple[str, ...], batch_size: int):
    """``features_fn`` restricted to ``layers``; ConfigError naming the layers there are for unknown ones."""
    images = jax.ShapeDtypeStruct((batch_size, data.image_size, data.image_size, 3), jnp.uint8)
    available = sorted(jax.eval_shape(features_fn, params, images, jax.random.key(0)))
    unknown = sorted(set(layers) - set(available))
    if unknown:
        raise ConfigError(f"--layers {unknown} not among {available}; pass names from that list")
    return jax.jit(lambda p, x, rng: {k: v for k, v in features_fn(p, x, rng).items() if k in layers})


def probe_checkpoint(
    workdir: str | Path,
    *,
    dataset: str = "",
    layers: tuple[str, ...] = (),
    max_train: int | None = None,
    max_test: int | None = None,
) -> dict[str, Any]:
    """Probes the latest checkpoint in ``workdir`` and writes ``workdir/probe.json``."""
    files = RunFiles(workdir)
    config = load_run_config(files)
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        setup = build_setup(config, mesh)
        checkpoints = Checkpoints(files.checkpoint_dir, config)
        step = checkpoints.latest_step()
        if step is None:
            raise ConfigError(f"{files.checkpoint_dir} holds no checkpoint; train the run first")
        params = checkpoints.restore_params(step, setup.abstract_params)
        checkpoints.close()
        data = eval_data_config(config, dataset)
        names = class_names(data)  # checks the data set and its label before any feature is computed
        batch_size = config.eval.batch_size
        to_model = lambda p: model_from_params(setup, p)
        features_fn = make_features_fn(setup.objective, to_model)
        if layers:
            features_fn = select_layers(features_fn, params, data, layers, batch_size)

        def over(split, limit, fn=features_fn):
            return map_split(fn, params, data, split, mesh=mesh, batch_size=batch_size,
                             max_examples=limit, seed=config.seed)

        train, test = over(config.eval.train_split, max_train), over(config.eval.test_split, max_test)
        record = probe_record(train, test, seed=config.seed)
        extra_labels = tuple(config.eval.get("extra_labels", ()))
        if extra_labels:
            record.update(extra_label_record(data, train[0], test[0], extra_labels,
                                             train_split=config.eval.train_split,
                                             test_split=config.eval.test_split, seed=config.seed))
        if names and supports_zero_shot(setup.objective):
            predict = make_zero_shot_fn(setup.objective, to_model, names)
            predictions, labels = over(
                config.eval.test_split, max_test, lambda p, x, r: {"prediction": predict(p, x, r)}
            )
            field = class_score_field(setup.objective)
            record[field] = float(np.mean(predictions["prediction"] == labels))

    result = {"dataset": data.name, "label": data.label, "step": step,
              "train_examples": int(train[1].shape[0]), "test_examples": int(test[1].shape[0]), **record}
    progress = [r for r in files.read_metrics() if r["step"] == step]
    if progress:
        result["flops"] = progress[-1]["flops"]
    if jax.process_index() == 0:
        write_json_atomic(files.root / "probe.json", result)
    return result

