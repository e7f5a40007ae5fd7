"""Bad input to the ``scaling`` command, as a new user would give it, and bad luck, as a cluster deals it.

Every bad-input case must end in one ``error:`` line that names the field or file and the fix, with exit
status 2 (1 for a diverged run), nothing else on stderr (no traceback, no line from a library), and every
file and folder already there (the shared run's checkpoints and metrics, the case's own files) left as it
was, with none added. Bad luck that can be worked around (a damaged checkpoint, a corrupt metrics line)
ends in exit 0 and one ``warning:`` line. Cases call ``scaling.cli.main`` in this process (a subprocess adds
only the jax import); the real command runs where the terminal itself is the point.
"""

import dataclasses
import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, built_once, scaling

from scaling.data import cifar10_jpeg
from scaling.sweeps.spec import load_sweep

CLIP = "experiments/clip.py:size=mu"
RUN = "{world}/run"
TINY = ["--config.data.name=scenes/32_small", "--config.data.data_dir={data_dir}", "--config.batch_size=16",
        "--config.total_steps=4", "--config.checkpoint_every=2", "--config.log_every=2",
        "--config.optim.warmup_steps=1", "--config.eval.num_points=0", "--config.eval.batch_size=16"]
NEW_RUN = ["train", "--config", CLIP, "--workdir", "{tmp}/new", *TINY]
SWEEP_FILE = "from scaling.sweeps.spec import Budget, Sweep, grid, log_grid\n"
ONE_RUN_SWEEP = ('def get_sweep():\n    return Sweep("one", grid(["clip"], ["mu"], [Budget.steps(4)], '
                 'fields={fields}))\n')
DUPLICATE_SWEEP = ('def get_sweep():\n    runs = grid(["clip"], ["mu"], [Budget.steps(4)], fields={fields})\n'
                   '    return Sweep("twice", runs + runs)\n')


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a case runs: its own folder, the shared run's folder and the scenes data directory."""

    tmp: Path
    world: Path
    data_dir: str

    def fill(self, args: list[str]) -> list[str]:
        return [arg.format(tmp=self.tmp, world=self.world, data_dir=self.data_dir) for arg in args]


def snapshot(*roots) -> dict[str, str]:
    """Every file (by content) and folder under ``roots``, but the folders a data set build (asked for
    with ``--config.data.data_dir={tmp}/tfds``) leaves."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
            for root in roots for path in sorted(root.rglob("*"))
            if path.is_file() or "tfds" not in path.relative_to(root).parts}


def stderr_lines(err: str) -> list[str]:
    """The lines of stderr, less the training progress bar's."""
    return [line for line in err.splitlines() if line.strip() and not ("%|" in line and "step" in line)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir):
    """A folder holding one finished tiny CLIP run, trained through the command itself once per session (by
    one xdist worker)."""

    def build(world: Path) -> None:
        argv = Place(world, world, data_dir).fill(["train", "--config", CLIP, "--workdir", RUN, *TINY])
        code = scaling(*argv)
        assert code == 0 and json.loads((world / "run" / "result.json").read_text())["step"] == 4

    return built_once(tmp_path_factory, "world", build)


def unfinished_copy(place: Place, name: str = "copy") -> Path:
    """A copy of the shared run as if killed after its last checkpoint, before result.json."""
    copy = place.tmp / name
    shutil.copytree(place.world / "run", copy)
    (copy / "result.json").unlink()
    return copy


def damage_file(path: Path, offset: int = 100, length: int = 64) -> None:
    """Flips ``length`` bytes of ``path`` from ``offset`` on."""
    data = bytearray(path.read_bytes())
    data[offset:offset + length] = bytes(b ^ 0xFF for b in data[offset:offset + length])
    path.write_bytes(bytes(data))


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def config_json_deleted(place: Place, monkeypatch):
    (unfinished_copy(place) / "config.json").unlink()


def config_json_edited(place: Place, monkeypatch):
    path = unfinished_copy(place) / "config.json"
    config = json.loads(path.read_text())
    config["optim"]["learning_rate"] = 0.5
    path.write_text(json.dumps(config))


def config_json_unparsable(place: Place, monkeypatch):
    (unfinished_copy(place) / "config.json").write_text('{"objective": "clip", ')


