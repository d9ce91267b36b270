"""Stop signals only set a flag while training, even in a process that started ignoring them."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from utils.signals import (
    STOP_SIGNALS,
    catch_stop_signals,
    exit_code,
    requeue_slurm_job,
    stop_signals_blocked,
)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_stop_signal_is_recorded_even_when_the_process_started_ignoring_it(signum):
    """A background job of a non-interactive shell starts with SIGINT ignored."""
    previous = signal.signal(signum, signal.SIG_IGN)
    try:
        with catch_stop_signals() as stop:
            os.kill(os.getpid(), signum)
            deadline = time.monotonic() + 120  # the handler runs in the main thread, soon
            while stop.signum != signum and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stop.signum == signum
        assert signal.getsignal(signum) is signal.SIG_IGN  # put back afterwards
    finally:
        signal.signal(signum, previous)


def test_outside_the_main_thread_the_handlers_stay_as_they_are():
    """train.main called in a thread (a notebook, a test runner) may not install handlers."""
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    seen = []

    def run() -> None:
        with catch_stop_signals() as stop:
            seen.append((stop.signum, {s: signal.getsignal(s) for s in STOP_SIGNALS}))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert seen == [(0, before)]


def blocked_here() -> set[int]:
    return set(STOP_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_stop_signals_blocked_while_loader_workers_start_are_still_handled():
    """Workers forked in the block inherit the mask; the run still stops at the next step
    (this process's other threads may take the signal before the block ends)."""
    with catch_stop_signals() as stop:
        with stop_signals_blocked():
            assert blocked_here() == set(STOP_SIGNALS)
            os.kill(os.getpid(), signal.SIGTERM)
        assert not blocked_here()
        deadline = time.monotonic() + 120  # the handler runs in the main thread, soon
        while stop.signum != signal.SIGTERM and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.signum == signal.SIGTERM


def test_the_exit_code_is_the_shells_for_a_process_ended_by_the_signal():
    assert [exit_code(s) for s in STOP_SIGNALS] == [130, 143, 138]


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A `scontrol` on PATH that records its arguments and exits with $SCONTROL_EXIT."""
    calls, bin_dir = tmp_path / "calls", tmp_path / "bin"
    bin_dir.mkdir()
    script = f'#!/bin/sh\necho "$@" >> {calls}\necho "denied: $2" >&2\nexit "$SCONTROL_EXIT"\n'
    (bin_dir / "scontrol").write_text(script)
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("SCONTROL_EXIT", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_a_job_is_requeued_by_its_id(scontrol):
    assert requeue_slurm_job() == "train.requeue: SLURM job 1234 requeued"
    assert scontrol.read_text() == "requeue 1234\n"


def test_a_task_of_an_array_job_is_requeued_as_that_task(scontrol, monkeypatch):
    """SLURM_JOB_ID of an array task is a job id of its own; scontrol wants ARRAYID_TASK."""
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert requeue_slurm_job() == "train.requeue: SLURM job 1200_7 requeued"
    assert scontrol.read_text() == "requeue 1200_7\n"


def test_a_failing_scontrol_is_reported_with_its_message(scontrol, monkeypatch):
    monkeypatch.setenv("SCONTROL_EXIT", "1")
    assert requeue_slurm_job() == "train.requeue: `scontrol requeue 1234` failed: denied: 1234"


def test_a_missing_scontrol_is_reported_with_what_to_do(scontrol, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    line = requeue_slurm_job()
    assert line.startswith("train.requeue: could not run scontrol (")
    assert "No such file or directory" in line and line.endswith("; requeue job 1234 by hand")
