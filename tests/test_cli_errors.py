"""Bad input to the ``scaling`` command, as a new user would give it.

Every case must end in one ``error:`` line that names the field or file and the fix, with exit status 2
(1 for a diverged run), no traceback, and every file already written (the shared run's checkpoints and
metrics, the case's own files) left as it was. Cases call ``scaling.cli.main`` in this process (a
subprocess adds only the jax import); two run the real command where the terminal itself is the point.
"""

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from scaling import cli
from scaling.data import cifar10_jpeg

CLIP = "experiments/clip.py:size=mu"
RUN = "{world}/run"
TINY = ["--config.data.name=scenes/32_small", "--config.data.data_dir={data_dir}", "--config.batch_size=16",
        "--config.total_steps=4", "--config.checkpoint_every=2", "--config.log_every=2",
        "--config.optim.warmup_steps=1", "--config.eval.num_points=0", "--config.eval.batch_size=16"]
NEW_RUN = ["train", "--config", CLIP, "--workdir", "{tmp}/new", *TINY]
SWEEP_FILE = "from scaling.sweeps.spec import Budget, Sweep, grid\n"
DUPLICATE_SWEEP = ('def get_sweep():\n    runs = grid(["clip"], ["mu"], [Budget.steps(4)], fields={fields})\n'
                   '    return Sweep("twice", runs + runs)\n')


def scaling(*args: str) -> int:
    """The exit status of ``scaling <args>`` run in this process."""
    saved, sys.argv = sys.argv, ["scaling", *args]
    try:
        cli.main()
    except SystemExit as exit:
        return exit.code or 0
    finally:
        sys.argv = saved
    raise AssertionError("scaling returned without exiting")


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a case runs: its own folder, the shared run's folder and the scenes data directory."""

    tmp: Path
    world: Path
    data_dir: str

    def fill(self, args: list[str]) -> list[str]:
        return [arg.format(tmp=self.tmp, world=self.world, data_dir=self.data_dir) for arg in args]


def snapshot(*roots) -> dict[str, str]:
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest()
            for root in roots for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, data_dir):
    """A folder holding one finished tiny CLIP run, trained through the command itself."""
    world = tmp_path_factory.mktemp("world")
    code = scaling(*Place(world, world, data_dir).fill(["train", "--config", CLIP, "--workdir", RUN, *TINY]))
    assert code == 0 and json.loads((world / "run" / "result.json").read_text())["step"] == 4
    return world


def corrupt_latest_checkpoint(place: Place, monkeypatch):
    """A copy of the shared run without result.json and with its latest checkpoint damaged."""
    shutil.copytree(place.world / "run", place.tmp / "corrupt")
    (place.tmp / "corrupt" / "result.json").unlink()
    for path in (place.tmp / "corrupt" / "checkpoints" / "4" / "params").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")


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
              "optim.warmup_steps": 1}

    def make(place: Place, monkeypatch):
        text = SWEEP_FILE + body.replace("{fields}", repr(fields).replace("{data_dir}", place.data_dir))
        (place.tmp / "sweep.py").write_text(text)

    return make


def a_file(place: Place, monkeypatch):
    (place.tmp / "a_file").write_text("notes\n")


CIFAR = [*NEW_RUN, "--config.data.name=cifar10_jpeg", "--config.data.data_dir={tmp}/tfds"]
PROBE = ["probe", "--workdir", RUN, "--max-train=64", "--max-test=32"]
SWEEP = ["sweep", "{tmp}/sweep.py", "--root", "{tmp}/sweeps"]

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
     2, ["holds a run with a different config (fields optim.learning_rate)", "use a new --workdir"]),
    ("unknown data set", None, [*NEW_RUN, "--config.data.name=nonexistent_ds"],
     2, ["no data set 'nonexistent_ds'", "scenes, digits, cifar10_jpeg", "tfds build NAME --data_dir=",
         "data.data_dir"]),
    ("TFDS data set not prepared", None, [*NEW_RUN, "--config.data.name=cifar100",
                                          "--config.data.data_dir={tmp}/tfds"],
     2, ["'cifar100' is not prepared", "tfds build cifar100 --data_dir="]),
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
    ("checkpoint corrupted at its latest step", corrupt_latest_checkpoint,
     ["train", "--config", CLIP, "--workdir", "{tmp}/corrupt", *TINY],
     2, ["checkpoints/4 cannot be restored", "move that step's folder aside"]),
    ("probe of a corrupted checkpoint", corrupt_latest_checkpoint, [*PROBE[:2], "{tmp}/corrupt"],
     2, ["checkpoints/4 cannot be restored"]),
    ("probe of a missing workdir", None, ["probe", "--workdir", "{tmp}/absent"],
     2, ["absent has no config.json", "--workdir of a `scaling train` run"]),
    ("probe of a workdir that is a file", a_file, ["probe", "--workdir", "{tmp}/a_file"],
     2, ["a_file is a file, but a workdir must be a folder"]),
    ("probe of an unknown data set", None, [*PROBE, "--dataset=nonexistent_ds"],
     2, ["no data set 'nonexistent_ds'", "tfds build NAME"]),
    ("probe layer that does not exist", None, [*PROBE, "--layers=layer_09"],
     2, ["--layers ['layer_09'] not among ['layer_01', 'layer_02']"]),
    ("missing sweep file", None, SWEEP, 2, ["sweep.py does not exist", "sweeps/quickstart.py"]),
    ("sweep file without get_sweep", sweep_file("X = 1\n"), SWEEP, 2, ["defines no get_sweep()"]),
    ("sweep grid with the same run twice", sweep_file(DUPLICATE_SWEEP), SWEEP,
     2, ["sweep twice: duplicate run ids", "make the grid values unique"]),
    ("sweep field that does not exist", sweep_file(DUPLICATE_SWEEP.replace(
        "fields={fields}", 'fields={"optim.learning_rat": 1.0}')),
     SWEEP, 2, ["optim.learning_rat=1.0 on clip", "did you mean optim.learning_rate?"]),
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
                                                           tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # where users run the command; every path it writes to is under tmp_path
    place = Place(tmp_path, world, data_dir)
    if prepare is not None:
        prepare(place, monkeypatch)
    before = snapshot(world, tmp_path)
    code = scaling(*place.fill(argv))
    printed = capsys.readouterr()
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert code == status, printed.err[-3000:]
    assert "Traceback" not in printed.out + printed.err
    assert len(errors) == 1, printed.err[-3000:]
    for words in says:
        assert words in errors[0], errors[0]
    after = snapshot(world, tmp_path)
    assert {path: after.get(path) for path in before} == before, "a file written before was changed"


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
