"""The ``linear_probe`` evaluation: the C-selection protocol (scaling.evaluation.linear_probe) on every
layer's features; the best layer's test accuracy with its 95% bootstrap interval
(``probe_accuracy``, ``_low``/``_high``), what validation chose (``chosen_probe``) and each layer's
accuracy (``probe_accuracy/<layer>``)."""

from __future__ import annotations

from typing import Any

from scaling.evaluation.linear_probe import probe_layers
from scaling.evaluation.pixel_reference import with_interval
from scaling.evaluation.registry import Eval, Features, Shared, register


def chosen_probe(probes: dict[str, Any]) -> dict[str, Any]:
    """What validation chose: ``probe_layer``, its diffusion timestep ``probe_timestep`` (layers named
    ``layer_02/t30``), the regularisation ``probe_C`` and the validation accuracy that chose them."""
    best = probes["best_layer"]
    timestep = best.partition("/t")[2]
    return {"probe_layer": best, **({"probe_timestep": int(timestep)} if timestep.isdigit() else {}),
            "probe_C": probes["per_layer"][best]["best_C"],
            "probe_val_accuracy": probes["best_val_accuracy"]}


def linear_probe_fields(train: Features, test: Features, *, seed: int = 0) -> dict[str, Any]:
    """The linear-probe fields of features of a train and a test split."""
    (features_train, labels_train), (features_test, labels_test) = train, test
    probes = probe_layers(features_train, labels_train, features_test, labels_test, seed=seed)
    record = {**with_interval("probe_accuracy", probes["best_test_accuracy"], len(labels_test)),
              **chosen_probe(probes)}
    for layer, result in probes["per_layer"].items():
        record[f"probe_accuracy/{layer}"] = result["test_accuracy"]
    return record


@register
class LinearProbe(Eval):
    name, part = "linear_probe", "probe"

    def __call__(self, shared: Shared) -> dict[str, Any]:
        return linear_probe_fields(shared.train, shared.test, seed=self.setup.config.seed)
