"""The initialisation baseline of a run: the linear probe of its parameters at step 0.

A probe of trained features means something only against the same probe of the untrained network (an
identity-initialised DiT already probes well above chance). ``init_probe`` evaluates parameters at step 0
with the run's own probe protocol, examples and raw-pixel floor (no zero-shot, no validation loss, no
caption metrics) into the fields of an eval record. The record depends only on what fixes the
initialisation and the probe set, so it is computed once and cached as JSON in ``init_probes/`` of the data
directory under a digest of the config without its training-only fields (``init_key``): every run sharing
an initialisation (budget siblings, reruns, re-creations of published runs) shares it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ml_collections

from scaling.data.pipeline import resolve_data_dir
from scaling.evaluation.evaluator import evaluate, prepare_evaluation
from scaling.state import ModelState
from scaling.workdir import LATER_FIELDS, OPERATIONAL_FIELDS, flatten, read_json, write_json_atomic

CACHE_FOLDER = "init_probes"
UNKEYED_DEFAULTS = {  # fields newer than the cached keys, left out at these
    "eval.probe_train_per_class": 0, "eval.evals": LATER_FIELDS["eval.evals"]}
TRAINING_ONLY = (  # config fields (or sections, with a trailing dot) that do not change step 0 or its probe
    *OPERATIONAL_FIELDS, "total_steps", "batch_size", "grad_accum_steps", "optim.", "mesh.",
    "eval.num_points", "eval.first_fraction", "eval.cooldown_fraction", "eval.val_split", "eval.val_batches",
    "eval.zero_shot", "eval.zero_shot_points", "eval.zero_shot_examples", "eval.caption_level",
    "eval.caption_levels", "eval.caption_examples",
)


def init_key(config: ml_collections.ConfigDict) -> str:
    """``<objective>-<size>-s<seed>-<digest>``: the digest of every field but the training-only ones."""
    flat = flatten(json.loads(config.to_json()))
    kept = {name: value for name, value in flat.items()
            if not any(name == field or field.endswith(".") and name.startswith(field)
                       for field in TRAINING_ONLY) and UNKEYED_DEFAULTS.get(name, ...) != value}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config.objective}-{config.size}-s{config.seed}-{digest}"


def cached_init_probe(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """The cached init probe of ``config``'s initialisation and probe set, or None."""
    return read_json(resolve_data_dir(config.data) / CACHE_FOLDER / f"{init_key(config)}.json")


def init_probe(config: ml_collections.ConfigDict, state: ModelState, params) -> dict[str, Any]:
    """The probe fields of ``params`` (the run's parameters at step 0), from the cache when present."""
    cached = cached_init_probe(config)
    if cached is not None:
        return cached
    evaluation = prepare_evaluation(config, state, point="init")
    limits = dict(max_train=config.eval.probe_train_examples, max_test=config.eval.probe_test_examples)
    record = evaluate(evaluation, params, **limits).record
    write_json_atomic(resolve_data_dir(config.data) / CACHE_FOLDER / f"{init_key(config)}.json", record)
    return record
