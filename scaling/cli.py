"""The ``scaling`` command: ``train`` a run, ``probe`` its checkpoint, run a ``sweep``, ``analyze`` sweeps,
``plan`` them for a TPU slice, ``data import`` webdataset shards.

Bad input ends with one ``error:`` line naming the problem and the fix, and a non-zero exit status, whether
absl rejects a flag or the command raises a ``scaling.errors.UserError`` where it finds the problem.
``--config.<field>=<value>`` reaches absl as ``--config_field=<field>=<value>`` and is applied by
``scaling.config.load_config``, which knows the field names and types.

The analysis, planning and import modules load inside their commands: they bring matplotlib, pandas,
scipy and libtpu's compiler with them, which ``scaling train`` (and every run a sweep starts in its own
process) would otherwise import for nothing, a second of start-up each.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import tensorflow_datasets as tfds
from absl import app, flags, logging

from scaling.config import load_config
from scaling.data.pipeline import DATA_DIR_ENV, DEFAULT_DATA_DIR, data_dir_path
from scaling.errors import UserError
from scaling.evaluation.probe import probe_checkpoint
from scaling.sweeps import runner
from scaling.sweeps.probes import probe_sweep
from scaling.sweeps.results import build_table, write_table
from scaling.sweeps.spec import load_runs
from scaling.train import train
from scaling.workdir import FAILED

FLAGS = flags.FLAGS
CONFIG_FIELD_PREFIX = "--config."
flags.DEFINE_string("config", None, "train: experiments/<objective>.py[:size=...]")
flags.DEFINE_multi_string("config_field", [], "train: <field>=<value>, as --config.<field>=<value> gives it")
flags.DEFINE_string("workdir", None, "run directory (created; resumed if it holds a checkpoint)")
flags.DEFINE_string("dataset", "", "probe: data set to probe on (default: the run's eval.dataset)")
flags.DEFINE_list("layers", [], "probe: layers to probe (default: all)")
flags.DEFINE_integer("max-train", None, "probe: use at most this many training examples")
flags.DEFINE_integer("max-test", None, "probe: use at most this many test examples")
flags.DEFINE_integer("train-per-class", None, "probe: train on this many examples of each class (instead of "
                     "--max-train; labels read first, only the chosen images decoded)")
flags.DEFINE_enum("points", "final", ["final", "all"],
                  "probe: a sweep's runs at their final checkpoint, or at every eval point")
flags.DEFINE_string("root", "runs", "sweep: store root; each sweep lives in <root>/<sweep name>/")
flags.DEFINE_enum("executor", "local", ["local", "ray", "tpu-vm", "xpk"],
                  "sweep: where runs train (tpu-vm and xpk print, or with --launch run, pod commands)")
flags.DEFINE_integer("max-parallel", 1, "sweep: runs at once (local: >1 spawns one process per run)")
flags.DEFINE_boolean("dry-run", False, "sweep: list the runs, their compute and state; train nothing")
flags.DEFINE_boolean("launch", False, "sweep: run the tpu-vm / xpk commands instead of printing them")
flags.DEFINE_string("tpu", None, "sweep: TPU type of the slice, e.g. v5p-64")
flags.DEFINE_string("zone", None, "sweep: zone of the TPU VM slice")
flags.DEFINE_string("cluster", None, "sweep: XPK cluster")
flags.DEFINE_boolean("distributed", False, "sweep: call jax.distributed.initialize() (multi-host slices)")
flags.DEFINE_float("lease-timeout", 120.0,
                   "sweep, probe: seconds without a heartbeat before a lease is stale")
flags.DEFINE_boolean("retry-failed", False, "sweep: run failed runs again (diverged ones stay done)")
flags.DEFINE_string("metric", "probe_error", "analyze: error to fit (<name>_error = 1 - <name>_accuracy, "
                    "or a column such as val_loss)")
flags.DEFINE_string("layer", "best", "analyze: probed layer of probe_error (best, or a name like layer_02)")
flags.DEFINE_integer("boots", 400, "analyze: bootstrap refits per law and objective")
flags.DEFINE_integer("min-steps", 100, "analyze: optimizer steps a point needs to enter a frontier or fit")
flags.DEFINE_integer("seed", 0, "analyze: seed of the bootstrap streams (each objective hashes in its name)")
flags.DEFINE_string("out", None, "analyze: report and figures folder (default: <first sweep>/analysis)")
flags.DEFINE_multi_string("reference", [], "analyze: LABEL=ACCURACY, a level stated elsewhere (e.g. a data "
                          "set's published raw-pixel floor) to draw on the figures; repeatable")
flags.DEFINE_string("topology", None, "plan: TPU slice, e.g. v5p-64 or v5p:4x4x2")
flags.DEFINE_string("mesh", None, "plan: mesh such as data=2,fsdp=16 (default: search candidates)")
flags.DEFINE_float("input-images-per-s", None, "plan: measured input images/s per host (benchmarks/"
                   "input_throughput.py); adds what each run needs per host and flags a shortfall")
flags.DEFINE_string("name", None, "data import: name of the data set to write (then data.name=NAME)")
flags.DEFINE_string("data-dir", None, f"data import: TFDS folder to write it in (default: ${DATA_DIR_ENV} "
                    f"or {DEFAULT_DATA_DIR})")

USAGES = {  # one line each, so that an error message that ends with one stays one line
    "train": "scaling train --config experiments/<objective>.py:size=mu --workdir DIR "
             "[--config.<field>=<value>]",
    "probe": "scaling probe --workdir DIR [--dataset NAME] [--layers layer_01,...] [--max-train N | "
             "--train-per-class N] [--max-test N] | scaling probe <root>/<sweep> --dataset NAME "
             "[--points final|all] [--max-train N | --train-per-class N] [--max-test N]",
    "sweep": "scaling sweep sweeps/<name>.py [--root DIR] [--executor local|ray|tpu-vm|xpk] "
             "[--max-parallel N] [--dry-run] [--launch] [--tpu v5p-64 --zone Z] [--cluster C] "
             "[--retry-failed]",
    "analyze": "scaling analyze SWEEP_DIR [MORE_SWEEP_DIRS...] [--metric probe_error] [--layer best|NAME] "
               "[--boots N] [--min-steps 100] [--seed 0] [--out DIR] [--reference LABEL=ACCURACY ...]",
    "plan": "scaling plan sweeps/<name>.py|experiments/<objective>.py[:size=...] --topology v5p-64 "
            "[--mesh data=..,fsdp=..,tensor=..] [--input-images-per-s N] [--root DIR]",
    "data": "scaling data import SHARD.tar [MORE_SHARDS...] --name NAME [--data-dir DIR]",
}
USAGE = "usage:\n" + "\n".join(f"  {usage}" for usage in USAGES.values())
SUMMARIES = {
    "train": "Train one run, or resume it from its latest checkpoint.",
    "probe": "Probe a run's checkpoint on a data set with linear probes per layer; writes probe.json.",
    "sweep": "Run what is left of a sweep (finished runs skipped, interrupted ones resumed), or list it.",
    "analyze": "Fit scaling laws to sweeps' results; writes a report and figures.",
    "plan": "Compile each run's train step for a TPU slice: memory per chip, step time, chip-hours.",
    "data": "Import webdataset image-text shards (img2dataset) as a TFDS data set in ArrayRecord shards.",
}
COMMAND_FLAGS = {  # the flags each command reads, in the order its help lists them
    "train": ("config", "workdir"),
    "probe": ("workdir", "dataset", "points", "layers", "max-train", "train-per-class", "max-test",
              "lease-timeout"),
    "sweep": ("root", "executor", "max-parallel", "dry-run", "launch", "tpu", "zone", "cluster",
              "distributed", "lease-timeout", "retry-failed"),
    "analyze": ("metric", "layer", "boots", "min-steps", "seed", "out", "reference"),
    "plan": ("topology", "mesh", "input-images-per-s", "root"),
    "data": ("name", "data-dir"),
}
HELP_ARGS = ("--help", "-h", "-help", "--helpshort")
HELP_PREFIX = re.compile(r"^(<[^>]*>: )?\w+: ")  # absl's enum values, then the commands that read it
QUOTE = "'"


def fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if sys.stderr is sys.__stderr__:  # the process's own stderr (not captured): nothing more goes on it
        silence_stderr()
    sys.exit(status)


def silence_stderr() -> None:
    """Sends what is left of this process's stderr to /dev/null: after the error line, libraries' threads
    (orbax, tensorstore, asyncio) may still log the same failure as the interpreter stops."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())
    os.close(devnull)


