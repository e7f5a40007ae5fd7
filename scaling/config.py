"""The run configuration: shared defaults every objective starts from, loading, and validation before compile.

Experiment files (``experiments/<objective>.py``) call ``base_config`` and add their objective's section;
``load_config`` reads one with ``field=value`` overrides (fields by dotted name, values read as the field's
type, a misspelt name answered with the nearest ones); ``validate`` turns a bad value into a ``ConfigError``
that names the field and the fix, before any array is allocated or any program compiled (the fields every
objective shares; each objective checks its own section, see ``scaling.objectives.validate_config``).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from scaling.data.captions import CAPTION_LEVELS, parse_caption_mix
from scaling.data.transforms import transform_ops
from scaling.errors import ConfigError, UserError
from scaling.models import transformer
from scaling.models.parametrization import PARAMETRIZATIONS
from scaling.models.sizes import LADDER
from scaling.schedule import warmup_steps
from scaling.sharding import MESH_AXES, MeshError, resolve_mesh_shape
from scaling.workdir import LATER_FIELDS, flatten

DTYPES = ("float32", "bfloat16")
SCHEDULES = ("cosine", "wsd")
ZERO_SHOT_POINTS = ("all", "final")
EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")
REMAT_POLICIES = ("none", *transformer.REMAT_POLICIES)


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
    c.keep_eval_checkpoints = False  # also keep a checkpoint of every eval point (probe --points all)
    c.log_every = 10

    c.model = ml_collections.ConfigDict()
    c.model.dtype = "float32"
    c.model.residual_dtype = "float32"  # the stream between blocks; bfloat16 halves its bytes on TPU
    c.model.patch_size = 4
    c.model.positions = "learned"
    c.model.scan_layers = False  # one compiled block looped over stacked parameters (deep models)
    c.model.remat = "none"  # backward-pass recompute: none, full (whole blocks), dots (all but matmuls)
    c.model.parametrization = "standard"  # or "mup": learning rates transfer across widths
    c.model.base_width = 32  # the width at which mup equals standard (scaling.models.parametrization)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.grad_clip = 1.0
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 30  # linear warmup, in steps; unused when warmup_examples is set
    c.optim.warmup_examples = 0  # linear warmup, in training examples (rounded up to whole steps); 0 = steps
    c.optim.decay_fraction = 0.2
    c.optim.final_lr_fraction = 0.0

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    c.data = ml_collections.ConfigDict()
    c.data.name = "scenes"
    c.data.data_dir = ""
    c.data.image_size = 32
    c.data.caption_level = "descriptive"
    c.data.train_transform = ""  # image ops, e.g. "inception_crop(224)|flip"; "" -> square(image_size)
    c.data.eval_transform = ""  # e.g. "resize(256)|center_crop(224)"; "" -> square(image_size)
    c.data.caption_field = ""  # a text feature ("captions/text") or class label; "" -> caption_<level>
    c.data.caption_mix = ""  # e.g. "descriptive:0.95,short:0.05", a level drawn per example; "" -> none
    c.data.label = "label"
    c.data.max_caption_len = 0  # tokens; 0 -> the longest caption of caption_level or of the mix's levels
    c.data.tokenizer = "byte"
    c.data.worker_count = 0
    c.data.train_split = "train"
    c.eval = ml_collections.ConfigDict()
    c.eval.num_points = 4  # probe points spaced evenly in log-compute, the last at the end; 0 = none
    c.eval.first_fraction = 1 / 16  # training-compute fraction of the first point
    c.eval.cooldown_fraction = 0.2  # wsd only: cool-down branch at each earlier point, x its step; 0 = none
    c.eval.dataset = ""  # "" -> the training data set
    c.eval.label = ""  # "" -> data.label
    c.eval.extra_labels = ()  # more labels probed on the same features, e.g. ("count", "color")
    c.eval.train_split = "train"
    c.eval.test_split = "test"
    c.eval.val_split = "validation"  # validation loss on the training data; "" to skip
    c.eval.val_batches = 2
    c.eval.probe_train_examples = 2000
    c.eval.probe_test_examples = 1000
    c.eval.probe_train_per_class = 0  # > 0: this many of each class instead (probe_train_examples unused)
    c.eval.batch_size = 256
    c.eval.zero_shot = True
    c.eval.zero_shot_points = "all"  # or "final": zero-shot scored at the end-of-schedule point only
    c.eval.zero_shot_examples = 0  # zero-shot on the first N probe test examples; 0 -> all of them
    c.eval.caption_level = ""  # captions of validation batches; "" -> data.caption_level
    c.eval.caption_levels = ()  # held-out caption metrics per level, e.g. ("short", "descriptive")
    c.eval.caption_examples = 256  # held-out test examples of those metrics
    # the evaluations of each eval record, in record order (scaling.evaluation.registry), each where it
    # applies: zero_shot with eval.zero_shot, extra_labels and caption_levels when those are set, ...
    c.eval.evals = tuple(LATER_FIELDS["eval.evals"])
    if options:
        raise ConfigError(
            f"unknown config argument(s) {sorted(options)} for {objective}; "
            "only size=... is taken here, set other fields with --config.<field>=<value>"
        )
    return c


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def load_python_file(path: str | Path, folder: Path = EXPERIMENTS_DIR) -> ModuleType:
    """Executes a Python file (a config or sweep definition) as a fresh module; ``folder`` holds the known
    ones, which a missing ``path`` lists."""
    path = Path(path)
    if not path.is_file():
        known = ", ".join(_shown(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_"))
        raise ConfigError(f"{path} does not exist; {_shown(folder)}/ holds {known or 'no .py files'}")
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    call_file_code(path, spec.loader.exec_module, module)
    return module


def call_file_code(path: str | Path, function: Callable, *args: Any) -> Any:
    """``function(*args)``, code of the config or sweep file ``path``; an exception it raises that is not a
    ``UserError`` becomes a ConfigError naming the file, its line and the error."""
    try:
        return function(*args)
    except UserError:
        raise
    except Exception as error:
        lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                 if Path(frame.filename) == Path(path)]
        where = f" line {lines[-1]}" if lines else ""
        raise ConfigError(f"{path}{where}: {type(error).__name__}: {error}; fix that file") from None


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file such as ``experiments/clip.py``."""
    module = load_python_file(path)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path} defines no get_config(arg) -> ConfigDict; see {_shown(EXPERIMENTS_DIR)}/")
    return call_file_code(path, module.get_config, arg)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The config the command line describes: ``spec`` is ``path[:arg]`` (``--config``), each override
    ``field=value`` (``--config.<field>=<value>``), the value read as the type the field already has."""
    path, _, arg = spec.partition(":")
    config = load_config_file(path, arg or None)
    for override in overrides:
        field, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"--config.{field} needs a value: --config.{field}=<value>")
        set_field(config, field, parse_value(field, text, get_field(config, field)))
    return config


# --- fields by dotted name -----------------------------------------------------------------------------


def nearest_fields(name: str, fields: Sequence[str], count: int = 3) -> list[str]:
    """Dotted field names a misspelt ``name`` most likely meant: the same last part in any section
    (``learning_rate`` -> ``optim.learning_rate``), else a close last part, else a close full name."""
    leaf_of = lambda field: field.rpartition(".")[2]
    same_leaf = [field for field in fields if leaf_of(field) == leaf_of(name)]
    leaves = {leaf_of(field) for field in fields}
    close_leaves = difflib.get_close_matches(leaf_of(name), leaves, n=count, cutoff=0.75)
    close_leaf = [field for leaf in close_leaves for field in fields if leaf_of(field) == leaf]
    return (same_leaf or close_leaf or difflib.get_close_matches(name, fields, n=count, cutoff=0.8))[:count]


def _parent_of(config: ml_collections.ConfigDict, dotted: str) -> tuple[ml_collections.ConfigDict, str]:
    """(section, name) of an existing field; ConfigError with the nearest field names otherwise."""
    *sections, name = dotted.split(".")
    parent = config
    for section in sections:
        parent = parent.get(section) if isinstance(parent, ml_collections.ConfigDict) else None
    if isinstance(parent, ml_collections.ConfigDict) and name in parent:
        return parent, name
    near = nearest_fields(dotted, sorted(flatten(config.to_dict())))
    if near:
        raise ConfigError(f"config field {dotted} does not exist; did you mean {' or '.join(near)}?")
    is_section = {key: isinstance(value, ml_collections.ConfigDict) for key, value in config.items()}
    raise ConfigError(
        f"config field {dotted} does not exist; the fields are "
        f"{', '.join(key for key, section in is_section.items() if not section)} and those in the sections "
        f"{', '.join(key for key, section in is_section.items() if section)} (e.g. optim.learning_rate)")


def get_field(config: ml_collections.ConfigDict, dotted: str) -> Any:
    parent, name = _parent_of(config, dotted)
    return parent[name]


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets an existing field to a value of its type; a misspelt name is an error, not a new unused field."""
    parent, name = _parent_of(config, dotted)
    current = parent[name]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config field {dotted} is a section; set its fields, e.g. "
                          f"{dotted}.{next(iter(current), '<field>')}=<value>")
    try:
        parent[name] = value
    except TypeError:
        raise ConfigError(f"config field {dotted} holds a {type(current).__name__} (now {current!r}); "
                          f"got {value!r}, a {type(value).__name__}") from None


