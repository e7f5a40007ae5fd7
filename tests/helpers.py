"""Test helpers shared by every test file: experiment configs, random batches, the ``scaling`` command in
this process, folders built once per session for all xdist workers, the real trainer pieces on a chosen
mesh, and the matmul operand dtypes of a traced function."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from scaling import cli
from scaling.config import load_config_file
from scaling.data.batch import synthetic_batch
from scaling.data.captions import TEMPLATES
from scaling.data.tokenizer import get_tokenizer
from scaling.flops import xla_flops
from scaling.schedule import learning_rates
from scaling.step import build_training

ROOT = Path(__file__).resolve().parents[1]


def load_experiment(objective: str, arg: str = "size=mu"):
    """``experiments/<objective>.py``'s get_config(arg), as the CLI would load it."""
    return load_config_file(ROOT / "experiments" / f"{objective}.py", arg)


def tiny_experiment(data_dir: str, objective: str = "clip", **overrides):
    """A test-sized config of ``objective`` on the small scenes set in ``data_dir``, with ``overrides``
    ({"section.field": value})."""
    config = load_experiment(objective)
    config.data.name, config.data.data_dir = "scenes/32_small", data_dir
    config.batch_size, config.total_steps = 16, 20
    config.checkpoint_every, config.log_every = 10, 5
    config.optim.warmup_steps = 2
    config.eval.update(num_points=1, batch_size=128, probe_train_examples=400,
                       probe_test_examples=200, val_batches=1)
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


def scaling(*args: str) -> int:
    """The exit status of ``scaling <args>`` run in this process (what it prints goes to capsys)."""
    saved, sys.argv = (sys.argv, signal.getsignal(signal.SIGTERM)), ["scaling", *map(str, args)]
    try:
        cli.main()
    except SystemExit as exit:
        return exit.code or 0
    finally:  # `scaling sweep` turns SIGTERM into an interrupt
        sys.argv = saved[0]
        signal.signal(signal.SIGTERM, saved[1])
    raise AssertionError("scaling returned without exiting")


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``<session temp>/<name>``, made by ``build(path)`` in the first xdist worker that asks for it (the
    others wait for it), or in this process without xdist."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kill_when_held(marker: Path, step: int, *args: str, timeout_s: float = 300) -> str:
    """Runs ``scaling <args>`` in a child process held at ``step`` of a run (see killable.py), SIGKILLs it
    there and returns what it printed."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "killable.py"), str(marker), str(step),
                             *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    held = marker.exists() and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    output = proc.communicate()[0].decode()
    assert held, f"the run was not held at step {step}:\n{output[-3000:]}"
    return output


def record_figures(monkeypatch, render: bool = True) -> dict[str, Figure]:
    """{file stem: figure} of every figure scaling.analysis saves from now on, still written to disk unless
    ``render`` is off (then no file: rendering is most of an analysis' time, and a test of its text needs
    none)."""
    from scaling.analysis import caption_detail, figures

    drawn, save = {}, figures.save

    def record(figure, stem):
        drawn[Path(stem).name] = figure
        return save(figure, stem)

    for module in (figures, caption_detail):
        monkeypatch.setattr(module, "save", record)
    if not render:
        monkeypatch.setattr(Figure, "savefig", lambda figure, path, **options: None)
    return drawn


def random_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the shape the pipeline yields, with random content."""
    return synthetic_batch(config.data, batch_size, seed)


def tiny_fields(data_dir: str, **more) -> dict:
    """Sweep fields of test-sized runs on the small scenes set at 16 pixels: the train step of the session's
    tiny sweep, so each test's sweep finds it in the compilation cache."""
    return {"data.name": "scenes/32_small", "data.data_dir": data_dir, "data.image_size": 16,
            "batch_size": 16, "checkpoint_every": 10, "log_every": 5, "optim.warmup_steps": 2,
            "eval.num_points": 0, **more}


def matmul_dtypes(fn, *args) -> list[tuple[str, str, str]]:
    """(lhs, rhs, result) dtype names of every dot_general in ``fn``'s jaxpr, nested jaxprs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(tuple(str(var.aval.dtype) for var in (*eqn.invars, *eqn.outvars)))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def init_params(state, seed: int):
    """The initial parameters of ``state``'s model, in their shardings, without any optimizer state."""
    return jax.jit(state.init_params, static_argnums=0, out_shardings=state.param_shardings)(seed)


