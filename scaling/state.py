"""Model state: a run's objective, model graph, abstract parameters and their shardings; and checkpoints.

``ModelState`` is what every user of a model needs and nothing more: the trainer adds its optimizer on
top, ``scaling probe`` restores parameters into it, the planner lowers steps against its abstract
parameters. ``build_model_state`` prepares the objective first (the one step that may read data:
iGPT's palette, a class count from data-set metadata); building the objective itself reads nothing.

``Checkpoints`` are a run's orbax checkpoints (params, optimizer state, data-iterator state, progress,
config); ``restore_params`` reads the parameters alone, so evaluation never builds an optimizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from scaling.errors import UserError
from scaling.objectives import build_objective
from scaling.objectives.base import Objective, Prepared
from scaling.sharding import state_shardings

Params = dict[str, Any]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be restored."""


@dataclasses.dataclass
class ModelState:
    """The model of a run, without values: what its parameters are, where they live, how to use them."""

    objective: Objective
    mesh: Mesh
    graphdef: nnx.GraphDef
    abstract_params: Params  # ShapeDtypeStructs carrying each parameter's sharding
    param_shardings: Params

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
    return ModelState(objective, mesh, graphdef, abstract_params, param_shardings)


def _restore_target(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpoints:
    """Orbax checkpoints of params, optimizer state, data-iterator state, progress and config."""

    def __init__(self, directory: Path, config: ml_collections.ConfigDict):
        self.manager = ocp.CheckpointManager(
            directory.absolute(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=config.keep_checkpoints, cleanup_tmp_directories=True, create=True
            ),
        )
        self.config_json = json.loads(config.to_json())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, data_state, progress: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                data=ocp.args.JsonSave(data_state),
                progress=ocp.args.JsonSave(progress),
                config=ocp.args.JsonSave(self.config_json),
            ),
        )

    def restore(self, step: int, params, opt_state):
        """Restores into the shardings of ``params``/``opt_state``; returns (params, opt, data, progress)."""
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
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax raises many types for damaged files
            raise CheckpointError(
                f"checkpoint {self.manager.directory / str(step)} cannot be restored ({error}); "
                "move that step's folder aside to resume from an earlier checkpoint, "
                "or use a new --workdir"
            ) from error

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
