"""Signals that stop a run cleanly: what clusters send before they end or preempt a job.

SIGTERM (SLURM, Kubernetes, `kill`, torchrun stopping its workers), SIGUSR1 (SLURM's
`--signal=USR1@90` warning) and SIGINT (Ctrl-C) only set a flag; the training loop reads it
after each optimiser step, writes a checkpoint of that step and exits with 128 + the signal's
number. The handlers replace whatever was there, SIG_IGN included (a background job started
by a non-interactive shell ignores SIGINT), and are put back afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """The number of the last stop signal received (0: none)."""

    def __init__(self) -> None:
        self.signum = 0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum


@contextmanager
def catch_stop_signals() -> Iterator[StopRequest]:
    """Record STOP_SIGNALS in the returned StopRequest while the block runs (main thread only:
    elsewhere, as in a thread that calls train.main, signals keep their handlers)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request.handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block STOP_SIGNALS in this thread while the block runs; one that arrives meanwhile is
    still handled (another thread takes it, or this one after the block). A process forked
    meanwhile starts with them blocked, so it can choose what to do with them before any
    arrives (datasets.resumable.StopSafeLoader)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def requeue_slurm_job() -> str:
    """`scontrol requeue` this SLURM job; a line that says what happened."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as e:
        return f"train.requeue: could not run scontrol ({e}); requeue job {job} by hand"
    if done.returncode != 0:
        return f"train.requeue: `scontrol requeue {job}` failed: {done.stderr.strip()}"
    return f"train.requeue: SLURM job {job} requeued"
