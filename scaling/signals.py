"""Preemption: SIGTERM (a preempted TPU VM, a cluster scheduler) and SIGINT (Ctrl-C) as requests to stop at
the next safe point rather than kills.

While ``deferred_stops()`` is active (``scaling train`` and ``scaling sweep`` hold it), such a signal is
only recorded; the training loop asks ``requested()`` after every step and, when asked to stop, writes a
checkpoint and raises ``InterruptedRunError``, whose exit status (75, EX_TEMPFAIL: try again) tells a
scheduler that rerunning the same command resumes the run. Further signals while stopping are ignored (SIGKILL
still kills). Handlers can only be installed from the main thread; elsewhere the signals keep their
default effect.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from scaling.errors import UserError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []
_depth = 0


class InterruptedRunError(UserError):
    """A stop signal ended the work at a safe point; rerunning the same command resumes it."""

    exit_status = 75


def _record(signum: int, frame) -> None:
    _received.append(signum)


@contextlib.contextmanager
def deferred_stops() -> Iterator[None]:
    """Records SIGTERM and SIGINT instead of dying on them; the outermost use starts with none recorded."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth == 0:
        _received.clear()
    previous = {signum: signal.signal(signum, _record) for signum in STOP_SIGNALS}
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def requested() -> str | None:
    """The name of the first stop signal received (e.g. "SIGTERM"), or None."""
    return signal.Signals(_received[0]).name if _received else None
