"""A sweep worker process: ``python -m scaling.sweeps.worker FD PARENT_PID`` runs one job for ProcessPool.

Before it imports anything of weight it arranges to die with its runner (Linux: the parent-death signal;
elsewhere a thread that watches the parent), so a runner killed by SIGKILL leaves no worker training
beside the next runner. It then reads the runner's ``sys.path`` and a pickle of (job, config, workdir)
from stdin, runs the job and sends its outcome through file descriptor FD.
"""

import ctypes
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the runner ends (or, without prctl, within half a second)."""
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        armed = False
    if not armed:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the runner ended before the signal was armed
        os._exit(1)


def main() -> None:
    fd, parent_pid = int(sys.argv[1]), int(sys.argv[2])
    die_with_parent(parent_pid)
    sys.path[:] = pickle.load(sys.stdin.buffer)  # a list of str: unpickling it imports nothing
    job, config, workdir = pickle.load(sys.stdin.buffer)
    with Connection(fd, readable=False) as conn:
        conn.send(job(config, workdir))


if __name__ == "__main__":
    main()