def no_checkpoints(place: Place, monkeypatch):
    (place.tmp / "copy").mkdir()
    shutil.copy(place.world / "run" / "config.json", place.tmp / "copy")


def truncated_checkpoint(place: Place, monkeypatch):
    """The latest checkpoint's largest file cut in half, with no manifest (as an older run saved it)."""
    latest = unfinished_copy(place) / "checkpoints" / "4"
    (latest / "checksums.json").unlink()
    path = largest_file(latest / "params")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def missing_orbax_manifest(place: Place, monkeypatch):
    latest = unfinished_copy(place) / "checkpoints" / "4"
    (latest / "checksums.json").unlink()
    (latest / "params" / "manifest.ocdbt").unlink()


def results_csv(text: str):
    def make(place: Place, monkeypatch):
        (place.tmp / "sweeps").mkdir()
        (place.tmp / "sweeps" / "results.csv").write_text(text)

    return make


def finished_sweep_run_of_another_config(place: Place, monkeypatch):
    """The sweep file's run, recorded as completed by a run whose config.json has another learning rate."""
    sweep_file(ONE_RUN_SWEEP)(place, monkeypatch)
    run = load_sweep(place.tmp / "sweep.py").runs[0]
    run_dir = place.tmp / "sweeps" / "one" / run.run_id
    config = json.loads(run.config.to_json())
    config["optim"]["learning_rate"] = 0.5
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "result.json").write_text(json.dumps({"status": "completed", "step": 4}))


def unreadable_cifar(place: Place, monkeypatch):
    folder = place.tmp / "cifar"
    folder.mkdir()
    for split in cifar10_jpeg.SPLITS:
        (folder / cifar10_jpeg.tarball_name(split)).write_bytes(b"not a tarball")
    monkeypatch.setenv(cifar10_jpeg.ENV_VAR, str(folder))


def empty_cifar(place: Place, monkeypatch):
    (place.tmp / "cifar").mkdir()
    monkeypatch.setenv(cifar10_jpeg.ENV_VAR, str(place.tmp / "cifar"))


def absent_cifar(place: Place, monkeypatch):
    monkeypatch.setenv(cifar10_jpeg.ENV_VAR, str(place.tmp / "absent"))


def sweep_file(body: str):
    """A sweep definition; ``{fields}`` in ``body`` becomes fields that point at the scenes data."""
    fields = {"data.name": "scenes/32_small", "data.data_dir": "{data_dir}", "batch_size": 16,
              "optim.warmup_steps": 1, "checkpoint_every": 2, "log_every": 2, "eval.num_points": 0}

    def make(place: Place, monkeypatch):
        text = SWEEP_FILE + body.replace("{fields}", repr(fields).replace("{data_dir}", place.data_dir))
        (place.tmp / "sweep.py").write_text(text)

    return make


def a_file(place: Place, monkeypatch):
    (place.tmp / "a_file").write_text("notes\n")


CIFAR = [*NEW_RUN, "--config.data.name=cifar10_jpeg", "--config.data.data_dir={tmp}/tfds"]
PROBE = ["probe", "--workdir", RUN, "--max-train=64", "--max-test=32"]
SWEEP = ["sweep", "{tmp}/sweep.py", "--root", "{tmp}/sweeps"]
COPY = ["train", "--config", CLIP, "--workdir", "{tmp}/copy", *TINY]
LR_HALF = "--config.optim.learning_rate=0.5"

