"""Run specs: compute budgets, stable run ids, grids over config fields, and sweep definition files.

A sweep file ``sweeps/<name>.py`` defines ``get_sweep() -> Sweep``. A run id shows the fields a reader
looks for and hashes the rest of the result-changing config, e.g. ``clip-mu-f1e12-s0-3fa2c1`` or
``clip-mu-f1e12-s0-caption_level=short-3fa2c1``, so the same definition always gives the same ids. A
grid value shown rounded (``learning_rate=0.001`` for 1.0000004e-3) is hashed exactly too, so two configs
never share an id; the runner still compares a finished run's config.json with the sweep's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from scaling import config as run_config
from scaling import workdir
from scaling.config import (
    EXPERIMENTS_DIR,
    call_file_code,
    load_config_file,
    load_python_file,
)
from scaling.errors import ConfigError
from scaling.objectives import OBJECTIVES, build_objective, get_objective, validate_config

SWEEPS_DIR = EXPERIMENTS_DIR.parent / "sweeps"
BUDGET_PREFIXES = {"flops": "f", "steps": "steps", "examples": "ex"}
SHOWN_FIELDS = ("objective", "size", "seed")  # spelled out in every run id
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")

Adjust = Callable[[ml_collections.ConfigDict], None]


class SweepError(ConfigError):
    """A sweep definition that cannot work; the message names the problem and the fix."""


def compact_number(value: float) -> str:
    """``1e12`` -> "1e12", ``2.5e11`` -> "2.5e11", ``200`` -> "200", ``0.001`` -> "0.001"."""
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.6g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


@dataclasses.dataclass(frozen=True)
class Budget:
    """Training compute of a run, in FLOPs, steps or examples; converted to total_steps per config."""

    unit: str
    amount: float

    def __post_init__(self):
        if self.unit not in BUDGET_PREFIXES:
            raise SweepError(f"budget unit {self.unit!r} not in {tuple(BUDGET_PREFIXES)}")
        if not self.amount > 0:
            raise SweepError(f"budget must be positive, got {self.amount} {self.unit}")

    @classmethod
    def flops(cls, amount: float) -> Budget:
        return cls("flops", amount)

    @classmethod
    def steps(cls, amount: int) -> Budget:
        return cls("steps", amount)

    @classmethod
    def examples(cls, amount: int) -> Budget:
        return cls("examples", amount)

    @property
    def label(self) -> str:
        return BUDGET_PREFIXES[self.unit] + compact_number(self.amount)

    def total_steps(self, flops_per_example: float, batch_size: int) -> int:
        """Steps that spend the budget: round(FLOPs / (FLOPs per example x batch)), at least one."""
        per_step = {"flops": flops_per_example * batch_size, "examples": batch_size, "steps": 1}[self.unit]
        return max(1, round(self.amount / per_step))


@dataclasses.dataclass(frozen=True, eq=False)
class RunSpec:
    """One run of a sweep: its id, full config, budget and the grid values it was made from.

    ``resources`` are what an executor must reserve for it (e.g. Ray custom resources {"TPU": 4}); they
    do not change results and are not part of the id.
    """

    run_id: str
    config: ml_collections.ConfigDict
    budget: Budget
    labels: dict[str, Any]
    resources: dict[str, float]

    def record(self) -> dict[str, Any]:
        """What ``spec.json`` keeps beside the run's own files."""
        return {"run_id": self.run_id, "budget": dataclasses.asdict(self.budget), "labels": self.labels}


def result_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Dotted config fields that change results (see scaling.workdir.result_fields)."""
    return workdir.result_fields(json.loads(config.to_json()))


def _slug(value: Any) -> str:
    text = compact_number(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", str(text))


def _rounded(value: Any) -> bool:
    """Whether the id shows ``value`` rounded (a number beyond 6 significant digits)."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and float(compact_number(value)) != value


def make_run_id(config: ml_collections.ConfigDict, budget: Budget, labels: dict[str, Any]) -> str:
    """The shown fields and grid values, then a hash of every other result-changing field and of the
    exact value of any grid value the id shows rounded, so distinct configs never share an id."""
    fields = result_fields(config)
    shown = (*SHOWN_FIELDS, *(label for label, value in labels.items() if not _rounded(value)))
    rest = {k: v for k, v in fields.items() if k not in shown}
    digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6]
    values = [f"{field.rpartition('.')[2]}={_slug(value)}" for field, value in labels.items()]
    return "-".join([config.objective, config.size, budget.label, f"s{config.seed}", *values, digest])


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Sets an existing field of a run's config (see scaling.config.set_field) as a SweepError."""
    try:
        run_config.set_field(config, dotted, value)
    except ConfigError as error:
        raise SweepError(f"{dotted}={value!r} on {config.objective}: {error}") from None


