"""``scaling probe``: evaluate a finished (or interrupted) run's latest checkpoint into ``probe.json``
(over a whole sweep, at its final or every eval point: scaling.sweeps.probes).

Restores the parameters alone into the run's model state (no optimizer), or re-creates them from the run's
seed for step 0 (its initialisation, never checkpointed), and runs the one evaluation
(``scaling.evaluation.evaluator.evaluate``) with the run's ``eval.evals`` that run on a checkpoint: the
full linear-probe protocol per layer (regularisation chosen on a held-out validation part of train, refit,
one test score), few-shot, extra labels, zero-shot accuracy where the objective supports it and caption
metrics; not the raw-pixel floor or the validation loss, which are the trainer's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import ml_collections

from scaling.errors import ConfigError
from scaling.evaluation.evaluator import evaluate, prepare_evaluation
from scaling.sharding import make_mesh
from scaling.state import Checkpoints, build_model_state, use_compilation_cache
from scaling.workdir import RunFiles, write_json_atomic


def load_run_config(files: RunFiles) -> ml_collections.ConfigDict:
    config = files.read_config()
    if config is None:
        raise ConfigError(f"{files.root} has no config.json; pass the --workdir of a `scaling train` run")
    return ml_collections.ConfigDict(config)


def probe_checkpoint(
    workdir: str | Path,
    *,
    dataset: str = "",
    layers: tuple[str, ...] = (),
    max_train: int | None = None,
    max_test: int | None = None,
    output: str | Path | None = None,
    step: int | None = None,
    train_per_class: int | None = None,
) -> dict[str, Any]:
    """The probe record of the checkpoint of ``step`` in ``workdir`` (default the latest; step 0 is the
    initialisation), also written to ``output`` if given; ``train_per_class`` examples of each class of the
    training split instead of the first ``max_train`` when given."""
    files = RunFiles(workdir)
    config = load_run_config(files)
    if train_per_class is not None:
        if train_per_class < 1 or max_train is not None:
            raise ConfigError(f"--train-per-class {train_per_class}: give a positive number of examples per "
                              "class, and not with --max-train")
        config.eval.probe_train_per_class = train_per_class
    if not os.access(files.root, os.W_OK):  # found before anything is computed
        raise ConfigError(f"--workdir {files.root} is not writable, so probe.json cannot be written there; "
                          "copy the run to a folder you can write to")
    checkpoints = Checkpoints(files.checkpoint_dir) if files.checkpoint_dir.is_dir() else None
    step = checkpoints.latest_step() if checkpoints and step is None else step
    if step is None:
        raise ConfigError(f"{files.checkpoint_dir} holds no checkpoint; train the run first")
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    use_compilation_cache(config.data)
    mesh = make_mesh(config.mesh)
    with jax.set_mesh(mesh):
        state = build_model_state(config, mesh)
        if step == 0:
            params = jax.jit(lambda: state.init_params(config.seed), out_shardings=state.param_shardings)()
        else:
            params = checkpoints.restore_params(step, state.abstract_params)
        if checkpoints:
            checkpoints.close()
        # checks the data set and its labels before any feature is computed
        evaluation = prepare_evaluation(config, state, point="checkpoint", dataset=dataset, layers=layers)
        evaluated = evaluate(evaluation, params, max_train=max_train, max_test=max_test)

    result = {"dataset": evaluation.setup.data.name, "label": evaluation.setup.data.label, "step": step,
              "train_examples": evaluated.train_examples, "test_examples": evaluated.test_examples,
              "test_split": evaluation.setup.config.eval.test_split,
              **({"train_per_class": train_per_class} if train_per_class else {}), **evaluated.record}
    progress = [r for r in files.read_metrics() if r["step"] == step]
    if progress:
        result["flops"] = progress[-1]["flops"]
    if output is not None and jax.process_index() == 0:
        write_json_atomic(Path(output), result)
    return result
