"""The TPU catalogue: chip generations (HBM, peak FLOP/s, cores, chips per host), slice names, chip grids and
hosts, and the
compile-only devices of a topology (``jax.experimental.topologies``, with libtpu on a CPU host)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax

from scaling.errors import ConfigError

GIB = 2**30
INSTALL_HINT = 'pip install -e ".[tpu]"'


class PlanError(ConfigError):
    """A topology, mesh or environment the planner cannot work with; the message says the fix."""


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: HBM per chip, peak bfloat16 FLOP/s per chip, TensorCores per chip, and the most
    chips of a single-host slice (a larger slice has HOST_CHIPS per host)."""

    hbm_bytes: int
    peak_flops: float
    cores_per_chip: int  # slice names such as v5p-64 count TensorCores: 2 per chip on v4 and v5p
    dims: int  # torus dimensions of its topology names (v5p:4x4x4, v5e:4x4)
    single_host_chips: int  # v5e-8 and v6e-8 are one host of 8 chips; v4-8 and v5p-8 one of 4


HOST_CHIPS = 4  # chips per host of a multi-host slice, every generation here
CHIPS: dict[str, Chip] = {
    "v4": Chip(32 * GIB, 275e12, 2, 3, 4),
    "v5e": Chip(16 * GIB, 197e12, 1, 2, 8),
    "v5p": Chip(95 * GIB, 459e12, 2, 3, 4),
    "v6e": Chip(32 * GIB, 918e12, 1, 2, 8),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice: generation and chip grid, e.g. ``v5p`` 4x4x2 for the slice name ``v5p-64``."""

    generation: str
    grid: tuple[int, ...]

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(self.grid)

    @property
    def hosts(self) -> int:
        """TPU VM hosts of the slice, each feeding its own chips' share of the batch."""
        return 1 if self.chips <= self.chip.single_host_chips else self.chips // HOST_CHIPS

    @property
    def name(self) -> str:
        """The slice name, as gcloud spells it (v5p-64: 32 chips of 2 TensorCores)."""
        return f"{self.generation}-{self.chips * self.chip.cores_per_chip}"

    @property
    def topology_name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.grid))}"


def _chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The most cube-like power-of-two grid of ``chips`` chips: v5p 32 -> 2x4x4, v5e 8 -> 2x4; sides of 1
    go last (v5p 4 -> 2x2x1), as TPU topology names write them."""
    grid = [1] * dims
    for _ in range(chips.bit_length() - 1):
        grid[grid.index(min(grid))] *= 2
    return tuple(sorted(grid, key=lambda side: (side == 1, side)))


def parse_topology(text: str) -> Topology:
    """``v5p-64`` (slice name: TensorCores for v4/v5p, chips for v5e/v6e) or ``v5p:4x4x2`` (chip grid)."""
    known = ", ".join(CHIPS)
    match = re.fullmatch(r"([a-z0-9]+)(?:-(\d+)|:(\d+(?:x\d+)+))", text.strip())
    generation = ALIASES.get(match.group(1), match.group(1)) if match else None
    if generation not in CHIPS:
        raise PlanError(
            f"--topology: {text!r} is not a TPU slice; give <generation>-<cores> such as v5p-64 or a "
            f"chip grid such as v5p:4x4x2, with generation one of {known}"
        )
    chip = CHIPS[generation]
    if match.group(3):
        grid = tuple(int(side) for side in match.group(3).split("x"))
        if len(grid) != chip.dims:
            raise PlanError(f"--topology: {generation} grids have {chip.dims} sides, got {text!r}")
        return Topology(generation, grid)
    cores = int(match.group(2))
    chips, rest = divmod(cores, chip.cores_per_chip)
    if rest or chips < 1 or chips & (chips - 1):
        raise PlanError(
            f"--topology: {text!r} has no slice shape; {generation}-N takes N = "
            f"{chip.cores_per_chip} x a power of two chips (e.g. {generation}-{8 * chip.cores_per_chip})"
        )
    return Topology(generation, _chip_grid(chips, chip.dims))


def topology_devices(topology: Topology) -> list[jax.Device]:
    """Compile-only devices of the slice (needs libtpu, not a TPU)."""
    if importlib.util.find_spec("libtpu") is None:
        raise PlanError(f"planning for TPU needs libtpu; install it with {INSTALL_HINT}")
    from jax.experimental import topologies

    # Compiling touches no chip, so planners may run side by side (libtpu otherwise locks the host).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=topology.topology_name
        )
    except Exception as error:  # libtpu raises RuntimeError/XlaRuntimeError with its own message
        raise PlanError(f"--topology: libtpu cannot describe {topology.topology_name} ({error})") from None
    return list(description.devices)