def _check(config: ml_collections.ConfigDict) -> None:
    """Validation that needs no devices: the mesh is checked against its own fixed axis sizes."""
    devices = math.prod(size for size in dict(config.mesh).values() if size > 0)
    validate_config(config, num_devices=devices)


def make_run(config: ml_collections.ConfigDict, budget: Budget, labels: dict[str, Any] | None = None,
             adjust: Adjust | None = None, resources: dict[str, float] | None = None) -> RunSpec:
    """A validated run: total_steps from the budget, then ``adjust(config)`` (e.g. warmup from steps)."""
    config = config.copy_and_resolve_references()
    flops_per_example = build_objective(config).train_flops_per_example()
    config.total_steps = budget.total_steps(flops_per_example, config.batch_size)
    if adjust is not None:
        adjust(config)
    labels = dict(labels or {})
    run_id = make_run_id(config, budget, labels)
    try:
        _check(config)
    except ConfigError as error:
        raise SweepError(f"run {run_id}: {error}") from None
    return RunSpec(run_id, config, budget, labels, dict(resources or {}))


def warmup_fraction(fraction: float, at_most: int | None = None) -> Adjust:
    """An ``adjust`` that sets optim.warmup_steps to ``fraction`` of the run's steps (capped, at least 1, and
    none in a run of one step)."""

    def adjust(config: ml_collections.ConfigDict) -> None:
        steps = min(max(1, int(config.total_steps * fraction)), config.total_steps - 1)
        config.optim.warmup_steps = min(steps, at_most) if at_most else steps

    return adjust


MIN_TUNING_POINTS = 3  # a quadratic in log learning rate needs three to place its minimum


def log_grid(center: float, points: int = 5, factor: float = 2.0) -> tuple[float, ...]:
    """``points`` values ``factor`` apart, centred in log space on ``center``: a tuning axis such as
    ``axes={"optim.learning_rate": log_grid(1e-3)}`` (2.5e-4 to 4e-3). Fewer than three points cannot
    locate an optimum, so they are refused."""
    if points < MIN_TUNING_POINTS or not factor > 1 or not center > 0:
        raise SweepError(f"log_grid(center={center}, points={points}, factor={factor}): a tuning grid needs "
                         f"at least {MIN_TUNING_POINTS} points, a factor above 1 and a positive centre "
                         "(e.g. log_grid(1e-3, points=5, factor=2))")
    return tuple(float(f"{center * factor ** (k - (points - 1) / 2):.6g}") for k in range(points))


# Factor 2 apart, from below the studies' 1e-3 to above the optima the first tuning runs found at width 32.
TUNING_LEARNING_RATES = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2)
TUNING_BUDGET = Budget.steps(150)  # past initialisation: the analysis counts a point trained from 100 steps


Rates = Callable[[str, str, str], Sequence[float]]  # (objective, size, parametrization) -> learning rates


def tuning_runs(fields: dict[str, Any], per_objective: dict[str, dict[str, Any]] | None = None, *,
                sizes: Sequence[str] = ("mu", "micro", "nano"), budget: Budget = TUNING_BUDGET,
                rates: Rates = lambda objective, size, parametrization: TUNING_LEARNING_RATES,
                parametrizations: Sequence[str] = ("standard", "mup")) -> list[RunSpec]:
    """A learning-rate tuning sweep's runs: every objective at every size over the learning rates
    ``rates(objective, size, parametrization)`` gives (by default ``TUNING_LEARNING_RATES``), under each
    of ``parametrizations``, with ``fields`` (and ``per_objective[objective]``) set. Size
    by size, so every objective's cheap widths finish before the wide ones start; a grid of its own per
    objective, size or parametrisation leaves the other runs' ids as they were."""
    return [run for size in sizes for objective in available_objectives()
            for parametrization in parametrizations
            for run in grid([objective], [size], [budget],
                            axes={"model.parametrization": (parametrization,),
                                  "optim.learning_rate": tuple(rates(objective, size, parametrization))},
                            fields={**fields, **(per_objective or {}).get(objective, {})})]


def experiment_config(objective: str, size: str) -> ml_collections.ConfigDict:
    return load_config_file(EXPERIMENTS_DIR / f"{objective}.py", f"size={size}")


def available_objectives() -> list[str]:
    """Registered pre-training objectives that have an experiment config file (references such as the
    supervised ceiling, ``pretraining = False``, are left out)."""
    return [name for name in OBJECTIVES if (EXPERIMENTS_DIR / f"{name}.py").is_file()
            and get_objective(name).pretraining]