# (case, prepare(place, monkeypatch) or None, argv, exit status, what the message must say)
CASES = [
    ("unknown size", None, ["train", "--config", "experiments/clip.py:size=huge", "--workdir", "{tmp}/w"],
     2, ["size: unknown 'huge'", "choose one of"]),
    ("unknown config argument", None, ["train", "--config", f"{CLIP},width=3", "--workdir", "{tmp}/w"],
     2, ["['width']", "--config.<field>=<value>"]),
    ("missing config file", None,
     ["train", "--config", "experiments/nope.py:size=mu", "--workdir", "{tmp}/w"],
     2, ["experiments/nope.py does not exist", "experiments/clip.py", "experiments/igpt.py"]),
    ("unknown field", None, [*NEW_RUN, "--config.foo=1"],
     2, ["config field foo does not exist; the fields are", "batch_size", "the sections", "optim"]),
    ("misspelt field", None, [*NEW_RUN, "--config.optim.learning_rat=0.1"],
     2, ["optim.learning_rat does not exist", "did you mean optim.learning_rate?"]),
    ("field in the wrong section", None, [*NEW_RUN, "--config.learning_rate=0.1"],
     2, ["did you mean optim.learning_rate?"]),
    ("value of the wrong type", None, [*NEW_RUN, "--config.total_steps=abc"],
     2, ["--config.total_steps=abc", "takes an integer"]),
    ("a section set as a value", None, [*NEW_RUN, "--config.optim=1"],
     2, ["config field optim is a section; set its fields, e.g. optim.b1=<value>"]),
    ("field without a value", None, [*NEW_RUN, "--config.seed"], 2, ["--config.seed needs a value"]),
    ("unknown objective", None, [*NEW_RUN, "--config.objective=mae"], 2, ["objective: unknown 'mae'"]),
    ("unknown dtype", None, [*NEW_RUN, "--config.model.dtype=float16"], 2, ["model.dtype: 'float16'"]),
    ("patch size", None, [*NEW_RUN, "--config.model.patch_size=5"],
     2, ["model.patch_size: 5 does not divide data.image_size 32"]),
    ("missing captions", None, [*NEW_RUN, "--config.data.caption_level=none"],
     2, ["data.caption_level: CLIP needs captions"]),
    ("caption mix", None, [*NEW_RUN, "--config.data.caption_mix=descriptive:0.9,short:0.05"],
     2, ["data.caption_mix: proportions of 'descriptive:0.9,short:0.05' sum to 0.95, not 1"]),
    ("unknown transform", None, [*NEW_RUN, "--config.data.train_transform=inception_crop(32)|flop"],
     2, ["data.train_transform: unknown op 'flop' in 'inception_crop(32)|flop'; the ops are"]),
    ("caption field", None, [*NEW_RUN, "--config.data.caption_field=caption"],
     2, ["data.caption_field: 'caption' needs data.max_caption_len"]),
    ("mesh", None, [*NEW_RUN, "--config.mesh.data=3"], 2, ["multiply to 3 but there are 1 device"]),
    ("warmup", None, [*NEW_RUN, "--config.optim.warmup_steps=100"],
     2, ["optim.warmup_steps: 100 must be below total_steps (4)"]),
    ("zero steps", None, [*NEW_RUN, "--config.total_steps=0"], 2, ["total_steps: must be positive"]),
    ("missing --workdir", None, ["train", "--config", CLIP], 2, ["--config and --workdir are required"]),
    ("flag value absl rejects", None, [*PROBE, "--max-train=many"],
     2, ["--max-train=many", "usage: scaling probe"]),
    ("workdir is a file", a_file, [*NEW_RUN[:4], "{tmp}/a_file", *TINY],
     2, ["a_file is a file, but a workdir must be a folder"]),
    ("changed config in a finished run's workdir", None,
     ["train", "--config", CLIP, "--workdir", RUN, *TINY, "--config.optim.learning_rate=0.01"],
     2, ["holds a run with a different config (fields optim.learning_rate differ from config.json)",
         "use a new --workdir"]),
    ("unknown evaluation", None, [*NEW_RUN, "--config.eval.evals=('linear_probe', 'knn')"],
     2, ["eval.evals: ['knn'] not registered; choose among", "'linear_probe'", "'zero_shot'"]),
    ("unknown data set", None, [*NEW_RUN, "--config.data.name=nonexistent_ds"],
     2, ["no data set 'nonexistent_ds'", "scenes, digits, cifar10_jpeg", "tfds build NAME --data_dir=",
         "data.data_dir"]),
    ("TFDS data set not prepared", None, [*NEW_RUN, "--config.data.name=cifar100",
                                          "--config.data.data_dir={tmp}/tfds"],
     2, ["'cifar100' is not prepared", "tfds build cifar100 --data_dir=",
         "scaling data import SHARDS --name cifar100"]),
    ("training label the data set lacks", None, [*NEW_RUN, "--config.data.label=species"],
     2, ["label 'species' is not a feature", "color, count", "data.label"]),
    ("evaluation label the data set lacks", None,
     [*NEW_RUN, "--config.eval.num_points=1", "--config.eval.label=species"],
     2, ["label 'species' is not a feature", "eval.label"]),
    ("empty CIFAR folder", empty_cifar, CIFAR,
     2, ["CIFAR-10 JPEG tarballs missing from", "cifar10-jpeg-train.tar.gz", cifar10_jpeg.ENV_VAR]),
    ("CIFAR folder that does not exist", absent_cifar, CIFAR, 2, ["(no such folder)", cifar10_jpeg.ENV_VAR]),
    ("unreadable CIFAR tarballs", unreadable_cifar, CIFAR,
     2, ["cifar10-jpeg-", "cannot be read", cifar10_jpeg.ENV_VAR]),
    ("probe of a truncated checkpoint", truncated_checkpoint, [*PROBE[:2], "{tmp}/copy"],
     2, ["checkpoints/4 cannot be restored", "move that step's folder aside"]),
    ("probe of a checkpoint without its orbax manifest", missing_orbax_manifest, [*PROBE[:2], "{tmp}/copy"],
     2, ["checkpoints/4 cannot be restored"]),
    ("probe of a workdir without checkpoints", no_checkpoints, [*PROBE[:2], "{tmp}/copy"],
     2, ["copy/checkpoints holds no checkpoint; train the run first"]),
    ("config.json deleted, then another learning rate", config_json_deleted, [*COPY, LR_HALF],
     2, ["holds a run with a different config (fields optim.learning_rate differ from its latest checkpoint)",
         "use a new --workdir"]),
    ("config.json edited to another learning rate", config_json_edited, [*COPY, LR_HALF],
     2, ["(fields optim.learning_rate differ from its latest checkpoint)"]),
    ("config.json that does not parse", config_json_unparsable, COPY,
     2, ["copy/config.json is not a config (", "move it aside to have it rebuilt from the run's latest "
         "checkpoint"]),
    ("probe of a missing workdir", None, ["probe", "--workdir", "{tmp}/absent"],
     2, ["absent has no config.json", "--workdir of a `scaling train` run"]),
    ("probe of a workdir that is a file", a_file, ["probe", "--workdir", "{tmp}/a_file"],
     2, ["a_file is a file, but a workdir must be a folder"]),
    ("probe of an unknown data set", None, [*PROBE, "--dataset=nonexistent_ds"],
     2, ["no data set 'nonexistent_ds'", "tfds build NAME"]),
    ("probe on imagenet2012 not prepared", None, [*PROBE, "--dataset=imagenet2012"],
     2, ["'imagenet2012' is not prepared", "ILSVRC2012_img_train.tar", "downloads/manual, then run"]),
    ("per-class subset larger than a class", None, [*PROBE[:3], "--max-test=32", "--train-per-class=5000"],
     2, ["have fewer than 5000 examples in split 'train'", "ask for at most"]),
    ("per-class subset and --max-train", None, [*PROBE, "--train-per-class=5"],
     2, ["give --max-train or --train-per-class, not both"]),
    ("probe layer that does not exist", None, [*PROBE, "--layers=layer_09"],
     2, ["--layers ['layer_09'] not among ['layer_01', 'layer_02']"]),
    ("missing sweep file", None, SWEEP, 2, ["sweep.py does not exist", "sweeps/quickstart.py"]),
    ("sweep file without get_sweep", sweep_file("X = 1\n"), SWEEP, 2, ["defines no get_sweep()"]),
    ("sweep grid with the same run twice", sweep_file(DUPLICATE_SWEEP), SWEEP,
     2, ["sweep twice: duplicate run ids", "make the grid values unique"]),
    ("sweep field that does not exist", sweep_file(DUPLICATE_SWEEP.replace(
        "fields={fields}", 'fields={"optim.learning_rat": 1.0}')),
     SWEEP, 2, ["optim.learning_rat=1.0 on clip", "did you mean optim.learning_rate?"]),
    ("sweep learning-rate grid of two points", sweep_file(ONE_RUN_SWEEP.replace(
        "fields={fields}", 'fields={fields}, axes={"optim.learning_rate": log_grid(1e-3, points=2)}')),
     SWEEP, 2, ["log_grid(center=0.001, points=2, factor=2.0): a tuning grid needs at least 3 points"]),
    ("sweep file that raises when loaded", sweep_file("1 / 0\n"), SWEEP,
     2, ["sweep.py line 2: ZeroDivisionError: division by zero; fix that file"]),
    ("sweep whose finished run has another config", finished_sweep_run_of_another_config, SWEEP,
     2, ["sweep one:", "holds a run of a different config (fields optim.learning_rate)",
         "move that folder aside"]),
    ("empty results.csv", results_csv(""), ["analyze", "{tmp}/sweeps"],
     2, ["sweeps/results.csv is not a results table (No columns to parse from file)", "delete it"]),
    ("unrelated results.csv", results_csv("a,b\n1,2\n"), ["analyze", "{tmp}/sweeps"],
     2, ["sweeps/results.csv is not a results table (no column run_id, kind, step, total_steps)"]),
    ("unknown TPU type", None, ["sweep", "sweeps/quickstart.py", "--root", "{tmp}/pod", "--executor",
                                "tpu-vm", "--tpu", "v9x-64", "--zone", "us-east5-a"],
     2, ["--tpu 'v9x-64': unknown TPU type", "e.g. v5p-64"]),
    ("no runs at once", None, [*SWEEP[:1], "sweeps/quickstart.py", *SWEEP[2:], "--max-parallel=0"],
     2, ["--max-parallel must be at least 1"]),
    ("diverging run", None, [*NEW_RUN, "--config.optim.learning_rate=1e9", "--config.optim.warmup_steps=0",
                             "--config.optim.grad_clip=1e9", "--config.log_every=1"],
     1, ["the run diverged: loss became", "lower optim.learning_rate"]),
]


