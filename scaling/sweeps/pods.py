"""Commands that run a sweep on a TPU pod slice: gcloud queued resources + TPU VM ssh, or XPK.

Every host of the slice runs the same ``scaling sweep <file> --root R --executor local --distributed``;
that command calls ``jax.distributed.initialize()`` (which finds the other hosts on Cloud TPU), process 0
claims runs and writes, and all hosts train each run together. ``--root`` must be a directory all hosts
share (a Filestore or gcsfuse mount): the store, leases and orbax checkpoints live there.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

from scaling.sweeps.spec import SweepError

POD_EXECUTORS = ("tpu-vm", "xpk")
RUNTIME_VERSIONS = {  # TPU VM software versions by TPU generation
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
SOURCES = ("pyproject.toml", "README.md", "scaling", "experiments", "sweeps", "analysis")
REMOTE_DIR = "visual-scaling"
INSTALL = "pip install -q -e . 'jax[tpu]'"
XPK_BASE_IMAGE = "python:3.11"


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line; with ``until`` it is repeated until its output contains that text."""

    argv: tuple[str, ...]
    until: str | None = None


def render(command: Command) -> str:
    text = shlex.join(command.argv)
    return f"{text}  # repeat until it prints {command.until}" if command.until else text


def pod_name(sweep_name: str) -> str:
    """A TPU / workload name: lowercase letters, digits and '-', at most 40 characters."""
    return re.sub(r"[^a-z0-9-]+", "-", f"sweep-{sweep_name}".lower())[:40].strip("-")


def runtime_version(tpu: str) -> str:
    generation = tpu.rpartition("-")[0]
    if generation not in RUNTIME_VERSIONS:
        raise SweepError(f"--tpu {tpu!r}: unknown TPU type; use <generation>-<chips> with a generation "
                         f"in {sorted(RUNTIME_VERSIONS)}, e.g. v5p-64")
    return RUNTIME_VERSIONS[generation]


def host_command(sweep_path: str, root: str) -> str:
    return shlex.join(["scaling", "sweep", sweep_path, "--root", root, "--executor", "local",
                       "--distributed"])


def _sources(sweep_path: str) -> list[str]:
    inside = PurePath(sweep_path).parts[0] in SOURCES
    return [*SOURCES, *([] if inside else [sweep_path])]


def _shipped_path(sweep_path: str) -> str:
    """The sweep file relative to this directory, which is what the hosts get a copy of."""
    try:
        return Path(sweep_path).resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        raise SweepError(f"{sweep_path}: on a pod the sweep file must be inside the current directory "
                         "(the project root), which is copied to the hosts") from None


def tpu_vm_commands(sweep_path: str, sweep_name: str, tpu: str, zone: str, root: str) -> list[Command]:
    """Queue the slice, wait until it is ACTIVE, copy the code to every host, run the sweep on all."""
    name, zone_flag = pod_name(sweep_name), f"--zone={zone}"
    archive = f"{name}.tar.gz"
    tpus = ("gcloud", "compute", "tpus")
    setup = f"mkdir -p ~/{REMOTE_DIR} && tar xzf ~/{archive} -C ~/{REMOTE_DIR} && cd ~/{REMOTE_DIR}"
    return [
        Command((*tpus, "queued-resources", "create", name, f"--node-id={name}", zone_flag,
                 f"--accelerator-type={tpu}", f"--runtime-version={runtime_version(tpu)}")),
        Command((*tpus, "queued-resources", "describe", name, zone_flag, "--format=value(state.state)"),
                until="ACTIVE"),
        Command(("tar", "czf", f"/tmp/{archive}", *_sources(sweep_path))),
        Command((*tpus, "tpu-vm", "scp", f"/tmp/{archive}", f"{name}:~/", zone_flag, "--worker=all")),
        Command((*tpus, "tpu-vm", "ssh", name, zone_flag, "--worker=all",
                 f"--command={setup} && {INSTALL} && {host_command(sweep_path, root)}")),
    ]


def xpk_commands(sweep_path: str, sweep_name: str, tpu: str, cluster: str, root: str,
                 zone: str | None = None) -> list[Command]:
    """One XPK workload: xpk builds an image from this directory and runs the command on every host."""
    runtime_version(tpu)
    argv = ["xpk", "workload", "create", f"--cluster={cluster}", f"--workload={pod_name(sweep_name)}",
            f"--tpu-type={tpu}", "--num-slices=1", f"--base-docker-image={XPK_BASE_IMAGE}",
            "--script-dir=.", f"--command={INSTALL} && {host_command(sweep_path, root)}"]
    return [Command((*argv, *([f"--zone={zone}"] if zone else [])))]


def commands(executor: str, sweep_path: str, sweep_name: str, options: Any) -> list[Command]:
    """The commands for ``--executor tpu-vm|xpk`` and the flags in ``options`` (runner.Options)."""
    if not PurePath(options.root).is_absolute():
        raise SweepError(f"--root {options.root!r}: on a pod give an absolute directory that every host "
                         "shares, e.g. a Filestore or gcsfuse mount such as /mnt/runs")
    needed = {"tpu-vm": ("tpu", "zone"), "xpk": ("tpu", "cluster")}[executor]
    missing = [f"--{flag}" for flag in needed if getattr(options, flag) is None]
    if missing:
        raise SweepError(f"--executor {executor} needs {' and '.join(missing)}")
    sweep_path = _shipped_path(sweep_path)
    if executor == "tpu-vm":
        return tpu_vm_commands(sweep_path, sweep_name, options.tpu, options.zone, options.root)
    return xpk_commands(sweep_path, sweep_name, options.tpu, options.cluster, options.root, options.zone)


def launch(steps: list[Command], out: Callable[[str], None] = print, poll_s: float = 30.0,
           timeout_s: float = 24 * 3600) -> None:
    """Runs the commands in order, waiting where a command has ``until``."""
    for command in steps:
        out(f"$ {render(command)}")
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                proc = subprocess.run(command.argv, check=True, text=True,
                                      capture_output=command.until is not None)
            except (OSError, subprocess.CalledProcessError) as error:
                raise SweepError(f"launch stopped: {shlex.join(command.argv)} failed ({error})") from None
            if command.until is None or command.until in proc.stdout:
                break
            if time.monotonic() > deadline:
                raise SweepError(f"launch stopped: {render(command)}: not after {timeout_s} s")
            time.sleep(poll_s)
