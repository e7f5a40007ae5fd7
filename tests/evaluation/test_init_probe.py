"""Initialisation baselines: the probe of a run's step-0 parameters, recorded by the trainer, cached per
initialisation, and re-created from the run's config alone for runs that predate it."""

import json
from pathlib import Path

from scaling.evaluation.init_probe import CACHE_FOLDER, init_key
from scaling.evaluation.probe import load_run_config
from scaling.sweeps.init_probes import probe_init
from scaling.sweeps.spec import Budget, make_run
from scaling.workdir import RunFiles


def test_the_init_probe_re_created_from_the_config_is_the_one_training_recorded(tiny_sweep):
    files = RunFiles(tiny_sweep["runs"]["plain"])
    config = load_run_config(files)
    init = next(r for r in files.read_metrics() if r["kind"] == "eval")
    assert (init["point"], init["step"], init["flops"]) == ("init", 0, 0)
    assert {"probe_layer", "probe_C", "probe_val_accuracy", "pixel_probe_accuracy"} <= set(init)

    cached = Path(config.data.data_dir) / CACHE_FOLDER / f"{init_key(config)}.json"
    assert json.loads(cached.read_text())["probe_accuracy"] == init["probe_accuracy"]
    cached.unlink()  # re-created from the config alone: the same parameters, probe and number
    again = probe_init(make_run(config, Budget.steps(config.total_steps)), {})
    assert (again["probe_accuracy"], again["probe_layer"]) == (init["probe_accuracy"], init["probe_layer"])


def test_runs_share_an_init_probe_exactly_when_they_share_an_initialisation_and_probe_set(tiny_config):
    config = tiny_config("clip")
    longer = tiny_config("clip", total_steps=400, batch_size=32, **{"optim.learning_rate": 1e-2})
    assert init_key(longer) == init_key(config)
    for changed in ({"seed": 1}, {"eval.probe_test_examples": 300}, {"data.image_size": 16}):
        assert init_key(tiny_config("clip", **changed)) != init_key(config), changed
    assert init_key(config).startswith("clip-mu-s0-")