@pytest.mark.parametrize("prepare, argv, status, says", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_ends_in_one_line_and_leaves_files_alone(prepare, argv, status, says, world, data_dir,
                                                           tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(ROOT)  # where users run the command; every path it writes to is under tmp_path
    place = Place(tmp_path, world, data_dir)
    if prepare is not None:
        prepare(place, monkeypatch)
    before = snapshot(world, tmp_path)
    code = scaling(*place.fill(argv))
    printed = capfd.readouterr()
    lines = stderr_lines(printed.err)
    assert code == status, printed.err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), printed.err[-3000:]
    for words in says:
        assert words in lines[0], lines[0]
    after = snapshot(world, tmp_path)
    if status == 1:  # a diverged run was asked to train: it adds its files, failure record included
        after = {path: after.get(path) for path in before}
    assert after == before, "a file or folder was written, changed or removed"


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        world, data_dir, tmp_path, monkeypatch, capfd):
    """64 bytes flipped inside the checkpoint resumed from: caught by its checksums, not restored."""
    monkeypatch.chdir(ROOT)
    place = Place(tmp_path, world, data_dir)
    copy = unfinished_copy(place)
    damage_file(largest_file(copy / "checkpoints" / "4" / "params"))
    assert scaling(*place.fill(COPY)) == 0
    lines = stderr_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    warning = lines[0]
    assert warning.startswith("warning: checkpoint 4 is damaged (1 file(s) fail their checksums, e.g. "
                              "params/")
    assert warning.endswith(f"moved to {copy}/checkpoints/4.damaged, resuming from step 2")
    result = json.loads((copy / "result.json").read_text())
    assert result["final_loss"] == json.loads((world / "run" / "result.json").read_text())["final_loss"]
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["2", "4", "4.damaged"]