def without_closed_loop_callbacks(hook):
    """``hook`` less "Event loop is closed" errors: tensorstore calls back into the event loop of an orbax
    read that has already failed (and raised), once per array, and Python prints each as a traceback."""
    if getattr(hook, "closed_loops_dropped", False):
        return hook

    def dropping(unraisable) -> None:
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            hook(unraisable)

    dropping.closed_loops_dropped = True
    return dropping


def train_command(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; usage: {USAGES['train']}")
    if FLAGS.config is None or not FLAGS.workdir:
        fail(f"--config and --workdir are required; usage: {USAGES['train']}")
    result = train(load_config(FLAGS.config, FLAGS.config_field), FLAGS.workdir)
    print(f"{result['status']}: step {result['step']}, loss {result.get('final_loss')}, "
          f"{result['flops']:.3e} training FLOPs; files in {FLAGS.workdir}")


def probe_command(argv: list[str]) -> None:
    limits = {"max_train": FLAGS["max-train"].value, "max_test": FLAGS["max-test"].value,
              "train_per_class": FLAGS["train-per-class"].value}
    if limits["train_per_class"] is not None and limits["max_train"] is not None:
        fail(f"give --max-train or --train-per-class, not both; usage: {USAGES['probe']}")
    if len(argv) == 2 and not FLAGS.workdir:
        if not FLAGS.dataset or FLAGS.layers:
            fail(f"a sweep is probed with --dataset and on every layer; usage: {USAGES['probe']}")
        counts = probe_sweep(argv[1], FLAGS.dataset, points=FLAGS.points,
                             lease_timeout_s=FLAGS["lease-timeout"].value, **limits)
        table = write_table(build_table(argv[1]), argv[1])
        print(f"{FLAGS.dataset} probes: {counts['probed']} probed, {counts['done']} done before, "
              f"{counts['held']} held by another prober; joined into {table}")
        return
    if len(argv) > 1 or not FLAGS.workdir:
        fail(f"give --workdir or one sweep folder; usage: {USAGES['probe']}")
    output = Path(FLAGS.workdir) / "probe.json"
    result = probe_checkpoint(FLAGS.workdir, dataset=FLAGS.dataset, layers=tuple(FLAGS.layers), output=output,
                              **limits)
    print(f"{result['dataset']}: best layer {result['probe_layer']} at "
          f"{100 * result['probe_accuracy']:.1f}% test accuracy; wrote {output}")


def sweep_command(argv: list[str]) -> None:
    from scaling.analysis.figures import compute_figure

    if len(argv) != 2:
        fail(f"give exactly one sweep file; usage: {USAGES['sweep']}")
    options = runner.Options(
        root=FLAGS.root, executor=FLAGS.executor, max_parallel=FLAGS["max-parallel"].value,
        dry_run=FLAGS["dry-run"].value, launch=FLAGS.launch, tpu=FLAGS.tpu, zone=FLAGS.zone,
        cluster=FLAGS.cluster, distributed=FLAGS.distributed,
        lease_timeout_s=FLAGS["lease-timeout"].value, retry_failed=FLAGS["retry-failed"].value,
    )
    counts = runner.main(argv[1], options, figure=compute_figure)
    if counts and counts[FAILED]:
        fail(f"{counts[FAILED]} run(s) failed (reasons above; rerun with --retry-failed to try again)",
             status=1)


def analyze_command(argv: list[str]) -> None:
    from scaling.analysis.report import analyze, parse_references, summary

    if len(argv) < 2:
        fail(f"give at least one sweep folder; usage: {USAGES['analyze']}")
    report = analyze(argv[1:], metric=FLAGS.metric, layer=FLAGS.layer, boots=FLAGS.boots,
                     min_steps=FLAGS["min-steps"].value, seed=FLAGS.seed, out=FLAGS.out,
                     references=parse_references(FLAGS.reference))
    print(f"{summary(report)}\nreport and figures: {report.parent}")


def plan_command(argv: list[str]) -> None:
    from scaling import plan

    if len(argv) != 2 or not FLAGS.topology:
        fail(f"give one sweep or config file and --topology; usage: {USAGES['plan']}")
    input_rate = FLAGS["input-images-per-s"].value
    if input_rate is not None and not input_rate > 0:
        fail(f"--input-images-per-s {input_rate}: give the measured input images/s per host, a positive "
             "number (python benchmarks/input_throughput.py measures it)")
    topology = plan.parse_topology(FLAGS.topology)
    mesh = plan.parse_mesh(FLAGS.mesh) if FLAGS.mesh else None
    sweep = load_runs(argv[1])
    directory = Path(FLAGS.root) / sweep.name
    rows = plan.plan_runs([(run.run_id, run.config) for run in sweep.runs], topology,
                          directory / "plan-cache", mesh)
    if input_rate is not None:
        rows = plan.with_input(rows, topology.hosts, input_rate)
    totals = plan.totals(rows)
    csv_path, json_path = plan.write_outputs(rows, totals, directory / f"plan-{topology.name}")
    print(plan.format_table(rows))
    short = "" if input_rate is None else (
        f"; input of {input_rate:.0f} images/s per host ({topology.hosts} hosts) keeps up with "
        f"{totals['fit'] - totals['input_short']}/{totals['fit']} of them")
    print(f"{totals['fit']}/{totals['runs']} runs fit {topology.name} ({topology.chips} chips); "
          f"{totals['chip_hours']:.1f} chip-hours for those that fit{short}; "
          f"compiled in {totals['compile_s']:.0f} s; wrote {csv_path} and {json_path}")


def data_command(argv: list[str]) -> None:
    from scaling.data.importer import import_shards

    if len(argv) < 3 or argv[1] != "import" or not FLAGS.name:
        fail(f"give import, the shards and --name; usage: {USAGES['data']}")
    data_dir = data_dir_path(FLAGS["data-dir"].value)
    counts = import_shards(argv[2:], FLAGS.name, data_dir)
    print(f"imported {counts['examples']} examples from {counts['shards']} shards into "
          f"{data_dir / FLAGS.name}; skipped {counts['unreadable']} unreadable images and "
          f"{counts['uncaptioned']} samples without caption; train on it with "
          f"--config.data.name={FLAGS.name} --config.data.data_dir={data_dir} "
          "--config.data.caption_field=caption --config.data.label=''")


COMMANDS = {"train": train_command, "probe": probe_command, "sweep": sweep_command,
            "analyze": analyze_command, "plan": plan_command, "data": data_command}


def run_command(command, argv: list[str]) -> None:
    # stderr carries the command's own lines: libraries' log lines and TFDS build progress bars stay off
    # it, and a Python warning is one line, as the command's own warnings are
    logging.set_verbosity(logging.ERROR)
    tfds.disable_progress_bar()
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    sys.unraisablehook = without_closed_loop_callbacks(sys.unraisablehook)
    try:
        command(argv)
    except UserError as error:
        fail(str(error), status=error.exit_status)


def absl_argv(command: str, args: list[str]) -> list[str]:
    """The argv absl parses: ``--config.<field>=<value>`` becomes ``--config_field=<field>=<value>``."""
    return [f"scaling {command}", *(
        f"--config_field={arg.removeprefix(CONFIG_FIELD_PREFIX)}" if arg.startswith(CONFIG_FIELD_PREFIX)
        else arg for arg in args)]


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as error:
        fail(f"{error}; usage: {USAGES[argv[0].split()[-1]]}")


def command_help(command: str) -> str:
    """``scaling <command> --help``: what the command does, its usage line and its own flags."""
    lines = [SUMMARIES[command], "", f"usage: {USAGES[command]}", "", "flags:"]
    for name in COMMAND_FLAGS[command]:
        flag = FLAGS[name]
        text = HELP_PREFIX.sub(r"\1", flag.help).split(";\n")[0]  # absl's "repeat this option" suffix
        default = "" if flag.default in (None, "", []) else f" (default: {flag.default_as_str.strip(QUOTE)})"
        lines.append(f"  --{name:<15} {text}{default}")
    if command == "train":
        lines.append("  --config.<field>=<value>  set any config field, read as the field's type")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] in (*HELP_ARGS, "help"):
        print(f"{USAGE}\n\n" + "\n".join(f"  {name:<8} {SUMMARIES[name]}" for name in COMMANDS)
              + "\n\nscaling <command> --help lists a command's flags.")
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(USAGE)
    command = sys.argv[1]
    if any(arg in HELP_ARGS for arg in sys.argv[2:]):
        print(command_help(command))
        sys.exit(0)
    FLAGS.unparse_flags()  # main() may run more than once in a process: each run starts from the defaults
    app.run(lambda argv: run_command(COMMANDS[command], argv), argv=absl_argv(command, sys.argv[2:]),
            flags_parser=parse_flags)


if __name__ == "__main__":
    main()
