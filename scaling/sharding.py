"""Device mesh construction and the one table mapping logical axis names to mesh axes.

Parameters carry logical names in their ``axes`` metadata, one per kind of dimension: ``embed`` (model
width), ``mlp`` (MLP hidden width), ``heads`` and ``kv`` (attention heads, width per head), ``vocab``
(token or palette entries), ``modulation`` (adaLN shift, scale and gate outputs, model width each) and
``layers`` (the stacked blocks of a scanned transformer); activations and input batches are constrained
with ``batch``, ``length`` and ``embed``. ``RULES`` is the only place that says how those names land on the
``("data", "fsdp", "tensor")`` mesh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes, tried in order. A mesh axis already used by an earlier dimension of the
# same array is skipped, so activations ("batch", "length", "embed") put the batch on data+fsdp and
# leave embed whole, while parameters ("embed", "mlp") put embed on fsdp and mlp on tensor.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("modulation", ("tensor",)),
    ("heads", ("tensor",)),
    ("vocab", ("tensor",)),
    ("kv", ()),
    ("length", ()),
    ("layers", ()),
)
_RULES = dict(RULES)


class MeshError(ValueError):
    """A mesh shape that cannot be built on the available devices."""


def resolve_mesh_shape(requested: dict[str, int], num_devices: int) -> dict[str, int]:
    """Fills a single -1 entry so that the mesh uses every device; checks that the product divides."""
    sizes = {axis: int(requested.get(axis, 1)) for axis in MESH_AXES}
    unknown = [axis for axis, size in sizes.items() if size == -1]
    if len(unknown) > 1:
        raise MeshError(f"mesh: at most one axis may be -1, got {sizes}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise MeshError(f"mesh: axis sizes must be positive or -1, got {sizes}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if unknown:
        if num_devices % known:
            raise MeshError(
                f"mesh: fixed axes {sizes} (product {known}) do not divide the {num_devices} devices; "
                "choose sizes whose product divides the device count"
            )
        sizes[unknown[0]] = num_devices // known
    elif known != num_devices:
        raise MeshError(
            f"mesh: axes {sizes} multiply to {known} but there are {num_devices} devices; "
            "set one axis to -1 to fill the rest"
        )
    return sizes


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the ("data", "fsdp", "tensor") mesh with Auto axis types from a config section."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(dict(mesh_config), len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh_shape: dict[str, int]
) -> PartitionSpec:
    """Maps logical dimension names to a PartitionSpec via RULES.

    A mesh axis is used at most once per array, and only where it divides the dimension, so odd sizes
    (a 259-token vocabulary, a batch of 6) stay whole on that axis instead of failing.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match array rank {len(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape, strict=True):
        if name is not None and name not in _RULES:
            raise ValueError(f"logical axis {name!r} has no rule in scaling.sharding.RULES")
        chosen = []
        extent = 1
        for axis in _RULES.get(name, ()):
            size = mesh_shape.get(axis, 1)
            if axis in used or size == 1 or dim % (extent * size):
                continue
            chosen.append(axis)
            extent *= size
        used.update(chosen)
        spec.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
    return PartitionSpec(*spec)


def traced_platform() -> str:
    """The platform the program being traced is for: the current mesh's (a TPU topology when planning
    from a CPU host), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, dict(mesh.shape)))


def state_shardings(state: nnx.State, mesh: Mesh):
    """NamedShardings for every Variable in a (possibly abstract) state, from its ``axes`` metadata."""

    def sharding_of(variable):
        names = variable.get_metadata().get("axes") or (None,) * variable.get_value().ndim
        return NamedSharding(mesh, logical_to_spec(names, variable.get_value().shape, dict(mesh.shape)))

    return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shards(batch: int) -> int:
    """Into how many parts the current mesh splits a leading batch dimension of ``batch`` rows (1 outside
    a mesh)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    axes = logical_to_spec(("batch",), (batch,), dict(mesh.shape))[0] or ()
    return math.prod(mesh.shape[axis] for axis in ((axes,) if isinstance(axes, str) else axes))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of an input array whose leading dimension is the batch: the ``batch`` rule's mesh axes,
    whatever the batch size (the data pipeline hands each batch shard its rows)."""
    return NamedSharding(mesh, PartitionSpec(_RULES["batch"], *([None] * (ndim - 1))))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays sharded over the batch mesh axes."""
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
        for key, value in batch.items()
    }
