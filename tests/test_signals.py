"""Stop signals only set a flag while training, even in a process that started ignoring them."""

from __future__ import annotations

import os
import signal
import time

import pytest

from utils.signals import STOP_SIGNALS, catch_stop_signals


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