def run_steps(config, batch, devices, mesh_axes: dict, steps: int):
    """The first loss and gradients on one fixed batch, the losses of ``steps`` train steps on it, the
    final parameters and (with steps) optimizer state, and the model state that reads them. Without
    steps the loss and gradients come from ``value_and_grad``; with steps, from the first step itself (one
    compiled program, not two): its loss, and its gradients as AdamW took them (the first moment after one
    step: (1 - b1) times the clipped gradients)."""
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_axes)
    training = build_training(config, devices=devices)
    with jax.set_mesh(training.mesh):
        global_batch = training.shard(batch)
        if not steps:  # no optimizer state to initialise
            state, rng = training.state, first_step_rng(config)
            params = init_params(state, config.seed)
            loss_fn = lambda p: state.objective.loss(state.model(p), global_batch, rng)[0]
            first_loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
            return {"first_loss": float(first_loss), "grads": jax.device_get(grads), "losses": [],
                    "params": params, "state": state}
        params, opt_state = training.init(config.seed)
        rates = learning_rates(config.optim, config.total_steps, config.batch_size)
        losses = []
        for step in range(steps):
            params, opt_state, metrics = training.step(params, opt_state, global_batch, jnp.int32(step),
                                                       rates[step])
            losses.append(float(metrics["loss"]))
            if step == 0:
                grads = jax.device_get(optax.tree.get(opt_state, "mu"))
        return {"first_loss": losses[0], "grads": grads, "losses": losses, "params": params,
                "opt_state": opt_state, "state": training.state}


SHAPES = ("circle", "square", "triangle", "star")


def shape_caption_batch(config) -> dict[str, np.ndarray]:
    """16 random images, image i labelled i % 4 and captioned "a <SHAPES[i % 4]>"."""
    batch = random_batch(config, 16)
    labels_B = np.arange(16) % len(SHAPES)
    captions = [TEMPLATES[0].format(SHAPES[label]) for label in labels_B]
    tokens, mask = get_tokenizer(config.data.tokenizer).encode_batch(captions, config.data.max_caption_len)
    batch.update(label=labels_B.astype(np.int32), caption_tokens=np.asarray(tokens, np.int32),
                 caption_mask=np.asarray(mask, np.int32))
    return batch


def overfit(config, batch, steps: int) -> dict:
    """``run_steps`` on one device of ``steps`` steps on ``batch``, which it holds too."""
    return {**run_steps(config, batch, jax.devices()[:1], ONE_DEVICE, steps), "batch": batch}


def first_step_rng(config) -> jax.Array:
    """The random key of a run's first train step (its dropout, noise and timesteps)."""
    return jax.random.fold_in(jax.random.key(config.seed), 0)


def step_flops(config, batch_size: int) -> tuple[float, float]:
    """(analytic, XLA cost analysis) training FLOPs of one compiled train step."""
    config.batch_size = batch_size
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1})
    training = build_training(config, devices=jax.devices()[:1])
    with jax.set_mesh(training.mesh):
        measured = xla_flops(training.step, *training.abstract_args())
    return training.state.objective.train_flops_per_example() * batch_size, measured


ONE_DEVICE = {"data": 1, "fsdp": 1, "tensor": 1}
EIGHT_DEVICES = {"data": 2, "fsdp": 2, "tensor": 2}


def assert_meshes_agree(config, batch, steps: int):
    """Runs on 1 device and on a 2x2x2 mesh of 8; asserts the first loss and gradients agree to 1e-5
    and the step losses to 1e-3 (relative); returns the 8-device run for sharding checks."""
    one = run_steps(config, batch, jax.devices()[:1], ONE_DEVICE, steps)
    eight = run_steps(config, batch, jax.devices(), EIGHT_DEVICES, steps)
    assert abs(eight["first_loss"] - one["first_loss"]) <= 1e-5 * abs(one["first_loss"])
    g1 = np.concatenate([g.ravel() for g in jax.tree.leaves(one["grads"])])
    g8 = np.concatenate([g.ravel() for g in jax.tree.leaves(eight["grads"])])
    assert np.linalg.norm(g8 - g1) <= 1e-5 * np.linalg.norm(g1)
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-3)
    return one, eight
