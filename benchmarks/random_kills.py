"""Resume under random kills: a run SIGKILLed or SIGTERMed at random moments until it finishes must end
with parameters identical, bit for bit, to those of the same run left alone.

Trains a tiny CLIP run (scenes 32x32, batch 16) once uninterrupted, then again in a fresh workdir with
``scaling train`` restarted after every kill: each attempt is sent SIGKILL or SIGTERM (chosen at random)
after a random delay, until one exits 0. Prints every attempt (signal, delay, exit status, steps
checkpointed) and compares the final checkpoint's parameters, optimizer state and result.json's
final loss. Too slow for the test suite (a process start and a compile per attempt); run it after
changes to resume, checkpoints or signals:

    python benchmarks/random_kills.py [--steps 40] [--kills 6] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

ROOT = Path(__file__).resolve().parents[1]


def command(workdir: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "scaling.cli", "train", "--config", "experiments/clip.py:size=mu",
            "--workdir", str(workdir), "--config.data.name=scenes/32_small", "--config.batch_size=16",
            f"--config.total_steps={steps}", "--config.checkpoint_every=4", "--config.log_every=2",
            "--config.optim.warmup_steps=2", "--config.eval.num_points=0"]


def final_state(workdir: Path) -> dict[str, np.ndarray]:
    """Every array of the last checkpoint's params and opt_state, by path."""
    step_dir = workdir / "checkpoints" / str(steps_checkpointed(workdir)[-1])
    arrays = {}
    for item in ("params", "opt_state"):
        tree = ocp.PyTreeCheckpointer().restore(step_dir / item)
        for path, leaf in ocp.tree.to_flat_dict(tree, sep="/").items():
            arrays[f"{item}/{path}"] = np.asarray(leaf)
    return arrays


def steps_checkpointed(workdir: Path) -> list[int]:
    folder = workdir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def killed_until_done(workdir: Path, steps: int, kills: int, rng: random.Random, horizon_s: float) -> int:
    """Restarts the run after each of ``kills`` random kills, then lets it finish; returns attempts."""
    for attempt in range(1, kills + 2):
        proc = subprocess.Popen(command(workdir, steps), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if attempt <= kills:
            signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
            delay = rng.uniform(0.0, horizon_s)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signum)
            label = f"{signal.Signals(signum).name} after {delay:5.1f} s"
        else:
            label = "left alone"
        _, err = proc.communicate()
        last = err.strip().splitlines()[-1:] if proc.returncode not in (0, -signal.SIGKILL) else []
        print(f"attempt {attempt}: {label:<22} exit {proc.returncode:>3}  checkpoints "
              f"{steps_checkpointed(workdir)}  {last[0][:120] if last else ''}", flush=True)
        if proc.returncode == 0:
            return attempt
    raise SystemExit(f"the run did not finish after {kills + 1} attempts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="folder for the two workdirs (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="random_kills-"))
    reference, killed = root / "reference", root / "killed"

    start = time.perf_counter()
    subprocess.run(command(reference, args.steps), cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    horizon = time.perf_counter() - start  # kills land anywhere in an uninterrupted run's lifetime
    print(f"uninterrupted run: {horizon:.1f} s; killing at random moments within that")
    killed_until_done(killed, args.steps, args.kills, random.Random(args.seed), horizon)

    want, got = final_state(reference), final_state(killed)
    differ = [name for name in want if not np.array_equal(want[name], got.get(name))]
    losses = [json.loads((d / "result.json").read_text())["final_loss"] for d in (reference, killed)]
    print(f"final loss: uninterrupted {losses[0]!r}, killed {losses[1]!r}")
    print(f"{len(want) - len(differ)}/{len(want)} arrays of params and optimizer state identical"
          + (f"; differ: {differ[:5]}" if differ else ""))
    if differ or losses[0] != losses[1] or set(want) != set(got):
        raise SystemExit(1)


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # where libtpu is installed, the comparison stays on CPU
    main()