def grid(objectives: Iterable[str], sizes: Iterable[str], budgets: Iterable[Budget],
         seeds: Iterable[int] = (0,), *, fields: dict[str, Any] | None = None,
         axes: dict[str, Sequence[Any]] | None = None, adjust: Adjust | None = None,
         resources: dict[str, float] | None = None) -> list[RunSpec]:
    """Every combination of objective x size x axes x budget x seed, from experiments/<objective>.py.

    ``fields`` sets dotted config fields on every run; ``axes`` maps dotted fields to the values to
    sweep, and those values appear in the run ids.
    """
    axes, budgets, seeds = dict(axes or {}), list(budgets), list(seeds)
    runs = []
    for objective, size in itertools.product(objectives, sizes):
        base = experiment_config(objective, size)
        for values in itertools.product(*axes.values()):
            labels = dict(zip(axes, values, strict=True))
            for budget, seed in itertools.product(budgets, seeds):
                config = base.copy_and_resolve_references()
                for field, value in {**(fields or {}), **labels, "seed": seed}.items():
                    set_field(config, field, value)
                runs.append(make_run(config, budget, labels, adjust, resources))
    return runs


def wsd_ladder(objectives: Iterable[str], top_budgets: dict[str, float],
               fields: Callable[[str], dict[str, Any]], *, points: int = 3, first_fraction: float = 1 / 32,
               extra_seeds: Iterable[int] = (1,), seeds: Iterable[int] = (0,), top_seeds: Iterable[int] = (),
               axes: dict[str, Sequence[Any]] | None = None, adjust: Adjust | None = None) -> list[RunSpec]:
    """Honest points cheaply: per objective, size and each of ``seeds`` one warmup-stable-decay run to the
    size's top budget, evaluated at ``points`` training-compute fractions log-spaced from
    ``first_fraction`` to 1, each earlier one forking a cool-down branch (``eval.cooldown_fraction``);
    each of ``extra_seeds`` run on its own to the smallest of those budgets, and each of ``top_seeds`` to
    the top budget evaluated only at its end (no branches), for the seed-to-seed spread.
    ``fields(objective)`` gives the dotted config fields of that objective's runs; ``axes`` are swept as
    in ``grid``, their values in the run ids."""
    runs = []
    for objective, (size, top) in itertools.product(objectives, top_budgets.items()):
        shared = {**fields(objective), "optim.schedule": "wsd", "eval.first_fraction": first_fraction}
        runs += grid([objective], [size], [Budget.flops(top)], seeds, axes=axes,
                     fields={**shared, "eval.num_points": points}, adjust=adjust)
        runs += grid([objective], [size], [Budget.flops(top * first_fraction)], seeds=extra_seeds, axes=axes,
                     fields={**shared, "eval.num_points": 1}, adjust=adjust)
        runs += grid([objective], [size], [Budget.flops(top)], seeds=top_seeds, axes=axes,
                     fields={**shared, "eval.num_points": 1}, adjust=adjust)
    return runs


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A named list of runs; ids and result-changing configs must be unique."""

    name: str
    runs: tuple[RunSpec, ...]

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(self.runs))
        if not NAME_PATTERN.match(self.name):
            raise SweepError(f"sweep name {self.name!r} must use only letters, digits, '_', '.', '-'")
        repeated = [run_id for run_id, n in Counter(r.run_id for r in self.runs).items() if n > 1]
        if repeated:
            raise SweepError(f"sweep {self.name}: duplicate run ids {repeated}; make the grid values unique")
        by_config: dict[str, str] = {}
        for run in self.runs:
            key = json.dumps(result_fields(run.config), sort_keys=True)
            if key in by_config:
                raise SweepError(f"sweep {self.name}: runs {by_config[key]} and {run.run_id} have the same "
                                 "config (e.g. two budgets that round to the same steps); drop one")
            by_config[key] = run.run_id


def load_sweep(path: str | Path) -> Sweep:
    """``get_sweep()`` of a sweep definition file."""
    return _sweep_of(load_python_file(path, SWEEPS_DIR), path)


def _sweep_of(module, path: str | Path) -> Sweep:
    if not callable(getattr(module, "get_sweep", None)):
        raise SweepError(f"{path} defines no get_sweep() -> Sweep")
    sweep = call_file_code(path, module.get_sweep)
    if not isinstance(sweep, Sweep):
        raise SweepError(f"{path}: get_sweep() returned {type(sweep).__name__}, not a Sweep")
    return sweep


def load_runs(path: str) -> Sweep:
    """A sweep file's sweep, or a config file (``experiments/clip.py[:size=b]``) as a sweep of one run
    named by its id."""
    file, _, arg = path.partition(":")
    module = load_python_file(file, SWEEPS_DIR)
    if callable(getattr(module, "get_sweep", None)):
        return _sweep_of(module, file)
    if not callable(getattr(module, "get_config", None)):
        raise SweepError(f"{file} defines neither get_sweep() nor get_config()")
    config = call_file_code(file, module.get_config, arg or None)
    run = make_run(config, Budget.steps(config.total_steps))
    return Sweep(run.run_id, (run,))
