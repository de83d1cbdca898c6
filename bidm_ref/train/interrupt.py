"""Ctrl-C and SIGTERM during training: finish the step in flight, write the checkpoint, then stop.

No arrays here. `Trainer.run` trains inside `deferred_signals()`; the handlers only record the
signal, the loop checks after every step, saves and raises `TrainingInterrupted`, which
`cli.py` turns into one line on stderr and exit status 128 + signal (130 for SIGINT, 143 for
SIGTERM, the shell's convention). A second signal while the checkpoint is written is recorded
too and changes nothing: the save always completes (SIGKILL cannot be caught; a file being
written then stays a temp file, cleaned up by the next start: runfolder.py).
Handlers can only be installed from the main thread; elsewhere the signals keep their handlers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """A signal stopped training after a completed step whose checkpoint was written."""

    def __init__(self, signum: int, step: int, ckpt_path: str) -> None:
        self.signum, self.step, self.ckpt_path = signum, step, ckpt_path
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}: checkpoint {ckpt_path} "
                         "written; continue with --resume")


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Yield the list the SIGINT/SIGTERM handlers append their signal numbers to; old handlers come back after."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
