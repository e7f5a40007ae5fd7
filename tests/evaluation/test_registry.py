"""Evaluations as a registry: one registered class and one name in ``eval.evals`` add an evaluation to the
trainer's points and to ``scaling probe``; an unknown name is refused before training."""

import json
import shutil

import jax
import numpy as np
import pytest
from helpers import scaling

from scaling.errors import ConfigError
from scaling.evaluation.evaluator import Evaluator
from scaling.evaluation.registry import Eval, Shared, register
from scaling.sharding import make_mesh
from scaling.state import build_model_state


@register
class FeatureNorm(Eval):
    """The mean feature norm of each layer over the shared test features, and how many were seen."""

    name = "feature_norm"

    def __call__(self, shared: Shared) -> dict:
        features, labels = shared.test
        return {"feature_norm_examples": len(labels),
                **{f"feature_norm/{layer}": float(np.linalg.norm(x, axis=1).mean())
                   for layer, x in features.items()}}


def model_state(config):
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    return mesh, build_model_state(config, mesh)


def test_a_declared_evaluation_runs_at_the_trainers_points_alone(tiny_config):
    config = tiny_config("clip", **{"eval.evals": ("feature_norm",), "eval.probe_train_examples": 32,
                                    "eval.probe_test_examples": 40})
    mesh, state = model_state(config)
    with jax.set_mesh(mesh):
        params = jax.jit(lambda: state.init_params(0), out_shardings=state.param_shardings)()
        record = Evaluator(config, state)(params, end_of_schedule=True)
    layers = {key for key in record if key.startswith("feature_norm/")}
    assert layers == {"feature_norm/layer_01", "feature_norm/layer_02"}
    assert record["feature_norm_examples"] == 40 and all(record[key] > 0 for key in layers)
    assert not any(key.startswith(("probe", "zero_shot", "val_loss")) for key in record)  # none else declared
    assert record["eval_s/feature_norm"] > 0 and record["eval_s/features_test"] > 0


def test_a_declared_evaluation_runs_in_scaling_probe(tiny_sweep, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_sweep["runs"]["short"], workdir)
    config = json.loads((workdir / "config.json").read_text())
    config["eval"]["evals"] = [*config["eval"]["evals"], "feature_norm"]
    (workdir / "config.json").write_text(json.dumps(config))
    assert scaling("probe", "--workdir", workdir, "--layers=layer_02", "--max-train=64", "--max-test=32") == 0
    probe = json.loads((workdir / "probe.json").read_text())
    assert probe["feature_norm_examples"] == 32 and probe["feature_norm/layer_02"] > 0
    assert "probe_accuracy" in probe and "val_loss" not in probe  # the declared ones that run on a checkpoint


def test_an_unknown_evaluation_is_named_before_training(tiny_config):
    config = tiny_config("clip", **{"eval.evals": ("linear_probe", "knn")})
    _, state = model_state(config)
    with pytest.raises(ConfigError, match=r"eval.evals: \['knn'\] not registered; choose among \[.*"
                                          r"'feature_norm', 'fewshot', 'linear_probe'"):
        Evaluator(config, state)
