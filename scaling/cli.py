"""The ``scaling`` command: ``scaling train --config experiments/clip.py:size=mu --workdir DIR``.

Bad input ends with one ``error:`` line naming the problem and the fix, and a non-zero exit status.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from scaling.config import ConfigError
from scaling.train import CheckpointError, DivergedError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiments/<objective>.py[:size=...]")
flags.DEFINE_string("workdir", None, "run directory (created; resumed if it holds a checkpoint)")

USAGE = "usage: scaling {train} --config experiments/<objective>.py:size=mu --workdir DIR"


def fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def train_command(argv: list[str]) -> None:
    from scaling.train import train

    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; {USAGE}")
    if FLAGS.config is None or not FLAGS.workdir:
        fail(f"--config and --workdir are required; {USAGE}")
    result = train(FLAGS.config, FLAGS.workdir)
    print(f"{result['status']}: step {result['step']}, loss {result.get('final_loss')}, "
          f"{result['flops']:.3e} training FLOPs; files in {FLAGS.workdir}")


COMMANDS = {"train": train_command}


def run_command(command, argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    try:
        command(argv)
    except (ConfigError, CheckpointError, FileNotFoundError) as error:
        fail(str(error))
    except DivergedError as error:
        fail(f"run diverged: {error}", status=1)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(USAGE)
    command = sys.argv[1]
    app.run(lambda argv: run_command(COMMANDS[command], argv),
            argv=[f"scaling {command}", *sys.argv[2:]])


if __name__ == "__main__":
    main()
