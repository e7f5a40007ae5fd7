"""The run configuration: shared defaults every objective starts from, and validation before compile.

Experiment files (``experiments/<objective>.py``) call ``base_config`` and add their objective's section;
``validate`` turns a bad value into a ``ConfigError`` that names the field and the fix, before any array
is allocated or any program compiled.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import ml_collections

from scaling.data.scenes import CAPTION_LEVELS
from scaling.models import transformer
from scaling.models.sizes import LADDER
from scaling.sharding import MESH_AXES, MeshError, resolve_mesh_shape

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "wsd")
REMAT_POLICIES = ("none", *transformer.REMAT_POLICIES)


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and how to fix it."""


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"size=mu,dtype=bfloat16"`` -> ``{"size": "mu", "dtype": "bfloat16"}``."""
    if not arg:
        return {}
    pairs = {}
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"config argument {item!r} is not key=value (e.g. size=mu)")
        pairs[key.strip()] = value.strip()
    return pairs


def base_config(objective: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Defaults shared by every objective; ``arg`` may set ``size`` (and nothing else generic)."""
    options = parse_arg(arg)
    c = ml_collections.ConfigDict()
    c.objective = objective
    c.size = options.pop("size", "mu")
    c.seed = 0
    c.total_steps = 300
    c.batch_size = 64
    c.grad_accum_steps = 1  # microbatches per step: activations for batch_size / grad_accum_steps
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.log_every = 10

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"
    c.model.patch_size = 4
    c.model.positions = "learned"
    c.model.scan_layers = False  # one compiled block looped over stacked parameters (deep models)
    c.model.remat = "none"  # backward-pass recompute: none, full (whole blocks), dots (all but matmuls)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.grad_clip = 1.0
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 30
    c.optim.decay_fraction = 0.2
    c.optim.final_lr_fraction = 0.0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.data_dir = ""
    c.data.image_size = 32
    c.data.caption_level = "descriptive"
    c.data.label = "label"
    c.data.max_caption_len = 128  # byte tokens; descriptive captions run to ~240, medium to ~80
    c.data.tokenizer = "byte"
    c.data.worker_count = 0
    c.data.train_split = "train"
    c.eval = ml_collections.ConfigDict()
    c.eval.num_points = 4  # probe points spaced evenly in log-compute, the last at the end; 0 = none
    c.eval.first_fraction = 1 / 16  # training-compute fraction of the first point
    c.eval.dataset = ""  # "" -> the training data set
    c.eval.label = ""  # "" -> data.label
    c.eval.train_split = "train"
    c.eval.test_split = "test"
    c.eval.val_split = "validation"  # validation loss on the training data; "" to skip
    c.eval.val_batches = 2
    c.eval.probe_train_examples = 2000
    c.eval.probe_test_examples = 1000
    c.eval.batch_size = 256
    c.eval.zero_shot = True
    if options:
        raise ConfigError(
            f"unknown config argument(s) {sorted(options)} for {objective}; "
            "only size=... is taken here, set other fields with --config.<field>=<value>"
        )
    return c


def load_python_file(path: str | Path, where: str = "experiments/<objective>.py") -> ModuleType:
    """Executes a Python file (a config or sweep definition) as a fresh module."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; configs live in {where}")
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file such as ``experiments/clip.py``, as ``--config`` loads it."""
    return load_python_file(path).get_config(arg)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError for values that cannot work; cheap, runs before anything is compiled."""
    from scaling.objectives import OBJECTIVES, get_objective

    _require(
        config.objective in OBJECTIVES,
        f"objective: unknown {config.objective!r}; choose one of {', '.join(OBJECTIVES)}",
    )
    _require(
        config.size in LADDER, f"size: unknown {config.size!r}; choose one of {', '.join(LADDER)}"
    )
    for field in ("total_steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
        _require(config[field] > 0, f"{field}: must be positive, got {config[field]}")
    _require(config.model.dtype in DTYPES, f"model.dtype: {config.model.dtype!r} not in {DTYPES}")
    _require(
        config.model.remat in REMAT_POLICIES,
        f"model.remat: {config.model.remat!r} not in {REMAT_POLICIES}",
    )
    _require(
        config.optim.schedule in SCHEDULES,
        f"optim.schedule: {config.optim.schedule!r} not in {SCHEDULES}",
    )
    _require(
        0 <= config.optim.warmup_steps < config.total_steps,
        f"optim.warmup_steps: {config.optim.warmup_steps} must be below total_steps "
        f"({config.total_steps})",
    )
    _require(config.optim.learning_rate > 0, "optim.learning_rate: must be positive")
    _require(
        config.data.caption_level in CAPTION_LEVELS,
        f"data.caption_level: {config.data.caption_level!r} not in {CAPTION_LEVELS}",
    )
    _require(
        config.data.image_size % config.model.patch_size == 0,
        f"model.patch_size: {config.model.patch_size} does not divide data.image_size "
        f"{config.data.image_size}",
    )
    unknown_axes = set(config.mesh) - set(MESH_AXES)
    _require(not unknown_axes, f"mesh: unknown axes {sorted(unknown_axes)}; use {MESH_AXES}")
    try:
        mesh = resolve_mesh_shape(dict(config.mesh), num_devices)
    except MeshError as error:
        raise ConfigError(str(error)) from None
    batch_shards = mesh["data"] * mesh["fsdp"]
    divisor = math.lcm(batch_shards, process_count)
    _require(
        config.batch_size % divisor == 0,
        f"batch_size: {config.batch_size} is not divisible by the {batch_shards} batch shards "
        f"(mesh data x fsdp) and {process_count} processes; use a multiple of {divisor}",
    )
    accum = config.grad_accum_steps
    _require(
        accum > 0 and config.batch_size % (accum * batch_shards) == 0,
        f"grad_accum_steps: {accum} microbatches of batch_size {config.batch_size} must each split over "
        f"the {batch_shards} batch shards; use a divisor of {config.batch_size // batch_shards}",
    )
    _require(
        config.eval.batch_size % divisor == 0,
        f"eval.batch_size: {config.eval.batch_size} is not divisible by the {batch_shards} batch shards "
        f"and {process_count} processes; use a multiple of {divisor}",
    )
    get_objective(config.objective).validate(config)
