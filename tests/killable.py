"""``scaling <args>`` that stops at a known point of a run, for tests that SIGKILL it there:

    python tests/killable.py MARKER STEP <scaling args>...

Once a run has appended its train record of step STEP and its last checkpoint before that step is on disk,
this process writes MARKER (holding the run's workdir) and sleeps until it is killed. Runs that never log
step STEP are not held.
"""

import json
import sys
import time
from pathlib import Path

from scaling import cli
from scaling.workdir import RunFiles


def hold_at(marker: Path, step: int) -> None:
    append = RunFiles.append_metrics

    def append_then_hold(files: RunFiles, record: dict) -> None:
        append(files, record)
        if record["kind"] != "train" or record["step"] != step:
            return
        every = json.loads(files.config_path.read_text())["checkpoint_every"]
        checkpoint = files.checkpoint_dir / str((step - 1) // every * every)  # saved before this record
        while checkpoint.name != "0" and not checkpoint.is_dir():  # orbax renames it into place when whole
            time.sleep(0.01)
        marker.write_text(str(files.root))
        while True:
            time.sleep(60)

    RunFiles.append_metrics = append_then_hold


if __name__ == "__main__":
    hold_at(Path(sys.argv[1]), int(sys.argv[2]))
    sys.argv = ["scaling", *sys.argv[3:]]
    cli.main()