def test_a_checkpoint_without_a_manifest_that_orbax_cannot_read_is_set_aside_too(
        world, data_dir, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(ROOT)
    place = Place(tmp_path, world, data_dir)
    truncated_checkpoint(place, monkeypatch)
    assert scaling(*place.fill(COPY)) == 0
    lines = stderr_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    warning = lines[0]
    assert warning.startswith("warning: checkpoint 4 is damaged (") and "resuming from step 2" in warning
    assert (tmp_path / "copy" / "result.json").exists()


def test_a_corrupt_metrics_line_is_set_aside_and_every_record_kept(world, data_dir, tmp_path, monkeypatch,
                                                                    capfd):
    monkeypatch.chdir(ROOT)
    place = Place(tmp_path, world, data_dir)
    metrics = unfinished_copy(place) / "metrics.jsonl"
    records = metrics.read_text().splitlines()
    metrics.write_text("\n".join([records[0], '{"kind": "tr', *records[1:]]) + "\n" + '{"kind": "train", "st')
    assert scaling(*place.fill(COPY)) == 0
    lines = stderr_lines(capfd.readouterr().err)
    assert len(lines) == 1, lines
    warning = lines[0]
    assert warning == (f"warning: {metrics}: line(s) 2 do not parse; moved to {metrics}.corrupt, every whole "
                       "record kept")
    assert metrics.read_text().splitlines() == records  # the torn last line dropped, no record lost
    assert (tmp_path / "copy" / "metrics.jsonl.corrupt").read_text() == '{"kind": "tr\n'


@pytest.mark.parametrize("argv, says", [
    (["train", "--config", "experiments/nope.py:size=mu", "--workdir", "{tmp}/w"],
     "error: experiments/nope.py does not exist; experiments/ holds experiments/captioning.py"),
    (["train", "--config", CLIP, "--workdir", "{tmp}/w", "--config.optim.learning_rat=1"],
     "error: config field optim.learning_rat does not exist; did you mean optim.learning_rate?"),
], ids=["missing config file", "misspelt field"])
def test_the_terminal_shows_one_error_line(argv, says, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", *[a.format(tmp=tmp_path) for a in argv]],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(says), proc.stderr
    assert proc.stdout == "" and not (tmp_path / "w").exists()


# --- preemption: real signals at known points ----------------------------------------------------------

PAUSING_CLI = """
import sys, time
from scaling import cli, signals
from scaling.evaluation.evaluator import Evaluator
from scaling.state import Checkpoints
from scaling.step import Training

point, count, sys.argv = sys.argv[1], int(sys.argv[2]), ["scaling", *sys.argv[3:]]
calls = {}

def pause_at(name, function):
    def paused(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        if name == point and calls[name] == count:
            print("at", name, flush=True)  # the test sends its signal on this line
            while signals.requested() is None:
                time.sleep(0.01)
        return function(*args, **kwargs)
    return paused

Training.init = pause_at("compile", Training.init)
Training.shard = pause_at("step", Training.shard)
Checkpoints.save = pause_at("checkpoint", Checkpoints.save)
Evaluator.__call__ = pause_at("evaluation", Evaluator.__call__)
cli.main()
"""
SMALL_EVAL = ["--config.eval.num_points=2", "--config.eval.first_fraction=0.5",
              "--config.eval.probe_train_examples=64", "--config.eval.probe_test_examples=32",
              "--config.eval.val_batches=1"]


def interrupted_command(argv: list[str], point: str, count: int, signum: int) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of ``scaling <argv>`` sent ``signum`` in its ``count``-th call at
    ``point``: while it initialises the model (compile), feeds a step, saves a checkpoint or evaluates."""
    with subprocess.Popen([sys.executable, "-c", PAUSING_CLI, point, str(count), *argv], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            if f"at {point}\n" in iter(proc.stdout.readline, ""):  # the command's own lines come first
                proc.send_signal(signum)
            _, err = proc.communicate(timeout=300)
        finally:
            proc.kill()
    return proc.returncode, stderr_lines(err)


@pytest.mark.parametrize("point, count, signum, step, resume", [
    ("compile", 1, signal.SIGTERM, 1, False),
    ("step", 3, signal.SIGINT, 3, True),
    ("checkpoint", 1, signal.SIGTERM, 2, True),
    ("evaluation", 1, signal.SIGTERM, 2, False),
])
def test_a_stop_signal_checkpoints_the_step_and_a_rerun_ends_as_if_never_stopped(
        point, count, signum, step, resume, world, data_dir, tmp_path, monkeypatch):
    """SIGTERM (a preempted VM, a scheduler) or SIGINT (Ctrl-C) at each kind of moment of a run; the
    resume is checked after a step and a checkpoint write (benchmarks/random_kills.py tries many more)."""
    monkeypatch.chdir(ROOT)
    argv = Place(tmp_path, world, data_dir).fill([*NEW_RUN, *(SMALL_EVAL if point == "evaluation" else [])])
    code, lines = interrupted_command(argv, point, count, signum)
    name = signal.Signals(signum).name
    errors = [line for line in lines if not line.startswith("warning: ")]  # e.g. a probe's C on its grid edge
    assert code == 75 and errors == [f"error: interrupted by {name} at step {step}; its checkpoint is in "
                                     f"{tmp_path}/new/checkpoints: rerun the same command to resume"], lines
    assert (tmp_path / "new" / "checkpoints" / str(step) / "checksums.json").is_file()
    assert not (tmp_path / "new" / "result.json").exists()
    if not resume:
        return
    assert scaling(*argv) == 0
    result = json.loads((tmp_path / "new" / "result.json").read_text())
    reference = json.loads((world / "run" / "result.json").read_text())
    assert result["final_loss"] == reference["final_loss"] and result["step"] == 4
    train_steps = [r["step"] for r in map(json.loads, (tmp_path / "new" / "metrics.jsonl").read_text()
                                          .splitlines()) if r["kind"] == "train"]
    assert train_steps == [2, 4]  # nothing twice, nothing lost


def test_a_stop_signal_to_the_sweep_runner_checkpoints_its_run_and_releases_it(
        world, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    place = Place(tmp_path, world, data_dir)
    sweep_file(ONE_RUN_SWEEP)(place, monkeypatch)
    code, lines = interrupted_command(place.fill(SWEEP), "checkpoint", 1, signal.SIGTERM)
    assert code == 75 and lines == ["error: sweep one interrupted by SIGTERM: its runs in flight wrote a "
                                    "checkpoint and released their leases; rerun the same command to resume"]
    run_dir, = (tmp_path / "sweeps" / "one").iterdir()
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert [(a["event"], a.get("status")) for a in attempts] == [("start", None), ("end", "interrupted")]
    assert "interrupted by SIGTERM at step 2" in attempts[-1]["reason"]
    assert not list(run_dir.glob("lease-*")) and not (run_dir / "failure.json").exists()

    assert scaling(*place.fill(SWEEP)) == 0
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"


def test_a_full_disk_during_a_checkpoint_save_stops_the_run_at_once_with_one_line(world, data_dir, tmp_path):
    """As ``ulimit -f``, so the first checkpoint cannot be written. Orbax, tensorstore and asyncio threads
    log the failure again as the process stops: the terminal shows the one error line only."""
    argv = Place(tmp_path, world, data_dir).fill(NEW_RUN)
    limited = ["sh", "-c", 'ulimit -f 64 && exec "$@"', "sh"]  # files of 32-64 KiB at most (sh's blocks)
    proc = subprocess.run([*limited, sys.executable, "-m", "scaling.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: the checkpoint of step 2 could not be written to {tmp_path}/new/"
                               "checkpoints (") and "File too large" in lines[0]
    assert "GiB free there: free space, then rerun the same command" in lines[0]
    metrics = (tmp_path / "new" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [2]  # stopped at the failed save


def read_only(folder: Path) -> list[str]:
    """A command prefix that mounts ``folder`` read-only for the command alone (in a user namespace)."""
    return ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]


@pytest.mark.parametrize("command, finished, status, says", [
    ("train", True, 0, None),
    ("train", False, 2, "error: --workdir {copy}: {copy} is not writable; make it writable or copy the run "
                        "to a folder you can write to"),
    ("probe", True, 2, "error: --workdir {copy} is not writable, so probe.json cannot be written there; copy "
                       "the run to a folder you can write to"),
], ids=["finished run", "unfinished run", "probe"])
def test_a_read_only_workdir(command, finished, status, says, world, data_dir, tmp_path):
    """As root, only a read-only mount stops a write, so the workdir is mounted read-only for the command."""
    if subprocess.run([*read_only(tmp_path), "true"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged read-only bind mounts here (unshare -rm)")
    place = Place(tmp_path, world, data_dir)
    copy = unfinished_copy(place) if not finished else Path(shutil.copytree(world / "run", tmp_path / "copy"))
    argv = place.fill(COPY) if command == "train" else [*PROBE[:2], str(copy), *PROBE[3:]]
    before = snapshot(tmp_path)
    proc = subprocess.run([*read_only(copy), sys.executable, "-m", "scaling.cli", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert stderr_lines(proc.stderr) == ([says.format(copy=copy)] if says else []), proc.stderr[-3000:]
    assert snapshot(tmp_path) == before


def test_a_checkpoint_orbax_cannot_read_shows_one_line_in_the_terminal(world, data_dir, tmp_path):
    """Orbax's asyncio tasks fail again as the process stops; the terminal shows the error line only."""
    place = Place(tmp_path, world, data_dir)
    missing_orbax_manifest(place, None)
    proc = subprocess.run([sys.executable, "-m", "scaling.cli", *PROBE[:2], str(tmp_path / "copy")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: checkpoint {tmp_path}/copy/checkpoints/4 cannot be restored (")
