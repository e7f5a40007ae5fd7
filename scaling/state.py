"""Model state: a run's objective, model graph, abstract parameters and their shardings; and checkpoints.

``ModelState`` is what every user of a model needs and nothing more: the trainer adds its optimizer on
top, ``scaling probe`` restores parameters into it, the planner lowers steps against its abstract
parameters. ``build_model_state`` prepares the objective first (the one step that may read data:
iGPT's palette, a class count from data-set metadata); building the objective itself reads nothing.

``Checkpoints`` are a run's orbax checkpoints (params, optimizer state, data-iterator state, progress,
config); ``restore_params`` reads the parameters alone, so evaluation never builds an optimizer. Each
saved step gets a manifest of its files' SHA-256 (orbax verifies nothing it reads back), checked before a
restore; a resume also checks that the step was saved by the run's own config, and falls back past
damaged steps to the newest whole one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.sharding import Mesh
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from scaling.data.pipeline import resolve_data_dir
from scaling.errors import ConfigError, UserError, warn
from scaling.objectives import build_objective
from scaling.objectives.base import Objective, Prepared
from scaling.schedule import eval_steps
from scaling.sharding import state_shardings
from scaling.workdir import differing_fields, read_json, write_json_atomic

Params = dict[str, Any]
COMPILATION_CACHE = "xla_cache"


def use_compilation_cache(data_config: ml_collections.ConfigDict) -> None:
    """Points JAX's persistent compilation cache at ``xla_cache`` beside the data directory, unless the
    user chose a cache (``JAX_COMPILATION_CACHE_DIR``): steps and evaluations of equal shape then compile
    once, ever. Every program is kept, however fast it compiled: an evaluation is many small ones (the
    probe's solver, few-shot, feature passes), and compiling them again cost each run's first evaluation
    seconds."""
    if not jax.config.jax_compilation_cache_dir:
        cache = resolve_data_dir(data_config).parent / COMPILATION_CACHE
        jax.config.update("jax_compilation_cache_dir", str(cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be saved or restored."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files fail their checksums or cannot be read."""

    def __init__(self, step: int, reason: str, message: str):
        super().__init__(message)
        self.step, self.reason = step, reason


@dataclasses.dataclass
class ModelState:
    """The model of a run, without values: what its parameters are, where they live, how to use them."""

    objective: Objective
    mesh: Mesh
    graphdef: nnx.GraphDef
    abstract_params: Params  # ShapeDtypeStructs carrying each parameter's sharding
    param_shardings: Params
    lr_scales: Params  # each parameter's learning-rate factor (scaling.models.parametrization)

    def model(self, params: Params) -> nnx.Module:
        """The objective's model holding ``params``."""
        return nnx.merge(self.graphdef, params)

    def init_params(self, seed: int) -> Params:
        """Freshly initialised parameters of the model, as a pure dict (jit-able, no shardings imposed)."""
        return nnx.to_pure_dict(nnx.state(self.objective.init(nnx.Rngs(seed))))


def build_model_state(
    config: ml_collections.ConfigDict, mesh: Mesh, objective: Objective | None = None
) -> ModelState:
    """The model state of ``config`` on ``mesh``; ``objective`` defaults to the registered one that
    ``config.objective`` names. Prepares the objective (its optional ``prepare``) before tracing it."""
    objective = objective or build_objective(config)
    if isinstance(objective, Prepared):
        objective.prepare()
    abstract_model = nnx.eval_shape(lambda: objective.init(nnx.Rngs(config.seed)))
    graphdef, abstract_state = nnx.split(abstract_model)
    param_shardings = nnx.to_pure_dict(state_shardings(abstract_state, mesh))
    abstract_params = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        nnx.to_pure_dict(abstract_state), param_shardings,
    )
    lr_scales = nnx.to_pure_dict(jax.tree.map(lambda variable: variable.get_metadata().get("lr_scale", 1.0),
                                              abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    return ModelState(objective, mesh, graphdef, abstract_params, param_shardings, lr_scales)


def _restore_target(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


CHECKSUMS = "checksums.json"


def checksums(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file of a saved checkpoint step, by path relative to it (the manifest aside)."""
    return {
        path.relative_to(step_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(step_dir.rglob("*")) if path.is_file() and path.name != CHECKSUMS
    }


def damage(step_dir: Path) -> str | None:
    """What is wrong with a checkpoint step's files against its manifest, or None when nothing is. A step
    without a manifest (killed between orbax's commit and the manifest) is vouched for by the commit alone."""
    try:
        expected = read_json(step_dir / CHECKSUMS)
    except ValueError:
        return f"its {CHECKSUMS} does not parse"
    if expected is None:
        return None
    found = checksums(step_dir)
    differ = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
    return f"{len(differ)} file(s) fail their checksums, e.g. {differ[0]}" if differ else None


def _options(config: ml_collections.ConfigDict | None) -> ocp.CheckpointManagerOptions:
    """Saves are synchronous: a step is committed, and its manifest written, before training goes on, so
    a failed save stops the run at once. Without a config the manager only reads."""
    if config is None:
        return ocp.CheckpointManagerOptions(create=False)
    kept = preservation.LatestN(config.keep_checkpoints)
    if config.keep_eval_checkpoints:
        kept = preservation.AnyPreservationPolicy([kept, preservation.CustomSteps(eval_steps(config))])
    return ocp.CheckpointManagerOptions(preservation_policy=kept, cleanup_tmp_directories=True, create=True,
                                        enable_async_checkpointing=False)


def recorded_config(directory: Path) -> dict[str, Any] | None:
    """The config stored with the latest checkpoint in ``directory``; None without one (or unreadable)."""
    if not directory.is_dir():
        return None
    manager = ocp.CheckpointManager(directory.absolute(), options=_options(None))
    try:
        step = manager.latest_step()
        return None if step is None else manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore())).config
    except Exception:  # noqa: BLE001  damaged: the restore that follows finds and reports it
        return None
    finally:
        manager.close()


class Checkpoints:
    """Orbax checkpoints of params, optimizer state, data-iterator state, progress and config, each step
    with a manifest of its files' checksums, checked on restore. Without a config they are only read."""

    def __init__(self, directory: Path, config: ml_collections.ConfigDict | None = None):
        self.directory = directory.absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=_options(config))
        self.config_json = None if config is None else json.loads(config.to_json())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params, opt_state, data_state, progress: dict[str, Any]) -> None:
        """Saves and commits the step and its manifest; a failure (a full disk) is a CheckpointError."""
        step_dir = self.directory / str(step)
        items = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            data=ocp.args.JsonSave(data_state),
            progress=ocp.args.JsonSave(progress),
            config=ocp.args.JsonSave(self.config_json),
        )
        try:
            with quiet_orbax():
                self.manager.save(step, args=items)
            write_json_atomic(step_dir / CHECKSUMS, checksums(step_dir))
        except Exception as error:  # orbax and tensorstore raise many types for a failed write
            logging.set_verbosity(logging.FATAL)  # the run ends here; orbax's threads log it as they stop
            free = shutil.disk_usage(self.directory).free / 2**30
            raise CheckpointError(
                f"the checkpoint of step {step} could not be written to {self.directory} "
                f"({_first_line(error)}); {free:.2f} GiB free there: free space, then rerun the same "
                "command to resume from the last checkpoint written"
            ) from None

    def restore_latest(self, params, opt_state):
        """Restores the newest checkpoint that is whole, as (params, opt, data, progress), None when there
        is none. Damaged newer steps are moved aside (``<step>.damaged``), one warning line each."""
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(step, params, opt_state)
            except DamagedCheckpointError as error:
                damaged.append(error)
                continue
            for error in damaged:
                aside = self._set_aside(error.step)
                warn(f"checkpoint {error.step} is damaged ({error.reason}); moved to {aside}, resuming from "
                     f"step {step}")
            return restored
        if damaged:
            raise damaged[0]
        return None

    def restore(self, step: int, params, opt_state):
        """Restores into the shardings of ``params``/``opt_state``; returns (params, opt, data, progress).
        Refuses a checkpoint of another config (ConfigError) or a damaged one (DamagedCheckpointError)."""
        stored = self._restore(step, config=ocp.args.JsonRestore()).config
        changed = differing_fields(stored, self.config_json)
        if changed:
            raise ConfigError(f"checkpoint {self.directory / str(step)} was saved by a run of a different "
                              f"config (fields {', '.join(changed)}); rerun with that config, or use a "
                              "new --workdir")
        restored = self._restore(
            step,
            params=ocp.args.StandardRestore(_restore_target(params)),
            opt_state=ocp.args.StandardRestore(_restore_target(opt_state)),
            data=ocp.args.JsonRestore(),
            progress=ocp.args.JsonRestore(),
        )
        return restored.params, restored.opt_state, restored.data, restored.progress

    def restore_params(self, step: int, params):
        """Only the parameters (for evaluation), into the shardings of ``params``."""
        restored = self._restore(step, params=ocp.args.StandardRestore(_restore_target(params)))
        return restored.params

    def _restore(self, step: int, **items):
        step_dir = self.directory / str(step)
        reason = damage(step_dir)
        if reason is None:
            try:
                with quiet_orbax():
                    return self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as error:  # noqa: BLE001  orbax raises many types for damaged files
                reason = _first_line(error)
        raise DamagedCheckpointError(step, reason, f"checkpoint {step_dir} cannot be restored ({reason}); "
                                     "move that step's folder aside to resume from an earlier checkpoint, "
                                     "or use a new --workdir")

    def _set_aside(self, step: int) -> Path:
        aside = self.directory / f"{step}.damaged"
        if jax.process_index() == 0:  # the one writer; the other hosts found the same damage
            (self.directory / str(step)).rename(aside)
        self.manager.reload()
        return aside

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


@contextlib.contextmanager
def quiet_orbax():
    """Orbax logs a failed read or write from its own threads as well as raising it; the raised error,
    which becomes the one line the user sees, is enough."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.FATAL)
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _first_line(error: BaseException, limit: int = 300) -> str:
    """The error's first line, its middle cut out when it is longer than ``limit``."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= limit else f"{line[:limit // 2]} ... {line[-limit // 2:]}"