def parse_value(field: str, text: str, current: Any) -> Any:
    """``text`` read as the type of the field's ``current`` value (a string stays a string)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(text)
            return text.lower() in TRUE_WORDS
        if isinstance(current, int):
            number = float(text)
            if not number.is_integer():
                raise ValueError(text)
            return int(number)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple | list):
            value = ast.literal_eval(text)
            if not isinstance(value, tuple | list):
                raise ValueError(text)
            return type(current)(value)
    except (ValueError, SyntaxError):
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(type(current), "a list")
        raise ConfigError(f"--config.{field}={text}: {field} takes {kind} (default {current!r})") from None
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return text


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_warmup(config: ml_collections.ConfigDict) -> None:
    optim = config.optim
    _require(optim.warmup_steps >= 0 and optim.warmup_examples >= 0,
             "optim.warmup_steps and optim.warmup_examples: must not be negative")
    _require(
        optim.warmup_examples == 0 or optim.warmup_steps == 0,
        f"optim.warmup_examples: {optim.warmup_examples} and optim.warmup_steps: {optim.warmup_steps} both "
        "set a warmup; set optim.warmup_steps=0 to warm up over examples",
    )
    steps = warmup_steps(optim, config.batch_size)
    given = (f"optim.warmup_examples: {optim.warmup_examples} examples ({steps} steps of {config.batch_size})"
             if optim.warmup_examples else f"optim.warmup_steps: {steps}")
    _require(steps < config.total_steps, f"{given} must be below total_steps ({config.total_steps})")


def _check_caption_field(data: ml_collections.ConfigDict) -> None:
    field = data.caption_field
    _require(not field or data.max_caption_len,
             f"data.caption_field: {field!r} needs data.max_caption_len (tokens per caption, e.g. 77); the "
             "longest caption is known only for the caption_<level> fields of scenes")
    _require(not field or not data.caption_mix,
             f"data.caption_field: {field!r} and data.caption_mix {data.caption_mix!r} both choose the "
             "captions; a mix draws among caption_<level> fields, so leave one of them empty")


def validate(config: ml_collections.ConfigDict, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError for values that cannot work whatever the objective; cheap, runs before anything
    is compiled. ``scaling.objectives.validate_config`` adds the objective's own checks."""
    _require(
        config.size in LADDER, f"size: unknown {config.size!r}; choose one of {', '.join(LADDER)}"
    )
    for field in ("total_steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
        _require(config[field] > 0, f"{field}: must be positive, got {config[field]}")
    _require(config.model.dtype in DTYPES, f"model.dtype: {config.model.dtype!r} not in {DTYPES}")
    _require(config.model.residual_dtype in DTYPES,
             f"model.residual_dtype: {config.model.residual_dtype!r} not in {DTYPES}")
    _require(config.model.parametrization in PARAMETRIZATIONS,
             f"model.parametrization: unknown {config.model.parametrization!r}; choose one of "
             f"{', '.join(PARAMETRIZATIONS)}")
    width = LADDER[config.size].width
    _require(0 < config.model.base_width <= width,
             f"model.base_width: {config.model.base_width} must be positive and at most the width of size "
             f"{config.size} ({width}): µP scales from a base width up; use a smaller size's width, e.g. 32")
    _require(
        config.model.remat in REMAT_POLICIES,
        f"model.remat: {config.model.remat!r} not in {REMAT_POLICIES}",
    )
    _require(
        config.optim.schedule in SCHEDULES,
        f"optim.schedule: {config.optim.schedule!r} not in {SCHEDULES}",
    )
    _check_warmup(config)
    _require(config.optim.learning_rate > 0, "optim.learning_rate: must be positive")
    _require(
        0 <= config.eval.cooldown_fraction <= 1,
        f"eval.cooldown_fraction: {config.eval.cooldown_fraction} must be in [0, 1] (cool-down branch "
        "length as a fraction of the steps so far; 0 for none)",
    )
    _require(
        config.data.caption_level in CAPTION_LEVELS,
        f"data.caption_level: {config.data.caption_level!r} not in {CAPTION_LEVELS}",
    )
    parse_caption_mix(config.data.caption_mix)
    _check_caption_field(config.data)
    transform_ops(config.data, training=True)
    transform_ops(config.data, training=False)
    _require(
        config.eval.caption_level in ("", *CAPTION_LEVELS),
        f"eval.caption_level: {config.eval.caption_level!r} not in {CAPTION_LEVELS} (or \"\" for "
        "data.caption_level)",
    )
    for level in config.eval.caption_levels:
        _require(level in CAPTION_LEVELS[1:],
                 f"eval.caption_levels: {level!r} is not a caption level; choose among "
                 f"{', '.join(CAPTION_LEVELS[1:])} (the diffusion loss without a caption is always recorded)")
    _require(config.eval.probe_train_per_class >= 0,
             f"eval.probe_train_per_class: {config.eval.probe_train_per_class} must be 0 (the first "
             "eval.probe_train_examples) or a number of training examples per class")
    _require(config.eval.caption_examples > 0, "eval.caption_examples: must be positive")
    _require(config.eval.zero_shot_points in ZERO_SHOT_POINTS,
             f"eval.zero_shot_points: {config.eval.zero_shot_points!r} not in {ZERO_SHOT_POINTS}; all scores "
             "zero-shot at every eval point, final at the end of the schedule only")
    _require(config.eval.zero_shot_examples >= 0,
             f"eval.zero_shot_examples: {config.eval.zero_shot_examples} must be 0 (every probe test "
             "example) or a positive count")
    _require(
        config.data.max_caption_len == 0 or config.data.max_caption_len >= 2,
        f"data.max_caption_len: {config.data.max_caption_len} leaves no room for BOS and EOS; use 0 "
        "(the longest caption of data.caption_level) or at least 2",
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
